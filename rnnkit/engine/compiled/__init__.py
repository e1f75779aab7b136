r"""Compiled recurrences: whole sequences of rnnkit cells run forward and backward in C++.

The cells' own ``forward`` computes one step; a Python loop over them pays Python, autograd
and small-GEMM overhead at every step. Here one call runs the whole sequence:

1. the input projection is hoisted out of the loop: :math:`X_p = W_{ih} X + b` for all
   T steps in one GEMM (plus ``LN_ih`` for layer-normalised LSTMs);
2. a C++ loop over time does one recurrent GEMM per step (the BLAS torch links, split by
   columns across threads, into preallocated buffers) and the gate math in one vectorised
   pass over the ``B x G*H`` block, saving the gate activations that backward needs;
3. backward runs the BPTT loop in C++ with one GEMM per step for :math:`\partial h`, then one
   GEMM each for the weight gradients over all steps.

Variable lengths are handled inside the kernels (the caller neither sorts nor packs): each
step's GEMMs run on the sequences still active. Details and measurements:
``docs/engine-compiled.md``.

Symbols: T time steps, B batch, H_in input features, H hidden size, H_out output size
(LSTM ``proj_size`` if set, else H), G gates (LSTM 4, coupled LSTM 3, GRU 3, Elman 1).

Example:
    >>> import torch
    >>> from rnnkit.cells import LSTMCell
    >>> from rnnkit.engine import compiled
    >>> cell = LSTMCell(4, 8, peepholes=True)
    >>> compiled.supports(cell)
    (True, 'LSTMCell with peepholes')
    >>> ok, why = compiled.available()
    >>> if ok:
    ...     x = torch.randn(5, 2, 4)                  # (T, B, H_in)
    ...     out, (h, c) = compiled.run_recurrence(cell, x, cell.initial_state(2))
    ...     print(out.shape, h.shape)
    torch.Size([5, 2, 8]) torch.Size([2, 8])
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor, nn

from rnnkit.cells._compiled import CompiledAdapter
from rnnkit.cells.base import State, replaced_layer_norms
from rnnkit.engine.compiled import _bf16, _build, _cells
from rnnkit.engine.compiled._differentiable import _is_wrapped
from rnnkit.engine.compiled._functions import (
    CellRecurrence,
    KernelCall,
    ProjectedRecurrence,
    _empty_if_none,
    project,
)
from rnnkit.engine.hooks import has_own_hooks, step_hook

__all__ = ["DEVICES", "PreparedRun", "available", "clear_buffer_cache", "fallback_reason",
           "prepare", "run_prepared", "set_buffer_cache_limit", "set_thread_gate", "supports",
           "supports_bf16", "run_recurrence", "thread_gate"]

#: Device types the compiled kernels run on.
DEVICES = ("cpu",)

_DTYPES = (torch.float32, torch.float64)


def available() -> tuple[bool, str]:
    """Whether the C++ extension is (or can be) built here; builds it on first call.

    Returns ``(True, description)`` or ``(False, reason)``, e.g. no compiler, a failed build
    or ``RNNKIT_DISABLE_COMPILED=1``.
    """
    module, error = _build.load()
    if module is None:
        return False, str(error)
    return True, f"rnnkit C++ kernels ({module.rnnkit_capability})"


def extension() -> ModuleType | None:
    """The C++ extension, or None where it is unavailable (see :func:`available`); built on
    first use. For callers outside the recurrences that have a torch-op fallback
    (``rnnkit.training``'s Keras loss and RMSprop step)."""
    return _build.load()[0]


def set_buffer_cache_limit(nbytes: int) -> int:
    """Idle bytes the kernels' buffer cache may keep between training calls (the LSTM, GRU
    and NAS kernels' saved values and gradient buffers, reused instead of freshly mapped
    pages: default 256 MiB;
    0 turns the cache off). Returns the previous limit (0 when the kernels are unavailable)."""
    if nbytes < 0:
        raise ValueError(f"set_buffer_cache_limit: nbytes must be >= 0, got {nbytes}")
    module, _ = _build.load()
    return 0 if module is None else int(module.set_buffer_cache_limit(int(nbytes)))


def clear_buffer_cache() -> None:
    """Release every idle buffer the kernels' buffer cache holds (those still in use, saved
    for a backward or held as a gradient, stay with their owners)."""
    module, _ = _build.load()
    if module is not None:
        module.clear_buffer_cache()


def _extension():
    module, error = _build.load()
    if module is None:
        raise RuntimeError(f"rnnkit compiled kernels unavailable: {error}")
    return module


def thread_gate() -> dict[str, int]:
    """The kernels' thread gate (docs/engine-compiled.md, "Steady under load"): ``enabled``,
    ``closed`` (short per-step regions on the calling thread), and counters since start:
    ``regions`` timed on the threads, ``lost`` (slower than one thread would have been),
    ``closings``; the probe interval (``interval_ns``, ``min_interval_ns``,
    ``max_interval_ns``)."""
    return dict(_extension().thread_gate())


def set_thread_gate(enabled: bool = True, probe_ms: tuple[float, float] = (10.0, 1000.0),
                    reset: bool = True) -> None:
    """Switch the thread gate on (default) or off (per-step regions always on the threads) and
    set its probe interval range in milliseconds; ``reset`` reopens it and clears its history."""
    low, high = probe_ms
    if not 0 <= low <= high:
        raise ValueError(f"set_thread_gate: probe_ms must be 0 <= low <= high, got {probe_ms}")
    _extension().set_thread_gate(bool(enabled), int(low * 1e6), int(high * 1e6), bool(reset))


def _adapter_class(cell: nn.Module) -> tuple[type | None, type[CompiledAdapter] | None]:
    """The class that declares ``compiled_adapter`` (nearest in the MRO) and the adapter."""
    for klass in type(cell).__mro__:
        adapter = klass.__dict__.get("compiled_adapter")
        if adapter is not None:
            return klass, adapter
    return _cells.adapter_class(cell)  # the exotic cells' own kernels (IndRNN, GLSTM, NAS)


def _covered() -> str:
    import rnnkit.cells as cells

    names = set()
    for name in dir(cells):
        value = getattr(cells, name)
        if isinstance(value, type) and value.__dict__.get("compiled_adapter") is not None:
            names.add(name)
    names.update(klass.__name__ for klass in _cells.cell_classes())
    return ", ".join(sorted(names))


def _reference_parameter(cell: nn.Module) -> Tensor | None:
    """The parameter whose dtype and device every other tensor must match."""
    weight = getattr(cell, "weight_hh", None)
    if isinstance(weight, Tensor):
        return weight
    return next(iter(cell.parameters()), None)


# ----------------------------------------------------------------------------- per-cell memo
# What supports(), _check_parameters() and the parameters' half of fallback_reason() find
# depends only on the cell's configuration: its classes, plain attributes (sizes, options,
# training), hooks and parameters (which tensors, their dtype, device, shape). A
# drop-in module calls them for every layer at every forward; the memo below keeps their
# answers per cell under a signature of exactly those things, recomputed and compared at each
# call (a few microseconds), so any change (a parameter replaced or moved, ``.data`` set to a
# new dtype, an option changed, a hook added) recomputes them. Cells under
# ``torch.nn.utils.parametrize`` (a fresh tensor per attribute read) are never memoised.

_SCALARS = (bool, int, float, str, type(None))


@dataclass(eq=False)
class _Verified:
    """The memoised answers for one cell configuration (``signature``)."""

    cell: weakref.ref  # the cell it describes (the memo is keyed by id; ids are reused)
    signature: tuple
    # the parameters the signature names by id: held so that no id is reused while the
    # entry lives (the entry is replaced, and the references dropped, at the next change)
    held: list
    supports: tuple[bool, str] | None = None
    parameters_checked: bool = False
    calls: dict = field(default_factory=dict)  # (reverse, grad, bf16) -> KernelCall


# id(cell) -> entry; a plain dict (a WeakKeyDictionary builds a weak reference per lookup),
# emptied of a cell's entry when the cell dies
_memo: dict[int, _Verified] = {}


def _forget(ref: weakref.ref, key: int) -> None:
    entry = _memo.get(key)
    if entry is not None and entry.cell is ref:
        del _memo[key]


def _plain(values: tuple) -> bool:
    return all(type(v) in _SCALARS for v in values)


def _signature(cell: nn.Module) -> tuple[tuple, list] | None:
    """Everything the memoised answers depend on, or None for a cell that cannot be memoised
    (parametrized: its attributes are recomputed at each read)."""
    parts: list = []
    held: list = []
    stack = [cell]
    while stack:
        module = stack.pop()
        attributes = module.__dict__
        children = attributes["_modules"]
        if "parametrizations" in children:
            return None
        parts.append(type(module))
        parts.append(has_own_hooks(attributes))
        parts.extend([(key, value) for key, value in attributes.items()
                      if type(value) in _SCALARS or (type(value) is tuple and _plain(value))])
        for key, param in attributes["_parameters"].items():
            if param is None:
                parts.append((key, None))
            else:
                held.append(param)
                parts.append((key, id(param), param.dtype, param.device, param.shape))
        parts.append(len(children))
        for key, child in children.items():
            parts.append(key)
            if child is not None:
                stack.append(child)
    return tuple(parts), held


def _verified(cell: nn.Module) -> _Verified | None:
    """The memo entry for ``cell``'s current configuration (a fresh one after any change),
    or None when the cell cannot be memoised."""
    found = _signature(cell)
    if found is None:
        return None
    signature, held = found
    key = id(cell)
    entry = _memo.get(key)
    if entry is None or entry.cell() is not cell or entry.signature != signature:
        entry = _Verified(weakref.ref(cell, functools.partial(_forget, key=key)), signature,
                          held)
        _memo[key] = entry
    return entry


def supports(cell: nn.Module) -> tuple[bool, str]:
    """Whether :func:`run_recurrence` can run ``cell``, and why (not).

    Covered: every cell class that declares a ``compiled_adapter`` (see
    ``rnnkit/cells/_compiled.py``): ``LSTMCell`` with any combination of peepholes, coupled
    gates, projection, cell clip and layer norm, ``GRUCell`` (reset_after True/False, with or
    without layer norm), ``ElmanCell`` (tanh, relu), ``UGRNNCell``; float32/float64
    parameters on the CPU. Subclasses that override ``forward`` and cells with hooks that run
    at each call (:func:`rnnkit.engine.hooks.step_hook`) are not covered (their per-step code
    would be skipped).
    """
    return _supports_memo(cell, _verified(cell))


def _supports_memo(cell: nn.Module, entry: _Verified | None) -> tuple[bool, str]:
    if entry is None:
        return _supports(cell)
    if entry.supports is None:
        entry.supports = _supports(cell)
    return entry.supports


def _supports(cell: nn.Module) -> tuple[bool, str]:
    kind = type(cell)
    base, adapter_cls = _adapter_class(cell)
    if base is None:
        return False, f"{kind.__name__} has no compiled kernel (covered: {_covered()})"
    if kind.forward is not base.forward:
        return False, f"{kind.__name__} overrides {base.__name__}.forward"
    hooked = step_hook(cell)
    if hooked is not None:
        return False, hooked
    replaced = replaced_layer_norms(cell)
    if replaced:
        return False, (f"{kind.__name__}.{', '.join(replaced)} is not a plain torch.nn.LayerNorm "
                       "(the kernels compute nn.LayerNorm's formula)")
    params = list(cell.parameters())
    devices = {p.device.type for p in params}
    if devices - {"cpu"}:
        return False, f"compiled kernels run on the CPU; parameters are on {sorted(devices)}"
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        return False, f"parameters mix dtypes {sorted(str(d) for d in dtypes)}"
    if dtypes and next(iter(dtypes)) not in _DTYPES:
        return False, f"dtype {next(iter(dtypes))} not supported (float32, float64)"
    adapter = adapter_cls(cell)
    refusal = adapter.refusal()
    if refusal:
        return False, refusal
    return True, adapter.describe()


def supports_bf16(cell: nn.Module, inputs: Tensor | None = None) -> tuple[bool, str]:
    """Whether a ``precision="bf16"`` call of a supported ``cell`` runs its GEMMs in bfloat16
    here (``_bf16``: what is bf16 and what stays float32), and why (not).

    Served: the families on the step-loop template whose adapter routes the input projection
    through the bf16 GEMM (``CompiledAdapter.bf16``: LSTM, GRU, Elman, UGRNN, NAS), float32
    parameters and inputs. Refused (the caller then runs bf16 another way): float64 (the bf16
    GEMMs write float32), GroupedLSTM (its batched per-group projection has no bf16 form
    yet), IndRNN (a kernel of its own).
    """
    name = type(cell).__name__
    adapter = _adapter_class(cell)[1]
    if adapter is None:
        return False, f"{name} has no compiled kernel"
    if not getattr(adapter, "bf16", False):
        return False, (f"{name}'s compiled kernel has no bf16 GEMMs (covered: the step-loop "
                       f"template's LSTM, GRU, Elman, UGRNN and NAS)")
    reference = _reference_parameter(cell)
    if reference is not None and reference.dtype != torch.float32:
        return False, f"bf16 GEMMs need float32 parameters, {name}'s are {reference.dtype}"
    if inputs is not None and inputs.dtype != torch.float32:
        return False, f"bf16 GEMMs need float32 inputs, got {inputs.dtype}"
    ext, error = _build.load()
    if ext is None:
        return False, f"compiled kernels unavailable: {error}"
    return True, _bf16.describe(ext)


def _state_tensors(state) -> list:
    if isinstance(state, (tuple, list)):
        return [t for part in state for t in _state_tensors(part)]
    return [state]


def fallback_reason(cell: nn.Module, inputs: Tensor, state: State | None = None) -> str | None:
    """Why :func:`run_recurrence` hands this call to the eager loop, or None.

    The kernels read raw memory; the tensors of ``torch.func`` transforms (``vmap``, ``grad``,
    ``jacrev``, ``torch.autograd.functional.jacobian(..., vectorize=True)``) are wrappers
    without storage of their own, so a call that sees one runs on the loop instead (same
    results, differentiable under the transforms).
    """
    for t in (inputs, *_state_tensors(state), *_parameters(cell)):
        if isinstance(t, Tensor) and _is_wrapped(t):
            return ("a torch.func transform (vmap/grad/jacrev) is active: its wrapped tensors "
                    "have no storage for the compiled kernels, so the eager loop runs instead")
    return None


def _parameters(cell: nn.Module):
    """``cell.parameters()``; for a cell without submodules its own parameter dict, without
    the generator's bookkeeping (this runs at every call)."""
    if cell._modules:
        return cell.parameters()
    return [p for p in cell._parameters.values() if p is not None]


def _empty(reference: Tensor) -> Tensor:
    return reference.new_empty(0)


def _opt(t: Tensor | None, reference: Tensor) -> Tensor:
    # The kernels read parameters through raw pointers: make views (e.g. weights bound to
    # slices of a flat buffer) contiguous; a no-op, autograd-transparent, for plain ones.
    return _empty(reference) if t is None else t.contiguous()


def _expected_parameters(cell) -> dict[str, tuple[int, ...] | None]:
    """Every parameter the kernels read, by name, with the shape the cell's sizes give it
    (None: must be absent), as the cell's adapter declares them. The kernels trust these
    shapes when they take raw pointers."""
    return _adapter_class(cell)[1](cell).parameter_shapes()


def _parameter(cell, name: str):
    owner, _, leaf = name.rpartition(".")
    module = getattr(cell, owner, None) if owner else cell
    return None if module is None else getattr(module, leaf, None)


def _check_parameters(cell) -> None:
    """Shape, dtype, device and layout of every parameter against the cell's sizes."""
    name = type(cell).__name__
    reference = _reference_parameter(cell)
    dtype = reference.dtype if reference is not None else None
    if getattr(cell, "layer_norm", False):
        for norm in ("ln_ih", "ln_hh", "ln_c", "ln_hn"):
            module = getattr(cell, norm, None)
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                raise ValueError(
                    f"compiled.run_recurrence: {name}.{norm} normalises over "
                    f"{tuple(module.normalized_shape)}; the kernels need one dimension"
                )
    for pname, shape in _expected_parameters(cell).items():
        value = _parameter(cell, pname)
        if shape is None:
            continue
        if not isinstance(value, Tensor):
            raise ValueError(
                f"compiled.run_recurrence: {name}.{pname} must be a tensor of shape {shape}, "
                f"got {type(value).__name__}"
            )
        if value.layout != torch.strided:
            raise ValueError(
                f"compiled.run_recurrence: {name}.{pname} must be a dense (strided) tensor, "
                f"got layout {value.layout}"
            )
        if value.device.type != "cpu":
            raise ValueError(
                f"compiled.run_recurrence: {name}.{pname} is on {value.device}; the compiled "
                f"kernels run on the CPU"
            )
        if value.dtype != dtype:
            raise ValueError(
                f"compiled.run_recurrence: {name}.{pname} has dtype {value.dtype}, expected "
                f"{dtype} (as the cell's other parameters)"
            )
        if tuple(value.shape) != shape:
            raise ValueError(
                f"compiled.run_recurrence: {name}.{pname} has shape {tuple(value.shape)}, "
                f"expected {shape} for input_size={cell.input_size}, "
                f"hidden_size={cell.hidden_size}"
                + (f", proj_size={cell.proj_size}" if getattr(cell, "proj_size", 0) else "")
            )


def _check(cell, inputs: Tensor, lengths: Tensor | None) -> Tensor | None:
    name = type(cell).__name__
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"compiled.run_recurrence: inputs must be (T, B, H_in), got {shape}")
    if inputs.shape[2] != cell.input_size:
        raise ValueError(
            f"compiled.run_recurrence: {name} expects {cell.input_size} input features, "
            f"got inputs of shape {tuple(inputs.shape)}"
        )
    weight = _reference_parameter(cell)
    if weight is not None and (inputs.dtype != weight.dtype or inputs.device != weight.device):
        raise TypeError(
            f"compiled.run_recurrence: inputs are {inputs.dtype} on {inputs.device} but "
            f"{name}'s parameters are {weight.dtype} on {weight.device}"
        )
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != inputs.shape[1]:
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(
            f"compiled.run_recurrence: lengths must be a 1-D tensor of {inputs.shape[1]} "
            f"sequence lengths (one per batch entry), got {shape}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"compiled.run_recurrence: lengths must be integers, got {lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64).contiguous()
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > inputs.shape[0]):
        raise ValueError(
            f"compiled.run_recurrence: lengths must lie in [0, T={inputs.shape[0]}], got "
            f"min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return lengths




def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: State | None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    precision: str = "fp32",
) -> tuple[Tensor, State]:
    """Run ``cell`` over time-major ``inputs`` with the compiled kernels.

    Args:
        cell: an rnnkit cell for which :func:`supports` is true.
        inputs: ``(T, B, H_in)``.
        state: the initial state (``(B, H)`` tensor, or ``(h, c)`` for LSTM), or ``None``
            for zeros.
        lengths: ``(B,)`` integer lengths in ``[0, T]``, or ``None`` (all ``T``).
        reverse: read each sequence from its own last valid step back to step 0; outputs
            are written at the original time positions.
        precision: ``"fp32"``, or ``"bf16"``: the input projection and the recurrent GEMMs
            take bfloat16 operands with float32 accumulation; the gate math, the carried
            state, the outputs and all gradients stay float32 (:mod:`._bf16`;
            :func:`supports_bf16` says whether the cell can). Inputs, state and parameters
            are float32 either way; gradients of gradients are refused in bf16.

    Returns:
        ``(outputs (T, B, H_out), final_state)``: outputs are zero at padded steps, the final
        state is each sequence's state after its own last valid step. Differentiable with
        respect to inputs, state and every parameter.

    Raises:
        RuntimeError: the extension is unavailable (see :func:`available`).
        ValueError / TypeError: unsupported cell, bad shapes, dtypes or lengths.
    """
    entry = _verified(cell)
    ok, why = _supports_memo(cell, entry)
    if not ok:
        raise ValueError(f"compiled.run_recurrence cannot run this cell: {why}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"compiled.run_recurrence: precision must be 'fp32' or 'bf16', got "
                         f"{precision!r}")
    bf16 = precision == "bf16"
    if bf16:
        ok, why = supports_bf16(cell, inputs if isinstance(inputs, Tensor) else None)
        if not ok:
            raise ValueError(f"compiled.run_recurrence cannot run this cell in bf16: {why}")
    if isinstance(inputs, Tensor) and fallback_reason(cell, inputs, state) is not None:
        from rnnkit.engine import loop

        if state is None:
            state = cell.initial_state(inputs.shape[1], device=inputs.device, dtype=inputs.dtype)
        return loop.run_recurrence(cell, inputs, state, lengths=lengths, reverse=reverse)
    if entry is None or not entry.parameters_checked:
        _check_parameters(cell)
        if entry is not None:
            entry.parameters_checked = True
    lengths = _check(cell, inputs, lengths)
    ext, error = _build.load()
    if ext is None:
        raise RuntimeError(f"rnnkit compiled kernels are unavailable: {error}")
    T, B, _ = inputs.shape
    if state is None:
        state = cell.initial_state(B, device=inputs.device, dtype=inputs.dtype)
    reverse = bool(reverse)
    lengths_arg = (torch.empty(0, dtype=torch.int64, device=inputs.device) if lengths is None
                   else lengths)
    adapter = _adapter_class(cell)[1](cell)
    if isinstance(adapter, _cells.OwnKernelAdapter):  # a kernel of its own, not the template
        return adapter.run(ext, inputs, state, lengths_arg, reverse, _state_tensor)
    if bf16:
        _bf16.prepare()
        adapter.linear = _bf16.linear(ext)
        if _bf16.gemm(ext) == "emulated":
            from rnnkit.engine import fused

            fused.notice_emulated_bf16()
    return _run_adapter(ext, adapter, inputs, state, lengths_arg, reverse, entry, bf16)


def _run_adapter(ext, adapter: CompiledAdapter, inputs: Tensor, state, lengths: Tensor,
                 reverse: bool, entry: _Verified | None = None, bf16: bool = False):
    """A family on the step-loop template: the adapter says what, the template runs it."""
    cell = adapter.cell
    B = inputs.shape[1]
    parts = adapter.state_parts()
    if len(parts) == 1:
        given = [state]
    elif isinstance(state, (tuple, list)) and len(state) == len(parts):
        given = list(state)
    else:
        names = ", ".join(name.removeprefix("state ") for name, _ in parts)
        kind = "a pair" if len(parts) == 2 else f"a tuple of {len(parts)} tensors"
        raise TypeError(
            f"compiled.run_recurrence: {type(cell).__name__} state must be {kind} ({names}), "
            f"got {type(state).__name__}"
        )
    tensors = [_state_tensor(cell, t, B, width, what)
               for t, (what, width) in zip(given, parts, strict=True)]
    state0 = tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)  # (B, SW)
    operands = None if bf16 else adapter.projection_operands()
    # with the operands, the projection runs inside the recurrence's autograd node
    xp = inputs if operands is not None else adapter.project(inputs)  # (T, B, X)
    named = {k: _opt(v, xp) for k, v in adapter.kernel_tensors().items() if v is not None}
    grad = torch.is_grad_enabled()
    # everything but the tensors depends on the configuration alone: built once per
    # configuration (the memo entry), direction and grad mode
    call = entry.calls.get((reverse, grad, bf16)) if entry is not None else None
    if call is None or call.names != tuple(named):
        call = KernelCall(
            family=adapter.family,
            names=tuple(named),
            flags=tuple(adapter.flags().items()),
            numbers=tuple(adapter.numbers().items()),
            reverse=reverse,
            output_size=cell.output_size,
            step=adapter.step,
            grad=grad,
            bf16=bf16,
        )
        if entry is not None:
            entry.calls[(reverse, grad, bf16)] = call
    if operands is not None:
        out, final = ProjectedRecurrence.apply(ext, call, lengths, inputs, *operands, state0,
                                               *named.values())
    else:
        out, final = CellRecurrence.apply(ext, call, lengths, xp, state0, *named.values())
    if len(parts) == 1:
        return out, final
    return out, tuple(final.split([width for _, width in parts], dim=1))


@dataclass(eq=False)
class PreparedRun:
    """One cell's compiled run with everything but the tensors decided (:func:`prepare`):
    the extension, the cell's adapter, the kernel call (family, names, flags, direction,
    grad mode) and the state's widths. :func:`run_prepared` runs it."""

    ext: object
    adapter: CompiledAdapter
    call: KernelCall
    lengths: Tensor  # the empty lengths argument (every sequence has T steps)
    widths: tuple[int, ...]  # the state parts' widths, in the kernel's row order
    #: Elman in float32/float64: ``ext.elman_projected_apply``, the layer's autograd node in
    #: C++ (it declines, returning [], where its kernel does not apply); else None
    node: object = None
    relu: bool = False

    @property
    def state_width(self) -> int:
        """``SW``: the width of the kernel's carried state row (the parts side by side)."""
        return sum(self.widths)


def prepare(cell: nn.Module, inputs: Tensor, reverse: bool = False) -> PreparedRun | None:
    """What :func:`run_recurrence` decides for ``cell`` on ``inputs`` in the current grad
    mode, in float32/float64 precision and without lengths, done once: checks the cell (as
    ``run_recurrence`` does, raising its errors) and returns a :class:`PreparedRun`, or None
    where ``run_recurrence`` would not run the step-loop template here (a cell with a
    kernel of its own, a torch.func transform active, the kernels unavailable).

    The run stays valid while nothing it was decided on changes: the cell's configuration
    and parameters (which tensors, dtype, device, shape, requires_grad), the input's dtype,
    device and feature size, and the grad mode. The caller keeps that promise (a drop-in
    module's call cache, ``rnnkit.layers.rnn``); the parameters' *values* may change freely,
    the run reads them at every call.
    """
    entry = _verified(cell)
    ok, why = _supports_memo(cell, entry)
    if not ok:
        raise ValueError(f"compiled.run_recurrence cannot run this cell: {why}")
    if fallback_reason(cell, inputs) is not None:
        return None
    if entry is None or not entry.parameters_checked:
        _check_parameters(cell)
        if entry is not None:
            entry.parameters_checked = True
    _check(cell, inputs, None)
    ext, _ = _build.load()
    if ext is None:
        return None
    adapter = _adapter_class(cell)[1](cell)
    if isinstance(adapter, _cells.OwnKernelAdapter):
        return None
    names = tuple(k for k, v in adapter.kernel_tensors().items() if v is not None)
    call = KernelCall(
        family=adapter.family,
        names=names,
        flags=tuple(adapter.flags().items()),
        numbers=tuple(adapter.numbers().items()),
        reverse=bool(reverse),
        output_size=cell.output_size,
        step=adapter.step,
        grad=torch.is_grad_enabled(),
    )
    lengths = torch.empty(0, dtype=torch.int64, device=inputs.device)
    node = None
    if call.family == "elman" and call.grad and adapter.projection_operands() is not None:
        node = getattr(ext, "elman_projected_apply", None)
    return PreparedRun(ext, adapter, call, lengths, tuple(w for _, w in adapter.state_parts()),
                       node=node, relu=dict(call.flags).get("relu", False))


def run_prepared(run: PreparedRun, inputs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """Run a :func:`prepare`-d cell over time-major ``inputs`` (T, B, H_in) from the carried
    state in the kernel's row layout, ``state`` (B, SW) (the state parts side by side, e.g.
    ``[h | c]``): ``(outputs (T, B, H_out), final state (B, SW))``, differentiable as
    :func:`run_recurrence`'s. The caller guarantees what :func:`prepare` names; the
    parameters are read from the cell at this call."""
    adapter = run.adapter
    tensors = [v.contiguous() for v in adapter.kernel_tensors().values() if v is not None]
    operands = adapter.projection_operands()
    call = run.call
    if not call.grad:  # prepared without grad mode: no autograd node to build
        xp = adapter.project(inputs) if operands is None else project(inputs, *operands)
        named = dict(zip(call.names, tensors, strict=True))
        named.update(xp=xp, state=state, lengths=run.lengths)
        flags = dict(call.flags, reverse=call.reverse, training=False, bf16=False)
        out, final, _, _ = run.ext.forward(call.family, named, dict(call.numbers), flags)
        return out, final
    if operands is not None:  # one autograd node for the projection and the recurrence
        if run.node is not None:  # Elman on the small path: the node in C++ (elman_node.cpp)
            weight, bias, second = operands  # absent biases go to C++ as empty tensors
            result = run.node(inputs, weight, _empty_if_none(bias, weight),
                              _empty_if_none(second, weight), tensors[0], state, run.lengths,
                              relu=run.relu, reverse=call.reverse)
            if result:
                return result[0], result[1]
        return ProjectedRecurrence.apply(run.ext, run.call, run.lengths, inputs, *operands,
                                         state, *tensors)
    xp = adapter.project(inputs)  # (T, B, X)
    return CellRecurrence.apply(run.ext, run.call, run.lengths, xp, state, *tensors)


def _state_tensor(cell, state, batch: int, size: int | None = None, what: str = "state"):
    size = cell.hidden_size if size is None else size
    if not isinstance(state, Tensor) or tuple(state.shape) != (batch, size):
        shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
        raise ValueError(
            f"compiled.run_recurrence: {type(cell).__name__} {what} must be ({batch}, {size}), "
            f"got {shape}"
        )
    reference = _reference_parameter(cell)
    if state.device != reference.device:
        where = ("the meta device (a tensor without values)" if state.device.type == "meta"
                 else str(state.device))
        raise ValueError(
            f"compiled.run_recurrence: {type(cell).__name__} {what} is on {where}, but the "
            f"parameters are on {reference.device}; move the {what} there"
        )
    if state.layout != torch.strided:
        raise ValueError(
            f"compiled.run_recurrence: {type(cell).__name__} {what} must be a dense (strided) "
            f"tensor, got layout {state.layout}"
        )
    if state.dtype != reference.dtype:
        raise TypeError(
            f"compiled.run_recurrence: {what} dtype {state.dtype} does not match the "
            f"parameters' {reference.dtype}"
        )
    return state.contiguous()
