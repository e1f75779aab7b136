"""Masked results equal running each sequence alone at its own length (property tests)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit
from rnnkit.cells import (
    ElmanCell,
    GroupedLSTMCell,
    GRUCell,
    IndRNNCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    NASCell,
    UGRNNCell,
)
from rnnkit.layers import Bidirectional, Recurrence, lengths_to_mask, reverse_padded
from rnnkit.layers.masking import gather_steps

MODULES = {
    "lstm": lambda: rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True),
    "lstm_proj_peep": lambda: rnnkit.LSTM(3, 4, bidirectional=True, proj_size=2,
                                          peepholes=True, layer_norm=True),
    "gru": lambda: rnnkit.GRU(3, 4, num_layers=2, bidirectional=True),
    "gru_reset_before": lambda: rnnkit.GRU(3, 4, bidirectional=True, reset_after=False),
    "rnn_relu": lambda: rnnkit.RNN(3, 4, bidirectional=True, nonlinearity="relu"),
}
CELLS = {
    "elman": lambda: ElmanCell(4, 4),
    "lstm": lambda: LSTMCell(4, 4, proj_size=2, coupled_gates=True),
    "gru": lambda: GRUCell(4, 4, reset_after=False),
    "ugrnn": lambda: UGRNNCell(4, 4),
    "nas": lambda: NASCell(4, 4),
    "grouped_lstm": lambda: GroupedLSTMCell(4, 4, groups=2),
    "indrnn": lambda: IndRNNCell(4, 4),
    "min_gru": lambda: MinGRUCell(4, 4),
    "min_lstm": lambda: MinLSTMCell(4, 4),
}

lengths_strategy = st.lists(st.integers(1, 6), min_size=1, max_size=4)


def split_state(state, b):
    if isinstance(state, tuple):
        return tuple(split_state(s, b) for s in state)
    return state[:, b : b + 1]


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(MODULES)),
    lengths=lengths_strategy,
    batch_first=st.booleans(),
    extra=st.integers(0, 2),
)
def test_dropin_with_lengths_equals_each_sequence_alone(name, lengths, batch_first, extra):
    torch.manual_seed(len(lengths))
    module = MODULES[name]().double()
    module.batch_first = batch_first
    T, B = max(lengths) + extra, len(lengths)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    x[lengths_to_mask(torch.tensor(lengths), T).logical_not()] = 1e6  # padding garbage
    inputs = x.transpose(0, 1) if batch_first else x
    out, state = module(inputs, lengths=torch.tensor(lengths))
    out = out.transpose(0, 1) if batch_first else out  # (T, B, 2H)
    for b, length in enumerate(lengths):
        alone = x[:length, b : b + 1]
        alone_out, alone_state = module(alone.transpose(0, 1) if batch_first else alone)
        alone_out = alone_out.transpose(0, 1) if batch_first else alone_out
        torch.testing.assert_close(out[:length, b : b + 1], alone_out)
        assert out[length:, b].eq(0).all()
        for got, want in zip(
            state if isinstance(state, tuple) else (state,),
            alone_state if isinstance(alone_state, tuple) else (alone_state,),
            strict=True,
        ):
            torch.testing.assert_close(got[:, b : b + 1], want)


def check_recurrence_against_alone(name, lengths, go_backwards):
    torch.manual_seed(len(lengths))
    layer = Recurrence(CELLS[name]().double(), go_backwards=go_backwards, initial_state=0.1)
    T, B = max(lengths), len(lengths)
    x = torch.randn(T, B, 4, dtype=torch.float64)
    out, state = layer(x, lengths=lengths)
    for b, length in enumerate(lengths):
        alone_out, alone_state = layer(x[:length, b : b + 1])
        torch.testing.assert_close(out[:length, b : b + 1], alone_out)
        assert out[length:, b].eq(0).all()
        for got, want in zip(
            state if isinstance(state, tuple) else (state,),
            alone_state if isinstance(alone_state, tuple) else (alone_state,),
            strict=True,
        ):
            torch.testing.assert_close(got[b : b + 1], want)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(sorted(CELLS)),
    lengths=lengths_strategy,
    go_backwards=st.booleans(),
)
def test_recurrence_with_lengths_equals_each_sequence_alone(name, lengths, go_backwards):
    check_recurrence_against_alone(name, lengths, go_backwards)


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell_and_direction_with_lengths(name, go_backwards):
    check_recurrence_against_alone(name, [4, 1, 3], go_backwards)


@settings(max_examples=10, deadline=None)
@given(lengths=lengths_strategy, merge_mode=st.sampled_from(["concat", "sum", "mul", "ave"]))
def test_bidirectional_over_dropin_equals_each_sequence_alone(lengths, merge_mode):
    torch.manual_seed(0)
    bi = Bidirectional(rnnkit.GRU(3, 4, batch_first=True), merge_mode=merge_mode).double()
    T, B = max(lengths), len(lengths)
    x = torch.randn(B, T, 3, dtype=torch.float64)
    out, (h_f, h_b) = bi(x, lengths=lengths)
    for b, length in enumerate(lengths):
        alone = x[b : b + 1, :length]
        fwd, hf = bi.forward_layer(alone)
        bwd, hb = bi.backward_layer(alone.flip(1))
        torch.testing.assert_close(out[b : b + 1, :length], bi.merge(fwd, bwd.flip(1)))
        torch.testing.assert_close(h_f[:, b : b + 1], hf)
        torch.testing.assert_close(h_b[:, b : b + 1], hb)


def test_reverse_padded_is_an_involution_and_keeps_padding():
    x = torch.arange(12.0).view(4, 3, 1)
    lengths = torch.tensor([4, 1, 2])
    once = reverse_padded(x, lengths)
    assert once[:, 2, 0].tolist() == [5.0, 2.0, 8.0, 11.0]
    assert torch.equal(reverse_padded(once, lengths), x)
    assert torch.equal(reverse_padded(x, None), x.flip(0))


def test_gather_steps_and_mask():
    x = torch.arange(6.0).view(3, 2, 1)
    assert gather_steps(x, torch.tensor([2, 0]))[:, 0].tolist() == [4.0, 1.0]
    mask = lengths_to_mask(torch.tensor([2, 3]), 3, batch_first=True)
    assert mask.tolist() == [[True, True, False], [True, True, True]]


@pytest.mark.parametrize("go_backwards", [False, True])
def test_packed_sequence_through_recurrence(go_backwards):
    torch.manual_seed(0)
    layer = Recurrence(GRUCell(3, 4), go_backwards=go_backwards, batch_first=True)
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([2, 5, 3])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    out_packed, h_packed = layer(packed)
    out, h = layer(x, lengths=lengths)
    assert isinstance(out_packed, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out_packed.sorted_indices, packed.sorted_indices)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, batch_first=True)
    torch.testing.assert_close(padded, out)
    torch.testing.assert_close(h_packed, h)
