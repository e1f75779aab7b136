"""stateful=True: chunks equal the whole sequence; resets; batch-size errors."""

import copy

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell
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


# ---------------------------------------------------------------- state that moves with the module
# Every stateful path: the fused kernels, the compiled kernels, the loop, the layer-by-layer
# path with a cell option, and the Recurrence driver.
STATEFUL = {
    "LSTM fused": lambda: rnnkit.LSTM(3, 4, num_layers=2, stateful=True),
    "GRU auto (compiled on CPU)": lambda: rnnkit.GRU(3, 4, stateful=True),
    "RNN loop": lambda: rnnkit.RNN(3, 4, stateful=True, engine="loop"),
    "LSTM peepholes": lambda: rnnkit.LSTM(3, 4, stateful=True, peepholes=True),
    "Recurrence LSTMCell": lambda: Recurrence(LSTMCell(3, 4), stateful=True),
    "Recurrence GRUCell loop": lambda: Recurrence(GRUCell(3, 4), stateful=True, engine="loop"),
}


def _parts(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_double_moves_the_carried_state(make):
    # issue 17: a stateful GRU that ran once and was moved to float64 failed deep inside
    torch.manual_seed(0)
    module = make()
    reference = copy.deepcopy(module).double()
    x = torch.randn(6, 2, 3)
    module(x[:3])
    module.double()
    assert all(t.dtype == torch.float64 for t in _parts(module._state_store.state))
    out, _ = module(x[3:].double())
    reference(x[:3].double())
    expected, _ = reference(x[3:].double())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # .to() with a device moves it too (the meta device: no memory, no compute)
    module.to("meta")
    assert all(t.device.type == "meta" for t in _parts(module._state_store.state))


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_carried_state_saves_and_restores_exactly(make):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(6, 2, 3)
    module(x[:3])
    module.reset_states(torch.tensor([False, True]))
    saved, weights = module.get_carried_state(), module.state_dict()
    assert not any(key.startswith("carried") for key in weights)  # torch.nn's keys only
    expected, expected_state = module(x[3:])

    restored = make()
    restored.load_state_dict(weights, strict=True)
    restored.set_carried_state(saved)
    out, state = restored(x[3:])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for got, want in zip(_parts(state), _parts(expected_state), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    restored.set_carried_state(None)  # forgetting is restoring "nothing carried"
    assert restored.get_carried_state() is None
    with pytest.raises(ValueError, match="expected what get_carried_state"):
        restored.set_carried_state(torch.zeros(2, 4))


def test_plain_torch_state_dict_still_loads_strictly():
    theirs = nn.LSTM(3, 4, num_layers=2)
    ours = rnnkit.LSTM(3, 4, num_layers=2, stateful=True)
    ours(torch.randn(2, 2, 3))  # something is carried
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_carried_state_is_checked_like_hx():
    # issue 16: the stateful .double() message names the carried state and reset_states()
    gru = rnnkit.GRU(3, 4, stateful=True, engine="loop")
    gru(torch.randn(2, 2, 3))
    gru.set_carried_state({"state": torch.zeros(1, 2, 5), "restart": None})
    with pytest.raises(ValueError, match=r"h_0 \(the state carried over from the previous call "
                                         r"\(GRU\(stateful=True\); call reset_states\(\)"):
        gru(torch.randn(2, 2, 3))
    layer = Recurrence(GRUCell(3, 4), stateful=True)
    layer(torch.randn(2, 2, 3))
    layer.set_carried_state({"state": torch.zeros(2, 4, dtype=torch.float64), "restart": None})
    with pytest.raises(TypeError, match=r"the state carried over from the previous call "
                                        r"\(Recurrence\(stateful=True\); call reset_states\(\) "
                                        r".*has dtype torch.float64 but the input has"):
        layer(torch.randn(2, 2, 3))


def test_reset_mask_of_the_wrong_size_before_the_first_call():
    # issue 16: accepted and ignored
    gru = rnnkit.GRU(3, 4, stateful=True)
    gru.reset_states(torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"reset_states\(mask\): the mask given before this "
                                         r"call has 5 entries but the batch has 2 sequences"):
        gru(torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(batch,\)"):
        gru.reset_states(torch.ones(2, 2, dtype=torch.bool))
    gru.reset_states(torch.ones(2, dtype=torch.bool))
    assert gru(torch.randn(3, 2, 3))[0].shape == (3, 2, 4)


def test_fixed_initial_state_moves_and_saves():
    h0 = torch.randn(4)
    layer = Recurrence(GRUCell(3, 4), initial_state=h0)
    assert torch.equal(layer.state_dict()["fixed_initial_state_0"], h0)
    layer.double()
    assert layer.fixed_initial_state_0.dtype == torch.float64
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _, h = layer(x)
    reference = copy.deepcopy(layer.cell)
    _, want = Recurrence(reference)(x, h0.double().expand(2, 4).contiguous())
    torch.testing.assert_close(h, want, rtol=0, atol=0)
    copy_of = Recurrence(GRUCell(3, 4), initial_state=torch.zeros(4))
    copy_of.load_state_dict(layer.float().state_dict())
    torch.testing.assert_close(copy_of.fixed_initial_state_0, h0)
