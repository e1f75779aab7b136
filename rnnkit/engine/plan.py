"""The execution plan: which path each part of a call runs, decided once.

A layer's ``forward`` builds a plan from itself and its (already validated) time-major input,
executes it, and :func:`rnnkit.engine.explain` prints the very same plan, so what explain
says is what runs. The plan also records what actually ran (``ran``): a path runner may
decline at run time with :class:`PathDeclined` (say, compiled kernels under a functorch
transform); under ``engine="auto"`` the loop then runs and the plan records the reason.

* :class:`CellRun`: one cell over time (a layer and direction of a drop-in, or a
  ``Recurrence``'s cell) on ``"compiled"``, ``"scan"`` or ``"loop"``;
* :class:`Plan`: a whole module: ``"fused"`` (torch's kernels for the whole stack) or
  ``"cells"`` (one :class:`CellRun` per layer and direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


class PathDeclined(Exception):
    """Raised by a path runner that cannot serve a call it was planned for; the message is
    the reason, which the plan records (``CellRun.declined``) before running the loop."""


@dataclass
class CellRun:
    """One cell run over time: the path chosen for it and why; what ran, once it ran."""

    label: str  # "layer 0", "layer 1 reverse", "forward", "backward", "cell"
    cell: nn.Module
    path: str  # "compiled" | "scan" | "inductor" | "loop"
    reason: str
    engine: str  # what the caller asked for: "auto" | "compiled" | "scan" | "inductor" | "loop"
    toolchain_missing: bool = False  # the loop runs because no compiler is available
    ran: str | None = None  # the path that executed, set by dispatch.run_cell
    declined: str | None = None  # why the planned path declined at run time
    # "bf16": the compiled kernels run this cell's GEMMs in bfloat16 (compiled/_bf16.py)
    precision: str = "fp32"

    def describe(self) -> str:
        name = getattr(self.cell, "plan_name", None) or type(self.cell).__name__
        inner = getattr(self.cell, "cell", None)
        if isinstance(inner, nn.Module):
            name += f"({type(inner).__name__})"
        reason = self.reason
        if self.path == "loop":
            reason += "; eager Python loop over time (one cell call per step)"
        text = f"  {self.label}: {name} -> {self.path} ({reason})"
        if self.declined:
            text += (f"; at run time the {self.path} path declined ({self.declined}): ran the "
                     f"loop")
        return text


@dataclass
class Plan:
    """How a whole call runs: ``path`` is ``"fused"``, ``"cells"``, ``"wrapper"`` (the plans
    of the wrapped layers are in ``parts``) or ``"opaque"`` (a user's module)."""

    header: str  # the module, as explain prints it
    input_line: str  # what the call receives
    path: str
    reason: str
    runs: list[CellRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: list[tuple[str, Plan]] = field(default_factory=list)  # wrappers' inner plans
    summary: str = ""  # the "path: ..." line
    ran: list[str] = field(default_factory=list)  # the fused path records itself here

    def paths(self) -> list[str]:
        """The path of every run, in execution order (wrappers: their parts')."""
        if self.path == "fused":
            return ["fused"]
        if self.path == "wrapper":
            return [p for _, part in self.parts for p in part.paths()]
        return [run.path for run in self.runs]

    def executed(self) -> list[str]:
        """What ran, in the same order as :meth:`paths` (empty entries: not run yet)."""
        if self.path == "fused":
            return list(self.ran)
        if self.path == "wrapper":
            return [p for _, part in self.parts for p in part.executed()]
        return [run.ran for run in self.runs if run.ran is not None]

    def lines(self) -> list[str]:
        out = []
        if self.summary:
            out.append(self.summary)
        if self.path == "fused":
            out.append(f"  why: {self.reason}")
        out.extend(self.notes)
        out.extend(run.describe() for run in self.runs)
        for label, part in self.parts:
            out.append(f"  {label}: {part.header}")
            out.extend(f"    {line}" for line in part.lines())
        return out

    def __str__(self) -> str:
        return "\n".join([self.header, self.input_line, *self.lines()])
