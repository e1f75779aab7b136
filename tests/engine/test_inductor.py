"""The "inductor" path: a user's cell traced, its input projection hoisted, its step compiled.

Oracles: the eager loop over the cell's own forward (``engine="loop"``) and finite
differences (gradcheck). Most tests run the traced graphs uncompiled (``inductor.COMPILE =
False``): they test the tracing, the hoisting and the lengths logic without a compile each;
one test compiles for real.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import LSTMCell
from rnnkit.engine import EngineFallbackWarning, dispatch, explain, inductor
from rnnkit.layers import Fold, Recurrence


class TwoGates(nn.Module):
    """The docs' example: a user's cell with two LSTM-like gates (docs/engine.md)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = self.output_size = hidden_size
        self.ih = nn.Linear(input_size, 2 * hidden_size)
        self.hh = nn.Linear(hidden_size, 2 * hidden_size, bias=False)

    def forward(self, x, h):
        keep, candidate = (self.ih(x) + self.hh(h)).chunk(2, dim=1)
        keep = torch.sigmoid(keep)
        h = keep * h + (1 - keep) * torch.tanh(candidate)
        return h, h


class PairState(nn.Module):
    """A cell with a tuple state (h, c) and an input-only layer norm to hoist."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = (hidden_size, hidden_size)
        self.output_size = hidden_size
        self.ih = nn.Linear(input_size, 2 * hidden_size)
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.hh = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x, state):
        h, c = state
        gates = torch.relu(self.norm(self.ih(x))) + self.hh(h)
        i, g = gates.chunk(2, dim=1)
        c = torch.sigmoid(i) * c + torch.tanh(g)
        h = torch.tanh(c) * 0.5
        return h * 2, (h, c)


class ScaledRecurrent(nn.Module):
    """A recurrent weight built from two parameters (a per-row gain, as in weight
    normalisation) and a bias on the recurrent projection: their gradients are sums over
    time of a product, a gain times it and a row sum, all summed after the backward loop."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = self.output_size = hidden_size
        self.ih = nn.Linear(input_size, hidden_size)
        self.weight = nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.5)
        self.gain = nn.Parameter(torch.rand(hidden_size, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(hidden_size) * 0.1)

    def forward(self, x, h):
        h = torch.tanh(self.ih(x) + h @ (self.weight * self.gain).T + self.bias)
        return h, h


@pytest.fixture
def uncompiled(monkeypatch):
    monkeypatch.setattr(inductor, "COMPILE", False)


def _grads(layer, x, lengths):
    out, state = layer(x, lengths=lengths)
    leaves = [state] if isinstance(state, torch.Tensor) else list(state)
    weights = torch.linspace(-1, 1, out.numel(), dtype=x.dtype).view_as(out)
    loss = (out * weights).sum() + sum((s * s).sum() for s in leaves)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return [out, *leaves, *grads]


def _assert_equal(ours, theirs, tol):
    for a, b in zip(ours, theirs, strict=True):
        scale = max(float(b.detach().abs().max()), 1.0)
        torch.testing.assert_close(a, b, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("fold", [False, True], ids=["Recurrence", "Fold"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "ragged"])
@pytest.mark.parametrize("make", [TwoGates, PairState,
                                  lambda i, h: LSTMCell(i, h, layer_norm=True)],
                         ids=["TwoGates", "PairState", "LSTMCell-ln"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)],
                         ids=["f64", "f32"])
def test_traced_step_equals_the_loop(uncompiled, make, lengths, reverse, fold, dtype, tol):
    torch.manual_seed(0)
    cell = make(3, 4).to(dtype)
    driver = Fold if fold else Recurrence
    ours = driver(cell, go_backwards=reverse, engine="inductor")
    theirs = driver(cell, go_backwards=reverse, engine="loop")
    x = torch.randn(6, 3, 3, dtype=dtype)
    if lengths:
        x[5, 1] = float("nan")  # padding garbage must not leak into outputs or gradients
    x.requires_grad_(True)
    plan = dispatch.make_plan(ours, x, lengths)
    assert plan.paths() == ["inductor"], str(plan)
    _assert_equal(_grads(ours, x, lengths), _grads(theirs, x, lengths), tol)


@pytest.mark.parametrize("make", [TwoGates, PairState, ScaledRecurrent])
def test_weight_gradients_are_summed_after_the_loop(uncompiled, monkeypatch, make):
    """The per-step weight-gradient products leave the backward loop (one GEMM over all
    steps afterwards); the gradients equal the loop's, and the same with it switched off."""
    torch.manual_seed(6)
    cell = make(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = [6, 2, 4]
    theirs = _grads(Recurrence(cell, engine="loop"), x, lengths)
    for defer in (True, False):
        monkeypatch.setattr(inductor, "DEFER_WEIGHT_GRADIENTS", defer)
        inductor._programs.clear()
        _assert_equal(_grads(Recurrence(cell, engine="inductor"), x, lengths), theirs, 1e-10)
        (program,) = [p for key, p in inductor._programs.items() if key[2]]  # training
        assert (program.deferred is not None) == defer


def test_the_input_projection_is_hoisted(uncompiled):
    text = explain(Recurrence(TwoGates(3, 4), engine="inductor"), torch.randn(5, 2, 3))
    assert "TwoGates -> inductor" in text and "the input projection: addmm" in text
    assert "(1 GEMM(s) per step)" in text  # only the recurrent one is left in the loop
    text = explain(Recurrence(PairState(3, 4), engine="inductor"), torch.randn(5, 2, 3))
    assert "the input projection: addmm" in text


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(uncompiled, reverse):
    torch.manual_seed(1)
    cell = PairState(2, 3).double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3])

    def run(x, h0, c0):
        out, (h, c) = inductor.run_recurrence(cell, x, (h0, c0), lengths=lengths,
                                              reverse=reverse)
        return out, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 2), (4, 1, 2), (3, 2, 1)],
                         ids=["T1-B1-H1", "T1", "B1", "H1"])
def test_edge_sizes(uncompiled, shape):
    steps, batch, hidden = shape
    torch.manual_seed(2)
    cell = TwoGates(2, hidden).double()
    x = torch.randn(steps, batch, 2, dtype=torch.float64, requires_grad=True)
    lengths = [max(1, steps - i) for i in range(batch)]
    for reverse in (False, True):
        ours = Recurrence(cell, go_backwards=reverse, engine="inductor")
        theirs = Recurrence(cell, go_backwards=reverse, engine="loop")
        _assert_equal(_grads(ours, x, lengths), _grads(theirs, x, lengths), 1e-10)
        # a loss of out.sum(): an expanded output gradient, read per step by compiled code
        # that checks its inputs' strides
        expanded = [torch.autograd.grad(layer(x, lengths=lengths)[0].sum(), [x, *cell.parameters()])
                    for layer in (ours, theirs)]
        _assert_equal(expanded[0], expanded[1], 1e-10)


class ReadsValues(TwoGates):
    def forward(self, x, h):
        if h.abs().sum() > 1:  # data-dependent Python control flow
            h = h * 0.5
        return super().forward(x, h)


class Drops(TwoGates):
    def forward(self, x, h):
        return super().forward(nn.functional.dropout(x, 0.5, self.training), h)


class CountsSteps(TwoGates):
    def __init__(self, *args):
        super().__init__(*args)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x, h):
        self.steps += 1  # writes into a buffer at every step
        return super().forward(x, h)


class PythonCounter(TwoGates):
    """Decides something at run time that a trace bakes in: the check catches it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = 0

    def forward(self, x, h):
        self.calls += 1
        out, h = super().forward(x, h)
        return out * self.calls, h


@pytest.mark.parametrize(("cell", "reason"), [
    (ReadsValues(3, 4), "Python control flow or a value read from a tensor"),
    (Drops(3, 4), "draws random numbers"),
    (CountsSteps(3, 4), "writes into its input, state, a parameter or a buffer"),
])
def test_what_the_trace_cannot_serve_runs_on_the_loop_and_says_why(uncompiled, cell, reason):
    x = torch.randn(5, 2, 3)
    layer = Recurrence(cell, engine="inductor")
    with pytest.warns(EngineFallbackWarning, match=reason):
        text = explain(layer, x)
    assert f"{type(cell).__name__} -> loop (engine='inductor' cannot serve" in text
    assert reason in text
    torch.manual_seed(3)
    ours = layer(x)[0]
    torch.manual_seed(3)
    if isinstance(cell, CountsSteps):
        cell.steps.zero_()
    theirs = Recurrence(cell, engine="loop")(x)[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_dropout_in_eval_mode_is_traced(uncompiled):
    cell = Drops(3, 4).eval()
    assert dispatch.make_plan(Recurrence(cell, engine="inductor"),
                              torch.randn(5, 2, 3)).paths() == ["inductor"]


def test_a_trace_that_differs_from_the_forward_is_declined(uncompiled):
    cell = PythonCounter(3, 4)
    x = torch.randn(5, 2, 3)
    layer = Recurrence(cell, engine="inductor")
    plan = dispatch.make_plan(layer, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _ = dispatch.run_cell(plan.runs[0], x, torch.zeros(2, 4))
    assert plan.runs[0].ran == "loop"
    assert "differs from PythonCounter.forward" in plan.runs[0].declined
    assert "inductor path declined" in str(plan)
    assert any("differs from PythonCounter.forward" in str(w.message) for w in caught)
    assert out.shape == (5, 2, 4)


def test_a_mask_with_gaps_runs_on_the_loop(uncompiled):
    mask = torch.tensor([[True, False, True, True]] * 2)
    plan = dispatch.make_plan(Recurrence(TwoGates(3, 4), engine="inductor"),
                              torch.randn(4, 2, 3), mask=mask)
    assert plan.paths() == ["loop"] and "a mask with gaps" in str(plan)


def test_drop_ins_run_each_layer_traced(uncompiled):
    torch.manual_seed(4)
    ours = rnnkit.GRU(3, 4, num_layers=2, bidirectional=True, engine="inductor").double()
    reference = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert dispatch.make_plan(ours, x).paths() == ["inductor"] * 4
    out, h = ours(x)
    expected, expected_h = reference(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, expected_h, rtol=0, atol=1e-12)


def test_compiled_for_real_equals_the_loop():
    """One real torch.compile (Inductor, CPU): values and gradients within float32 rounding."""
    torch.manual_seed(5)
    cell = TwoGates(3, 4)
    ours = Recurrence(cell, engine="inductor")
    x = torch.randn(5, 3, 3, requires_grad=True)
    plan = dispatch.make_plan(ours, x, [5, 2, 4])
    if plan.paths() != ["inductor"]:
        pytest.skip(str(plan))
    got = _grads(ours, x, [5, 2, 4])
    run = dispatch.plan_cell(cell, x, "inductor")
    dispatch.run_cell(run, x, torch.zeros(3, 4), torch.tensor([5, 2, 4]))
    if run.ran != "inductor":
        pytest.skip(f"torch.compile cannot serve here: {run.declined}")
    _assert_equal(got, _grads(Recurrence(cell, engine="loop"), x, [5, 2, 4]), 1e-5)


@pytest.mark.parametrize("make", [TwoGates, PairState, ScaledRecurrent,
                                  lambda i, h: LSTMCell(i, h, layer_norm=True)],
                         ids=["TwoGates", "PairState", "ScaledRecurrent", "LSTMCell-ln"])
def test_the_hoisted_part_runs_over_time_as_vmap_would(make):
    """The hoisted graph over all steps at once (the input projection one addmm over T*B
    rows) equals torch.vmap over time of the same graph, values and gradients."""
    torch.manual_seed(7)
    cell = make(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    entry = inductor.traced(cell, x[0], inductor.example_state(cell, 2, x))
    assert entry.hoisted is not None
    _, values = inductor._tensors(cell)
    ours = inductor._over_time(entry.hoisted, values, x)
    theirs = torch.vmap(entry.hoisted, in_dims=(None,) * len(values) + (0,))(*values, x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    weights = [torch.randn_like(a) for a in ours]
    wanted = [x, *cell.parameters()]
    loss = sum((a * w).sum() for a, w in zip(ours, weights, strict=True))
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    loss = sum((b * w).sum() for b, w in zip(theirs, weights, strict=True))
    expected = torch.autograd.grad(loss, wanted, allow_unused=True)
    for a, b in zip(grads, expected, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 3, 4), (1, 1, 1)], ids=["T6-B3-H4", "T1-B1-H1"])
def test_compiled_float64_equals_the_loop(shape):
    """Compiled for real in float64 (tanh compiled as 2/(1+exp(-2x))-1): values and
    gradients equal the eager loop's at 1e-10, with lengths, both directions."""
    steps, batch, hidden = shape
    torch.manual_seed(8)
    cell = TwoGates(2, hidden).double()
    x = torch.randn(steps, batch, 2, dtype=torch.float64, requires_grad=True)
    lengths = [max(1, steps - 2 * i) for i in range(batch)]
    for reverse in (False, True):
        ours = Recurrence(cell, go_backwards=reverse, engine="inductor")
        run = dispatch.plan_cell(cell, x, "inductor")
        dispatch.run_cell(run, x.detach(), torch.zeros(batch, hidden, dtype=torch.float64),
                          torch.tensor(lengths), reverse)
        if run.ran != "inductor":
            pytest.skip(f"torch.compile cannot serve here: {run.declined}")
        theirs = Recurrence(cell, go_backwards=reverse, engine="loop")
        _assert_equal(_grads(ours, x, lengths), _grads(theirs, x, lengths), 1e-10)
        # a loss of out.sum(): an expanded output gradient, read per step by compiled code
        # that checks its inputs' strides
        expanded = [torch.autograd.grad(layer(x, lengths=lengths)[0].sum(), [x, *cell.parameters()])
                    for layer in (ours, theirs)]
        _assert_equal(expanded[0], expanded[1], 1e-10)


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "ragged"])
@pytest.mark.parametrize("make", [TwoGates, PairState], ids=["output-is-state", "own-output"])
def test_expanded_output_gradient_equals_the_loop(uncompiled, make, lengths):
    """A loss of ``out.sum()`` hands the backward an expanded gradient (stride 0, no memory
    of its own): taken per step as it comes, the gradients equal the loop's, for a cell whose
    output is its state (the two tangents summed) and one with an output of its own."""
    torch.manual_seed(9)
    cell = make(3, 4).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for engine in ("inductor", "loop"):
        layer = Recurrence(cell, engine=engine)
        if engine == "inductor":
            assert dispatch.make_plan(layer, x, lengths).paths() == ["inductor"]
        out, _ = layer(x, lengths=lengths)
        results.append(torch.autograd.grad(out.sum(), [x, *cell.parameters()]))
    _assert_equal(results[0], results[1], 1e-10)


def test_wide_products_compute_the_same_product():
    """``h @ W^T`` of few rows rewritten as ``(W @ h^T)^T`` (MKL threads the weight's rows):
    the rewritten graph computes what the original computes (a product with more rows than
    columns is left alone)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(10)

    def step(w, bias, h, wide):
        return torch.tanh(bias + h @ w.T), wide @ w.T

    w, bias = torch.randn(8, 5, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    h, wide = torch.randn(3, 5, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64)
    gm = make_fx(step, tracing_mode="fake")(w, bias, h, wide)
    expected = gm(w, bias, h, wide)
    assert inductor._wide_products(gm) == 1  # h (3 rows, 8 columns); not wide (20 rows)
    products = [n for n in gm.graph.nodes if n.target is torch.ops.aten.mm.default]
    assert [tuple(n.meta["val"].shape) for n in products] == [(8, 3), (20, 8)]
    for a, b in zip(gm(w, bias, h, wide), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_the_backward_takes_the_recurrent_weight_transposed(uncompiled):
    """On two threads the backward's ``dgates @ W`` (few rows) runs as ``(W^T @ dgates^T)^T``
    on a transposed copy of ``W`` made once per sequence: gradients equal the loop's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inductor._programs.clear()
        torch.manual_seed(11)
        cell = TwoGates(3, 4).double()
        x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
        ours = _grads(Recurrence(cell, engine="inductor"), x, [6, 2, 4])
        (program,) = [p for p in inductor._programs.values() if p.backward is not None]
        assert len(program.transposed) == 1
        _assert_equal(ours, _grads(Recurrence(cell, engine="loop"), x, [6, 2, 4]), 1e-10)
    finally:
        torch.set_num_threads(threads)
        inductor._programs.clear()


class _CountingExtension:
    """The compiled kernels' module, counting the calls of the inductor path's C++ loop."""

    def __init__(self, module):
        self.module, self.calls = module, {"traced_forward": 0, "traced_backward": 0}

    def __getattr__(self, name):
        attribute = getattr(self.module, name)
        if name not in self.calls:
            return attribute

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attribute(*args, **kwargs)
        return counted


@pytest.mark.parametrize("make", [TwoGates, PairState, ScaledRecurrent],
                         ids=["output-is-state", "own-output-tuple-state", "deferred-gain"])
def test_the_cpp_loop_equals_the_eager_loop(monkeypatch, make):
    """Where the compiled kernels are built, the steps run in C++ (csrc/traced_step.cpp)
    calling the entry point of Inductor's C++ wrapper: values and gradients equal the eager
    loop's at 1e-10 in float64, with lengths (a row that stops at step 1), both directions,
    a weighted loss on outputs and final state, and a loss of ``out.sum()`` (an expanded
    output gradient)."""
    from rnnkit.engine import compiled

    module = compiled.extension()
    if module is None:
        pytest.skip("the compiled kernels are not built here: the Python loop serves")
    spy = _CountingExtension(module)
    monkeypatch.setattr(inductor, "_extension", lambda: spy)
    torch.manual_seed(12)
    cell = make(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = [6, 1, 4]
    for reverse in (False, True):
        ours = Recurrence(cell, go_backwards=reverse, engine="inductor")
        theirs = Recurrence(cell, go_backwards=reverse, engine="loop")
        got = _grads(ours, x, lengths)
        if spy.calls["traced_forward"] == 0:
            run = dispatch.plan_cell(cell, x, "inductor")
            dispatch.run_cell(run, x.detach(), inductor.example_state(cell, 3, x),
                              torch.tensor(lengths), reverse)
            pytest.skip(f"torch.compile (C++ wrapper) cannot serve here: {run.declined}")
        assert spy.calls["traced_backward"] > 0
        _assert_equal(got, _grads(theirs, x, lengths), 1e-10)
        expanded = [torch.autograd.grad(layer(x, lengths=lengths)[0].sum(),
                                        [x, *cell.parameters()]) for layer in (ours, theirs)]
        _assert_equal(expanded[0], expanded[1], 1e-10)
        with torch.no_grad():  # inference: the forward loop saves nothing
            _assert_equal(list(ours(x)[0:1]), list(theirs(x)[0:1]), 1e-10)


def test_a_retained_graph_runs_back_twice():
    """``backward(retain_graph=True)`` then a second backward: the saved steps are still
    there, and the gradients accumulate to twice one backward's (C++ or Python loop)."""
    torch.manual_seed(13)
    cell = TwoGates(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    layer = Recurrence(cell, engine="inductor")
    out, _ = layer(x)
    if dispatch.make_plan(layer, x, None).paths() != ["inductor"]:
        pytest.skip("the inductor path cannot serve here")
    out.sum().backward(retain_graph=True)
    once = [p.grad.clone() for p in cell.parameters()]
    out.sum().backward()
    for p, g in zip(cell.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-12)


def _sequence_node(tensor):
    """The inductor path's autograd node (_Sequence) behind ``tensor``."""
    todo, seen = [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "saved_steps"):
            return node
        todo.extend(next_node for next_node, _ in node.next_functions)
    return None


def test_the_backward_frees_the_saved_steps():
    """Without ``retain_graph`` the backward frees what the steps saved (as autograd frees a
    Function's saved tensors), not when the output dies; a second backward then says so."""
    torch.manual_seed(20)
    cell = TwoGates(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    layer = Recurrence(cell, engine="inductor")
    out, _ = layer(x)
    node = _sequence_node(out)
    if node is None:
        pytest.skip("the inductor path cannot serve here")
    assert node.saved_steps is not None
    out.sum().backward()
    assert node.saved_steps is None
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


class FirstCallOff(TwoGates):
    """TwoGates whose first eager forward is off by 1e-3 (a transient: the first eager call
    of a busy process measured 2.8e-5 off its repetitions), exact afterwards."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.calls = 0

    def forward(self, x, h):
        from torch._subclasses.fake_tensor import FakeTensor

        out, state = super().forward(x, h)
        if isinstance(x, FakeTensor):  # the trace
            return out, state
        self.calls += 1
        return (out + 1e-3, state) if self.calls == 1 else (out, state)


def test_a_transient_mismatch_is_looked_at_twice(uncompiled):
    """One first-call difference does not decline the path; a difference that repeats does
    (the counter cell of test_a_trace_that_differs_from_the_forward_is_declined)."""
    torch.manual_seed(14)
    cell = FirstCallOff(3, 4)
    x = torch.randn(4, 2, 3)
    layer = Recurrence(cell, engine="inductor")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        out, _ = layer(x)
    assert dispatch.make_plan(layer, x, None).paths() == ["inductor"]
    torch.testing.assert_close(out, Recurrence(cell, engine="loop")(x)[0], rtol=0, atol=1e-6)


def test_without_the_cpp_loop_the_python_loop_serves(monkeypatch):
    """``CPP_LOOP = False`` (as where the kernels are not built, or Inductor's C++ entry point
    is not found): the steps run from Python around Inductor's Python wrapper, with the same
    values and gradients as the eager loop, and the C++ loop is never called."""
    from rnnkit.engine import compiled

    module = compiled.extension()
    spy = _CountingExtension(module) if module is not None else None
    monkeypatch.setattr(inductor, "_extension", lambda: spy)
    monkeypatch.setattr(inductor, "CPP_LOOP", False)
    torch.manual_seed(15)
    cell = PairState(3, 4).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    run = dispatch.plan_cell(cell, x, "inductor")
    dispatch.run_cell(run, x.detach(), inductor.example_state(cell, 3, x),
                      torch.tensor([5, 1, 3]), True)
    if run.ran != "inductor":
        pytest.skip(f"torch.compile cannot serve here: {run.declined}")
    for reverse in (False, True):
        ours = Recurrence(cell, go_backwards=reverse, engine="inductor")
        theirs = Recurrence(cell, go_backwards=reverse, engine="loop")
        _assert_equal(_grads(ours, x, [5, 1, 3]), _grads(theirs, x, [5, 1, 3]), 1e-10)
    if spy is not None:
        assert spy.calls == {"traced_forward": 0, "traced_backward": 0}


def test_the_choice_times_both_programs_then_keeps_the_faster():
    """_Choice: each program is timed once, then the faster serves, and every EXPLORE-th
    call times the other again; a program that turns slower loses its turn."""
    choice = inductor._Choice()
    picks = []
    for _ in range(2 * choice.EXPLORE):
        which = choice.pick()
        picks.append(which)
        choice.record(which, 1.0 if which == 0 else 0.5)  # the split program is faster
    assert picks[:2] == [0, 1]
    explored = [i for i, p in enumerate(picks[2:], start=3) if p == 0]
    assert explored == [choice.EXPLORE, 2 * choice.EXPLORE]
    for _ in range(20):  # the split program slows down (a busy neighbour)
        which = choice.pick()
        choice.record(which, 1.0 if which == 0 else 3.0)
    assert choice.pick() == 0


def test_both_pointwise_programs_equal_the_loop(monkeypatch):
    """On two threads a small step gets two programs (pointwise code on one thread, and split
    across the threads): each, forced, equals the eager loop at 1e-10 in float64."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(16)
        cell = TwoGates(3, 4).double()
        x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
        expected = _grads(Recurrence(cell, engine="loop"), x, [5, 2, 4])
        for which in (0, 1):
            monkeypatch.setattr(inductor._Choice, "pick", lambda self, which=which: which)
            layer = Recurrence(cell, engine="inductor")
            got = _grads(layer, x, [5, 2, 4])
            run = dispatch.plan_cell(cell, x, "inductor")
            dispatch.run_cell(run, x.detach(), torch.zeros(3, 4, dtype=torch.float64),
                              torch.tensor([5, 2, 4]))
            if run.ran != "inductor":
                pytest.skip(f"torch.compile cannot serve here: {run.declined}")
            _assert_equal(got, expected, 1e-10)
        entry = inductor.traced(cell, x[0], torch.zeros(3, 4, dtype=torch.float64))
        assert any(key[-2] for key in inductor._programs)  # the split program was built
        assert entry.failure is None
    finally:
        torch.set_num_threads(threads)


class BatchMean(TwoGates):
    """TwoGates plus the batch mean of its state: its rows mix, so it cannot run in blocks."""

    def forward(self, x, h):
        out, h = super().forward(x, h)
        h = h + 0.1 * h.mean(0, keepdim=True)
        return h, h


@pytest.fixture
def two_blocks(monkeypatch):
    """Two torch threads and blocks of any size: a batch of 4 rows splits in two."""
    from rnnkit.engine import compiled

    module = compiled.extension()
    if module is None:
        pytest.skip("the compiled kernels are not built here: no C++ loop, no blocks")
    spy = _CountingExtension(module)
    blocks = []
    forward = module.traced_forward

    def counted(*args, **kwargs):
        blocks.append(kwargs.get("chunks", 1))
        return forward(*args, **kwargs)

    spy.traced_forward = counted
    monkeypatch.setattr(inductor, "_extension", lambda: spy)
    monkeypatch.setattr(inductor, "BLOCK_MIN_ROWS", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    inductor._programs.clear()
    yield blocks
    torch.set_num_threads(threads)
    inductor._programs.clear()


@pytest.mark.parametrize("make", [TwoGates, PairState, ScaledRecurrent],
                         ids=["output-is-state", "own-output-tuple-state", "deferred-gain"])
def test_row_blocks_equal_the_eager_loop(two_blocks, make):
    """On two threads a batch that splits evenly runs as two blocks of rows, each through
    every step on its own thread, with the recurrent weight read transposed in the forward:
    values and gradients equal the eager loop's at 1e-10 in float64, with lengths (a row
    that stops at step 1 in each block), both directions, an expanded output gradient and
    inference."""
    torch.manual_seed(17)
    cell = make(3, 4).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = [6, 1, 4, 1]
    for reverse in (False, True):
        ours = Recurrence(cell, go_backwards=reverse, engine="inductor")
        theirs = Recurrence(cell, go_backwards=reverse, engine="loop")
        got = _grads(ours, x, lengths)
        if 2 not in two_blocks:
            run = dispatch.plan_cell(cell, x, "inductor")
            dispatch.run_cell(run, x.detach(), inductor.example_state(cell, 4, x),
                              torch.tensor(lengths), reverse)
            entry = inductor.traced(cell, x[0], inductor.example_state(cell, 4, x))
            pytest.skip(f"no blocks here: {run.declined or entry.block_failure}")
        _assert_equal(got, _grads(theirs, x, lengths), 1e-10)
        expanded = [torch.autograd.grad(layer(x)[0].sum(), [x, *cell.parameters()])
                    for layer in (ours, theirs)]
        _assert_equal(expanded[0], expanded[1], 1e-10)
        with torch.no_grad():
            _assert_equal(list(ours(x, lengths=lengths)[0:1]),
                          list(theirs(x, lengths=lengths)[0:1]), 1e-10)
    blocked = [p for key, p in inductor._programs.items() if key[-1]]
    assert blocked
    if make is not ScaledRecurrent:  # an nn.Linear's weight (not a product of two)
        assert all(p.const_transposed for p in blocked)


@pytest.mark.parametrize("steps", [1, 3])
def test_row_blocks_of_one_row_and_hidden_size_one(two_blocks, steps):
    """The smallest blocks: batch 2 in two blocks of one row, hidden size 1, one step or
    three: values and gradients equal the eager loop's."""
    torch.manual_seed(21)
    cell = TwoGates(1, 1).double()
    x = torch.randn(steps, 2, 1, dtype=torch.float64, requires_grad=True)
    got = _grads(Recurrence(cell, engine="inductor"), x, None)
    if 2 not in two_blocks:
        pytest.skip("no blocks here")
    _assert_equal(got, _grads(Recurrence(cell, engine="loop"), x, None), 1e-10)


def test_weights_too_large_for_blocks_keep_the_shared_step(two_blocks, monkeypatch):
    """Each block reads all of the step's weights at every step: beyond
    BLOCK_MAX_WEIGHT_BYTES the threads share each step instead."""
    monkeypatch.setattr(inductor, "BLOCK_MAX_WEIGHT_BYTES", 8)
    torch.manual_seed(22)
    cell = TwoGates(3, 4)
    x = torch.randn(3, 4, 3)
    Recurrence(cell, engine="inductor")(x)
    assert set(two_blocks) <= {1}
    assert "blocks" not in inductor.plan(cell, x)


def _runs_whole(cell, steps, blocks):
    """Runs ``cell`` on the inductor path over a batch of 4 rows: it must have run as one
    block and equal the eager loop (float64, 1e-10). Returns its traced entry."""
    x = torch.randn(steps, 4, 3, dtype=torch.float64, requires_grad=True)
    got = _grads(Recurrence(cell, engine="inductor"), x, None)
    entry = inductor.traced(cell, x[0], torch.zeros(4, 4, dtype=torch.float64))
    if entry.failure is not None or not blocks:
        pytest.skip(f"the inductor path cannot serve here: {entry.failure}")
    assert set(blocks) == {1}
    _assert_equal(got, _grads(Recurrence(cell, engine="loop"), x, None), 1e-10)
    return entry


def test_blocks_that_fail_to_compile_leave_the_shared_step(two_blocks, monkeypatch):
    """An Inductor whose C++ wrapper cannot be patched (another torch version): the block
    programs fail, the reason is kept, and the shared step serves with the loop's values."""
    def broken():
        raise AttributeError("CppWrapperCpu has no _write_input_preamble")

    monkeypatch.setattr(inductor, "_without_gil_release", broken)
    torch.manual_seed(23)
    entry = _runs_whole(TwoGates(3, 4).double(), 4, two_blocks)
    assert entry.block_failure.startswith("compiling the blocks failed (AttributeError")


def test_a_cell_that_mixes_rows_runs_whole(two_blocks):
    """A step that reads the batch mean gives other values on half the rows: the blocks are
    declined (the reason kept), the whole batch runs as one, and equals the eager loop."""
    torch.manual_seed(18)
    cell = BatchMean(3, 4).double()
    entry = _runs_whole(cell, 5, two_blocks)
    assert entry.rows_independent is False
    assert entry.block_failure == "the step mixes the rows of its batch"
    assert "the batch runs whole (the step mixes the rows of its batch)" in \
        inductor.plan(cell, torch.zeros(5, 4, 3, dtype=torch.float64))


def test_row_block_programs_never_touch_the_gil(two_blocks):
    """The blocks call Inductor's entry point from torch's threads with the GIL released:
    their generated C++ has no GIL release (which needs the GIL held) in it."""
    torch.manual_seed(19)
    cell = TwoGates(3, 4)
    _grads(Recurrence(cell, engine="inductor"), torch.randn(4, 4, 3, requires_grad=True), None)
    if 2 not in two_blocks:
        pytest.skip("no blocks here")
    assert "the batch runs as 2 blocks of 2 rows, each through every step on its own " \
        "thread" in inductor.plan(cell, torch.zeros(4, 4, 3))
    blocked = [p for key, p in inductor._programs.items() if key[-1]]
    assert blocked
    for program in blocked:
        for compiled_graph in (program.forward, program.backward):
            assert inductor._gil_free(compiled_graph)
