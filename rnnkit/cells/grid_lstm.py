"""Grid LSTM cells over time and frequency (TF1 contrib's ``GridLSTMCell`` and
``BidirectionalGridLSTMCell``)."""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import (
    RecurrentCell,
    check_choice,
    check_flag,
    check_positive,
    check_real,
    check_size,
    factory_kwargs,
    optional_parameter,
)
from rnnkit.errors import ShapeError

#: one block of the grid: its input columns [start, end) and how many windows tile them
Block = tuple[int, int, int]


def _int_list(owner: str, name: str, value: object) -> list[int] | None:
    """``None``, or a non-empty list/tuple of integers (any integral type, not bools)."""
    if value is None:
        return None
    if isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"{owner}: {name} must be a non-empty list of ints, got {value!r}")
    for item in value:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, Integral):
            raise TypeError(f"{owner}: {name} must be a list of ints, got {value!r}")
    return [int(item) for item in value]


def grid_blocks(
    owner: str,
    input_size: int,
    feature_size: int,
    frequency_skip: int,
    num_frequency_blocks: object = None,
    start_freqindex_list: object = None,
    end_freqindex_list: object = None,
) -> tuple[Block, ...]:
    """The blocks of a grid LSTM's input as ``(start, end, windows)``, checked.

    Without ``start_freqindex_list``/``end_freqindex_list`` there is one block, the whole
    input. A block's windows are ``feature_size`` columns wide, ``frequency_skip`` apart, and
    must tile the block exactly (TF1 silently ignored the columns left over; here that is an
    error naming them). ``num_frequency_blocks`` (TF1's name for the windows per block), when
    given, must agree with the count.
    """
    starts = _int_list(owner, "start_freqindex_list", start_freqindex_list)
    ends = _int_list(owner, "end_freqindex_list", end_freqindex_list)
    counts = _int_list(owner, "num_frequency_blocks", num_frequency_blocks)
    if (starts is None) != (ends is None):
        raise ValueError(
            f"{owner}: give start_freqindex_list and end_freqindex_list together, or neither "
            f"(got start_freqindex_list={start_freqindex_list!r}, "
            f"end_freqindex_list={end_freqindex_list!r})"
        )
    if starts is None:
        starts, ends = [0], [input_size]
        if feature_size > input_size:
            raise ValueError(
                f"{owner}: feature_size={feature_size} is wider than input_size={input_size}"
            )
        left = (input_size - feature_size) % frequency_skip
        if left:
            covered = input_size - left
            raise ValueError(
                f"{owner}: windows of feature_size={feature_size} every "
                f"frequency_skip={frequency_skip} do not tile input_size={input_size}: "
                f"input columns {covered}..{input_size - 1} would never be read; use "
                f"input_size={covered} or {covered + frequency_skip}, or name the columns "
                f"to read with start_freqindex_list/end_freqindex_list"
            )
    elif len(starts) != len(ends):
        raise ValueError(
            f"{owner}: start_freqindex_list has {len(starts)} entries but end_freqindex_list "
            f"has {len(ends)}"
        )
    if counts is not None and len(counts) != len(starts):
        raise ValueError(
            f"{owner}: num_frequency_blocks has {len(counts)} entries but the input has "
            f"{len(starts)} block(s) (one per start_freqindex_list entry, or one for the "
            f"whole input)"
        )
    blocks = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        where = f"block {index} [{start}, {end})"
        if start < 0 or end > input_size or end <= start:
            raise ValueError(
                f"{owner}: {where} must satisfy 0 <= start < end <= input_size={input_size}"
            )
        span = end - start
        if span < feature_size:
            raise ValueError(
                f"{owner}: {where} is {span} columns wide, narrower than "
                f"feature_size={feature_size}"
            )
        if (span - feature_size) % frequency_skip:
            raise ValueError(
                f"{owner}: {where} is {span} columns wide; windows of "
                f"feature_size={feature_size} every frequency_skip={frequency_skip} do not "
                f"tile it (the last {(span - feature_size) % frequency_skip} column(s) would "
                f"never be read)"
            )
        windows = (span - feature_size) // frequency_skip + 1
        if counts is not None and counts[index] != windows:
            raise ValueError(
                f"{owner}: num_frequency_blocks[{index}]={counts[index]} but {where} with "
                f"feature_size={feature_size} and frequency_skip={frequency_skip} has "
                f"{windows} window(s)"
            )
        blocks.append((start, end, windows))
    return tuple(blocks)


def _peephole(weights: tuple[Tensor, Tensor], u: Tensor, v: Tensor) -> Tensor:
    """Peephole term of one gate: ``weights`` ``(S, H)`` each, on the frequency and the time
    cell state ``u``, ``v`` ``(B, H)`` -> ``(B, S, H)``."""
    on_freq, on_time = weights
    return torch.addcmul(on_freq * u[:, None], on_time, v[:, None])


class GridLSTMCell(RecurrentCell):
    r"""Grid LSTM over time and frequency (Kalchbrenner, Danihelka & Graves 2015, "Grid Long
    Short-Term Memory", arXiv:1507.01526), as TF1's ``tf.contrib.rnn.GridLSTMCell``; with
    peepholes, Sainath & Li 2016 ("Modeling Time-Frequency Patterns with LSTM vs.
    Convolutional Architectures for LVCSR Tasks").

    Each time step's input (e.g. one frame of a spectrogram) is cut into windows of
    ``feature_size`` columns, ``frequency_skip`` apart. Windows are grouped into blocks
    (one block for the whole input, or the ranges ``[start_freqindex_list[r],
    end_freqindex_list[r])``); every block has its own weights, shared by its windows.
    At window :math:`k` of a block two LSTMs run side by side: the *time* LSTM (T) carries
    its state to the same window at the next time step, the *frequency* LSTM (F) carries
    its state to the next window of the same time step (and starts from zeros at the first
    window of every block). Both read the same vector
    :math:`z = [x^k_t;\ m^{T,k}_{t-1};\ m^{F,k-1}_t]`:

    .. math::
        \begin{aligned}
        a^{d} &= W^{d}_{ih}\, x^k_t + W^{d}_{ht}\, m^{T,k}_{t-1}
                + W^{d}_{hf}\, m^{F,k-1}_t + b^{d} = [a^{d}_i; a^{d}_f; a^{d}_g; a^{d}_o],
                \qquad d \in \{F, T\} \\
        p^{d}_{x}(u, v) &= w^{d}_{cx,F} \odot u + w^{d}_{cx,T} \odot v
                \qquad \text{(peepholes; 0 without them)} \\
        i^{d} &= \sigma\big(a^{d}_i + p^{d}_i(c^{F,k-1}_t, c^{T,k}_{t-1})\big) \\
        f^{d} &= \sigma\big(a^{d}_f + p^{d}_f(c^{F,k-1}_t, c^{T,k}_{t-1})\big)
                \quad\text{or, with coupled gates,}\quad f^{d} = 1 - i^{d} \\
        c^{F,k}_t &= \mathrm{clip}\big(f^{F} \odot c^{F,k-1}_t + i^{F} \odot
                \tanh(a^{F}_g)\big), \qquad
        c^{T,k}_t = \mathrm{clip}\big(f^{T} \odot c^{T,k}_{t-1} + i^{T} \odot
                \tanh(a^{T}_g)\big) \\
        m^{d,k}_t &= \sigma\big(a^{d}_o + p^{d}_o(c^{F,k}_t, c^{T,k}_t)\big) \odot
                \tanh(c^{d,k}_t)
        \end{aligned}

    With ``share_time_frequency_weights`` the time LSTM uses the frequency LSTM's weights,
    bias and peepholes (:math:`a^T = a^F`). The output at step :math:`t` is
    :math:`[m^{T,1}_t; m^{F,1}_t; m^{T,2}_t; m^{F,2}_t; \dots]` over all windows of all
    blocks; the state carried in time is every window's :math:`(m^{T,k}, c^{T,k})`.

    Symbols: B batch, H_in ``input_size``, H ``hidden_size`` (TF1's ``num_units``),
    F_s ``feature_size``, R blocks, K windows in all blocks, G = 3 with ``coupled_gates``
    else 4, S = 1 with ``share_time_frequency_weights`` else 2 (index 0: the frequency
    LSTM, 1: the time LSTM).

    ===================  ======================  ========================================
    name                 shape                   notes
    ===================  ======================  ========================================
    ``weight_ih``        ``(R, S, G*H, F_s)``    :math:`W_{ih}`; gate rows i, f, g, o
                                                 (``torch``'s order); coupled: i, g, o
    ``weight_hh_time``   ``(R, S, G*H, H)``      :math:`W_{ht}`, from :math:`m^{T,k}_{t-1}`
    ``weight_hh_freq``   ``(R, S, G*H, H)``      :math:`W_{hf}`, from :math:`m^{F,k-1}_t`
    ``bias_ih``          ``(R, S, G*H)``         with ``bias``
    ``weight_ci``        ``(R, S, 2, H)``        peepholes to i from [c^F, c^T]
    ``weight_cf``        ``(R, S, 2, H)``        peepholes to f; not with coupled gates
    ``weight_co``        ``(R, S, 2, H)``        peepholes to o from the new [c^F, c^T]
    ===================  ======================  ========================================

    Initialisation (``init="default"``): weights and peepholes from
    :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` (``torch.nn.LSTMCell``'s), biases 0 with the forget
    rows at ``forget_bias``. ``init="glorot_uniform"`` draws as TF1 did (its default
    variable initializer on the concatenated ``(F_s + 2H, G*H)`` matrix, and on each
    ``(H,)`` peephole). TF1 added ``forget_bias`` in every step; here it starts the forget
    bias (so a TF1 cell with bias ``b`` equals this one with bias ``b + forget_bias`` on the
    forget rows); with coupled gates (no forget gate) or without ``bias`` it has no effect.
    :meth:`load_tf_variables` copies a TF1 cell's variables (``W_f_0``, ``B_f_0``, ...) in.

    With one window (``feature_size == input_size``) the frequency LSTM starts from zeros, so
    the time LSTM is an :class:`~rnnkit.cells.LSTMCell` (``weight_ih[0, 1]``,
    ``weight_hh_time[0, 1]``, ``bias_ih[0, 1]``, peepholes ``weight_c*[0, 1, 1]``) once the
    one frequency connection left, the peepholes from :math:`c^F` (``weight_c*[0, 1, 0]``),
    is zero; the output's first H columns and the state are then the LSTM's.

    State (TF1's ``state_is_tuple`` mapped to rnnkit's ``(h, c)``): ``h`` ``(B, K*H)``
    holds :math:`m^{T,k}` window after window (block by block), ``c`` ``(B, K*H)`` the
    :math:`c^{T,k}`. :meth:`to_tf_state` and :meth:`from_tf_state` convert to and from
    TF1's tuple ``(state_f00_b00_c, state_f00_b00_m, state_f01_b00_c, ...)``.

    Args:
        input_size: H_in, the features of one time step.
        hidden_size: H, the units of each LSTM at each window (TF1's ``num_units``).
        feature_size: F_s, the width of a window.
        frequency_skip: the stride between windows.
        num_frequency_blocks: optional check, the windows of each block (TF1 required it;
            here it is computed, and a value that disagrees is an error).
        start_freqindex_list, end_freqindex_list: the blocks' input ranges ``[start, end)``
            (both or neither; neither: one block, the whole input).
        share_time_frequency_weights: one set of weights for both LSTMs of a block.
        peepholes: diagonal peephole connections (TF1's ``use_peepholes``).
        coupled_gates: :math:`f = 1 - i` (TF1's ``couple_input_forget_gates``; note that
            :class:`~rnnkit.cells.LSTMCell` couples the other way, :math:`i = 1 - f`).
        cell_clip: if given (``> 0``), clip both cell states to ``[-cell_clip, cell_clip]``.
        forget_bias: initial forget-gate bias (see above).
        bias: create ``bias_ih``.
        init: ``"default"`` or ``"glorot_uniform"`` (see above).
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, (h, c) = cell(x, (h, c))`` with ``x`` ``(B, H_in)``, ``output``
    ``(B, 2*K*H)``, ``h`` and ``c`` ``(B, K*H)``; ``state=None`` means zeros.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GridLSTMCell
        >>> from rnnkit.layers import Recurrence
        >>> cell = GridLSTMCell(8, 5, feature_size=4, frequency_skip=2)  # windows at 0, 2, 4
        >>> cell.num_windows, cell.output_size, cell.state_size
        (3, 30, (15, 15))
        >>> out, (h, c) = Recurrence(cell)(torch.randn(7, 2, 8))         # (T, B, H_in)
        >>> out.shape, h.shape
        (torch.Size([7, 2, 30]), torch.Size([2, 15]))
    """

    directions = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        feature_size: int,
        frequency_skip: int = 1,
        num_frequency_blocks: int | Sequence[int] | None = None,
        start_freqindex_list: Sequence[int] | None = None,
        end_freqindex_list: Sequence[int] | None = None,
        share_time_frequency_weights: bool = False,
        peepholes: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        forget_bias: float = 1.0,
        bias: bool = True,
        init: str = "default",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._build(
            input_size, hidden_size, feature_size, frequency_skip, num_frequency_blocks,
            start_freqindex_list, end_freqindex_list, share_time_frequency_weights, peepholes,
            coupled_gates, cell_clip, forget_bias, bias, init, device, dtype,
        )

    def _build(
        self, input_size, hidden_size, feature_size, frequency_skip, num_frequency_blocks,
        start_freqindex_list, end_freqindex_list, share_time_frequency_weights, peepholes,
        coupled_gates, cell_clip, forget_bias, bias, init, device, dtype,
    ) -> None:
        owner = type(self).__name__
        self.input_size = check_size("input_size", input_size, owner=owner)
        self.hidden_size = H = check_size("hidden_size", hidden_size, owner=owner)
        self.feature_size = check_size("feature_size", feature_size, owner=owner)
        self.frequency_skip = check_size("frequency_skip", frequency_skip, owner=owner)
        self.blocks = grid_blocks(
            owner, self.input_size, self.feature_size, self.frequency_skip,
            num_frequency_blocks, start_freqindex_list, end_freqindex_list,
        )
        self.share_time_frequency_weights = check_flag(
            owner, "share_time_frequency_weights", share_time_frequency_weights
        )
        self.peepholes = check_flag(owner, "peepholes", peepholes)
        self.coupled_gates = check_flag(owner, "coupled_gates", coupled_gates)
        self.bias = check_flag(owner, "bias", bias)
        self.cell_clip = check_positive(owner, "cell_clip", cell_clip)
        self.forget_bias = check_real(owner, "forget_bias", forget_bias)
        self.init = check_choice(owner, "init", init, ("default", "glorot_uniform"))

        self.num_windows = sum(windows for _, _, windows in self.blocks)  # K
        self.num_gates = G = 3 if self.coupled_gates else 4
        R, S = len(self.blocks), 1 if self.share_time_frequency_weights else 2
        D, K = self.directions, self.num_windows
        self.output_size = 2 * D * K * H
        self.state_size = (D * K * H, D * K * H)

        factory = factory_kwargs(owner, device, dtype)
        for suffix in self._suffixes():
            shapes = {
                "weight_ih": ((R, S, G * H, self.feature_size), True),
                "weight_hh_time": ((R, S, G * H, H), True),
                "weight_hh_freq": ((R, S, G * H, H), True),
                "bias_ih": ((R, S, G * H), self.bias),
                "weight_ci": ((R, S, 2, H), self.peepholes),
                "weight_cf": ((R, S, 2, H), self.peepholes and not self.coupled_gates),
                "weight_co": ((R, S, 2, H), self.peepholes),
            }
            for name, (shape, wanted) in shapes.items():
                self.register_parameter(
                    name + suffix, optional_parameter(wanted, *shape, **factory)
                )
        self.reset_parameters()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse")[: self.directions]

    @property
    def forget_rows(self) -> slice | None:
        """Rows of the gate dimension that feed the forget gate (``None`` when coupled)."""
        H = self.hidden_size
        return None if self.coupled_gates else slice(H, 2 * H)

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        H, G = self.hidden_size, self.num_gates
        if self.init == "glorot_uniform":
            weight_bound = math.sqrt(6.0 / (self.feature_size + 2 * H + G * H))
            peephole_bound = math.sqrt(3.0 / H)
        else:
            weight_bound = peephole_bound = 1.0 / math.sqrt(H)
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                if name.startswith("bias"):
                    param.zero_()
                    if self.forget_rows is not None:
                        param[..., self.forget_rows] = self.forget_bias
                elif name.startswith("weight_c"):
                    param.uniform_(-peephole_bound, peephole_bound)
                else:
                    param.uniform_(-weight_bound, weight_bound)

    # --- the step -------------------------------------------------------------------------

    def check_input(self, x: Tensor) -> None:
        try:
            super().check_input(x)
        except ShapeError as error:
            raise ShapeError(
                f"{error}; its {self.input_size} columns are read as {self.num_windows} "
                f"window(s) of feature_size={self.feature_size} every "
                f"frequency_skip={self.frequency_skip} in block(s) "
                f"{[(start, end) for start, end, _ in self.blocks]}"
            ) from None

    def windows(self, x: Tensor, offset: int = 0) -> list[Tensor]:
        """Each block's windows of ``x`` ``(B, H_in)``: a list of ``(B, K_r, F_s)``. Window
        ``k`` of the block starting at ``s`` reads columns ``s + offset + k*skip`` onwards,
        zeros outside the input (TF1's ``backward_slice_offset`` padding)."""
        pad_front, pad_back = max(0, -offset), max(0, offset)
        if pad_front or pad_back:
            x = F.pad(x, (pad_front, pad_back))  # (B, H_in + |offset|)
        shift = max(0, offset)
        return [
            x[:, start + shift:end + shift].unfold(1, self.feature_size, self.frequency_skip)
            for start, end, _ in self.blocks
        ]

    def _direction(
        self, windows: list[Tensor], h: Tensor, c: Tensor, suffix: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One direction of one step. ``windows``: per block ``(B, K_r, F_s)`` in processing
        order; ``h``/``c`` ``(B, K*H)`` the time LSTMs' states in the same order. Returns the
        output ``(B, 2*K*H)`` and the new ``h``, ``c``."""
        H = self.hidden_size
        B = h.shape[0]
        h, c = h.view(B, -1, H), c.view(B, -1, H)  # (B, K, H)
        weight_ih = getattr(self, "weight_ih" + suffix)
        weight_ht = getattr(self, "weight_hh_time" + suffix)
        weight_hf = getattr(self, "weight_hh_freq" + suffix)
        bias = getattr(self, "bias_ih" + suffix)
        peep_i, peep_f, peep_o = (getattr(self, f"weight_c{g}{suffix}") for g in "ifo")
        S, GH = weight_ih.shape[1], weight_ih.shape[2]
        coupled = self.coupled_gates
        # gate columns: i, f, g, o (coupled: i, g, o)
        g_cols = slice(H, 2 * H) if coupled else slice(2 * H, 3 * H)
        o_cols = slice(GH - H, GH)
        m_steps, c_steps = [], []
        first = 0
        for r, block in enumerate(windows):
            count = block.shape[1]
            h_r, c_r = h[:, first:first + count], c[:, first:first + count]  # (B, K_r, H)
            first += count
            # every window's input and previous-time terms at once; only m^F is sequential
            pre = torch.einsum("bkf,sgf->kbsg", block, weight_ih[r])  # (K_r, B, S, G*H)
            pre = pre + torch.einsum("bkh,sgh->kbsg", h_r, weight_ht[r])
            if bias is not None:
                pre = pre + bias[r]
            pre = pre.reshape(count, B, S * GH)
            freq_weight = weight_hf[r].reshape(S * GH, H).t()  # (H, S*G*H)
            if self.peepholes:  # (S, H) each: on [c^F, c^T]
                on_i, on_o = (peep_i[r].unbind(1), peep_o[r].unbind(1))
                on_f = None if coupled else peep_f[r].unbind(1)
            m_f = c_pair = None
            for k in range(count):
                # the frequency LSTM starts from zeros in every block
                a = pre[k] if m_f is None else torch.addmm(pre[k], m_f, freq_weight)
                a = a.view(B, S, GH)
                c_t = c_r[:, k]  # (B, H)
                c_f = torch.zeros_like(c_t) if c_pair is None else c_pair[:, 0]
                c_prev = torch.stack([c_f, c_t], 1)  # (B, 2, H): [freq, time]
                if self.peepholes:
                    i = torch.sigmoid(a[..., :H] + _peephole(on_i, c_f, c_t))  # (B, S, H)
                    f = 1.0 - i if coupled else torch.sigmoid(
                        a[..., H:2 * H] + _peephole(on_f, c_f, c_t))
                else:
                    gates = torch.sigmoid(a)  # the g columns are not used
                    i = gates[..., :H]
                    f = 1.0 - i if coupled else gates[..., H:2 * H]
                # S = 1 (shared weights) broadcasts to both LSTMs
                c_pair = torch.addcmul(f * c_prev, i, torch.tanh(a[..., g_cols]))  # (B, 2, H)
                if self.cell_clip is not None:
                    c_pair = c_pair.clamp(-self.cell_clip, self.cell_clip)
                if self.peepholes:
                    o = torch.sigmoid(a[..., o_cols]
                                      + _peephole(on_o, c_pair[:, 0], c_pair[:, 1]))
                else:
                    o = gates[..., o_cols]
                m_pair = o * torch.tanh(c_pair)  # (B, 2, H): [m^F, m^T]
                m_f = m_pair[:, 0]
                m_steps.append(m_pair)
                c_steps.append(c_pair[:, 1])
        m_all = torch.stack(m_steps, 1)  # (B, K, 2, H)
        output = m_all.flip(2).reshape(B, -1)  # per window [m^T, m^F]
        return output, m_all[:, :, 1].reshape(B, -1), torch.stack(c_steps, 1).reshape(B, -1)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.prepare_call(x, state)
        output, h_new, c_new = self._direction(self.windows(x), h, c, "")
        return output, (h_new, c_new)

    # --- TF1's variables ------------------------------------------------------------------

    def tf_variable_names(self) -> tuple[str, ...]:
        """The names of TF1's variables for this configuration, as
        :meth:`load_tf_variables` expects them (without the enclosing variable scope)."""
        names = []
        lstms = ("f",) if self.share_time_frequency_weights else ("f", "t")
        gates = "IO" if self.coupled_gates else "FIO"
        for prefix in ("",) if self.directions == 1 else ("fwd/", "bwd/"):
            for r in range(len(self.blocks)):
                for lstm in lstms:
                    names += [f"{prefix}W_{lstm}_{r}", f"{prefix}B_{lstm}_{r}"]
                if self.peepholes:
                    for lstm in ("freq",) if self.share_time_frequency_weights \
                            else ("freq", "time"):
                        for gate in gates:
                            names += [f"{prefix}W_{gate}_diag_{lstm}{source}_{r}"
                                      for source in "ft"]
        return tuple(names)

    def load_tf_variables(
        self, variables: Mapping[str, object], forget_bias: float | None = None
    ) -> None:
        """Copy the variables of a TF1 ``GridLSTMCell``/``BidirectionalGridLSTMCell`` (NumPy
        arrays or tensors, e.g. read from a checkpoint) into this cell.

        Keys are TF1's variable names (:meth:`tf_variable_names`: ``W_f_0``, ``B_f_0``,
        ``W_t_0``, ..., ``W_I_diag_freqf_0``, ...; ``fwd/``/``bwd/`` before them for the
        bidirectional cell); a key may carry its enclosing scope (``rnn/grid_lstm_cell/W_f_0``)
        and other variables are ignored. TF1's ``W`` is ``(F_s + 2H, G*H)`` over
        ``[x; m_time; m_freq]`` with gates in the order i, j, f, o (coupled: i, j, o); TF1
        added ``forget_bias`` (default: this cell's) to the forget gate in every step, which
        is folded into ``bias_ih`` here. The cell must have the TF1 cell's configuration and
        ``bias=True`` (TF1's cells always have biases).
        """
        owner = f"{type(self).__name__}.load_tf_variables"
        if not self.bias:
            raise ValueError(f"{owner}: TF1's cell has biases; build this cell with bias=True")
        forget_bias = self.forget_bias if forget_bias is None else check_real(
            owner, "forget_bias", forget_bias)
        H, G, F_s = self.hidden_size, self.num_gates, self.feature_size
        found: dict[str, Tensor] = {}
        for name in self.tf_variable_names():
            keys = [key for key in variables if key == name or key.endswith("/" + name)]
            if len(keys) != 1:
                problem = "is missing" if not keys else f"matches several keys {keys}"
                raise KeyError(f"{owner}: TF1 variable {name!r} {problem}; expected "
                               f"{list(self.tf_variable_names())}")
            value = torch.as_tensor(np.asarray(variables[keys[0]]))
            if "diag" in name:
                shape: tuple[int, ...] = (H,)
            elif name.split("/")[-1].startswith("W_"):
                shape = (F_s + 2 * H, G * H)
            else:
                shape = (G * H,)
            if tuple(value.shape) != shape:
                raise ShapeError(f"{owner}: TF1 variable {keys[0]!r} has shape "
                                 f"{tuple(value.shape)}, expected {shape}")
            found[name] = value
        order = [0, 1, 2] if self.coupled_gates else [0, 2, 1, 3]  # TF1's i,j,f,o -> i,f,g,o
        rows = torch.cat([torch.arange(g * H, (g + 1) * H) for g in order])
        with torch.no_grad():
            for suffix, prefix in zip(self._suffixes(), ("",) if self.directions == 1
                                      else ("fwd/", "bwd/"), strict=True):
                params = {name: getattr(self, name + suffix) for name in (
                    "weight_ih", "weight_hh_time", "weight_hh_freq", "bias_ih",
                    "weight_ci", "weight_cf", "weight_co")}
                for r in range(len(self.blocks)):
                    for s in range(params["weight_ih"].shape[1]):
                        lstm = "ft"[s]
                        weight = found[f"{prefix}W_{lstm}_{r}"].t()[rows]  # (G*H, F_s + 2H)
                        params["weight_ih"][r, s] = weight[:, :F_s]
                        params["weight_hh_time"][r, s] = weight[:, F_s:F_s + H]
                        params["weight_hh_freq"][r, s] = weight[:, F_s + H:]
                        bias = found[f"{prefix}B_{lstm}_{r}"][rows].clone()
                        if self.forget_rows is not None:
                            bias[self.forget_rows] += forget_bias
                        params["bias_ih"][r, s] = bias
                        if not self.peepholes:
                            continue
                        tf_lstm = ("freq", "time")[s]
                        for gate, param in (("I", "weight_ci"), ("F", "weight_cf"),
                                            ("O", "weight_co")):
                            if params[param] is None:
                                continue
                            for source in range(2):
                                params[param][r, s, source] = found[
                                    f"{prefix}W_{gate}_diag_{tf_lstm}{'ft'[source]}_{r}"]

    # --- TF1's state tuple ----------------------------------------------------------------

    def tf_state_names(self) -> tuple[str, ...]:
        """TF1's names of the state tuple's parts, in its order."""
        names = []
        prefixes = ("state",) if self.directions == 1 else ("fwd_state", "bwd_state")
        for prefix in prefixes:
            for r, (_, _, count) in enumerate(self.blocks):
                for k in range(count):
                    names += [f"{prefix}_f{k:02d}_b{r:02d}_c", f"{prefix}_f{k:02d}_b{r:02d}_m"]
        return tuple(names)

    def to_tf_state(self, state: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        """``(h, c)`` as TF1's state tuple (a named tuple with TF1's field names):
        ``c`` then ``m`` of each window, block by block (forward, then backward)."""
        h, c = state
        H = self.hidden_size
        parts = []
        for k in range(h.shape[-1] // H):
            parts += [c[:, k * H:(k + 1) * H], h[:, k * H:(k + 1) * H]]
        names = self.tf_state_names()
        if len(parts) != len(names):
            raise ShapeError(
                f"{type(self).__name__}.to_tf_state: expected h of width "
                f"{self.state_size[0]}, got {h.shape[-1]}"
            )
        return namedtuple(f"{type(self).__name__}StateTuple", names)(*parts)

    def from_tf_state(self, parts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """TF1's state tuple (``c``, ``m`` of each window) as rnnkit's ``(h, c)``."""
        names = self.tf_state_names()
        if len(parts) != len(names):
            raise ValueError(
                f"{type(self).__name__}.from_tf_state: expected {len(names)} tensors "
                f"({names[0]}, {names[1]}, ...), got {len(parts)}"
            )
        return torch.cat(list(parts[1::2]), -1), torch.cat(list(parts[0::2]), -1)

    def extra_repr(self) -> str:
        text = (f"{self.input_size}, {self.hidden_size}, feature_size={self.feature_size}, "
                f"frequency_skip={self.frequency_skip}")
        if len(self.blocks) > 1 or self.blocks[0][:2] != (0, self.input_size):
            text += f", blocks={[(start, end) for start, end, _ in self.blocks]}"
        defaults = {"share_time_frequency_weights": False, "peepholes": False,
                    "coupled_gates": False, "cell_clip": None, "forget_bias": 1.0,
                    "bias": True, "init": "default"}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text


class BidirectionalGridLSTMCell(GridLSTMCell):
    r"""Grid LSTM whose frequency LSTM runs both ways (TF1's
    ``tf.contrib.rnn.BidirectionalGridLSTMCell``).

    Two :class:`GridLSTMCell` grids with their own weights read the same time step: the
    forward one from the first window of each block to the last, the backward one from the
    last to the first. Only frequency is read both ways, so time stays causal (what online
    recognition needs). With ``backward_slice_offset`` :math:`\delta` the backward grid's
    windows start :math:`\delta` columns later (earlier if negative), reading zeros past
    the input's edges.

    Parameters: those of :class:`GridLSTMCell` for the forward grid, and the same names
    with ``_reverse`` (``weight_ih_reverse``, ...) for the backward one.

    Output ``(B, 4*K*H)``: the forward grid's output, then the backward grid's, each in its
    processing order (TF1's). State ``(h, c)``, each ``(B, 2*K*H)``: the forward windows,
    then the backward ones in processing order (the last window of a block first), as TF1's
    ``fwd_state_f00_b00_c, ..., bwd_state_f00_b00_c, ...``.

    Args:
        backward_slice_offset: :math:`\delta`, an int (default 0).
        others: as :class:`GridLSTMCell`.

    Example:
        >>> import torch
        >>> from rnnkit.cells import BidirectionalGridLSTMCell
        >>> cell = BidirectionalGridLSTMCell(4, 3, feature_size=2)  # windows at 0, 1, 2
        >>> out, (h, c) = cell(torch.randn(5, 4))
        >>> out.shape, h.shape, cell.weight_ih_reverse.shape
        (torch.Size([5, 36]), torch.Size([5, 18]), torch.Size([1, 2, 12, 2]))
    """

    directions = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        feature_size: int,
        frequency_skip: int = 1,
        num_frequency_blocks: int | Sequence[int] | None = None,
        start_freqindex_list: Sequence[int] | None = None,
        end_freqindex_list: Sequence[int] | None = None,
        share_time_frequency_weights: bool = False,
        peepholes: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        forget_bias: float = 1.0,
        bias: bool = True,
        init: str = "default",
        backward_slice_offset: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        RecurrentCell.__init__(self)
        offset = backward_slice_offset
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, Integral):
            raise TypeError(
                f"BidirectionalGridLSTMCell: backward_slice_offset must be an int, got "
                f"{type(offset).__name__} ({offset!r})"
            )
        self.backward_slice_offset = int(offset)
        self._build(
            input_size, hidden_size, feature_size, frequency_skip, num_frequency_blocks,
            start_freqindex_list, end_freqindex_list, share_time_frequency_weights, peepholes,
            coupled_gates, cell_clip, forget_bias, bias, init, device, dtype,
        )

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.prepare_call(x, state)
        half = self.state_size[0] // 2
        forward_windows = self.windows(x)
        backward_windows = (self.windows(x, self.backward_slice_offset)
                            if self.backward_slice_offset else forward_windows)
        backward_windows = [block.flip(1) for block in backward_windows]
        out_f, h_f, c_f = self._direction(forward_windows, h[:, :half], c[:, :half], "")
        out_b, h_b, c_b = self._direction(
            backward_windows, h[:, half:], c[:, half:], "_reverse"
        )
        return torch.cat([out_f, out_b], -1), (torch.cat([h_f, h_b], -1),
                                               torch.cat([c_f, c_b], -1))

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.backward_slice_offset:
            text += f", backward_slice_offset={self.backward_slice_offset}"
        return text
