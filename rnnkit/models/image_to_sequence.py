"""Image to sequence ("captioning"): a small CNN reads an image into a grid of features, a
recurrent decoder with attention writes a token sequence, looking at the grid at every step
(Show, Attend and Tell, Xu et al. 2015).

.. code-block:: text

    images (B, C, H, W), widths (B,)
      -> conv 3x3 -> batch norm -> ReLU -> max-pool, per block (padded columns re-zeroed
         after each; the batch statistics count only the columns inside the images)
      -> grid (B, C', H', W')                      H' = H / prod(pool heights), W' likewise
      -> [row encoder: a bidirectional RNN along each of the H' rows, Deng et al. 2017]
      -> memory (B, S = W' * H', M), column by column; memory_mask (B, S)
    decoder: seq2seq's Decoder (AttentionWrapper over the memory, input feeding),
      first state tanh(W_b mean(memory) + b_b) (Show, Attend and Tell's f_init)

The images of a batch may differ in width: pad them on the right with anything (zeros) and
give their ``widths``; every layer re-zeroes the columns past each image's width before the
next convolution sees them, and the attention never looks there (the mask), so an image gives
the same losses and decodings in a padded batch as alone. Images are read column by column
(time = width, as :class:`~rnnkit.models.recognizer.SequenceRecognizer` reads them): memory
position ``s`` is grid cell ``(row s % H', column s // H')``, so the positions of an image of
grid width ``w'`` are the first ``w' * H'``.

Token conventions are seq2seq's: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2 (``<unk>`` = 3 in
an :class:`rnnkit.data.Vocabulary` with those specials); train on ``target_in`` = BOS + caption
and ``target_out`` = caption + EOS padded with -100.

Symbols: ``B`` batch, ``C`` image channels, ``H``/``W`` image height/width, ``H'``/``W'`` the
grid's, ``S = H' * W'`` memory positions, ``M`` memory features, ``T`` target steps, ``V``
vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.models.backbone import Backbone
from rnnkit.models.seq2seq import (
    ATTENTIONS,
    AttentionalDecoding,
    Decoder,
    _check_ids,
    _check_special_ids,
    _positive,
    _probability,
)
from rnnkit.summaries import SummaryMixin

__all__ = ["ImageEncoded", "ImageEncoder", "ImageToSequence", "MaskedBatchNorm2d"]


class ImageEncoded(NamedTuple):
    """What :meth:`ImageToSequence.encode` returns (the fields seq2seq's ``Decoder`` reads,
    plus the grid's shape to turn attention back into a picture)."""

    memory: Tensor  # (B, S, M), S = W' * H' column by column, zero past each grid width
    memory_mask: Tensor  # (B, S) bool, True at positions inside the image
    lengths: Tensor  # (B,) int64, grid columns W' of each image
    summary: Tensor  # (B, M): the mean of the memory over the image's positions
    grid_height: int  # H'
    grid_width: int  # W' of the batch (the widest image)


def _pairs(owner: str, pools: Any, blocks: int) -> list[tuple[int, int]]:
    if not isinstance(pools, (list, tuple)) or len(pools) != blocks:
        raise ValueError(f"{owner}: pools must list one pool size per convolution block "
                         f"({blocks}), got {pools!r}")
    pairs = []
    for pool in pools:
        pair = (pool, pool) if isinstance(pool, int) and not isinstance(pool, bool) else pool
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pair)
        if not ok:
            raise ValueError(f"{owner}: each pool is an int >= 1 or a (height, width) pair of "
                             f"them, got {pool!r}")
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs


def column_mask(widths: Tensor, width: int) -> Tensor:
    """``(B, 1, 1, width)`` float mask: 1 in the first ``widths[b]`` columns, 0 after."""
    columns = torch.arange(width, device=widths.device)
    return (columns < widths.unsqueeze(1)).to(torch.float32).view(-1, 1, 1, width)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` whose training statistics count only the columns inside each
    image: ``forward(x (B, C, H, W), mask (B, 1, 1, W))``. With every column inside, it is
    ``BatchNorm2d`` (output and running statistics); in evaluation it uses the running
    statistics, so an image gives the same output in a padded batch as alone."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None or not self.training:
            return super().forward(x)
        mask = mask.to(x.dtype)
        count = mask.sum() * x.shape[2]  # positions inside the images
        if float(count) < 2:
            raise ValueError(f"{type(self).__name__}: batch statistics need 2 or more "
                             f"positions inside the images, got {int(count)}")
        mean = (x * mask).sum(dim=(0, 2, 3)) / count  # (C,)
        centred = x - mean.view(1, -1, 1, 1)
        var = (centred.square() * mask).sum(dim=(0, 2, 3)) / count  # (C,) biased, as torch
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


class ImageEncoder(Configurable, nn.Module):
    """A small CNN and an optional row encoder: images -> a memory to attend to.

    Args:
        image_height: ``H``; images of another height are an error.
        in_channels: ``C`` (1: grey images, which may also come as ``(B, H, W)``).
        channels: output channels of each convolution block (3x3, padding 1, batch norm,
            ReLU, max-pool).
        pools: each block's max-pool, an int or ``(height, width)``; 1 keeps the size.
        row_encoder: a cell name (see :data:`rnnkit.models.CELL_NAMES`) for a bidirectional
            recurrent layer along each row of the grid (Deng et al. 2017's row encoder: each
            position learns where it lies among its neighbours), or None for the CNN alone.
        row_size: ``M`` with a row encoder (each direction ``row_size // 2``).
        batch_norm: normalise each convolution's output over the batch before the ReLU
            (:class:`MaskedBatchNorm2d`: statistics over the columns inside the images). A CNN
            trained from scratch learns several times faster with it.
        dropout: on the memory, while training.

    Call: ``encoder(images, widths=None)`` -> :class:`ImageEncoded`.

    Example:
        >>> import torch
        >>> encoder = ImageEncoder(28, channels=(4, 8), pools=(2, 2), row_size=6)
        >>> encoded = encoder(torch.rand(2, 28, 40), torch.tensor([40, 17]))
        >>> encoded.memory.shape, encoded.grid_height, encoded.lengths.tolist()
        (torch.Size([2, 70, 6]), 7, [10, 4])
    """

    def __init__(self, image_height: int, *, in_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 96),
                 pools: Sequence[int | Sequence[int]] = (2, 2, 2),
                 row_encoder: str | None = "lstm", row_size: int = 128,
                 batch_norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        owner = type(self).__name__
        self.image_height = _positive(owner, "image_height", image_height)
        self.in_channels = _positive(owner, "in_channels", in_channels)
        if not isinstance(channels, (list, tuple)) or not channels:
            raise ValueError(f"{owner}: channels must list the output channels of each "
                             f"convolution block, got {channels!r}")
        channels = [_positive(owner, "each of channels", c) for c in channels]
        self.pools = _pairs(owner, pools, len(channels))
        self.height_factor = math.prod(p[0] for p in self.pools)
        self.width_factor = math.prod(p[1] for p in self.pools)
        self.grid_height = self.image_height // self.height_factor
        if self.grid_height < 1:
            raise ValueError(f"{owner}: the pools shrink the height by {self.height_factor}, "
                             f"more than image_height={image_height}")
        self.batch_norm = bool(batch_norm)
        self.convolutions = nn.ModuleList()
        self.norms = nn.ModuleList()
        previous = self.in_channels
        for out in channels:
            self.convolutions.append(nn.Conv2d(previous, out, kernel_size=3, padding=1,
                                               bias=not self.batch_norm))
            if self.batch_norm:
                self.norms.append(MaskedBatchNorm2d(out))
            previous = out
        self.drop = nn.Dropout(_probability(owner, "dropout", dropout, top=False))
        self.row_encoder: Backbone | None = None
        if row_encoder is None:
            self.memory_size = previous
        else:
            row_size = _positive(owner, "row_size", row_size)
            if row_size % 2:
                raise ValueError(f"{owner}: the row encoder is bidirectional (row_size // 2 "
                                 f"units each way), so row_size must be even, got {row_size}")
            self.row_encoder = Backbone(previous, row_size // 2, row_encoder,
                                        bidirectional=True)
            self.memory_size = self.row_encoder.output_size

    @property
    def min_width(self) -> int:
        """The narrowest image that leaves one grid column."""
        return self.width_factor

    def check(self, images: Any, widths: Any, owner: str) -> tuple[Tensor, Tensor]:
        """``images`` as ``(B, C, H, W)`` and ``widths`` as ``(B,)`` int64, or a clear error."""
        if not isinstance(images, Tensor):
            raise TypeError(f"{owner}: images must be a torch.Tensor (B, H, W) or (B, C, H, W), "
                            f"got {type(images).__name__}")
        if not images.is_floating_point():
            hint = " (uint8 pixels? use images.float() / 255)" if images.dtype == torch.uint8 \
                else ""
            raise DTypeError(f"{owner}: images must be floating point, got {images.dtype}{hint}")
        if images.dim() == 3 and self.in_channels == 1:
            images = images.unsqueeze(1)  # (B, 1, H, W)
        if images.dim() != 4:
            layout = "(B, H, W) or (B, 1, H, W)" if self.in_channels == 1 else \
                f"(B, C={self.in_channels}, H, W)"
            hint = " (a single image? add a batch axis: images.unsqueeze(0))" \
                if images.dim() == 2 or (images.dim() == 3 and self.in_channels > 1) else ""
            raise ShapeError(f"{owner}: images must be {layout}, got shape "
                             f"{tuple(images.shape)}{hint}")
        batch, chans, height, width = images.shape
        if chans != self.in_channels:
            raise ShapeError(f"{owner}: images have {chans} channel(s) (shape "
                             f"{tuple(images.shape)}) but the model reads in_channels="
                             f"{self.in_channels}")
        if height != self.image_height:
            raise ShapeError(f"{owner}: images are {height} pixels high (shape "
                             f"{tuple(images.shape)}) but the model reads image_height="
                             f"{self.image_height}; resize or pad them to that height")
        if batch < 1:
            raise ShapeError(f"{owner}: the batch holds no image (shape {tuple(images.shape)})")
        if width < self.min_width:
            raise ShapeError(f"{owner}: images are {width} pixels wide but the pools shrink the "
                             f"width by {self.width_factor}: they need >= {self.min_width}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"{owner}: images hold NaN or infinite values")
        if widths is None:
            return images, torch.full((batch,), width, dtype=torch.int64, device=images.device)
        if not isinstance(widths, Tensor):
            widths = torch.as_tensor(widths)
        if widths.dim() != 1 or widths.shape[0] != batch or widths.is_floating_point() or \
                widths.dtype == torch.bool:
            raise ShapeError(f"{owner}: widths must be integers (B,) = ({batch},), one per "
                             f"image, got {widths.dtype} {tuple(widths.shape)}")
        widths = widths.to(images.device, torch.int64)
        bad = ((widths < self.min_width) | (widths > width)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{owner}: widths must lie in [{self.min_width}, W={width}] (the "
                             f"narrowest image that leaves one grid column, the padded width); "
                             f"images {bad[:5]} have widths {widths[bad[:5]].tolist()}")
        return images, widths

    def forward(self, images: Tensor, widths: Tensor | None = None) -> ImageEncoded:
        owner = type(self).__name__
        x, widths = self.check(images, widths, owner)  # (B, C, H, W), (B,)
        dtype = self.convolutions[0].weight.dtype
        x = x.to(dtype)
        # padded columns are zeroed before every convolution: what it sees past an image's
        # edge is then what its zero padding shows when the image is alone. After a pool the
        # mask goes on the pooled grid only: a pool window that reads a padded column lands
        # in a pooled column past the image's (floored) width, which the mask zeroes.
        x = x * column_mask(widths, x.shape[-1]).to(dtype)
        for index, (conv, (pool_h, pool_w)) in enumerate(zip(self.convolutions, self.pools,
                                                              strict=True)):
            x = conv(x)  # (B, C_i, H_i, W_i)
            if self.batch_norm:
                x = self.norms[index](x, column_mask(widths, x.shape[-1]).to(dtype))
            x = F.relu(x)
            if pool_h > 1 or pool_w > 1:
                x = F.max_pool2d(x, (pool_h, pool_w))  # floor: no partial window
                widths = torch.div(widths, pool_w, rounding_mode="floor")
            x = x * column_mask(widths, x.shape[-1]).to(dtype)
        batch, features, grid_height, grid_width = x.shape  # (B, C', H', W')
        rows = x.permute(0, 2, 3, 1)  # (B, H', W', C')
        if self.row_encoder is not None:
            flat = rows.reshape(batch * grid_height, grid_width, features)  # (B*H', W', C')
            row_lengths = widths.repeat_interleave(grid_height).cpu()  # (B*H',)
            encoded, _ = self.row_encoder(flat, lengths=row_lengths)  # (B*H', W', M)
            rows = encoded.reshape(batch, grid_height, grid_width, -1)  # (B, H', W', M)
        memory = rows.transpose(1, 2).reshape(batch, grid_width * grid_height, -1)  # (B, S, M)
        memory = self.drop(memory)
        position = torch.arange(grid_width * grid_height, device=memory.device)
        mask = (position // grid_height).unsqueeze(0) < widths.unsqueeze(1)  # (B, S)
        memory = memory.masked_fill(~mask.unsqueeze(-1), 0.0)
        count = (widths * grid_height).unsqueeze(1).to(memory.dtype)  # (B, 1)
        summary = memory.sum(dim=1) / count  # (B, M)
        return ImageEncoded(memory, mask, widths, summary, grid_height, grid_width)


class ImageToSequence(AttentionalDecoding, Configurable, SummaryMixin, nn.Module):
    """CNN encoder + attentional recurrent decoder, trained with teacher forcing (module docs).

    Args:
        vocab_size: ``V``, the output vocabulary (specials included).
        image_height: ``H``; images of another height are a clear error.
        in_channels, channels, pools, row_encoder, row_size, batch_norm: the encoder
            (:class:`ImageEncoder`).
        embedding_dim, hidden_size, cell, decoder_layers, attention, attention_layer_size,
            input_feeding, cell_options: the decoder (:class:`rnnkit.models.Decoder`):
            ``attention`` is ``"bahdanau"`` (Show, Attend and Tell's additive score, the
            default), ``"luong"`` (dot; needs ``M == hidden_size``), ``"luong_general"`` or
            ``"luong_concat"``.
        dropout: on the memory, the embeddings and before the output layer.
        pad_id, bos_id, eos_id: special ids (distinct, inside the vocabulary).
        teacher_forcing_ratio: the probability of feeding the gold previous token while
            training (below 1: scheduled sampling, as :class:`~rnnkit.models.Seq2Seq`).
        label_smoothing: used by :meth:`loss`.

    Call: ``logits = model(images, target_in, widths=None)`` -> ``(B, T, V)`` for images
    ``(B, H, W)`` or ``(B, C, H, W)`` (float), ``target_in (B, T)`` = BOS + caption (padded
    with ``pad_id``) and ``widths (B,)`` each image's width before padding. Train against
    ``target_out`` = caption + EOS, padded with -100 (``rnnkit.Trainer(loss=
    "sequence_cross_entropy")`` with data ``((images, target_in, widths), target_out)``).

    Example:
        >>> import torch
        >>> model = ImageToSequence(14, image_height=28, channels=(4, 8), pools=(2, 2),
        ...                         row_size=8, embedding_dim=4, hidden_size=8)
        >>> images, widths = torch.rand(2, 28, 60), torch.tensor([60, 33])
        >>> target_in = torch.tensor([[1, 7, 5], [1, 9, 0]])
        >>> model(images, target_in, widths).shape
        torch.Size([2, 3, 14])
        >>> found = model.decode(images, widths, max_length=4)    # tokens (B, 1, L <= 4)
        >>> found.tokens.shape[:2], found.attention.shape[-1]     # attention (B, 1, L, S)
        (torch.Size([2, 1]), 105)
    """

    #: for rnnkit.Trainer: the logits follow ``target_in``; ``target_out`` marks its own padding
    lengths_mask_output = False

    def __init__(self, vocab_size: int, *, image_height: int, in_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 96),
                 pools: Sequence[int | Sequence[int]] = (2, 2, 2),
                 row_encoder: str | None = "lstm", row_size: int = 128,
                 batch_norm: bool = True, embedding_dim: int = 64, hidden_size: int = 128,
                 cell: str = "lstm",
                 decoder_layers: int = 1, attention: str = "bahdanau",
                 attention_layer_size: int | None = None, input_feeding: bool = True,
                 dropout: float = 0.0, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 teacher_forcing_ratio: float = 1.0, label_smoothing: float = 0.0,
                 cell_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.vocab_size = _positive(owner, "vocab_size", vocab_size)
        _check_special_ids(owner, pad_id, bos_id, eos_id, self.vocab_size)
        if attention not in ATTENTIONS:
            raise ValueError(f"{owner}: attention must be one of {', '.join(ATTENTIONS)} (the "
                             f"decoder attends to the image), got {attention!r}")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.teacher_forcing_ratio = _probability(owner, "teacher_forcing_ratio",
                                                  teacher_forcing_ratio, top=True)
        self.label_smoothing = _probability(owner, "label_smoothing", label_smoothing,
                                            top=False)
        self.encoder = ImageEncoder(image_height, in_channels=in_channels, channels=channels,
                                    pools=pools, row_encoder=row_encoder, row_size=row_size,
                                    batch_norm=batch_norm, dropout=dropout)
        self.decoder = Decoder(self.vocab_size, self.encoder.memory_size,
                               embedding_dim=embedding_dim, hidden_size=hidden_size, cell=cell,
                               num_layers=decoder_layers, attention=attention,
                               attention_layer_size=attention_layer_size,
                               input_feeding=input_feeding, dropout=dropout, pad_id=pad_id,
                               cell_options=cell_options)

    @property
    def image_height(self) -> int:
        return self.encoder.image_height

    # ------------------------------------------------------------------ the step interface
    def encode(self, images: Tensor, widths: Tensor | None = None) -> ImageEncoded:
        """``images`` and their ``widths`` (None: all ``W``) -> :class:`ImageEncoded`."""
        return self.encoder(images, widths)

    def attention_grid(self, attention: Tensor, encoded: ImageEncoded) -> Tensor:
        """Attention over memory positions ``(..., S)`` -> ``(..., H', W')`` grid cells
        (row, column), e.g. ``decode(...).attention`` -> ``(B, n_best, L, H', W')``."""
        height, width = encoded.grid_height, encoded.grid_width
        if attention.shape[-1] != height * width:
            raise ShapeError(f"{type(self).__name__}.attention_grid: attention over "
                             f"{attention.shape[-1]} positions, but the grid has {height} x "
                             f"{width} = {height * width}")
        grid = attention.reshape(*attention.shape[:-1], width, height)  # (..., W', H')
        return grid.transpose(-1, -2)  # (..., H', W')

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, images: Tensor, widths: Tensor | None = None, *, method: str = "greedy",
               max_length: int | None = None, beam_width: int | None = None,
               length_penalty: float | None = None, coverage_penalty: float | None = None,
               n_best: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None) -> Any:
        """Captions for ``images`` with :mod:`rnnkit.models.decoding`, dropout off.

        Args:
            images, widths: as :meth:`forward`.
            method: ``"greedy"``, ``"sample"`` or ``"beam"``.
            max_length: the most tokens per output, EOS included (default ``2 * W' + 10``).
            beam_width, length_penalty, coverage_penalty, n_best: beam search only (defaults
                5, 0.0, 0.0, 1). temperature, top_k, top_p, seed: sampling only.

        Returns:
            :class:`~rnnkit.models.decoding.Hypotheses`: ``tokens (B, n_best, L)`` without BOS,
            padded with EOS, ``lengths``, ``scores``, and ``attention (B, n_best, L, S)``
            (:meth:`attention_grid` turns it into ``(B, n_best, L, H', W')``; zero past each
            image's width).
        """
        owner = f"{type(self).__name__}.decode"
        options = {"beam_width": beam_width, "length_penalty": length_penalty,
                   "coverage_penalty": coverage_penalty, "n_best": n_best,
                   "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
        self.check_decode_options(owner, method, max_length, options)
        was_training = self.training
        self.eval()
        try:
            encoded = self.encode(images, widths)
            if max_length is None:
                max_length = 2 * encoded.grid_width + 10
            return self.decode_encoded(encoded, encoded.memory.shape[0], method=method,
                                       max_length=max_length, **options)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ training
    def example_input(self, batch_size: int = 2, steps: int = 8) -> tuple[Tensor, Tensor]:
        """``(images (B, C, H, W), target_in (B, T))`` for :meth:`summary`: random pixels
        ``steps`` grid columns wide, random ids after ``<bos>``."""
        device = next(self.parameters()).device
        width = self.encoder.width_factor * steps
        images = torch.rand(batch_size, self.encoder.in_channels, self.image_height, width,
                            device=device)
        target_in = torch.randint(0, self.vocab_size, (batch_size, steps), device=device)
        target_in[:, 0] = self.bos_id
        return images, target_in

    def forward(self, images: Tensor, target_in: Tensor, widths: Tensor | None = None
                ) -> Tensor:
        """``logits (B, T, V)`` for ``target_in (B, T)`` = BOS + caption, teacher-forced (with
        scheduled sampling while training when ``teacher_forcing_ratio < 1``)."""
        owner = type(self).__name__
        encoded = self.encode(images, widths)
        target_in = _check_ids(owner, "target_in", target_in, self.vocab_size)
        if target_in.shape[0] != encoded.memory.shape[0]:
            raise ShapeError(f"{owner}: images hold {encoded.memory.shape[0]} images but "
                             f"target_in holds {target_in.shape[0]} sequences")
        target_in = target_in.to(encoded.memory.device)
        return self.teacher_forced(encoded, target_in)  # (B, T, V)
