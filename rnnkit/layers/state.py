"""Initial states for any cell that follows the contract, even one without ``initial_state``."""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.cells.base import State
from rnnkit.config import Configurable


def state_sizes(cell: nn.Module) -> tuple[int, ...] | int:
    """The cell's ``state_size`` with a readable error when it has none."""
    size = getattr(cell, "state_size", None)
    if size is None:
        raise TypeError(
            f"{type(cell).__name__} has no state_size attribute; the cell contract needs "
            "state_size (an int, or a tuple of ints for multi-state cells)"
        )
    return tuple(size) if isinstance(size, (tuple, list)) else int(size)


def zero_state(
    cell: nn.Module,
    batch_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> State:
    """``cell.initial_state(batch_size, device, dtype)``, or zeros shaped by ``state_size``."""
    if hasattr(cell, "initial_state"):
        if batch_size == 0:  # an empty batch runs, as in torch.nn: the cell's state, 0 rows
            one = cell.initial_state(1, device=device, dtype=dtype)
            return tuple(t[:0] for t in one) if isinstance(one, (tuple, list)) else one[:0]
        return cell.initial_state(batch_size, device=device, dtype=dtype)
    size = state_sizes(cell)
    factory = {"device": device, "dtype": dtype}
    if isinstance(size, tuple):
        return tuple(torch.zeros(batch_size, s, **factory) for s in size)
    return torch.zeros(batch_size, size, **factory)


class CellWrapper(Configurable, nn.Module):
    """Base of cell wrappers: forwards the cell contract's attributes to the wrapped cell."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    @property
    def state_size(self) -> int | tuple[int, ...]:
        return self.cell.state_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return zero_state(self.cell, batch_size, device, dtype)
