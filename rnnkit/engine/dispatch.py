"""Which path a recurrence takes. See docs/design.md for the contract."""

from __future__ import annotations

from torch import Tensor, nn

from rnnkit.cells.base import State


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: State,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
    engine: str = "auto",
) -> tuple[Tensor, State]:
    """Run ``cell`` over time-major ``inputs`` (T, B, H_in); return (outputs, final_state)."""
    from rnnkit.engine import loop

    return loop.run_recurrence(cell, inputs, state, lengths=lengths, reverse=reverse)
