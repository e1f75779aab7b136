"""Initial states for any cell that follows the contract, even one without ``initial_state``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.config import Configurable
from rnnkit.errors import DeviceError, DTypeError, ShapeError


class DriverOutput(NamedTuple):
    """What every rnnkit driver returns (``Recurrence``, ``Fold``, ``Bidirectional``,
    ``Sequence(return_state=True)``; ``UnfoldFrom`` adds ``lengths``): see docs/design.md."""

    output: Any  # every step's output (Fold: each sequence's last), in the layer's layout
    state: Any  # the final state: each sequence's state at its own last processed step


def state_leaves(tree: Any) -> list[Any]:
    """The leaves of a nested tuple (state sizes or state tensors), depth first."""
    if isinstance(tree, (tuple, list)):
        return [leaf for part in tree for leaf in state_leaves(part)]
    return [tree]


def nest_like(flat: list[Any], like: Any) -> Any:
    """Rebuild ``like``'s nesting (an int or nested tuple of ints) from its leaves ``flat``."""
    leaves = iter(flat)

    def build(node: Any) -> Any:
        if isinstance(node, (tuple, list)):
            return tuple(build(part) for part in node)
        return next(leaves)

    return build(like)


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


def state_like(cell: nn.Module, inputs: Tensor) -> Tensor:
    """A tensor with the device and dtype a state for ``cell`` on ``inputs`` takes: ``inputs``
    itself, or, for integer token ids (a cell that embeds them), an empty tensor of the
    cell's floating parameter dtype."""
    if inputs.is_floating_point():
        return inputs
    dtype = next((p.dtype for p in cell.parameters() if p.is_floating_point()),
                 torch.get_default_dtype())
    return inputs.new_empty(0, dtype=dtype)


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


def check_state(owner: str, cell: nn.Module, state: State, batch_size: int, like: Tensor,
                source: str | None = None) -> State:
    """Check a state a driver is about to run ``cell`` from against ``cell.state_size``: one
    tensor (or a tuple, for multi-state cells) of shape ``(B, S_i)`` on the input's device
    and dtype. Parts are named as the cell names them (``LSTMCell state c``); ``source``
    says where the state came from (the carried state of a stateful layer). Cells whose
    ``state_size`` is nested (stacks of cells) are left to their own checks."""
    sizes = state_sizes(cell)
    multi = isinstance(sizes, tuple)
    if multi and not all(isinstance(s, int) for s in sizes):
        return state
    expected = sizes if multi else (sizes,)
    name = type(cell).__name__
    where = f" ({source})" if source else ""
    if multi != isinstance(state, (tuple, list)) or (multi and len(state) != len(expected)):
        shape = ("a tuple of " + str(len(state)) if isinstance(state, (tuple, list))
                 else f"a {type(state).__name__}")
        want = f"a tuple of {len(expected)} tensors" if multi else "one tensor"
        raise ValueError(f"{owner}: the {name} state{where} must be {want} "
                         f"(state_size={sizes}), got {shape}")
    names = tuple(getattr(cell, "state_names", ("h", "c")))
    parts = state if multi else (state,)
    for index, (tensor, size) in enumerate(zip(parts, expected, strict=True)):
        part = f" {names[index]}" if multi and index < len(names) else (
            f"[{index}]" if multi else "")
        label = f"{name} state{part}{where}"
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{owner}: {label} must be a Tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != (batch_size, size):
            raise ShapeError(
                f"{owner}: {label} must be ({batch_size}, {size}) (batch, state_size), got "
                f"{tuple(tensor.shape)}"
            )
        if tensor.device != like.device:
            raise DeviceError(
                f"{owner}: {label} is on the {tensor.device.type} device but the input is on "
                f"{like.device}; move the state to {like.device}"
            )
        if tensor.dtype != like.dtype and like.is_floating_point():
            raise DTypeError(f"{owner}: {label} has dtype {tensor.dtype} but the input has "
                             f"{like.dtype}")
    return state
