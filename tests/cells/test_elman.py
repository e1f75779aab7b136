"""ElmanCell against torch.nn.RNNCell, the IRNN recipe, and finite differences."""

import math

import pytest
import torch
from torch import nn

from rnnkit.cells import ElmanCell
from tests.helpers import (
    assert_same_parameters,
    assert_step_matches_torch_cell,
    gradcheck_cell,
)

B, I, H = 3, 4, 5


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_rnncell_outputs_and_gradients(nonlinearity, bias):
    torch.manual_seed(0)
    ref = nn.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity)
    cell = ElmanCell(I, H, nonlinearity=nonlinearity, bias=bias)
    cell.load_state_dict(ref.state_dict())
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(B, I, requires_grad=True)
    h = torch.randn(B, H, requires_grad=True)
    assert_step_matches_torch_cell(cell, ref, x, h)


def test_relu_really_is_relu():
    cell = ElmanCell(I, H, nonlinearity="relu", dtype=torch.float64)
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    pre = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    torch.testing.assert_close(cell(x, h)[0], pre.clamp(min=0), atol=1e-12, rtol=0)


def test_default_init_is_torch_init():
    torch.manual_seed(1)
    ref = nn.RNNCell(I, H)
    torch.manual_seed(1)
    cell = ElmanCell(I, H)
    assert_same_parameters(cell, ref)
    assert all(p.abs().max() <= 1 / math.sqrt(H) for p in cell.parameters())


def test_irnn_init():
    torch.manual_seed(2)
    cell = ElmanCell(200, 100, nonlinearity="relu", init="irnn")
    assert torch.equal(cell.weight_hh, torch.eye(100))
    assert torch.equal(cell.bias_ih, torch.zeros(100))
    assert torch.equal(cell.bias_hh, torch.zeros(100))
    # 20000 draws from N(0, 0.001^2): the sample std is within a few percent of 0.001
    assert abs(cell.weight_ih.std().item() - 1e-3) < 5e-5
    assert abs(cell.weight_ih.mean().item()) < 5e-5
    # reset_parameters keeps the recipe; no-bias cells work too
    with torch.no_grad():
        cell.weight_hh.fill_(3.0)
    cell.reset_parameters()
    assert torch.equal(cell.weight_hh, torch.eye(100))
    nobias = ElmanCell(3, 4, init="irnn", bias=False)
    assert nobias.bias_ih is None and torch.equal(nobias.weight_hh, torch.eye(4))


def test_irnn_with_zero_input_carries_a_positive_state_unchanged():
    # identity recurrence, zero bias, relu: h_t = relu(h_{t-1}) = h_{t-1} for h >= 0
    cell = ElmanCell(I, H, nonlinearity="relu", init="irnn")
    h = torch.rand(B, H)
    out, _ = cell(torch.zeros(B, I), h)
    assert torch.equal(out, h)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"nonlinearity": "relu"}, {"bias": False}, {"init": "irnn", "nonlinearity": "relu"},
     {"init": "irnn"}],
)
def test_gradcheck(kwargs):
    torch.manual_seed(3)
    cell = ElmanCell(3, 4, dtype=torch.float64, **kwargs)
    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)
    if kwargs.get("nonlinearity") == "relu":
        # finite differences need every pre-activation away from relu's kink at 0
        pre = preactivation(cell, x, h)
        assert pre.abs().min() > 1e-4
    gradcheck_cell(cell, x, h)


def preactivation(cell, x, h):
    pre = x @ cell.weight_ih.T + h @ cell.weight_hh.T
    if cell.bias:
        pre = pre + cell.bias_ih + cell.bias_hh
    return pre


def test_contract_attributes_and_state_none():
    torch.manual_seed(4)
    cell = ElmanCell(I, H)
    x = torch.randn(B, I)
    out, h = cell(x)
    assert torch.equal(out, cell(x, cell.initial_state(B))[0]) and torch.equal(out, h)
    assert cell.state_size == H and cell.output_size == H
    assert cell.input_size == I and cell.hidden_size == H
    assert cell.weight_ih.dtype == torch.float32
    assert ElmanCell(I, H, dtype=torch.float64).weight_hh.dtype == torch.float64
    text = repr(ElmanCell(I, H, nonlinearity="relu", bias=False, init="irnn"))
    assert "nonlinearity='relu'" in text and "bias=False" in text and "init='irnn'" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": 0}, ValueError, "input_size must be >= 1, got 0"),
        ({"hidden_size": -2}, ValueError, "hidden_size must be >= 1, got -2"),
        ({"hidden_size": 1.5}, TypeError, r"hidden_size must be an int, got float \(1.5\)"),
        ({"hidden_size": True}, TypeError, "hidden_size must be an int, got bool"),
        ({"nonlinearity": "sigmoid"}, ValueError,
         "ElmanCell: nonlinearity must be one of 'tanh', 'relu', got 'sigmoid'"),
        ({"init": "xavier"}, ValueError,
         "ElmanCell: init must be one of 'default', 'irnn', got 'xavier'"),
        ({"bias": "yes"}, TypeError, r"ElmanCell: bias must be a bool, got str \('yes'\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ElmanCell(**{"input_size": I, "hidden_size": H, **kwargs})


def test_bad_call_arguments():
    cell = ElmanCell(I, H)
    x, h = torch.randn(B, I), torch.zeros(B, H)
    with pytest.raises(ValueError, match=r"ElmanCell: expected input of shape \(batch, 4\), got"):
        cell(torch.randn(2, B, I), h)
    with pytest.raises(TypeError, match="ElmanCell: input must be floating point, got dtype"):
        cell(torch.ones(B, I, dtype=torch.bool), h)
    with pytest.raises(TypeError, match="input dtype torch.float16 does not match the parameter"):
        cell(x.half(), h.half())
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 5\) .* got \(5,\)"):
        cell(x, torch.zeros(H))
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 5\) .* got \(2, 5\)"):
        cell(x, torch.zeros(2, H))
    with pytest.raises(TypeError, match="ElmanCell: state h must be a Tensor, got list"):
        cell(x, [0.0] * H)
    with pytest.raises(TypeError, match="state h dtype torch.float64 does not match input"):
        cell(x, h.double())
