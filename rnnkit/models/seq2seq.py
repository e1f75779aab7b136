"""Encoder-decoder (sequence to sequence) with attention: translation, date normalisation,
addition written as text.

The encoder reads the source (embedding -> recurrent stack, bidirectional by default) into a
memory ``(B, S, H_mem)``; the decoder generates the target one token at a time from the
previous token, its state and (with attention) a fresh look at the memory at every step:

.. math::

    o_t, s_t = \\mathrm{cell}([E y_{t-1}; \\alpha_{t-1}], s_{t-1}), \\quad
    a_t = \\mathrm{align}(o_t, m), \\quad c_t = \\textstyle\\sum_s a_{t,s} m_s, \\quad
    \\alpha_t = \\tanh(W_c [o_t; c_t]), \\quad p(y_t) = \\mathrm{softmax}(W_o \\alpha_t + b_o)

(:class:`~rnnkit.layers.AttentionWrapper` with input feeding, Luong et al. 2015; the score is
Bahdanau's additive one or Luong's dot/general/concat). ``attention=None`` is the baseline of
one context vector (Cho et al. 2014): the encoder's summary :math:`c` (each direction's last
valid output) starts the decoder and is fed with every input,
:math:`o_t, s_t = \\mathrm{cell}([E y_{t-1}; c], s_{t-1})`, :math:`p(y_t) =
\\mathrm{softmax}(W_o o_t + b_o)`. Either way the decoder's first state is
:math:`\\tanh(W_b c + b_b)` (Bahdanau et al. 2015's :math:`s_0`), one slice per state tensor.

With a bidirectional encoder each direction has ``hidden_size // 2`` units, so the memory has
``hidden_size`` features like the decoder (OpenNMT's ``brnn``; Luong's ``dot`` score needs it).

Symbols: ``B`` batch, ``S`` source steps, ``T`` target steps, ``V`` target vocabulary, ``E``
embedding size, ``H`` hidden size, ``H_mem`` memory features.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, MultiCell
from rnnkit.config import Configurable
from rnnkit.engine.autocast import outside_autocast
from rnnkit.engine.lengths import check_lengths
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.layers.attention import AttentionWrapper, BahdanauAttention, LuongAttention
from rnnkit.layers.state import nest_like, state_leaves, zero_state
from rnnkit.models._common import pool
from rnnkit.models.backbone import _CELLS, Backbone, _cell_like, resolve_cell_name
from rnnkit.summaries import SummaryMixin

__all__ = ["ATTENTIONS", "Decoder", "Encoded", "Encoder", "Seq2Seq"]

#: ``attention=`` values: the mechanism and its score
ATTENTIONS = ("bahdanau", "luong", "luong_general", "luong_concat")
_LUONG_SCORES = {"luong": "dot", "luong_general": "general", "luong_concat": "concat"}
# cell names whose backbone is a torch drop-in: the decoder steps the matching cell
_STEP_CELLS: dict[str, tuple[type, dict[str, Any]]] = {
    "lstm": (LSTMCell, {}),
    "gru": (GRUCell, {}),
    "elman": (ElmanCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (ElmanCell, {"nonlinearity": "relu"}),
    "irnn": (ElmanCell, {"nonlinearity": "relu", "init": "irnn"}),
}


class Encoded(NamedTuple):
    """What :meth:`Seq2Seq.encode` returns."""

    memory: Tensor  # (B, S, H_mem), zero at padded steps
    memory_mask: Tensor  # (B, S) bool, True at real source steps
    lengths: Tensor  # (B,) int64
    summary: Tensor  # (B, H_mem): each direction's output at the step it read last


def _positive(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def _probability(owner: str, name: str, value: Any, *, top: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0.0 <= value <= 1.0 if top else 0.0 <= value < 1.0):
        interval = "[0, 1]" if top else "[0, 1)"
        raise ValueError(f"{owner}: {name} must be a number in {interval}, got {value!r}")
    return float(value)


def _check_ids(owner: str, what: str, ids: Any, vocab_size: int) -> Tensor:
    """``ids`` as int64 ``(B, L)``; out-of-vocabulary ids are named with their positions."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{owner}: {what} must be a torch.Tensor of token ids, got "
                        f"{type(ids).__name__}")
    if ids.dim() != 2:
        hint = " (a single sequence? add a batch axis: ids.unsqueeze(0))" if ids.dim() == 1 \
            else ""
        raise ShapeError(f"{owner}: {what} must be token ids (B, L), got shape "
                         f"{tuple(ids.shape)}{hint}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise DTypeError(f"{owner}: {what} must hold integer token ids (int64), got {ids.dtype}")
    if ids.shape[1] < 1:
        raise ShapeError(f"{owner}: {what} has no steps (shape {tuple(ids.shape)})")
    bad = (ids < 0) | (ids >= vocab_size)
    if bool(bad.any()):
        where = bad.nonzero()[:5].tolist()
        listed = ", ".join(f"id {int(ids[b, s])} at (batch {b}, step {s})" for b, s in where)
        more = f" and {int(bad.sum()) - 5} more" if int(bad.sum()) > 5 else ""
        raise ValueError(f"{owner}: {what} holds ids outside the vocabulary [0, {vocab_size}): "
                         f"{listed}{more}")
    return ids.long()


def _check_special_ids(owner: str, pad_id: Any, bos_id: Any, eos_id: Any, vocab_size: int,
                       vocabulary: str = "vocabulary") -> None:
    """``pad_id``, ``bos_id`` and ``eos_id``: ints, distinct, inside ``[0, vocab_size)``."""
    ids = {"pad_id": pad_id, "bos_id": bos_id, "eos_id": eos_id}
    for name, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
        if not 0 <= value < vocab_size:
            raise ValueError(f"{owner}: {name}={value} is outside the {vocabulary} "
                             f"[0, {vocab_size})")
    if len(set(ids.values())) != 3:
        raise ValueError(f"{owner}: pad_id, bos_id and eos_id must differ, got "
                         f"pad_id={pad_id}, bos_id={bos_id}, eos_id={eos_id}")


def _sizes(state: Any) -> Any:
    if isinstance(state, (tuple, list)):
        return tuple(_sizes(part) for part in state)
    return int(state.shape[-1])


def _step_cell(owner: str, cell: str | nn.Module, input_size: int, hidden_size: int,
               options: dict[str, Any]) -> nn.Module:
    """One decoder layer: the cell a name stands for, or a fresh copy of a cell instance."""
    if isinstance(cell, nn.Module):
        return _cell_like(cell, input_size, owner)
    name = resolve_cell_name(cell, owner)
    if name in _STEP_CELLS:
        cls, fixed = _STEP_CELLS[name]
    else:
        cls, fixed = _CELLS[name], {}
    try:
        return cls(input_size, hidden_size, **fixed, **options)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{owner}: decoder cell {name!r}: {error}") from None


class Encoder(Configurable, nn.Module):
    """Source ids ``(B, S)`` -> :class:`Encoded` (memory, mask, lengths, summary).

    Args:
        vocab_size: source vocabulary size.
        embedding_dim: ``E``.
        hidden_size: ``H_mem``, the memory's features (each direction ``H_mem // 2`` when
            bidirectional; with a cell instance, the cell's size times the directions).
        cell, num_layers, bidirectional, dropout, cell_options: the recurrent stack (see
            :class:`~rnnkit.models.backbone.Backbone`); ``dropout`` also drops embeddings.
        pad_id: the padding id (its embedding stays zero).

    Example:
        >>> import torch
        >>> encoder = Encoder(10, embedding_dim=4, hidden_size=6)
        >>> encoded = encoder(torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2]))
        >>> encoded.memory.shape, encoded.memory_mask[1].tolist()
        (torch.Size([2, 3, 6]), [True, True, False])
    """

    def __init__(self, vocab_size: int, *, embedding_dim: int = 64, hidden_size: int = 128,
                 cell: str | nn.Module = "lstm", num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0, pad_id: int = 0,
                 cell_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.vocab_size = _positive(owner, "vocab_size", vocab_size)
        self.pad_id = int(pad_id)
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"{owner}: pad_id={pad_id} is outside the vocabulary "
                             f"[0, {vocab_size})")
        embedding_dim = _positive(owner, "embedding_dim", embedding_dim)
        hidden_size = _positive(owner, "hidden_size", hidden_size)
        self.bidirectional = bool(bidirectional)
        per_direction: int | None = hidden_size
        if isinstance(cell, nn.Module):
            per_direction = None  # the cell's own
        elif self.bidirectional:
            if hidden_size % 2:
                raise ValueError(f"{owner}: a bidirectional encoder gives each direction "
                                 f"hidden_size // 2 units, so hidden_size must be even, got "
                                 f"{hidden_size}")
            per_direction = hidden_size // 2
        self.embedding = nn.Embedding(self.vocab_size, embedding_dim, padding_idx=self.pad_id)
        self.backbone = Backbone(embedding_dim, per_direction, cell, num_layers,
                                 self.bidirectional, dropout, cell_options)
        self.drop = nn.Dropout(self.backbone.dropout)
        self.memory_size = self.backbone.output_size

    def forward(self, source: Tensor, lengths: Tensor | None = None) -> Encoded:
        owner = type(self).__name__
        source = _check_ids(owner, "source", source, self.vocab_size)
        batch, steps = source.shape
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.int64)
        try:
            lengths = check_lengths(lengths, batch, steps, source.device)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{owner}: {error}") from None
        embedded = self.drop(self.embedding(source))  # (B, S, E)
        memory, _ = self.backbone(embedded, lengths=lengths)  # (B, S, H_mem)
        mask = torch.arange(steps, device=source.device).unsqueeze(0) < \
            lengths.to(source.device).unsqueeze(1)  # (B, S)
        summary = pool(memory, lengths, "last", self.bidirectional)  # (B, H_mem)
        return Encoded(memory, mask, lengths, summary)


class Decoder(Configurable, nn.Module):
    """One target step at a time: token ids ``(N,)`` and a state -> next-token logits.

    Args:
        vocab_size: ``V``, the target vocabulary.
        memory_size: ``H_mem``, the encoder memory's features.
        embedding_dim, hidden_size, cell, num_layers, cell_options: the decoder's cells
            (``num_layers > 1``: a :class:`~rnnkit.cells.MultiCell`; a cell instance: fresh
            copies of its config).
        attention: ``"bahdanau"``, ``"luong"`` (dot), ``"luong_general"``, ``"luong_concat"``
            or None (the single-context-vector baseline).
        attention_layer_size: ``A`` (default ``H``), the size of :math:`\\alpha_t`.
        input_feeding: feed :math:`\\alpha_{t-1}` with the input (attention only).
        dropout: on the embeddings and before the output layer.
        pad_id: the padding id (its embedding stays zero).

    State (a tuple of tensors, dim 0 = batch): with attention the
    :class:`~rnnkit.layers.AttentionWrapper` state, which carries the memory; without,
    ``(cell_state, context (N, H_mem))``.
    """

    def __init__(self, vocab_size: int, memory_size: int, *, embedding_dim: int = 64,
                 hidden_size: int = 128, cell: str | nn.Module = "lstm", num_layers: int = 1,
                 attention: str | None = "bahdanau", attention_layer_size: int | None = None,
                 input_feeding: bool = True, dropout: float = 0.0, pad_id: int = 0,
                 cell_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.vocab_size = _positive(owner, "vocab_size", vocab_size)
        self.memory_size = _positive(owner, "memory_size", memory_size)
        embedding_dim = _positive(owner, "embedding_dim", embedding_dim)
        num_layers = _positive(owner, "num_layers", num_layers)
        if attention is not None and attention not in ATTENTIONS:
            raise ValueError(f"{owner}: attention must be one of {', '.join(ATTENTIONS)} or "
                             f"None, got {attention!r}")
        if isinstance(cell, nn.Module):
            hidden_size = int(getattr(cell, "hidden_size", None) or cell.output_size)
        hidden_size = _positive(owner, "hidden_size", hidden_size)
        self.attention = attention
        self.input_feeding = bool(input_feeding) and attention is not None
        self.attention_size = _positive(owner, "attention_layer_size", hidden_size
                                        if attention_layer_size is None
                                        else attention_layer_size)
        options = dict(cell_options or {})
        if attention is None:
            first_input = embedding_dim + self.memory_size
        else:
            first_input = embedding_dim + (self.attention_size if self.input_feeding else 0)
        cells = []
        layer_input = first_input
        for _ in range(num_layers):
            layer = _step_cell(owner, cell, layer_input, hidden_size, options)
            cells.append(layer)
            layer_input = int(layer.output_size)
        stack = cells[0] if num_layers == 1 else MultiCell(cells)
        query_size = int(stack.output_size)
        self.embedding = nn.Embedding(self.vocab_size, embedding_dim, padding_idx=int(pad_id))
        self.drop = nn.Dropout(float(dropout))
        if attention is None:
            self.cell: nn.Module = stack
            out_features = query_size
        else:
            if attention == "bahdanau":
                mechanism: Any = BahdanauAttention(query_size, self.memory_size)
            else:
                if attention == "luong" and self.memory_size != query_size:
                    raise ValueError(f"{owner}: attention 'luong' (dot score) needs memory "
                                     f"features ({self.memory_size}) equal to the decoder's "
                                     f"output ({query_size}); use 'luong_general'")
                mechanism = LuongAttention(query_size, self.memory_size,
                                           score=_LUONG_SCORES[attention])
            self.cell = AttentionWrapper(stack, mechanism, self.attention_size,
                                         attention_activation="tanh", output_attention=True,
                                         input_feeding=self.input_feeding)
            out_features = self.attention_size
        # the cells' state layout as nested sizes, e.g. (H, H) for an LSTM
        self._state_sizes = _sizes(zero_state(stack, 1))
        state_features = sum(state_leaves(self._state_sizes))
        self.bridge = nn.Linear(self.memory_size, state_features)
        self.output = nn.Linear(out_features, self.vocab_size)

    def initial_state(self, encoded: Encoded) -> tuple:
        """The first decoder state: :math:`\\tanh(W_b c + b_b)` for the cells, plus the
        memory (attention) or the context vector (baseline)."""
        bridged = torch.tanh(self.bridge(encoded.summary))  # (B, sum of state sizes)
        sizes = state_leaves(self._state_sizes)
        cell_state = nest_like(list(bridged.split(sizes, dim=-1)), self._state_sizes)
        if self.attention is None:
            return (cell_state, encoded.summary)
        batch = encoded.memory.shape[0]
        return self.cell.initial_state(batch, memory=encoded.memory,
                                       memory_mask=encoded.memory_mask, cell_state=cell_state)

    @outside_autocast
    def forward(self, tokens: Tensor, state: tuple) -> tuple[Tensor, tuple, Tensor | None]:
        """``tokens (N,)`` -> ``(logits (N, V), state, alignments (N, S) | None)``.

        Under ``torch.autocast`` the step runs in the parameters' dtype, autocast off, as every
        rnnkit recurrence does (:mod:`rnnkit.engine.autocast`): the state is never rounded to
        bfloat16 between steps."""
        embedded = self.drop(self.embedding(tokens))  # (N, E)
        if self.attention is None:
            cell_state, context = state
            output, cell_state = self.cell(torch.cat([embedded, context], dim=-1), cell_state)
            return self.output(self.drop(output)), (cell_state, context), None
        output, state = self.cell(embedded, state)  # (N, A)
        return self.output(self.drop(output)), state, state[2]


class AttentionalDecoding:
    """What a model decoding through an attentional :class:`Decoder` shares (:class:`Seq2Seq`,
    :class:`~rnnkit.models.ImageToSequence`): the step function of
    :mod:`rnnkit.models.decoding`, the teacher-forced pass, decoding by method and the token
    loss. The model holds ``decoder``, ``teacher_forcing_ratio``, ``label_smoothing``,
    ``bos_id`` and ``eos_id``; it encodes its own input (token ids, images) into the memory."""

    #: decoding's options and the methods they apply to
    DECODE_OPTIONS = {"greedy": (), "sample": ("temperature", "top_k", "top_p", "seed"),
                      "beam": ("beam_width", "length_penalty", "coverage_penalty", "n_best")}

    def initial_decoder_state(self, encoded: Any) -> tuple:
        """The decoder's first state, a tuple of tensors with the batch on dim 0 (it carries
        the memory, so beam search may repeat and reorder it with ``index_select``)."""
        return self.decoder.initial_state(encoded)

    def decoder_step(self, tokens: Tensor, state: tuple, encoded: Any = None
                     ) -> tuple[Tensor, tuple, Tensor | None]:
        """``tokens (N,)`` -> ``(log_probs (N, V), state, attention (N, S) | None)``, the step
        function of :mod:`rnnkit.models.decoding`.

        ``encoded`` is accepted for the decoding contract; the state already carries what the
        step needs (the memory, or the context vector), so ``N`` may be ``B * beam_width``.
        """
        logits, state, alignments = self.decoder(tokens, state)
        return F.log_softmax(logits.float(), dim=-1).to(logits.dtype), state, alignments

    def teacher_forced(self, encoded: Any, target_in: Tensor) -> Tensor:
        """``logits (B, T, V)`` for checked ``target_in (B, T)`` = BOS + target over the
        ``encoded`` memory, feeding the gold token at each step (or, while training with
        ``teacher_forcing_ratio < 1``, the model's own previous guess at that rate's
        complement: scheduled sampling)."""
        state = self.initial_decoder_state(encoded)
        sampling = self.training and self.teacher_forcing_ratio < 1.0
        tokens = target_in[:, 0]  # (B,)
        logits = []
        for t in range(target_in.shape[1]):
            if t > 0:
                tokens = target_in[:, t]
                if sampling:
                    gold = torch.rand(tokens.shape, device=tokens.device) < \
                        self.teacher_forcing_ratio  # (B,)
                    own = logits[-1].detach().argmax(dim=-1)  # (B,)
                    tokens = torch.where(gold, tokens, own)
            step_logits, state, _ = self.decoder(tokens, state)  # (B, V)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # (B, T, V)

    def check_decode_options(self, owner: str, method: str, max_length: Any,
                             given: dict[str, Any]) -> None:
        """Raise for an unknown ``method``, an option of another method, or a bad
        ``max_length`` (None is the model's default)."""
        methods = self.DECODE_OPTIONS
        if method not in methods:
            raise ValueError(f"{owner}: method must be one of {', '.join(methods)}, got "
                             f"{method!r}")
        foreign = [name for name, value in given.items()
                   if value is not None and name not in methods[method]]
        if foreign:
            raise ValueError(f"{owner}: {', '.join(foreign)} do not apply to method="
                             f"{method!r}")
        if max_length is not None and (isinstance(max_length, bool)
                                       or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"{owner}: max_length must be an int >= 1, got {max_length!r}")

    def decode_encoded(self, encoded: Any, batch_size: int, *, method: str, max_length: int,
                       beam_width: int | None = None, length_penalty: float | None = None,
                       coverage_penalty: float | None = None, n_best: int | None = None,
                       temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None, seed: int | None = None) -> Any:
        """Run :mod:`rnnkit.models.decoding`'s ``method`` from the ``encoded`` memory (the
        options checked by :meth:`check_decode_options`; None takes decoding's default)."""
        from rnnkit.models import decoding

        state = self.initial_decoder_state(encoded)

        def step(tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
            return self.decoder_step(tokens, state)

        common = dict(batch_size=batch_size, bos_id=self.bos_id, eos_id=self.eos_id,
                      max_length=max_length)
        if method == "greedy":
            return decoding.greedy_decode(step, state, **common)
        if method == "sample":
            return decoding.sample_decode(
                step, state, **common, temperature=1.0 if temperature is None
                else temperature, top_k=top_k, top_p=top_p, seed=seed)
        return decoding.beam_search(
            step, state, **common, beam_width=5 if beam_width is None else beam_width,
            length_penalty=length_penalty or 0.0, coverage_penalty=coverage_penalty or 0.0,
            n_best=1 if n_best is None else n_best)

    def loss(self, logits: Tensor, target_out: Tensor) -> Tensor:
        """Mean cross-entropy per target token (``-100`` never counts), with
        ``label_smoothing``."""
        if logits.dim() != 3 or tuple(target_out.shape) != tuple(logits.shape[:2]):
            raise ShapeError(f"{type(self).__name__}.loss: logits (B, T, V) and target_out "
                             f"(B, T) expected, got {tuple(logits.shape)} and "
                             f"{tuple(target_out.shape)}")
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               target_out.reshape(-1).long(), ignore_index=-100,
                               label_smoothing=self.label_smoothing)


class Seq2Seq(AttentionalDecoding, Configurable, SummaryMixin, nn.Module):
    """Encoder-decoder with attention, trained with teacher forcing (see the module docs).

    Args:
        source_vocab_size, target_vocab_size: vocabulary sizes.
        embedding_dim: ``E`` of both embeddings.
        hidden_size: ``H``, the decoder's units and the memory's features.
        cell: a cell name (see :data:`rnnkit.models.CELL_NAMES`) or a cell instance (the
            encoder's first layer; every other layer is a fresh copy of its config).
        encoder_layers, decoder_layers: stacked layers.
        bidirectional_encoder: the encoder reads both ways (``H // 2`` units each).
        attention: ``"bahdanau"``, ``"luong"`` (dot), ``"luong_general"``, ``"luong_concat"``
            or None (one context vector, no attention).
        input_feeding: feed the previous attentional vector with the next input (Luong).
        dropout: on embeddings, between stacked encoder layers, before the output layer.
        pad_id, bos_id, eos_id: special ids (distinct; pad in both vocabularies, BOS/EOS in the
            target's).
        teacher_forcing_ratio: the probability, while training, of feeding the gold previous
            token; otherwise the model's own arg-max is fed (scheduled sampling, Bengio et al.
            2015). 1.0: always teacher forcing. Evaluation always feeds the gold tokens.
        label_smoothing: used by :meth:`loss`.
        attention_layer_size: ``A`` (default ``H``).
        cell_options: keyword arguments for every cell (or the encoder's drop-in).

    Call: ``logits = model(source (B, S), target_in (B, T), lengths=None)`` -> ``(B, T, V)``,
    where ``target_in`` is BOS + the target (padded with ``pad_id``) and ``lengths`` the
    source lengths. Train against ``target_out`` = the target + EOS, padded with -100.

    Example:
        >>> import torch
        >>> model = Seq2Seq(12, 10, embedding_dim=8, hidden_size=16)
        >>> source = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
        >>> target_in = torch.tensor([[1, 4, 5], [1, 6, 0]])
        >>> model(source, target_in, lengths=torch.tensor([4, 2])).shape
        torch.Size([2, 3, 10])
    """

    #: for rnnkit.Trainer: ``lengths`` are the source's; the logits follow ``target_in``, and
    #: ``target_out`` marks its own padding with -100
    lengths_mask_output = False

    def __init__(self, source_vocab_size: int, target_vocab_size: int, *,
                 embedding_dim: int = 64, hidden_size: int = 128, cell: str | nn.Module = "lstm",
                 encoder_layers: int = 1, decoder_layers: int = 1,
                 bidirectional_encoder: bool = True, attention: str | None = "bahdanau",
                 input_feeding: bool = True, dropout: float = 0.0, pad_id: int = 0,
                 bos_id: int = 1, eos_id: int = 2, teacher_forcing_ratio: float = 1.0,
                 label_smoothing: float = 0.0, attention_layer_size: int | None = None,
                 cell_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.source_vocab_size = _positive(owner, "source_vocab_size", source_vocab_size)
        self.target_vocab_size = _positive(owner, "target_vocab_size", target_vocab_size)
        _check_special_ids(owner, pad_id, bos_id, eos_id, self.target_vocab_size,
                           "target vocabulary")
        if not 0 <= pad_id < self.source_vocab_size:
            raise ValueError(f"{owner}: pad_id={pad_id} is outside the source vocabulary "
                             f"[0, {self.source_vocab_size})")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.teacher_forcing_ratio = _probability(owner, "teacher_forcing_ratio",
                                                  teacher_forcing_ratio, top=True)
        self.label_smoothing = _probability(owner, "label_smoothing", label_smoothing,
                                            top=False)
        self.encoder = Encoder(self.source_vocab_size, embedding_dim=embedding_dim,
                               hidden_size=hidden_size, cell=cell, num_layers=encoder_layers,
                               bidirectional=bidirectional_encoder, dropout=dropout,
                               pad_id=pad_id, cell_options=cell_options)
        decoder_hidden = hidden_size
        if isinstance(cell, nn.Module):
            decoder_hidden = int(getattr(cell, "hidden_size", None) or cell.output_size)
        self.decoder = Decoder(self.target_vocab_size, self.encoder.memory_size,
                               embedding_dim=embedding_dim, hidden_size=decoder_hidden,
                               cell=cell, num_layers=decoder_layers, attention=attention,
                               attention_layer_size=attention_layer_size,
                               input_feeding=input_feeding, dropout=dropout, pad_id=pad_id,
                               cell_options=None if isinstance(cell, nn.Module)
                               else cell_options)

    # ------------------------------------------------------------------ the step interface
    def encode(self, source: Tensor, lengths: Tensor | None = None) -> Encoded:
        """``source (B, S)`` ids and their lengths (None: all ``S``) -> :class:`Encoded`."""
        return self.encoder(source, lengths)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, source: Tensor, lengths: Tensor | None = None, *, method: str = "greedy",
               max_length: int | None = None, beam_width: int | None = None,
               length_penalty: float | None = None, coverage_penalty: float | None = None,
               n_best: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None) -> Any:
        """Generate targets for ``source (B, S)`` with :mod:`rnnkit.models.decoding`.

        Args:
            source, lengths: as :meth:`forward` (lengths: None means all ``S`` steps).
            method: ``"greedy"``, ``"sample"`` or ``"beam"``.
            max_length: the most tokens per output, EOS included (default ``2 * S + 10``).
            beam_width, length_penalty (GNMT alpha), coverage_penalty (GNMT beta), n_best:
                beam search only (defaults 5, 0.0, 0.0, 1).
            temperature, top_k, top_p, seed: sampling only (defaults 1.0, None, None, None).

        Returns:
            :class:`~rnnkit.models.decoding.Hypotheses`: ``tokens (B, n_best, L)`` without BOS,
            padded with EOS; ``lengths``, ``scores (B, n_best)``; ``attention (B, n_best, L,
            S)`` (None without attention). Dropout is off while decoding.
        """
        owner = f"{type(self).__name__}.decode"
        options = {"beam_width": beam_width, "length_penalty": length_penalty,
                   "coverage_penalty": coverage_penalty, "n_best": n_best,
                   "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
        self.check_decode_options(owner, method, max_length, options)
        source = _check_ids(owner, "source", source, self.source_vocab_size)
        if max_length is None:
            max_length = 2 * source.shape[1] + 10
        was_training = self.training
        self.eval()
        try:
            return self.decode_encoded(self.encode(source, lengths), source.shape[0],
                                       method=method, max_length=max_length, **options)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ training
    def example_input(self, batch_size: int = 2, steps: int = 8) -> tuple[Tensor, Tensor]:
        """``(source (B, S), target_in (B, T))`` random ids for :meth:`summary`; ``target_in``
        starts with ``<bos>``."""
        device = next(self.parameters()).device
        source = torch.randint(0, self.source_vocab_size, (batch_size, steps), device=device)
        target_in = torch.randint(0, self.target_vocab_size, (batch_size, steps), device=device)
        target_in[:, 0] = self.bos_id
        return source, target_in

    def forward(self, source: Tensor, target_in: Tensor, lengths: Tensor | None = None
                ) -> Tensor:
        """``logits (B, T, V)`` for ``target_in (B, T)`` = BOS + target, teacher-forced (and
        with scheduled sampling while training when ``teacher_forcing_ratio < 1``)."""
        owner = type(self).__name__
        encoded = self.encode(source, lengths)
        target_in = _check_ids(owner, "target_in", target_in, self.target_vocab_size)
        if target_in.shape[0] != source.shape[0]:
            raise ShapeError(f"{owner}: source holds {source.shape[0]} sequences but target_in "
                             f"holds {target_in.shape[0]}")
        return self.teacher_forced(encoded, target_in)  # (B, T, V)

