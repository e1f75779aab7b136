"""MultiCell against Keras' StackedRNNCells and against the same stack written out by hand.

The numeric cases are ported from Keras 3's ``keras/src/layers/rnn/stacked_rnn_cells_test.py``
(Apache-2.0, https://github.com/keras-team/keras); Keras' expected values are the oracle.
Keras' ``RNN([cells])`` maps onto ``Fold``/``Recurrence`` over ``MultiCell(cells)``.
"""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, MultiCell
from rnnkit.layers import Bidirectional, Fold, Recurrence, Sequence, UnfoldFrom
from tests.helpers import assert_doctests_pass
from tests.layers.keras_cells import OneStateCell, TwoStatesCell, keras_sequence

SEQUENCE = keras_sequence((2, 3, 4))  # (B, T, H_in)


def one_state_stack() -> MultiCell:
    return MultiCell([OneStateCell(4, 3), OneStateCell(3, 2)])


def two_states_stack() -> MultiCell:
    return MultiCell([TwoStatesCell(4, 3), TwoStatesCell(3, 2)])


def test_single_state_stack_matches_keras():
    last, (state_1, state_2) = Fold(one_state_stack(), batch_first=True)(SEQUENCE)
    torch.testing.assert_close(last, torch.tensor([[786.0, 786.0], [4386.0, 4386.0]]))
    torch.testing.assert_close(state_1, torch.tensor([[158.0] * 3, [782.0] * 3]))
    torch.testing.assert_close(state_2, torch.tensor([[786.0] * 2, [4386.0] * 2]))
    outputs, _ = Recurrence(one_state_stack(), batch_first=True)(SEQUENCE)
    torch.testing.assert_close(outputs, torch.tensor([
        [[18.0, 18.0], [156.0, 156.0], [786.0, 786.0]],
        [[162.0, 162.0], [1020.0, 1020.0], [4386.0, 4386.0]],
    ]))
    # Keras' RNN(cells, return_sequences=True, return_state=True)
    outputs, (state_1, state_2) = Sequence(
        one_state_stack(), return_sequences=True, return_state=True)(SEQUENCE)
    assert outputs[1, 2].tolist() == [4386.0, 4386.0]
    assert state_1[1].tolist() == [782.0] * 3


def test_two_states_stack_matches_keras():
    last, ((s1a, s1b), (s2a, s2b)) = Fold(two_states_stack(), batch_first=True)(SEQUENCE)
    torch.testing.assert_close(last, torch.tensor([[3144.0, 3144.0], [17544.0, 17544.0]]))
    for state in (s1a, s1b):
        torch.testing.assert_close(state, torch.tensor([[158.0] * 3, [782.0] * 3]))
    for state in (s2a, s2b):
        torch.testing.assert_close(state, torch.tensor([[1572.0] * 2, [8772.0] * 2]))
    outputs, _ = Recurrence(two_states_stack(), batch_first=True)(SEQUENCE)
    torch.testing.assert_close(outputs, torch.tensor([
        [[72.0, 72.0], [624.0, 624.0], [3144.0, 3144.0]],
        [[648.0, 648.0], [4080.0, 4080.0], [17544.0, 17544.0]],
    ]))


@pytest.mark.parametrize(("stack", "expected"), [
    (one_state_stack, [[34092.0, 34092.0], [173196.0, 173196.0]]),
    (two_states_stack, [[136368.0, 136368.0], [692784.0, 692784.0]]),
])
def test_stateful_stack_matches_keras(stack, expected):
    layer = Fold(stack(), batch_first=True, stateful=True)
    layer(SEQUENCE)
    last, _ = layer(SEQUENCE)
    torch.testing.assert_close(last, torch.tensor(expected))
    layer.reset_states()
    layer(SEQUENCE)
    torch.testing.assert_close(layer(SEQUENCE)[0], torch.tensor(expected))


def test_stacked_lstm_cells_state_structure_like_keras():
    # Keras' test_return_state_stacked_lstm_cell: two LSTMCell(10) over (2, 3, 5) input.
    layer = Fold(MultiCell([LSTMCell(5, 10), LSTMCell(10, 10)]), batch_first=True)
    last, ((h1, c1), (h2, c2)) = layer(torch.zeros(2, 3, 5))
    assert [tuple(t.shape) for t in (last, h1, c1, h2, c2)] == [(2, 10)] * 5
    assert layer.cell.state_size == ((10, 10), (10, 10))


# ------------------------------------------------------------- against a hand-written stack


def hand_stack(cells, x, states):
    """The same stack written out: each cell over time, its outputs the next cell's input."""
    finals = []
    for cell, state in zip(cells, states, strict=True):
        outputs = []
        for step in x.unbind(0):
            out, state = cell(step, state)
            outputs.append(out)
        x = torch.stack(outputs)  # (T, B, H)
        finals.append(state)
    return x, tuple(finals)


def mixed_cells():
    torch.manual_seed(0)
    return [LSTMCell(3, 6, proj_size=4), GRUCell(4, 5), ElmanCell(5, 2, nonlinearity="relu")]


def test_multicell_equals_hand_written_stack_with_gradients():
    cells = mixed_cells()
    stack = MultiCell(cells)
    assert stack.state_size == ((4, 6), 5, 2)
    assert (stack.input_size, stack.output_size, stack.hidden_size) == (3, 2, 2)
    x = torch.randn(6, 3, 3, requires_grad=True)
    states = stack.initial_state(3)
    got, got_final = Recurrence(stack)(x)
    want, want_final = hand_stack(cells, x, states)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_final, want_final)
    grads = torch.autograd.grad(got.square().sum(), [x, *stack.parameters()])
    wants = torch.autograd.grad(want.square().sum(), [x, *stack.parameters()])
    for g, w in zip(grads, wants, strict=True):
        torch.testing.assert_close(g, w)


def test_multicell_in_every_driver():
    cells = mixed_cells()
    stack = MultiCell(cells)
    x = torch.randn(5, 2, 3)
    lengths = torch.tensor([5, 3])
    # Fold with lengths: the second sequence stops after 3 steps.
    last, final = Fold(stack)(x, lengths=lengths)
    want, want_final = hand_stack(cells, x[:3, 1:], stack.initial_state(1))
    torch.testing.assert_close(last[1], want[-1, 0])
    torch.testing.assert_close(final[1][1], want_final[1][0])
    # Backwards: the stack reads step 2, 1, 0 of the second sequence.
    outputs, _ = Recurrence(stack, go_backwards=True)(x, lengths=lengths)
    want, _ = hand_stack(cells, x[:3, 1:].flip(0), stack.initial_state(1))
    torch.testing.assert_close(outputs[:3, 1], want.flip(0)[:, 0])
    # Bidirectional: a fresh copy of the stack reads backwards.
    bi = Bidirectional(stack, merge_mode=None)
    (out_f, out_b), (final_f, final_b) = bi(x, lengths=lengths)
    assert isinstance(bi.backward_layer.cell, MultiCell)
    want_b, _ = hand_stack(list(bi.backward_layer.cell.cells), x[:3, 1:].flip(0),
                           stack.initial_state(1))
    torch.testing.assert_close(out_b[:3, 1], want_b.flip(0)[:, 0])
    torch.testing.assert_close(out_f, Recurrence(stack)(x, lengths=lengths)[0])
    # UnfoldFrom: generation feeds the stack's output back in.
    loop_stack = MultiCell([GRUCell(2, 4), ElmanCell(4, 2)])
    generated, final, produced = UnfoldFrom(loop_stack, max_length=4)(torch.ones(2, 2))
    feed, state, want = torch.ones(2, 2), loop_stack.initial_state(2), []
    for _ in range(4):
        feed, state = loop_stack(feed, state)
        want.append(feed)
    torch.testing.assert_close(generated, torch.stack(want))
    assert produced.tolist() == [4, 4]


def test_multicell_is_exported_and_runs_stateful():
    assert rnnkit.MultiCell is MultiCell
    stack = MultiCell([GRUCell(3, 4), GRUCell(4, 4)])
    layer = Recurrence(stack, stateful=True)
    x = torch.randn(8, 2, 3)
    first, _ = layer(x[:5])
    second, _ = layer(x[5:])
    layer.reset_states()
    whole, _ = layer(x)
    torch.testing.assert_close(torch.cat([first, second]), whole)


class NoOutputSize(nn.Module):
    state_size = 3

    def forward(self, x, h):
        return h, h


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: MultiCell([]), ValueError, "empty"),
    (lambda: MultiCell(GRUCell(3, 4)), TypeError, "list of cells"),
    (lambda: MultiCell([GRUCell(3, 4), "gru"]), TypeError, "cell 1 must be an nn.Module"),
    (lambda: MultiCell([GRUCell(3, 4), nn.Linear(4, 4)]), TypeError, "has no state_size"),
    (lambda: MultiCell([GRUCell(3, 4), GRUCell(5, 2)]), ValueError,
     "cell 0 (GRUCell) outputs 4 features but cell 1 (GRUCell) expects input_size=5"),
])
def test_bad_stacks_are_named(make, error, words):
    with pytest.raises(error) as info:
        make()
    assert words in str(info.value)


def test_output_size_defaults_to_first_state_size_as_keras_and_bad_state_is_named():
    stack = MultiCell([GRUCell(3, 4), NoOutputSize()])
    assert stack.output_size == 3 and stack.state_size == (4, 3)
    with pytest.raises(TypeError, match=r"tuple of 2 cell states .* got Tensor"):
        MultiCell([GRUCell(3, 4), GRUCell(4, 4)])(torch.randn(2, 3), torch.zeros(2, 4))


def test_multicell_docstring_example_runs():
    assert_doctests_pass("rnnkit.cells.multi")


def test_multicell_learnable_initial_state_and_full_state():
    torch.manual_seed(0)
    stack = MultiCell([LSTMCell(3, 4), GRUCell(4, 5)])
    x = torch.randn(4, 2, 3)
    layer = Recurrence(stack, initial_state=0.5, learnable_initial_state=True)
    assert [tuple(p.shape) for p in layer.initial_states] == [(4,), (4,), (5,)]
    out, _ = layer(x)
    start = ((torch.full((2, 4), 0.5), torch.full((2, 4), 0.5)), torch.full((2, 5), 0.5))
    torch.testing.assert_close(out, hand_stack(list(stack.cells), x, start)[0])
    out.sum().backward()
    assert all(p.grad is not None for p in layer.initial_states)
    (h1, c1), h2 = Recurrence(stack, return_full_state=True)(x)[0]  # nested like the state
    _, ((want_h1, want_c1), want_h2) = Recurrence(stack)(x)
    torch.testing.assert_close((h1[-1], c1[-1], h2[-1]), (want_h1, want_c1, want_h2))
