"""Which path a recurrence takes. See docs/design.md for the contract and docs/engine.md.

Paths, fastest first:

``"fused"``     a whole drop-in module whose configuration equals ``torch.nn``'s runs through
                torch's fused kernels (:mod:`rnnkit.engine.fused`); only for modules.
``"compiled"``  rnnkit's C++ kernels (:mod:`rnnkit.engine.compiled`) run a cell's whole
                sequence, forward and BPTT, with no Python per step.
``"loop"``      the eager Python loop (:mod:`rnnkit.engine.loop`): always works, any cell,
                any device.
``"auto"``      the fastest path that can serve the call; falling back to the loop because no
                compiler is available prints one notice per process.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.engine.lengths import check_lengths, check_steps

#: Every value the ``engine`` argument accepts.
ENGINES = ("auto", "fused", "compiled", "loop")

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


def _compiled_serves(cell: nn.Module, inputs: Tensor | None) -> tuple[bool, str, bool]:
    """(serves, reason, toolchain_missing) for running ``cell`` on the compiled kernels."""
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


def _choose(cell: nn.Module, inputs: Tensor | None, engine: str,
            mask: Tensor | None = None) -> tuple[str, str, bool]:
    engine = check_engine(engine)
    if engine == "loop":
        return "loop", "engine='loop' requested", False
    if mask is not None and engine in ("auto", "compiled"):
        if engine == "compiled":
            raise RuntimeError(f"engine='compiled' cannot run this recurrence: {MASK_REASON}")
        return "loop", MASK_REASON, False
    if engine == "fused":
        raise ValueError(
            f"engine='fused' applies to whole drop-in modules (rnnkit.LSTM, rnnkit.GRU, "
            f"rnnkit.RNN) whose configuration equals torch.nn's, not to a single cell "
            f"({type(cell).__name__}); use engine='auto', 'compiled' or 'loop' for cells"
        )
    serves, reason, toolchain_missing = _compiled_serves(cell, inputs)
    if engine == "compiled":
        if not serves:
            raise RuntimeError(f"engine='compiled' cannot run this recurrence: {reason}")
        return "compiled", "engine='compiled' requested", False
    return ("compiled", reason, False) if serves else ("loop", reason, toolchain_missing)


def _notice_fallback(reason: str) -> None:
    global _fallback_notice_given
    if _fallback_notice_given:
        return
    _fallback_notice_given = True
    warnings.warn(
        f"rnnkit: {reason}; custom cells run on the eager Python loop instead (correct, "
        f"slower). This notice is shown once per process.",
        EngineFallbackWarning,
        stacklevel=3,
    )


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
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"run_recurrence: inputs must be a (T, B, H_in) tensor, got {shape}")
    check_steps(inputs.shape[0], "run_recurrence")
    if lengths is not None:
        lengths = check_lengths(lengths, inputs.shape[1], inputs.shape[0], inputs.device)
    path, reason, toolchain_missing = _choose(cell, inputs, engine, mask)
    if mask is not None:
        from rnnkit.engine import loop

        return loop.run_recurrence(cell, inputs, state, reverse=reverse, mask=mask)
    if path == "compiled":
        compiled, _ = _compiled()
        assert compiled is not None
        return compiled.run_recurrence(cell, inputs, state, lengths=lengths, reverse=reverse)
    if toolchain_missing:
        _notice_fallback(reason)
    from rnnkit.engine import loop

    return loop.run_recurrence(cell, inputs, state, lengths=lengths, reverse=reverse)


def module_cells(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(label, cell)`` for each layer/direction of a drop-in module, in torch's order.

    The cells are the ones the module's layer-by-layer path runs (parameters bound to the
    module's tensors, recurrent dropout / zoneout wrappers applied for the current mode).
    """
    count = len(getattr(module, "_cells", ()) or ())
    bind = getattr(module, "_bound_cell", None)
    if not count or bind is None:
        return []
    wrap = getattr(module, "_wrap", lambda cell: cell)
    directions = 2 if getattr(module, "bidirectional", False) else 1
    labels = []
    for index in range(count):
        layer, direction = divmod(index, directions)
        label = f"layer {layer}" + (" reverse" if direction else "")
        labels.append((label, wrap(bind(index))))
    return labels


def fused_decision(module: nn.Module, inputs: Tensor | None,
                   describe: bool = True) -> tuple[bool, str]:
    """Whether :func:`fused_forward` takes the fused path for ``module``, and why.

    Raises when the module forces ``engine="fused"`` and cannot be served. ``describe=False``
    skips naming the torch kernel (the forward pass does not need the text).
    """
    from rnnkit.engine import fused

    engine = check_engine(getattr(module, "engine", "auto"))
    if engine in ("loop", "compiled"):
        return False, f"engine={engine!r} requested"
    reason = fused.ineligibility(module)
    if reason is not None:
        if engine == "fused":
            raise ValueError(
                f"engine='fused' cannot run this {type(module).__name__}: {reason}. The fused "
                f"path needs a configuration equal to torch.nn.{_torch_name(module)}; use "
                f"engine='auto' to run it on rnnkit's kernels"
            )
        return False, f"not torch-compatible: {reason}"
    kind = fused.module_kind(module)
    device = inputs.device if inputs is not None else _module_device(module)
    mode = "training" if _needs_grad(module, inputs) else "inference"
    if (engine == "auto" and device.type == "cpu"
            and mode in PREFER_COMPILED_ON_CPU.get(kind, ())
            and fused.current_precision(module) == "fp32"):
        cells = module_cells(module)
        if cells and all(_compiled_serves(c, inputs)[0] for _, c in cells):
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
    return True, f"{why}; {kernel}"


def _needs_grad(module: nn.Module, inputs: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    if inputs is not None and inputs.requires_grad:
        return True
    return any(p.requires_grad for p in module.parameters())


def _torch_name(module: nn.Module) -> str:
    mode = getattr(module, "mode", "")
    return {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")


def _module_device(module: nn.Module) -> torch.device:
    reference = next(module.parameters(), None)
    return reference.device if reference is not None else torch.device("cpu")


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
    With ``lengths`` the batch runs without per-step Python and without the caller sorting
    it (see :mod:`rnnkit.engine.fused`).
    """
    use, _ = fused_decision(module, inputs, describe=False)
    if not use:
        return None
    from rnnkit.engine import fused

    return fused.forward(module, inputs, hx, lengths)


# ----------------------------------------------------------------------------- explain


def _describe_input(x: object, lengths: Tensor | None, batch_first: bool) -> tuple[
        Tensor | None, Tensor | None, str]:
    """Time-major inputs, lengths and a one-line description of what the call receives."""
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    if isinstance(x, PackedSequence):
        padded, packed_lengths = pad_packed_sequence(x)  # (T, B, H_in)
        return padded, packed_lengths, _input_line(padded, packed_lengths, "PackedSequence, ")
    if not isinstance(x, Tensor):
        raise TypeError(f"explain: x must be a Tensor or a PackedSequence, got "
                        f"{type(x).__name__}")
    if x.dim() == 2:
        x = x.unsqueeze(1)  # unbatched (T, H_in) -> (T, 1, H_in)
    elif x.dim() != 3:
        raise ValueError(f"explain: x must be (T, B, H_in) or (T, H_in), got shape "
                         f"{tuple(x.shape)}")
    elif batch_first:
        x = x.transpose(0, 1)  # (T, B, H_in)
    check_steps(x.size(0), "explain")
    if lengths is not None:
        lengths = check_lengths(lengths, x.size(1), x.size(0), x.device)
    return x, lengths, _input_line(x, lengths, "")


def _input_line(x: Tensor, lengths: Tensor | None, prefix: str) -> str:
    steps, batch, features = x.shape
    line = (f"input: {prefix}T={steps}, B={batch}, H_in={features}, {str(x.dtype)[6:]} on "
            f"{x.device.type}")
    if lengths is None:
        return line + "; no lengths (every sequence has T steps)"
    distinct = int(torch.unique(lengths).numel())
    low, high = int(lengths.min()), int(lengths.max())
    return line + f"; lengths in [{low}, {high}], {distinct} distinct"


def _module_line(layer: nn.Module) -> str:
    extra = layer.extra_repr()
    engine = getattr(layer, "engine", None)
    package = type(layer).__module__.split(".")[0]
    package = "torch.nn" if package == "torch" else package
    text = f"{package}.{type(layer).__name__}({extra})"
    if engine is not None and f"engine={engine!r}" not in extra:
        text += f", engine={engine!r}"
    return text


def explain(layer: nn.Module, x: Tensor, lengths: Tensor | None = None,
            mask: Tensor | None = None) -> str:
    """Say which path ``layer(x, lengths=lengths)`` takes, and why, per layer and direction.

    ``mask`` is Keras' bool ``(B, T)`` (as the layers take it): one that marks a prefix of
    each row is explained as the ``lengths`` it becomes; one with gaps takes the loop path.

    ``layer`` is a drop-in module (``rnnkit.LSTM/GRU/RNN`` or a ``torch.nn`` one), a
    recurrence driver with a ``cell`` (``rnnkit.layers.Recurrence``) or a single cell. ``x`` is
    what the layer would receive (honouring ``batch_first``; a PackedSequence is accepted). The
    answer is computed by the same functions the forward pass uses, so it cannot drift from
    what runs. Nothing is computed on ``x`` beyond its shape and ``lengths``.

    Example::

        >>> import torch, rnnkit.engine as engine
        >>> print(engine.explain(torch.nn.GRU(4, 8), torch.randn(10, 3, 4)))  # doctest: +ELLIPSIS
        torch.nn.GRU(4, 8)
        input: T=10, B=3, H_in=4, float32 on cpu; no lengths (every sequence has T steps)
        path: fused for all 1 layer(s) x 1 direction(s)
          why: configuration equals torch.nn.GRU; torch._VF.gru -> ATen native C++ loop (...)
    """
    from rnnkit.engine import fused

    batch_first = bool(getattr(layer, "batch_first", False))
    gaps = None
    if mask is not None:
        from rnnkit.engine.loop import mask_to_lengths

        if lengths is not None:
            raise ValueError("explain: pass either lengths= or mask=, not both")
        probe, _, _ = _describe_input(x, None, batch_first)
        mask = mask[None, :] if isinstance(mask, Tensor) and mask.dim() == 1 else mask
        lengths, gaps = mask_to_lengths(mask, probe.size(1), probe.size(0), probe.device)
    inputs, lengths, input_line = _describe_input(x, lengths, batch_first)
    if gaps is not None:
        input_line = (input_line.split("; ")[0] + "; a mask with gaps (not a non-empty "
                      "prefix of every row): masked steps keep the state")
    elif mask is not None:
        input_line += "; from a mask that marks a prefix of each row (run as lengths)"
    lines = [_module_line(layer), input_line]
    if gaps is not None:
        return _explain_gaps(layer, lines, inputs)
    precision_mode = fused.current_precision(layer if fused.module_kind(layer) else None)
    if fused.module_kind(layer) is not None:
        layers, directions = layer.num_layers, 2 if layer.bidirectional else 1
        try:
            use, reason = fused_decision(layer, inputs)
        except ValueError as error:
            lines.append(f"path: error: {error}")
            return "\n".join(lines)
        if use:
            lines.append(f"path: fused for all {layers} layer(s) x {directions} direction(s)")
            lines.append(f"  why: {reason}")
            if precision_mode == "bf16":
                lines.append("  precision: bf16 (inputs, state and weights cast to bfloat16; "
                             "outputs cast back)")
            if lengths is not None and not bool((lengths == inputs.size(0)).all()):
                calls = len(fused.segments(lengths.tolist()))
                scope = ("per segment for the whole stack" if directions == 1
                         else "per layer and direction")
                text = (f"  lengths: batch sorted once by length; {calls} kernel call(s) "
                        f"{scope} (one per distinct length), no per-step Python")
                if directions == 2:
                    text += "; reverse direction by a gather within each length"
                lines.append(text)
            return "\n".join(lines)
        lines.append(f"path: layer by layer (fused path not used: {reason})")
        if precision_mode == "bf16":
            lines.append("  precision: bf16 requested, but only the fused path honours it; "
                         "these cells run in their parameters' dtype")
        engine = getattr(layer, "engine", "auto")
        engine = "auto" if engine == "fused" else engine
        cells = module_cells(layer)
        if not cells:
            lines.append(f"  {type(layer).__name__} exposes no per-layer cells to inspect")
        for label, cell in cells:
            lines.append(_cell_line(label, cell, inputs, engine))
        return "\n".join(lines)
    wrapped = [(label, getattr(layer, attr, None)) for label, attr in (
        ("forward layer", "forward_layer"), ("backward layer", "backward_layer"),
        ("wrapped layer", "layer"))]
    wrapped = [(label, sub) for label, sub in wrapped if isinstance(sub, nn.Module)]
    if wrapped:  # Bidirectional / Sequence-style wrappers: explain what they run
        for label, sub in wrapped:
            inner = explain(sub, x, lengths).splitlines()
            lines.append(f"  {label}: {inner[0]}")
            lines.extend(f"    {line}" for line in inner[2:])
        return "\n".join(lines)
    cell = getattr(layer, "cell", None)
    if isinstance(cell, nn.Module):
        engine = getattr(layer, "engine", "auto")
        label = "backward" if getattr(layer, "go_backwards", False) else "forward"
        lines.append(_cell_line(label, cell, inputs, engine))
    else:
        lines.append(_cell_line("cell", layer, inputs, "auto"))
    return "\n".join(lines)


def _cell_line(label: str, cell: nn.Module, inputs: Tensor | None, engine: str) -> str:
    name = type(cell).__name__
    inner = getattr(cell, "cell", None)
    if isinstance(inner, nn.Module):
        name += f"({type(inner).__name__})"
    try:
        path, reason = choose_path(cell, inputs, engine)
    except (ValueError, RuntimeError) as error:
        return f"  {label}: {name} -> error: {error}"
    if path == "loop":
        reason += "; eager Python loop over time (one cell call per step)"
    return f"  {label}: {name} -> {path} ({reason})"


def _explain_gaps(layer: nn.Module, lines: list[str], inputs: Tensor) -> str:
    """explain() under a mask with gaps: every cell runs on the loop path."""
    from rnnkit.engine import fused

    if fused.module_kind(layer) is not None:
        cells = module_cells(layer)
        lines.append(f"path: layer by layer (fused path not used: {MASK_REASON})")
        if not cells:
            lines.append(f"  {type(layer).__name__} exposes no per-layer cells to inspect")
        lines.extend(f"  {label}: {type(cell).__name__} -> loop ({MASK_REASON})"
                     for label, cell in cells)
        return "\n".join(lines)
    cell = getattr(layer, "cell", None)
    if isinstance(cell, nn.Module):
        label = "backward" if getattr(layer, "go_backwards", False) else "forward"
        lines.append(f"  {label}: {type(cell).__name__} -> loop ({MASK_REASON})")
        return "\n".join(lines)
    wrapped = [(label, getattr(layer, attr, None)) for label, attr in (
        ("forward layer", "forward_layer"), ("backward layer", "backward_layer"),
        ("wrapped layer", "layer"))]
    wrapped = [(label, sub) for label, sub in wrapped if isinstance(sub, nn.Module)]
    for label, sub in wrapped:
        inner = _explain_gaps(sub, [_module_line(sub), ""], inputs).splitlines()
        lines.append(f"  {label}: {inner[0]}")
        lines.extend(f"    {line}" for line in inner[2:])
    if not wrapped:
        lines.append(f"  cell: {type(layer).__name__} -> loop ({MASK_REASON})")
    return "\n".join(lines)
