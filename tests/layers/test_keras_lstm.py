"""Keras' LSTM cases, run with ``rnnkit.LSTM`` holding the same (constant) weights.

Ported from Keras 3's ``keras/src/layers/rnn/lstm_test.py`` (Apache-2.0,
https://github.com/keras-team/keras); Keras' hard-coded outputs are the oracle. Keras'
``LSTM(units)`` is ``Sequence(rnnkit.LSTM(H_in, units, batch_first=True))``; its kernel
columns ``i, f, c, o`` are torch's rows ``i, f, g, o`` transposed, and ``unit_forget_bias``
(Keras' default) sets the forget-gate bias to 1 (see ``tests/layers/keras_cells.py``).
Keras' ``unroll`` and ``implementation`` choices change nothing numerically here.
"""

import pytest
import torch

from rnnkit.cells import LSTMCell
from rnnkit.layers import Fold, Recurrence, Sequence
from tests.layers.keras_cells import constant_lstm, keras_sequence, load_keras_lstm


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


SEQ_3_6_4 = keras_sequence((3, 6, 4))
SEQ_2_4_3 = keras_sequence((2, 4, 3))


@pytest.mark.parametrize(("options", "want"), [
    ({}, [0.6288687, 0.86899155, 0.9460773]),
    ({"go_backwards": True}, [0.35622165, 0.74789524, 0.8872726]),
    ({"unit_forget_bias": False}, [0.57019705, 0.8661914, 0.9459622]),
    ({"use_bias": False}, [0.54986924, 0.86226785, 0.9443936]),
])
def test_correctness(options, want):
    layer = Sequence(constant_lstm(4, 3, **options))
    close(layer(SEQ_3_6_4), [[w] * 3 for w in want])


@pytest.mark.parametrize("engine", ["auto", "loop"])
def test_statefulness_and_reset_state(engine):
    sequence = keras_sequence((2, 3, 4))
    layer = Sequence(constant_lstm(4, 4, stateful=True, engine=engine))
    want = [[0.3124785] * 4, [0.6863672] * 4]
    layer(sequence)
    close(layer(sequence), want)
    layer.reset_states()  # Keras' layer.reset_state()
    layer(sequence)
    close(layer(sequence), want)


def test_pass_initial_state():
    state = torch.arange(4.0).reshape(1, 2, 2)  # Keras' (B, H) with torch's layer axis
    close(Sequence(constant_lstm(3, 2))(SEQ_2_4_3, (state, state)),
          [[0.20574439, 0.3558822], [0.64930826, 0.66276]])
    close(Sequence(constant_lstm(3, 2, go_backwards=True))(SEQ_2_4_3, (state, state)),
          [[0.13281618, 0.2790356], [0.5839337, 0.5992567]])


MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


def test_masking_last_output():
    close(Sequence(constant_lstm(3, 2))(SEQ_2_4_3, mask=MASK),
          [[0.11755939, 0.11755939], [0.28556206, 0.28556206]])


def test_masking_return_sequences_repeats_last_valid_output():
    layer = Sequence(constant_lstm(3, 2, zero_output_for_mask=False), return_sequences=True)
    output = layer(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.01588910] * 2, [0.05552048] * 2, [0.11755939] * 2, [0.11755939] * 2])
    close(output[1], [[0.14185596] * 2, [0.28556206] * 2, [0.28556206] * 2, [0.28556206] * 2])


def test_masking_return_sequences_zero_output_for_mask():
    layer = Sequence(constant_lstm(3, 2), return_sequences=True)  # zero_output_for_mask=True
    output = layer(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.01588910] * 2, [0.05552048] * 2, [0.11755939] * 2, [0.0] * 2])
    close(output[1], [[0.14185596] * 2, [0.28556206] * 2, [0.0] * 2, [0.0] * 2])


def test_masking_go_backwards_valid_steps_last():
    backwards_mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    layer = Sequence(constant_lstm(3, 2, go_backwards=True))
    close(layer(SEQ_2_4_3, mask=backwards_mask),
          [[0.15341201, 0.15341201], [0.3844719, 0.3844719]])


# The same Keras numbers through the generic drivers: an LSTMCell under Recurrence/Fold,
# Keras' go_backwards being Recurrence(go_backwards=True, output_order="processing").


def constant_cell() -> LSTMCell:
    cell = LSTMCell(3, 2)
    bias = torch.full((8,), 0.03)
    bias[2:4] = 1.0  # unit_forget_bias
    load_keras_lstm(cell, torch.full((3, 8), 0.01), torch.full((2, 8), 0.02), bias, suffix="")
    return cell


def test_masking_through_recurrence_and_fold():
    cell = constant_cell()
    last, _ = Fold(cell, batch_first=True)(SEQ_2_4_3, mask=MASK)
    close(last, [[0.11755939, 0.11755939], [0.28556206, 0.28556206]])
    output, _ = Recurrence(cell, batch_first=True, zero_output_for_mask=False)(
        SEQ_2_4_3, mask=MASK)
    close(output[1], [[0.14185596] * 2, [0.28556206] * 2, [0.28556206] * 2, [0.28556206] * 2])


def test_keras_go_backwards_through_recurrence():
    cell = constant_cell()
    backwards_mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    keras_form = Recurrence(cell, batch_first=True, go_backwards=True,
                            output_order="processing", zero_output_for_mask=False)
    output, _ = keras_form(SEQ_2_4_3, mask=backwards_mask)
    # Keras' last output is the output at the last processed position.
    close(output[:, -1], [[0.15341201, 0.15341201], [0.3844719, 0.3844719]])
    close(Fold(cell, batch_first=True, go_backwards=True)(SEQ_2_4_3, mask=backwards_mask)[0],
          [[0.15341201, 0.15341201], [0.3844719, 0.3844719]])
    state = torch.arange(4.0).reshape(2, 2)
    output, _ = Recurrence(cell, batch_first=True, go_backwards=True,
                           output_order="processing")(SEQ_2_4_3, (state, state))
    close(output[:, -1], [[0.13281618, 0.2790356], [0.5839337, 0.5992567]])
