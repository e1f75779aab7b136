"""The contract every rnnkit cell follows.

A cell computes one time step and knows nothing about time::

    output, new_state = cell(x, state)      # x: (B, H_in)

``state`` is a tensor ``(B, H)`` for single-state cells (Elman, GRU, ...) or a tuple of
tensors for multi-state cells (LSTM: ``(h, c)``). ``output`` is ``(B, output_size)``.
Drivers in :mod:`rnnkit.layers` and :mod:`rnnkit.engine` run a cell over a sequence;
any ``nn.Module`` with the same call signature, ``state_size`` and ``initial_state`` can be
driven the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

State = Tensor | tuple[Tensor, ...]


def check_size(name: str, value: int, minimum: int = 1) -> int:
    """Validate an integer size argument and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class RecurrentCell(nn.Module):
    """Base class of rnnkit cells.

    Subclasses set ``input_size``, ``hidden_size``, ``state_size`` (an int, or a tuple of
    ints for multi-state cells) and ``output_size``, and implement :meth:`forward`.
    """

    input_size: int
    hidden_size: int
    state_size: int | tuple[int, ...]
    output_size: int

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zeros in the shape of this cell's state for ``batch_size`` sequences."""
        check_size("batch_size", batch_size)
        reference = next(self.parameters(), None)
        if device is None:
            device = reference.device if reference is not None else None
        if dtype is None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        if isinstance(self.state_size, tuple):
            return tuple(
                torch.zeros(batch_size, size, device=device, dtype=dtype)
                for size in self.state_size
            )
        return torch.zeros(batch_size, self.state_size, device=device, dtype=dtype)

    def check_input(self, x: Tensor) -> None:
        """Raise a readable error unless ``x`` is a floating ``(B, input_size)`` tensor."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__}: input must be a Tensor, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: input must be floating point, got dtype {x.dtype}"
            )
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (batch, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
