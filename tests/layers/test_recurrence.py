"""Recurrence, Fold and UnfoldFrom against torch.nn modules and hand-written loops."""

import pytest
import torch
from torch import nn

from rnnkit.cells import LSTMCell
from rnnkit.layers import Fold, Recurrence, UnfoldFrom
from tests.helpers import TorchLSTMCell


def torch_lstm_for(cell: TorchLSTMCell) -> nn.LSTM:
    lstm = nn.LSTM(cell.input_size, cell.hidden_size)
    lstm.load_state_dict({k + "_l0": v for k, v in cell.inner.state_dict().items()})
    return lstm


@pytest.mark.parametrize("batch_first", [False, True])
def test_user_cell_equals_torch_lstm(batch_first):
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    layer = Recurrence(cell, batch_first=batch_first)
    x = torch.randn(6, 2, 3)
    want, (h, c) = torch_lstm_for(cell)(x)
    got, (got_h, got_c) = layer(x.transpose(0, 1) if batch_first else x)
    torch.testing.assert_close(got.transpose(0, 1) if batch_first else got, want)
    torch.testing.assert_close(got_h, h[0])
    torch.testing.assert_close(got_c, c[0])


def test_constant_initial_state_like_cntk():
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    x = torch.randn(5, 2, 3)
    got, _ = Recurrence(cell, initial_state=0.1)(x)
    state = torch.full((1, 2, 4), 0.1)
    want, _ = torch_lstm_for(cell)(x, (state, state))
    torch.testing.assert_close(got, want)


def test_tensor_and_learnable_initial_states():
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(4), torch.randn(2, 4)
    got, _ = Recurrence(cell, initial_state=(h0, c0))(x)
    want, _ = torch_lstm_for(cell)(x, (h0.expand(1, 2, 4), c0[None]))
    torch.testing.assert_close(got, want)

    layer = Recurrence(cell, initial_state=(h0, c0[0]), learnable_initial_state=True)
    assert [p.shape for p in layer.initial_states] == [(4,), (4,)]
    out, _ = layer(x)
    want, _ = torch_lstm_for(cell)(x, (h0.expand(1, 2, 4), c0[0].expand(1, 2, 4)))
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.initial_states)
    assert Recurrence(cell, initial_state=0.5, learnable_initial_state=True).initial_states[
        1
    ].eq(0.5).all()


def test_return_full_state_gives_every_steps_h_and_c():
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    x = torch.randn(4, 2, 3)
    (hs, cs), (h, c) = Recurrence(cell, return_full_state=True)(x, lengths=[4, 2])
    state = (torch.zeros(2, 4), torch.zeros(2, 4))
    for t in range(4):
        state = cell.inner(x[t], state)
        torch.testing.assert_close(hs[t, 0], state[0][0])
        torch.testing.assert_close(cs[t, 0], state[1][0])
    assert cs[2:, 1].eq(0).all()


def test_unbatched_input():
    # oracle: torch.nn.LSTM, which takes the unbatched (T, H_in) form itself
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    layer = Recurrence(cell)
    x = torch.randn(5, 3)
    out, (h, c) = layer(x)
    want, (want_h, want_c) = torch_lstm_for(cell)(x)
    assert out.shape == (5, 4) and h.shape == (4,)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, want_h[0])
    torch.testing.assert_close(c, want_c[0])


@pytest.mark.parametrize("engine", ["auto", "loop"])
def test_fold_without_lengths_is_torchs_last_step(engine):
    # Fold's most common use: no lengths, the output at step T-1 (oracle: torch.nn.GRU)
    torch.manual_seed(0)
    from rnnkit.cells import GRUCell

    cell = GRUCell(3, 4)
    gru = nn.GRU(3, 4)
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(6, 2, 3)
    last, h = Fold(cell, engine=engine)(x)
    want, want_h = gru(x)
    torch.testing.assert_close(last, want[-1])
    torch.testing.assert_close(h, want_h[0])
    back, _ = Fold(cell, go_backwards=True, engine=engine)(x)
    torch.testing.assert_close(back, gru(x.flip(0))[0][-1])


@pytest.mark.parametrize("go_backwards", [False, True])
def test_fold_returns_last_processed_output(go_backwards):
    torch.manual_seed(0)
    cell = TorchLSTMCell()
    x = torch.randn(6, 2, 3)
    last, (h, c) = Fold(cell, go_backwards=go_backwards)(x, lengths=torch.tensor([6, 3]))
    lstm = torch_lstm_for(cell)
    for b, length in enumerate((6, 3)):
        seq = x[:length, b : b + 1]
        out, (want_h, _) = lstm(seq.flip(0) if go_backwards else seq)
        torch.testing.assert_close(last[b], out[-1, 0])
        torch.testing.assert_close(h[b], want_h[0, 0])


def test_unfold_from_feeds_outputs_back_until_done():
    torch.manual_seed(0)
    cell = TorchLSTMCell(4, 4)
    head = nn.Tanh()
    threshold = 0.0

    def until(y):
        return y[:, 0] > threshold

    gen = UnfoldFrom(cell, head=head, until=until, max_length=8)
    start = torch.randn(3, 4)
    outputs, (h, c), lengths = gen(start)
    # Hand-written generation for each sequence alone.
    for b in range(3):
        x, state, produced = start[b : b + 1], (torch.zeros(1, 4), torch.zeros(1, 4)), []
        for _ in range(8):
            state = cell.inner(x, state)
            x = head(state[0])
            produced.append(x)
            if bool(until(x)[0]):
                break
        assert lengths[b] == len(produced)
        torch.testing.assert_close(outputs[: len(produced), b], torch.cat(produced))
        assert outputs[len(produced) :, b].eq(0).all()
        torch.testing.assert_close(h[b], state[0][0])
    assert outputs.shape[0] == int(lengths.max())


def test_unfold_from_caps_and_batch_first():
    cell = LSTMCell(3, 3)
    gen = UnfoldFrom(cell, batch_first=True)
    out, _, lengths = gen(torch.randn(2, 3), max_length=5, lengths=torch.tensor([2, 4]))
    assert out.shape == (2, 4, 3) and lengths.tolist() == [2, 4]
    assert out[0, 2:].eq(0).all()
    with pytest.raises(ValueError, match="max_length is needed"):
        gen(torch.randn(2, 3))
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        UnfoldFrom(cell, max_length=0)
    with pytest.raises(ValueError, match=r"start must be \(batch, input_size\)"):
        gen(torch.randn(2, 1, 3), max_length=3)
    bad = UnfoldFrom(cell, until=lambda y: y.sum(), max_length=3)
    with pytest.raises(ValueError, match=r"until\(output\) must return a bool tensor"):
        bad(torch.randn(2, 3))


def test_recurrence_errors():
    with pytest.raises(ValueError, match="the cell expects 3 input features, got input with 5"):
        Recurrence(LSTMCell(3, 4))(torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match="must be 3-D"):
        Recurrence(LSTMCell(3, 4))(torch.randn(4, 2, 2, 3))
    with pytest.raises(TypeError, match="has no state_size attribute"):
        Recurrence(nn.Linear(3, 3))(torch.randn(4, 2, 3))
    with pytest.raises(TypeError, match="initial_state must be None, a number"):
        Recurrence(LSTMCell(3, 4), initial_state="zeros")
    with pytest.raises(ValueError, match="engine='fused' applies to whole drop-in modules"):
        Recurrence(LSTMCell(3, 4), engine="fused")
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is longer"):
        Fold(LSTMCell(3, 4))(torch.randn(4, 2, 3), lengths=[1, 9])


def test_fold_and_sequence_accept_packed_sequences():
    torch.manual_seed(0)
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    from rnnkit.layers import Sequence

    cell = TorchLSTMCell()
    x = torch.randn(5, 3, 3)
    lengths = torch.tensor([2, 5, 3])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    last, (h, _) = Fold(cell)(packed)
    _, (want_h, _) = torch_lstm_for(cell)(packed)
    torch.testing.assert_close(h, want_h[0])
    torch.testing.assert_close(last, want_h[0])
    outputs = Sequence(Recurrence(cell), return_sequences=True)(packed)
    assert isinstance(outputs, PackedSequence)
    torch.testing.assert_close(outputs.data, torch_lstm_for(cell)(packed)[0].data)


def test_every_driver_returns_output_and_state():
    """docs/design.md: one return convention, DriverOutput(output, state)."""
    from rnnkit.cells import GRUCell
    from rnnkit.layers import Bidirectional, Sequence
    from rnnkit.layers.state import DriverOutput

    x = torch.randn(5, 2, 3)
    for layer in (Recurrence(LSTMCell(3, 4)), Fold(LSTMCell(3, 4)),
                  Bidirectional(LSTMCell(3, 4)),
                  Sequence(LSTMCell(3, 4), return_state=True)):
        result = layer(x)
        assert isinstance(result, DriverOutput), type(layer).__name__
        assert result.state is result[1]
    unfolded = UnfoldFrom(GRUCell(3, 3), max_length=4)(torch.randn(2, 3))
    assert unfolded.output is unfolded[0] and unfolded.state is unfolded[1]


def test_repr_shows_the_options_changed_from_their_defaults():
    """Each option set away from its default appears in repr as the constructor takes it
    (precision='bf16' included, which docs/engine.md says repr shows); defaults stay quiet,
    and the shown options rebuild a module with the same configuration."""
    changed = {"go_backwards": True, "return_full_state": True, "batch_first": True,
               "stateful": True, "engine": "loop", "zero_output_for_mask": False,
               "output_order": "processing", "precision": "bf16"}
    assert repr(Recurrence(LSTMCell(3, 4))) == "Recurrence(\n  (cell): LSTMCell(3, 4)\n)"
    for name, value in changed.items():
        layer = Recurrence(LSTMCell(3, 4), **{name: value})
        first_line = repr(layer).splitlines()[1].strip()
        assert first_line == f"{name}={value!r}"
        rebuilt = eval(f"Recurrence(LSTMCell(3, 4), {first_line})")
        assert getattr(rebuilt, name) == value
    everything = Fold(LSTMCell(3, 4), learnable_initial_state=True, precision="bf16")
    assert "learnable_initial_state=True, precision='bf16'" in repr(everything)
