"""NASCell against TF1 contrib ``NASCell.call`` written out in NumPy with TF's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit import functional as RF
from rnnkit.cells import NASCell

T, B, I, H, P = 4, 3, 5, 6, 4


def numpy_nas(xs, state, kernel, recurrent_kernel, bias, projection):
    """TF1 ``NASCell.call``: ``kernel (I, 8H)``, ``recurrent_kernel (P, 8H)``, state (c, m)."""

    def sigmoid(a):
        return 1.0 / (1.0 + np.exp(-a))

    def relu(a):
        return np.maximum(a, 0.0)

    tanh = np.tanh
    c_prev, m_prev = state
    outputs = []
    for x in xs:
        m_matrix = m_prev @ recurrent_kernel
        inputs_matrix = x @ kernel
        if bias is not None:
            m_matrix = m_matrix + bias
        m = np.split(m_matrix, 8, axis=1)
        i = np.split(inputs_matrix, 8, axis=1)
        layer1_0 = sigmoid(i[0] + m[0])
        layer1_1 = relu(i[1] + m[1])
        layer1_2 = sigmoid(i[2] + m[2])
        layer1_3 = relu(i[3] * m[3])
        layer1_4 = tanh(i[4] + m[4])
        layer1_5 = sigmoid(i[5] + m[5])
        layer1_6 = tanh(i[6] + m[6])
        layer1_7 = sigmoid(i[7] + m[7])
        l2_0 = tanh(layer1_0 * layer1_1)
        l2_1 = tanh(layer1_2 + layer1_3)
        l2_2 = tanh(layer1_4 * layer1_5)
        l2_3 = sigmoid(layer1_6 + layer1_7)
        l2_0 = tanh(l2_0 + c_prev)
        new_c = l2_0 * l2_1
        l3_1 = tanh(l2_2 + l2_3)
        new_m = tanh(new_c * l3_1)
        if projection is not None:
            new_m = new_m @ projection
        c_prev, m_prev = new_c, new_m
        outputs.append(new_m)
    return np.stack(outputs), (c_prev, m_prev)


def random_cell(**kwargs) -> NASCell:
    torch.manual_seed(0)
    cell = NASCell(I, H, **kwargs).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    return cell


@pytest.mark.parametrize("proj_size", [0, P])  # TF also allows num_proj > num_units; rnnkit not
@pytest.mark.parametrize("bias", [False, True])
def test_matches_tf_equations(proj_size, bias):
    cell = random_cell(proj_size=proj_size, bias=bias)
    out_size = proj_size or H
    assert cell.state_size == (out_size, H) and cell.output_size == out_size
    xs = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, out_size, dtype=torch.float64)
    c0 = torch.randn(B, H, dtype=torch.float64)
    state, outs = (h0, c0), []
    for x in xs:
        out, state = cell(x, state)
        assert torch.equal(out, state[0])
        outs.append(out)

    def np_(p):
        return None if p is None else p.detach().numpy()

    expected, (c_tf, m_tf) = numpy_nas(
        xs.numpy(),
        (c0.numpy(), h0.numpy()),
        np_(cell.weight_ih.T),
        np_(cell.weight_hh.T),
        np_(cell.bias_hh),
        None if cell.weight_hr is None else np_(cell.weight_hr.T),
    )
    np.testing.assert_allclose(torch.stack(outs).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state[1].detach().numpy(), c_tf, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state[0].detach().numpy(), m_tf, rtol=1e-12, atol=1e-12)


def test_every_branch_matters():
    """Changing any one of the 8 branches' weights changes the output (no dead branch)."""
    cell = random_cell(bias=True)
    x = torch.randn(B, I, dtype=torch.float64)
    state = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))
    base = cell(x, state)[0]
    for k in range(8):
        with torch.no_grad():
            cell.weight_ih[k * H : (k + 1) * H] += 0.3
        changed = cell(x, state)[0]
        with torch.no_grad():
            cell.weight_ih[k * H : (k + 1) * H] -= 0.3
        assert (changed - base).abs().max() > 1e-6, f"branch {k} has no effect"


@pytest.mark.parametrize("proj_size", [0, P])
def test_gradcheck(proj_size):
    # small sizes: gradcheck builds the full Jacobian of every weight
    b, i, hidden = 2, 2, 3
    torch.manual_seed(1)
    cell = NASCell(i, hidden, proj_size=proj_size and 2, bias=True).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    out = cell.output_size
    x = torch.randn(b, i, dtype=torch.float64, requires_grad=True)
    h = torch.randn(b, out, dtype=torch.float64, requires_grad=True)
    c = torch.randn(b, hidden, dtype=torch.float64, requires_grad=True)

    def two_steps(x, h, c, *params):
        weights = RF.NASWeights(*params)
        _, state = RF.nas_step(x, (h, c), weights)
        out, (h2, c2) = RF.nas_step(x * 0.5, state, weights)
        return out, c2

    params = [cell.weight_ih, cell.weight_hh, cell.bias_hh, cell.weight_hr]
    params = [None if p is None else p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(two_steps, (x, h, c, *params))


def test_defaults_and_init():
    cell = NASCell(I, H, bias=False)  # TF's default, use_biases=False
    assert cell.bias is False and cell.bias_hh is None
    assert cell.weight_hr is None and cell.proj_size == 0
    assert tuple(cell.weight_ih.shape) == (8 * H, I)
    assert tuple(cell.weight_hh.shape) == (8 * H, H)
    assert "bias=False" in repr(cell)
    with_bias = NASCell(I, H, proj_size=P)  # rnnkit's default, as every cell: bias=True
    assert with_bias.bias is True
    assert torch.count_nonzero(with_bias.bias_hh) == 0
    assert tuple(with_bias.weight_hh.shape) == (8 * H, P)
    assert tuple(with_bias.weight_hr.shape) == (P, H)
    h, c = with_bias.initial_state(B)
    assert h.shape == (B, P) and c.shape == (B, H)
    out, _ = with_bias(torch.randn(B, I))
    assert out.shape == (B, P)
    assert repr(with_bias) == f"NASCell({I}, {H}, proj_size={P})"


def test_errors():
    with pytest.raises(ValueError, match="proj_size must be >= 0, got -1"):
        NASCell(I, H, proj_size=-1)
    with pytest.raises(TypeError, match="NASCell: bias must be a bool"):
        NASCell(I, H, bias="yes")
    cell = NASCell(I, H, proj_size=P)
    x = torch.randn(B, I)
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\), got Tensor"):
        cell(x, torch.zeros(B, H))
    with pytest.raises(TypeError, match="got tuple of length 3"):
        cell(x, (torch.zeros(B, P),) * 3)
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 4\)"):
        cell(x, (torch.zeros(B, H), torch.zeros(B, H)))
    with pytest.raises(ValueError, match=r"expected state c of shape \(3, 6\)"):
        cell(x, (torch.zeros(B, P), torch.zeros(B, P)))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 5\)"):
        cell(torch.randn(B, I + 1))
