"""The NAS cell found by neural architecture search, as TF1 ``tf.contrib.rnn.NASCell``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, projection
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_proj_size,
    check_size,
    factory_kwargs,
    optional_parameter,
)


class NASAdapter(CompiledAdapter):
    """NAS on the compiled template (``csrc/nas.cpp``): ``u = W_ih x`` hoisted (no bias),
    ``v = W_hh h + b`` per step (GEMM 1, the bias added in the kernel's pass); the branches
    keep ``u`` and ``v`` apart because branch 3 multiplies them. With ``proj_size`` the
    projection ``h = W_hr m`` is GEMM 2. The kernel carries ``[h | c]``."""

    family = "nas"
    bf16 = True

    def describe(self) -> str:
        proj = f"proj_size={self.cell.proj_size}, " if self.cell.proj_size else ""
        return f"NASCell ({proj}input and recurrent branches kept apart)"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        return {"weight_ih": (8 * H, cell.input_size), "weight_hh": (8 * H, cell.output_size),
                "bias_hh": (8 * H,) if cell.bias_hh is not None else None,
                "weight_hr": (cell.proj_size, H) if cell.proj_size else None}

    def state_parts(self) -> tuple[tuple[str, int], ...]:
        return (("state h", self.cell.output_size), ("state c", self.cell.hidden_size))

    def project(self, inputs: Tensor) -> Tensor:
        # (T, B, 8H): u, no bias
        return projection(inputs, self.cell.weight_ih, None, linear=self.linear)

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        cell = self.cell
        return {"weight_hh": cell.weight_hh, "bias_hh": cell.bias_hh,
                "weight_hr": cell.weight_hr}

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        P = self.cell.output_size
        h, c = state[:, :P], state[:, P:]
        u = xp.chunk(8, 1)  # 8 x (B, H)
        v = F.linear(h, tensors["weight_hh"], tensors.get("bias_hh")).chunk(8, 1)
        sigmoid, relu, tanh = torch.sigmoid, torch.relu, torch.tanh
        l0, l1 = sigmoid(u[0] + v[0]), relu(u[1] + v[1])
        l2, l3 = sigmoid(u[2] + v[2]), relu(u[3] * v[3])
        l4, l5 = tanh(u[4] + v[4]), sigmoid(u[5] + v[5])
        l6, l7 = tanh(u[6] + v[6]), sigmoid(u[7] + v[7])
        c_new = tanh(tanh(l0 * l1) + c) * tanh(l2 + l3)
        h_new = tanh(c_new * tanh(tanh(l4 * l5) + sigmoid(l6 + l7)))
        if "weight_hr" in tensors:
            h_new = h_new @ tensors["weight_hr"].t()  # (B, P)
        return h_new, torch.cat([h_new, c_new], 1)


class NASCell(RecurrentCell):
    r"""The recurrent cell found by neural architecture search.

    Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017
    (arXiv:1611.01578); the same computation as TF1 ``tf.contrib.rnn.NASCell`` and
    ``tfa.rnn.NASCell``. Eight branches, each :math:`H` wide, mix the input and the
    previous output; with :math:`u^k = W^k_{ih} x_t` and
    :math:`v^k = W^k_{hh} h_{t-1} + b^k` (:math:`k = 0..7`, in row order):

    .. math::
        \begin{aligned}
        l_0 &= \sigma(u^0 + v^0) & l_1 &= \mathrm{relu}(u^1 + v^1) &
        l_2 &= \sigma(u^2 + v^2) & l_3 &= \mathrm{relu}(u^3 \odot v^3) \\
        l_4 &= \tanh(u^4 + v^4) & l_5 &= \sigma(u^5 + v^5) &
        l_6 &= \tanh(u^6 + v^6) & l_7 &= \sigma(u^7 + v^7) \\
        m_0 &= \tanh\big(\tanh(l_0 \odot l_1) + c_{t-1}\big) & m_1 &= \tanh(l_2 + l_3) &
        m_2 &= \tanh(l_4 \odot l_5) & m_3 &= \sigma(l_6 + l_7) \\
        c_t &= m_0 \odot m_1 & & &
        h_t &= W_{hr} \tanh\big(c_t \odot \tanh(m_2 + m_3)\big)
        \end{aligned}

    Branch 3 *multiplies* its input and recurrent terms; :math:`W_{hr}` exists only with
    ``proj_size > 0``. The state is ``(h, c)`` like :class:`~rnnkit.cells.LSTMCell`
    (TensorFlow orders it ``(c, m)``).

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``, P: ``proj_size``,
    H_out = P if ``proj_size > 0`` else H). From a TF checkpoint: ``weight_ih = kernel.T``,
    ``weight_hh = recurrent_kernel.T``, ``bias_hh = bias``, ``weight_hr =
    projection_weights.T``.

    =============  ================  ==========================================
    name           shape             initialisation
    =============  ================  ==========================================
    ``weight_ih``  ``(8H, H_in)``    :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``weight_hh``  ``(8H, H_out)``   :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``bias_hh``    ``(8H,)``         zeros (TF); only with ``bias``
    ``weight_hr``  ``(P, H)``        :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`; with ``proj_size``
    =============  ================  ==========================================

    Args:
        input_size: H_in.
        hidden_size: H.
        proj_size: if ``> 0``, project the output to this size (TF ``num_proj``); must be
            smaller than ``hidden_size``.
        bias: create ``bias_hh`` (it joins the recurrent term :math:`v^k`). Default ``True``
            as every rnnkit cell; TF's default is ``use_biases=False``: pass ``bias=False``
            for TF's cell. The bias starts at zero, so both start out computing the same.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, (h, c) = cell(x, (h, c))`` with ``x`` ``(B, H_in)``, ``h`` ``(B, H_out)``,
    ``c`` ``(B, H)``; ``state=None`` means zeros. ``output`` is ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import NASCell
        >>> cell = NASCell(3, 8, proj_size=4)
        >>> out, (h, c) = cell(torch.randn(2, 3))
        >>> out.shape, c.shape, cell.state_size
        (torch.Size([2, 4]), torch.Size([2, 8]), (4, 8))
    """

    branches = 8
    compiled_adapter = NASAdapter
    renamed_parameters = {"bias": "bias_hh"}  # older state_dicts name it "bias"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        proj_size: int = 0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="NASCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="NASCell")
        self.proj_size = proj_size = check_proj_size("NASCell", proj_size, hidden_size)
        self.bias = check_flag("NASCell", "bias", bias)
        output_size = proj_size if proj_size > 0 else hidden_size
        self.output_size = output_size
        self.state_size = (output_size, hidden_size)
        rows = self.branches * hidden_size
        factory = factory_kwargs("NASCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, output_size, **factory))
        self.register_parameter("bias_hh", optional_parameter(bias, rows, **factory))
        self.register_parameter(
            "weight_hr", optional_parameter(proj_size > 0, proj_size, hidden_size, **factory)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        self._reset_uniform(1.0 / math.sqrt(self.hidden_size), zeros=("bias_hh",))

    def weights(self) -> RF.NASWeights:
        """This cell's parameters as :class:`rnnkit.functional.NASWeights`."""
        return RF.NASWeights(self.weight_ih, self.weight_hh, self.bias_hh, self.weight_hr)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        state = self.prepare_call(x, state)
        return RF.nas_step(x, state, self.weights())

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if not self.bias:
            text += ", bias=False"
        return text
