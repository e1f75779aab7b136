"""The loop as one graph operation, for ``torch.export`` (and so ONNX export).

While ``torch.export`` records a model (``torch.compiler.is_exporting()``: the dynamo-based
``torch.onnx.export(..., dynamo=True)`` and :func:`rnnkit.export.export_onnx`), the eager
loop of :mod:`rnnkit.engine.loop` cannot run: a Python ``for`` over ``T`` steps would be
unrolled for the example's ``T`` and ``int(lengths.max())`` reads a value the graph does not
have. :func:`run_scan` computes the same thing with ``torch``'s ``scan`` higher-order
operator, which the ONNX exporter writes as one ONNX ``Scan`` node, so the exported graph
takes any batch size and any number of steps.

Semantics are the loop's (see :mod:`rnnkit.engine.loop`), written with masks only:

.. math::

    s_t = m_t \\odot f(x_t, s_{t-1}) + (1 - m_t) \\odot s_{t-1}, \\qquad
    y_t = m_t \\odot \\mathrm{out}(x_t, s_{t-1})

with ``m_t`` from ``lengths`` (``t < lengths[b]``) or a mask with gaps; the padded inputs
are zeroed before the cell sees them, as in the loop. Reading backwards scans from
``T - 1`` down to 0 with the same masks, which reads each sequence from its own last valid
step (its state stays the initial one over the padding), and writes outputs at their
original positions.

Symbols: ``T`` time steps, ``B`` batch size, ``H_in`` input features, ``H_out`` outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State

__all__ = ["exporting", "run_scan"]


def exporting() -> bool:
    """Whether ``torch.export`` (the dynamo ONNX exporter's front end) is recording."""
    return bool(torch.compiler.is_exporting())


def _where_state(keep: Tensor, new: State, old: State) -> State:
    if isinstance(new, Tensor):
        return torch.where(keep, new, old)
    return type(new)(_where_state(keep, n, o) for n, o in zip(new, old, strict=True))


def run_scan(
    cell: nn.Module,
    inputs: Tensor,
    state: State,
    lengths: Tensor | None = None,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` over time-major ``inputs (T, B, H_in)`` as one ``scan``.

    Same arguments and result as :func:`rnnkit.engine.loop.run_recurrence`: ``(outputs
    (T, B, H_out), final_state)``, outputs zero at padded or masked steps, each sequence's
    state at its own last processed step. ``lengths (B,)`` int64 (already checked by the
    caller on real values; in an exported graph they are an input) or ``mask (T, B)`` bool.
    """
    from torch._higher_order_ops.scan import scan

    if lengths is not None and mask is not None:
        raise ValueError("run_scan: pass lengths or mask, not both")
    if lengths is not None:
        steps = torch.arange(inputs.shape[0], device=inputs.device)  # (T,)
        mask = steps[:, None] < lengths.to(inputs.device)[None, :]  # (T, B)

    if mask is None:
        def body(carry: State, x: Tensor) -> tuple[State, Tensor]:
            out, new = cell(x, carry)
            return new, out.clone()  # scan refuses outputs that alias the carry

        final, outputs = scan(body, state, inputs, reverse=reverse)
        return outputs, final

    keep = mask.unsqueeze(-1)  # (T, B, 1)

    def masked_body(carry: State, xs: tuple[Tensor, Tensor]) -> tuple[State, Tensor]:
        x, k = xs  # (B, H_in), (B, 1)
        # zero padded inputs so garbage there (inf, nan) cannot leak through 0 * nan
        out, new = cell(torch.where(k, x, 0.0), carry)
        return _where_state(k, new, carry), torch.where(k, out, 0.0)  # (B, H_out)

    final, outputs = scan(masked_body, state, (inputs, keep), reverse=reverse)
    return outputs, final
