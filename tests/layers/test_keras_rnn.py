"""Keras' generic ``RNN(cell)`` layer cases, run with rnnkit's drivers.

Ported from Keras 3's ``keras/src/layers/rnn/rnn_test.py`` (Apache-2.0,
https://github.com/keras-team/keras): the forward-pass, initial-state, statefulness and
go_backwards cases with their hard-coded expected outputs (Keras' numbers are the oracle).
Keras' ``RNN(cell, return_sequences=False)`` is ``Fold(cell, batch_first=True)`` or
``Sequence(cell)``; ``return_sequences=True`` is ``Recurrence(cell, batch_first=True)``.
"""

import pytest
import torch

from rnnkit.layers import Fold, Recurrence, Sequence
from tests.layers.keras_cells import OneStateCell, TwoStatesCell, keras_sequence


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want))


def test_forward_pass_single_state():
    x = torch.ones(1, 2, 3)
    last, state = Fold(OneStateCell(3, 2), batch_first=True)(x)
    close(last, [[9.0, 9.0]])
    close(state, [[9.0, 9.0]])
    outputs, state = Recurrence(OneStateCell(3, 2), batch_first=True)(x)
    close(outputs, [[[3.0, 3.0], [9.0, 9.0]]])
    close(state, [[9.0, 9.0]])
    close(Sequence(OneStateCell(3, 2))(x), [[9.0, 9.0]])


def test_forward_pass_two_states():
    x = torch.ones(1, 2, 3)
    last, (state_1, state_2) = Fold(TwoStatesCell(3, 2), batch_first=True)(x)
    close(last, [[18.0, 18.0]])
    close(state_1, [[9.0, 9.0]])
    close(state_2, [[9.0, 9.0]])
    outputs, _ = Sequence(TwoStatesCell(3, 2), return_sequences=True, return_state=True)(x)
    close(outputs, [[[6.0, 6.0], [18.0, 18.0]]])


def test_passing_initial_state():
    x = torch.ones(2, 3, 2)
    last, state = Fold(OneStateCell(2, 2), batch_first=True)(x, torch.ones(2, 2))
    close(last, [[22.0, 22.0], [22.0, 22.0]])
    close(state, [[22.0, 22.0], [22.0, 22.0]])
    last, (state_1, state_2) = Fold(TwoStatesCell(2, 2), batch_first=True)(
        x, (torch.ones(2, 2), torch.ones(2, 2)))
    close(last, [[44.0, 44.0], [44.0, 44.0]])
    close(state_1, [[22.0, 22.0], [22.0, 22.0]])
    close(state_2, [[22.0, 22.0], [22.0, 22.0]])


def test_statefulness():
    x = torch.ones(1, 2, 3)
    layer = Fold(OneStateCell(3, 2), batch_first=True, stateful=True)
    layer(x)
    last, state = layer(x)
    close(last, [[45.0, 45.0]])
    close(state, [[45.0, 45.0]])
    layer = Sequence(Recurrence(TwoStatesCell(3, 2), batch_first=True, stateful=True),
                     return_state=True)
    layer(x)
    last, (state_1, state_2) = layer(x)
    close(last, [[90.0, 90.0]])
    close(state_1, [[45.0, 45.0]])
    close(state_2, [[45.0, 45.0]])


def test_go_backwards():
    x = keras_sequence((2, 3, 4))
    layer = Fold(OneStateCell(4, 2), batch_first=True, go_backwards=True)
    layer(x)
    close(layer(x)[0], [[202.0, 202.0], [538.0, 538.0]])
    layer = Fold(OneStateCell(4, 2), batch_first=True, stateful=True)
    layer(x)
    last, state = layer(x)
    close(last, [[954.0, 954.0], [3978.0, 3978.0]])
    close(state, [[954.0, 954.0], [3978.0, 3978.0]])


def test_stateful_batch_size_mismatch_raises():
    layer = Fold(TwoStatesCell(3, 2), batch_first=True, stateful=True)
    layer(torch.rand(4, 5, 3))
    with pytest.raises(ValueError, match="batch size"):
        layer(torch.rand(1, 5, 3))
