"""GRUCell against torch.nn.GRUCell, hand-written equations, and finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit.cells import GRUCell
from tests.helpers import (
    assert_same_parameters,
    assert_step_matches_torch_cell,
    gradcheck_cell,
    layer_norm_by_hand,
    randomise,
    sigmoid,
)

B, I, H = 3, 4, 5


def gru_by_hand(cell: GRUCell, x, h):
    """The GRU equations per gate, written independently of rnnkit.functional."""
    n = cell.hidden_size
    W_ir, W_iz, W_in = cell.weight_ih[:n], cell.weight_ih[n : 2 * n], cell.weight_ih[2 * n :]
    W_hr, W_hz, W_hn = cell.weight_hh[:n], cell.weight_hh[n : 2 * n], cell.weight_hh[2 * n :]
    b_ih = cell.bias_ih if cell.bias else torch.zeros(3 * n, dtype=x.dtype)
    b_hh = cell.bias_hh if cell.bias else torch.zeros(3 * n, dtype=x.dtype)
    b_ir, b_iz, b_in = b_ih[:n], b_ih[n : 2 * n], b_ih[2 * n :]
    b_hr, b_hz, b_hn = b_hh[:n], b_hh[n : 2 * n], b_hh[2 * n :]
    xs = torch.cat([x @ W_ir.T, x @ W_iz.T, x @ W_in.T], 1)
    if cell.layer_norm:
        xs = layer_norm_by_hand(xs, cell.ln_ih)
    x_r, x_z, x_n = xs[:, :n] + b_ir, xs[:, n : 2 * n] + b_iz, xs[:, 2 * n :] + b_in
    if cell.reset_after:
        hs = torch.cat([h @ W_hr.T, h @ W_hz.T, h @ W_hn.T], 1)
        if cell.layer_norm:
            hs = layer_norm_by_hand(hs, cell.ln_hh)
        r = sigmoid(x_r + hs[:, :n] + b_hr)
        z = sigmoid(x_z + hs[:, n : 2 * n] + b_hz)
        cand = torch.tanh(x_n + r * (hs[:, 2 * n :] + b_hn))
    else:
        hs = torch.cat([h @ W_hr.T, h @ W_hz.T], 1)
        if cell.layer_norm:
            hs = layer_norm_by_hand(hs, cell.ln_hh)
        r = sigmoid(x_r + hs[:, :n] + b_hr)
        z = sigmoid(x_z + hs[:, n:] + b_hz)
        hn = (r * h) @ W_hn.T
        if cell.layer_norm:
            hn = layer_norm_by_hand(hn, cell.ln_hn)
        cand = torch.tanh(x_n + hn + b_hn)
    return (1 - z) * cand + z * h


OPTIONS = {
    "torch": {},
    "no_bias": {"bias": False},
    "reset_before": {"reset_after": False},
    "reset_before_no_bias": {"reset_after": False, "bias": False},
    "layer_norm": {"layer_norm": True},
    "layer_norm_reset_before": {"layer_norm": True, "reset_after": False},
    "layer_norm_no_bias": {"layer_norm": True, "bias": False},
}


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_grucell_outputs_and_gradients(bias):
    torch.manual_seed(0)
    ref = nn.GRUCell(I, H, bias=bias)
    cell = GRUCell(I, H, bias=bias)
    cell.load_state_dict(ref.state_dict())
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(B, I, requires_grad=True)
    h = torch.randn(B, H, requires_grad=True)
    assert_step_matches_torch_cell(cell, ref, x, h)


def test_default_init_is_torch_init():
    torch.manual_seed(1)
    ref = nn.GRUCell(I, H)
    torch.manual_seed(1)
    cell = GRUCell(I, H)
    assert_same_parameters(cell, ref)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_options_match_hand_written_equations(name):
    torch.manual_seed(2)
    cell = randomise(GRUCell(I, H, dtype=torch.float64, **OPTIONS[name]))
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    out, h1 = cell(x, h)
    h2 = gru_by_hand(cell, x, h)
    torch.testing.assert_close(out, h2, atol=1e-12, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-12, rtol=0)


def test_reset_before_differs_from_reset_after_with_the_same_weights():
    torch.manual_seed(3)
    after = randomise(GRUCell(I, H))
    before = GRUCell(I, H, reset_after=False)
    before.load_state_dict(after.state_dict())
    x, h = torch.randn(B, I), torch.randn(B, H)
    assert not torch.allclose(after(x, h)[0], before(x, h)[0], atol=1e-3)
    # with h = 0 the two forms agree except for where b_hn sits: r * b_hn versus b_hn
    with torch.no_grad():
        after.bias_hh[2 * H :].zero_()
        before.bias_hh[2 * H :].zero_()
    h0 = torch.zeros(B, H)
    torch.testing.assert_close(after(x, h0)[0], before(x, h0)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradcheck(name):
    torch.manual_seed(4)
    cell = randomise(GRUCell(3, 4, dtype=torch.float64, **OPTIONS[name]))
    x = torch.randn(2, 3, dtype=torch.float64)
    gradcheck_cell(cell, x, torch.randn(2, 4, dtype=torch.float64))


def test_layer_norm_submodules():
    after = GRUCell(I, H, layer_norm=True)
    assert after.ln_ih.normalized_shape == (3 * H,)
    assert after.ln_hh.normalized_shape == (3 * H,)
    assert after.ln_hn is None
    before = GRUCell(I, H, layer_norm=True, reset_after=False)
    assert before.ln_ih.normalized_shape == (3 * H,)
    assert before.ln_hh.normalized_shape == (2 * H,)
    assert before.ln_hn.normalized_shape == (H,)
    for cell in (after, before):
        for name, param in cell.named_parameters():
            if name.startswith("ln_"):
                expected = 1.0 if name.endswith("weight") else 0.0
                assert torch.equal(param, torch.full_like(param, expected))
            else:
                assert param.abs().max() <= 1 / math.sqrt(H)
    plain = GRUCell(I, H)
    assert plain.ln_ih is None and plain.ln_hh is None and plain.ln_hn is None


def test_contract_attributes_and_state_none():
    torch.manual_seed(5)
    cell = GRUCell(I, H)
    x = torch.randn(B, I)
    out, h = cell(x)
    assert torch.equal(out, cell(x, torch.zeros(B, H))[0]) and torch.equal(out, h)
    assert cell.state_size == H and cell.output_size == H
    assert cell.initial_state(2).shape == (2, H)
    assert "reset_after=False" in repr(GRUCell(I, H, reset_after=False))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": 0}, ValueError, "input_size must be >= 1, got 0"),
        ({"hidden_size": -1}, ValueError, "hidden_size must be >= 1, got -1"),
        ({"input_size": "4"}, TypeError, "input_size must be an int, got str"),
        ({"reset_after": "no"}, TypeError, "GRUCell: reset_after must be a bool, got str"),
        ({"layer_norm": 1}, TypeError, "GRUCell: layer_norm must be a bool, got int"),
        ({"bias": None}, TypeError, "GRUCell: bias must be a bool"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GRUCell(**{"input_size": I, "hidden_size": H, **kwargs})


def test_bad_call_arguments():
    cell = GRUCell(I, H)
    x, h = torch.randn(B, I), torch.zeros(B, H)
    with pytest.raises(ValueError, match=r"GRUCell: expected input of shape \(batch, 4\)"):
        cell(torch.randn(B, 2), h)
    with pytest.raises(TypeError, match="GRUCell: input must be floating point"):
        cell(torch.ones(B, I, dtype=torch.int32), h)
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match"):
        cell(x.double(), h.double())
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 5\) .* got \(3, 4\)"):
        cell(x, torch.zeros(B, H - 1))
    with pytest.raises(TypeError, match="GRUCell: state h must be a Tensor, got tuple"):
        cell(x, (h,))
    with pytest.raises(TypeError, match="state h dtype torch.float64 does not match input"):
        cell(x, h.double())


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 4),
    input_size=st.integers(1, 5),
    hidden_size=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_sizes_match_torch_grucell(batch, input_size, hidden_size, bias, seed):
    torch.manual_seed(seed)
    ref = nn.GRUCell(input_size, hidden_size, bias=bias)
    cell = GRUCell(input_size, hidden_size, bias=bias)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(batch, input_size), torch.randn(batch, hidden_size)
    torch.testing.assert_close(cell(x, h)[0], ref(x, h), atol=1e-5, rtol=0)
