"""The Update Gate RNN cell (UGRNN), as TF1 ``tf.contrib.rnn.UGRNNCell``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, projection
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_real,
    check_size,
    factory_kwargs,
    optional_parameter,
)


class UGRNNAdapter(CompiledAdapter):
    """UGRNN on the compiled template (``csrc/ugrnn.cpp``): ``xp = W_ih x + b`` hoisted, one
    GEMM ``W_hh h`` (2H columns) per step, ``forget_bias`` added in the kernel's gate pass."""

    family = "ugrnn"
    bf16 = True

    def describe(self) -> str:
        return f"UGRNNCell (forget_bias={self.cell.forget_bias})"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        return {"weight_ih": (2 * H, cell.input_size), "weight_hh": (2 * H, H),
                "bias_ih": (2 * H,) if cell.bias_ih is not None else None}

    def project(self, inputs: Tensor) -> Tensor:
        return projection(inputs, self.cell.weight_ih, self.cell.bias_ih,
                          linear=self.linear)  # (T, B, 2H)

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        return {"weight_hh": self.cell.weight_hh}

    def numbers(self) -> dict[str, float]:
        return {"forget_bias": float(self.cell.forget_bias)}

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        pre = xp + state @ tensors["weight_hh"].t()  # (B, 2H)
        g_pre, c_pre = pre.chunk(2, 1)
        gate = torch.sigmoid(g_pre + self.cell.forget_bias)
        h = gate * state + (1.0 - gate) * torch.tanh(c_pre)  # (B, H)
        return h, h


class UGRNNCell(RecurrentCell):
    r"""Update Gate RNN: a vanilla RNN with one GRU-like update gate.

    Collins, Sohl-Dickstein & Sussillo, "Capacity and Trainability in Recurrent Neural
    Networks", ICLR 2017 (arXiv:1611.09913); the same computation as TF1
    ``tf.contrib.rnn.UGRNNCell``.

    .. math::
        \begin{aligned}
        [a^g; a^c] &= W_{ih} x_t + W_{hh} h_{t-1} + b \\
        g_t &= \sigma(a^g + b_f), \qquad c_t = \tanh(a^c) \\
        h_t &= g_t \odot h_{t-1} + (1 - g_t) \odot c_t
        \end{aligned}

    ``forget_bias`` (:math:`b_f`, default 1.0) is a constant added in *every* step, as in
    TensorFlow, so that a TF checkpoint gives TF's numbers (``weight_ih = kernel[:H_in].T``,
    ``weight_hh = kernel[H_in:].T``, ``bias_ih = bias``). This differs from
    :class:`~rnnkit.cells.LSTMCell`, whose ``forget_bias`` only initialises a parameter
    (there the reference is ``torch.nn.LSTMCell``, which adds nothing); pass
    ``forget_bias=0.0`` to get a UGRNN without the constant.

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``); rows are the update
    gate ``g`` then the candidate ``c``:

    =============  ===============  ==========================================
    name           shape            initialisation
    =============  ===============  ==========================================
    ``weight_ih``  ``(2H, H_in)``   :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``weight_hh``  ``(2H, H)``      :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``bias_ih``    ``(2H,)``        zeros (TF's ``_Linear``); only with ``bias``
    =============  ===============  ==========================================

    Args:
        input_size: H_in.
        hidden_size: H.
        bias: create ``bias_ih``.
        forget_bias: constant added to the update-gate pre-activation (see above).
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, h = cell(x, h)`` with ``x`` ``(B, H_in)``, ``h`` ``(B, H)`` or ``None``
    (zeros); ``output`` is the new ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import UGRNNCell
        >>> cell = UGRNNCell(3, 5)
        >>> out, h = cell(torch.randn(2, 3))
        >>> out.shape, cell.state_size
        (torch.Size([2, 5]), 5)
    """

    renamed_parameters = {"bias": "bias_ih"}  # older state_dicts name it "bias"
    compiled_adapter = UGRNNAdapter

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        forget_bias: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="UGRNNCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="UGRNNCell")
        self.bias = check_flag("UGRNNCell", "bias", bias)
        self.forget_bias = check_real("UGRNNCell", "forget_bias", forget_bias)
        self.state_size = hidden_size
        self.output_size = hidden_size
        factory = factory_kwargs("UGRNNCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(2 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(2 * hidden_size, hidden_size, **factory))
        self.register_parameter(
            "bias_ih", optional_parameter(bias, 2 * hidden_size, **factory)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        self._reset_uniform(1.0 / math.sqrt(self.hidden_size), zeros=("bias_ih",))

    def weights(self) -> RF.UGRNNWeights:
        """This cell's parameters as :class:`rnnkit.functional.UGRNNWeights`."""
        return RF.UGRNNWeights(self.weight_ih, self.weight_hh, self.bias_ih)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.prepare_call(x, state)
        return RF.ugrnn_step(x, state, self.weights(), forget_bias=self.forget_bias)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if self.forget_bias != 1.0:
            text += f", forget_bias={self.forget_bias}"
        return text
