"""A stack of cells that is itself a cell (Keras ``StackedRNNCells``, TF1 ``MultiRNNCell``).

One step of ``MultiCell([c_1, ..., c_L])`` runs the cells in order, each on the previous
cell's output:

.. math::

    o^{(0)}_t = x_t, \\qquad
    o^{(l)}_t, s^{(l)}_t = c_l(o^{(l-1)}_t, s^{(l)}_{t-1}), \\qquad
    \\mathrm{output}_t = o^{(L)}_t

The state is the tuple of the cells' states ``(s^{(1)}, ..., s^{(L)})`` (each a tensor or,
for an LSTM, a tuple), so every driver (``Recurrence``, ``Fold``, ``UnfoldFrom``,
``Bidirectional``) runs the whole stack one time step at a time, as Keras' ``RNN([cells])``
does. A stack of torch-compatible layers runs faster as ``rnnkit.LSTM(num_layers=L)``; use
``MultiCell`` for stacks of different or custom cells.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from rnnkit.cells.base import RecurrentCell, State


def _state_size(cell: nn.Module, index: int) -> int | tuple:
    size = getattr(cell, "state_size", None)
    if size is None:
        raise TypeError(
            f"MultiCell: cell {index} ({type(cell).__name__}) has no state_size; every cell "
            "must follow the cell contract (output, state = cell(x, state) and state_size)"
        )
    return tuple(size) if isinstance(size, (tuple, list)) else int(size)


def _output_size(cell: nn.Module, size: int | tuple) -> int | None:
    """The cell's output features: ``output_size``, else (as Keras) its first state size."""
    output = getattr(cell, "output_size", None)
    if output is not None:
        return int(output)
    first = size
    while isinstance(first, tuple):
        first = first[0] if first else None
    return first


def _zeros(size: int | tuple, batch_size: int, device, dtype) -> State:
    if isinstance(size, tuple):
        return tuple(_zeros(s, batch_size, device, dtype) for s in size)
    return torch.zeros(batch_size, size, device=device, dtype=dtype)


class MultiCell(RecurrentCell):
    """Stack cells into one cell: the output of each is the input of the next.

    Args:
        cells: two or more modules following the cell contract (rnnkit cells or your own);
            cell ``k``'s ``output_size`` must equal cell ``k+1``'s ``input_size`` where both
            are known.

    Attributes:
        state_size: the tuple of the cells' state sizes, e.g. ``((8, 8), 5)`` for an LSTM
            with ``hidden_size=8`` under a GRU with 5 units.
        output_size: the last cell's output size. ``input_size``: the first cell's.
        hidden_size: the last cell's (what a driver's output features are).

    Call: ``output (B, output_size), (state_1, ..., state_L) = cell(x (B, H_in), state)``;
    ``state=None`` starts every cell from its own initial state.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell, LSTMCell, MultiCell
        >>> from rnnkit.layers import Recurrence
        >>> stack = MultiCell([LSTMCell(3, 8), GRUCell(8, 5)])
        >>> stack.state_size
        ((8, 8), 5)
        >>> out, ((h1, c1), h2) = Recurrence(stack)(torch.randn(7, 2, 3))
        >>> out.shape, torch.equal(out[-1], h2)
        (torch.Size([7, 2, 5]), True)
    """

    def __init__(self, cells: Iterable[nn.Module]) -> None:
        super().__init__()
        if isinstance(cells, nn.Module) or not isinstance(cells, Iterable):
            raise TypeError(
                f"MultiCell: cells must be a list of cells, got {type(cells).__name__}"
            )
        cells = list(cells)
        if not cells:
            raise ValueError("MultiCell: cells is empty; pass at least one cell")
        for index, cell in enumerate(cells):
            if not isinstance(cell, nn.Module):
                raise TypeError(
                    f"MultiCell: cell {index} must be an nn.Module, got {type(cell).__name__}"
                )
        sizes = tuple(_state_size(cell, index) for index, cell in enumerate(cells))
        outputs = [_output_size(cell, size) for cell, size in zip(cells, sizes, strict=True)]
        for index in range(len(cells) - 1):
            produced = outputs[index]
            expected = getattr(cells[index + 1], "input_size", None)
            if isinstance(expected, int) and produced is not None and produced != expected:
                raise ValueError(
                    f"MultiCell: cell {index} ({type(cells[index]).__name__}) outputs "
                    f"{produced} features but cell {index + 1} "
                    f"({type(cells[index + 1]).__name__}) expects input_size={expected}"
                )
        self.cells = nn.ModuleList(cells)
        self.state_size = sizes
        self.state_names = tuple(f"cell {index}" for index in range(len(cells)))
        first_input = getattr(cells[0], "input_size", None)
        if isinstance(first_input, int):
            self.input_size = first_input
        self.output_size = outputs[-1]
        self.hidden_size = getattr(cells[-1], "hidden_size", outputs[-1])

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, index: int) -> nn.Module:
        return self.cells[index]

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[State, ...]:
        """Each cell's own initial state (zeros where the cell has no ``initial_state``)."""
        reference = next(self.parameters(), None)
        if device is None and reference is not None:
            device = reference.device
        if dtype is None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        states = []
        for cell, size in zip(self.cells, self.state_size, strict=True):
            if hasattr(cell, "initial_state"):
                states.append(cell.initial_state(batch_size, device=device, dtype=dtype))
            else:
                states.append(_zeros(size, batch_size, device, dtype))
        return tuple(states)

    def reset_parameters(self) -> None:
        """Re-draw every cell's parameters (each cell's own ``reset_parameters``)."""
        for cell in self.cells:
            reset = getattr(cell, "reset_parameters", None)
            if callable(reset):
                reset()

    def forward(self, x: torch.Tensor, state: tuple[State, ...] | None = None
                ) -> tuple[torch.Tensor, tuple[State, ...]]:
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        if not isinstance(state, (tuple, list)) or len(state) != len(self.cells):
            got = (f"a {type(state).__name__} of length {len(state)}"
                   if isinstance(state, (tuple, list)) else type(state).__name__)
            raise TypeError(
                f"MultiCell: state must be a tuple of {len(self.cells)} cell states (one per "
                f"cell, state_size={self.state_size}), got {got}"
            )
        new_states = []
        output = x  # (B, H_in)
        for cell, cell_state in zip(self.cells, state, strict=True):
            output, new_state = cell(output, cell_state)  # (B, H_out of this cell)
            new_states.append(new_state)
        return output, tuple(new_states)

    def extra_repr(self) -> str:
        return f"state_size={self.state_size}"
