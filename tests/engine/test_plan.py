"""The execution plan: what explain prints is what runs, and forcing that path changes nothing.

The sweep instruments the path runners (fused.forward, compiled.run_recurrence,
parallel.run_recurrence, loop.run_recurrence) to record every call, independently of the
plan's own bookkeeping, and compares the calls with the paths the plan (the object explain
prints) names.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, MinGRUCell, MinLSTMCell
from rnnkit.engine import compiled, dispatch, explain, loop
from rnnkit.engine.plan import PathDeclined
from tests.helpers import record_path_runners

HAVE_COMPILED = compiled.available()[0]


class UserCell(nn.Module):
    """A user's cell (not one the compiled kernels know): torch's GRUCell behind the contract."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.inner = nn.GRUCell(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = self.output_size = hidden_size

    def forward(self, x, h):
        h = self.inner(x, h)
        return h, h


def _drop_ins():
    """(id, module factory) for the drop-in configurations."""
    options = {
        "LSTM": [{}, {"bidirectional": True}, {"num_layers": 2}, {"proj_size": 2},
                 {"peepholes": True}, {"layer_norm": True}, {"coupled_gates": True},
                 {"recurrent_dropout": 0.3}, {"zoneout": 0.2}, {"num_layers": 2, "residual": True},
                 {"stateful": True}, {"dropout_input": 0.2}, {"cell_clip": 1.0}],
        "GRU": [{}, {"bidirectional": True, "num_layers": 2}, {"reset_after": False},
                {"layer_norm": True}, {"recurrent_dropout": 0.3}, {"zoneout": 0.1}],
        "RNN": [{}, {"nonlinearity": "relu"}, {"bidirectional": True}, {"init": "irnn"},
                {"zoneout": 0.1}],
    }
    cases = []
    for kind, variants in options.items():
        for variant in variants:
            name = f"{kind}({', '.join(f'{k}={v}' for k, v in variant.items())})"
            cases.append((name, lambda kind=kind, variant=variant: getattr(rnnkit, kind)(
                3, 4, **variant)))
    return cases


def _drivers():
    cells = {"LSTMCell": lambda: LSTMCell(3, 4), "GRUCell": lambda: GRUCell(3, 4),
             "ElmanCell": lambda: ElmanCell(3, 4), "LSTMCell(peepholes)":
             lambda: LSTMCell(3, 4, peepholes=True), "UserCell": lambda: UserCell(3, 4),
             "MinGRUCell": lambda: MinGRUCell(3, 4), "MinLSTMCell": lambda: MinLSTMCell(3, 4)}
    cases = []
    for (cell_name, make_cell), (driver, kwargs) in itertools.product(cells.items(), [
            ("Recurrence", {}), ("Recurrence", {"go_backwards": True}),
            ("Recurrence", {"return_full_state": True}), ("Fold", {}),
            ("Recurrence", {"stateful": True})]):
        layer = getattr(rnnkit.layers, driver)
        text = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        cases.append((f"{driver}({cell_name}{', ' + text if text else ''})",
                      lambda layer=layer, make_cell=make_cell, kwargs=kwargs: layer(
                          make_cell(), **kwargs)))
    return cases


CASES = _drop_ins() + _drivers()
MODES = ["train", "eval-no-grad"]
LENGTHS = [None, [5, 2, 4]]


@pytest.fixture
def recorded(monkeypatch):
    """Every call of a path runner, in order."""
    return record_path_runners(monkeypatch, scan=True)


def _run(layer, x, lengths, mode):
    torch.manual_seed(1)  # the same dropout masks for the forced twin
    if mode == "train":
        layer.train()
        return layer(x, lengths=lengths)
    layer.eval()
    with torch.no_grad():
        return layer(x, lengths=lengths)


def _tensors(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in _tensors(part)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "ragged"])
@pytest.mark.parametrize(("name", "make"), CASES, ids=[name for name, _ in CASES])
def test_explain_names_the_path_that_runs(name, make, lengths, mode, recorded):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(5, 3, 3)  # (T, B, H_in)
    layer.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        plan = dispatch.make_plan(layer, x, lengths)
        assert str(plan) == explain(layer, x, lengths)
    planned = plan.paths()
    assert planned and set(planned) <= {"fused", "compiled", "scan", "loop"}
    if not HAVE_COMPILED:
        assert "compiled" not in planned
    expected = _run(layer, x, lengths, mode)
    assert recorded == planned, str(plan)

    # forcing the explained path gives the same numbers, bit for bit
    (path,) = set(planned)  # one path for every layer and direction of these modules
    twin = make()
    twin.load_state_dict(layer.state_dict())
    twin.engine = path
    recorded.clear()
    forced = _run(twin, x, lengths, mode)
    assert recorded == planned
    for ours, theirs in zip(_tensors(expected), _tensors(forced), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_wrappers_plan_every_part(recorded):
    x = torch.randn(5, 3, 3)
    for layer in (rnnkit.Bidirectional(GRUCell(3, 4)), rnnkit.Bidirectional(rnnkit.LSTM(3, 4)),
                  rnnkit.Sequence(rnnkit.GRU(3, 4, reset_after=False)),
                  rnnkit.Sequence(LSTMCell(3, 4))):
        layer_x = x.transpose(0, 1) if layer.batch_first else x
        plan = dispatch.make_plan(layer, layer_x, [5, 1, 3])
        recorded.clear()
        layer(layer_x, lengths=[5, 1, 3])
        assert recorded == plan.paths(), str(plan)
        assert plan.executed() == [], "a plan for explain is never executed"


def test_forward_records_what_ran():
    layer = rnnkit.GRU(3, 4, bidirectional=True, reset_after=False)
    plan = dispatch.plan_module(layer, torch.randn(5, 2, 3))
    outputs, _ = layer._forward_layers(plan, torch.randn(5, 2, 3), torch.zeros(2, 2, 4), None)
    assert plan.executed() == plan.paths()


@pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels unavailable")
def test_a_declining_runner_is_reported_and_the_loop_runs(monkeypatch):
    """A path runner may decline at run time (e.g. under a functorch transform): engine='auto'
    runs the loop and the plan says why; a forced engine='compiled' raises that reason."""
    def decline(*args, **kwargs):
        raise PathDeclined("inputs are functorch-wrapped (tested)")

    monkeypatch.setattr(compiled, "run_recurrence", decline)
    cell, x = GRUCell(3, 4), torch.randn(5, 2, 3)
    run = dispatch.plan_cell(cell, x)
    assert run.path == "compiled"
    out, _ = dispatch.run_cell(run, x, torch.zeros(2, 4))
    reference, _ = loop.run_recurrence(cell, x, torch.zeros(2, 4))
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    assert run.ran == "loop" and "functorch-wrapped" in run.describe()
    with pytest.raises(RuntimeError, match="engine='compiled' cannot run this recurrence: "
                                           "inputs are functorch-wrapped"):
        dispatch.run_recurrence(cell, x, torch.zeros(2, 4), engine="compiled")


@pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels unavailable")
def test_return_full_state_is_explained_as_the_loop_it_runs():
    # issue 17: explained as "compiled" while it ran the loop; forcing named a private class
    layer = rnnkit.Recurrence(GRUCell(3, 4), return_full_state=True)
    x = torch.randn(5, 2, 3)
    text = explain(layer, x)
    assert "return_full_state(GRUCell) -> loop (return_full_state=True needs every" in text
    assert "_FullStateCell" not in text
    layer.engine = "compiled"
    with pytest.raises(RuntimeError, match="engine='compiled' cannot run this recurrence: "
                                           "return_full_state=True needs every step's state"):
        layer(x)


def test_recurrent_dropout_in_eval_runs_fused():
    # issue 17: LSTM(recurrent_dropout=0.2).eval() was refused the fused path
    layer = rnnkit.LSTM(3, 4, recurrent_dropout=0.2)
    x = torch.randn(5, 2, 3)
    assert "recurrent_dropout (variational dropout on h) is active" in explain(layer, x)
    layer.eval()
    assert "path: fused" in explain(layer, x)
    reference = nn.LSTM(3, 4)
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x)[0], reference(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize(("layer", "x", "error", "match"), [
    (nn.Linear(3, 4), torch.randn(5, 2, 3), TypeError, "Linear is not a recurrent layer"),
    (rnnkit.LSTM(3, 4), torch.randn(5, 2, 7), ValueError, "Expected 3, got 7"),
    (nn.LSTM(3, 4), torch.randn(5, 2, 7), RuntimeError, r"input.size\(-1\) must be equal"),
    (rnnkit.Recurrence(GRUCell(3, 4)), torch.randn(5, 2, 7), ValueError,
     "the cell expects 3 input features, got input with 7"),
    (rnnkit.Recurrence(GRUCell(3, 4)), torch.ones(5, 2, 3, dtype=torch.int64), TypeError,
     "input must be floating point, got dtype torch.int64"),
    (rnnkit.LSTM(3, 4), torch.ones(5, 2, 3, dtype=torch.int64), TypeError,
     "input must be floating point"),
    (rnnkit.Bidirectional(GRUCell(3, 4)), torch.randn(5, 2, 7), ValueError,
     "the cell expects 3 input features"),
    (rnnkit.Sequence(rnnkit.GRU(3, 4)), torch.randn(5, 2, 7), ValueError, "Expected 3, got 7"),
])
def test_explain_raises_what_the_call_raises(layer, x, error, match):
    # issue 16: explain described a path for calls that would fail
    with pytest.raises(error, match=match):
        explain(layer, x)
    if not isinstance(layer, nn.Linear):
        with pytest.raises(error, match=match):
            layer(x)


def test_explain_a_cell_checks_like_run_recurrence():
    with pytest.raises(ValueError, match="the cell expects 3 input features"):
        explain(GRUCell(3, 4), torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match=r"the sequence is empty \(T = 0"):
        explain(GRUCell(3, 4), torch.randn(0, 2, 3))


# ----------------------------------------------------------------------------- tracing


def test_jit_trace_records_the_computation_not_a_constant():
    # The default plan runs GRU on CPU through the compiled kernels, whose call a trace would
    # record as a constant; while tracing the plan takes torch's fused kernels instead.
    torch.manual_seed(0)
    gru = rnnkit.GRU(3, 5)
    with torch.no_grad():
        traced = torch.jit.trace(gru, torch.randn(4, 2, 3))
        x = torch.randn(4, 2, 3)
        out, h = gru(x)
        traced_out, traced_h = traced(x)
    torch.testing.assert_close(traced_out, out)
    torch.testing.assert_close(traced_h, h)


def test_tracing_plans_fused_for_torch_modules_and_the_loop_otherwise(monkeypatch):
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    x = torch.randn(4, 2, 3)
    text = rnnkit.explain(rnnkit.GRU(3, 5), x)
    assert "path: fused" in text and "tracing or exporting" in text
    text = rnnkit.explain(rnnkit.GRU(3, 5, zoneout=0.1), x)
    assert "-> loop (tracing or exporting" in text and "-> compiled" not in text
    text = rnnkit.explain(rnnkit.layers.Recurrence(GRUCell(3, 5)), x)
    assert "-> loop (tracing or exporting" in text
