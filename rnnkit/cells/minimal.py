"""minGRU and minLSTM (Feng et al. 2024): gates that see only the input, so a whole
sequence can also be computed by a parallel scan."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_input_dtype,
    check_size,
    check_state_tensor,
    factory_kwargs,
    optional_parameter,
)


class _MinRNNCell(RecurrentCell):
    """Shared machinery of :class:`MinGRUCell` and :class:`MinLSTMCell`."""

    blocks: int  # row blocks of weight_ih: minGRU 2 (z, h~), minLSTM 3 (f, i, h~)
    renamed_parameters = {"bias": "bias_ih"}  # older state_dicts name it "bias"
    _step: Callable[[Tensor, Tensor, RF.MinRNNWeights], tuple[Tensor, Tensor]]
    _scan: Callable[..., Tensor]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_size = input_size = check_size("input_size", input_size, owner=name)
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner=name)
        self.bias = check_flag(name, "bias", bias)
        self.state_size = hidden_size
        self.output_size = hidden_size
        factory = factory_kwargs(name, device, dtype)
        rows = self.blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.register_parameter("bias_ih", optional_parameter(bias, rows, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation: :math:`U(-1/\\sqrt{H_{in}}, 1/\\sqrt{H_{in}})`."""
        self._reset_uniform(1.0 / math.sqrt(self.input_size))

    def weights(self) -> RF.MinRNNWeights:
        """This cell's parameters as :class:`rnnkit.functional.MinRNNWeights`."""
        return RF.MinRNNWeights(self.weight_ih, self.bias_ih)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.prepare_call(x, state)
        return type(self)._step(x, state, self.weights())

    def scan(
        self, x: Tensor, h0: Tensor | None = None, *, chunk_size: int | None = 128
    ) -> Tensor:
        """The whole sequence at once by the log-space parallel scan.

        Args:
            x: ``(T, B, H_in)`` time-major input.
            h0: ``(B, H)`` initial state (any sign), or ``None`` for zeros.
            chunk_size: the scan restarts every ``chunk_size`` steps from the state reached,
                which bounds the float32 rounding error of the running log-product
                (:func:`rnnkit.functional._log_space_scan`); ``None`` scans all ``T`` steps
                in one piece, as in the paper.

        Returns:
            ``hs (T, B, H)``: the same values as calling the cell step by step.
        """
        name = type(self).__name__
        if chunk_size is not None:
            check_size(f"{name}.scan: chunk_size", chunk_size)
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}.scan: input must be a Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}.scan: input must be floating point, got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"{name}.scan: expected input of shape (time, batch, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        check_input_dtype(self, x)
        if h0 is None:
            h0 = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        # one step's worth of input stands in for x[0], which an empty sequence lacks
        check_state_tensor(self, "h0", h0, x.new_empty(x.shape[1:]), self.hidden_size)
        return type(self)._scan(x, h0, self.weights(), chunk_size=chunk_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        return text


class MinGRUCell(_MinRNNCell):
    r"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We
    Needed?", arXiv:2410.01201).

    .. math::
        \begin{aligned}
        z_t &= \sigma(W_z x_t + b_z), \qquad \tilde h_t = g(W_h x_t + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t, \qquad
        g(a) = \begin{cases} a + \tfrac12 & a \ge 0 \\ \sigma(a) & a < 0 \end{cases}
        \end{aligned}

    Neither the gate nor the candidate sees :math:`h_{t-1}`, so the recurrence is
    linear in :math:`h`: :math:`h_t = a_t h_{t-1} + v_t`. :meth:`scan` solves it for all
    steps at once in log space (``cumsum`` and ``logcumsumexp``, the paper's appendix B),
    with parallel work inside chunks of ``chunk_size`` steps instead of :math:`T`
    sequential steps; the step-by-step call gives the same values. :math:`g` keeps the
    candidate positive so it has a logarithm (the paper's log-space variant; it is used in
    both forms so they agree).

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``):

    =============  ===============  ==================================================
    name           shape            initialisation
    =============  ===============  ==================================================
    ``weight_ih``  ``(2H, H_in)``   rows z, then h̃; :math:`U(-1/\sqrt{H_{in}}, \cdot)`
    ``bias_ih``    ``(2H,)``        same; only with ``bias``
    =============  ===============  ==================================================

    Args:
        input_size: H_in.
        hidden_size: H.
        bias: create ``bias_ih``.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, h = cell(x, h)`` (one step, ``x`` ``(B, H_in)``) or
    ``hs = cell.scan(xs, h0)`` (``xs`` ``(T, B, H_in)``, ``hs`` ``(T, B, H)``).

    Example:
        >>> import torch
        >>> from rnnkit.cells import MinGRUCell
        >>> cell = MinGRUCell(3, 5).double()
        >>> xs = torch.randn(7, 2, 3, dtype=torch.float64)
        >>> hs = cell.scan(xs)
        >>> h = None
        >>> for x in xs:
        ...     _, h = cell(x, h)
        >>> hs.shape, torch.allclose(hs[-1], h)
        (torch.Size([7, 2, 5]), True)
    """

    blocks = 2
    _step = staticmethod(RF.min_gru_step)
    _scan = staticmethod(RF.min_gru_scan)


class MinLSTMCell(_MinRNNCell):
    r"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

    .. math::
        \begin{aligned}
        f_t &= \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i), \quad
        \tilde h_t = g(W_h x_t + b_h) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \qquad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
        \end{aligned}

    with :math:`g` as in :class:`MinGRUCell`. The normalised gates make the output scale
    independent of time (the paper's time-independent minLSTM); there is no separate cell
    state, so the state is one ``(B, H)`` tensor. :meth:`scan` computes a whole sequence
    by the log-space parallel scan, using :math:`\log f'_t = -\mathrm{softplus}(d_t)` and
    :math:`\log i'_t = -\mathrm{softplus}(-d_t)` for
    :math:`d_t = \mathrm{softplus}(-k^f_t) - \mathrm{softplus}(-k^i_t)`.

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``):

    =============  ===============  ==================================================
    name           shape            initialisation
    =============  ===============  ==================================================
    ``weight_ih``  ``(3H, H_in)``   rows f, i, h̃; :math:`U(-1/\sqrt{H_{in}}, \cdot)`
    ``bias_ih``    ``(3H,)``        same; only with ``bias``
    =============  ===============  ==================================================

    Args:
        input_size: H_in.
        hidden_size: H.
        bias: create ``bias_ih``.
        device, dtype: where and in what dtype to create the parameters.

    Example:
        >>> import torch
        >>> from rnnkit.cells import MinLSTMCell
        >>> cell = MinLSTMCell(3, 5)
        >>> hs = cell.scan(torch.randn(7, 2, 3))
        >>> out, h = cell(torch.randn(2, 3), hs[-1])
        >>> hs.shape, out.shape
        (torch.Size([7, 2, 5]), torch.Size([2, 5]))
    """

    blocks = 3
    _step = staticmethod(RF.min_lstm_step)
    _scan = staticmethod(RF.min_lstm_scan)
