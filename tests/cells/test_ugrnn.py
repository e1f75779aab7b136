"""UGRNNCell against TF1 contrib ``UGRNNCell``'s equations written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit import functional as RF
from rnnkit.cells import UGRNNCell

T, B, I, H = 5, 3, 4, 6


def numpy_ugrnn(xs, h, kernel, bias, forget_bias):
    """TF1 ``UGRNNCell.call`` with TF's parameter layout: ``kernel (I + H, 2H)``."""

    def sigmoid(a):
        return 1.0 / (1.0 + np.exp(-a))

    outputs = []
    for x in xs:
        rnn_matrix = np.concatenate([x, h], axis=1) @ kernel
        if bias is not None:
            rnn_matrix = rnn_matrix + bias
        g_act, c_act = np.split(rnn_matrix, 2, axis=1)
        c = np.tanh(c_act)
        g = sigmoid(g_act + forget_bias)
        h = g * h + (1.0 - g) * c
        outputs.append(h)
    return np.stack(outputs)


def random_cell(**kwargs) -> UGRNNCell:
    torch.manual_seed(0)
    cell = UGRNNCell(I, H, **kwargs).double()
    with torch.no_grad():
        for p in cell.parameters():  # non-zero bias, so every term is exercised
            p.uniform_(-0.7, 0.7)
    return cell


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("forget_bias", [1.0, 0.0, -0.5])
def test_matches_tf_equations(bias, forget_bias):
    cell = random_cell(bias=bias, forget_bias=forget_bias)
    xs = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    h, outs = h0, []
    for x in xs:
        out, h = cell(x, h)
        assert torch.equal(out, h)
        outs.append(out)
    # the documented TF mapping: kernel = [weight_ih.T; weight_hh.T]
    kernel = torch.cat([cell.weight_ih.T, cell.weight_hh.T]).detach().numpy()
    bias_np = None if cell.bias_ih is None else cell.bias_ih.detach().numpy()
    expected = numpy_ugrnn(xs.numpy(), h0.numpy(), kernel, bias_np, forget_bias)
    np.testing.assert_allclose(torch.stack(outs).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    cell = random_cell()
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, dtype=torch.float64, requires_grad=True)

    def two_steps(x, h, w_ih, w_hh, b):
        weights = RF.UGRNNWeights(w_ih, w_hh, b)
        _, h = RF.ugrnn_step(x, h, weights, forget_bias=1.0)
        return RF.ugrnn_step(x * 0.5, h, weights, forget_bias=1.0)[0]

    inputs = (x, h, *(p.detach().clone().requires_grad_() for p in cell.parameters()))
    assert torch.autograd.gradcheck(two_steps, inputs)


def test_shapes_defaults_and_init():
    cell = UGRNNCell(I, H)
    assert cell.state_size == H and cell.output_size == H
    assert cell.forget_bias == 1.0
    assert tuple(cell.weight_ih.shape) == (2 * H, I)
    assert tuple(cell.weight_hh.shape) == (2 * H, H)
    assert torch.count_nonzero(cell.bias_ih) == 0  # TF's _Linear starts its bias at zero
    bound = 1 / H**0.5
    assert cell.weight_hh.abs().max() <= bound
    out, h = cell(torch.randn(B, I))  # state=None: zeros
    assert out.shape == (B, H)
    zero = cell.initial_state(B)
    torch.testing.assert_close(cell(torch.ones(B, I), zero)[0], cell(torch.ones(B, I))[0])
    assert UGRNNCell(I, H, bias=False).bias_ih is None
    assert "forget_bias=0.0" in repr(UGRNNCell(I, H, forget_bias=0.0))


def test_float32_runs():
    cell = UGRNNCell(I, H)
    out, _ = cell(torch.randn(B, I))
    assert out.dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        UGRNNCell(I, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        UGRNNCell(2.5, H)
    with pytest.raises(TypeError, match="UGRNNCell: bias must be a bool"):
        UGRNNCell(I, H, bias=1)
    with pytest.raises(TypeError, match="UGRNNCell: forget_bias must be a finite number"):
        UGRNNCell(I, H, forget_bias="1")
    with pytest.raises(TypeError, match="UGRNNCell: forget_bias must be a finite number"):
        UGRNNCell(I, H, forget_bias=float("nan"))
    cell = UGRNNCell(I, H)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 4\), got \(3, 5\)"):
        cell(torch.randn(B, 5))
    with pytest.raises(TypeError, match="input must be floating point"):
        cell(torch.ones(B, I, dtype=torch.long))
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match"):
        cell(torch.randn(B, I, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 6\)"):
        cell(torch.randn(B, I), torch.randn(B, H + 1))
