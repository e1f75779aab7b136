"""Dropout for recurrences: variational (per-sequence) masks and zoneout.

* **Variational dropout** (Gal & Ghahramani 2016; Keras ``dropout``/``recurrent_dropout``):
  one Bernoulli mask per sequence, the same at every time step, scaled by ``1 / (1 - p)``
  (inverted dropout) so evaluation needs no rescaling. :class:`RecurrentDropoutCell` applies
  it to the recurrent input :math:`h_{t-1}` only; the carried state itself is not dropped:

  .. math:: o_t, s_t = \\mathrm{cell}(x_t, (m \\odot h_{t-1}, c_{t-1}, \\dots))

* **Zoneout** (Krueger et al. 2017): each unit of the state keeps its previous value with
  probability ``p``, a fresh mask every step; at evaluation the expectation is used:

  .. math::

      s_t = d_t \\odot s_{t-1} + (1 - d_t) \\odot \\tilde s_t \\quad (\\text{training}),
      \\qquad s_t = p\\, s_{t-1} + (1 - p)\\, \\tilde s_t \\quad (\\text{eval})

Both wrappers follow the cell contract, so they run under any driver (``Recurrence``, the
drop-ins, ``Bidirectional``) and any engine that accepts custom cells.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.layers.state import CellWrapper


def check_probability(name: str, p: float) -> float:
    """Validate a dropout probability in ``[0, 1)``: any real number (NumPy's too), not a bool."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(p).__name__} ({p!r})")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


def variational_mask(
    shape: tuple[int, ...], p: float, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A Bernoulli keep-mask of ``shape`` scaled by ``1/(1-p)``, on ``like``'s device/dtype."""
    keep = torch.empty(shape, device=like.device, dtype=like.dtype)
    keep.bernoulli_(1.0 - p, generator=generator)
    return keep / (1.0 - p)


class RecurrentDropoutCell(CellWrapper):
    """Variational dropout on the recurrent input ``h_{t-1}`` of ``cell``.

    The mask is drawn once per sequence: on the first step after :meth:`reset_mask` (drivers
    call it at the start of every forward) or when the batch size changes, and reused at every
    later step. In eval mode, or with ``p = 0``, the wrapper is the identity.

    Example:
        >>> import torch
        >>> from rnnkit.layers import Recurrence
        >>> inner = torch.nn.RNNCell(3, 5)
        >>> class Cell(torch.nn.Module):
        ...     state_size = output_size = hidden_size = 5
        ...     input_size = 3
        ...     def forward(self, x, h):
        ...         h = inner(x, h)
        ...         return h, h
        >>> layer = Recurrence(RecurrentDropoutCell(Cell(), 0.25))
        >>> out, h = layer(torch.randn(7, 2, 3))
        >>> out.shape
        torch.Size([7, 2, 5])
    """

    def __init__(self, cell: nn.Module, p: float, mask: Tensor | None = None) -> None:
        super().__init__(cell)
        self.p = check_probability("recurrent_dropout", p)
        self.mask = mask

    def reset_mask(self) -> None:
        """Forget the current mask; the next step of a new sequence draws a fresh one."""
        self.mask = None

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.training or self.p == 0.0:
            return self.cell(x, state)
        hidden = state[0] if isinstance(state, (tuple, list)) else state  # (B, H_out)
        if self.mask is None or self.mask.shape != hidden.shape:
            self.mask = variational_mask(tuple(hidden.shape), self.p, hidden)  # (B, H_out)
        dropped = hidden * self.mask
        if isinstance(state, (tuple, list)):
            state = type(state)((dropped, *state[1:]))
        else:
            state = dropped
        return self.cell(x, state)


class ZoneoutCell(CellWrapper):
    """Zoneout on every state tensor of ``cell`` (Krueger et al. 2017).

    Args:
        cell: the wrapped cell.
        p: zoneout probability, one float for all state tensors or one per state tensor
            (e.g. ``(0.05, 0.5)`` for LSTM ``(h, c)`` as in the paper).

    The step's output is the zoned first state tensor (the hidden state ``h``), which is what
    rnnkit's Elman/LSTM/GRU cells output.

    Example:
        >>> import torch
        >>> from rnnkit.layers import Recurrence
        >>> inner = torch.nn.GRUCell(3, 4)
        >>> class Cell(torch.nn.Module):
        ...     state_size = output_size = hidden_size = 4
        ...     input_size = 3
        ...     def forward(self, x, h):
        ...         h = inner(x, h)
        ...         return h, h
        >>> out, h = Recurrence(ZoneoutCell(Cell(), 0.1))(torch.randn(6, 2, 3))
        >>> torch.equal(out[-1], h)
        True
    """

    def __init__(self, cell: nn.Module, p: float | tuple[float, ...]) -> None:
        super().__init__(cell)
        if isinstance(p, (tuple, list)):
            self.p: float | tuple[float, ...] = tuple(
                check_probability("zoneout", value) for value in p
            )
        else:
            self.p = check_probability("zoneout", p)

    def _rates(self, state: State) -> list[float]:
        count = len(state) if isinstance(state, (tuple, list)) else 1
        if isinstance(self.p, tuple):
            if len(self.p) != count:
                raise ValueError(
                    f"zoneout has {len(self.p)} rates but the cell's state has {count} tensors"
                )
            return list(self.p)
        return [self.p] * count

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        _, new_state = self.cell(x, state)
        olds = list(state) if isinstance(state, (tuple, list)) else [state]
        news = list(new_state) if isinstance(new_state, (tuple, list)) else [new_state]
        zoned = []
        for old, new, p in zip(olds, news, self._rates(state), strict=True):
            if p == 0.0:
                zoned.append(new)
            elif self.training:
                hold = torch.rand_like(new) < p  # (B, H): units that keep their old value
                zoned.append(torch.where(hold, old, new))
            else:
                zoned.append(p * old + (1.0 - p) * new)
        if isinstance(new_state, (tuple, list)):
            result: State = type(new_state)(zoned)
        else:
            result = zoned[0]
        return zoned[0], result


def reset_dropout_masks(module: nn.Module) -> None:
    """Make every per-sequence dropout wrapper inside ``module`` (a
    :class:`RecurrentDropoutCell`, a variational ``DropoutWrapper``: any module with a
    ``reset_mask`` method) draw a fresh mask."""
    for child in module.modules():
        reset = getattr(child, "reset_mask", None)
        if callable(reset):
            reset()


__all__ = [
    "RecurrentDropoutCell",
    "ZoneoutCell",
    "check_probability",
    "reset_dropout_masks",
    "variational_mask",
]
