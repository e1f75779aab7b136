"""The "scan" path: minGRU/minLSTM in the drivers run as one scan node, equal to the loop.

Oracles: the eager loop over the cell's own step (``engine="loop"``), the NumPy equations of
the paper (tests/cells/test_minimal.py) and finite differences (gradcheck). Every test runs
twice: with the compiled scan kernel (csrc/min_scan.cpp; skipped where the extension cannot
be built) and with the torch-ops scan that serves without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, MinGRUCell, MinLSTMCell
from rnnkit.engine import dispatch, explain, parallel
from rnnkit.layers import Fold, Recurrence, UnfoldFrom
from tests.cells.test_minimal import numpy_min_gru, numpy_min_lstm

CELLS = [MinGRUCell, MinLSTMCell]
LENGTHS = [None, [7, 3, 1, 7]]


@pytest.fixture(autouse=True, params=["compiled", "torch-ops"])
def scan_backend(request, monkeypatch):
    """Which implementation of the scan node serves: the C++ kernel or torch operations."""
    if request.param == "compiled":
        if parallel._kernel(torch.zeros(1)) is None:
            pytest.skip("compiled kernels unavailable here")
    else:
        monkeypatch.setattr(parallel, "_kernel", lambda like: None)
    return request.param


def _pair(cell_class, dtype, reverse, fold=False, **kwargs):
    torch.manual_seed(0)
    cell = cell_class(5, 6, **kwargs).to(dtype)
    driver = Fold if fold else Recurrence
    return driver(cell, go_backwards=reverse), driver(cell, go_backwards=reverse, engine="loop")


def _grads(layer, x, lengths):
    out, h = layer(x, lengths=lengths)
    weights = torch.linspace(-1, 1, out.numel(), dtype=x.dtype).view_as(out)
    loss = (out * weights).sum() + (h * h).sum()
    return out, h, torch.autograd.grad(loss, [x, *layer.parameters()])


def _scan_and_loop(cell, x, lengths, reverse):
    """Outputs, final state and every gradient of ``Recurrence(cell)`` on the scan and on the
    loop, each as one flat list."""
    runs = [_grads(Recurrence(cell, go_backwards=reverse, engine=engine), x, lengths)
            for engine in ("scan", "loop")]
    return [[out, h, *grads] for out, h, grads in runs]


@pytest.mark.parametrize("fold", [False, True], ids=["Recurrence", "Fold"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "ragged"])
@pytest.mark.parametrize("cell_class", CELLS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)],
                         ids=["f64", "f32"])
def test_scan_equals_the_loop(cell_class, lengths, reverse, fold, dtype, tol):
    scan, loop = _pair(cell_class, dtype, reverse, fold)
    x = torch.randn(7, 4, 5, dtype=dtype, requires_grad=True)
    assert dispatch.make_plan(scan, x, lengths).paths() == ["scan"]
    ours = _grads(scan, x, lengths)
    theirs = _grads(loop, x, lengths)
    ours_flat = [ours[0], ours[1], *ours[2]]
    theirs_flat = [theirs[0], theirs[1], *theirs[2]]
    for a, b in zip(ours_flat, theirs_flat, strict=True):
        scale = max(float(b.detach().abs().max()), 1.0)  # "1e-5 of scale"
        torch.testing.assert_close(a, b, rtol=0, atol=tol * scale)
    if lengths is not None and not fold:
        out = ours[0]
        assert bool((out[3:, 1] == 0).all()) and bool((out[1:, 2] == 0).all())


@pytest.mark.parametrize("cell_class", CELLS)
def test_scan_matches_the_papers_equations(cell_class):
    """Independent of rnnkit's step: the NumPy minGRU/minLSTM over each sequence alone."""
    torch.manual_seed(1)
    cell = cell_class(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = [6, 2, 4]
    with torch.no_grad():
        out, h = Recurrence(cell, engine="scan")(x, lengths=lengths)
    reference = numpy_min_gru if cell_class is MinGRUCell else numpy_min_lstm
    w, b = cell.weight_ih.detach().numpy(), cell.bias_ih.detach().numpy()
    for row, length in enumerate(lengths):
        expected = reference(x[:length, row : row + 1].numpy(), np.zeros((1, 4)), w, b)
        np.testing.assert_allclose(out[:length, row].numpy(), expected[:, 0], atol=1e-12)
        np.testing.assert_allclose(h[row].numpy(), expected[-1, 0], atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell_class", CELLS)
def test_gradcheck(cell_class, reverse):
    torch.manual_seed(2)
    cell = cell_class(2, 3).double()
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def run(x, h0, weight, bias):
        with torch.nn.utils.stateless._reparametrize_module(
                cell, {"weight_ih": weight, "bias_ih": bias}):
            out, h = parallel.run_recurrence(cell, x, h0, lengths=lengths, reverse=reverse)
        return out, h

    assert torch.autograd.gradcheck(run, (x, h0, cell.weight_ih, cell.bias_ih))
    # the hand-written backward recomputes under create_graph: gradients of gradients
    assert torch.autograd.gradgradcheck(run, (x, h0, cell.weight_ih, cell.bias_ih))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 2), (4, 1, 2), (3, 2, 1)],
                         ids=["T1-B1-H1", "T1", "B1", "H1"])
@pytest.mark.parametrize("cell_class", CELLS)
def test_edge_sizes(cell_class, shape):
    steps, batch, hidden = shape
    torch.manual_seed(3)
    cell = cell_class(2, hidden).double()
    x = torch.randn(steps, batch, 2, dtype=torch.float64, requires_grad=True)
    lengths = [max(1, steps - i) for i in range(batch)]
    for reverse in (False, True):
        ours, theirs = _scan_and_loop(cell, x, lengths, reverse)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_padding_garbage_does_not_reach_the_gradients():
    torch.manual_seed(4)
    cell = MinLSTMCell(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x[3:, 1] = float("nan")
    x.requires_grad_(True)
    out, h = Recurrence(cell, engine="scan")(x, lengths=[5, 3])
    (grad,) = torch.autograd.grad(out.sum() + h.sum(), [x])
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    assert torch.isfinite(grad[:3]).all() and bool((grad[3:, 1] == 0).all())


def test_auto_plans_the_scan_and_explain_says_why():
    layer = Recurrence(MinGRUCell(3, 4))
    text = explain(layer, torch.randn(6, 2, 3))
    assert "MinGRUCell -> scan" in text and "linear in the state" in text


def test_drop_in_style_bidirectional_and_sequence_use_the_scan():
    torch.manual_seed(5)
    layer = rnnkit.layers.Bidirectional(Recurrence(MinLSTMCell(3, 4)))
    x = torch.randn(6, 2, 3)
    assert dispatch.make_plan(layer, x).paths() == ["scan", "scan"]


class ChangedStep(MinGRUCell):
    """A subclass whose step is no longer what the scan computes."""

    def forward(self, x, state=None):
        out, h = super().forward(x, state)
        return out * 0.5, h * 0.5


def test_the_loop_runs_where_the_scan_cannot_serve():
    x = torch.randn(6, 2, 3)
    assert "overrides forward()" in explain(Recurrence(ChangedStep(3, 4)), x)
    assert dispatch.make_plan(Recurrence(ChangedStep(3, 4)), x).paths() == ["loop"]
    hooked = MinGRUCell(3, 4)
    hooked.register_forward_hook(lambda *args: None)
    assert "forward hooks" in explain(Recurrence(hooked), x)
    backward = MinLSTMCell(3, 4)
    backward.register_full_backward_hook(lambda *args: None)
    ok, reason = parallel.supports(backward)
    assert not ok and reason.startswith("a backward hook on MinLSTMCell: backward hooks run")
    mask = torch.tensor([[True, False, True, True, True, True]] * 2)  # a gap: the loop
    assert dispatch.make_plan(Recurrence(MinGRUCell(3, 4)), x, mask=mask).paths() == ["loop"]
    # return_full_state wraps the cell (every step's state): the loop
    full = Recurrence(MinGRUCell(3, 4), return_full_state=True)
    assert dispatch.make_plan(full, x).paths() == ["loop"]


def test_forcing_the_scan_where_it_cannot_serve_is_an_error():
    x, h = torch.randn(6, 2, 3), torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="engine='scan' cannot run this recurrence: GRUCell "
                                           "has no parallel scan"):
        dispatch.run_recurrence(GRUCell(3, 4), x, h, engine="scan")
    with pytest.raises(RuntimeError, match="engine='scan' cannot run this recurrence: a mask"):
        dispatch.run_recurrence(MinGRUCell(3, 4), x, h, engine="scan",
                                mask=torch.tensor([[True, False]] * 6))


def test_stepping_one_input_at_a_time_runs_the_cells_forward():
    """UnfoldFrom feeds each output back in: a per-step dependence the scan cannot honour."""
    torch.manual_seed(6)
    cell = MinGRUCell(4, 4)
    calls = []
    cell.register_forward_pre_hook(lambda *args: calls.append(1))
    out, _, _ = UnfoldFrom(cell, head=nn.Tanh(), max_length=5)(torch.zeros(2, 4))
    assert len(calls) == 5 and out.shape == (5, 2, 4)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell_class", CELLS)
def test_gradient_of_the_initial_state_alone(cell_class, reverse):
    """Frozen weights, constant input: only h0 asks for a gradient (the backward skips the
    gates' gradient), against the loop."""
    torch.manual_seed(7)
    cell = cell_class(3, 4).double().requires_grad_(False)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for engine in ("scan", "loop"):
        out, h = Recurrence(cell, go_backwards=reverse, engine=engine)(x, h0)
        grads.append(torch.autograd.grad((out * out).sum() + h.sum(), [h0])[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell_class", CELLS)
def test_candidate_at_the_branch_point_of_g(cell_class, dtype):
    """g(x) = x + 1/2 for x >= 0, sigmoid(x) below: the scan forms g as the larger of the two
    and g' from the sign of x, the loop by ``where(x >= 0, ...)``; candidate pre-activations
    exactly 0, -0.0, +-1e-30 (g' is 1 at 0 and -0.0, sigmoid'(0) = 1/4 just below) and the
    NaN-free far ends, with the gradients of everything against the loop."""
    hidden = 8
    torch.manual_seed(8)
    cell = cell_class(3, hidden, bias=True).to(dtype)
    with torch.no_grad():
        cell.weight_ih[-hidden:] = 0.0  # the candidate's pre-activation is its bias alone
        cell.bias_ih[-hidden:] = torch.tensor(
            [0.0, -0.0, -1e-30, 1e-30, 2.5, -2.5, 40.0, -40.0], dtype=dtype)
    x = torch.randn(5, 2, 3, dtype=dtype, requires_grad=True)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for reverse in (False, True):
        ours, theirs = _scan_and_loop(cell, x, None, reverse)
        for a, b in zip(ours, theirs, strict=True):
            scale = max(float(b.detach().abs().max()), 1.0)
            torch.testing.assert_close(a, b, rtol=0, atol=tol * scale)


def test_the_compiled_kernel_serves_float_cpu_inputs_only(scan_backend):
    """float32/float64 on the CPU go to the kernel when it is built; other dtypes to torch."""
    if scan_backend != "compiled":
        pytest.skip("about the compiled backend")
    assert parallel._kernel(torch.zeros(2, dtype=torch.float64)) is not None
    assert parallel._kernel(torch.zeros(2, dtype=torch.bfloat16)) is None
    cell = MinLSTMCell(3, 4).to(torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    with torch.no_grad():
        ours, _ = Recurrence(cell, engine="scan")(x)
        theirs, _ = Recurrence(cell, engine="loop")(x)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=3e-2)


def test_the_kernel_names_bad_arguments(scan_backend):
    """The C++ entry checks shapes itself (a wrong call is an error, never a wrong read)."""
    if scan_backend != "compiled":
        pytest.skip("a check of the C++ kernel's entry: nothing to check on the torch-ops scan")
    kernel = parallel._kernel(torch.zeros(1))
    pre = torch.zeros(4, 2, 15)  # (T, B, G*H): minLSTM's three gates of H = 5
    with pytest.raises(RuntimeError, match="pre must be"):
        kernel.min_scan_forward(pre, torch.zeros(2, 5), True, False)  # minGRU takes 2 gates
    with pytest.raises(RuntimeError, match="pre must be"):
        kernel.min_scan_forward(pre, torch.zeros(3, 5), False, False)  # batch 3, not 2
    hs = kernel.min_scan_forward(pre, torch.zeros(2, 5), False, False)
    with pytest.raises(RuntimeError, match="grad has shape"):
        kernel.min_scan_backward(torch.zeros(4, 2, 6), pre, torch.zeros(2, 5), hs, False,
                                 False, True, True)
