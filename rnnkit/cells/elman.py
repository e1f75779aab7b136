"""The Elman (simple) recurrent cell, a drop-in for ``torch.nn.RNNCell``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, projection, sum_bias
from rnnkit.cells.base import (
    RecurrentCell,
    check_choice,
    check_flag,
    check_size,
    factory_kwargs,
    optional_parameter,
)

_NONLINEARITIES = ("tanh", "relu")


class ElmanAdapter(CompiledAdapter):
    """The Elman cell on the compiled template (``csrc/elman.cpp``): both biases fold into
    the hoisted projection ``xp = W_ih x + b_ih + b_hh``; one GEMM ``W_hh h`` per step."""

    family = "elman"
    bf16 = True

    def describe(self) -> str:
        return f"ElmanCell ({self.cell.nonlinearity})"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        bias = (H,) if cell.bias_ih is not None else None
        return {"weight_ih": (H, cell.input_size), "weight_hh": (H, H), "bias_ih": bias,
                "bias_hh": (H,) if cell.bias_hh is not None else None}

    def project(self, inputs: Tensor) -> Tensor:
        cell = self.cell
        return projection(inputs, cell.weight_ih, sum_bias(cell.bias_ih, cell.bias_hh),
                          linear=self.linear)

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        return {"weight_hh": self.cell.weight_hh}

    def projection_operands(self):
        cell = self.cell
        return cell.weight_ih, cell.bias_ih, cell.bias_hh

    def flags(self) -> dict[str, bool]:
        return {"relu": self.cell.nonlinearity == "relu"}

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        pre = xp + state @ tensors["weight_hh"].t()  # (B, H)
        h = torch.relu(pre) if self.cell.nonlinearity == "relu" else torch.tanh(pre)
        return h, h
_INITS = ("default", "irnn")


class ElmanCell(RecurrentCell):
    r"""Elman recurrent cell (simple RNN), parameter-compatible with ``torch.nn.RNNCell``.

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
        \qquad \phi = \tanh \text{ or } \mathrm{relu}

    Shapes (B: batch, H_in: ``input_size``, H: ``hidden_size``):

    =============  ==============  ===================================
    name           shape           initialisation (``init="default"``)
    =============  ==============  ===================================
    ``weight_ih``  ``(H, H_in)``   :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``weight_hh``  ``(H, H)``      :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``bias_ih``    ``(H,)``        :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``bias_hh``    ``(H,)``        :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    =============  ==============  ===================================

    ``init="irnn"`` (Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent
    Networks of Rectified Linear Units") sets ``weight_hh`` to the identity, draws
    ``weight_ih`` from :math:`\mathcal N(0, 0.001^2)` and zeroes the biases. The paper uses
    it with ReLU, so pass ``nonlinearity="relu"`` as well; the nonlinearity is not changed
    for you.

    Args:
        input_size: H_in.
        hidden_size: H.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: if ``False`` there are no ``bias_ih``/``bias_hh`` (they are ``None``).
        init: ``"default"`` (``torch.nn.RNNCell``'s) or ``"irnn"``.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, h = cell(x, h)`` with ``x`` ``(B, H_in)`` and ``h`` ``(B, H)`` or ``None``
    (zeros); ``output`` is the new ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import ElmanCell
        >>> cell = ElmanCell(3, 5, nonlinearity="relu", init="irnn")
        >>> x = torch.randn(2, 3)
        >>> out, h = cell(x, cell.initial_state(2))
        >>> out.shape, torch.equal(out, h)
        (torch.Size([2, 5]), True)
    """

    compiled_adapter = ElmanAdapter

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        bias: bool = True,
        init: str = "default",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="ElmanCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="ElmanCell")
        self.nonlinearity = check_choice("ElmanCell", "nonlinearity", nonlinearity, _NONLINEARITIES)
        self.bias = check_flag("ElmanCell", "bias", bias)
        self.init = check_choice("ElmanCell", "init", init, _INITS)
        self.state_size = hidden_size
        self.output_size = hidden_size
        factory = factory_kwargs("ElmanCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
        for name in ("bias_ih", "bias_hh"):
            self.register_parameter(name, optional_parameter(bias, hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as chosen by ``init``."""
        if self.init == "irnn":
            with torch.no_grad():
                nn.init.normal_(self.weight_ih, mean=0.0, std=0.001)
                self.weight_hh.copy_(torch.eye(self.hidden_size))
                for bias in (self.bias_ih, self.bias_hh):
                    if bias is not None:
                        bias.zero_()
            return
        self._reset_uniform(1.0 / math.sqrt(self.hidden_size))

    def weights(self) -> RF.ElmanWeights:
        """This cell's parameters as :class:`rnnkit.functional.ElmanWeights`."""
        return RF.ElmanWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.prepare_call(x, state)
        return RF.elman_step(x, state, self.weights(), self.nonlinearity)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.nonlinearity != "tanh":
            text += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            text += ", bias=False"
        if self.init != "default":
            text += f", init={self.init!r}"
        return text
