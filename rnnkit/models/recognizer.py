"""Sequence recognition with CTC: unsegmented label sequences from frames (handwriting, speech).

A :class:`SequenceRecognizer` reads ``T`` frames of ``F`` features (an image's columns, audio
frames), optionally through a small convolutional front end that shortens time to ``T'``, then
a recurrent encoder (any rnnkit cell, bidirectional, stacked) and a linear layer to ``C`` class
scores per frame, normalised with ``log_softmax``. Class ``blank`` is CTC's blank; the others
are the labels. It is trained with Connectionist Temporal Classification (Graves et al. 2006)
through ``torch.nn.functional.ctc_loss``, which sums over every alignment of the target to the
frames, so the targets need no segmentation: ``"3147"`` for an image of four digits.

Symbols: ``B`` batch, ``T`` input frames, ``F`` features per frame, ``T'`` output frames,
``C`` classes (the labels plus the blank), ``L`` target length, ``k`` conv blocks.

**Output lengths.** Without a front end ``T' = T``. Each of the ``k`` conv blocks
(``conv_depth`` 3x3 convolutions over (features, time), padding 1, each followed by an optional
batch norm and ReLU, then 2x2 max-pooling) halves time and features,
rounding down, so ``T' = T // 2**k`` and a row of ``lengths[b]`` frames keeps
``lengths[b] // 2**k`` output frames (:meth:`SequenceRecognizer.output_lengths`); a row must
keep at least one. Padded frames are zeroed before every convolution, so a padded batch gives
each row exactly what the row gives alone (with ``conv_batch_norm``, in eval mode: in training
the batch norm's statistics are the batch's valid frames, as any batch norm's).

**How long a target may be.** CTC emits one label per frame at most and needs a blank between
two equal labels in a row (``"11"`` takes 3 frames: ``1 _ 1``), so a target of length ``L``
with ``r`` adjacent repeats needs ``T' >= L + r`` output frames; :func:`ctc_loss` raises a
``ValueError`` naming the row otherwise (``torch`` would silently return ``inf``).

Example (train on random frames for a few steps, then decode):
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = SequenceRecognizer(8, num_classes=4, hidden_size=16, num_layers=1)
    >>> x, lengths = torch.randn(2, 12, 8), torch.tensor([12, 7])
    >>> targets = torch.tensor([[1, 2, 2], [3, -1, -1]])  # padded with -1
    >>> out = model(x, lengths)
    >>> tuple(out.log_probs.shape), out.lengths.tolist()
    ((2, 12, 4), [12, 7])
    >>> loss = model.loss(out, targets)   # mean over the batch of -log p(target | x)
    >>> loss.backward()
    >>> decoded = model.decode(x, lengths)  # greedy: best path, repeats merged, blanks dropped
    >>> len(decoded), all(0 not in labels for labels in decoded)
    (2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.errors import ShapeError
from rnnkit.layers.masking import lengths_to_mask
from rnnkit.models._common import InputEncoder, parameter_dtype
from rnnkit.models.ctc_decoding import ctc_greedy_decode, ctc_prefix_beam_search
from rnnkit.summaries import SummaryMixin

__all__ = ["PAD_LOG_PROB", "MaskedBatchNorm2d", "RecognizerOutput", "SequenceRecognizer",
           "ctc_loss", "ctc_min_frames"]

#: the log-probability of every non-blank class at a padded output frame (the blank gets 0):
#: a greedy or beam decode over all ``T'`` frames then reads padding as blanks
PAD_LOG_PROB = -1e4
REDUCTIONS = ("mean", "sum", "none")


class RecognizerOutput(NamedTuple):
    """What :meth:`SequenceRecognizer.forward` returns: ``log_probs (B, T', C)`` (log_softmax
    over classes) and ``lengths (B,)`` int64, the valid output frames of each row."""

    log_probs: Tensor
    lengths: Tensor


def ctc_min_frames(labels: Sequence[int] | Tensor) -> int:
    """Output frames CTC needs for ``labels``: one per label plus a blank between equal
    neighbours, ``L + r`` (``[1, 1, 2]`` needs 4: ``1 _ 1 2``)."""
    labels = [int(v) for v in labels]
    repeats = sum(1 for a, b in zip(labels, labels[1:], strict=False) if a == b)
    return len(labels) + repeats


def _length_vector(where: str, name: str, value: Any, batch: int) -> Tensor:
    """``value`` as ``(batch,)`` int64 on the CPU, or a ShapeError naming ``name``."""
    lengths = torch.as_tensor(value).detach().to("cpu")
    if lengths.is_floating_point() or lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ShapeError(f"{where}: {name} must be ({batch},) integers, got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    return lengths.to(torch.int64)


def _target_rows(targets: Any, target_lengths: Any, batch: int, where: str
                 ) -> tuple[Tensor, Tensor]:
    """``(targets (B, L_max) int64, target_lengths (B,) int64)`` from padded targets (any
    negative id is padding, at the end of a row) or a list of label sequences."""
    if isinstance(targets, (list, tuple)) and not isinstance(targets, Tensor):
        rows = [torch.as_tensor(row, dtype=torch.int64).reshape(-1) for row in targets]
        if len(rows) != batch:
            raise ShapeError(f"{where}: {len(rows)} target sequences for a batch of {batch}")
        longest = max((len(r) for r in rows), default=0)
        padded = torch.full((batch, max(longest, 1)), -1, dtype=torch.int64)
        for b, row in enumerate(rows):
            padded[b, :len(row)] = row
        if target_lengths is None:
            target_lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        targets = padded
    if not isinstance(targets, Tensor):
        raise TypeError(f"{where}: targets must be a tensor (B, L) padded with -1 or a list of "
                        f"label sequences, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"{where}: targets must be integer class ids, got {targets.dtype}")
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise ShapeError(f"{where}: targets must be (B, L) = ({batch}, L) label ids padded "
                         f"with -1, got shape {tuple(targets.shape)}")
    targets = targets.detach().to("cpu", torch.int64)
    if target_lengths is None:
        real = targets >= 0  # (B, L)
        target_lengths = real.sum(1)
        # padding must trail: a real id after a pad id would be silently dropped by torch
        after_pad = (~real).cumsum(1) > 0
        holes = real & after_pad
        if bool(holes.any()):
            b, j = (int(v) for v in holes.nonzero()[0])
            raise ValueError(f"{where}: targets[{b}] has a label at position {j} after "
                             "padding (negative ids pad the end of a row only): "
                             f"{targets[b].tolist()}")
    else:
        target_lengths = _length_vector(where, "target_lengths", target_lengths, batch)
        if batch and (int(target_lengths.min()) < 0 or
                      int(target_lengths.max()) > targets.shape[1]):
            raise ShapeError(f"{where}: target_lengths must lie in [0, {targets.shape[1]}] "
                             f"for targets of shape {tuple(targets.shape)}, got "
                             f"{target_lengths.tolist()}")
    return targets, target_lengths


def ctc_loss(log_probs: Tensor, targets: Any, output_lengths: Tensor | Sequence[int] | None = None,
             target_lengths: Tensor | Sequence[int] | None = None, *, blank: int = 0,
             reduction: str = "mean") -> Tensor:
    """CTC negative log-likelihood of ``targets`` given batch-major ``log_probs``, checked.

    Args:
        log_probs: ``(B, T', C)`` log-probabilities (``log_softmax`` over ``C``).
        targets: ``(B, L)`` class ids padded at the end with any negative id (-1, -100), or a
            list of ``B`` label sequences. Ids lie in ``[0, C)`` and are never ``blank``.
        output_lengths: ``(B,)`` valid frames per row (default: all ``T'``).
        target_lengths: ``(B,)`` labels per row (default: the non-negative ids of each row).
        blank: the blank's class id.
        reduction: ``"mean"`` (the mean over the batch of each row's ``-log p(target | x)``,
            summed over its labels: unlike ``torch.nn.CTCLoss``'s ``"mean"``, not divided by
            the target length, so a batch's loss is its rows' average), ``"sum"``, or
            ``"none"`` (``(B,)``).

    Raises:
        ShapeError: shapes that do not fit together; ValueError: an id outside ``[0, C)``, the
        blank inside a target, a target longer than its row's frames allow (counting the
        blank CTC needs between repeated labels), a bad reduction.
    """
    where = "ctc_loss"
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 3:
        got = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs)
        raise ShapeError(f"{where}: log_probs must be (B, T', C), got {got}")
    if not log_probs.is_floating_point():
        raise TypeError(f"{where}: log_probs must be floating point, got {log_probs.dtype}")
    batch, frames, classes = log_probs.shape
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}, got "
                         f"{reduction!r}")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < classes:
        raise ValueError(f"{where}: blank must be a class id in [0, {classes}), got {blank!r}")
    targets, target_lengths = _target_rows(targets, target_lengths, batch, where)
    if output_lengths is None:
        output_lengths = torch.full((batch,), frames, dtype=torch.int64)
    output_lengths = _length_vector(where, "output_lengths", output_lengths, batch)
    if batch and (int(output_lengths.min()) < 1 or int(output_lengths.max()) > frames):
        raise ShapeError(f"{where}: output_lengths must lie in [1, T'={frames}], got "
                         f"{output_lengths.tolist()}")
    for b in range(batch):
        row = targets[b, :int(target_lengths[b])]
        if len(row) and (int(row.min()) < 0 or int(row.max()) >= classes):
            bad = int(row[(row < 0) | (row >= classes)][0])
            raise ValueError(f"{where}: targets[{b}] holds class id {bad}, outside [0, "
                             f"{classes}) for log_probs with C = {classes} classes")
        if bool((row == blank).any()):
            j = int((row == blank).nonzero()[0])
            raise ValueError(f"{where}: targets[{b}][{j}] is the blank ({blank}); the blank is "
                             "not a label (build the model with the blank outside the label "
                             "ids, e.g. labels 1..C-1 with blank=0)")
        need = ctc_min_frames(row)
        have = int(output_lengths[b])
        if need > have:
            repeats = need - len(row)
            raise ValueError(
                f"{where}: targets[{b}] has {len(row)} labels with {repeats} adjacent repeat"
                f"{'s' if repeats != 1 else ''}, which CTC needs {need} output frames for "
                f"(a blank between equal labels), but row {b} has {have}; use longer inputs, "
                "less time reduction, or shorter targets")
    if batch == 0:
        return log_probs.sum() * 0.0
    per_row = F.ctc_loss(
        log_probs.transpose(0, 1),  # (T', B, C), as torch wants
        targets.clamp(min=0).to(log_probs.device), output_lengths.to(log_probs.device),
        target_lengths.to(log_probs.device), blank=blank, reduction="none",
        zero_infinity=False)  # (B,)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def _frame_mask(valid: Tensor, like: Tensor) -> Tensor:
    """``valid (B, T)`` as a float mask for maps ``like (B, C, F, T)``: ``(B, 1, 1, T)``, or
    for channels-last maps ``(B, C, 1, T)`` channels-last, so that a product with the map
    runs along contiguous channels (a ``(B, 1, 1, T)`` mask broadcast over channels-last
    channels takes torch's slow strided loop, ~7x slower for a (32, 16, 28, 164) map)."""
    keep = valid.to(like.dtype)[:, None, None, :]  # (B, 1, 1, T)
    if like.dim() == 4 and like.shape[1] > 1 and not like.is_contiguous() and \
            like.is_contiguous(memory_format=torch.channels_last):
        keep = keep.expand(-1, like.shape[1], -1, -1).contiguous(
            memory_format=torch.channels_last)  # (B, C, 1, T)
    return keep


class _MaskedBatchNormFunction(torch.autograd.Function):
    """Batch norm in training over the valid positions of ``h (B, C, F, T)`` (``keep (B, 1,
    1, T)`` 1.0 at valid frames, 0.0 at padding), zeros at the padding, optionally followed by
    a ReLU, with the backward pass written out: a few native passes over the map each way
    instead of autograd's many. The outputs keep ``h``'s memory format (channels-last in the
    conv front end)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, keep: Tensor, weight: Tensor | None,  # type: ignore[override]
                bias: Tensor | None, eps: float, relu: bool = False
                ) -> tuple[Tensor, Tensor, Tensor]:
        masked = h * keep  # (B, C, F, T), padding zeroed
        # keep is (B, 1, 1, T) or (B, C, 1, T) (see _frame_mask): valid frames times F
        count = float(keep.sum()) * h.shape[2] / keep.shape[1]
        dims = (0, 2, 3)
        # the (C,) sums (pairwise, native) taken on in float64: the variance without
        # catastrophic cancellation
        mean = masked.sum(dims).double() / count  # (C,)
        var = ((masked.square().sum(dims).double() / count - mean.square())
               .clamp(min=0.0))  # (C,), biased
        rstd = torch.rsqrt(var + eps).to(h.dtype)
        mean, var = mean.to(h.dtype), var.to(h.dtype)
        scale = rstd if weight is None else rstd * weight  # (C,)
        shift = -mean * scale if bias is None else bias - mean * scale
        # scale * masked + shift at the valid frames, 0 at the padding, in one pass
        out = torch.empty_like(masked)  # (B, C, F, T), h's memory format
        torch.addcmul(shift[None, :, None, None] * keep, masked, scale[None, :, None, None],
                      out=out)
        if relu:
            out.clamp_(min=0.0)  # the padding stays zero
        ctx.save_for_backward(masked, keep, mean, rstd, scale, out if relu else None)
        ctx.count, ctx.affine = count, weight is not None
        ctx.has_bias, ctx.relu = bias is not None, relu
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # y = scale (h - mean) at valid positions, with the statistics over them; a padded
        # output is the constant 0, so its gradient goes nowhere (with the ReLU: nor does a
        # clipped one's, and a padded output is a clipped one)
        masked, keep, mean, rstd, scale, out = ctx.saved_tensors
        dims = (0, 2, 3)
        # (B, C, F, T): the ReLU's own backward (grad where out > 0) zeroes the padding too
        grad = torch.ops.aten.threshold_backward(grad, out, 0.0) if ctx.relu else grad * keep
        grad_sum = grad.sum(dims)  # (C,)
        # sum over valid positions of grad * (h - mean) * rstd
        grad_dot_xhat = ((grad * masked).sum(dims) - mean * grad_sum) * rstd  # (C,)
        # d h = scale (grad - mean(grad) - xhat mean(grad xhat)) at valid positions, as
        # alpha grad + beta masked + gamma keep
        alpha = scale
        beta = -scale * rstd * grad_dot_xhat / ctx.count
        gamma = -scale * grad_sum / ctx.count - beta * mean
        grad_h = torch.empty_like(grad)  # (B, C, F, T), the map's memory format
        torch.addcmul(gamma[None, :, None, None] * keep, grad, alpha[None, :, None, None],
                      out=grad_h)
        grad_h.addcmul_(masked, beta[None, :, None, None])
        grad_weight = grad_dot_xhat if ctx.affine else None
        grad_bias = grad_sum if ctx.has_bias else None
        return grad_h, None, grad_weight, grad_bias, None, None


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` over ``(B, C, F, T)`` whose batch statistics count only each
    row's valid frames: ``forward(h, valid)`` with ``valid (B, T)`` True at real frames.

    In training the per-channel mean and (biased) variance are taken over the valid ``(b, f,
    t)`` positions alone, and the running statistics are updated from them as torch does
    (momentum, the unbiased variance), so padding never moves the statistics and a batch
    without padding gets exactly ``BatchNorm2d``'s output. In eval mode the running
    statistics are used, so a row's output does not depend on the rest of the batch. With
    ``valid``, the padded frames of the output are zeros (a ReLU keeps them zero, so a
    convolution after it reads zero padding without another mask; their gradient is zero);
    without it, every frame is normalised as ``BatchNorm2d`` does.
    """

    def forward(self, h: Tensor, valid: Tensor | None = None, *,  # type: ignore[override]
                relu: bool = False) -> Tensor:
        """``h (B, C, F, T)``, ``valid (B, T)`` or None -> ``(B, C, F, T)``; ``relu=True``
        applies a ReLU to the result in the same pass (what a conv block does next), with
        the same values and gradients as ``torch.relu`` after it."""
        if valid is None:
            out = super().forward(h)
            return torch.relu(out) if relu else out
        keep = _frame_mask(valid, h)  # (B, 1, 1, T) or (B, C, 1, T)
        batch_statistics = self.training or self.running_mean is None  # as torch decides
        if not batch_statistics:
            out = super().forward(h) * keep
            return torch.relu(out) if relu else out
        out, mean, var = _MaskedBatchNormFunction.apply(h, keep, self.weight, self.bias,
                                                         self.eps, relu)
        if self.training and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                count = float(valid.sum()) * h.shape[2]
                unbiased = var * (count / max(count - 1, 1.0))
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
        return out


class _ConvFrontEnd(nn.Module):
    """``k`` blocks of ``depth`` 3x3 convs (padding 1, each followed by an optional masked
    batch norm and ReLU) + 2x2 max-pool over (features, time): ``(B, T, F) -> (B, T // 2**k,
    channels[-1] * (F // 2**k))``; the padded frames of every convolution's input are zeros,
    so that no row ever sees another row's padding. The maps are channels-last (the layout
    oneDNN's convolutions and pooling run fastest in on CPU)."""

    def __init__(self, features: int, channels: Sequence[int], depth: int = 1,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.depth = depth
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList() if batch_norm else None
        inputs = 1
        for width in channels:
            for _ in range(depth):
                # a conv followed by batch norm needs no bias (the norm's shift replaces it)
                self.convs.append(nn.Conv2d(inputs, width, kernel_size=3, padding=1,
                                            bias=not batch_norm))
                if self.norms is not None:
                    self.norms.append(MaskedBatchNorm2d(width))
                inputs = width
        self.output_size = inputs * (features // 2 ** len(channels))

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        h = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        padding_is_zero = False  # whether h's padded frames are known to be zeros
        for i, conv in enumerate(self.convs):
            valid = lengths_to_mask(lengths.to(h.device), h.shape[-1], batch_first=True)
            if not padding_is_zero:
                h = h * _frame_mask(valid, h)  # (B, c, F_i, T_i), padding zeroed
            h = conv(h.contiguous(memory_format=torch.channels_last))
            if self.norms is not None:
                h = self.norms[i](h, valid, relu=True)  # padding comes out zero
            else:
                h = torch.relu(h)
            # a masked batch norm zeroes the padding (a bare conv's output is not zero there:
            # its bias, and the frames next to the valid ones)
            padding_is_zero = self.norms is not None
            if (i + 1) % self.depth == 0:  # the block's last conv: halve features and time
                h = F.max_pool2d(h, 2)  # (B, c, F_i // 2, T_i // 2)
                lengths = lengths // 2
                padding_is_zero = False  # an odd length pools its last frame into padding
        batch, channels, height, steps = h.shape
        return h.permute(0, 3, 1, 2).reshape(batch, steps, channels * height), lengths


class SequenceRecognizer(Configurable, SummaryMixin, nn.Module):
    """Frames in, per-frame class log-probabilities out, trained with CTC.

    Args:
        input_size: ``F``, features per frame (an image's height when reading columns).
        num_classes: ``C``, the labels plus the blank.
        hidden_size: ``H``, units per recurrent layer and direction.
        cell: any rnnkit cell name (``"lstm"``, ``"gru"``, ``"indrnn"``, ...) or a cell
            instance, as :class:`~rnnkit.models.Backbone`.
        num_layers: stacked recurrent layers.
        bidirectional: read the frames both ways (the usual choice: a label may depend on
            frames after it).
        dropout: between recurrent layers and before the output layer, in training only.
        blank: the blank's class id (default 0, as ``torch.nn.CTCLoss``).
        conv_channels: channels of the conv front end's blocks, e.g. ``(16, 32)``; each block
            halves time and features (``T' = T // 2**k``, see the module docstring). Empty
            (default): none, ``T' = T``.
        conv_depth: 3x3 convolutions per block before its pooling (default 1; 2 as VGG).
        conv_batch_norm: batch norm after each convolution (:class:`MaskedBatchNorm2d`: the
            statistics of a batch count only valid frames); default False.
        cell_options: keyword arguments for the cell (see :class:`~rnnkit.models.Backbone`).

    Call: ``model(x, lengths=None)`` with ``x (B, T, F)`` float -> :class:`RecognizerOutput`
    ``(log_probs (B, T', C), lengths (B,))``. Output frames past a row's length hold the
    "certain blank" (0 for the blank, :data:`PAD_LOG_PROB` elsewhere). With
    :class:`rnnkit.Trainer`: ``Trainer(model, loss=model.loss)`` on batches ``{"x": (B, T, F),
    "lengths": (B,), "y": (B, L) padded with -1}``; the trainer masks the output frames with
    :meth:`output_lengths`.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        *,
        hidden_size: int = 128,
        cell: str | nn.Module = "lstm",
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.0,
        blank: int = 0,
        conv_channels: Sequence[int] = (),
        conv_depth: int = 1,
        conv_batch_norm: bool = False,
        cell_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from rnnkit.models.backbone import Backbone

        owner = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{owner}: num_classes must be an int >= 2 (at least one label "
                             f"and the blank), got {num_classes!r}")
        if isinstance(blank, bool) or not isinstance(blank, int) or \
                not 0 <= blank < num_classes:
            raise ValueError(f"{owner}: blank must be a class id in [0, num_classes="
                             f"{num_classes}), got {blank!r}")
        if isinstance(conv_channels, (str, bytes)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1
                for c in conv_channels):
            raise ValueError(f"{owner}: conv_channels must be a sequence of positive ints, got "
                             f"{conv_channels!r}")
        self.num_classes, self.blank = num_classes, blank
        self.conv_channels = tuple(int(c) for c in conv_channels)
        self.encoder = InputEncoder(owner, input_size, None, None, None, default_embedding=1)
        if input_size < 2 ** len(self.conv_channels):
            raise ValueError(f"{owner}: {len(self.conv_channels)} conv blocks halve the "
                             f"features {len(self.conv_channels)} times, which needs "
                             f"input_size >= {2 ** len(self.conv_channels)}, got {input_size}")
        if isinstance(conv_depth, bool) or not isinstance(conv_depth, int) or conv_depth < 1:
            raise ValueError(f"{owner}: conv_depth must be an int >= 1 (convolutions per "
                             f"block), got {conv_depth!r}")
        if not isinstance(conv_batch_norm, bool):
            raise TypeError(f"{owner}: conv_batch_norm must be True or False, got "
                            f"{conv_batch_norm!r}")
        self.frontend = _ConvFrontEnd(input_size, self.conv_channels, conv_depth,
                                      conv_batch_norm) if self.conv_channels else None
        features = self.frontend.output_size if self.frontend is not None else input_size
        self.backbone = Backbone(features, hidden_size, cell, num_layers, bidirectional,
                                 dropout, cell_options)
        self.drop = nn.Dropout(self.backbone.dropout)
        self.head = nn.Linear(self.backbone.output_size, num_classes)

    def example_input(self, batch_size: int = 2, steps: int | None = None) -> Tensor:
        """A batch for :meth:`summary`: random frames ``(B, T, F)``; ``T`` defaults to 8
        output frames' worth (``8 * 2**k``)."""
        steps = 8 * self.time_reduction if steps is None else steps
        return torch.rand(batch_size, steps, self.encoder.features,
                          device=next(self.parameters()).device, dtype=parameter_dtype(self))

    @property
    def time_reduction(self) -> int:
        """How many input frames make one output frame: ``2**k`` (1 without a front end)."""
        return 2 ** len(self.conv_channels)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output frames for rows of ``lengths`` input frames: ``lengths // 2**k``."""
        return torch.as_tensor(lengths).to(torch.int64) // self.time_reduction

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> RecognizerOutput:
        """``x (B, T, F)`` -> ``RecognizerOutput(log_probs (B, T', C), lengths (B,))``."""
        owner = type(self).__name__
        x, lengths = self.encoder.check(x, lengths, parameter_dtype(self))
        batch, steps = x.shape[:2]
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=x.device)
        if self.frontend is not None:
            if steps < self.time_reduction or int(lengths.min()) < self.time_reduction:
                short = min(steps, int(lengths.min()))
                raise ShapeError(f"{owner}: a row of {short} frames is too short for the "
                                 f"{len(self.conv_channels)} conv blocks (each halves time; "
                                 f"rows need >= {self.time_reduction} frames)")
            features, lengths = self.frontend(x, lengths)  # (B, T', F'), (B,)
        else:
            features = x  # (B, T, F)
        outputs, _ = self.backbone(features, lengths=lengths.cpu())  # (B, T', D*H)
        log_probs = torch.log_softmax(self.head(self.drop(outputs)), dim=-1)  # (B, T', C)
        valid = lengths_to_mask(lengths.to(x.device), log_probs.shape[1],
                                batch_first=True)  # (B, T')
        if not bool(valid.all()):
            certain_blank = torch.full((self.num_classes,), PAD_LOG_PROB, dtype=log_probs.dtype,
                                       device=log_probs.device)
            certain_blank[self.blank] = 0.0
            log_probs = torch.where(valid.unsqueeze(-1), log_probs, certain_blank)
        return RecognizerOutput(log_probs, lengths.to("cpu", torch.int64))

    def loss(self, log_probs: Tensor | RecognizerOutput, targets: Any,
             mask: Tensor | None = None, *, output_lengths: Tensor | None = None,
             target_lengths: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """CTC loss of ``targets`` (see :func:`ctc_loss`) with this model's blank.

        ``log_probs`` is what :meth:`forward` returned (its lengths are used) or its
        ``(B, T', C)`` tensor with ``output_lengths`` or a ``mask (B, T')`` True at valid
        frames (what :class:`rnnkit.Trainer` passes when it calls ``loss(output, target,
        mask=...)``).
        """
        if isinstance(log_probs, RecognizerOutput):
            log_probs, lengths = log_probs
            if output_lengths is None:
                output_lengths = lengths
        if output_lengths is None and mask is not None:
            if mask.dim() != 2 or tuple(mask.shape) != tuple(log_probs.shape[:2]):
                raise ShapeError(f"{type(self).__name__}.loss: mask shape "
                                 f"{tuple(mask.shape)} does not match the (B, T') of log_probs "
                                 f"{tuple(log_probs.shape)}")
            output_lengths = mask.sum(1)
        if isinstance(log_probs, Tensor) and log_probs.dim() == 3 and \
                log_probs.shape[-1] != self.num_classes:
            raise ShapeError(f"{type(self).__name__}.loss: log_probs have "
                             f"{log_probs.shape[-1]} classes, the model {self.num_classes}")
        return ctc_loss(log_probs, targets, output_lengths, target_lengths, blank=self.blank,
                        reduction=reduction)

    @torch.no_grad()
    def decode(self, x: Tensor, lengths: Tensor | None = None, *, method: str = "greedy",
               beam_width: int = 8, lm: Any = None, lm_weight: float = 0.0,
               **beam_options: Any) -> list[list[int]]:
        """The label ids read from each row, blanks removed (eval mode, no gradients).

        ``method="greedy"``: best path (the top class per frame, repeats merged, blanks
        dropped); ``"beam"``: CTC prefix beam search of ``beam_width`` with an optional
        character language model ``lm`` weighted by ``lm_weight`` (further options such as
        ``insertion_bonus`` go to :func:`~rnnkit.models.ctc_decoding.ctc_prefix_beam_search`).
        Both read only each row's valid output frames.
        """
        if method not in ("greedy", "beam"):
            raise ValueError(f"{type(self).__name__}.decode: method must be 'greedy' or "
                             f"'beam', got {method!r}")
        if method == "greedy" and (lm is not None or lm_weight or beam_options):
            raise ValueError(f"{type(self).__name__}.decode: lm, lm_weight and beam options "
                             "apply to method='beam'")
        was_training = self.training
        self.eval()
        try:
            log_probs, out_lengths = self(x, lengths)
        finally:
            self.train(was_training)
        if method == "greedy":
            return ctc_greedy_decode(log_probs, out_lengths, blank=self.blank)
        hypotheses = ctc_prefix_beam_search(log_probs, out_lengths, blank=self.blank,
                                            beam_width=beam_width, lm=lm, lm_weight=lm_weight,
                                            **beam_options)
        return [list(row[0].labels) for row in hypotheses]
