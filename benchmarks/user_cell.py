"""The user-written cell of issue 15's benchmark row: a plain ``nn.Module`` with two
LSTM-like gate slices, written as a user would, with nothing from rnnkit.

It follows the cell contract only (``output, state = cell(x, state)``, ``state_size``,
``input_size``/``hidden_size``), so :class:`rnnkit.Recurrence` drives it like any rnnkit cell.
It is the coupled-gate LSTM without an output gate (the forget gate also decides how much of
the candidate enters, as in Greff et al. 2017's "CIFG" and JANET, van der Westhuizen &
Lasenby 2018):

.. math::
    [a^f; a^g] = W_x x_t + b + W_h h_{t-1}, \\quad f = \\sigma(a^f), \\quad
    c_t = f \\odot c_{t-1} + (1 - f) \\odot \\tanh(a^g), \\quad h_t = \\tanh(c_t)

Two gate slices of ``H`` columns each: half the GEMM FLOPs of an LSTM (four slices). The
input projection ``x2h`` depends on ``x`` alone, which a fast path can hoist out of the loop;
the recurrent projection ``h2h`` has no bias (the one bias lives in ``x2h``).

Example:
    >>> import torch, rnnkit
    >>> from benchmarks.user_cell import TwoGateCell
    >>> layer = rnnkit.Recurrence(TwoGateCell(8, 16))
    >>> out, (h, c) = layer(torch.randn(5, 3, 8))           # (T, B, H_in)
    >>> out.shape, h.shape
    (torch.Size([5, 3, 16]), torch.Size([3, 16]))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TwoGateCell(nn.Module):
    """Forget gate and candidate (two gate slices), state ``(h, c)``, output ``h``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_size = (hidden_size, hidden_size)
        self.output_size = hidden_size
        self.x2h = nn.Linear(input_size, 2 * hidden_size)  # (2H, H_in): f, g
        self.h2h = nn.Linear(hidden_size, 2 * hidden_size, bias=False)  # (2H, H)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = state
        a_f, a_g = (self.x2h(x) + self.h2h(h)).chunk(2, dim=1)  # (B, H) each
        f = torch.sigmoid(a_f)
        c = f * c + (1 - f) * torch.tanh(a_g)  # (B, H)
        h = torch.tanh(c)  # (B, H)
        return h, (h, c)
