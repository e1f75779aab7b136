"""stateful=True: chunks equal the whole sequence; resets; batch-size errors."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import LSTMCell
from rnnkit.layers import Recurrence


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize(
    "make",
    [
        lambda e: rnnkit.LSTM(3, 4, num_layers=2, batch_first=True, engine=e),
        lambda e: rnnkit.GRU(3, 4, batch_first=True, layer_norm=True, engine=e),
        lambda e: rnnkit.RNN(3, 4, batch_first=True, bidirectional=False, engine=e),
    ],
)
def test_chunks_equal_whole_sequence(make, engine):
    torch.manual_seed(0)
    module = make(engine)
    module.stateful = True
    x = torch.randn(2, 9, 3)
    whole, whole_state = module(x)
    module.reset_states()
    chunks = [module(chunk)[0] for chunk in x.split([4, 1, 4], dim=1)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole)
    state = module._state_store.state
    for got, want in zip(
        state if isinstance(state, tuple) else (state,),
        whole_state if isinstance(whole_state, tuple) else (whole_state,),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
        assert not got.requires_grad


def test_chunks_equal_torch_on_the_whole_sequence():
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4)
    ours = rnnkit.LSTM(3, 4, stateful=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(8, 2, 3)
    chunks = torch.cat([ours(chunk)[0] for chunk in x.split(3)])
    torch.testing.assert_close(chunks, theirs(x)[0])


def test_lengths_carry_each_sequences_own_last_state():
    torch.manual_seed(0)
    gru = rnnkit.GRU(3, 4, stateful=True)
    x = torch.randn(5, 2, 3)
    _, h = gru(x, lengths=torch.tensor([5, 2]))
    torch.testing.assert_close(gru._state_store.state, h)
    theirs = nn.GRU(3, 4)
    theirs.load_state_dict(gru.state_dict())
    _, want = theirs(x[:2, 1:2])
    torch.testing.assert_close(h[:, 1:2], want)


def test_reset_mask_restarts_only_chosen_samples():
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, stateful=True, learnable_initial_state=True)
    with torch.no_grad():
        lstm.initial_h.fill_(0.3)
    x = torch.randn(4, 3, 3)
    lstm(x)
    carried = lstm._state_store.state
    lstm.reset_states(torch.tensor([True, False, True]))
    out, _ = lstm(x)
    fresh = (torch.full((1, 3, 4), 0.3), torch.zeros(1, 3, 4))
    h0 = torch.where(torch.tensor([True, False, True])[None, :, None], fresh[0], carried[0])
    c0 = torch.where(torch.tensor([True, False, True])[None, :, None], fresh[1], carried[1])
    reference = nn.LSTM(3, 4)
    reference.load_state_dict(lstm.state_dict(), strict=False)
    torch.testing.assert_close(out, reference(x, (h0, c0))[0])
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(3,\)"):
        lstm.reset_states(torch.tensor([1, 0, 1]))


def test_batch_size_change_without_reset_is_an_error():
    gru = rnnkit.GRU(3, 4, stateful=True)
    gru(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="batch size changed from 4 to 5 without a reset"):
        gru(torch.randn(2, 5, 3))
    gru.reset_states()
    out, _ = gru(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4)


def test_explicit_hx_overrides_the_carried_state():
    gru = rnnkit.GRU(3, 4, stateful=True)
    x = torch.randn(3, 2, 3)
    gru(x)
    plain = rnnkit.GRU(3, 4)
    plain.load_state_dict(gru.state_dict())
    h0 = torch.randn(1, 2, 4)
    torch.testing.assert_close(gru(x, h0)[0], plain(x, h0)[0])


def test_stateful_recurrence_chunks_equal_whole():
    torch.manual_seed(0)
    layer = Recurrence(LSTMCell(3, 4), stateful=True, initial_state=0.2)
    x = torch.randn(7, 2, 3)
    whole, _ = layer(x)
    layer.reset_states()
    chunks = torch.cat([layer(chunk)[0] for chunk in x.split(3)])
    torch.testing.assert_close(chunks, whole)
    with pytest.raises(ValueError, match="Recurrence.stateful=True.: batch size changed"):
        layer(torch.randn(2, 3, 3))
