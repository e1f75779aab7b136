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


def fused_forward(
    module: nn.Module,
    inputs: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]] | None:
    """Run a whole drop-in module through torch's fused kernels, or return None.

    ``inputs`` (T, B, H_in) time-major; ``hx`` in torch.nn's format ((L*D, B, H_out) [, c0]).
    Returns ``(output (T, B, D*H_out), h_n or (h_n, c_n))`` when the module's configuration
    equals a torch.nn module, else None (the caller then runs layer by layer).
    """
    return None
