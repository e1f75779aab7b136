"""Attention mechanisms and the AttentionWrapper against NumPy oracles written from the
equations of TF1's ``tf.contrib.seq2seq`` docs (``attention_wrapper.py``)."""

import math

import numpy as np
import pytest
import torch

from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.errors import ShapeError
from rnnkit.layers import AttentionWrapper, BahdanauAttention, LuongAttention, Recurrence


def _np(t):
    return t.detach().double().numpy()


def _softmax_masked(scores, mask):
    scores = np.where(mask, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _bahdanau_oracle(mech, query, memory, mask):
    w1, w2, v = _np(mech.memory_layer.weight), _np(mech.query_layer.weight), _np(mech.v)
    keys = memory @ w1.T  # (B, S, K)
    processed = (query @ w2.T)[:, None, :]  # (B, 1, K)
    if mech.normalize:
        g, b = float(mech.g.detach()), _np(mech.b)
        scores = (g * v / np.sqrt((v ** 2).sum()) * np.tanh(keys + processed + b)).sum(-1)
    else:
        scores = (v * np.tanh(keys + processed)).sum(-1)
    return _softmax_masked(scores, mask)


def _luong_oracle(mech, query, memory, mask):
    if mech.score_name == "dot":
        scores = np.einsum("bq,bsq->bs", query, memory)
    elif mech.score_name == "general":
        wa = _np(mech.memory_layer.weight)  # (Q, M)
        scores = np.einsum("bq,qm,bsm->bs", query, wa, memory)
    else:  # concat: v^T tanh(W_a [q; m_s]) with W_a = [query columns | memory columns]
        wa = np.concatenate([_np(mech.query_layer.weight), _np(mech.memory_layer.weight)], 1)
        s = memory.shape[1]
        both = np.concatenate([np.repeat(query[:, None], s, 1), memory], -1)  # (B, S, Q+M)
        scores = (np.tanh(both @ wa.T) * _np(mech.v)).sum(-1)
    if mech.scale:
        scores = float(mech.g.detach()) * scores
    return _softmax_masked(scores, mask)


MECHANISMS = [
    ("bahdanau", lambda: BahdanauAttention(4, 6, num_units=5)),
    ("bahdanau_normalized", lambda: BahdanauAttention(4, 6, num_units=5, normalize=True)),
    ("luong_dot", lambda: LuongAttention(4, 4, score="dot")),
    ("luong_dot_scaled", lambda: LuongAttention(4, 4, score="dot", scale=True)),
    ("luong_general", lambda: LuongAttention(4, 6, score="general")),
    ("luong_general_scaled", lambda: LuongAttention(4, 6, score="general", scale=True)),
    ("luong_concat", lambda: LuongAttention(4, 6, score="concat", num_units=3)),
]


def _perturb(mech):
    """Move the scalar/bias parameters off their initial values so the oracle sees them."""
    with torch.no_grad():
        for name, p in mech.named_parameters():
            if name in ("g", "b"):
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("name,build", MECHANISMS, ids=[m[0] for m in MECHANISMS])
def test_alignments_equal_the_documented_formulas(name, build):
    torch.manual_seed(0)
    mech = build().double()
    _perturb(mech)
    query = torch.randn(3, 4, dtype=torch.float64)
    memory = torch.randn(3, 5, mech.memory_size, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    got = mech(query, mech.prepare(memory), mask)
    oracle = (_bahdanau_oracle if name.startswith("bahdanau") else _luong_oracle)(
        mech, _np(query), _np(memory), mask.numpy())
    np.testing.assert_allclose(_np(got), oracle, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,build", MECHANISMS, ids=[m[0] for m in MECHANISMS])
def test_weights_sum_to_one_and_are_exactly_zero_on_padding(name, build):
    torch.manual_seed(1)
    mech = build()
    memory = torch.randn(4, 7, mech.memory_size) * 10  # large scores: no underflow excuses
    lengths = torch.tensor([7, 4, 1, 2])
    mask = torch.arange(7)[None] < lengths[:, None]
    weights = mech(torch.randn(4, 4) * 10, mech.prepare(memory), mask)
    assert torch.all(weights[~mask] == 0.0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    assert torch.equal(weights[2], torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))


def test_bahdanau_normalize_starts_from_tf1_values():
    mech = BahdanauAttention(3, 2, num_units=8, normalize=True)
    assert float(mech.g.detach()) == pytest.approx(math.sqrt(1 / 8))
    assert torch.equal(mech.b.detach(), torch.zeros(8))
    assert mech.memory_layer.bias is None and mech.query_layer.bias is None


def _wrapper_oracle_step(wrapper, x, state):
    """One AttentionWrapper step as TF1's ``AttentionWrapper.call`` describes it, in NumPy
    where the cell is not involved: cell([x; attention]) -> alignments -> context ->
    attention layer."""
    cell_state, attention, _, memory, _, mask = state
    b, s = mask.shape
    memory3 = memory.reshape(b, s, -1)
    cell_in = torch.cat([x, attention], -1) if wrapper.input_feeding else x
    out, cell_state = wrapper.cell(cell_in, cell_state)
    mech = wrapper.mechanism
    oracle = _bahdanau_oracle if isinstance(mech, BahdanauAttention) else _luong_oracle
    align = oracle(mech, _np(out), _np(memory3), mask.numpy())
    context = np.einsum("bs,bsm->bm", align, _np(memory3))
    if wrapper.attention_layer is not None:
        att = np.concatenate([_np(out), context], -1) @ _np(wrapper.attention_layer.weight).T
        if wrapper.attention_activation == "tanh":
            att = np.tanh(att)
    else:
        att = context
    output = att if wrapper.output_attention else _np(out)
    return output, align, att, cell_state


@pytest.mark.parametrize("output_attention", [True, False])
@pytest.mark.parametrize("layer_size,activation", [(None, None), (5, None), (5, "tanh")])
def test_wrapper_step_equals_the_tf1_recipe(output_attention, layer_size, activation):
    torch.manual_seed(2)
    attention_size = 6 if layer_size is None else layer_size
    wrapper = AttentionWrapper(LSTMCell(3 + attention_size, 4), BahdanauAttention(4, 6),
                               layer_size, attention_activation=activation,
                               output_attention=output_attention).double()
    memory = torch.randn(2, 5, 6, dtype=torch.float64)
    state = wrapper.initial_state(2, memory=memory, memory_lengths=torch.tensor([5, 3]))
    for _ in range(3):
        x = torch.randn(2, 3, dtype=torch.float64)
        expected, align, att, _ = _wrapper_oracle_step(wrapper, x, state)
        out, state = wrapper(x, state)
        np.testing.assert_allclose(_np(out), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(state[2]), align, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(state[1]), att, rtol=1e-12, atol=1e-12)


def test_no_input_feeding_feeds_the_input_alone():
    torch.manual_seed(3)
    wrapper = AttentionWrapper(GRUCell(3, 4), LuongAttention(4, 4, score="dot"),
                               input_feeding=False).double()
    memory = torch.randn(1, 2, 4, dtype=torch.float64)
    state = wrapper.initial_state(1, memory=memory)
    x = torch.randn(1, 3, dtype=torch.float64)
    expected, _, _, _ = _wrapper_oracle_step(wrapper, x, state)
    out, _ = wrapper(x, state)
    np.testing.assert_allclose(_np(out), expected, rtol=1e-12)
    assert wrapper.input_size == 3


def test_memory_is_zeroed_past_the_lengths_and_padding_values_never_matter():
    torch.manual_seed(4)
    wrapper = AttentionWrapper(GRUCell(2 + 6, 4), BahdanauAttention(4, 6), 6)
    memory = torch.randn(2, 4, 6)
    other = memory.clone()
    other[1, 2:] = 1e6  # garbage in the padding
    lengths = torch.tensor([4, 2])
    x = torch.randn(2, 5, 2)
    run = Recurrence(wrapper, batch_first=True)
    a, _ = run(x, wrapper.initial_state(2, memory=memory, memory_lengths=lengths))
    b, _ = run(x, wrapper.initial_state(2, memory=other, memory_lengths=lengths))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recurrence_over_the_wrapper_equals_each_padded_sequence_run_alone():
    torch.manual_seed(5)
    wrapper = AttentionWrapper(LSTMCell(3 + 5, 4), LuongAttention(4, 6), 5,
                               attention_activation="tanh", alignment_history=True)
    memory = torch.randn(3, 6, 6)
    memory_lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 7, 3)
    lengths = torch.tensor([7, 3, 5])
    run = Recurrence(wrapper, batch_first=True)
    outputs, final = run(x, wrapper.initial_state(3, memory=memory,
                                                  memory_lengths=memory_lengths),
                         lengths=lengths)
    attention, history = wrapper.split_output(outputs)
    assert attention.shape == (3, 7, 5) and history.shape == (3, 7, 6)
    for i in range(3):
        s, t = int(memory_lengths[i]), int(lengths[i])
        alone, alone_final = run(x[i:i + 1, :t],
                                 wrapper.initial_state(1, memory=memory[i:i + 1, :s]))
        alone_att, alone_hist = wrapper.split_output(alone)
        torch.testing.assert_close(attention[i, :t], alone_att[0])
        torch.testing.assert_close(history[i, :t, :s], alone_hist[0])
        assert torch.all(history[i, :, s:] == 0) and torch.all(outputs[i, t:] == 0)
        torch.testing.assert_close(final[1][i], alone_final[1][0])  # last attention
        torch.testing.assert_close(final[0][0][i], alone_final[0][0][0])  # cell h


def test_gradcheck_float64_through_inputs_memory_and_state():
    torch.manual_seed(6)
    wrapper = AttentionWrapper(GRUCell(2 + 3, 3), BahdanauAttention(3, 2, normalize=True),
                               3, attention_activation="tanh").double()
    mask = torch.tensor([[True, True, True], [True, False, False]])

    def run(x, memory, h0):
        state = wrapper.initial_state(2, memory=memory, memory_mask=mask, cell_state=h0)
        outputs, _ = Recurrence(wrapper, batch_first=True)(x, state)
        return outputs

    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, memory, h0))


def test_tiny_shapes_hidden_one_batch_one_source_one():
    wrapper = AttentionWrapper(GRUCell(1 + 1, 1), LuongAttention(1, 1, score="dot"), 1)
    state = wrapper.initial_state(1, memory=torch.randn(1, 1, 1))
    out, final = Recurrence(wrapper, batch_first=True)(torch.randn(1, 1, 1), state)
    assert out.shape == (1, 1, 1) and torch.equal(final[2], torch.ones(1, 1))


def test_clear_errors():
    wrapper = AttentionWrapper(GRUCell(2 + 4, 4), BahdanauAttention(4, 3), 4)
    with pytest.raises(TypeError, match="carries the memory"):
        Recurrence(wrapper)(torch.randn(2, 1, 2))
    with pytest.raises(ShapeError, match="memory has 5 features"):
        wrapper.initial_state(1, memory=torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match=r"rows \[1\] hold \[0\]"):
        wrapper.initial_state(2, memory=torch.randn(2, 2, 3), memory_lengths=torch.tensor([2, 0]))
    with pytest.raises(ShapeError, match="batch_size=3"):
        wrapper.initial_state(3, memory=torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="no valid step"):
        wrapper.initial_state(2, memory=torch.randn(2, 2, 3),
                              memory_mask=torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="'dot' needs memory_size == query_size"):
        LuongAttention(4, 3, score="dot")
    with pytest.raises(ValueError, match="score must be one of"):
        LuongAttention(4, 3, score="cosine")
    with pytest.raises(ValueError, match="query_size is 4"):
        AttentionWrapper(GRUCell(9, 5), BahdanauAttention(4, 3))
    with pytest.raises(ValueError, match="must exceed the attention size"):
        AttentionWrapper(GRUCell(4, 4), BahdanauAttention(4, 3), 4)
    with pytest.raises(ValueError, match="positive int"):
        BahdanauAttention(0, 3)


def test_config_round_trip_rebuilds_the_wrapper():
    from rnnkit.config import deserialize, serialize

    torch.manual_seed(7)
    wrapper = AttentionWrapper(LSTMCell(2 + 5, 4), LuongAttention(4, 3, score="concat",
                                                                   scale=True), 5)
    twin = deserialize(serialize(wrapper))
    twin.load_state_dict(wrapper.state_dict())
    memory, x = torch.randn(2, 3, 3), torch.randn(2, 4, 2)
    a, _ = Recurrence(wrapper, batch_first=True)(x, wrapper.initial_state(2, memory=memory))
    b, _ = Recurrence(twin, batch_first=True)(x, twin.initial_state(2, memory=memory))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
