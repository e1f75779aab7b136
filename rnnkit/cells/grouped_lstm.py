"""The grouped LSTM cell (GLSTM): independent LSTMs on slices of the input and state."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, sum_bias
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_real,
    check_size,
    factory_kwargs,
    optional_parameter,
)
from rnnkit.cells.lstm import init_forget_bias


class GroupedLSTMAdapter(CompiledAdapter):
    """GroupedLSTM on the compiled template (``csrc/grouped_lstm.cpp``): the block-diagonal
    input projection is one batched GEMM over all steps with both biases folded in, the gate
    columns group-major (``[i f g o]`` of group 0, then group 1, ...); per step one GEMM per
    group on the group's slice of ``h``. The groups never mix, so the template runs each
    group's whole sequence on its own thread (no per-step barrier). The kernel carries
    ``[h | c]``."""

    family = "grouped_lstm"

    def describe(self) -> str:
        return (f"GroupedLSTMCell (groups={self.cell.groups}; one recurrent GEMM per group "
                f"and step, each group's sequence on one thread)")

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        N, H, I = cell.groups, cell.hidden_size, cell.input_size
        rows = 4 * H // N
        return {"weight_ih": (N, rows, I // N), "weight_hh": (N, rows, H // N),
                "bias_ih": (N, rows) if cell.bias_ih is not None else None,
                "bias_hh": (N, rows) if cell.bias_hh is not None else None}

    def state_parts(self) -> tuple[tuple[str, int], ...]:
        return (("state h", self.cell.hidden_size), ("state c", self.cell.hidden_size))

    def project(self, inputs: Tensor) -> Tensor:
        cell = self.cell
        T, B, I = inputs.shape
        N, rows = cell.groups, cell.weight_ih.shape[1]  # rows = 4H/N
        x = inputs.reshape(T * B, N, I // N).transpose(0, 1)  # (N, T*B, H_in/N)
        w = cell.weight_ih.transpose(1, 2)  # (N, H_in/N, 4H/N)
        bias = sum_bias(cell.bias_ih, cell.bias_hh)  # (N, 4H/N) or None
        xp = torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)
        return xp.transpose(0, 1).reshape(T, B, N * rows)  # (T, B, 4H), group-major

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        return {"weight_hh": self.cell.weight_hh}

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        w_hh = tensors["weight_hh"]  # (N, 4H/N, H/N)
        N, rows, Hg = w_hh.shape
        B, H = state.shape[0], N * Hg
        h, c = state[:, :H], state[:, H:]
        rec = torch.bmm(h.reshape(B, N, Hg).transpose(0, 1), w_hh.transpose(1, 2))  # (N, B, 4Hg)
        a = xp.view(B, N, rows) + rec.transpose(0, 1)  # (B, N, 4H/N)
        i, f, g, o = a.split(Hg, dim=2)
        c_new = torch.sigmoid(f) * c.reshape(B, N, Hg) + torch.sigmoid(i) * torch.tanh(g)
        h_new = (torch.sigmoid(o) * torch.tanh(c_new)).reshape(B, H)
        return h_new, torch.cat([h_new, c_new.reshape(B, H)], 1)


class GroupedLSTMCell(RecurrentCell):
    r"""Grouped LSTM, GLSTM (Kuchaiev & Ginsburg 2017, "Factorization tricks for LSTM
    networks", arXiv:1703.10722).

    The input (:math:`H_{in}`) and the state (:math:`H`) are cut into ``groups``
    (:math:`N`) equal, contiguous slices; slice :math:`k` is an independent LSTM with
    ``torch.nn.LSTMCell``'s equations (gate order i, f, g, o) and the outputs are
    concatenated:

    .. math::
        \begin{aligned}
        (h^k_t, c^k_t) &= \mathrm{LSTM}_k\big(x^k_t, (h^k_{t-1}, c^k_{t-1})\big),
            \quad k = 1..N \\
        h_t &= [h^1_t; \dots; h^N_t], \qquad c_t = [c^1_t; \dots; c^N_t]
        \end{aligned}

    This equals an LSTM whose gate matrices are block diagonal, with :math:`N` times fewer
    weights and multiply-adds; stack layers (or permute features between them) to mix
    information across groups.

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``, N: ``groups``);
    ``weight_ih[k]``, ``weight_hh[k]``, ``bias_ih[k]``, ``bias_hh[k]`` are exactly the
    parameters of a ``torch.nn.LSTMCell(H_in/N, H/N)`` for group ``k``:

    =============  =======================  ==========================================
    name           shape                    initialisation
    =============  =======================  ==========================================
    ``weight_ih``  ``(N, 4H/N, H_in/N)``    :math:`U(-1/\sqrt{H/N}, 1/\sqrt{H/N})`
    ``weight_hh``  ``(N, 4H/N, H/N)``       same (as each group's ``nn.LSTMCell``)
    ``bias_ih``    ``(N, 4H/N)``            same, then forget slice = ``forget_bias``
    ``bias_hh``    ``(N, 4H/N)``            same, then forget slice = 0
    =============  =======================  ==========================================

    ``forget_bias`` only initialises the forget-gate bias (as
    :class:`~rnnkit.cells.LSTMCell`); ``None`` keeps torch's uniform draw.

    Args:
        input_size: H_in, divisible by ``groups``.
        hidden_size: H, divisible by ``groups``.
        groups: N >= 1 (1 is a plain LSTM).
        bias: create ``bias_ih`` and ``bias_hh``.
        forget_bias: initial total forget-gate bias, or ``None``.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, (h, c) = cell(x, (h, c))`` with ``x`` ``(B, H_in)`` and ``h``, ``c``
    ``(B, H)``; ``state=None`` means zeros. ``output`` is ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GroupedLSTMCell
        >>> cell = GroupedLSTMCell(6, 8, groups=2)
        >>> out, (h, c) = cell(torch.randn(3, 6))
        >>> out.shape, tuple(cell.weight_ih.shape)
        (torch.Size([3, 8]), (2, 16, 3))
    """

    compiled_adapter = GroupedLSTMAdapter

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        groups: int = 2,
        bias: bool = True,
        forget_bias: float | None = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = "GroupedLSTMCell"
        self.input_size = input_size = check_size("input_size", input_size, owner=name)
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner=name)
        self.groups = groups = check_size("groups", groups, owner=name)
        for arg, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if size % groups:
                raise ValueError(
                    f"GroupedLSTMCell: {arg}={size} is not divisible by groups={groups}"
                )
        self.bias = check_flag("GroupedLSTMCell", "bias", bias)
        self.forget_bias = check_real(
            "GroupedLSTMCell", "forget_bias", forget_bias, optional=True
        )
        self.state_size = (hidden_size, hidden_size)
        self.output_size = hidden_size
        group_in, group_hidden = input_size // groups, hidden_size // groups
        factory = factory_kwargs(name, device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(groups, 4 * group_hidden, group_in, **factory))
        self.weight_hh = nn.Parameter(
            torch.empty(groups, 4 * group_hidden, group_hidden, **factory)
        )
        for name in ("bias_ih", "bias_hh"):
            self.register_parameter(
                name, optional_parameter(bias, groups, 4 * group_hidden, **factory)
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        group_hidden = self.hidden_size // self.groups
        self._reset_uniform(1.0 / math.sqrt(group_hidden))
        init_forget_bias(self, slice(group_hidden, 2 * group_hidden))

    def weights(self) -> RF.GroupedLSTMWeights:
        """This cell's parameters as :class:`rnnkit.functional.GroupedLSTMWeights`."""
        return RF.GroupedLSTMWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        state = self.prepare_call(x, state)
        return RF.grouped_lstm_step(x, state, self.weights())

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, groups={self.groups}"
        if not self.bias:
            text += ", bias=False"
        if self.forget_bias != 1.0:
            text += f", forget_bias={self.forget_bias}"
        return text
