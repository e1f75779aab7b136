"""Keras' GRU cases, run with ``rnnkit.GRU`` holding the same (constant) weights.

Ported from Keras 3's ``keras/src/layers/rnn/gru_test.py`` (Apache-2.0,
https://github.com/keras-team/keras); Keras' hard-coded outputs are the oracle. Keras'
kernel columns ``z, r, h`` are torch's rows ``r, z, n`` (reordered and transposed) and its
``reset_after`` bias ``(2, 3H)`` is ``bias_ih`` (row 0) and ``bias_hh`` (row 1); see
``tests/layers/keras_cells.py``.
"""

import pytest
import torch

from rnnkit.layers import Sequence
from tests.layers.keras_cells import constant_gru, keras_sequence


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


SEQ_3_6_4 = keras_sequence((3, 6, 4))
SEQ_2_4_3 = keras_sequence((2, 4, 3))


@pytest.mark.parametrize(("options", "want"), [
    ({}, [0.5217289, 0.6371659, 0.39384964]),
    ({"go_backwards": True}, [0.24406259, 0.611516, 0.3928808]),
    ({"reset_after": False}, [0.51447755, 0.6426879, 0.40208298]),
    ({"use_bias": False}, [0.49988455, 0.64701194, 0.4103359]),
])
def test_correctness(options, want):
    close(Sequence(constant_gru(4, 3, **options))(SEQ_3_6_4), [[w] * 3 for w in want])


def test_statefulness_and_reset_state():
    sequence = keras_sequence((2, 3, 4))
    layer = Sequence(constant_gru(4, 4, stateful=True))
    want = [[0.29542392] * 4, [0.5885018] * 4]
    layer(sequence)
    close(layer(sequence), want)
    layer.reset_states()
    layer(sequence)
    close(layer(sequence), want)


@pytest.mark.parametrize(("go_backwards", "want"), [
    (False, [[0.23774096, 0.33508456], [0.83659905, 1.0227708]]),
    (True, [[0.13486053, 0.23261218], [0.78257304, 0.9691353]]),
])
def test_pass_initial_state_and_return_state(go_backwards, want):
    state = torch.arange(4.0).reshape(1, 2, 2)
    layer = Sequence(constant_gru(3, 2, go_backwards=go_backwards), return_state=True)
    output, h_n = layer(SEQ_2_4_3, state)
    close(output, want)
    close(h_n[0], want)  # Keras: the returned state equals the output


MASK = torch.tensor([[True, True, False, True], [True, False, False, True]])  # with gaps


def test_masking_with_gaps_last_output():
    close(Sequence(constant_gru(3, 2))(SEQ_2_4_3, mask=MASK),
          [[0.19393763, 0.19393763], [0.30818558, 0.30818558]])


def test_masking_with_gaps_repeats_last_valid_output():
    layer = Sequence(constant_gru(3, 2, zero_output_for_mask=False), return_sequences=True)
    output = layer(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.03606692] * 2, [0.09497581] * 2, [0.09497581] * 2, [0.19393763] * 2])
    close(output[1], [[0.16051409] * 2, [0.16051409] * 2, [0.16051409] * 2, [0.30818558] * 2])


def test_masking_with_gaps_zero_output_for_mask():
    output = Sequence(constant_gru(3, 2), return_sequences=True)(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.03606692] * 2, [0.09497581] * 2, [0.0] * 2, [0.19393763] * 2])
    close(output[1], [[0.16051409] * 2, [0.0] * 2, [0.0] * 2, [0.30818558] * 2])


def test_masking_with_gaps_go_backwards():
    close(Sequence(constant_gru(3, 2, go_backwards=True))(SEQ_2_4_3, mask=MASK),
          [[0.11669192, 0.11669192], [0.28380975, 0.28380975]])
