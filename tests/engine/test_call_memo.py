"""The per-call decisions of the drop-ins and drivers are asked once per call, and what the
compiled kernels remember per cell (``compiled._memo``: supports(), the parameter checks, the
kernel call's options) is never stale: each test changes one thing the decision depends on
between two calls and checks the path that runs (the path runners are instrumented, as in
test_plan.py) and the numbers against an independent oracle (``torch.nn`` with the same
weights, or the eager loop)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.engine import compiled, dispatch, explain, fused, loop
from tests.helpers import record_path_runners

HAVE_COMPILED = compiled.available()[0]
pytestmark = pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels unavailable")


@pytest.fixture
def recorded(monkeypatch):
    """Every call of a path runner, in order (independent of the plan's bookkeeping)."""
    return record_path_runners(monkeypatch)


def _pair(**kwargs):
    """An rnnkit.RNN (relu: the compiled kernels on CPU under engine='auto') and torch.nn.RNN
    with the same weights."""
    torch.manual_seed(0)
    ours = rnnkit.RNN(3, 5, nonlinearity="relu", **kwargs)
    theirs = nn.RNN(3, 5, nonlinearity="relu", **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _same(ours, theirs, x, **tolerance):
    out, h = ours(x)
    ref_out, ref_h = theirs(x)
    torch.testing.assert_close(out, ref_out, **tolerance)
    torch.testing.assert_close(h, ref_h, **tolerance)
    return out, h


X = torch.randn(6, 4, 3)


def test_a_forward_asks_each_question_once_per_cell(monkeypatch):
    """step_cells() (binding), the kernels' supports() and the parameter checks: once per
    call and cell at most (the base asked supports() three times and bound the cells twice);
    a second call with the same key asks none of them (the drop-in's call cache)."""
    rnn = rnnkit.RNN(3, 5, nonlinearity="relu", num_layers=2, bidirectional=True)
    counts = {"step_cells": 0, "_supports": 0, "_check_parameters": 0}

    def count(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    count(compiled, "_supports")
    count(compiled, "_check_parameters")
    monkeypatch.setattr(rnn, "step_cells", _counting(rnn.step_cells, counts, "step_cells"))
    rnn(X)
    assert counts == {"step_cells": 1, "_supports": 4, "_check_parameters": 4}
    rnn(X)  # same configuration: the whole call is remembered
    assert counts == {"step_cells": 1, "_supports": 4, "_check_parameters": 4}
    rnn(X, lengths=torch.tensor([6, 5, 4, 3]))  # not a plain call: planned, answers memoised
    assert counts == {"step_cells": 2, "_supports": 4, "_check_parameters": 4}


def _counting(method, counts, name):
    def wrapper(*args, **kwargs):
        counts[name] += 1
        return method(*args, **kwargs)

    return wrapper


def test_engine_changed_between_calls(recorded):
    ours, theirs = _pair()
    _same(ours, theirs, X)
    ours.engine = "loop"
    _same(ours, theirs, X)
    ours.engine = "fused"
    _same(ours, theirs, X)
    ours.engine = "auto"
    _same(ours, theirs, X)
    assert recorded == ["compiled", "loop", "fused", "compiled"]


def test_training_mode_changed_between_calls(recorded):
    """recurrent_dropout wraps the cells in training only: the loop there, the kernels in
    eval mode, and back."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN(3, 5, nonlinearity="relu", recurrent_dropout=0.5)
    twin = rnnkit.RNN(3, 5, nonlinearity="relu", engine="loop")
    twin.load_state_dict(rnn.state_dict())
    ref_out, _ = twin.eval()(X)
    recorded.clear()
    for mode in (False, True, False):
        rnn.train(mode)
        out, h = rnn(X)
        if not mode:
            torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    assert recorded == ["compiled", "loop", "compiled"]


def test_parameter_replaced_between_calls(recorded):
    ours, theirs = _pair()
    _same(ours, theirs, X)
    new = torch.randn(5, 5) * 0.3
    ours.weight_hh_l0 = nn.Parameter(new.clone())
    with torch.no_grad():
        theirs.weight_hh_l0.copy_(new)
    _same(ours, theirs, X)
    # a replacement of the wrong shape is refused, not served from the remembered checks
    ours.weight_hh_l0 = nn.Parameter(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"weight_hh has shape \(5, 4\), expected \(5, 5\)"):
        ours(X)
    assert recorded == ["compiled", "compiled", "compiled"]


def test_data_of_another_shape_set_in_place_between_calls():
    """``p.data = ...`` keeps the Parameter object: the memo must still see the new shape."""
    ours, _ = _pair()
    ours(X)
    ours.weight_hh_l0.data = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"weight_hh has shape \(5, 4\)"):
        ours(X)


def test_requires_grad_changed_between_calls(recorded):
    ours, theirs = _pair()
    for frozen in (False, True, False):
        for module in (ours, theirs):
            module.weight_hh_l0.requires_grad_(not frozen)
            module.zero_grad()
        x = X.clone().requires_grad_()
        x_ref = X.clone().requires_grad_()
        out, h = ours(x)
        ref_out, ref_h = theirs(x_ref)
        (out.sum() + h.square().sum()).backward()
        (ref_out.sum() + ref_h.square().sum()).backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(ours.weight_ih_l0.grad, theirs.weight_ih_l0.grad)
        if frozen:
            assert ours.weight_hh_l0.grad is None
        else:
            torch.testing.assert_close(ours.weight_hh_l0.grad, theirs.weight_hh_l0.grad)
    assert recorded == ["compiled"] * 3


@pytest.mark.filterwarnings("ignore:rnnkit. precision='bf16' on a CPU without")
def test_dtype_changed_in_place_between_calls(recorded):
    """``.to(dtype)`` keeps the Parameter objects (``param.data = ...``): float64 still runs
    the kernels, bfloat16 (which they do not cover) goes to torch's fused kernel."""
    ours, theirs = _pair()
    _same(ours, theirs, X)
    ours.double()
    theirs.double()
    _same(ours, theirs, X.double())
    ours.to(torch.bfloat16)
    theirs.to(torch.bfloat16)
    _same(ours, theirs, X.to(torch.bfloat16))
    ours.float()
    theirs.float()
    _same(ours, theirs, X)
    assert recorded == ["compiled", "compiled", "fused", "compiled"]


@pytest.mark.filterwarnings("ignore:rnnkit. precision='bf16' on a CPU without")
def test_precision_changed_between_calls(recorded):
    """precision='bf16' (the module's, or the engine's context) sends the call to the fused
    path, which honours it; back to fp32 the kernels serve again."""
    ours, theirs = _pair()
    ours(X)
    ours.precision = "bf16"
    with torch.no_grad():
        out, _ = ours(X)
    ours.precision = "fp32"
    ours(X)
    with fused.precision("bf16"), torch.no_grad():
        ours(X)
    _same(ours, theirs, X)
    assert recorded == ["compiled", "fused", "compiled", "fused", "compiled"]
    assert out.dtype == torch.float32


def test_grad_mode_changed_between_calls():
    """The kernel call is remembered per grad mode: a no-grad call saves nothing for
    backward, the next call with grad is differentiable."""
    ours, theirs = _pair()
    with torch.no_grad():
        out, _ = ours(X)
    assert out.grad_fn is None
    out, h = ours(X)
    ref_out, ref_h = theirs(X)
    out.sum().backward()
    ref_out.sum().backward()
    torch.testing.assert_close(ours.weight_hh_l0.grad, theirs.weight_hh_l0.grad)


def test_cell_option_changed_between_calls(recorded):
    """A plain attribute of a cell (its nonlinearity) changed after a compiled call: the
    kernel's flags follow (the loop, the oracle, computes what the cell now says)."""
    torch.manual_seed(0)
    cell = ElmanCell(3, 5)
    layer = rnnkit.layers.Recurrence(cell)
    x = torch.randn(6, 2, 3)
    for nonlinearity in ("tanh", "relu", "tanh"):
        cell.nonlinearity = nonlinearity
        out, h = layer(x)
        ref, ref_h = loop.run_recurrence(cell, x.transpose(0, 1) if layer.batch_first else x,
                                         cell.initial_state(2))
        ref = ref.transpose(0, 1) if layer.batch_first else ref
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert recorded.count("compiled") == 3


def test_hook_added_between_calls(recorded):
    """A forward hook on the cell runs once per step: the kernels stop serving at once."""
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    layer = rnnkit.layers.Recurrence(cell)
    x = torch.randn(5, 2, 3)
    first, _ = layer(x)
    steps = []
    handle = cell.register_forward_hook(lambda *args: steps.append(1))
    second, _ = layer(x)
    handle.remove()
    third, _ = layer(x)
    assert recorded == ["compiled", "loop", "compiled"]
    assert len(steps) == 5
    torch.testing.assert_close(first, second, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(first, third, rtol=0, atol=0)


def test_cell_parameter_replaced_between_calls():
    torch.manual_seed(0)
    cell = LSTMCell(3, 4, peepholes=True)
    layer = rnnkit.layers.Recurrence(cell)
    x = torch.randn(5, 2, 3)
    layer(x)
    cell.weight_ci = nn.Parameter(torch.randn(4))
    out, _ = layer(x)
    xt = x.transpose(0, 1) if layer.batch_first else x
    ref, _ = loop.run_recurrence(cell, xt, cell.initial_state(2))
    ref = ref.transpose(0, 1) if layer.batch_first else ref
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_parametrized_cells_are_not_remembered():
    """weight_norm recomputes the weight at every read: such a cell is checked afresh at every
    call and its results follow the parametrization's parameters."""
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    nn.utils.parametrizations.weight_norm(cell, "weight_hh")
    x = torch.randn(5, 2, 3)
    out, _ = compiled.run_recurrence(cell, x, torch.zeros(2, 4))
    assert compiled._verified(cell) is None
    with torch.no_grad():
        cell.parametrizations.weight_hh.original0.mul_(0.5)  # g
    out2, _ = compiled.run_recurrence(cell, x, torch.zeros(2, 4))
    ref, _ = loop.run_recurrence(cell, x, torch.zeros(2, 4))
    torch.testing.assert_close(out2, ref, rtol=1e-6, atol=1e-6)
    assert not torch.equal(out, out2)


def test_the_memo_forgets_dead_cells():
    before = len(compiled._memo)
    for _ in range(20):
        cell = GRUCell(3, 4)
        compiled.supports(cell)
    del cell
    gc.collect()
    assert len(compiled._memo) <= before + 1


def test_explain_is_unchanged_by_calls():
    """explain() describes the same plan before and after calls (nothing it prints is taken
    from the per-call memo)."""
    rnn = rnnkit.RNN(3, 5, nonlinearity="relu", bidirectional=True)
    text = explain(rnn, X)
    rnn(X)
    rnn(X)
    assert explain(rnn, X) == text
    assert "compiled" in text
    plan = dispatch.plan_module(rnn, X, describe=False)
    assert plan.paths() == ["compiled", "compiled"]
