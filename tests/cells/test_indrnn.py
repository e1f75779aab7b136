"""IndRNNCell against the paper's equation written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit import functional as RF
from rnnkit.cells import IndRNNCell

T, B, I, H = 5, 3, 4, 6


def numpy_indrnn(xs, h, w, u, b, nonlinearity, max_abs):
    """h_t = act(W x_t + u * h_{t-1} + b), u clipped to [-max_abs, max_abs] (Li et al. 2018)."""
    if max_abs is not None:
        u = np.clip(u, -max_abs, max_abs)
    act = (lambda a: np.maximum(a, 0.0)) if nonlinearity == "relu" else np.tanh
    outputs = []
    for x in xs:
        pre = x @ w.T + u * h
        if b is not None:
            pre = pre + b
        h = act(pre)
        outputs.append(h)
    return np.stack(outputs)


def random_cell(**kwargs) -> IndRNNCell:
    torch.manual_seed(0)
    cell = IndRNNCell(I, H, **kwargs).double()
    with torch.no_grad():
        cell.weight_ih.uniform_(-0.7, 0.7)
        cell.weight_hh.uniform_(-1.5, 1.5)  # some beyond the clip used below
        if cell.bias_ih is not None:
            cell.bias_ih.uniform_(-0.3, 0.5)
    return cell


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("max_abs", [None, 0.9])
def test_matches_equation(nonlinearity, bias, max_abs):
    cell = random_cell(nonlinearity=nonlinearity, bias=bias, recurrent_max_abs=max_abs)
    xs = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.rand(B, H, dtype=torch.float64)
    h, outs = h0, []
    for x in xs:
        out, h = cell(x, h)
        outs.append(out)
    b = None if cell.bias_ih is None else cell.bias_ih.detach().numpy()
    expected = numpy_indrnn(
        xs.numpy(), h0.numpy(), cell.weight_ih.detach().numpy(),
        cell.weight_hh.detach().numpy(), b, nonlinearity, max_abs,
    )
    np.testing.assert_allclose(torch.stack(outs).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_clipped_recurrent_weights_get_no_gradient():
    cell = random_cell(nonlinearity="tanh", recurrent_max_abs=0.9)
    clipped = cell.weight_hh.detach().abs() > 0.9
    assert clipped.any() and (~clipped).any()
    h = torch.randn(B, H, dtype=torch.float64)
    for x in torch.randn(T, B, I, dtype=torch.float64):
        _, h = cell(x, h)
    h.sum().backward()
    assert torch.all(cell.weight_hh.grad[clipped] == 0)
    assert torch.all(cell.weight_hh.grad[~clipped] != 0)
    # the stored weights are not modified by the clip
    assert cell.weight_hh.detach().abs().max() > 0.9


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_gradcheck(nonlinearity):
    cell = random_cell(nonlinearity=nonlinearity)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = torch.rand(B, H, dtype=torch.float64, requires_grad=True)

    def two_steps(x, h, w_ih, w_hh, b):
        weights = RF.IndRNNWeights(w_ih, w_hh, b)
        _, h = RF.indrnn_step(x, h, weights, nonlinearity=nonlinearity)
        return RF.indrnn_step(x * 0.5, h, weights, nonlinearity=nonlinearity)[0]

    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    assert torch.autograd.gradcheck(two_steps, (x, h, *params))


def test_shapes_defaults_and_init():
    cell = IndRNNCell(I, H)
    assert cell.nonlinearity == "relu" and cell.recurrent_max_abs is None
    assert cell.state_size == H and cell.output_size == H
    assert tuple(cell.weight_hh.shape) == (H,)
    assert torch.all((cell.weight_hh >= 0) & (cell.weight_hh <= 1))
    assert torch.count_nonzero(cell.bias_ih) == 0
    small = IndRNNCell(I, 200, recurrent_max_abs=0.5)
    assert small.weight_hh.max() <= 0.5
    assert IndRNNCell(I, H, bias=False).bias_ih is None
    out, h = cell(torch.randn(B, I))
    assert out.shape == (B, H) and torch.all(out >= 0)
    assert "recurrent_max_abs=0.5" in repr(small)


def test_errors():
    with pytest.raises(ValueError, match="IndRNNCell: nonlinearity must be one of 'relu', 'tanh'"):
        IndRNNCell(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="recurrent_max_abs must be > 0, got 0"):
        IndRNNCell(I, H, recurrent_max_abs=0)
    with pytest.raises(TypeError, match="recurrent_max_abs must be a positive number or None"):
        IndRNNCell(I, H, recurrent_max_abs="1")
    with pytest.raises(TypeError, match="IndRNNCell: bias must be a bool"):
        IndRNNCell(I, H, bias=None)
    with pytest.raises(ValueError, match="nonlinearity must be 'relu' or 'tanh', got 'elu'"):
        RF.indrnn_step(
            torch.zeros(1, 2), torch.zeros(1, 3),
            RF.IndRNNWeights(torch.zeros(3, 2), torch.zeros(3)), nonlinearity="elu",
        )
    cell = IndRNNCell(I, H)
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 6\)"):
        cell(torch.randn(B, I), torch.zeros(B + 1, H))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 4\)"):
        cell(torch.randn(B, I, 1))
