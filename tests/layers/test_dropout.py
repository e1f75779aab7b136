"""Dropout variants: variational masks constant across time, zoneout, identity at eval."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.layers import Recurrence, RecurrentDropoutCell, ZoneoutCell


def identity_relu_rnn(size: int, **options) -> rnnkit.RNN:
    """h_t = relu(W_ih x_t + W_hh h_{t-1}) with chosen weights, so masks are readable."""
    rnn = rnnkit.RNN(size, size, nonlinearity="relu", bias=False, **options)
    with torch.no_grad():
        rnn.weight_ih_l0.zero_()
        rnn.weight_hh_l0.copy_(torch.eye(size))
    return rnn


class RecordingCell(nn.Module):
    """torch.nn.GRUCell in the cell contract; records the state it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.GRUCell(3, 5)
        self.input_size, self.hidden_size, self.state_size, self.output_size = 3, 5, 5, 5
        self.seen: list[torch.Tensor] = []

    def forward(self, x, h):
        self.seen.append(h)
        h = self.inner(x, h)
        return h, h


@pytest.mark.parametrize("engine", ["auto", "loop"])
def test_recurrent_dropout_mask_is_the_same_at_every_step(engine):
    torch.manual_seed(0)
    p = 0.5
    rnn = identity_relu_rnn(64, recurrent_dropout=p, engine=engine)
    out, _ = rnn(torch.zeros(6, 3, 64), torch.ones(1, 3, 64))  # (T, B, H)
    mask = out[0] != 0  # (B, H): which units survived at step 0
    assert 0 < mask.float().mean() < 1
    for t in range(6):
        # One mask for the whole sequence: h_t = m * h_0 / (1 - p)^(t + 1); a fresh mask per
        # step would zero more units as t grows.
        torch.testing.assert_close(out[t], mask.float() / (1 - p) ** (t + 1))
    # Masks differ between sequences of the batch and between calls.
    assert not torch.equal(mask[0], mask[1])
    again, _ = rnn(torch.zeros(6, 3, 64), torch.ones(1, 3, 64))
    assert not torch.equal(again[0] != 0, mask)


def test_recurrent_dropout_drops_the_recurrent_input_not_the_carried_state():
    torch.manual_seed(0)
    cell = RecordingCell()
    layer = Recurrence(RecurrentDropoutCell(cell, 0.5))
    x = torch.randn(4, 2, 3)
    out, _ = layer(x)
    masks = [seen / prev for seen, prev in zip(cell.seen[1:], out[:-1], strict=True)]
    for mask in masks[1:]:
        torch.testing.assert_close(mask, masks[0])
    assert set(masks[0].unique().tolist()) <= {0.0, 2.0}
    # The outputs themselves are the undropped cell outputs.
    torch.testing.assert_close(out[1], cell.inner(x[1], cell.seen[1]))


@pytest.mark.parametrize(
    "options", [{"recurrent_dropout": 0.4}, {"dropout_input": 0.4}, {"dropout": 0.4}]
)
def test_dropout_variants_are_identity_at_eval(options):
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=2)
    ours = rnnkit.LSTM(3, 4, num_layers=2, **options)
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    ours.train()
    assert not torch.allclose(ours(x)[0], theirs(x)[0])


def test_dropout_input_mask_is_the_same_at_every_step():
    torch.manual_seed(0)
    p = 0.25
    rnn = identity_relu_rnn(32, dropout_input=p)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(32))
        rnn.weight_hh_l0.zero_()
    out, _ = rnn(torch.ones(5, 2, 32))
    mask = out[0] != 0
    assert 0 < mask.float().mean() < 1
    for t in range(5):
        torch.testing.assert_close(out[t], mask.float() / (1 - p))


def test_zoneout_keeps_each_unit_old_or_new_in_training():
    torch.manual_seed(0)
    inner = nn.GRUCell(3, 16)

    class Cell(nn.Module):
        input_size, hidden_size, state_size, output_size = 3, 16, 16, 16

        def forward(self, x, h):
            h = inner(x, h)
            return h, h

    layer = Recurrence(ZoneoutCell(Cell(), 0.5))
    x = torch.randn(6, 4, 3)
    out, h = layer(x)
    previous = torch.zeros(4, 16)
    kept_any = fresh_any = False
    for t in range(6):
        new = inner(x[t], previous)
        kept = torch.isclose(out[t], previous)
        fresh = torch.isclose(out[t], new)
        assert (kept | fresh).all()
        kept_any |= bool((kept & ~fresh).any())
        fresh_any |= bool((fresh & ~kept).any())
        previous = out[t]
    assert kept_any and fresh_any
    torch.testing.assert_close(h, out[-1])


def test_zoneout_at_eval_is_the_deterministic_expectation():
    torch.manual_seed(0)
    theirs = nn.LSTMCell(3, 4)
    lstm = rnnkit.LSTM(3, 4, zoneout=(0.1, 0.3))
    lstm.load_state_dict({k + "_l0": v for k, v in theirs.state_dict().items()})
    lstm.eval()
    x = torch.randn(5, 2, 3)
    out, (h_n, c_n) = lstm(x)
    h, c = torch.zeros(2, 4), torch.zeros(2, 4)
    for t in range(5):
        new_h, new_c = theirs(x[t], (h, c))
        h, c = 0.1 * h + 0.9 * new_h, 0.3 * c + 0.7 * new_c
        torch.testing.assert_close(out[t], h)
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(c_n[0], c)
    torch.testing.assert_close(lstm(x)[0], out)
    assert lstm.cell_options == {} and lstm.zoneout == (0.1, 0.3)


def test_zero_rates_equal_torch():
    torch.manual_seed(0)
    theirs = nn.GRU(3, 4)
    ours = rnnkit.GRU(3, 4, zoneout=0.0, recurrent_dropout=0.0, dropout_input=0.0)
    ours.load_state_dict(theirs.state_dict())
    assert ours.cell_options == {}
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_wrapper_errors():
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\)"):
        ZoneoutCell(RecordingCell(), 1.2)
    with pytest.raises(TypeError, match="recurrent_dropout must be a float"):
        RecurrentDropoutCell(RecordingCell(), "0.5")
    layer = Recurrence(ZoneoutCell(RecordingCell(), (0.1, 0.2)))
    with pytest.raises(ValueError, match="zoneout has 2 rates but the cell's state has 1"):
        layer(torch.randn(3, 2, 3))
