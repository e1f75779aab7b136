"""The compiled step-loop template (csrc/step_loop.h): named arguments, the family registry,
the pointwise thread split, and a family plugged in through its cell file's adapter.

The numerical checks of every family (against the cells run step by step, gradcheck, hidden
size 1, lengths, both directions) are in test_compiled.py; here: what the template itself
promises.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.cells import ElmanCell, UGRNNCell
from rnnkit.cells._compiled import CompiledAdapter
from rnnkit.engine import compiled


def _elman_args(T=3, B=2, H=4):
    torch.manual_seed(0)
    tensors = {"xp": torch.randn(T, B, H), "state": torch.zeros(B, H),
               "weight_hh": torch.randn(H, H) * 0.3}
    return tensors, {"relu": False, "reverse": False, "training": False}


def test_families_are_registered_with_their_names(ext):
    families = ext.families()
    assert families["elman"] == [["weight_hh"], [], ["relu"]]
    assert families["ugrnn"] == [["weight_hh"], ["forget_bias"], []]


def test_unknown_and_missing_names_are_errors(ext):
    # Options travel by name: a misspelt or misplaced one is refused, never ignored or
    # taken for its neighbour.
    tensors, flags = _elman_args()
    with pytest.raises(RuntimeError, match=r"unknown flag 'rlu' \(known: bf16, relu, reverse, "):
        ext.forward("elman", tensors, {}, {**flags, "rlu": True})
    with pytest.raises(RuntimeError, match="unknown number 'forget_bias'"):
        ext.forward("elman", tensors, {"forget_bias": 1.0}, flags)
    without = dict(flags)
    del without["relu"]
    with pytest.raises(RuntimeError, match="rnnkit elman forward: flag 'relu' is missing"):
        ext.forward("elman", tensors, {}, without)
    with pytest.raises(RuntimeError, match=r"no compiled family 'lstm2' \(built: .*elman"):
        ext.forward("lstm2", tensors, {}, flags)


def test_named_flags_select_the_right_option(ext):
    # relu and reverse are neighbours; each changes exactly what its name says.
    tensors, flags = _elman_args()
    xp, w = tensors["xp"], tensors["weight_hh"]
    out_relu = ext.forward("elman", tensors, {}, {**flags, "relu": True})[0]
    h, ref = torch.zeros(2, 4), []
    for t in range(3):
        h = torch.relu(xp[t] + h @ w.t())
        ref.append(h)
    torch.testing.assert_close(out_relu, torch.stack(ref))
    out_rev = ext.forward("elman", tensors, {}, {**flags, "reverse": True})[0]
    h, ref = torch.zeros(2, 4), [None] * 3
    for t in (2, 1, 0):
        h = torch.tanh(xp[t] + h @ w.t())
        ref[t] = h
    torch.testing.assert_close(out_rev, torch.stack(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell_cls", [ElmanCell, UGRNNCell])
def test_threaded_pointwise_pass_equals_single_thread(ext, cell_cls):
    # The pointwise pass runs on one thread unless a step's block is large; forcing the
    # split (1 value per chunk) on 2 threads must give the same numbers bit for bit.
    torch.manual_seed(0)
    cell = cell_cls(5, 16, dtype=torch.float64)
    x = torch.randn(6, 8, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 3, 6, 1, 5, 6, 2, 4])
    previous_threads = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(2)
        for grain in (1 << 16, 1):
            previous = ext.set_pointwise_grain(grain)
            try:
                out, h = compiled.run_recurrence(cell, x, None, lengths, reverse=True)
                grads = torch.autograd.grad((out.sum() + h.pow(2).sum()), [x, cell.weight_hh])
            finally:
                ext.set_pointwise_grain(previous)
            results.append((out, h, *grads))
    finally:
        torch.set_num_threads(previous_threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_ugrnn_dispatch_and_explain_name_the_compiled_path():
    torch.manual_seed(0)
    layer = rnnkit.Recurrence(UGRNNCell(3, 4))
    x = torch.randn(5, 2, 3)  # (T, B, H_in): time-major by default
    text = rnnkit.explain(layer, x)
    assert "compiled" in text and "UGRNNCell (forget_bias=1.0)" in text
    loop = rnnkit.Recurrence(UGRNNCell(3, 4), engine="loop")
    loop.load_state_dict(layer.state_dict())
    out, out_ref = layer(x), loop(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(out_ref),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("T", "B", "H"), [(1, 1, 1), (1, 3, 5), (4, 1, 3)])
def test_ugrnn_at_tiny_sizes_matches_the_cell(T, B, H):
    torch.manual_seed(1)
    cell = UGRNNCell(2, H, dtype=torch.float64)
    x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    out, h = compiled.run_recurrence(cell, x, h0)
    h_ref, outs = h0, []
    for t in range(T):
        y, h_ref = cell(x[t], h_ref)
        outs.append(y)
    torch.testing.assert_close(out, torch.stack(outs), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    leaves = [x, h0, *cell.parameters()]
    g = torch.autograd.grad(out.sum() + h.sum(), leaves)
    g_ref = torch.autograd.grad(torch.stack(outs).sum() + h_ref.sum(), leaves)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_adapter_base_requires_the_family_methods():
    adapter = CompiledAdapter(ElmanCell(2, 3))
    assert adapter.state_parts() == (("state", 3),) and adapter.refusal() is None
    for method, args in [("parameter_shapes", ()), ("project", (torch.zeros(1, 1, 2),)),
                         ("kernel_tensors", ()), ("step", (None, None, {}))]:
        with pytest.raises(NotImplementedError):
            getattr(adapter, method)(*args)


def test_subclass_overriding_forward_is_refused():
    class Custom(UGRNNCell):
        def forward(self, x, state=None):
            return super().forward(x, state)

    ok, reason = compiled.supports(Custom(2, 3))
    assert not ok and "overrides UGRNNCell.forward" in reason
    ok, reason = compiled.supports(PlainSub(2, 3))
    assert ok and reason == "UGRNNCell (forget_bias=1.0)"


class PlainSub(UGRNNCell):
    """A subclass that keeps forward runs on its parent's kernel."""
