"""Hooks on a drop-in's cells (``step_cells()``) run at every step, as the eager loop runs
them, whatever path the module would take without them: the fused kernels (torch._VF /
oneDNN) and the compiled ones never call the cells, so a hooked cell runs on the loop and
``explain`` says why. Hooks on the drop-in itself run once per call, exactly as on the
``torch.nn`` module. Oracles: ``torch.nn`` modules with the same weights (single-layer ones
stacked by hand where a hook changes what a layer passes on), in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.engine import EngineFallbackWarning, compiled, dispatch, explain
from rnnkit.engine.dispatch import make_plan
from tests.helpers import record_path_runners

HAVE_COMPILED = compiled.available()[0]
T, B, F, H = 5, 3, 2, 4
FAMILIES = ["RNN", "GRU", "LSTM"]
CELL = {"RNN": "ElmanCell", "GRU": "GRUCell", "LSTM": "LSTMCell"}


def _pair(kind, dtype=torch.float64, **kwargs):
    """An rnnkit drop-in and its torch.nn twin with the same weights (for a layer-norm
    LSTM, which torch.nn lacks: a copy of ours on engine='loop')."""
    torch.manual_seed(0)
    ours = getattr(rnnkit, kind)(F, H, dtype=dtype, **kwargs)
    if kwargs.get("layer_norm"):
        theirs = copy.deepcopy(ours)
        theirs.engine = "loop"
        return ours, theirs
    kwargs.pop("engine", None)
    theirs = getattr(nn, kind)(F, H, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _layer(theirs, layer, input_size):
    """Layer ``layer`` of a torch.nn stack as a single-layer module (the hand-stacked oracle)."""
    single = type(theirs)(input_size, H, bidirectional=theirs.bidirectional,
                          dtype=torch.float64)
    suffix = f"_l{layer}"
    single.load_state_dict({name.replace(suffix, "_l0"): value
                            for name, value in theirs.state_dict().items() if suffix in name})
    return single


def _x(requires_grad=False):
    torch.manual_seed(1)
    return torch.randn(T, B, F, dtype=torch.float64, requires_grad=requires_grad)


def _states(h):
    return h if isinstance(h, tuple) else (h,)


def _same_as_torch(ours, theirs, states_in_loss):
    """Both modules on the same input: outputs, final states and the input's gradient (of
    the squared outputs, plus the final states' sum with ``states_in_loss``) agree. Returns
    the input and torch's outputs, detached."""
    x, x_ref = _x(requires_grad=True), _x(requires_grad=True)
    out, h = ours(x)
    ref_out, ref_h = theirs(x_ref)
    torch.testing.assert_close(out, ref_out)
    for state, ref_state in zip(_states(h), _states(ref_h), strict=True):
        torch.testing.assert_close(state, ref_state)
    for output, states in ((out, h), (ref_out, ref_h)):
        loss = output.square().sum()
        if states_in_loss:
            loss = loss + sum(s.sum() for s in _states(states))
        loss.backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    return x_ref.detach(), ref_out.detach()


def _register(cell, how, record):
    """One hook of kind ``how`` on ``cell``; each call appends (step input, step output or
    None) to ``record``. None of them changes anything."""
    if how == "forward":
        return cell.register_forward_hook(lambda m, args, out: record.append((args[0], out[0])))
    if how == "forward with_kwargs":
        return cell.register_forward_hook(
            lambda m, args, kwargs, out: record.append((args[0], out[0])), with_kwargs=True)
    if how == "forward always_call":
        return cell.register_forward_hook(
            lambda m, args, out: record.append((args[0], out[0])), always_call=True)
    if how == "pre":
        return cell.register_forward_pre_hook(lambda m, args: record.append((args[0], None)))
    assert how == "pre with_kwargs"
    return cell.register_forward_pre_hook(
        lambda m, args, kwargs: record.append((args[0], None)), with_kwargs=True)


HOOKS = ["forward", "forward with_kwargs", "forward always_call", "pre", "pre with_kwargs"]


@pytest.mark.parametrize("how", HOOKS)
@pytest.mark.parametrize("kind", FAMILIES)
def test_a_hook_on_each_cell_runs_at_every_step_with_the_steps_tensors(kind, how):
    ours, theirs = _pair(kind, num_layers=2, bidirectional=True)
    records = {}
    handles = []
    for label, cell in ours.step_cells():
        records[label] = []
        handles.append(_register(cell, how, records[label]))
    x_ref, ref_out = _same_as_torch(ours, theirs, states_in_loss=True)
    assert sorted(records) == ["layer 0", "layer 0 reverse", "layer 1", "layer 1 reverse"]
    for label, record in records.items():
        assert len(record) == T, label
        steps = range(T - 1, -1, -1) if label.endswith("reverse") else range(T)
        direction = slice(H, 2 * H) if label.endswith("reverse") else slice(0, H)
        for (step_input, step_output), t in zip(record, steps, strict=True):
            if label.startswith("layer 0"):  # the module's own input at that step
                torch.testing.assert_close(step_input, x_ref[t])
            if label.startswith("layer 1") and step_output is not None:
                torch.testing.assert_close(step_output, ref_out[t, :, direction])
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("kind", FAMILIES)
def test_hooks_that_change_a_steps_input_or_output_are_honoured(kind):
    """Layer 0's cell: a pre-hook (with kwargs) doubles each step's input and a forward
    hook halves each step's output (not the state carried to the next step). The oracle:
    torch.nn's layer 0 on 2x, halved, fed to torch.nn's layer 1."""
    ours, theirs = _pair(kind, num_layers=2)
    cell = ours.step_cells()[0][1]
    cell.register_forward_pre_hook(lambda m, args, kwargs: ((args[0] * 2, args[1]), kwargs),
                                   with_kwargs=True)
    cell.register_forward_hook(lambda m, args, out: (out[0] * 0.5, out[1]))
    x = _x()
    out, h = ours(x)
    first, h_first = _layer(theirs, 0, F)(x * 2)
    ref_out, h_second = _layer(theirs, 1, H)(first * 0.5)
    torch.testing.assert_close(out, ref_out)
    for state, a, b in zip(_states(h), _states(h_first), _states(h_second), strict=True):
        torch.testing.assert_close(state, torch.cat([a, b]))
    # the forced loop runs the same hooks (layer 1 ran on the compiled kernels above)
    ours.engine = "loop"
    torch.testing.assert_close(ours(x)[0], out)


@pytest.mark.parametrize("kind", FAMILIES)
def test_explain_names_the_hooked_cell_and_the_path_that_runs(kind):
    ours, _ = _pair(kind, num_layers=2, bidirectional=True)
    x = _x()
    unhooked = make_plan(ours, x).paths()  # fused (LSTM) or compiled (GRU, RNN) on CPU
    label, cell = ours.step_cells()[3]
    assert label == "layer 1 reverse"
    handle = cell.register_forward_pre_hook(lambda *args: None)
    text = explain(ours, x)
    assert (f"fused path not used: a forward pre-hook on layer 1 reverse's cell "
            f"({CELL[kind]}): forward pre-hooks run at each call, and only the eager loop "
            f"calls the cell at each step" in text), text
    assert "layer 1 reverse: " + CELL[kind] + " -> loop (a forward pre-hook on" in text
    plan = make_plan(ours, x)
    assert plan.path == "cells" and plan.paths()[3] == "loop"
    if HAVE_COMPILED:  # the unhooked cells keep their fast path
        assert plan.paths()[:3] == ["compiled"] * 3
    handle.remove()
    handle = ours.step_cells()[0][1].register_full_backward_hook(lambda *args: None)
    assert "a backward hook on layer 0's cell" in explain(ours, x)
    handle.remove()
    assert make_plan(ours, x).paths() == unhooked


class UserCell(nn.Module):
    """A user's cell that calls a module of its own at each step: torch's GRUCell."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.GRUCell(F, H, dtype=torch.float64)
        self.input_size, self.state_size, self.output_size = F, H, H

    def forward(self, x, h):
        h = self.inner(x, h)
        return h, h


def test_a_hook_on_a_module_inside_a_cell_keeps_the_cell_on_the_loop(monkeypatch):
    """The loop calls the user's cell, which calls ``inner`` at each step; engine='inductor'
    would trace the step once (the hook with it) and never call it again."""
    ran = record_path_runners(monkeypatch)
    monkeypatch.setattr(dispatch, "_inductor_refusals", set())
    torch.manual_seed(3)
    cell = UserCell()
    steps = []
    cell.inner.register_forward_hook(lambda m, args, out: steps.append(args[0]))
    layer = rnnkit.layers.Recurrence(cell, engine="inductor")
    x = _x()
    with pytest.warns(EngineFallbackWarning, match="engine='inductor' cannot serve UserCell"):
        text = explain(layer, x)
    assert "a forward hook on UserCell.inner: forward hooks run at each call" in text
    out, _ = layer(x)
    assert ran == ["loop"] and len(steps) == T
    for t in range(T):
        torch.testing.assert_close(steps[t], x[t])
    h, expected = torch.zeros(B, H, dtype=torch.float64), []
    for t in range(T):
        h = cell.inner(x[t], h)
        expected.append(h)
    torch.testing.assert_close(out, torch.stack(expected))


def test_forced_paths_refuse_a_hooked_cell():
    ours = rnnkit.LSTM(F, H, num_layers=2, engine="fused", dtype=torch.float64)
    ours.step_cells()[0][1].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="engine='fused' cannot run this LSTM: a forward hook "
                                         "on layer 0's cell \\(LSTMCell\\)"):
        ours(_x())
    with pytest.raises(ValueError, match="engine='fused' cannot run this LSTM"):
        explain(ours, _x())
    ours.engine = "compiled"
    with pytest.raises(RuntimeError, match="engine='compiled' cannot run this recurrence: a "
                                           "forward hook on LSTMCell"):
        ours(_x())


@pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels unavailable")
@pytest.mark.parametrize(("kind", "kwargs", "fast"), [
    ("LSTM", {}, "fused"),  # torch's oneDNN kernel, remembered
    ("RNN", {"nonlinearity": "relu"}, "prepared"),  # the compiled kernels, remembered
    ("GRU", {"num_layers": 2}, "prepared"),
    ("LSTM", {"layer_norm": True}, "prepared"),
])
def test_a_hook_registered_after_a_remembered_call_is_seen_and_removing_it_returns(
        monkeypatch, kind, kwargs, fast):
    ours, theirs = _pair(kind, **kwargs)
    x = _x()
    expected = theirs(x)[0]
    ran = record_path_runners(monkeypatch, prepared="prepared")
    first = "fused" if fast == "fused" else "compiled"
    layers = ours.num_layers
    for _ in range(2):
        torch.testing.assert_close(ours(x)[0], expected)
    assert ran == [first] * layers + [fast] * (1 if fast == "fused" else layers)
    del ran[:]
    cell = ours.step_cells()[0][1]
    calls = []
    handle = cell.register_forward_hook(lambda *args: calls.append(1))
    for _ in range(2):  # not remembered: every call runs the hook T times
        torch.testing.assert_close(ours(x)[0], expected)
    assert len(calls) == 2 * T
    assert ran == (["loop"] + ["compiled"] * (layers - 1)) * 2
    handle.remove()
    del ran[:]
    torch.testing.assert_close(ours(x)[0], expected)
    assert ran == [fast] * (1 if fast == "fused" else layers)
    assert len(calls) == 2 * T


@pytest.mark.parametrize("kind", FAMILIES)
def test_hooks_on_the_drop_in_itself_behave_as_on_torch_nn(monkeypatch, kind):
    """Module hooks (pre-hook with kwargs changing the input, forward hook changing the
    output, always_call, full backward hook) run once per call, on both, with the same
    tensors, and choose no path: the module keeps its fast path."""
    ran = record_path_runners(monkeypatch)
    ours, theirs = _pair(kind)
    seen = {"ours": [], "theirs": []}
    for name, module in (("ours", ours), ("theirs", theirs)):
        record = seen[name]
        module.register_forward_pre_hook(
            lambda m, args, kwargs: ((args[0] * 2, *args[1:]), kwargs), with_kwargs=True)
        module.register_forward_hook(lambda m, args, out: (out[0] * 3, out[1]))
        module.register_forward_hook(lambda m, args, out, record=record: record.append(
            ("always", args[0].detach().clone())), always_call=True)
        module.register_full_backward_hook(
            lambda m, grad_in, grad_out, record=record: record.append(
                ("backward", [None if g is None else g.clone() for g in grad_in + grad_out])))
    _same_as_torch(ours, theirs, states_in_loss=False)
    assert [entry[0] for entry in seen["ours"]] == ["always", "backward"]
    assert [entry[0] for entry in seen["theirs"]] == ["always", "backward"]
    torch.testing.assert_close(seen["ours"][0][1], seen["theirs"][0][1])
    for grad, ref_grad in zip(seen["ours"][1][1], seen["theirs"][1][1], strict=True):
        assert (grad is None) == (ref_grad is None)
        if grad is not None:
            torch.testing.assert_close(grad, ref_grad)
    assert "loop" not in ran and len(ran) == 1


def test_global_hooks_run_on_the_drop_in_and_choose_no_path(monkeypatch):
    """A global hook runs at each module call: once on the drop-in, as on torch.nn.LSTM
    (which calls no cells); it keeps the fused path, and explain says so. On the loop
    (engine='loop') the cells' calls reach it too."""
    ran = record_path_runners(monkeypatch)
    ours, theirs = _pair("LSTM")
    called = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: called.append(type(m).__name__))
    try:
        x = _x()
        ours(x)
        theirs(x)
        assert called == ["LSTM", "LSTM"]
        assert ran == ["fused"]
        text = explain(ours, x)
        assert "path: fused" in text and "global module hooks: 1 registered" in text
        ours.engine = "loop"
        del called[:]
        ours(x)
        assert called == ["LSTMCell"] * T + ["LSTM"]
    finally:
        handle.remove()
    assert "global module hooks" not in explain(ours, _x())


def test_a_drivers_cell_with_a_backward_hook_or_under_inductor_runs_the_loop(monkeypatch):
    """``Recurrence`` and ``run_recurrence`` take the same decision for their cell; a hook
    also stops engine='inductor', whose traced step would run the hook once, at trace
    time."""
    ran = record_path_runners(monkeypatch)
    monkeypatch.setattr(dispatch, "_inductor_refusals", set())
    torch.manual_seed(2)
    cell = rnnkit.cells.GRUCell(F, H, dtype=torch.float64)
    reference = nn.GRUCell(F, H, dtype=torch.float64)
    reference.load_state_dict(cell.state_dict())
    backward_calls = []
    cell.register_full_backward_hook(lambda *args: backward_calls.append(1))
    x = _x(requires_grad=True)
    out, _ = rnnkit.layers.Recurrence(cell)(x)
    ref = []
    h = torch.zeros(B, H, dtype=torch.float64)
    for t in range(T):
        h = reference(x[t], h)
        ref.append(h)
    torch.testing.assert_close(out, torch.stack(ref))
    out.sum().backward()
    assert len(backward_calls) == T and ran == ["loop"]
    with pytest.warns(EngineFallbackWarning, match="engine='inductor' cannot serve GRUCell: a "
                                                   "backward hook on GRUCell"):
        dispatch.run_recurrence(cell, x.detach(), torch.zeros(B, H, dtype=torch.float64),
                                engine="inductor")
    assert ran == ["loop", "loop"]
