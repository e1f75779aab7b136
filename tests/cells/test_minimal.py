"""MinGRUCell and MinLSTMCell: the step against the paper's equations in NumPy, and the
parallel log-space scan against the step-by-step loop (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit import functional as RF
from rnnkit.cells import MinGRUCell, MinLSTMCell

T, B, I, H = 6, 3, 4, 5
CELLS = [MinGRUCell, MinLSTMCell]


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_g(a):
    return np.where(a >= 0, a + 0.5, np_sigmoid(a))


def numpy_min_gru(xs, h, w, b):
    """Feng et al. 2024, minGRU (sequential mode, log-space-compatible g)."""
    outputs = []
    for x in xs:
        pre = x @ w.T + (0 if b is None else b)
        k_z, k_h = np.split(pre, 2, axis=1)
        z = np_sigmoid(k_z)
        h = (1 - z) * h + z * np_g(k_h)
        outputs.append(h)
    return np.stack(outputs)


def numpy_min_lstm(xs, h, w, b):
    """Feng et al. 2024, minLSTM with time-independent normalisation f/(f+i), i/(f+i)."""
    outputs = []
    for x in xs:
        pre = x @ w.T + (0 if b is None else b)
        k_f, k_i, k_h = np.split(pre, 3, axis=1)
        f, i = np_sigmoid(k_f), np_sigmoid(k_i)
        h = f / (f + i) * h + i / (f + i) * np_g(k_h)
        outputs.append(h)
    return np.stack(outputs)


ORACLES = {MinGRUCell: numpy_min_gru, MinLSTMCell: numpy_min_lstm}


def random_cell(cls, bias=True, scale=1.5, seed=0):
    torch.manual_seed(seed)
    cell = cls(I, H, bias=bias).double()
    with torch.no_grad():
        for p in cell.parameters():  # wide enough that g sees both of its branches
            p.uniform_(-scale, scale)
    return cell


def loop(cell, xs, h0):
    h, outs = h0, []
    for x in xs:
        out, h = cell(x, h)
        assert torch.equal(out, h)
        outs.append(out)
    return torch.stack(outs)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_step_matches_paper_equations(cls, bias):
    cell = random_cell(cls, bias=bias)
    xs = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    got = loop(cell, xs, h0)
    b = None if cell.bias_ih is None else cell.bias_ih.detach().numpy()
    expected = ORACLES[cls](xs.numpy(), h0.numpy(), cell.weight_ih.detach().numpy(), b)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    candidates = (xs @ cell.weight_ih.T)[..., -H:]
    assert (candidates > 0).any() and (candidates < 0).any()  # both branches of g ran


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("h0_kind", ["none", "zeros", "positive", "any_sign"])
@pytest.mark.parametrize("steps", [1, T, 50])
def test_scan_equals_loop(cls, h0_kind, steps):
    cell = random_cell(cls)
    xs = torch.randn(steps, B, I, dtype=torch.float64)
    h0 = {
        "none": None,
        "zeros": torch.zeros(B, H, dtype=torch.float64),
        "positive": torch.rand(B, H, dtype=torch.float64) + 0.1,
        "any_sign": 3 * torch.randn(B, H, dtype=torch.float64),
    }[h0_kind]
    scanned = cell.scan(xs, h0)
    looped = loop(cell, xs, h0 if h0 is not None else cell.initial_state(B))
    assert scanned.shape == (steps, B, H)
    torch.testing.assert_close(scanned, looped, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", CELLS)
def test_scan_of_empty_sequence_is_empty(cls):
    cell = cls(I, H)
    assert cell.scan(torch.randn(0, B, I)).shape == (0, B, H)


@pytest.mark.parametrize("cls", CELLS)
def test_scan_gradients_equal_loop_gradients(cls):
    cell = random_cell(cls)
    xs = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, H, dtype=torch.float64)

    def grads(run):
        cell.zero_grad()
        xs.grad = h0.grad = None
        (run() * weights).sum().backward()
        return [xs.grad.clone(), h0.grad.clone()] + [p.grad.clone() for p in cell.parameters()]

    for a, b in zip(grads(lambda: cell.scan(xs, h0)), grads(lambda: loop(cell, xs, h0)),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scan", [RF.min_gru_scan, RF.min_lstm_scan])
def test_scan_gradcheck(scan):
    blocks = 2 if scan is RF.min_gru_scan else 3
    torch.manual_seed(3)
    xs = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(blocks * 2, 3, dtype=torch.float64) * 1.2).requires_grad_()
    b = (torch.randn(blocks * 2, dtype=torch.float64) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda xs, h0, w, b: scan(xs, h0, RF.MinRNNWeights(w, b)), (xs, h0, w, b)
    )


@pytest.mark.parametrize("step", [RF.min_gru_step, RF.min_lstm_step])
def test_step_gradcheck(step):
    blocks = 2 if step is RF.min_gru_step else 3
    torch.manual_seed(4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(blocks * 2, 3, dtype=torch.float64) * 1.2).requires_grad_()
    b = torch.randn(blocks * 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, h, w, b: step(x, h, RF.MinRNNWeights(w, b))[0], (x, h, w, b)
    )


def test_g_and_log_g():
    a = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    g = RF.min_rnn_g(a)
    assert torch.all(g > 0)
    torch.testing.assert_close(RF.min_rnn_log_g(a), torch.log(g), rtol=1e-12, atol=1e-12)
    # continuous at 0 (both branches give 0.5) and finite far below 0, where g underflows
    torch.testing.assert_close(RF.min_rnn_g(torch.tensor([-1e-12, 0.0])), torch.full((2,), 0.5))
    assert torch.isfinite(RF.min_rnn_log_g(torch.tensor([-1000.0]))).all()


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("chunk_size", [1, 4, 128, None])
def test_chunked_scan_equals_loop(cls, chunk_size):
    cell = random_cell(cls)
    xs = torch.randn(50, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    torch.testing.assert_close(
        cell.scan(xs, h0, chunk_size=chunk_size), loop(cell, xs, h0), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("cls", CELLS)
def test_long_float32_scan_is_finite_and_close_to_loop(cls):
    """Over 2000 float32 steps the scan stays finite (no overflow of 1 / prod a_t) and, with
    the default chunks, within 1e-4 of the float64 loop."""
    torch.manual_seed(5)
    cell = cls(I, H)
    xs = torch.randn(2000, 2, I)
    with torch.no_grad():
        scanned = cell.scan(xs)
        whole = cell.scan(xs, chunk_size=None)
        cell.double()
        looped = loop(cell, xs.double(), cell.initial_state(2))
    assert torch.isfinite(scanned).all() and torch.isfinite(whole).all()
    torch.testing.assert_close(scanned.double(), looped, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", CELLS)
def test_shapes_and_init(cls):
    cell = cls(I, H)
    blocks = 2 if cls is MinGRUCell else 3
    assert tuple(cell.weight_ih.shape) == (blocks * H, I)
    assert tuple(cell.bias_ih.shape) == (blocks * H,)
    assert cell.state_size == H and cell.output_size == H
    assert cell.weight_ih.abs().max() <= 1 / I**0.5
    assert cls(I, H, bias=False).bias_ih is None
    out, h = cell(torch.randn(B, I))
    assert out.shape == (B, H)
    assert "bias=False" in repr(cls(I, H, bias=False))


@pytest.mark.parametrize("cls", CELLS)
def test_errors(cls):
    name = cls.__name__
    cell = cls(I, H)
    with pytest.raises(ValueError, match=r"scan: expected input of shape \(time, batch, 4\)"):
        cell.scan(torch.randn(B, I))
    with pytest.raises(ValueError, match=rf"{name}.scan: chunk_size must be >= 1, got 0"):
        cell.scan(torch.randn(T, B, I), chunk_size=0)
    with pytest.raises(ValueError, match=r"got \(6, 3, 5\)"):
        cell.scan(torch.randn(T, B, I + 1))
    with pytest.raises(TypeError, match=rf"{name}.scan: input must be floating point"):
        cell.scan(torch.ones(T, B, I, dtype=torch.long))
    with pytest.raises(TypeError, match=rf"{name}.scan: input must be a Tensor, got list"):
        cell.scan([[1.0]])
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match"):
        cell.scan(torch.randn(T, B, I, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(3, 5\)"):
        cell.scan(torch.randn(T, B, I), torch.zeros(B, H + 1))
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 5\)"):
        cell(torch.randn(B, I), torch.zeros(1, H))
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        cls(I, -2)
    with pytest.raises(TypeError, match=f"{name}: bias must be a bool"):
        cls(I, H, bias=0)
