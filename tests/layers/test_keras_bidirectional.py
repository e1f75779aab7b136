"""Keras' Bidirectional cases, run with ``rnnkit.Bidirectional`` around the drop-ins.

Ported from Keras 3's ``keras/src/layers/rnn/bidirectional_test.py`` (Apache-2.0,
https://github.com/keras-team/keras); Keras' hard-coded outputs are the oracle. Keras
builds the backward layer from the forward layer's config, so with constant initializers
both directions start equal; rnnkit draws fresh weights for its copy, so the tests pass
the backward layer explicitly (``backward_layer=``, as Keras also allows).
"""

import torch

from rnnkit.layers import Bidirectional, Sequence
from tests.layers.keras_cells import (
    constant_gru,
    constant_lstm,
    constant_simple_rnn,
    keras_sequence,
)


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


SEQ_2_3_4 = keras_sequence((2, 3, 4))
SEQ_2_4_3 = keras_sequence((2, 4, 3))


def simple_pair(merge_mode="concat", **backward):
    return Sequence(Bidirectional(constant_simple_rnn(4, 2), merge_mode,
                                  backward_layer=constant_simple_rnn(4, 2, **backward)))


def test_correctness_merge_modes():
    close(simple_pair()(SEQ_2_3_4), [[0.39687276, 0.39687276, 0.10004295, 0.10004295],
                                     [0.7237238, 0.7237238, 0.53391594, 0.53391594]])
    close(simple_pair("ave")(SEQ_2_3_4), [[0.24845785] * 2, [0.6288199] * 2])
    forward, backward = simple_pair(None)(SEQ_2_3_4)
    close(forward, [[0.39687276] * 2, [0.7237238] * 2])
    close(backward, [[0.10004295] * 2, [0.53391594] * 2])


def test_correctness_keras_go_backwards_backward_layer():
    # Keras' backward_layer=SimpleRNN(go_backwards=True): rnnkit.RNN(go_backwards=True) reads
    # the sequence reversed and returns outputs in processing order; Bidirectional realigns.
    layer = simple_pair("mul", kernel=0.03, recurrent=0.02, bias=0.01, go_backwards=True)
    close(layer(SEQ_2_3_4), [[0.08374989] * 2, [0.6740834] * 2])


def test_correctness_return_sequences_sum():
    layer = Sequence(Bidirectional(constant_gru(4, 2), "sum", backward_layer=constant_gru(4, 2)),
                     return_sequences=True)
    close(layer(SEQ_2_3_4), [
        [[0.20937867] * 2, [0.34462988] * 2, [0.40290534] * 2],
        [[0.59829646] * 2, [0.6734641] * 2, [0.6479671] * 2],
    ])


def test_statefulness_and_reset_state():
    layer = Sequence(Bidirectional(constant_lstm(3, 2, stateful=True),
                                   backward_layer=constant_lstm(3, 2, stateful=True)))
    want = [[0.26234663, 0.26234663, 0.16959146, 0.16959146],
            [0.6137073, 0.6137073, 0.5381646, 0.5381646]]
    layer(SEQ_2_4_3)
    close(layer(SEQ_2_4_3), want)
    layer.layer.reset_states()  # Keras' Bidirectional.reset_state()
    layer(SEQ_2_4_3)
    close(layer(SEQ_2_4_3), want)
    layer.reset_states()  # the same through Sequence
    layer(SEQ_2_4_3)
    close(layer(SEQ_2_4_3), want)


def test_pass_initial_state():
    base = torch.arange(4.0).reshape(1, 2, 2)
    state = ((base * 1, base * 2), (base * 3, base * 4))  # Keras' [h_f, c_f, h_b, c_b]
    layer = Sequence(Bidirectional(constant_lstm(3, 2), backward_layer=constant_lstm(3, 2)))
    close(layer(SEQ_2_4_3, state), [[0.20794602, 0.4577124, 0.14046375, 0.48191673],
                                    [0.6682636, 0.6711909, 0.60943645, 0.60950446]])


def test_masking_with_gaps():
    mask = torch.tensor([[True, True, False, True], [True, False, False, True]])
    layer = Sequence(Bidirectional(constant_gru(3, 2), backward_layer=constant_gru(3, 2)))
    close(layer(SEQ_2_4_3, mask=mask), [[0.19393763, 0.19393763, 0.11669192, 0.11669192],
                                        [0.30818558, 0.30818558, 0.28380975, 0.28380975]])


def test_return_state():
    layer = Sequence(Bidirectional(constant_lstm(3, 2), backward_layer=constant_lstm(3, 2)),
                     return_state=True)
    output, ((h1, c1), (h2, c2)) = layer(SEQ_2_4_3)
    close(output, [[0.1990008, 0.1990008, 0.12659755, 0.12659755],
                   [0.52335435, 0.52335435, 0.44717982, 0.44717982]])
    close(h1[0], [[0.1990008] * 2, [0.52335435] * 2])
    close(c1[0], [[0.35567185] * 2, [1.0492687] * 2])
    close(h2[0], [[0.12659755] * 2, [0.44717982] * 2])
    close(c2[0], [[0.2501858] * 2, [0.941473] * 2])
