"""GroupedLSTMCell against ``groups`` separate ``torch.nn.LSTMCell``s with copied weights."""

from __future__ import annotations

import pytest
import torch

from rnnkit import functional as RF
from rnnkit.cells import GroupedLSTMCell

T, B = 4, 3


def torch_groups(cell: GroupedLSTMCell) -> list[torch.nn.LSTMCell]:
    """One ``torch.nn.LSTMCell`` per group, holding copies of that group's weights."""
    groups = []
    for k in range(cell.groups):
        ref = torch.nn.LSTMCell(
            cell.input_size // cell.groups,
            cell.hidden_size // cell.groups,
            bias=cell.bias_ih is not None,
        ).to(cell.weight_ih.dtype)
        with torch.no_grad():
            for name, param in ref.named_parameters():
                param.copy_(getattr(cell, name)[k])
        groups.append(ref)
    return groups


@pytest.mark.parametrize(
    "input_size, hidden_size, groups, bias",
    [(6, 8, 2, True), (6, 9, 3, True), (4, 8, 4, False), (5, 7, 1, True)],
)
def test_matches_separate_torch_lstm_cells(input_size, hidden_size, groups, bias):
    torch.manual_seed(0)
    cell = GroupedLSTMCell(input_size, hidden_size, groups=groups, bias=bias).double()
    refs = torch_groups(cell)
    xs = torch.randn(T, B, input_size, dtype=torch.float64)
    h0 = torch.randn(B, hidden_size, dtype=torch.float64)
    c0 = torch.randn(B, hidden_size, dtype=torch.float64)

    state, outs = (h0, c0), []
    for x in xs:
        out, state = cell(x, state)
        outs.append(out)
    outs = torch.stack(outs)  # (T, B, H)
    weights_out = torch.randn_like(outs)
    ((outs * weights_out).sum() + state[1].sum()).backward()

    gi, gh = input_size // groups, hidden_size // groups
    ref_outs, ref_c = [], []
    for k, ref in enumerate(refs):
        h, c = h0[:, k * gh : (k + 1) * gh], c0[:, k * gh : (k + 1) * gh]
        steps = []
        for x in xs:
            h, c = ref(x[:, k * gi : (k + 1) * gi], (h, c))
            steps.append(h)
        ref_outs.append(torch.stack(steps))
        ref_c.append(c)
    ref_outs = torch.cat(ref_outs, dim=2)
    ((ref_outs * weights_out).sum() + torch.cat(ref_c, 1).sum()).backward()

    torch.testing.assert_close(outs, ref_outs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[1], torch.cat(ref_c, 1), rtol=1e-12, atol=1e-12)
    for name, param in cell.named_parameters():
        expected = torch.stack([getattr(ref, name).grad for ref in refs])
        torch.testing.assert_close(param.grad, expected, rtol=1e-10, atol=1e-12, msg=name)


def test_equals_lstm_with_block_diagonal_weights():
    """The factorisation claim: a GLSTM is an LSTM whose gate matrices are block diagonal."""
    torch.manual_seed(1)
    in_size, hidden, groups = 6, 8, 2
    cell = GroupedLSTMCell(in_size, hidden, groups=groups).double()
    full = torch.nn.LSTMCell(in_size, hidden).double()
    gi, gh = in_size // groups, hidden // groups
    with torch.no_grad():
        full.weight_ih.zero_()
        full.weight_hh.zero_()
        for k in range(groups):
            for gate in range(4):
                rows = slice(gate * hidden + k * gh, gate * hidden + (k + 1) * gh)
                src = slice(gate * gh, (gate + 1) * gh)
                full.weight_ih[rows, k * gi : (k + 1) * gi] = cell.weight_ih[k, src]
                full.weight_hh[rows, k * gh : (k + 1) * gh] = cell.weight_hh[k, src]
                full.bias_ih[rows] = cell.bias_ih[k, src]
                full.bias_hh[rows] = cell.bias_hh[k, src]
    x = torch.randn(B, in_size, dtype=torch.float64)
    state = tuple(torch.randn(B, hidden, dtype=torch.float64) for _ in range(2))
    out, (h, c) = cell(x, state)
    h_ref, c_ref = full(x, state)
    torch.testing.assert_close(out, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(2)
    cell = GroupedLSTMCell(4, 4, groups=2).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def two_steps(x, h, c, *params):
        weights = RF.GroupedLSTMWeights(*params)
        _, state = RF.grouped_lstm_step(x, (h, c), weights)
        out, (_, c2) = RF.grouped_lstm_step(x * 0.5, state, weights)
        return out, c2

    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    assert torch.autograd.gradcheck(two_steps, (x, h, c, *params))


def test_shapes_and_init():
    cell = GroupedLSTMCell(6, 8, groups=2)
    assert cell.state_size == (8, 8) and cell.output_size == 8
    assert tuple(cell.weight_ih.shape) == (2, 16, 3)
    assert tuple(cell.weight_hh.shape) == (2, 16, 4)
    assert tuple(cell.bias_ih.shape) == (2, 16)
    # forget_bias=1.0: each group's forget slice of bias_ih is 1 and of bias_hh is 0
    assert torch.all(cell.bias_ih[:, 4:8] == 1.0) and torch.all(cell.bias_hh[:, 4:8] == 0.0)
    bound = 1 / 4**0.5  # torch's LSTMCell(3, 4) bound, per group
    assert cell.weight_hh.abs().max() <= bound
    untouched = GroupedLSTMCell(6, 8, groups=2, forget_bias=None)
    assert torch.all(untouched.bias_ih.abs() <= bound)
    assert not torch.all(untouched.bias_ih[:, 4:8] == 1.0)
    assert GroupedLSTMCell(6, 8, bias=False).bias_ih is None
    h, c = cell.initial_state(B)
    assert h.shape == (B, 8) and c.shape == (B, 8)
    out, _ = cell(torch.randn(B, 6))
    assert out.shape == (B, 8)
    assert "groups=2" in repr(cell)


def test_errors():
    with pytest.raises(ValueError, match="input_size=5 is not divisible by groups=2"):
        GroupedLSTMCell(5, 8, groups=2)
    with pytest.raises(ValueError, match="hidden_size=9 is not divisible by groups=2"):
        GroupedLSTMCell(6, 9, groups=2)
    with pytest.raises(ValueError, match="groups must be >= 1, got 0"):
        GroupedLSTMCell(6, 8, groups=0)
    with pytest.raises(TypeError, match="groups must be an int"):
        GroupedLSTMCell(6, 8, groups=2.0)
    with pytest.raises(
        TypeError, match="GroupedLSTMCell: forget_bias must be a finite number or None, got 'one'"
    ):
        GroupedLSTMCell(6, 8, forget_bias="one")
    cell = GroupedLSTMCell(6, 8)
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\)"):
        cell(torch.randn(B, 6), torch.zeros(B, 8))
    with pytest.raises(ValueError, match=r"expected state c of shape \(3, 8\)"):
        cell(torch.randn(B, 6), (torch.zeros(B, 8), torch.zeros(B, 4)))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 6\), got \(3, 4\)"):
        cell(torch.randn(B, 4))


def test_float32_matches_torch_cells():
    torch.manual_seed(6)
    cell = GroupedLSTMCell(8, 12, groups=4)
    refs = torch_groups(cell)
    x = torch.randn(B, 8)
    state = (torch.randn(B, 12), torch.randn(B, 12))
    out, (h, c) = cell(x, state)
    expected_h, expected_c = [], []
    for k, ref in enumerate(refs):
        hk, ck = ref(x[:, 2 * k : 2 * k + 2], (state[0][:, 3 * k : 3 * k + 3],
                                               state[1][:, 3 * k : 3 * k + 3]))
        expected_h.append(hk)
        expected_c.append(ck)
    torch.testing.assert_close(out, torch.cat(expected_h, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, torch.cat(expected_c, 1), rtol=1e-5, atol=1e-5)
