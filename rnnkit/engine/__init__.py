"""rnnkit.engine: how a recurrence runs fast.

* :func:`run_recurrence` runs one cell over time on the best path ("compiled" C++ kernels or
  the eager "loop"); :func:`fused_forward` runs a whole torch-compatible drop-in module on
  torch's fused kernels (oneDNN / cuDNN), variable lengths included.
* :func:`explain` says which path a call takes and why: it prints the :class:`Plan` the
  call executes (:mod:`rnnkit.engine.plan`).
* :func:`precision` runs the fused path in bfloat16 for inference.

See ``docs/engine.md``.
"""

from rnnkit.engine.dispatch import (
    ENGINES,
    EngineFallbackWarning,
    choose_path,
    explain,
    fused_forward,
    run_recurrence,
)
from rnnkit.engine.fused import precision
from rnnkit.engine.plan import CellRun, PathDeclined, Plan

__all__ = [
    "CellRun",
    "PathDeclined",
    "Plan",
    "ENGINES",
    "EngineFallbackWarning",
    "choose_path",
    "explain",
    "fused_forward",
    "precision",
    "run_recurrence",
]
