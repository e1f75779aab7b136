"""Attention over a memory (an encoder's outputs), after TF1's ``tf.contrib.seq2seq``
(``attention_wrapper.py``): the mechanisms score a query against the memory, and
:class:`AttentionWrapper` wraps any cell so that every step attends.

Mechanisms (small modules; ``alignments = mechanism(query, keys, mask)``):

* :class:`BahdanauAttention` (additive, Bahdanau et al. 2015), TF1's ``BahdanauAttention``:

  .. math::

      \\mathrm{score}(q, m_s) = v^\\top \\tanh(W_1 m_s + W_2 q)
      \\qquad (\\texttt{normalize=True}:\\;
      \\tfrac{g}{\\lVert v\\rVert} v^\\top \\tanh(W_1 m_s + W_2 q + b))

* :class:`LuongAttention` (multiplicative, Luong et al. 2015) with ``score=``
  ``"dot"``: :math:`q^\\top m_s`; ``"general"`` (TF1's ``LuongAttention``):
  :math:`q^\\top W_a m_s`; ``"concat"``: :math:`v^\\top \\tanh(W_a [q; m_s])`; ``scale=True``
  multiplies the score by a learned scalar :math:`g` (initially 1).

Every score is masked before the softmax (``-inf`` where ``memory_mask`` is False, TF1's
``score_mask_value``), so the alignments are exactly 0 on source padding and sum to 1:
:math:`a_s = \\mathrm{softmax}_s(\\mathrm{score}(q, m_s))`, the context
:math:`c = \\sum_s a_s m_s`.

:class:`AttentionWrapper` (TF1's ``AttentionWrapper``) runs, at each step,

.. math::

    o_t, s_t = \\mathrm{cell}([x_t; \\alpha_{t-1}], s_{t-1}) \\quad(\\text{input feeding}),
    \\qquad a_t = \\mathrm{align}(o_t, m), \\qquad c_t = \\textstyle\\sum_s a_{t,s} m_s,

    \\alpha_t = W_c [o_t; c_t] \\;(\\texttt{attention\\_layer\\_size}, \\text{optionally}
    \\tanh) \\;\\text{or}\\; c_t,

and outputs :math:`\\alpha_t` (``output_attention=True``, Luong) or :math:`o_t`. Its state
carries the attention context, so every rnnkit driver (``Recurrence``, ``UnfoldFrom``) and the
decoding functions (beam search reorders dim 0 of every state tensor) run it unchanged: the
state is a tuple of ``(B, ...)`` tensors ``(cell_state, attention (B, A), alignments (B, S),
memory (B, S*M), keys (B, S*K), memory_mask (B, S) bool)``; memory and keys travel flattened
because drivers treat every state tensor as ``(B, size)``. Build the first state with
:meth:`AttentionWrapper.initial_state` and ``memory=``.

Symbols: ``B`` batch, ``S`` memory (source) steps, ``M`` memory features, ``Q`` query
features (the cell's output), ``K`` key features, ``A`` attention size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.errors import ShapeError
from rnnkit.layers.state import CellWrapper, zero_state

__all__ = [
    "AttentionMechanism",
    "AttentionWrapper",
    "BahdanauAttention",
    "LUONG_SCORES",
    "LuongAttention",
    "masked_softmax",
]

LUONG_SCORES = ("dot", "general", "concat")


def _size(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """``softmax(scores)`` over the last axis with ``-inf`` where ``mask`` is False: exactly 0
    at masked positions; each row needs one True."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, S)
    return scores.softmax(dim=-1)


class AttentionMechanism(Configurable, nn.Module):
    """Base of the mechanisms: ``keys = prepare(memory)`` once per source batch, then
    ``alignments = self(query (B, Q), keys (B, S, K), memory_mask (B, S) | None)`` per step.

    Subclasses set ``query_size``, ``memory_size``, ``key_size`` and implement
    :meth:`prepare` and :meth:`score`.
    """

    query_size: int
    memory_size: int
    key_size: int

    def prepare(self, memory: Tensor) -> Tensor:
        """``memory (B, S, M)`` -> ``keys (B, S, K)`` (TF1's ``memory_layer``)."""
        raise NotImplementedError

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """``query (B, Q)``, ``keys (B, S, K)`` -> unnormalised scores ``(B, S)``."""
        raise NotImplementedError

    def check_memory(self, memory: Any, memory_mask: Any = None) -> None:
        owner = type(self).__name__
        if not isinstance(memory, Tensor) or memory.dim() != 3:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ShapeError(f"{owner}: memory must be (B, S, M={self.memory_size}), got {got}")
        if memory.shape[-1] != self.memory_size:
            raise ShapeError(f"{owner}: memory has {memory.shape[-1]} features but the "
                             f"mechanism was built with memory_size={self.memory_size}")
        if memory.shape[1] < 1:
            raise ShapeError(f"{owner}: memory has no steps (shape {tuple(memory.shape)})")
        if memory_mask is not None:
            if not isinstance(memory_mask, Tensor) or memory_mask.dtype != torch.bool or \
                    tuple(memory_mask.shape) != tuple(memory.shape[:2]):
                got = (f"{memory_mask.dtype} {tuple(memory_mask.shape)}"
                       if isinstance(memory_mask, Tensor) else type(memory_mask).__name__)
                raise ShapeError(f"{owner}: memory_mask must be bool (B, S) = "
                                 f"{tuple(memory.shape[:2])}, got {got}")
            empty = (~memory_mask.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"{owner}: memory_mask rows {empty} have no valid step; "
                                 "every sequence needs at least one")

    def forward(self, query: Tensor, keys: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Alignments ``(B, S)``: the masked softmax of the scores."""
        if query.dim() != 2 or query.shape[-1] != self.query_size:
            raise ShapeError(f"{type(self).__name__}: query must be (B, Q={self.query_size}), "
                             f"got {tuple(query.shape)}")
        return masked_softmax(self.score(query, keys), memory_mask)  # (B, S)


class BahdanauAttention(AttentionMechanism):
    """Additive attention (TF1 ``tf.contrib.seq2seq.BahdanauAttention``).

    Args:
        query_size: ``Q``, features of the query (the wrapped cell's output).
        memory_size: ``M``, features per memory step.
        num_units: ``K``, the depth of the mechanism (default ``Q``).
        normalize: the weight-normalised form (Salimans & Kingma 2016): :math:`v` replaced
            by :math:`g\\,v / \\lVert v\\rVert` with :math:`g` initialised to
            :math:`\\sqrt{1/K}`, and a bias :math:`b` (zeros) inside the tanh.

    Parameters: ``memory_layer`` (``W_1``, no bias), ``query_layer`` (``W_2``, no bias),
    ``v`` ``(K,)``; with ``normalize`` also ``g`` (scalar) and ``b`` ``(K,)``.

    Example:
        >>> import torch
        >>> attention = BahdanauAttention(4, 6, num_units=5)
        >>> memory = torch.randn(2, 3, 6)
        >>> mask = torch.tensor([[True, True, True], [True, False, False]])
        >>> weights = attention(torch.randn(2, 4), attention.prepare(memory), mask)
        >>> weights[1].tolist()
        [1.0, 0.0, 0.0]
    """

    def __init__(self, query_size: int, memory_size: int, num_units: int | None = None, *,
                 normalize: bool = False) -> None:
        super().__init__()
        owner = type(self).__name__
        self.query_size = _size(owner, "query_size", query_size)
        self.memory_size = _size(owner, "memory_size", memory_size)
        self.key_size = _size(owner, "num_units", query_size if num_units is None
                              else num_units)
        self.normalize = bool(normalize)
        self.memory_layer = nn.Linear(self.memory_size, self.key_size, bias=False)
        self.query_layer = nn.Linear(self.query_size, self.key_size, bias=False)
        bound = math.sqrt(3.0 / self.key_size)  # TF1's default: glorot-uniform-sized v
        self.v = nn.Parameter(torch.empty(self.key_size).uniform_(-bound, bound))
        if self.normalize:
            self.g = nn.Parameter(torch.tensor(math.sqrt(1.0 / self.key_size)))
            self.b = nn.Parameter(torch.zeros(self.key_size))

    def prepare(self, memory: Tensor) -> Tensor:
        return self.memory_layer(memory)  # (B, S, K)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        processed = self.query_layer(query).unsqueeze(1)  # (B, 1, K)
        if self.normalize:
            v = self.g * self.v / self.v.norm()  # (K,)
            return (v * torch.tanh(keys + processed + self.b)).sum(-1)  # (B, S)
        return (self.v * torch.tanh(keys + processed)).sum(-1)  # (B, S)

    def extra_repr(self) -> str:
        return (f"query_size={self.query_size}, memory_size={self.memory_size}, "
                f"num_units={self.key_size}, normalize={self.normalize}")


class LuongAttention(AttentionMechanism):
    """Multiplicative attention (Luong et al. 2015; TF1's ``LuongAttention`` is ``"general"``).

    Args:
        query_size: ``Q``, features of the query (the wrapped cell's output).
        memory_size: ``M``, features per memory step (``"dot"`` needs ``M == Q``).
        score: ``"dot"`` :math:`q^\\top m_s`, ``"general"`` :math:`q^\\top W_a m_s`,
            ``"concat"`` :math:`v^\\top \\tanh(W_a [q; m_s])`.
        scale: multiply the score by a learned scalar ``g`` (initially 1; TF1's ``scale``).
        num_units: ``"concat"`` only: rows of :math:`W_a` (default ``Q``).

    Parameters: ``"general"``: ``memory_layer`` (``W_a``, ``M -> Q``, no bias); ``"concat"``:
    ``memory_layer`` and ``query_layer`` (the memory and query columns of ``W_a``, no bias) and
    ``v``; ``scale``: ``g``.

    Example:
        >>> import torch
        >>> attention = LuongAttention(4, 4, score="dot")
        >>> memory = torch.randn(1, 3, 4)
        >>> weights = attention(torch.randn(1, 4), attention.prepare(memory))
        >>> round(float(weights.sum()), 6)
        1.0
    """

    def __init__(self, query_size: int, memory_size: int, *, score: str = "general",
                 scale: bool = False, num_units: int | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.query_size = _size(owner, "query_size", query_size)
        self.memory_size = _size(owner, "memory_size", memory_size)
        if score not in LUONG_SCORES:
            raise ValueError(f"{owner}: score must be one of {', '.join(LUONG_SCORES)}, got "
                             f"{score!r}")
        self.score_name = score
        self.scale = bool(scale)
        if num_units is not None and score != "concat":
            raise ValueError(f"{owner}: num_units sizes the 'concat' score's W_a; score "
                             f"{score!r} has no such choice")
        if score == "dot":
            if self.memory_size != self.query_size:
                raise ValueError(f"{owner}: score 'dot' needs memory_size == query_size, got "
                                 f"{self.memory_size} and {self.query_size}; use 'general'")
            self.key_size = self.memory_size
        elif score == "general":
            self.key_size = self.query_size
            self.memory_layer = nn.Linear(self.memory_size, self.key_size, bias=False)
        else:
            self.key_size = _size(owner, "num_units", query_size if num_units is None
                                  else num_units)
            self.memory_layer = nn.Linear(self.memory_size, self.key_size, bias=False)
            self.query_layer = nn.Linear(self.query_size, self.key_size, bias=False)
            bound = math.sqrt(3.0 / self.key_size)
            self.v = nn.Parameter(torch.empty(self.key_size).uniform_(-bound, bound))
        if self.scale:
            self.g = nn.Parameter(torch.tensor(1.0))

    def prepare(self, memory: Tensor) -> Tensor:
        if self.score_name == "dot":
            return memory  # (B, S, M)
        return self.memory_layer(memory)  # (B, S, K)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        if self.score_name == "concat":
            processed = self.query_layer(query).unsqueeze(1)  # (B, 1, K)
            scores = (self.v * torch.tanh(keys + processed)).sum(-1)  # (B, S)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)  # (B, S)
        return self.g * scores if self.scale else scores

    def extra_repr(self) -> str:
        return (f"query_size={self.query_size}, memory_size={self.memory_size}, "
                f"score={self.score_name!r}, scale={self.scale}")


class AttentionWrapper(CellWrapper):
    """Wrap a cell with attention over a memory (TF1 ``tf.contrib.seq2seq.AttentionWrapper``).

    Args:
        cell: any cell (rnnkit's, a :class:`~rnnkit.cells.MultiCell` stack, your own). With
            ``input_feeding`` its ``input_size`` is the wrapper's input size plus ``A``.
        mechanism: a :class:`BahdanauAttention` or :class:`LuongAttention` whose
            ``query_size`` is the cell's ``output_size``.
        attention_layer_size: ``A``: the attention is :math:`W_c [o_t; c_t]` (no bias, as
            TF1) of this size; None: the attention is the context :math:`c_t` (``A = M``).
        attention_activation: ``None`` (TF1) or ``"tanh"`` (Luong et al.'s
            :math:`\\tilde h_t = \\tanh(W_c [c_t; h_t])`), applied after ``W_c``.
        output_attention: output :math:`\\alpha_t` (True, Luong style) or the cell's output
            (False, Bahdanau style); the attention goes to the next step either way.
        alignment_history: append each step's alignments ``(B, S)`` to the output; split them
            off with :meth:`split_output` (``(T, B, S)`` after a ``Recurrence``; zero at padded
            steps). TF1 keeps them in a ``TensorArray`` in the state instead.
        input_feeding: feed the previous attention into the cell with the input (TF1's
            default ``cell_input_fn``, concatenation); False feeds the input alone.

    State: ``(cell_state, attention (B, A), alignments (B, S), memory (B, S*M), keys (B, S*K),
    memory_mask (B, S) bool)`` (see the module docs); make it with :meth:`initial_state`.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> from rnnkit.layers import Recurrence
        >>> wrapper = AttentionWrapper(GRUCell(3 + 5, 4), BahdanauAttention(4, 6),
        ...                            attention_layer_size=5)
        >>> memory = torch.randn(2, 7, 6)                       # (B, S, M)
        >>> state = wrapper.initial_state(2, memory=memory, memory_lengths=torch.tensor([7, 3]))
        >>> outputs, final = Recurrence(wrapper, batch_first=True)(torch.randn(2, 9, 3), state)
        >>> outputs.shape, final[2][1, 3:].abs().sum().item()    # alignments on padding: 0
        (torch.Size([2, 9, 5]), 0.0)
    """

    state_names = ("cell_state", "attention", "alignments", "memory", "keys", "memory_mask")

    def __init__(self, cell: nn.Module, mechanism: AttentionMechanism,
                 attention_layer_size: int | None = None, *,
                 attention_activation: str | None = None, output_attention: bool = True,
                 alignment_history: bool = False, input_feeding: bool = True) -> None:
        super().__init__(cell)
        owner = type(self).__name__
        if not isinstance(cell, nn.Module) or not hasattr(cell, "state_size"):
            raise TypeError(f"{owner}: cell must be a recurrent cell (an nn.Module with "
                            f"state_size), got {type(cell).__name__}")
        if not isinstance(mechanism, AttentionMechanism):
            raise TypeError(f"{owner}: mechanism must be a BahdanauAttention or LuongAttention"
                            f", got {type(mechanism).__name__}")
        cell_output = getattr(cell, "output_size", None)
        if cell_output is not None and int(cell_output) != mechanism.query_size:
            raise ValueError(f"{owner}: the cell outputs {cell_output} features but the "
                             f"mechanism's query_size is {mechanism.query_size}")
        if attention_activation not in (None, "tanh"):
            raise ValueError(f"{owner}: attention_activation must be None or 'tanh', got "
                             f"{attention_activation!r}")
        self.mechanism = mechanism
        self.attention_activation = attention_activation
        self.output_attention = bool(output_attention)
        self.alignment_history = bool(alignment_history)
        self.input_feeding = bool(input_feeding)
        if attention_layer_size is None:
            self.attention_layer = None
            self.attention_size = mechanism.memory_size
        else:
            self.attention_size = _size(owner, "attention_layer_size", attention_layer_size)
            self.attention_layer = nn.Linear(mechanism.query_size + mechanism.memory_size,
                                             self.attention_size, bias=False)
        cell_input = getattr(cell, "input_size", None)
        if self.input_feeding and isinstance(cell_input, int) and \
                cell_input <= self.attention_size:
            raise ValueError(f"{owner}: with input_feeding the cell reads [input; attention], "
                             f"so its input_size ({cell_input}) must exceed the attention size "
                             f"({self.attention_size})")

    @property
    def input_size(self) -> int:
        size = int(self.cell.input_size)
        return size - self.attention_size if self.input_feeding else size

    @property
    def output_size(self) -> int:
        """Features of each step's output (without the appended alignments)."""
        return self.attention_size if self.output_attention else int(self.cell.output_size)

    @property
    def state_size(self) -> tuple:
        """``(cell.state_size, A, None, None, None, None)``: the ``None`` parts depend on the
        memory's length."""
        return (self.cell.state_size, self.attention_size, None, None, None, None)

    def initial_state(self, batch_size: int, device: Any = None, dtype: Any = None, *,
                      memory: Tensor | None = None, memory_lengths: Tensor | None = None,
                      memory_mask: Tensor | None = None, cell_state: Any = None) -> tuple:
        """The first state: the cell's ``cell_state`` (default: its zero state), zero
        attention and alignments, and the memory ``(B, S, M)`` with its keys and mask
        (``memory_lengths (B,)`` or ``memory_mask (B, S)`` bool; neither: every step valid).
        Memory rows past the lengths are zeroed (TF1's ``_prepare_memory``)."""
        owner = type(self).__name__
        if memory is None:
            raise TypeError(f"{owner}: the state carries the memory it attends to; start from "
                            "state=wrapper.initial_state(B, memory=..., memory_lengths=...)")
        if memory_lengths is not None and memory_mask is not None:
            raise ValueError(f"{owner}: give memory_lengths or memory_mask, not both")
        if memory_lengths is not None:
            lengths = torch.as_tensor(memory_lengths, device=memory.device)
            if lengths.dim() != 1 or lengths.shape[0] != memory.shape[0]:
                raise ShapeError(f"{owner}: memory_lengths must be (B,) = ({memory.shape[0]},), "
                                 f"got {tuple(lengths.shape)}")
            bad = ((lengths < 1) | (lengths > memory.shape[1])).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"{owner}: memory_lengths must lie in [1, S={memory.shape[1]}]; "
                                 f"rows {bad} hold {lengths[bad].tolist()}")
            steps = torch.arange(memory.shape[1], device=memory.device)
            memory_mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # (B, S)
        self.mechanism.check_memory(memory, memory_mask)
        batch, steps = memory.shape[0], memory.shape[1]
        if batch_size != batch:
            raise ShapeError(f"{owner}: batch_size={batch_size} but the memory holds {batch} "
                             "sequences")
        if memory_mask is None:
            memory_mask = torch.ones(batch, steps, dtype=torch.bool, device=memory.device)
        memory = memory.masked_fill(~memory_mask.unsqueeze(-1), 0.0)  # (B, S, M)
        keys = self.mechanism.prepare(memory)  # (B, S, K)
        dtype = dtype or memory.dtype
        if cell_state is None:
            cell_state = zero_state(self.cell, batch, memory.device, dtype)
        attention = memory.new_zeros(batch, self.attention_size)  # (B, A)
        alignments = memory.new_zeros(batch, steps)  # (B, S)
        return (cell_state, attention, alignments, memory.reshape(batch, -1),
                keys.reshape(batch, -1), memory_mask)

    def split_output(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., A + S)`` outputs of ``alignment_history=True`` -> ``(outputs (..., A),
        alignments (..., S))``."""
        if not self.alignment_history:
            raise ValueError(f"{type(self).__name__}: split_output needs "
                             "alignment_history=True")
        return outputs[..., :self.output_size], outputs[..., self.output_size:]

    def forward(self, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        owner = type(self).__name__
        if not isinstance(state, (tuple, list)) or len(state) != 6:
            raise TypeError(f"{owner}: state must be the 6-tuple initial_state(B, memory=...) "
                            f"returns ({', '.join(self.state_names)}), got "
                            f"{type(state).__name__}")
        cell_state, attention, _, memory, keys, memory_mask = state
        batch, steps = memory_mask.shape
        memory_3d = memory.reshape(batch, steps, -1)  # (B, S, M)
        keys_3d = keys.reshape(batch, steps, -1)  # (B, S, K)
        cell_input = torch.cat([x, attention], dim=-1) if self.input_feeding else x
        cell_output, cell_state = self.cell(cell_input, cell_state)  # (B, Q)
        alignments = self.mechanism(cell_output, keys_3d, memory_mask)  # (B, S)
        context = torch.bmm(alignments.unsqueeze(1), memory_3d).squeeze(1)  # (B, M)
        if self.attention_layer is not None:
            attention = self.attention_layer(torch.cat([cell_output, context], dim=-1))  # (B, A)
            if self.attention_activation == "tanh":
                attention = torch.tanh(attention)
        else:
            attention = context
        output = attention if self.output_attention else cell_output
        if self.alignment_history:
            output = torch.cat([output, alignments], dim=-1)  # (B, A + S)
        return output, (cell_state, attention, alignments, memory, keys, memory_mask)

    def extra_repr(self) -> str:
        return (f"attention_size={self.attention_size}, output_attention="
                f"{self.output_attention}, input_feeding={self.input_feeding}")
