"""The ``"inductor"`` path: any cell's step traced once, its input projection hoisted out of
the loop, the rest compiled with ``torch.compile`` (Inductor's CPU backend).

Nothing in the user's cell changes. For each call signature (batch size, dtypes, state
shapes, training mode) the cell's ``forward`` is traced once to an ATen graph with fake
tensors (``make_fx``), with the parameters, buffers, input and state as graph inputs. Then:

1. **hoisting**: every node that depends on the input ``x`` but not on the state (the input
   projection ``W_ih x + b``, its layer norm, any pointwise work on it) is cut out into a
   second graph that runs once for all ``T`` steps (``torch.vmap`` over time: one GEMM of
   ``T*B`` rows instead of ``T`` GEMMs of ``B`` rows);
2. **compiling**: the rest, one step's recurrent part, is compiled by ``torch.compile(...,
   backend="inductor", fullgraph=True)``: its pointwise work fuses into a few loops, and
   AOTAutograd writes the matching backward; the Python loop over time calls it ``T`` times;
3. **checking**: before the path serves a signature for the first time, the two graphs,
   uncompiled, are run beside the cell's own ``forward`` on the call's first two steps;
   a difference beyond rounding refuses the path (the trace baked in something the cell
   decides at run time).

Refused (the loop runs and :func:`rnnkit.engine.explain` says why): Python control flow
that reads tensor values (``if h.sum() > 0``, ``.item()``), which a trace cannot follow;
random numbers drawn inside the step (dropout in training), which compiled code draws
differently; a step that writes into its inputs, parameters or buffers; a cell whose trace
differs from its forward; a failed compilation (no C++ compiler for Inductor, an operator
it cannot lower) is found at the first call and refused then.

Symbols: ``T`` time steps, ``B`` batch, ``H_in`` input features.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from rnnkit.cells.base import State
from rnnkit.engine.plan import PathDeclined

__all__ = ["TraceRefused", "plan", "run_recurrence"]

#: ATen operators (by name prefix) that draw random numbers.
_RANDOM_OPS = ("rand", "bernoulli", "normal", "uniform", "exponential", "multinomial",
               "native_dropout", "poisson", "geometric", "cauchy", "log_normal")
#: GEMM-like operators worth naming when hoisted.
_GEMMS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution")


class TraceRefused(Exception):
    """The cell cannot run on the inductor path; the message says why."""


@dataclass
class TracedCell:
    """One signature's traced, split (and, once called, compiled) step."""

    hoisted: fx.GraphModule | None  # (params..., x) -> per-step tensors; None: nothing hoisted
    step: fx.GraphModule  # (the used ones of params..., x, hoisted..., state leaves...)
    #                       -> (out, state leaves...)
    state_spec: Any
    used: list[int]  # which of (params..., x, hoisted..., state...) the step graph reads
    positions: list[int]  # (out, state leaves...)[k] is the step graph's result[positions[k]]
    summary: str
    compiled: Callable[..., Any] | None = None
    failure: str | None = None  # why compiling failed (then the loop runs)
    checked: bool = False
    names: list[str] = field(default_factory=list)


_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, TracedCell | str]] = (
    weakref.WeakKeyDictionary()
)


def _tensors(cell: nn.Module) -> tuple[list[str], list[Tensor]]:
    named = dict(cell.named_parameters())
    named.update(dict(cell.named_buffers()))
    return list(named), list(named.values())


def _signature(cell: nn.Module, x: Tensor, state: State) -> tuple:
    leaves, spec = tree_flatten(state)
    names, values = _tensors(cell)
    return (tuple(x.shape), x.dtype, x.device, str(spec),
            tuple((tuple(s.shape), s.dtype) for s in leaves),
            tuple((n, tuple(v.shape), v.dtype) for n, v in zip(names, values, strict=True)),
            cell.training)


def _op_name(node: fx.Node) -> str:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _trace(cell: nn.Module, x: Tensor, state: State) -> TracedCell:
    from torch.fx.experimental.proxy_tensor import make_fx

    names, values = _tensors(cell)
    leaves, spec = tree_flatten(state)
    count = len(values)
    out_spec: list[Any] = []

    def step(*args: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(names, args[:count], strict=True))
        inner_state = tree_unflatten(list(args[count + 1:]), spec)
        out, new_state = torch.func.functional_call(cell, params, (args[count], inner_state))
        new_leaves, new_spec = tree_flatten(new_state)
        out_spec.append(new_spec)
        if not isinstance(out, Tensor):
            raise TraceRefused(f"{type(cell).__name__} returns an output of type "
                               f"{type(out).__name__}, not a Tensor")
        return (out, *new_leaves)

    try:
        graph = make_fx(step, tracing_mode="fake")(*values, x, *leaves)
    except TraceRefused:
        raise
    except Exception as error:
        data_dependent = any(word in type(error).__name__ for word in (
            "DataDependent", "DynamicOutputShape", "GuardOnDataDependent"))
        what = ("Python control flow or a value read from a tensor (.item(), bool(t)) "
                "inside the step, which a trace cannot follow" if data_dependent
                else "tracing the step failed")
        raise TraceRefused(f"{what} ({_first_line(error)})") from error
    if str(out_spec[-1]) != str(spec):
        raise TraceRefused(f"{type(cell).__name__} returns its state in another structure "
                           f"than it receives")
    return _split(cell, graph, count, len(leaves), spec)


def _split(cell: nn.Module, gm: fx.GraphModule, count: int, n_state: int,
           spec: Any) -> TracedCell:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    params, x_node, states = placeholders[:count], placeholders[count], placeholders[count + 1:]
    assert len(states) == n_state
    on_state: set[fx.Node] = set(states)
    on_x: set[fx.Node] = {x_node}
    inputs = set(placeholders)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node)
        if name.startswith(_RANDOM_OPS):
            raise TraceRefused(f"the step draws random numbers ({name}: dropout in training?), "
                               f"which compiled code draws differently from the eager loop")
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            written = [a for a in node.args if isinstance(a, fx.Node) and a in inputs]
            if written:
                raise TraceRefused(f"the step writes into its input, state, a parameter or a "
                                   f"buffer ({name} on {written[0].name})")
        deps = node.all_input_nodes
        if any(d in on_state for d in deps):
            on_state.add(node)
        if any(d in on_x for d in deps):
            on_x.add(node)
    hoist = [n for n in gm.graph.nodes if n.op == "call_function" and n in on_x
             and n not in on_state]
    hoist_set = set(hoist)
    frontier = [n for n in hoist if any(u not in hoist_set for u in n.users)]

    hoisted = None
    if frontier:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in params + [x_node]:
            env[node] = graph.placeholder(node.name)
        for node in gm.graph.nodes:  # x-only nodes and the parameter-only ones they use
            if node.op == "call_function" and node not in on_state:
                env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(tuple(env[n] for n in frontier))
        hoisted = fx.GraphModule(gm, graph)
        hoisted.graph.eliminate_dead_code()
        hoisted.recompile()

    graph = fx.Graph()
    env = {}
    for node in params + [x_node]:
        env[node] = graph.placeholder(node.name)
    for node in frontier:
        env[node] = graph.placeholder(f"{node.name}_t")
    for node in states:
        env[node] = graph.placeholder(node.name)
    for node in gm.graph.nodes:
        if node.op in ("placeholder",) or node in hoist_set:
            continue
        if node.op == "output":
            # A cell that returns the same tensor as output and state (``return h, h``)
            # gets it once: outputs aliasing each other cost AOTAutograd a regeneration
            # of the alias at every step.
            results = [env[n] for n in node.args[0]]
            unique = list(dict.fromkeys(results))
            graph.output(tuple(unique))
            positions = [unique.index(r) for r in results]
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    step = fx.GraphModule(gm, graph)
    step.graph.eliminate_dead_code()
    step.recompile()
    # Inputs the recurrent part never reads (the hoisted projection's weights, often x) are
    # dropped from its signature: each input costs a guard and AOTAutograd bookkeeping at
    # every step.
    used = []
    for index, node in enumerate(n for n in step.graph.nodes if n.op == "placeholder"):
        if node.users:
            used.append(index)
        else:
            step.graph.erase_node(node)
    step.recompile()

    ops = [n for n in gm.graph.nodes if n.op == "call_function"]
    gemms = sorted({_op_name(n) for n in hoist if _op_name(n) in _GEMMS})
    step_gemms = sum(1 for n in step.graph.nodes if n.op == "call_function"
                     and _op_name(n) in _GEMMS)
    if hoist:
        moved = f"{len(hoist)} of {len(ops)} ops depend on x alone and run once for all steps"
        if gemms:
            moved += f" (the input projection: {', '.join(gemms)})"
    else:
        moved = "no op depends on x alone, nothing hoisted"
    summary = (f"step traced; {moved}; the recurrent part ({step_gemms} GEMM(s) per step) "
               f"compiled by torch.compile (Inductor)")
    return TracedCell(hoisted, step, spec, used, positions, summary)


def traced(cell: nn.Module, x: Tensor, state: State) -> TracedCell:
    """The traced step for ``cell`` at this signature (``x`` one step ``(B, H_in)``), traced
    on first use; raises :class:`TraceRefused` with the reason when it cannot serve."""
    signature = _signature(cell, x, state)
    entries = _cache.setdefault(cell, {})
    entry = entries.get(signature)
    if entry is None:
        try:
            entry = _trace(cell, x, state)
        except TraceRefused as refused:
            entry = str(refused)
        entries[signature] = entry
    if isinstance(entry, str):
        raise TraceRefused(entry)
    return entry


def example_state(cell: nn.Module, batch: int, like: Tensor) -> State:
    """Zeros shaped by ``cell.state_size`` for planning (the driver's own state comes later)."""
    size = cell.state_size

    def build(node: Any) -> Any:
        if isinstance(node, (tuple, list)):
            return tuple(build(part) for part in node)
        return like.new_zeros(batch, int(node))

    return build(size)


def plan(cell: nn.Module, inputs: Tensor) -> str:
    """Why the inductor path serves ``cell`` on ``inputs (T, B, H_in)``; raises
    :class:`TraceRefused` with the reason it cannot."""
    if not hasattr(cell, "state_size"):
        raise TraceRefused(f"{type(cell).__name__} has no state_size (the cell contract), so "
                           f"its state cannot be traced")
    size = getattr(cell, "input_size", None)  # a stacked layer's input is not the module's
    features = size if isinstance(size, int) else inputs.shape[-1]
    x = inputs.new_zeros(inputs.shape[1], features)  # (B, H_in): one step, for the trace
    return traced(cell, x, example_state(cell, inputs.shape[1], inputs)).summary


#: Compile the recurrent part (False runs the traced graphs uncompiled: the tests of the
#: tracing, hoisting and lengths logic use it to avoid a compile per test).
COMPILE = True


def _compile(entry: TracedCell) -> Callable[..., Any]:
    if entry.failure is not None:
        raise PathDeclined(entry.failure)
    if not COMPILE:
        return entry.step
    if entry.compiled is None:
        entry.compiled = torch.compile(entry.step, backend="inductor", fullgraph=True,
                                       dynamic=False)
    return entry.compiled


def _hoist(entry: TracedCell, values: list[Tensor], inputs: Tensor) -> list[tuple[Tensor, ...]]:
    """The hoisted tensors for every step: a list of ``T`` tuples."""
    if entry.hoisted is None:
        return [()] * inputs.shape[0]
    in_dims = (None,) * len(values) + (0,)
    batched = torch.vmap(entry.hoisted, in_dims=in_dims)(*values, inputs)  # each (T, ...)
    return list(zip(*(t.unbind(0) for t in batched), strict=True))


def _check(cell: nn.Module, entry: TracedCell, values: list[Tensor],
           per_step: list[tuple[Tensor, ...]], inputs: Tensor, state: State) -> None:
    """The split graphs, uncompiled, against the cell's forward on the first two steps."""
    leaves = tree_flatten(state)[0]
    with torch.no_grad():
        for t in range(min(2, inputs.shape[0])):
            start = tree_unflatten(leaves, entry.state_spec)
            expected_out, expected_state = cell(inputs[t], start)
            arguments = [*values, inputs[t], *per_step[t], *leaves]
            unique = entry.step(*[arguments[i] for i in entry.used])
            got = [unique[k] for k in entry.positions]
            for want, have in zip([expected_out, *tree_flatten(expected_state)[0]], got,
                                  strict=True):
                tolerance = 1e-10 if want.dtype == torch.float64 else 1e-5
                scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
                if want.shape != have.shape or not torch.allclose(
                        want, have, rtol=0, atol=tolerance * scale, equal_nan=True):
                    raise PathDeclined(
                        f"the traced step differs from {type(cell).__name__}.forward at step "
                        f"{t} (the cell decides something at run time that a trace bakes in)")
            leaves = list(got[1:])


def run_recurrence(cell: nn.Module, inputs: Tensor, state: State,
                   lengths: Tensor | None = None, reverse: bool = False) -> tuple[Tensor, State]:
    """Run ``cell`` over time-major ``inputs (T, B, H_in)`` on the inductor path.

    Same arguments and result as :func:`rnnkit.engine.loop.run_recurrence` (``lengths``
    already checked). Raises :class:`~rnnkit.engine.plan.PathDeclined` when the path cannot
    serve this call (the caller runs the loop and records why).
    """
    try:
        entry = traced(cell, inputs[0], state)
    except TraceRefused as refused:
        raise PathDeclined(str(refused)) from None
    _, values = _tensors(cell)
    if lengths is not None:  # the loop zeroes padded inputs: inf or nan there stays out
        valid = torch.arange(inputs.shape[0], device=inputs.device)[:, None] < lengths[None, :]
        inputs = torch.where(valid.unsqueeze(-1), inputs, 0.0)  # (T, B, H_in)
    per_step = _hoist(entry, values, inputs)
    if not entry.checked:
        _check(cell, entry, values, per_step, inputs, state)
        entry.checked = True
    step = _compile(entry)
    used, positions = entry.used, entry.positions
    leaves = tree_flatten(state)[0]
    steps = inputs.shape[0]
    xs = inputs.unbind(0)  # T x (B, H_in)
    outputs: list[Tensor | None] = [None] * steps

    def call(t: int, leaves: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        arguments = [*values, xs[t], *per_step[t], *leaves]
        unique = step(*[arguments[i] for i in used])
        return unique[positions[0]], [unique[k] for k in positions[1:]]

    try:
        if lengths is None:
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            for t in order:
                outputs[t], leaves = call(t, leaves)
            return torch.stack(outputs), tree_unflatten(leaves, entry.state_spec)
        max_len, min_len = int(lengths.max()), int(lengths.min())
        valid = torch.arange(max_len, device=inputs.device)[:, None] < lengths[None, :]
        keeps = valid.unsqueeze(-1).unbind(0)  # T' x (B, 1)
        order = range(max_len - 1, -1, -1) if reverse else range(max_len)
        for t in order:
            out, new = call(t, leaves)
            if t >= min_len:
                keep = keeps[t]
                new = [torch.where(keep, n, o) for n, o in zip(new, leaves, strict=True)]
                out = torch.where(keep, out, 0.0)
            outputs[t], leaves = out, new
    except PathDeclined:
        raise
    except Exception as error:  # Inductor failed to compile (found at the first call)
        if not _is_compile_failure(error):
            raise
        entry.failure = f"torch.compile failed: {_first_line(error)}"
        raise PathDeclined(entry.failure) from error
    if max_len < steps:
        zeros = torch.zeros_like(outputs[0])
        for t in range(max_len, steps):
            outputs[t] = zeros
    return torch.stack(outputs), tree_unflatten(leaves, entry.state_spec)


def _is_compile_failure(error: Exception) -> bool:
    module = type(error).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" \
        in type(error).__name__
