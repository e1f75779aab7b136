"""Keras' SimpleRNN cases, run with ``rnnkit.RNN`` holding the same (constant) weights.

Ported from Keras 3's ``keras/src/layers/rnn/simple_rnn_test.py`` (Apache-2.0,
https://github.com/keras-team/keras); Keras' hard-coded outputs are the oracle.
"""

import pytest
import torch

from rnnkit.layers import Sequence
from tests.layers.keras_cells import constant_simple_rnn, keras_sequence


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


SEQ_2_3_4 = keras_sequence((2, 3, 4))
SEQ_2_4_3 = keras_sequence((2, 4, 3))


@pytest.mark.parametrize(("options", "want"), [
    ({}, [0.405432, 0.73605347]),
    ({"go_backwards": True}, [0.11144729, 0.5528889]),
])
def test_correctness(options, want):
    close(Sequence(constant_simple_rnn(4, 4, **options))(SEQ_2_3_4), [[w] * 4 for w in want])


def test_statefulness_and_reset_state():
    layer = Sequence(constant_simple_rnn(4, 4, stateful=True))
    want = [[0.40559256] * 4, [0.7361247] * 4]
    layer(SEQ_2_3_4)
    close(layer(SEQ_2_3_4), want)
    layer.reset_states()
    layer(SEQ_2_3_4)
    close(layer(SEQ_2_3_4), want)


@pytest.mark.parametrize(("go_backwards", "want"), [
    (False, [0.33621645, 0.6262637]),
    (True, [0.07344437, 0.43043602]),
])
def test_pass_initial_state(go_backwards, want):
    state = torch.arange(8.0).reshape(1, 2, 4)
    layer = Sequence(constant_simple_rnn(3, 4, go_backwards=go_backwards))
    close(layer(SEQ_2_4_3, state), [[w] * 4 for w in want])


MASK = torch.tensor([[True, True, False, True], [True, False, False, True]])  # with gaps


def test_masking_with_gaps():
    close(Sequence(constant_simple_rnn(3, 4))(SEQ_2_4_3, mask=MASK),
          [[0.32951632] * 4, [0.61799484] * 4])
    layer = Sequence(constant_simple_rnn(3, 2, zero_output_for_mask=False),
                     return_sequences=True)
    output = layer(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.0599281] * 2, [0.15122814] * 2, [0.15122814] * 2, [0.32394567] * 2])
    close(output[1], [[0.3969304] * 2, [0.3969304] * 2, [0.3969304] * 2, [0.608085] * 2])
    output = Sequence(constant_simple_rnn(3, 2), return_sequences=True)(SEQ_2_4_3, mask=MASK)
    close(output[0], [[0.0599281] * 2, [0.15122814] * 2, [0.0] * 2, [0.32394567] * 2])
    close(output[1], [[0.3969304] * 2, [0.0] * 2, [0.0] * 2, [0.608085] * 2])
    close(Sequence(constant_simple_rnn(3, 4, go_backwards=True))(SEQ_2_4_3, mask=MASK),
          [[0.07376196] * 4, [0.43645123] * 4])
