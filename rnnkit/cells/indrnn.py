"""The independently recurrent cell, IndRNN (Li et al. 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells.base import (
    RecurrentCell,
    check_choice,
    check_flag,
    check_positive,
    check_size,
    factory_kwargs,
    optional_parameter,
)

_NONLINEARITIES = ("relu", "tanh")


class IndRNNCell(RecurrentCell):
    r"""Independently recurrent neural network cell.

    Li, Li, Cook, Zhu & Gao, "Independently Recurrent Neural Network (IndRNN): Building a
    Longer and Deeper RNN", CVPR 2018 (arXiv:1803.04831).

    .. math::
        h_t = \phi\big(W_{ih} x_t + u \odot h_{t-1} + b\big), \qquad
        u = \mathrm{clip}(w_{hh}, -u_{max}, u_{max})

    Every unit has a single recurrent weight (:math:`u` is a vector, :math:`\odot` the
    element-wise product), so units are independent in time and the gradient through
    :math:`T` steps is a product of :math:`T` scalars per unit, which the bound
    :math:`u_{max}` (``recurrent_max_abs``) controls. The clip is applied in the forward
    pass (the gradient is zero for clipped entries), as in TF's ``IndRNNCell``; the stored
    ``weight_hh`` is left as it is.

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``):

    =============  ==============  ==================================================
    name           shape           initialisation
    =============  ==============  ==================================================
    ``weight_ih``  ``(H, H_in)``   :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`
    ``weight_hh``  ``(H,)``        :math:`U(0, \min(1, u_{max}))`: with ReLU, states
                                   neither explode nor vanish quickly at start
    ``bias_ih``    ``(H,)``        zeros; only with ``bias``
    =============  ==============  ==================================================

    Args:
        input_size: H_in.
        hidden_size: H.
        nonlinearity: ``"relu"`` (the paper's) or ``"tanh"``.
        bias: create ``bias_ih``.
        recurrent_max_abs: if given (``> 0``), clip the recurrent weights to
            ``[-recurrent_max_abs, recurrent_max_abs]``.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, h = cell(x, h)`` with ``x`` ``(B, H_in)``, ``h`` ``(B, H)`` or ``None``
    (zeros); ``output`` is the new ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import IndRNNCell
        >>> cell = IndRNNCell(3, 5, recurrent_max_abs=2 ** (1 / 100))
        >>> out, h = cell(torch.randn(2, 3))
        >>> out.shape, tuple(cell.weight_hh.shape)
        (torch.Size([2, 5]), (5,))
    """

    renamed_parameters = {"bias": "bias_ih"}  # older state_dicts name it "bias"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "relu",
        bias: bool = True,
        recurrent_max_abs: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="IndRNNCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="IndRNNCell")
        self.nonlinearity = check_choice(
            "IndRNNCell", "nonlinearity", nonlinearity, _NONLINEARITIES
        )
        self.bias = check_flag("IndRNNCell", "bias", bias)
        self.recurrent_max_abs = check_positive(
            "IndRNNCell", "recurrent_max_abs", recurrent_max_abs
        )
        self.state_size = hidden_size
        self.output_size = hidden_size
        factory = factory_kwargs("IndRNNCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, **factory))
        self.register_parameter("bias_ih", optional_parameter(bias, hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        high = 1.0 if self.recurrent_max_abs is None else min(1.0, self.recurrent_max_abs)
        nn.init.uniform_(self.weight_hh, 0.0, high)
        if self.bias_ih is not None:
            nn.init.zeros_(self.bias_ih)

    def weights(self) -> RF.IndRNNWeights:
        """This cell's parameters as :class:`rnnkit.functional.IndRNNWeights`."""
        return RF.IndRNNWeights(self.weight_ih, self.weight_hh, self.bias_ih)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.prepare_call(x, state)
        return RF.indrnn_step(
            x,
            state,
            self.weights(),
            nonlinearity=self.nonlinearity,
            recurrent_max_abs=self.recurrent_max_abs,
        )

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.nonlinearity != "relu":
            text += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            text += ", bias=False"
        if self.recurrent_max_abs is not None:
            text += f", recurrent_max_abs={self.recurrent_max_abs}"
        return text
