"""The ``"scan"`` path: cells whose recurrence is linear in the state run as a parallel scan.

minGRU and minLSTM (:mod:`rnnkit.cells.minimal`) compute their gates from the input alone,
so the recurrence is :math:`h_t = a_t \\odot h_{t-1} + v_t` with :math:`a_t, v_t` known for
every step before the first one runs. Their ``scan`` solves it for all steps at once (log
space, ``cumsum`` and ``logcumsumexp``): a handful of whole-sequence tensor operations
instead of ``T`` steps of Python and autograd. The drivers run that scan whenever a whole
sequence is known up front (training, whole-sequence inference); a cell stepped one input at
a time (:class:`~rnnkit.layers.UnfoldFrom`, a caller's own loop) runs its ``forward``.

Semantics are the loop's (:mod:`rnnkit.engine.loop`), lengths and reverse included:

* lengths: the inputs at padded steps are zeroed (garbage there, ``inf`` or ``nan``, must not
  reach the gradients of the valid steps through the scan's backward), the scan runs over
  all ``T`` steps, outputs at padded steps are set to zero and the final state is each
  sequence's state at its own last step ``lengths[b] - 1``;
* reverse: each sequence is reversed within its own length (one ``gather``), scanned
  forwards, and the outputs gathered back to their original positions; the final state is
  the state after step 0.

Symbols: ``T`` time steps, ``B`` batch, ``H_in`` input features, ``H`` hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.engine.lengths import reverse_index, reverse_within_lengths

__all__ = ["has_scan", "run_recurrence", "supports"]


def _min_cell_class() -> type:
    # imported lazily, as the compiled kernels import the cells they know
    from rnnkit.cells.minimal import _MinRNNCell

    return _MinRNNCell


def has_scan(cell: nn.Module) -> bool:
    """Whether ``cell`` is a minGRU/minLSTM (served by the scan unless :func:`supports` says
    why not)."""
    return isinstance(cell, _min_cell_class())


def supports(cell: nn.Module) -> tuple[bool, str]:
    """Whether :func:`run_recurrence` computes exactly what stepping ``cell`` computes.

    Covered: :class:`~rnnkit.cells.MinGRUCell`, :class:`~rnnkit.cells.MinLSTMCell` and their
    subclasses that keep their ``forward`` and ``scan`` (a subclass that changes one of them
    would no longer be computed by the other), without forward hooks (they run once per
    step on the loop).
    """
    base = _min_cell_class()
    kind = type(cell)
    if not isinstance(cell, base):
        return False, f"{kind.__name__} has no parallel scan (covered: MinGRUCell, MinLSTMCell)"
    for method in ("forward", "scan"):
        if getattr(kind, method) is not getattr(base, method):
            return False, f"{kind.__name__} overrides {method}(), so the scan may not match it"
    if cell._forward_hooks or cell._forward_pre_hooks:
        return False, f"{kind.__name__} has forward hooks, which run once per step"
    return True, (f"{kind.__name__}'s gates see only the input: the whole sequence runs as "
                  f"one parallel scan in log space (cell.scan), no per-step Python")


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: Tensor,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run a minGRU/minLSTM ``cell`` over time-major ``inputs (T, B, H_in)`` by its scan.

    Same arguments and result as :func:`rnnkit.engine.loop.run_recurrence` (``lengths``
    already checked): ``(outputs (T, B, H), final_state (B, H))``, outputs zero at padded
    steps, the final state each sequence's own last. Differentiable in everything.

    Example:
        >>> import torch
        >>> from rnnkit.cells import MinGRUCell
        >>> from rnnkit.engine import loop
        >>> cell = MinGRUCell(3, 4).double()
        >>> x, h0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.zeros(2, 4).double()
        >>> out, h = run_recurrence(cell, x, h0, lengths=torch.tensor([6, 3]), reverse=True)
        >>> ref, ref_h = loop.run_recurrence(cell, x, h0, lengths=torch.tensor([6, 3]),
        ...                                  reverse=True)
        >>> bool(torch.allclose(out, ref)) and bool(torch.allclose(h, ref_h))
        True
    """
    steps, batch = inputs.shape[0], inputs.shape[1]
    if lengths is not None and bool((lengths == steps).all()):
        lengths = None  # every sequence runs all T steps
    if lengths is None:
        x = inputs.flip(0) if reverse else inputs  # (T, B, H_in)
        hs = cell.scan(x, state)  # (T, B, H)
        final = hs[-1]  # (B, H)
        return (hs.flip(0) if reverse else hs), final
    lengths = lengths.to(inputs.device)
    valid = torch.arange(steps, device=inputs.device)[:, None] < lengths[None, :]  # (T, B)
    keep = valid.unsqueeze(-1)  # (T, B, 1)
    x = torch.where(keep, inputs, 0.0)  # (T, B, H_in): padding cannot leak nan into grads
    index = reverse_index(lengths, steps) if reverse else None  # (T, B)
    if index is not None:
        x = reverse_within_lengths(x, index)  # each sequence from its own last step
    hs = cell.scan(x, state)  # (T, B, H)
    last = (lengths - 1).view(1, batch, 1).expand(1, batch, hs.shape[2])  # (1, B, H)
    final = hs.gather(0, last).squeeze(0)  # (B, H): each sequence's own last step
    if index is not None:
        hs = reverse_within_lengths(hs, index)  # back to the original time positions
    return torch.where(keep, hs, 0.0), final  # (T, B, H)
