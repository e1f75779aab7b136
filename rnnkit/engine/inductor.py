"""The ``"inductor"`` path: any cell's step traced once, its input projection hoisted out of
the loop, the rest compiled with ``torch.compile`` (Inductor's CPU backend).

Nothing in the user's cell changes. For each call signature (batch size, dtypes, state
shapes, training mode) the cell's ``forward`` is traced once to an ATen graph with fake
tensors (``make_fx``), with the parameters, buffers, input and state as graph inputs. Then:

1. **hoisting**: every node that depends on the input ``x`` but not on the state (the input
   projection ``W_ih x + b``, its layer norm, any pointwise work on it) is cut out into a
   second graph that runs once for all ``T`` steps (``torch.vmap`` over time: one GEMM of
   ``T*B`` rows instead of ``T`` GEMMs of ``B`` rows);
2. **compiling**: the rest, one step's recurrent part, goes through AOTAutograd (a forward
   and a backward graph) and Inductor compiles each: its pointwise work fuses into a few
   loops. One autograd node runs the whole sequence, calling the compiled forward ``T``
   times and the compiled backward ``T`` times in reverse: in C++ where rnnkit's compiled
   kernels are built (``csrc/traced_step.cpp`` calls the entry point of Inductor's C++
   wrapper, no Python between steps; on more than one thread the batch runs as one block of
   rows per thread, :data:`BATCH_BLOCKS`), else from Python;
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

import contextlib
import ctypes
import operator
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from rnnkit.cells.base import State
from rnnkit.engine import compiled
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
    failure: str | None = None  # why compiling failed (then the loop runs)
    checked: bool = False
    names: list[str] = field(default_factory=list)
    block_failure: str | None = None  # why the batch cannot split into row blocks
    rows_independent: bool | None = None  # whether its rows never mix (None: not checked)


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
               f"split into forward and backward (AOTAutograd), each compiled by Inductor, "
               f"the whole sequence one autograd node")
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
    entry = traced(cell, x, example_state(cell, inputs.shape[1], inputs))
    values = _tensors(cell)[1]
    blocks = _blocks(entry, inputs.shape[1], [values[i] for i in entry.used if i < len(values)])
    if blocks > 1 and entry.rows_independent is not False:
        return (f"{entry.summary}; the batch runs as {blocks} blocks of "
                f"{inputs.shape[1] // blocks} rows, each through every step on its own thread"
                + ("" if entry.rows_independent else " (if its rows never mix: checked at the "
                                                     "first call)"))
    if entry.block_failure is not None:
        return f"{entry.summary}; the batch runs whole ({entry.block_failure})"
    return entry.summary


#: Sum the weight gradients over time in one GEMM after the backward loop (:class:`Deferred`)
#: instead of one small GEMM per step inside it.
DEFER_WEIGHT_GRADIENTS = True

#: Steps whose largest per-step input (state, hoisted projection) has fewer values than this
#: run their compiled pointwise code on one thread (the compiled kernels' pointwise grain,
#: csrc/common.h).
STEP_PARALLEL_ELEMS = 1 << 16

#: For such steps, also compile a second program whose pointwise code splits across torch's
#: threads, and let each call take whichever of the two ran faster lately (:class:`_Choice`):
#: on a quiet machine the split one is faster (the other thread otherwise waits through the
#: pointwise code), beside a busy neighbour the barriers can stall it.
ADAPTIVE_THREADS = True

#: Compile tanh as ``2 / (1 + exp(-2x)) - 1`` (Inductor's ``cpp.use_decompose_tanh``)
DECOMPOSE_TANH = True

#: Compile the recurrent part (False runs the captured graphs uncompiled: the tests of the
#: tracing, hoisting, lengths and backward logic use it to avoid a compile per test).
COMPILE = True

#: Run the per-step loop in C++ (csrc/traced_step.cpp) where the compiled kernels are built:
#: the step's graphs are then compiled with Inductor's C++ wrapper, whose entry point the
#: loop calls directly. False (or no extension, or an entry point not found) keeps the
#: Python loop around Inductor's Python wrapper.
CPP_LOOP = True

#: With the C++ loop and more than one torch thread, split the batch into one block of rows
#: per thread, each block running every step on its own thread with a step compiled for its
#: rows (one-thread pointwise code, one-thread GEMMs): no barrier between the threads inside
#: a step, where sharing each step's small GEMM and pointwise loop costs two per step. Only
#: for cells whose rows do not mix (checked once per cell, :func:`_rows_independent`), a
#: batch that divides evenly, and blocks of at least :data:`BLOCK_MIN_ROWS` rows. Measured at
#: row 15's step (B=32, H=256, Intel Xeon model 207, 2 threads): the product of 16 rows on
#: one thread 28 us where the 32-row product shared by two threads took 37-56 us.
BATCH_BLOCKS = True
BLOCK_MIN_ROWS = 8
#: ... and only where the weights the step reads (its constant inputs) fit in this many
#: bytes: each thread then reads all of them at every step where the shared step splits them
#: (TwoGateCell training, T=64, same box, blocks against the shared step: 0.91x at B=32
#: H=128, 0.93x at B=64 H=256 (512 KiB of weights), 0.99x at B=32 H=512 (2 MiB), 1.13x at
#: B=32 H=1024 (8 MiB); at row 15's B=32 H=256 T=128 0.84-0.91x)
BLOCK_MAX_WEIGHT_BYTES = 1 << 20

#: ``void inductor_entry_impl(AtenTensorHandle*, AtenTensorHandle*)``, as the C++ ABI names it:
#: the entry point of code compiled with Inductor's C++ wrapper (inputs stolen, outputs
#: handed back).
_ENTRY_SYMBOL = "_Z19inductor_entry_implPP16AtenTensorOpaqueS1_"

# The compiled kernels' module (the C++ loop lives there), or None: the Python loop. A name of
# this module's own, so that tests can watch or remove it.
_extension = compiled.extension


@dataclass
class StepProgram:
    """The recurrent step as a forward graph and (for training) a backward graph, captured
    once by AOTAutograd and compiled by Inductor, called directly by :class:`_Sequence`."""

    forward: Callable[[list[Tensor]], Any]  # boxed: inputs -> (unique outputs..., saved...)
    backward: Callable[[list[Tensor]], Any] | None  # boxed: saved..., tangents -> grads
    outputs: int  # how many of the forward's results are the step's (unique) outputs
    tangents: int  # how many tangents the backward takes
    seconds: float  # capture and compile time
    deferred: Deferred | None = None  # the weight gradients, summed over time after the loop
    # backward inputs (of the saved ones) taken transposed and contiguous, made once per
    # sequence from the first step's value (:func:`_transposed_weights`)
    transposed: list[int] = field(default_factory=list)
    # constant inputs the forward takes transposed and contiguous, and the backward inputs
    # (of the saved ones) then made contiguous once per sequence (:func:`_transposed_consts`)
    const_transposed: list[int] = field(default_factory=list)
    contiguous: list[int] = field(default_factory=list)
    # the C++ loop's entry points (forward, backward or 0) and result counts, or None: the
    # Python loop (:func:`_entry_point`)
    entries: tuple[int, int] | None = None
    # per tangent of the backward: the strides it is compiled for (:func:`_tangent_layouts`)
    tangent_strides: list[tuple[int, ...]] = field(default_factory=list)
    results: tuple[int, int] = (0, 0)
    libraries: list[Any] = field(default_factory=list)  # keeps the entry points loaded
    # which of this program and its split-pointwise twin serves a call (:func:`_programs_for`)
    choice: _Choice | None = None


#: ATen operators (by name) linear in their one tensor argument: a sum over time commutes
#: with them, so they may follow the time-summed weight-gradient product.
_LINEAR = {"permute", "view", "reshape", "_unsafe_view", "clone", "alias", "t", "transpose",
           "squeeze", "unsqueeze", "neg", "expand", "sum"}


@dataclass
class Deferred:
    """The backward's weight-gradient nodes, run once after the per-step loop.

    A weight's gradient is a sum over steps of a per-step product, typically
    ``mm(dgates_t^T, h_{t-1})``: a GEMM of ``B`` rows per step. The nodes that feed only the
    gradients of the step's constant inputs (parameters, buffers) are cut out of the per-step
    backward, which returns their inputs (the *frontier*) instead; after the loop those are
    stacked over time, and a GEMM of two stacked operands becomes one GEMM over ``T*B`` rows
    (``sum_t a_t b_t``), everything else runs batched over time (``torch.vmap``) and is summed.
    """

    graph: fx.GraphModule  # frontier... -> constant inputs' gradients (None where none)
    static: list[bool]  # per frontier value: the same at every step (saved from parameters)
    tags: dict[str, str]  # node name -> "plain" | "stacked" | "summed"


def _ancestors(roots: list[Any]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [r for r in roots if isinstance(r, fx.Node)]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(node.all_input_nodes)
    return seen


def _defer(backward: fx.GraphModule, n_const: int, static_saved: set[str]
           ) -> tuple[fx.GraphModule, Deferred] | None:
    """Split ``backward`` into a per-step graph (the other gradients, then the frontier) and
    the :class:`Deferred` weight-gradient graph; None when nothing can be deferred."""
    output = next(n for n in backward.graph.nodes if n.op == "output")
    results = list(output.args[0])
    const_outs, other_outs = results[:n_const], results[n_const:]
    needed = _ancestors(other_outs)
    wanted = _ancestors(const_outs)
    deferred = [n for n in backward.graph.nodes if n in wanted and n not in needed
                and n.op == "call_function"]
    if not deferred:
        return None
    deferred_set = set(deferred)
    frontier: list[fx.Node] = []
    for node in [*deferred, *const_outs]:
        sources = node.all_input_nodes if node in deferred_set else [node]
        for source in sources:
            if isinstance(source, fx.Node) and source not in deferred_set \
                    and source not in frontier:
                frontier.append(source)
    tags: dict[str, str] = {}
    for node in frontier:
        static = node.op == "placeholder" and node.name in static_saved
        tags[node.name] = "plain" if static else "stacked"
    for node in deferred:
        name = _op_name(node)
        inputs = [tags[n.name] for n in node.all_input_nodes]
        if node.target is operator.getitem:
            tags[node.name] = inputs[0]
        elif all(t == "plain" for t in inputs):
            tags[node.name] = "plain"
        elif name == "mm" and inputs == ["stacked", "stacked"]:
            tags[node.name] = "summed"
        elif "summed" in inputs:
            scalars_only = all(not isinstance(a, fx.Node) for a in node.args[1:])
            # one tag per operand as written (x * x reads the summed x twice: not linear)
            operands = [tags[a.name] if isinstance(a, fx.Node) else "scalar"
                        for a in node.args]
            if name in _LINEAR and len(inputs) == 1:
                tags[node.name] = "summed"
            elif name in ("add", "sub") and "plain" not in inputs and not node.kwargs:
                tags[node.name] = "summed"
            elif name in ("mul", "div") and not node.kwargs and (
                    (len(inputs) == 1 and scalars_only) or
                    (operands.count("summed") == 1 and "stacked" not in operands and
                     (name == "mul" or operands[0] == "summed"))):
                tags[node.name] = "summed"  # times (or over) a plain tensor: still linear
            else:
                return None  # not linear in the summed value: keep it per step
        else:
            tags[node.name] = "stacked"
    # the deferred graph
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in frontier:
        env[node] = graph.placeholder(node.name)
    for node in deferred:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] if isinstance(n, fx.Node) else None for n in const_outs))
    later = fx.GraphModule(backward, graph)
    # the per-step graph: the other gradients, then the frontier
    output.args = ((*([None] * n_const), *other_outs, *frontier),)
    backward.graph.eliminate_dead_code()
    backward.recompile()
    return backward, Deferred(later, [tags[n.name] == "plain" for n in frontier], tags)


def _run_deferred(deferred: Deferred, frontier: list[list[Tensor] | Tensor], steps: int
                  ) -> list[Tensor | None]:
    """The constant inputs' gradients, summed over the ``steps`` steps whose frontier values
    ``frontier[i]`` the per-step backward returned: ``[value]`` for a static one (the same
    at every step), the values of all steps stacked ``(T, ...)`` (or a list to stack)."""
    values: dict[str, Tensor] = {}
    placeholders = [n for n in deferred.graph.graph.nodes if n.op == "placeholder"]
    for node, static, per_step in zip(placeholders, deferred.static, frontier, strict=True):
        values[node.name] = per_step[0] if static else (
            per_step if isinstance(per_step, Tensor) else torch.stack(per_step))  # (T, ...)
    tags = deferred.tags
    result: list[Tensor | None] = []
    for node in deferred.graph.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            for out in node.args[0]:
                if out is None:
                    result.append(None)
                    continue
                value, tag = values[out.name], tags[out.name]
                result.append(value.sum(0) if tag == "stacked" else
                              value * steps if tag == "plain" else value)
            break
        inputs = node.all_input_nodes
        tag = tags[node.name]
        if node.target is operator.getitem:
            values[node.name] = values[inputs[0].name][node.args[1]]
            continue
        if tag == "plain" or tags[inputs[0].name] == "summed" or (
                tag == "summed" and _op_name(node) != "mm"):
            # plain values, or linear operations on the time-summed value: as written, with
            # stacked operands of an addition summed over time first
            def value_of(n: fx.Node, summing: bool = tag == "summed") -> Tensor:
                v = values[n.name]
                return v.sum(0) if summing and tags[n.name] == "stacked" else v
            args = fx.node.map_arg(node.args, value_of)
            kwargs = fx.node.map_arg(node.kwargs, value_of)
            values[node.name] = node.target(*args, **kwargs)
        elif tag == "summed":  # mm of two stacked operands: one GEMM over T*B rows
            a, b = (values[n.name] for n in node.args[:2])  # (T, m, k), (T, k, n)
            if a.transpose(1, 2).is_contiguous():  # per-step transposes of one stack (the
                left = a.transpose(1, 2).reshape(-1, a.shape[1]).t()  # gate gradients): a view
            else:
                left = a.transpose(0, 1).reshape(a.shape[1], -1)  # (m, T*k)
            values[node.name] = torch.mm(left, b.reshape(-1, b.shape[2]))
        else:  # stacked: the operation batched over time
            def call(*tensors: Tensor, node: fx.Node = node,
                     names: tuple[str, ...] = tuple(n.name for n in inputs)) -> Any:
                lookup = dict(zip(names, tensors, strict=True))
                args = fx.node.map_arg(node.args, lambda arg: lookup[arg.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda arg: lookup[arg.name])
                return node.target(*args, **kwargs)
            in_dims = tuple(0 if tags[n.name] == "stacked" else None for n in inputs)
            values[node.name] = torch.vmap(call, in_dims=in_dims)(
                *(values[n.name] for n in inputs))
    return result


def _static_saved(forward: fx.GraphModule, n_const: int, n_outputs: int) -> set[str]:
    """Names of the forward's saved values that depend on its constant inputs only (the same
    at every step: a transposed weight, say)."""
    placeholders = [n for n in forward.graph.nodes if n.op == "placeholder"]
    varying = set(placeholders[n_const:])
    for node in forward.graph.nodes:
        if node.op == "call_function" and any(d in varying for d in node.all_input_nodes):
            varying.add(node)
    output = next(n for n in forward.graph.nodes if n.op == "output")
    return {n.name for n in output.args[0][n_outputs:]
            if isinstance(n, fx.Node) and n not in varying}


#: Run a step's product of a few rows with a transposed weight, ``x @ W^T`` (``B`` rows), as
#: ``(W @ x^T)^T``: MKL splits the weight's ``2H`` rows across threads there, where it splits
#: the ``B`` rows of ``x @ W^T`` poorly (see :func:`_wide_products`). Only where torch runs
#: two threads or more (on one the transposed read makes the step's pointwise code slower).
WIDE_PRODUCTS = True
#: ... and only for products of at most this many rows (the per-step batch)
WIDE_PRODUCT_ROWS = 64


def _wide_products(gm: fx.GraphModule) -> int:
    """Rewrite each ``mm(a, permute(w, [1, 0]))`` of ``gm`` where ``a`` has fewer rows than
    the product has columns (the recurrent projection ``h @ W^T`` of ``B`` rows) as
    ``permute(mm(w, permute(a, [1, 0])), [1, 0])``: the same product, computed as
    ``W @ h^T``, whose ``2H`` output rows MKL splits across threads; the generated pointwise
    code then reads the product transposed, in 16x16 tiles (the bias add, which ``addmm``
    did, fuses into it). Only products of at most :data:`WIDE_PRODUCT_ROWS` rows.
    Measured at row 15's step (``TwoGateCell``, B=32, H=256, MKL, 2 threads, AMD EPYC
    beside other load, fastest of 60 runs of 20 calls): the forward step's product 57 us
    against 79 us for ``addmm``, its pointwise code 16.1 against 14.3 us, the whole
    compiled forward step 103 against 135 us; on one thread the product is no faster.
    Returns how many products were rewritten."""
    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mm.default or node.kwargs:
            continue
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and b.op == "call_function"
                and (b.target is aten.t.default or (b.target is aten.permute.default
                                                    and list(b.args[1]) == [1, 0]))):
            continue
        a_val, b_val, w = a.meta.get("val"), b.meta.get("val"), b.args[0]
        if not isinstance(w, fx.Node) or a_val is None or b_val is None or \
                w.meta.get("val") is None or a_val.shape[0] >= b_val.shape[1] or \
                a_val.shape[0] > WIDE_PRODUCT_ROWS:
            continue
        mode = getattr(a_val, "fake_mode", None)
        with gm.graph.inserting_before(node):
            a_t = gm.graph.call_function(aten.permute.default, (a, [1, 0]))  # (K, M)
            product = gm.graph.call_function(aten.mm.default, (w, a_t))  # (N, M)
            back = gm.graph.call_function(aten.permute.default, (product, [1, 0]))  # (M, N)
        with mode if mode is not None else contextlib.nullcontext():
            a_t.meta["val"] = aten.permute.default(a_val, [1, 0])
            product.meta["val"] = aten.mm.default(w.meta["val"], a_t.meta["val"])
            back.meta["val"] = aten.permute.default(product.meta["val"], [1, 0])
        node.replace_all_uses_with(back)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _transposed_weights(gm: fx.GraphModule, inputs: list[Tensor], static: set[str]
                        ) -> list[int]:
    """Let the backward graph ``gm`` take each saved weight that is the same at every step
    (``static``: the recurrent weight, typically) and multiplies a few rows from the right
    (``dh = dgates @ W``, ``B`` rows) transposed and contiguous: the placeholder becomes
    ``W^T`` (its uses read ``permute(W^T)``, the same values) and ``inputs`` (the example
    inputs) hold ``W^T``, so :func:`_wide_products` computes the product as
    ``(W^T @ dgates^T)^T`` with a contiguous ``W^T``, made once per sequence by
    :class:`_Sequence`. Measured (B=32, H=256, MKL, 2 threads, beside other load):
    ``W^T @ dgates^T`` 58-62 us against 73-80 us for ``dgates @ W``; with ``W^T`` a strided
    view, 71-77 us: no gain. Returns the indices of the inputs so taken."""
    aten = torch.ops.aten
    taken = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for index, node in enumerate(placeholders):
        value = node.meta.get("val")
        if node.name not in static or value is None or value.dim() != 2:
            continue
        users = list(node.users)
        if not users or not all(
                u.target is aten.mm.default and not u.kwargs and u.args[1] is node
                and u.args[0] is not node and isinstance(u.args[0], fx.Node)
                and u.args[0].meta.get("val") is not None
                and u.args[0].meta["val"].shape[0] <= WIDE_PRODUCT_ROWS
                and u.args[0].meta["val"].shape[0] < value.shape[1] for u in users):
            continue
        mode = getattr(value, "fake_mode", None)
        with mode if mode is not None else contextlib.nullcontext():
            node.meta["val"] = aten.permute.default(value, [1, 0]).contiguous()
        with gm.graph.inserting_after(node):
            view = gm.graph.call_function(aten.permute.default, (node, [1, 0]))
        view.meta["val"] = value
        node.replace_all_uses_with(view, delete_user_cb=lambda user, view=view: user is not view)
        inputs[index] = inputs[index].t().contiguous()
        taken.append(index)
    if taken:
        gm.recompile()
    return taken


def _transposed_consts(gm: fx.GraphModule, inputs: list[Tensor], n_const: int,
                       n_outputs: int) -> tuple[list[int], list[int]]:
    """Let the forward graph ``gm`` take each constant input (a weight ``W``) that it
    multiplies transposed from the right (``h @ W^T``, the recurrent projection) as ``W^T``,
    contiguous: the product then reads its right operand in rows, which MKL runs much faster
    for a few rows on one thread (measured, 16 x 256 @ 256 x 512, Intel Xeon model 207: 26 us
    against 47 us for the transposed read). ``inputs`` (the example inputs) hold ``W^T``; the
    caller passes ``W^T`` for these inputs. Where the forward also saves ``W`` for the
    backward it saves a view of ``W^T``, which the backward takes contiguous, made once per
    sequence. Returns (the constant inputs so taken, the backward's saved inputs to make
    contiguous)."""
    aten = torch.ops.aten
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in gm.graph.nodes if n.op == "output")

    def transposed(user: fx.Node) -> bool:  # W^T as a view
        return user.op == "call_function" and not user.kwargs and (
            user.target is aten.t.default or (user.target is aten.permute.default
                                              and list(user.args[1]) == [1, 0]))

    def multiplied(view: fx.Node) -> bool:  # ... the right operand of a product
        return any(u.op == "call_function" and u.target in (aten.mm.default, aten.addmm.default)
                   and u.args[-1] is view and not u.kwargs for u in view.users)

    taken, contiguous = [], []
    for index, node in enumerate(placeholders[:n_const]):
        value = node.meta.get("val")
        if value is None or value.dim() != 2:
            continue
        views = [u for u in node.users if transposed(u)]
        if not any(multiplied(v) for v in views):
            continue
        others = [u for u in node.users if u not in views]  # reads of W itself
        mode = getattr(value, "fake_mode", None)
        with mode if mode is not None else contextlib.nullcontext():
            node.meta["val"] = aten.permute.default(value, [1, 0]).contiguous()
        for view in views:  # W^T is now the input itself
            view.replace_all_uses_with(node)
            gm.graph.erase_node(view)
        if others:  # W: a view of the input
            with gm.graph.inserting_after(node):
                back = gm.graph.call_function(aten.permute.default, (node, [1, 0]))
            with mode if mode is not None else contextlib.nullcontext():
                back.meta["val"] = aten.permute.default(node.meta["val"], [1, 0])
            for user in others:
                user.replace_input_with(node, back)
        inputs[index] = inputs[index].t().contiguous()
        taken.append(index)
    if not taken:
        return taken, contiguous
    inputs_taken = {placeholders[i] for i in taken}
    for j, saved in enumerate(list(output.args[0])[n_outputs:]):  # saved views of a
        source = saved  # transposed input (W): the backward takes them laid out anew
        while isinstance(source, fx.Node) and source.op == "call_function" and \
                source.target in (aten.permute.default, aten.t.default):
            source = source.args[0]
        if source is not saved and source in inputs_taken:
            contiguous.append(j)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return taken, contiguous


def _tangent_layouts(gm: fx.GraphModule, inputs: list[Tensor], positions: list[int],
                     n_inputs: int) -> list[tuple[int, ...]]:
    """Let each tangent of the backward graph ``gm`` that carries a state's gradient back to
    the step before take it in the layout the backward returns that gradient in (transposed,
    where :func:`_wide_products` computes ``dh`` as ``(W^T @ dgates^T)^T``): the example
    ``inputs`` are laid out so, and the compiled code reads the gradient as it comes, where
    the loop would otherwise copy it contiguous at every step (for a cell whose output is its
    state, the sum of the two tangents is written in that layout in one pass). ``positions``:
    the forward's unique output of (out, state leaves...); ``n_inputs``: the forward's inputs
    (the last ones the state's). Returns each tangent's strides."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tangents = [i for i, n in enumerate(placeholders) if n.name.startswith("tangents")]
    results = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    n_state = len(positions) - 1
    strides = []
    for j, index in enumerate(tangents):
        example = inputs[index]
        want = tuple(example.stride())
        for k in range(max(n_state, 0)):
            grad = results[n_inputs - n_state + k]
            value = grad.meta.get("val") if isinstance(grad, fx.Node) else None
            if positions[1 + k] == j and value is not None and value.shape == example.shape:
                want = tuple(value.stride())
        if want != tuple(example.stride()):
            inputs[index] = example.new_empty_strided(example.shape, want).copy_(example)
        strides.append(want)
    return strides


def _laid_out(value: Tensor, stride: tuple[int, ...]) -> Tensor:
    """``value`` with ``stride`` (itself when it has them; else one copy)."""
    if tuple(value.stride()) == stride:
        return value
    return value.new_empty_strided(value.shape, stride).copy_(value)


def _capture(step: fx.GraphModule, example: list[Tensor], training: bool,
             n_const: int = 0, positions: list[int] | None = None,
             split_pointwise: bool = False, block: bool = False) -> StepProgram:
    """The step's forward and backward graphs (AOTAutograd, Inductor's decompositions and the
    min-cut partition), each compiled by Inductor (or left as graphs when ``COMPILE`` is
    False)."""
    from functorch.compile import aot_function, make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.compile_fx import compile_fx_inner, get_cpp_wrapper_config
    from torch._inductor.decomposition import select_decomp_table

    begin = time.perf_counter()
    graphs: dict[str, tuple[fx.GraphModule, list[Tensor]]] = {}

    def keep(name: str) -> Callable[..., Any]:
        def compiler(gm: fx.GraphModule, inputs: list[Tensor]) -> Callable[..., Any]:
            graphs[name] = (gm, list(inputs))
            return make_boxed_func(gm.forward)
        return compiler

    captured = aot_function(step, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                            inference_compiler=keep("forward"),
                            partition_fn=min_cut_rematerialization_partition,
                            decompositions=select_decomp_table())
    inputs = [t.detach().contiguous().requires_grad_(training and t.is_floating_point())
              for t in example]
    with torch.enable_grad() if training else torch.no_grad():
        results = captured(*inputs)
        results = list(results) if isinstance(results, (tuple, list)) else [results]
        if training:
            torch.autograd.backward([r for r in results if r.requires_grad],
                                    [torch.ones_like(r) for r in results if r.requires_grad])
    for name in ("forward", "backward") if training else ("forward",):
        if name not in graphs:
            raise PathDeclined(f"AOTAutograd produced no {name} graph for the step")
    deferred = None
    if training and DEFER_WEIGHT_GRADIENTS:
        split = _defer(graphs["backward"][0], n_const,
                       _static_saved(graphs["forward"][0], n_const, len(results)))
        if split is not None:
            graphs["backward"] = (split[0], graphs["backward"][1])
            deferred = split[1]
    transposed: list[int] = []
    if WIDE_PRODUCTS and torch.get_num_threads() > 1 and not block:
        # on one thread (a block runs on one) no faster: the pointwise code reads it transposed
        _wide_products(graphs["forward"][0])
        if training:
            gm, graph_inputs = graphs["backward"]
            static = _static_saved(graphs["forward"][0], n_const, len(results))
            transposed = _transposed_weights(gm, graph_inputs, static)
            _wide_products(gm)
    const_transposed: list[int] = []
    contiguous: list[int] = []
    if block:  # one thread, a few rows: the product reads the weight in rows
        gm, graph_inputs = graphs["forward"]
        const_transposed, contiguous = _transposed_consts(gm, graph_inputs, n_const,
                                                          len(results))
    tangent_strides: list[tuple[int, ...]] = []
    if training:
        gm, graph_inputs = graphs["backward"]
        tangent_strides = _tangent_layouts(gm, graph_inputs, positions or [], len(example))
    programs = []
    cpp_loop = COMPILE and CPP_LOOP and _extension() is not None
    for name in ("forward", "backward") if training else ("forward",):
        gm, graph_inputs = graphs[name]
        if COMPILE:
            import torch._inductor.config as inductor_config

            # A step's pointwise work is small (B*H values): split across threads it pays
            # an OpenMP barrier per kernel and step, which a busy neighbour process stalls
            # (measured 1.7x slower beside other load). Below the compiled kernels' grain
            # the generated code runs on one thread; the GEMMs keep torch's threads.
            patch = {"cpp.threads": 1} if block or (_small_step(example, n_const) and
                                                    not split_pointwise) else {}
            # tanh as 2 / (1 + exp(-2x)) - 1 in the vectorised code: one exp where Sleef's
            # tanh costs about three (tanh is most of a gated step's pointwise time); within
            # 2e-7 absolute of torch.tanh in float32, 4e-16 in float64 (not bit-equal: small
            # values lose their relative precision, as every compiled step rounds its own way)
            patch["cpp.use_decompose_tanh"] = DECOMPOSE_TANH
            program = None
            if cpp_loop:  # the C++ wrapper, whose entry point the C++ loop calls
                try:
                    for cache in (True, False):  # a cached program may release the GIL
                        with torch.no_grad(), inductor_config.patch(patch), \
                                inductor_config.patch(get_cpp_wrapper_config()), \
                                inductor_config.patch({"cpp_wrapper": True,
                                                       "fx_graph_cache": cache}), \
                                _without_gil_release() if block else contextlib.nullcontext():
                            program = compile_fx_inner(gm, graph_inputs, cpp_wrapper=True,
                                                       is_backward=name == "backward")
                        if not block or _gil_free(program):
                            break
                    else:
                        raise PathDeclined("Inductor's C++ wrapper releases the GIL in each "
                                           "call, so its steps cannot run on other threads")
                except Exception as error:  # noqa: BLE001 - the Python wrapper may still build
                    if block or not _is_compile_failure(error):
                        raise
                    cpp_loop = False
            if program is None:
                with torch.no_grad(), inductor_config.patch(patch):
                    program = compile_fx_inner(gm, graph_inputs,
                                               is_backward=name == "backward")
            programs.append(program)
        else:
            programs.append(make_boxed_func(gm.forward))
    tangents = 0
    if training:
        tangents = sum(1 for n in graphs["backward"][0].graph.nodes
                       if n.op == "placeholder" and n.name.startswith("tangents"))
        if tangents != len(results):
            raise PathDeclined(f"the step's backward takes {tangents} tangents for "
                               f"{len(results)} outputs (an output that needs no gradient)")
    program = StepProgram(programs[0], programs[1] if training else None, len(results),
                          tangents, time.perf_counter() - begin, deferred, transposed,
                          const_transposed, contiguous, tangent_strides=tangent_strides)
    if cpp_loop:
        points = [_entry_point(p, program.libraries) for p in programs]
        if all(point is not None for point in points):
            program.entries = (points[0], points[1] if training else 0)
            program.results = (_result_count(graphs["forward"][0]),
                               _result_count(graphs["backward"][0]) if training else 0)
    if block and program.entries is None:
        raise PathDeclined("row blocks need the C++ loop, whose entry point was not found")
    return program


def _without_gil_release() -> contextlib.AbstractContextManager[None]:
    """Inductor's C++ wrapper without the GIL release its entry point begins with (which
    needs the GIL held by the calling thread): the row blocks call the entry point from
    torch's threads with the GIL released once around the whole loop."""
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

    original = CppWrapperCpu._write_input_preamble

    def preamble(self: Any) -> None:
        prefix = self.prefix
        splice = prefix.splice_jit

        def without(code: Any, strip: bool = False) -> None:
            if not (isinstance(code, str) and "gil_scoped_release" in code):
                splice(code, strip=strip)

        prefix.splice_jit = without
        try:
            original(self)
        finally:
            del prefix.splice_jit

    @contextlib.contextmanager
    def patched() -> Any:
        CppWrapperCpu._write_input_preamble = preamble
        try:
            yield
        finally:
            CppWrapperCpu._write_input_preamble = original

    return patched()


def _library_path(program: Any) -> str | None:
    """The path of the library Inductor loaded for ``program`` (compiled with its C++
    wrapper): the ``__file__`` of the binding's module in the compiled callable's closure."""
    call = getattr(program, "current_callable", None)
    for cell in getattr(call, "__closure__", None) or ():
        module = getattr(cell.cell_contents, "__self__", None)  # the binding's module
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".so"):
            return path
    return None


def _gil_free(program: Any) -> bool:
    """Whether the C++ source of ``program`` (compiled with the C++ wrapper) never touches
    the GIL, read next to the library Inductor loaded."""
    path = _library_path(program)
    if path is None:
        return False
    try:
        with open(path[:-3] + ".cpp", encoding="utf-8") as source:
            return "gil_scoped" not in source.read()
    except OSError:
        return False


def _result_count(gm: fx.GraphModule) -> int:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return len(output.args[0])


def _entry_point(program: Any, libraries: list[Any]) -> int | None:
    """The address of the C++ entry point of code Inductor compiled with its C++ wrapper
    (``inductor_entry_impl`` in the library it loaded), or None where it cannot be found: the
    Python loop calls the program instead. The library's handle goes into ``libraries``."""
    path = _library_path(program)
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)  # the loaded library again (dlopen counts it)
        address = ctypes.cast(getattr(library, _ENTRY_SYMBOL), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    libraries.append(library)
    return address


#: Captured (and compiled) steps by what they compute: the step graph's code and its input
#: shapes, strides and dtypes. Two cells with the same step (the two directions of a
#: bidirectional layer, the layers of a stack, a new instance of the same class) share one
#: compile.
_programs: dict[tuple, StepProgram] = {}


def _program(entry: TracedCell, example: list[Tensor], training: bool,
             n_const: int, split_pointwise: bool = False, block: bool = False) -> StepProgram:
    failure = "block_failure" if block else "failure"  # a block program only declines blocks
    if entry.failure is not None or getattr(entry, failure) is not None:
        raise PathDeclined(entry.failure or getattr(entry, failure))
    key = (entry.step.code, tuple((tuple(t.shape), t.dtype, t.device) for t in example),
           training, n_const, COMPILE, CPP_LOOP, DEFER_WEIGHT_GRADIENTS, STEP_PARALLEL_ELEMS,
           DECOMPOSE_TANH, WIDE_PRODUCTS and torch.get_num_threads() > 1, WIDE_PRODUCT_ROWS,
           split_pointwise, block)
    program = _programs.get(key)
    if program is None:
        try:
            program = _capture(entry.step, example, training, n_const, entry.positions,
                               split_pointwise, block)
        except PathDeclined as declined:
            setattr(entry, failure, str(declined))
            raise
        except Exception as error:
            if not _is_compile_failure(error):
                raise
            setattr(entry, failure, f"torch.compile failed: {_first_line(error)}")
            raise PathDeclined(getattr(entry, failure)) from error
        _programs[key] = program
    return program


def _small_step(example: list[Tensor], n_const: int) -> bool:
    """Whether the step's largest per-step input (state, hoisted projection) has fewer values
    than :data:`STEP_PARALLEL_ELEMS`: its pointwise code is compiled for one thread."""
    return max((t.numel() for t in example[n_const:]), default=0) < STEP_PARALLEL_ELEMS


def _programs_for(entry: TracedCell, example: list[Tensor], training: bool,
                  n_const: int) -> tuple[StepProgram, ...]:
    """The step's program, and where its pointwise code was compiled for one thread
    (small steps) and torch has more, the one that splits it across them."""
    program = _program(entry, example, training, n_const)
    if not (COMPILE and ADAPTIVE_THREADS and torch.get_num_threads() > 1
            and _small_step(example, n_const)):
        return (program,)
    if program.choice is None:
        program.choice = _Choice()
    try:
        return program, _program(entry, example, training, n_const, split_pointwise=True)
    except PathDeclined:
        entry.failure = None  # the one-thread program serves alone
        return (program,)


class _Choice:
    """Which of a step's two programs (:func:`_programs_for`) serves the next call: each is
    timed (the forward's seconds per step, smoothed), the faster one serves, and every
    :attr:`EXPLORE` calls the other is timed again, since which is faster depends on the
    machine's other load. Measured at row 15's step (Intel Xeon model 207, 2 threads, quiet,
    interleaved in one process, 30 pairs): the split program 0.94-0.95x the one-thread one's
    time; beside a CPU-bound neighbour 0.90x in the median, each pair anywhere from 0.45 to
    1.9x."""

    EXPLORE = 16

    def __init__(self) -> None:
        self.seconds: list[float | None] = [None, None]
        self.calls = 0

    def pick(self) -> int:
        self.calls += 1
        for index, seconds in enumerate(self.seconds):
            if seconds is None:
                return index
        fast, slow = self.seconds
        best = 0 if cast(float, fast) <= cast(float, slow) else 1
        return 1 - best if self.calls % self.EXPLORE == 0 else best

    def record(self, index: int, seconds: float) -> None:
        old = self.seconds[index]
        self.seconds[index] = seconds if old is None else old + 0.3 * (seconds - old)


def _check(cell: nn.Module, entry: TracedCell, values: list[Tensor],
           per_step: list[Tensor], inputs: Tensor, state: State) -> None:
    """The split graphs, uncompiled, against the cell's forward on the first two steps.

    A mismatch is looked at twice before the path is declined: the first eager forward of a
    process can differ from the same call repeated by more than float32 rounding when the
    machine is busy (measured: 2.8e-5 in one of 24 processes started two at a time on the
    2-core Intel box, with nothing of rnnkit's in the computation; the repeated calls agreed
    bit for bit). What a trace bakes in differs on every evaluation."""
    try:
        _compare(cell, entry, values, per_step, inputs, state)
    except PathDeclined:
        _compare(cell, entry, values, per_step, inputs, state)


def _agrees(want: Tensor, have: Tensor) -> bool:
    """``have`` equals ``want`` up to rounding: 1e-10 (float64) or 1e-5 (else) of the larger
    of 1 and ``want``'s largest magnitude, the same shape, NaN where ``want`` has NaN."""
    tolerance = 1e-10 if want.dtype == torch.float64 else 1e-5
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
    return want.shape == have.shape and torch.allclose(
        want, have, rtol=0, atol=tolerance * scale, equal_nan=True)


def _compare(cell: nn.Module, entry: TracedCell, values: list[Tensor],
             per_step: list[Tensor], inputs: Tensor, state: State) -> None:
    leaves = tree_flatten(state)[0]
    with torch.no_grad():
        for t in range(min(2, inputs.shape[0])):
            start = tree_unflatten(leaves, entry.state_spec)
            expected_out, expected_state = cell(inputs[t], start)
            arguments = [*values, inputs[t], *(p[t] for p in per_step), *leaves]
            unique = entry.step(*[arguments[i] for i in entry.used])
            got = [unique[k] for k in entry.positions]
            for want, have in zip([expected_out, *tree_flatten(expected_state)[0]], got,
                                  strict=True):
                if not _agrees(want, have):
                    raise PathDeclined(
                        f"the traced step differs from {type(cell).__name__}.forward at step "
                        f"{t} (the cell decides something at run time that a trace bakes in)")
            leaves = list(got[1:])


@dataclass
class _Schedule:
    """Which steps run in which order, and where the lengths mask them."""

    order: list[int]  # time indices in processing order
    steps: int  # T (outputs past the longest sequence are zero)
    mask: Tensor | None = None  # (T', B, 1) bool: where rows still run (None: every row)
    first_masked: int = 0  # the shortest length: before it every row runs
    blocks: int = 1  # row blocks, each run on its own thread (C++ loop only, BATCH_BLOCKS)

    def keep(self, t: int) -> Tensor | None:
        """Step ``t``'s mask ``(B, 1)``, or None where every row runs (csrc/traced_step.cpp's
        keep_at)."""
        if self.mask is None or not self.first_masked <= t < self.mask.shape[0]:
            return None
        return self.mask[t]


def _direct(compiled: Callable[[list[Tensor]], Any]) -> Callable[[list[Tensor]], Any]:
    """The generated code's own boxed entry point behind Inductor's wrapper: the wrapper's
    bookkeeping (autotune cache, runtime metrics, the profiler's record) costs more per call
    than a step's pointwise kernel; the entry point keeps its input-alignment guard."""
    direct = getattr(compiled, "current_callable", None)
    return direct if callable(direct) else compiled


def _stack_steps(steps: list[Tensor | None], shape: torch.Size, like: Tensor) -> Tensor:
    """``(T, ...)`` from one tensor (or None: zeros of ``shape``) per time index, one copy."""
    like = next((value for value in steps if value is not None), like)
    zero = None
    filled = []
    for value in steps:
        if value is None:
            if zero is None:
                zero = like.new_zeros(shape)
            value = zero
        filled.append(value)
    return torch.stack(filled)


class _Sequence(torch.autograd.Function):
    """The whole recurrence as one autograd node: the compiled forward called once per step,
    the compiled backward once per step in reverse order, no per-step autograd graph.

    Inputs (flat): the step's constant inputs (parameters, buffers), its per-step inputs
    stacked over time ``(T, ...)`` (the hoisted projection, ``x``), the initial state leaves.
    Outputs: ``(T, B, H_out)`` and the final state leaves.
    Per step only the compiled code runs and the lists that feed it are built: the per-step
    inputs are split into views once, the outputs and the input gradients are stacked once
    at the end.
    """

    @staticmethod
    def forward(ctx, program: StepProgram, entry: TracedCell, schedule: _Schedule,
                layout: tuple[int, int, int], *flat: Tensor) -> tuple[Tensor, ...]:
        n_const, n_step, n_state = layout
        consts = list(flat[:n_const])
        leaves = [s.contiguous() for s in flat[n_const + n_step:]]
        out_index, state_index = entry.positions[0], entry.positions[1:]
        training = program.backward is not None
        ctx.program, ctx.entry, ctx.schedule, ctx.layout = program, entry, schedule, layout
        ctx.shapes = [p[0].shape for p in flat[n_const:n_const + n_step]]
        if program.entries is not None:  # the loop in C++ (csrc/traced_step.cpp)
            for i in program.const_transposed:
                consts[i] = consts[i].t().contiguous()
            outputs, leaves, ctx.saved_steps = _extension().traced_forward(
                entry=program.entries[0], n_results=program.results[0],
                n_unique=program.outputs, out_index=out_index, state_index=list(state_index),
                consts=consts, per_step=list(flat[n_const:n_const + n_step]), leaves=leaves,
                order=schedule.order, keep=schedule.mask, first_masked=schedule.first_masked,
                steps=schedule.steps, training=training, chunks=schedule.blocks)
            return (outputs, *leaves)
        assert schedule.blocks == 1, "row blocks run in the C++ loop only"
        per_step = [p.unbind(0) for p in flat[n_const:n_const + n_step]]  # T x (...) views
        call, n_out = _direct(program.forward), program.outputs
        saved: dict[int, Any] = {}
        outs: list[Tensor | None] = [None] * schedule.steps
        for t in schedule.order:
            results = call([*consts, *(p[t] for p in per_step), *leaves])
            out, new = results[out_index], [results[k] for k in state_index]
            keep = schedule.keep(t)
            if keep is not None:
                new = [torch.where(keep, n, o) for n, o in zip(new, leaves, strict=True)]
                out = torch.where(keep, out, 0.0)
            outs[t] = out
            if training:
                saved[t] = results[n_out:]
            leaves = [n.contiguous() for n in new]
        first = outs[schedule.order[0]]
        outputs = _stack_steps(outs, first.shape, first)  # (T, B, H_out)
        ctx.saved_steps = saved
        return (outputs, *leaves)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs: Tensor, *grad_leaves: Tensor) -> tuple[Tensor | None, ...]:
        # gradients arrive materialised (zeros where the caller's loss does not reach)
        program, schedule, positions = ctx.program, ctx.schedule, ctx.entry.positions
        n_const, n_step, n_state = ctx.layout
        saved = ctx.saved_steps
        if saved is None:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access "
                "saved tensors after they have already been freed). Specify "
                "retain_graph=True if you need to backward through the graph a second time.")
        if not _retains_graph():  # freed when this backward returns, as autograd frees
            ctx.saved_steps = None  # the tensors a Function saves (not with the graph)
        needs = ctx.needs_input_grad[4:]
        steps = schedule.steps
        if program.entries is not None:
            return _cpp_backward(ctx, saved, grad_outputs, list(grad_leaves))
        call, n_out = _direct(program.backward), program.outputs
        # T x (B, H_out) views; made contiguous per step where the compiled backward reads one
        # as it is (an output that is also the state gets the sum of two tangents: a new
        # tensor), not copied whole (an expanded gradient, of a sum, has no memory of its own)
        d_outs = grad_outputs.unbind(0)
        d_leaves = list(grad_leaves)
        grad_consts: list[Tensor | None] = [None] * n_const
        deferred = program.deferred
        static = deferred.static if deferred else []
        n_inputs = n_const + n_step + n_state
        # per frontier value: its one value (static) or one per time index
        frontier: list[list[Any]] = [[None] * (1 if s else steps) for s in static]
        grad_steps: list[list[Tensor | None] | None] = [
            [None] * steps if needs[n_const + i] else None for i in range(n_step)]
        # what the loop reads and writes, worked out once
        frontier_slots = [(values, 0 if is_static else None)
                          for values, is_static in zip(frontier, static, strict=True)]
        const_slots = [i for i in range(n_const) if needs[i]]
        step_slots = [(n_const + i, per_t) for i, per_t in enumerate(grad_steps)
                      if per_t is not None]
        shared = len(set(positions)) < len(positions)  # an output that is also the state
        transposed, swap = program.transposed, cast(dict[int, Tensor], {})
        for t in reversed(schedule.order):
            keep = schedule.keep(t)
            d_out = d_outs[t]
            carry: list[Tensor | None] | None = None
            if keep is not None:  # rows past their length: the state passes through
                d_out = torch.where(keep, d_out, 0.0)
                carry = [torch.where(keep, 0.0, d) for d in d_leaves]
                d_leaves = [torch.where(keep, d, 0.0) for d in d_leaves]
            if shared:
                tangents: list[Tensor | None] = [None] * n_out
                for index, d in zip(positions, [d_out, *d_leaves], strict=True):
                    tangents[index] = d if tangents[index] is None else tangents[index] + d
            else:
                tangents = [d_out, *d_leaves]
            arguments = saved[t]
            if transposed:  # the static weights the backward takes transposed, made once
                if not swap:
                    swap.update({j: arguments[j].t().contiguous() for j in transposed})
                arguments = [swap.get(j, a) for j, a in enumerate(arguments)]
            grads = call([*arguments, *[_laid_out(d, s) for d, s in
                                        zip(tangents, program.tangent_strides, strict=True)]])
            for (values, slot), value in zip(frontier_slots, grads[n_inputs:], strict=True):
                values[t if slot is None else slot] = value
            for i in const_slots:
                if grads[i] is not None:
                    grad_consts[i] = grads[i] if grad_consts[i] is None else \
                        grad_consts[i].add_(grads[i])
            for i, per_t in step_slots:
                per_t[t] = grads[i]
            state_grads = grads[n_const + n_step:n_inputs]
            if carry is None and all(g is not None for g in state_grads):
                d_leaves = list(state_grads)
                continue
            carry = carry if carry is not None else [None] * n_state
            d_leaves = [(g if g is not None else torch.zeros_like(d)) if c is None
                        else (c if g is None else g + c)
                        for g, c, d in zip(state_grads, carry, d_leaves, strict=True)]
        stacked = [None if per_t is None else
                   _stack_steps(per_t, ctx.shapes[i], grad_outputs)  # (T, ...)
                   for i, per_t in enumerate(grad_steps)]
        if deferred is not None:
            ran = sorted(schedule.order)
            operands: list[Any] = []
            for values, is_static in zip(frontier, static, strict=True):
                if is_static:
                    operands.append(values)
                    continue
                # a frontier value that is a per-step input's gradient at every step (the
                # gate gradient, typically) reuses that gradient's stacked copy
                same = next((i for i, per_t in enumerate(grad_steps) if per_t is not None
                             and len(ran) == steps
                             and all(values[t] is per_t[t] for t in ran)), None)
                operands.append(stacked[same] if same is not None
                                else torch.stack([values[t] for t in ran]))
            summed = _run_deferred(deferred, operands, len(schedule.order))
            grad_consts = [g if need else None
                           for g, need in zip(summed, needs[:n_const], strict=True)]
        return (None, None, None, None, *grad_consts, *stacked,
                *[d if need else None for d, need in zip(d_leaves, needs[n_const + n_step:],
                                                         strict=True)])


def _retains_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True where
    torch cannot tell."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


def _cpp_backward(ctx: Any, saved: Any, grad_outputs: Tensor, grad_leaves: list[Tensor]
                  ) -> tuple[Tensor | None, ...]:
    """:meth:`_Sequence.backward` with its loop in C++ (csrc/traced_step.cpp)."""
    program, schedule = ctx.program, ctx.schedule
    n_const, n_step, n_state = ctx.layout
    needs = list(ctx.needs_input_grad[4:])
    deferred = program.deferred
    static = deferred.static if deferred else []
    grad_consts, stacked, operands, d_leaves = _extension().traced_backward(
        entry=program.entries[1], n_results=program.results[1], saved=saved,
        grad_outputs=grad_outputs, grad_leaves=grad_leaves, positions=list(ctx.entry.positions),
        n_unique=program.outputs, tangent_strides=[list(s) for s in program.tangent_strides],
        transposed=program.transposed, contiguous=program.contiguous, n_const=n_const,
        n_step=n_step, needs=needs, frontier_static=static, order=schedule.order,
        keep=schedule.mask, first_masked=schedule.first_masked, steps=schedule.steps)
    stacked = [None if not need else value if value is not None else  # (T, ...)
               grad_outputs.new_zeros(schedule.steps, *shape)
               for value, need, shape in zip(stacked, needs[n_const:n_const + n_step],
                                             ctx.shapes, strict=True)]
    if deferred is not None:
        frontier = [[value] if is_static else value
                    for value, is_static in zip(operands, static, strict=True)]
        summed = _run_deferred(deferred, frontier, len(schedule.order))
        grad_consts = [g if need else None
                       for g, need in zip(summed, needs[:n_const], strict=True)]
    return (None, None, None, None, *grad_consts, *stacked,
            *[d if need else None for d, need in zip(d_leaves, needs[n_const + n_step:],
                                                     strict=True)])


def _over_time(graph: fx.GraphModule, consts: list[Tensor], inputs: Tensor) -> list[Tensor]:
    """The hoisted graph ``(params..., x) -> per-step values`` for all ``T`` steps of
    ``inputs (T, B, H_in)`` at once, batched over time as ``torch.vmap`` would, except that a
    product of a time-batched matrix and unbatched weights (the input projection
    ``addmm(b, x, W^T)``) runs as one GEMM over ``T*B`` rows with its bias: vmap turns it into a
    batched matmul plus a separate pass adding the bias over all steps."""
    aten = torch.ops.aten
    steps = inputs.shape[0]
    values: dict[fx.Node, Any] = {}
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, [*consts, inputs], strict=True):
        values[node] = value
    batched = {placeholders[-1]}  # nodes whose values carry a leading time dimension
    for node in graph.graph.nodes:
        if node.op == "output":
            return [values[n] if n in batched else values[n].expand(steps, *values[n].shape)
                    for n in node.args[0]]
        if node.op != "call_function":
            continue
        sources = node.all_input_nodes
        if node.target is operator.getitem:  # one result of a multi-result operation
            values[node] = values[sources[0]][node.args[1]]
            if sources[0] in batched:
                batched.add(node)
            continue
        if not any(n in batched for n in sources):
            args = fx.node.map_arg(node.args, values.__getitem__)
            values[node] = node.target(*args, **fx.node.map_arg(node.kwargs, values.__getitem__))
            continue
        batched.add(node)
        if node.target in (aten.mm.default, aten.addmm.default) and not node.kwargs and \
                node.args[-2] in batched and node.args[-1] not in batched:
            rows = values[node.args[-2]]  # (T, M, K)
            flat = rows.reshape(-1, rows.shape[-1])  # (T*M, K)
            if node.target is aten.mm.default:
                values[node] = torch.mm(flat, values[node.args[1]]).view(steps, rows.shape[1], -1)
                continue
            bias = values[node.args[0]]
            if node.args[0] not in batched and (bias.dim() < 2 or bias.shape[0] == 1):
                values[node] = torch.addmm(bias.reshape(-1), flat, values[node.args[2]]).view(
                    steps, rows.shape[1], -1)  # (T, M, N)
                continue

        def one(*tensors: Tensor, node: fx.Node = node, sources: list[fx.Node] = sources
                ) -> Any:
            lookup = dict(zip(sources, tensors, strict=True))
            return node.target(*fx.node.map_arg(node.args, lookup.__getitem__),
                               **fx.node.map_arg(node.kwargs, lookup.__getitem__))

        in_dims = tuple(0 if n in batched else None for n in sources)
        values[node] = torch.vmap(one, in_dims=in_dims)(*(values[n] for n in sources))
    raise AssertionError("a graph without an output")


def _blocks(entry: TracedCell, batch: int, weights: list[Tensor]) -> int:
    """How many row blocks a batch of ``batch`` rows splits into (:data:`BATCH_BLOCKS`);
    ``weights``: the step's constant inputs."""
    threads = torch.get_num_threads()
    if not (BATCH_BLOCKS and COMPILE and CPP_LOOP and threads > 1) or \
            entry.block_failure is not None or batch % threads or \
            batch // threads < BLOCK_MIN_ROWS or _extension() is None or \
            sum(w.numel() * w.element_size() for w in weights) > BLOCK_MAX_WEIGHT_BYTES:
        return 1
    return threads


def _rows_independent(entry: TracedCell, values: list[Tensor], per_step: list[Tensor],
                      inputs: Tensor, state: State, blocks: int) -> bool:
    """Whether the traced step (uncompiled) gives each block of rows what it gives them in
    the whole batch, on the call's first two steps: a cell that mixes rows (a norm over the
    batch, a batch mean) cannot be split into row blocks."""
    try:
        return _rows_agree(entry, values, per_step, inputs, state, blocks)
    except Exception:  # noqa: BLE001 - a step that cannot run on fewer rows mixes them
        return False


def _rows_agree(entry: TracedCell, values: list[Tensor], per_step: list[Tensor],
                inputs: Tensor, state: State, blocks: int) -> bool:
    rows = inputs.shape[1] // blocks
    leaves = tree_flatten(state)[0]
    with torch.no_grad():
        for t in range(min(2, inputs.shape[0])):
            arguments = [*values, inputs[t], *(p[t] for p in per_step), *leaves]
            whole = entry.step(*[arguments[i] for i in entry.used])
            for b in range(blocks):
                part = slice(b * rows, (b + 1) * rows)
                sliced = [*values, inputs[t][part], *(p[t][part] for p in per_step),
                          *(leaf[part] for leaf in leaves)]
                block = entry.step(*[sliced[i] for i in entry.used])
                if not all(_agrees(want[part], have)
                           for want, have in zip(whole, block, strict=True)):
                    return False
            leaves = [whole[k] for k in entry.positions[1:]]
    return True


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
    steps = inputs.shape[0]
    if lengths is not None:  # the loop zeroes padded inputs: inf or nan there stays out
        valid = torch.arange(steps, device=inputs.device)[:, None] < lengths[None, :]
        inputs = torch.where(valid.unsqueeze(-1), inputs, 0.0)  # (T, B, H_in)
    hoisted: list[Tensor] = []
    if entry.hoisted is not None:
        hoisted = _over_time(entry.hoisted, values, inputs)  # (T, ...) each
    if not entry.checked:
        _check(cell, entry, values, hoisted, inputs, state)
        entry.checked = True
    leaves = tree_flatten(state)[0]
    # the step graph's inputs, in order: constants (parameters, buffers), x, hoisted, state
    count, n_hoisted = len(values), len(hoisted)
    everything = [*values, inputs, *hoisted]
    consts = [i for i in entry.used if i < count]
    per_step = [i for i in entry.used if count <= i < count + 1 + n_hoisted]
    states = [i - count - 1 - n_hoisted for i in entry.used if i >= count + 1 + n_hoisted]
    if states != list(range(len(leaves))):  # the state is always read
        raise PathDeclined("the step does not read every part of its state")
    training = torch.is_grad_enabled() and any(
        t.requires_grad for t in [*values, inputs, *hoisted, *leaves])
    example = [*(everything[i] for i in consts), *(everything[i][0] for i in per_step),
               *leaves]
    blocks = _blocks(entry, inputs.shape[1], example[:len(consts)])
    if any(t.dim() == 0 or t.shape[0] != inputs.shape[1] for t in example[len(consts):]):
        blocks = 1  # a per-step value or state without the batch first
    program = None
    if blocks > 1:
        rows = inputs.shape[1] // blocks
        if entry.rows_independent is None:  # before compiling for blocks
            entry.rows_independent = _rows_independent(entry, values, hoisted, inputs, state,
                                                       blocks)
            if not entry.rows_independent:
                entry.block_failure = "the step mixes the rows of its batch"
        if entry.rows_independent:
            try:
                program = _program(entry, [*example[:len(consts)],
                                           *(t[:rows] for t in example[len(consts):])],
                                   training, len(consts), block=True)
            except PathDeclined:
                program = None
            except Exception as error:  # noqa: BLE001 - the shared step still serves
                entry.block_failure = f"compiling the blocks failed ({_first_line(error)})"
                program = None
        if program is None:
            blocks = 1
    choice = None
    if program is None:
        programs = _programs_for(entry, example, training, len(consts))
        choice = programs[0].choice if len(programs) > 1 else None
        which = choice.pick() if choice is not None else 0
        program = programs[which]
    if lengths is None:
        order = list(range(steps - 1, -1, -1)) if reverse else list(range(steps))
        schedule = _Schedule(order, steps, blocks=blocks)
    else:
        max_len, min_len = int(lengths.max()), int(lengths.min())
        order = list(range(max_len - 1, -1, -1)) if reverse else list(range(max_len))
        valid = torch.arange(max_len, device=inputs.device)[:, None] < lengths[None, :]
        schedule = _Schedule(order, steps, valid.unsqueeze(-1), min_len,  # mask (T', B, 1)
                             blocks)
    flat = [*(everything[i] for i in consts), *(everything[i] for i in per_step), *leaves]
    layout = (len(consts), len(per_step), len(leaves))
    began = time.perf_counter()
    if not training:
        with torch.no_grad():
            results = _Sequence.forward(_NoContext(), program, entry, schedule, layout, *flat)
    else:
        results = _Sequence.apply(program, entry, schedule, layout, *flat)
    if choice is not None:
        choice.record(which, (time.perf_counter() - began) / max(len(order), 1))
    return results[0], tree_unflatten(list(results[1:]), entry.state_spec)


class _NoContext:
    """Stands in for autograd's context when the forward runs without gradients."""

    needs_input_grad: tuple[bool, ...] = ()


def _is_compile_failure(error: Exception) -> bool:
    module = type(error).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" \
        in type(error).__name__
