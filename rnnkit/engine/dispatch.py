"""Which path a recurrence takes. See docs/design.md for the contract and docs/engine.md.

Paths, fastest first:

``"fused"``     a whole drop-in module whose configuration equals ``torch.nn``'s runs through
                torch's fused kernels (:mod:`rnnkit.engine.fused`); only for modules.
``"compiled"``  rnnkit's C++ kernels (:mod:`rnnkit.engine.compiled`) run a cell's whole
                sequence, forward and BPTT, with no Python per step.
``"scan"``      cells whose recurrence is linear in the state (minGRU, minLSTM) run their
                parallel scan over the whole sequence (:mod:`rnnkit.engine.parallel`).
``"inductor"``  opt-in: any cell's step traced once, its input projection hoisted out of the
                loop, the rest compiled by ``torch.compile`` (:mod:`rnnkit.engine.inductor`);
                where it cannot serve, the loop runs and the plan says why.
``"loop"``      the eager Python loop (:mod:`rnnkit.engine.loop`): always works, any cell,
                any device.
``"auto"``      the fastest path that can serve the call; falling back to the loop because no
                compiler is available prints one notice per process.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit._caller import warn
from rnnkit.cells.base import State
from rnnkit.engine.hooks import step_hook
from rnnkit.engine.lengths import check_lengths, check_steps
from rnnkit.engine.plan import CellRun, PathDeclined, Plan
from rnnkit.engine.scan import exporting
from rnnkit.errors import ShapeError

#: Every value the ``engine`` argument accepts.
ENGINES = ("auto", "fused", "compiled", "scan", "inductor", "loop")

#: torch.nn modes that ``engine="auto"`` sends to rnnkit's compiled kernels instead of torch's
#: fused kernel on CPU, and in which mode ("training": gradients enabled and required,
#: "inference": otherwise). torch has oneDNN only for the LSTM; it runs GRU and Elman on CPU as
#: a C++ loop of ATen ops (recorded step by step by autograd when training). Measured on an
#: AMD EPYC Zen 3 (AVX2, 2 threads, torch 2.13): compiled / torch time for GRU training
#: B32 H512 T128 0.63x, GRU inference B64 H1024 T64 0.85x, Elman training B16 H128 T1024
#: 0.39x, Elman inference 0.81x. The LSTM stays on oneDNN: there the compiled kernel was
#: 0.82-0.94x in training but 1.14x in inference, and on CPUs where oneDNN's LSTM outruns
#: the BLAS GEMM the kernels use (~380 vs ~190 GFLOP/s, ../shared/notes/cpu.md) it would lose.
PREFER_COMPILED_ON_CPU: dict[str, frozenset[str]] = {
    "GRU": frozenset({"training", "inference"}),
    "RNN_TANH": frozenset({"training", "inference"}),
    "RNN_RELU": frozenset({"training", "inference"}),
}


class EngineFallbackWarning(UserWarning):
    """Issued once per process when ``engine="auto"`` falls back to the eager loop because
    the compiled kernels are unavailable (no C++ compiler, build failure)."""


_fallback_notice_given = False


def check_engine(engine: object) -> str:
    """Return ``engine`` if it names a path, else raise a ValueError listing the valid ones."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(
            f"unknown engine {engine!r}; valid engines are "
            + ", ".join(repr(e) for e in ENGINES)
        )
    return engine


def _compiled() -> tuple[ModuleType | None, str]:
    """The compiled-kernel module and why it cannot be used (empty when it can)."""
    try:
        from rnnkit.engine import compiled
    except ImportError as error:  # not built into this installation
        return None, f"rnnkit.engine.compiled cannot be imported ({error})"
    try:
        ok, reason = compiled.available()
    except Exception as error:  # a broken toolchain must not break the loop fallback
        return None, f"compiled.available() failed: {type(error).__name__}: {error}"
    return (compiled, "") if ok else (None, str(reason))


def _attribute(module: nn.Module, name: str) -> Any:
    """``getattr(module, name, None)``, without the AttributeError that ``nn.Module``'s
    ``__getattr__`` builds (message and all) when the name is absent everywhere."""
    if (name in module.__dict__ or hasattr(type(module), name) or name in module._parameters
            or name in module._buffers or name in module._modules):
        return getattr(module, name, None)
    return None


def _compiled_serves(cell: nn.Module, inputs: Tensor | None) -> tuple[bool, str, bool]:
    """(serves, reason, toolchain_missing) for running ``cell`` on the compiled kernels."""
    refusal = _attribute(cell, "compiled_refusal")
    if refusal:  # a cell wrapper whose contract the kernels cannot keep says why
        return False, str(refusal), False
    compiled, why = _compiled()
    if compiled is None:
        return False, f"compiled kernels unavailable: {why}", True
    devices = getattr(compiled, "DEVICES", ("cpu",))
    if inputs is not None and inputs.device.type not in devices:
        return (False, f"compiled kernels run on {', '.join(devices)}; inputs are on "
                       f"{inputs.device.type}", False)
    ok, reason = compiled.supports(cell)
    if not ok:
        return False, f"compiled kernels do not support {type(cell).__name__}: {reason}", False
    return True, f"compiled kernels support {reason or type(cell).__name__}", False


def module_step_hook(module: nn.Module) -> str | None:
    """:func:`step_hook` for the first hooked cell of a drop-in (its public ``step_hook()``;
    None for a ``torch.nn`` module, which calls no cells)."""
    find = getattr(module, "step_hook", None)
    return find() if callable(find) else None


#: Why a mask with gaps always runs on the loop path (explain() prints it).
MASK_REASON = ("a mask with gaps (masked steps inside a sequence) runs on the eager loop: "
               "the fused and compiled kernels take lengths only")


def choose_path(cell: nn.Module, inputs: Tensor | None, engine: str = "auto",
                mask: Tensor | None = None) -> tuple[str, str]:
    """The path ``run_recurrence`` takes for ``cell`` on ``inputs``: ``(path, reason)``.

    Raises the same errors as :func:`run_recurrence` for paths that cannot serve.
    """
    path, reason, _ = _choose(cell, inputs, engine, mask)
    return path, reason


def check_cell_engine(engine: object, cell: nn.Module) -> str:
    """Return ``engine`` if it can run a single ``cell`` (not ``"fused"``), else raise."""
    engine = check_engine(engine)
    if engine == "fused":
        raise ValueError(
            f"engine='fused' applies to whole drop-in modules (rnnkit.LSTM, rnnkit.GRU, "
            f"rnnkit.RNN) whose configuration equals torch.nn's, not to a single cell "
            f"({type(cell).__name__}); use engine='auto', 'compiled', 'scan', 'inductor' or "
            f"'loop' for cells"
        )
    return engine


#: Why ``engine="auto"`` never picks the compiled kernels while tracing or exporting.
TRACING_REASON = ("tracing or exporting (torch.jit.trace / torch.onnx.export): a compiled "
                  "kernel call would be recorded as a constant, so the traced graph runs "
                  "torch's fused kernels or the eager loop")


#: Why every path is the loop, run as one scan, while ``torch.export`` records a graph.
EXPORT_REASON = ("exporting with torch.export (torch.onnx.export(dynamo=True), "
                 "rnnkit.export.export_onnx): each cell runs as one scan over time "
                 "(rnnkit.engine.scan), an ONNX Scan in the graph, so batch size, sequence "
                 "length and lengths stay dynamic")


def tracing() -> bool:
    """Whether a ``torch.jit.trace`` or ``torch.onnx.export`` is recording this call."""
    # torch.onnx takes half a second to import: a process that never imported it is not
    # exporting with it
    onnx = sys.modules.get("torch.onnx")
    return bool(torch.jit.is_tracing() or (onnx is not None and onnx.is_in_onnx_export()))


def _choose(cell: nn.Module, inputs: Tensor | None, engine: str,
            mask: Tensor | None = None,
            serves_answer: tuple[bool, str, bool] | None = None) -> tuple[str, str, bool]:
    """``(path, reason, toolchain_missing)``; ``serves_answer`` is :func:`_compiled_serves`'s
    answer for this very call when the caller already asked it (asked here otherwise)."""
    engine = check_cell_engine(engine, cell)
    if exporting():  # whatever the engine asked: compiled kernels cannot be recorded
        return "loop", EXPORT_REASON, False
    if engine == "loop":
        return "loop", "engine='loop' requested", False
    if engine == "inductor":
        return _choose_inductor(cell, inputs, mask)
    if mask is not None:
        if engine in ("compiled", "scan"):
            raise RuntimeError(f"engine={engine!r} cannot run this recurrence: {MASK_REASON}")
        return "loop", MASK_REASON, False
    hooked = step_hook(cell)
    if hooked is not None:
        if engine in ("compiled", "scan"):
            raise RuntimeError(f"engine={engine!r} cannot run this recurrence: {hooked}")
        return "loop", hooked, False
    if engine == "auto" and tracing():
        return "loop", TRACING_REASON, False
    if engine == "scan":
        scans, why = _scan_serves(cell)
        if not scans:
            raise RuntimeError(f"engine='scan' cannot run this recurrence: {why}")
        return "scan", "engine='scan' requested", False
    if serves_answer is None:
        serves_answer = _compiled_serves(cell, inputs)
    serves, reason, toolchain_missing = serves_answer
    if engine == "auto" and not serves:
        scans, why = _scan_serves(cell)
        if scans:
            return "scan", why, False
        from rnnkit.engine import parallel

        if parallel.has_scan(cell):  # the scan's refusal is the one that matters here
            return "loop", why, False
    if engine == "compiled":
        if not serves:
            raise RuntimeError(f"engine='compiled' cannot run this recurrence: {reason}")
        return "compiled", "engine='compiled' requested", False
    if not serves and not type(cell).__module__.startswith("rnnkit."):
        reason += "; engine='inductor' compiles a user's cell (docs/engine.md)"
    return ("compiled", reason, False) if serves else ("loop", reason, toolchain_missing)


def _choose_inductor(cell: nn.Module, inputs: Tensor | None,
                     mask: Tensor | None) -> tuple[str, str, bool]:
    """``engine="inductor"``: the traced and compiled step, or the loop and why not."""
    from rnnkit.engine import inductor

    refused = "engine='inductor' cannot serve {}: {}; the eager loop runs"
    name = type(cell).__name__
    if mask is not None:
        return "loop", refused.format(name, MASK_REASON), False
    hooked = step_hook(cell)
    if hooked is not None:  # the traced step would run the hook once, at trace time
        reason = refused.format(name, hooked)
        _notice_inductor_refusal(reason)
        return "loop", reason, False
    if tracing():
        return "loop", refused.format(name, TRACING_REASON), False
    if inputs is None:
        return "loop", refused.format(name, "no input to trace the step with"), False
    try:
        summary = inductor.plan(cell, inputs)
    except inductor.TraceRefused as why:
        reason = refused.format(name, why)
        _notice_inductor_refusal(reason)
        return "loop", reason, False
    return "inductor", summary, False


_inductor_refusals: set[str] = set()


def _notice_inductor_refusal(reason: str) -> None:
    """Say once per reason that an ``engine='inductor'`` request runs on the loop."""
    if reason in _inductor_refusals:
        return
    _inductor_refusals.add(reason)
    warn(f"rnnkit: {reason} (correct, slower). This notice is shown once per reason.",
         EngineFallbackWarning)


def _scan_serves(cell: nn.Module) -> tuple[bool, str]:
    """(serves, reason) for running ``cell`` by its parallel scan (``"scan"``)."""
    from rnnkit.engine import parallel

    return parallel.supports(cell)


def _notice_fallback(reason: str) -> None:
    global _fallback_notice_given
    if _fallback_notice_given:
        return
    _fallback_notice_given = True
    warn(
        f"rnnkit: {reason}; custom cells run on the eager Python loop instead (correct, "
        f"slower). This notice is shown once per process.",
        EngineFallbackWarning,
    )


def plan_cell(cell: nn.Module, inputs: Tensor | None, engine: str = "auto",
              label: str = "cell", mask: Tensor | None = None,
              precision: str = "fp32") -> CellRun:
    """The :class:`CellRun` for ``cell`` over ``inputs``: its path and why (``mask``, a
    mask with gaps, plans the loop with :data:`MASK_REASON`). ``precision="bf16"`` marks a
    compiled run whose kernels take bf16 GEMMs (:func:`plan_bf16`).

    Raises the error a forced path that cannot serve gives (``engine="compiled"`` without
    kernels for the cell, ``engine="fused"`` on a cell).
    """
    engine = check_engine(engine)
    path, reason, toolchain_missing = _choose(cell, inputs, engine, mask)
    run = CellRun(label, cell, path, reason, engine, toolchain_missing)
    if precision == "bf16":
        plan_bf16(run, inputs)
    return run


def plan_bf16(run: CellRun, inputs: Tensor | None) -> None:
    """For a ``precision="bf16"`` call: a compiled ``run`` whose kernels have bf16 GEMMs for
    this cell gets ``precision="bf16"`` and says what is bf16 (the input projection and the
    recurrent GEMMs; float32 elsewhere); any other run keeps float32 and its reason says
    why. The caller decides what a float32 run means for bf16 (``Recurrence`` casts the cell
    to bfloat16 and plans again; a drop-in's layer runs in its parameters' dtype)."""
    if run.path != "compiled":
        return
    compiled, why = _compiled()
    if compiled is not None:
        ok, why = compiled.supports_bf16(run.cell, inputs)
        if ok:
            run.precision = "bf16"
            run.reason += f"; precision bf16: {why}"
            return
    run.reason += f"; no bf16 GEMMs for this cell ({why})"


class _CallCells:
    """A drop-in module's cells and their compiled-kernel answers, asked once per call and
    shared by the fused decision and the per-cell plans (``step_cells()`` binds the cells to
    the module's current parameters; asking twice would bind and check twice)."""

    def __init__(self, module: nn.Module, inputs: Tensor | None) -> None:
        self.module, self.inputs = module, inputs
        self._cells: list[tuple[str, nn.Module]] | None = None
        self._serves: dict[int, tuple[bool, str, bool]] = {}

    def cells(self) -> list[tuple[str, nn.Module]]:
        if self._cells is None:
            self._cells = module_cells(self.module)
        return self._cells

    def asked(self, cell: nn.Module) -> tuple[bool, str, bool] | None:
        """:meth:`serves`'s answer if it was asked already this call, else None."""
        return self._serves.get(id(cell))

    def serves(self, cell: nn.Module) -> tuple[bool, str, bool]:
        answer = self._serves.get(id(cell))
        if answer is None:
            answer = self._serves[id(cell)] = _compiled_serves(cell, self.inputs)
        return answer


def run_cell(
    run: CellRun,
    inputs: Tensor,
    state: State,
    lengths: Tensor | None = None,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Execute one :class:`CellRun` (inputs and lengths already checked); record what ran.

    ``mask`` (T, B) is a mask with gaps (the run was planned with it: the loop)."""
    from rnnkit.engine import loop

    if mask is not None:
        run.ran = "loop"
        return loop.run_recurrence(run.cell, inputs, state, reverse=reverse, mask=mask)
    if run.path == "compiled":
        compiled, why = _compiled()
        if compiled is None:  # the toolchain vanished between planning and running
            raise RuntimeError(f"compiled kernels unavailable: {why}")
        fallback_reason = getattr(compiled, "fallback_reason", None)
        declined_reason = fallback_reason(run.cell, inputs, state) if fallback_reason else None
        try:
            if declined_reason is not None:  # the kernels' own fallback, recorded
                raise PathDeclined(declined_reason)
            bf16 = {"precision": "bf16"} if run.precision == "bf16" else {}
            result = compiled.run_recurrence(run.cell, inputs, state, lengths=lengths,
                                             reverse=reverse, **bf16)
        except PathDeclined as declined:
            if run.engine == "compiled" and declined_reason is None:
                raise RuntimeError(
                    f"engine='compiled' cannot run this recurrence: {declined}") from declined
            run.declined = str(declined)
        else:
            run.ran = "compiled"
            return result
    elif run.path == "inductor":
        from rnnkit.engine import inductor

        try:
            result = inductor.run_recurrence(run.cell, inputs, state, lengths=lengths,
                                             reverse=reverse)
        except PathDeclined as declined:
            run.declined = str(declined)
            _notice_inductor_refusal(f"engine='inductor' cannot serve "
                                     f"{type(run.cell).__name__}: {declined}; the eager "
                                     f"loop runs")
        else:
            run.ran = "inductor"
            return result
    elif run.path == "scan":
        from rnnkit.engine import parallel

        run.ran = "scan"
        return parallel.run_recurrence(run.cell, inputs, state, lengths=lengths, reverse=reverse)
    elif run.toolchain_missing:
        _notice_fallback(run.reason)
    run.ran = "loop"
    return loop.run_recurrence(run.cell, inputs, state, lengths=lengths, reverse=reverse)


def check_inputs(inputs: object, lengths: object, name: str = "run_recurrence") -> Tensor | None:
    """Check time-major ``inputs (T, B, H_in)`` and return the checked lengths (or None)."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"{name}: inputs must be a (T, B, H_in) tensor, got {shape}")
    check_steps(inputs.shape[0], name)
    if lengths is None:
        return None
    return check_lengths(lengths, inputs.shape[1], inputs.shape[0], inputs.device)  # type: ignore[arg-type]


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: State,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
    engine: str = "auto",
    mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` over time-major ``inputs`` (T, B, H_in); return (outputs, final_state).

    ``outputs`` (T, B, H_out) are zero at padded steps; ``final_state`` is each sequence's
    state at its own last valid step. ``reverse=True`` reads each sequence from its own last
    valid step back to step 0 and writes outputs at the original positions. ``engine`` picks
    the path (see the module docstring); a forced path that cannot serve raises an error that
    says why. ``mask`` (T, B) bool, True at the steps that run, is a mask with gaps (masked
    steps keep the state, output zeros): it always takes the loop path (``MASK_REASON``);
    a mask that marks a prefix should come as ``lengths``, the fast form.

    Example::

        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> from rnnkit.engine.dispatch import run_recurrence
        >>> cell = GRUCell(3, 4)
        >>> out, h = run_recurrence(cell, torch.randn(6, 2, 3), torch.zeros(2, 4), engine="loop")
        >>> out.shape, h.shape
        (torch.Size([6, 2, 4]), torch.Size([2, 4]))
    """
    engine = check_engine(engine)
    lengths = check_inputs(inputs, lengths)
    return run_cell(plan_cell(cell, inputs, engine, mask=mask), inputs, state, lengths, reverse,
                    mask=mask)


def module_cells(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(label, cell)`` for each layer/direction of a drop-in module, in torch's order: the
    module's public ``step_cells()`` (empty for a ``torch.nn`` module)."""
    step_cells = getattr(module, "step_cells", None)
    return list(step_cells()) if callable(step_cells) else []


def fused_refusal(module: nn.Module) -> str | None:
    """The error text when ``module`` forces ``engine="fused"`` but cannot be served."""
    from rnnkit.engine import fused

    reason = fused.ineligibility(module)
    if reason is None:
        return None
    return (f"engine='fused' cannot run this {type(module).__name__}: {reason}. The fused "
            f"path needs a configuration equal to torch.nn.{_torch_name(module)}; use "
            f"engine='auto' to run it on rnnkit's kernels")


def fused_decision(module: nn.Module, inputs: Tensor | None,
                   describe: bool = True) -> tuple[bool, str]:
    """Whether the fused path runs ``module``, and why.

    Raises when the module forces ``engine="fused"`` and cannot be served. ``describe=False``
    skips naming the torch kernel (the forward pass does not need the text).
    """
    return _fused_decision(module, inputs, describe, _CallCells(module, inputs))


def _fused_decision(module: nn.Module, inputs: Tensor | None, describe: bool,
                    call: _CallCells) -> tuple[bool, str]:
    from rnnkit.engine import fused

    engine = check_engine(getattr(module, "engine", "auto"))
    if exporting():  # the fused kernels' lengths handling reads the lengths' values
        return False, EXPORT_REASON
    if engine in ("loop", "compiled", "scan", "inductor"):
        return False, f"engine={engine!r} requested"
    reason = fused.ineligibility(module)
    if reason is not None:
        if engine == "fused":
            raise ValueError(fused_refusal(module))
        return False, f"not torch-compatible: {reason}"
    hooked = module_step_hook(module)
    if hooked is not None:
        if engine == "fused":
            raise ValueError(f"engine='fused' cannot run this {type(module).__name__}: "
                             f"{hooked} (torch's fused kernels never call the cells); use "
                             f"engine='auto' to run the hooked cell on the loop")
        return False, hooked
    kind = fused.module_kind(module)
    device = inputs.device if inputs is not None else _module_device(module)
    mode = "training" if _needs_grad(module, inputs) else "inference"
    traced = engine == "auto" and tracing()
    if (engine == "auto" and not traced and device.type == "cpu"
            and mode in PREFER_COMPILED_ON_CPU.get(kind, ())
            and fused.current_precision(module) == "fp32"):
        cells = call.cells()
        if cells and all(call.serves(c)[0] for _, c in cells):
            return False, (f"torch runs {kind} on CPU as a C++ loop of ATen ops (no oneDNN); "
                           f"rnnkit's compiled kernels are faster for {mode} "
                           f"(dispatch.PREFER_COMPILED_ON_CPU)")
    if not describe:
        return True, ""
    dtype = inputs.dtype if inputs is not None else torch.float32
    if fused.current_precision(module) == "bf16":
        dtype = torch.bfloat16
    kernel = fused.describe_kernel(module, device, dtype)
    why = ("engine='fused' requested" if engine == "fused"
           else f"configuration equals torch.nn.{_torch_name(module)}")
    if traced:
        why = f"{TRACING_REASON}; {why}"
    return True, f"{why}; {kernel}"


def _needs_grad(module: nn.Module, inputs: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    if inputs is not None and inputs.requires_grad:
        return True
    return any(p.requires_grad for p in _parameters(module))


def _parameters(module: nn.Module):
    """``module.parameters()``; for a module without submodules (the drop-ins, whose cells
    are not registered) its own parameter dict, without the generator's bookkeeping."""
    if module._modules:
        return module.parameters()
    return (p for p in module._parameters.values() if p is not None)


def _torch_name(module: nn.Module) -> str:
    mode = getattr(module, "mode", "")
    return {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")


def _module_device(module: nn.Module) -> torch.device:
    reference = next(iter(_parameters(module)), None)
    return reference.device if reference is not None else torch.device("cpu")


def plan_module(module: nn.Module, inputs: Tensor, lengths: Tensor | None = None, *,
                describe: bool = True, packed: bool = False,
                mask: Tensor | None = None) -> Plan:
    """The plan of a drop-in module (``rnnkit.LSTM/GRU/RNN`` or ``torch.nn``) on checked
    time-major ``inputs`` (T, B, H_in): the fused path, or one :class:`CellRun` per layer and
    direction. ``mask`` (T, B) is a mask with gaps: every cell on the loop
    (:data:`MASK_REASON`). ``describe=False`` skips the text only the explanation needs."""
    plan = _plan_module(module, inputs, lengths, describe, packed, mask)
    if describe and callable(getattr(module, "step_hook", None)):
        note = global_hooks_note(type(module).__name__)
        if note:
            plan.notes.append(note)
    return plan


def global_hooks_note(owner: str) -> str | None:
    """explain's line when global module hooks (``torch.nn.modules.module.
    register_module_forward_hook`` and its kin) are registered: they run at every module
    call, the drop-in's own as on ``torch.nn``, but choose no path (docs/layers.md, "Hooks")."""
    from torch.nn.modules import module as torch_module

    count = sum(len(hooks) for hooks in (
        torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks,
        torch_module._global_backward_pre_hooks, torch_module._global_backward_hooks))
    if not count:
        return None
    return (f"  global module hooks: {count} registered; they run at each call of this "
            f"{owner}, as on torch.nn, and choose no path: a cell's steps reach them only "
            f"where the loop runs that cell (engine='loop' for every layer)")


def _plan_module(module: nn.Module, inputs: Tensor, lengths: Tensor | None, describe: bool,
                 packed: bool, mask: Tensor | None) -> Plan:
    from rnnkit.engine import fused

    header = module_line(module) if describe else ""
    input_line = describe_input(inputs, lengths, packed, mask) if describe else ""
    if mask is not None:
        engine = getattr(module, "engine", "auto")
        if engine == "fused":
            raise ValueError(f"{type(module).__name__}: engine='fused' cannot run a mask with "
                             f"gaps; {MASK_REASON}")
        plan = Plan(header, input_line, "cells", MASK_REASON,
                    summary=f"path: layer by layer (fused path not used: {MASK_REASON})")
        plan.runs = [plan_cell(cell, inputs, engine, label, mask=mask)
                     for label, cell in module_cells(module)]
        if not plan.runs:
            raise TypeError(f"{type(module).__name__} cannot run layer by layer: it exposes "
                            f"no per-layer cells (step_cells())")
        return plan
    layers, directions = module.num_layers, 2 if module.bidirectional else 1
    call = _CallCells(module, inputs)
    use, reason = _fused_decision(module, inputs, describe, call)
    precision_mode = fused.current_precision(module)
    if use:
        plan = Plan(header, input_line, "fused", reason,
                    summary=f"path: fused for all {layers} layer(s) x {directions} direction(s)")
        if describe:
            plan.notes = _fused_notes(module, inputs, lengths, directions, precision_mode)
        return plan
    plan = Plan(header, input_line, "cells", reason,
                summary=f"path: layer by layer (fused path not used: {reason})")
    engine = getattr(module, "engine", "auto")
    engine = "auto" if engine == "fused" else engine
    cells = call.cells()
    if not cells:
        raise TypeError(f"{type(module).__name__} cannot run layer by layer: it exposes no "
                        f"per-layer cells (step_cells())")
    plan.runs = []
    for label, cell in cells:
        # the kernels' answer, when the fused decision already asked it for this call
        path, why, toolchain_missing = _choose(cell, inputs, engine, None, call.asked(cell))
        plan.runs.append(CellRun(label, cell, path, why, engine, toolchain_missing))
        if precision_mode == "bf16":
            plan_bf16(plan.runs[-1], inputs)
    if describe and precision_mode == "bf16":
        served = sum(run.precision == "bf16" for run in plan.runs)
        if served == len(plan.runs):
            plan.notes.append("  precision: bf16 GEMMs on the compiled kernels for every "
                              "layer and direction (float32 gate math, state and outputs)")
        else:
            plan.notes.append(f"  precision: bf16 requested; the compiled kernels run "
                              f"{served} of {len(plan.runs)} cell(s) with bf16 GEMMs, the "
                              f"other cells run in their parameters' dtype")
    return plan


def _fused_notes(module: nn.Module, inputs: Tensor, lengths: Tensor | None, directions: int,
                 precision_mode: str) -> list[str]:
    from rnnkit.engine import fused

    notes = []
    if precision_mode == "bf16":
        notes.append("  precision: bf16 (inputs, state and weights cast to bfloat16; "
                     "outputs cast back)")
    if lengths is not None and not bool((lengths == inputs.size(0)).all()):
        calls = len(fused.segments(lengths.tolist()))
        scope = ("per segment for the whole stack" if directions == 1
                 else "per layer and direction")
        text = (f"  lengths: batch sorted once by length; {calls} kernel call(s) "
                f"{scope} (one per distinct length), no per-step Python")
        if directions == 2:
            text += "; reverse direction by a gather within each length"
        notes.append(text)
    return notes


def run_fused(plan: Plan, module: nn.Module, inputs: Tensor, hx: Any,
              lengths: Tensor | None) -> tuple[Tensor, Any]:
    """Execute a fused plan: the whole module through torch's kernels."""
    from rnnkit.engine import fused

    plan.ran.append("fused")
    return fused.forward(module, inputs, hx, lengths)


def fused_forward(
    module: nn.Module,
    inputs: Tensor,
    hx: Tensor | tuple[Tensor, Tensor] | None,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]] | None:
    """Run a whole drop-in module through torch's fused kernels, or return None.

    ``inputs`` (T, B, H_in) time-major; ``hx`` in torch.nn's format ((L*D, B, H_out) [, c0]).
    Returns ``(output (T, B, D*H_out), h_n or (h_n, c_n))`` when the plan for the module is
    the fused path, else None (the caller then runs layer by layer).
    """
    use, _ = fused_decision(module, inputs, describe=False)
    if not use:
        return None
    from rnnkit.engine import fused

    return fused.forward(module, inputs, hx, lengths)


# ----------------------------------------------------------------------------- explain


def describe_input(inputs: Tensor, lengths: Tensor | None, packed: bool = False,
                   mask: Tensor | None = None) -> str:
    """One line describing what a call receives: time-major ``inputs`` and lengths, or
    ``mask``, a mask with gaps."""
    steps, batch, features = inputs.shape
    prefix = "PackedSequence, " if packed else ""
    line = (f"input: {prefix}T={steps}, B={batch}, H_in={features}, {str(inputs.dtype)[6:]} "
            f"on {inputs.device.type}")
    if mask is not None:
        return line + ("; a mask with gaps (not a non-empty prefix of every row): masked "
                       "steps keep the state")
    if lengths is None:
        return line + "; no lengths (every sequence has T steps)"
    if lengths.numel() == 0:
        return line + "; lengths of an empty batch"
    distinct = int(torch.unique(lengths).numel())
    low, high = int(lengths.min()), int(lengths.max())
    return line + f"; lengths in [{low}, {high}], {distinct} distinct"


def module_line(layer: nn.Module) -> str:
    """The module as explain names it: ``package.Class(extra_repr)`` and its engine."""
    extra = layer.extra_repr()
    engine = getattr(layer, "engine", None)
    package = type(layer).__module__.split(".")[0]
    package = "torch.nn" if package == "torch" else package
    text = f"{package}.{type(layer).__name__}({extra})"
    if engine is not None and f"engine={engine!r}" not in extra:
        text += f", engine={engine!r}"
    return text


def reads_token_ids(cell: nn.Module | None) -> bool:
    """Whether ``cell`` reads integer token ids (``rnnkit.layers.EmbeddingWrapper`` first in
    line, possibly inside other wrappers or first in a ``MultiCell``)."""
    while cell is not None:
        if getattr(cell, "takes_token_ids", False) is True:
            return True
        stack = getattr(cell, "cells", None)
        cell = stack[0] if stack is not None and len(stack) else getattr(cell, "cell", None)
    return False


def check_cell_input(cell: nn.Module, inputs: Tensor, name: str) -> None:
    """What a driver checks before running ``cell`` on time-major ``inputs`` (T, B, H_in):
    a floating dtype (integer token ids for a cell that embeds them) and the cell's
    ``input_size``."""
    if not inputs.is_floating_point() and not (reads_token_ids(cell) and not inputs.is_complex()
                                               and inputs.dtype != torch.bool):
        raise TypeError(f"{name}: input must be floating point, got dtype {inputs.dtype}")
    expected = getattr(cell, "input_size", None)
    if isinstance(expected, int) and inputs.shape[-1] != expected:
        raise ShapeError(
            f"{name}: the cell expects {expected} input features, got input with "
            f"{inputs.shape[-1]} (time-major shape {tuple(inputs.shape)})"
        )


#: What explain's input line adds for a mask that marks a prefix of every row.
PREFIX_MASK_NOTE = "; from a mask that marks a prefix of each row (run as lengths)"


def mask_plan_input(plan: Plan, mask: object, gaps: Tensor | None) -> Plan:
    """Note on ``plan``'s input line that its lengths came from a prefix ``mask``."""
    if mask is not None and gaps is None and plan.input_line:
        plan.input_line += PREFIX_MASK_NOTE
    return plan


def _time_major_mask(mask: object, inputs: Tensor, lengths: object,
                     name: str) -> tuple[Tensor | None, Tensor | None]:
    """Keras' ``mask`` (B, T) for time-major ``inputs``: ``(lengths, gaps (T, B) or None)``."""
    from rnnkit.engine.loop import mask_to_lengths

    if lengths is not None:
        raise ValueError(f"{name}: pass either lengths= or mask=, not both")
    if isinstance(mask, Tensor) and mask.dim() == 1:
        mask = mask[None, :]
    return mask_to_lengths(mask, inputs.shape[1], inputs.shape[0], inputs.device, name=name)


def make_plan(layer: nn.Module, x: object, lengths: object = None,
              mask: object = None) -> Plan:
    """The plan ``layer(x, lengths=lengths, mask=mask)`` would execute, after the same checks
    the call runs (a call that would fail raises the same error here)."""
    own = getattr(layer, "execution_plan", None)
    if callable(own):
        return own(x, lengths=lengths) if mask is None else own(x, lengths=lengths, mask=mask)
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    from rnnkit.engine import fused

    if isinstance(layer, nn.RNNBase) and fused.module_kind(layer) is not None:
        packed = isinstance(x, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("explain: lengths= cannot be combined with a PackedSequence")
            layer.check_input(x.data, x.batch_sizes)
            inputs, lengths = pad_packed_sequence(x)  # (T, B, H_in)
        else:
            if not isinstance(x, Tensor):
                raise TypeError(f"explain: x must be a Tensor or a PackedSequence, got "
                                f"{type(x).__name__}")
            layer.check_input(x, None)
            inputs = x.unsqueeze(1) if x.dim() == 2 else (
                x.transpose(0, 1) if layer.batch_first else x)
        gaps = None
        if mask is not None:
            if packed:
                raise ValueError("explain: mask= cannot be combined with a PackedSequence")
            lengths, gaps = _time_major_mask(mask, inputs, lengths, "explain mask")
        lengths = check_inputs(inputs, lengths, "explain")
        return mask_plan_input(plan_module(layer, inputs, lengths, packed=packed, mask=gaps),
                               mask, gaps)
    if hasattr(layer, "state_size") and callable(layer):
        if not isinstance(x, Tensor):
            raise TypeError(f"explain: x must be a Tensor, got {type(x).__name__}")
        gaps = None
        if mask is not None:
            lengths, gaps = _time_major_mask(mask, x, lengths, "explain mask")
        lengths = check_inputs(x, lengths, "explain")
        check_cell_input(layer, x, "explain")
        plan = Plan(module_line(layer), describe_input(x, lengths, mask=gaps), "cells", "")
        plan.runs = [plan_cell(layer, x, "auto", "cell", mask=gaps)]
        return mask_plan_input(plan, mask, gaps)
    raise TypeError(
        f"explain: {type(layer).__name__} is not a recurrent layer: expected a drop-in "
        f"(rnnkit.LSTM/GRU/RNN, torch.nn.LSTM/GRU/RNN), an rnnkit driver (Recurrence, Fold, "
        f"Bidirectional, Sequence) or a cell with state_size"
    )


def part_plan(layer: nn.Module, x: Tensor, lengths: Tensor | None,
              mask: Tensor | None = None) -> Plan:
    """The plan of a layer inside a wrapper (``Bidirectional``, ``Sequence``): its own plan,
    or, for a user's module that has none, a plan saying it runs its own forward."""
    if callable(getattr(layer, "execution_plan", None)) or isinstance(layer, nn.RNNBase) or (
            hasattr(layer, "state_size")):
        return make_plan(layer, x, lengths, mask)
    return Plan(module_line(layer), "", "opaque", "",
                summary="path: the module's own forward (it has no rnnkit execution plan)")


def explain(layer: nn.Module, x: Tensor, lengths: Tensor | None = None,
            mask: Tensor | None = None) -> str:
    """Say which path ``layer(x, lengths=lengths, mask=mask)`` takes, and why, per layer and
    direction.

    ``mask`` is Keras' bool ``(B, T)`` (as the layers take it): one that marks a prefix of
    each row is explained as the ``lengths`` it becomes; one with gaps takes the loop path
    (:data:`MASK_REASON`).

    ``layer`` is a drop-in module (``rnnkit.LSTM/GRU/RNN`` or a ``torch.nn`` one), an rnnkit
    driver (``Recurrence``, ``Fold``, ``Bidirectional``, ``Sequence``) or a single cell
    (explained as ``run_recurrence(cell, x)``, time-major). ``x`` is what the layer would
    receive (honouring ``batch_first``; a PackedSequence is accepted). The text prints the
    plan the forward pass builds and executes (:mod:`rnnkit.engine.plan`), after the same
    input checks: a call that would fail raises the same error here. Nothing is computed on
    ``x`` beyond its shape and ``lengths``.

    Example::

        >>> import torch, rnnkit.engine as engine
        >>> print(engine.explain(torch.nn.GRU(4, 8), torch.randn(10, 3, 4)))  # doctest: +ELLIPSIS
        torch.nn.GRU(4, 8)
        input: T=10, B=3, H_in=4, float32 on cpu; no lengths (every sequence has T steps)
        path: fused for all 1 layer(s) x 1 direction(s)
          why: configuration equals torch.nn.GRU; torch._VF.gru -> ATen native C++ loop (...)
    """
    return str(make_plan(layer, x, lengths, mask))
