"""TensorFlow 1's beam search tests, ported: ``tensorflow/contrib/seq2seq/python/
kernel_tests/beam_search_decoder_test.py`` (TestEosMasking, TestBeamStep, TestLargeBeamStep,
BeamSearchDecoderTest) against rnnkit's beam step and :class:`BeamSearchDecoder`, plus the
GNMT penalties against the formulas written out."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import nn

from rnnkit.models.decoding import (
    BeamSearchDecoder,
    _Beam,
    _beam_step,
    _mask_probs,
    beam_search,
    coverage_penalty,
    gather_tree,
    length_penalty,
    tile_batch,
)


@pytest.mark.parametrize("depth_ndims", [0, 1, 2])
def test_gather_tree(depth_ndims):
    # TestGatherTree.test_gather_tree (max_time 3, batch 2, beam 3, no end token reached);
    # deeper values stacked as TF1's _tile_in_depth (tensor and tensor + 1) for the depth
    # cases of test_gather_tree_from_array
    predicted_ids = torch.tensor([[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                                  [[2, 3, 4], [5, 6, 7], [8, 9, 10]]]).transpose(0, 1)
    parent_ids = torch.tensor([[[0, 0, 0], [0, 1, 1], [2, 1, 2]],
                               [[0, 0, 0], [1, 2, 0], [2, 1, 1]]]).transpose(0, 1)
    expected = torch.tensor([[[2, 2, 2], [6, 5, 6], [7, 8, 9]],
                             [[2, 4, 4], [7, 6, 6], [8, 9, 10]]]).transpose(1, 2)  # (B, K, T)
    for _ in range(depth_ndims):
        predicted_ids = torch.stack([predicted_ids, predicted_ids + 1], dim=-1)
        expected = torch.stack([expected, expected + 1], dim=-1)
    assert torch.equal(gather_tree(predicted_ids, parent_ids), expected)


def test_eos_masking():
    # TestEosMasking.test_eos_masking; masked entries are -inf here (TF1: float32's min)
    probs = torch.tensor([
        [[-.2, -.2, -.2, -.2, -.2], [-.3, -.3, -.3, 3, 0], [5, 6, 0, 0, 0]],
        [[-.2, -.2, -.2, -.2, 0], [-.3, -.3, -.1, 3, 0], [5, 6, 3, 0, 0]],
    ])
    previously_finished = torch.tensor([[0, 1, 0], [0, 1, 1]], dtype=torch.bool)
    masked = _mask_probs(probs, 0, previously_finished)
    assert torch.equal(masked[0, 0], probs[0, 0])
    assert torch.equal(masked[0, 2], probs[0, 2])
    assert torch.equal(masked[1, 0], probs[1, 0])
    for b, k in [(0, 1), (1, 1), (1, 2)]:
        assert masked[b, k, 0] == 0
        assert torch.isneginf(masked[b, k, 1:]).all()


LOGITS = torch.full((2, 3, 5), 0.0001)
for (b, k, v), value in {(0, 0, 2): 1.9, (0, 0, 3): 2.1, (0, 1, 3): 3.1, (0, 1, 4): 0.9,
                         (1, 0, 1): 0.5, (1, 1, 2): 2.7, (1, 2, 2): 10.0,
                         (1, 2, 3): 0.2}.items():
    LOGITS[b, k, v] = value


def tf1_beam(log_probs, lengths, finished, accumulated=None):
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return _Beam(log_prob=log_probs, finished=torch.as_tensor(finished, dtype=torch.bool),
                 lengths=lengths, content=lengths.clone(), accumulated=accumulated)


def test_step():
    # TestBeamStep.test_step: batch 2, beam 3, vocab 5, end token 0, length penalty 0.6
    beam = tf1_beam(torch.ones(2, 3).log_softmax(-1), torch.full((2, 3), 2),
                    torch.zeros(2, 3))
    log_probs = LOGITS.log_softmax(-1)
    chosen = _beam_step(beam, log_probs, None, eos_id=0, alpha=0.6, beta=0.0)
    assert chosen.token.tolist() == [[3, 3, 2], [2, 2, 1]]
    assert chosen.parent.tolist() == [[1, 0, 0], [2, 1, 0]]
    assert chosen.beam.lengths.tolist() == [[3, 3, 3], [3, 3, 3]]
    assert not chosen.beam.finished.any()
    expected = torch.stack([beam.log_prob[0, [1, 0, 0]], beam.log_prob[1, [2, 1, 0]]])
    expected[0] += torch.stack([log_probs[0, 1, 3], log_probs[0, 0, 3], log_probs[0, 0, 2]])
    expected[1] += torch.stack([log_probs[1, 2, 2], log_probs[1, 1, 2], log_probs[1, 0, 1]])
    torch.testing.assert_close(chosen.beam.log_prob, expected)


def test_step_with_eos():
    # TestBeamStep.test_step_with_eos: finished beams stay, with their log-probability
    logits = LOGITS.clone()
    logits[1, 1, 2], logits[1, 2, 2] = 5.7, 1.0
    beam = tf1_beam(torch.ones(2, 3).log_softmax(-1), [[2, 1, 2], [2, 2, 1]],
                    [[False, True, False], [False, False, True]])
    log_probs = logits.log_softmax(-1)
    chosen = _beam_step(beam, log_probs, None, eos_id=0, alpha=0.6, beta=0.0)
    assert chosen.parent.tolist() == [[1, 0, 0], [1, 2, 0]]
    assert chosen.token.tolist() == [[0, 3, 2], [2, 0, 1]]
    assert chosen.beam.lengths.tolist() == [[1, 3, 3], [3, 1, 3]]
    assert chosen.beam.finished.tolist() == [[True, False, False], [False, True, False]]
    expected = torch.stack([beam.log_prob[0, [1, 0, 0]], beam.log_prob[1, [1, 2, 0]]])
    expected[0, 1] += log_probs[0, 0, 3]
    expected[0, 2] += log_probs[0, 0, 2]
    expected[1, 0] += log_probs[1, 1, 2]
    expected[1, 2] += log_probs[1, 0, 1]
    torch.testing.assert_close(chosen.beam.log_prob, expected)


def test_large_beam_step():
    # TestLargeBeamStep: a beam of 8 over a vocabulary of 5, from the initial beam (only
    # beam 0 alive): 5 real hypotheses, 3 impossible ones with -inf and length 0
    batch, width, vocab = 2, 8, 5
    log_prob = torch.full((batch, width), -math.inf)
    log_prob[:, 0] = 0.0
    finished = torch.ones(batch, width, dtype=torch.bool)
    finished[:, 0] = False
    lengths = torch.zeros(batch, width, dtype=torch.long)
    lengths[:, 0] = 2
    logits = torch.full((batch, width, vocab), 0.0001)
    logits[:, :3] = LOGITS
    chosen = _beam_step(tf1_beam(log_prob, lengths, finished), logits.log_softmax(-1), None,
                        eos_id=0, alpha=0.6, beta=0.0)
    assert chosen.token[0, 0] == 3 and chosen.token[0, 1] == 2 and chosen.token[1, 0] == 1
    assert torch.isneginf(chosen.beam.log_prob[:, -3:]).all()
    assert (chosen.beam.log_prob[:, :-3] > -math.inf).all()
    assert (chosen.beam.lengths[:, :-3] > 0).all()
    assert chosen.beam.lengths[:, -3:].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_length_penalty_is_gnmt():
    # Wu et al. 2016, eq. 14: lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha
    lengths = torch.tensor([0, 1, 4, 11])
    for alpha in (0.2, 0.6, 1.0):
        expected = [(5 + n) ** alpha / 6**alpha for n in lengths.tolist()]
        torch.testing.assert_close(length_penalty(lengths, alpha),
                                   torch.tensor(expected, dtype=torch.float64))
    assert length_penalty(lengths, 0.0).tolist() == [1.0] * 4


def test_coverage_penalty_is_gnmt():
    # Wu et al. 2016, eq. 14: cp = sum_i log(min(sum_j p_ij, 1)); TF1 skips unattended (0)
    accumulated = torch.tensor([[0.5, 1.7, 0.0, 0.25], [1.0, 1.0, 1.0, 1.0]])
    expected = [math.log(0.5) + math.log(1.0) + math.log(0.25), 0.0]
    torch.testing.assert_close(coverage_penalty(accumulated), torch.tensor(expected))


def test_coverage_penalty_applies_to_finished_hypotheses_only():
    # two beams with equal log-probabilities; beam 0 covers the source badly. Ending now
    # (EOS) carries beta * cp, continuing does not (TF1's _get_scores masks by finished)
    beam = tf1_beam(torch.tensor([[-1.0, -1.0]]), [[1, 1]], [[False, False]])
    attention = torch.tensor([[[0.9, 0.1, 0.0], [0.5, 0.5, 0.0]]])  # source length 2
    log_probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]).log()  # token 0 = EOS
    chosen = _beam_step(beam, log_probs, attention, eos_id=0, alpha=0.0, beta=0.4)
    base = -1.0 + math.log(0.5)
    scores = {(int(p), int(t)): float(s) for p, t, s in
              zip(chosen.parent[0], chosen.token[0], chosen.scores[0], strict=True)}
    assert chosen.parent.tolist() == [[0, 1]] and chosen.token.tolist() == [[1, 1]]
    assert scores[(0, 1)] == pytest.approx(base) and scores[(1, 1)] == pytest.approx(base)
    # with room for all four candidates, the ended ones carry the coverage term
    beam4 = tf1_beam(torch.tensor([[-1.0, -1.0, -math.inf, -math.inf]]), [[1, 1, 0, 0]],
                     [[False, False, True, True]])
    attention4 = torch.cat([attention, torch.zeros(1, 2, 3)], dim=1)
    log_probs4 = torch.cat([log_probs, torch.zeros(1, 2, 2)], dim=1).log_softmax(-1)
    chosen = _beam_step(beam4, log_probs4, attention4, eos_id=0, alpha=0.0, beta=0.4)
    got = {(int(p), int(t)): float(s) for p, t, s in
           zip(chosen.parent[0], chosen.token[0], chosen.scores[0], strict=True)}
    assert got[(0, 0)] == pytest.approx(base + 0.4 * (math.log(0.9) + math.log(0.1)))
    assert got[(1, 0)] == pytest.approx(base + 0.4 * 2 * math.log(0.5))
    assert got[(0, 1)] == pytest.approx(base) and got[(1, 1)] == pytest.approx(base)


# --- BeamSearchDecoderTest._testDynamicDecodeRNN -----------------------------------------


class AttentionState(NamedTuple):
    cell_state: tuple
    attention: torch.Tensor
    alignments: torch.Tensor
    memory: torch.Tensor
    mask: torch.Tensor


class BahdanauCell(nn.Module):
    """An LSTM cell with additive attention over a memory carried in its state (as TF1's
    ``AttentionWrapper(LSTMCell, BahdanauAttention, attention_layer_size)``), written in
    the test."""

    def __init__(self, input_depth: int, cell_depth: int, memory_depth: int,
                 attention_depth: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_depth + attention_depth, cell_depth)
        self.query = nn.Linear(cell_depth, attention_depth, bias=False)
        self.keys = nn.Linear(memory_depth, attention_depth, bias=False)
        self.v = nn.Linear(attention_depth, 1, bias=False)
        self.attention_layer = nn.Linear(cell_depth + memory_depth, attention_depth, bias=False)

    def forward(self, inputs, state: AttentionState):
        h, c = self.cell(torch.cat([inputs, state.attention], dim=1), state.cell_state)
        energy = self.v(torch.tanh(self.keys(state.memory) + self.query(h).unsqueeze(1)))
        energy = energy.squeeze(2).masked_fill(~state.mask, -math.inf)
        alignments = energy.softmax(dim=1)  # (N, S)
        context = (alignments.unsqueeze(1) @ state.memory).squeeze(1)
        attention = self.attention_layer(torch.cat([h, context], dim=1))
        return attention, AttentionState((h, c), attention, alignments, state.memory, state.mask)


@pytest.mark.parametrize("has_attention", [False, True])
def test_dynamic_decode(has_attention):
    torch.manual_seed(0)
    encoder_sequence_length = torch.tensor([3, 2, 3, 1, 1])
    batch_size, decoder_max_time, input_depth, cell_depth = 5, 4, 7, 9
    attention_depth, vocab_size, embedding_dim, beam_width = 6, 20, 50, 3
    end_token, start_token, max_out = vocab_size - 1, 0, 3
    embedding = torch.randn(vocab_size, embedding_dim)
    output_layer = nn.Linear(attention_depth if has_attention else cell_depth, vocab_size)
    zeros = torch.zeros(batch_size * beam_width, cell_depth)
    if has_attention:
        inputs = torch.randn(batch_size, decoder_max_time, input_depth)
        mask = torch.arange(decoder_max_time) < encoder_sequence_length.unsqueeze(1)
        cell = BahdanauCell(embedding_dim, cell_depth, input_depth, attention_depth)
        initial_state = AttentionState((zeros, zeros.clone()),
                                       torch.zeros(batch_size * beam_width, attention_depth),
                                       torch.zeros(batch_size * beam_width, decoder_max_time),
                                       tile_batch(inputs, beam_width),
                                       tile_batch(mask, beam_width))
        coverage = 0.2
    else:
        cell, initial_state, coverage = nn.LSTMCell(embedding_dim, cell_depth), (zeros, zeros), 0.0
    decoder = BeamSearchDecoder(cell=cell, embedding=embedding,
                                start_tokens=torch.full((batch_size,), start_token),
                                end_token=end_token, initial_state=initial_state,
                                beam_width=beam_width, output_layer=output_layer,
                                length_penalty_weight=0.0, coverage_penalty_weight=coverage)
    result = decoder.decode(maximum_iterations=max_out)
    steps = int(result.lengths.max())
    assert result.tokens.shape == (batch_size, beam_width, steps)
    assert result.scores.shape == (batch_size, beam_width)
    assert (result.attention is not None) == has_attention
    if has_attention:
        assert result.attention.shape == (batch_size, beam_width, steps, decoder_max_time)
        # padding never attended: source 3 has length 1
        assert (result.attention[3, :, :, 1:] == 0).all()

    # the same search written as a step function for beam_search
    def step(tokens, state):
        inputs = embedding[tokens]
        if has_attention:
            outputs, state = cell(inputs, state)
            attention = state.alignments
        else:
            h, c = cell(inputs, state)
            outputs, state, attention = h, (h, c), None
        return output_layer(outputs).log_softmax(-1), state, attention

    untiled = (initial_state if not has_attention else AttentionState(
        (zeros[:batch_size], zeros[:batch_size]), initial_state.attention[:batch_size],
        initial_state.alignments[:batch_size], inputs, mask))
    if not has_attention:
        untiled = (zeros[:batch_size], zeros[:batch_size])
    with torch.no_grad():
        reference = beam_search(step, untiled, batch_size=batch_size, bos_id=start_token,
                                eos_id=end_token, beam_width=beam_width, max_length=max_out,
                                coverage_penalty=coverage, n_best=beam_width)
    assert torch.equal(result.tokens, reference.tokens)
    assert torch.equal(result.lengths, reference.lengths)
    torch.testing.assert_close(result.scores, reference.scores)


def test_beam_search_decoder_with_torch_cells_and_their_own_start_tokens():
    torch.manual_seed(1)
    vocab, hidden, width = 6, 5, 2
    embedding = nn.Embedding(vocab, 4)
    cell, out = nn.GRUCell(4, hidden), nn.Linear(hidden, vocab)
    start = torch.tensor([0, 3])
    h0 = torch.randn(2, hidden)
    decoder = BeamSearchDecoder(cell, embedding, start, end_token=1, initial_state=h0,
                                beam_width=width, output_layer=out, length_penalty_weight=0.5)
    result = decoder(maximum_iterations=5, n_best=1)
    for source in range(2):
        def step(tokens, h):
            h = cell(embedding(tokens), h)
            return out(h).log_softmax(-1), h, None

        with torch.no_grad():
            alone = beam_search(step, h0[source:source + 1], batch_size=1,
                                bos_id=int(start[source]), eos_id=1, beam_width=width,
                                max_length=5, length_penalty=0.5)
        steps = alone.tokens.shape[2]
        assert torch.equal(result.tokens[source, :, :steps], alone.tokens[0])
        torch.testing.assert_close(result.scores[source], alone.scores[0])


def test_beam_search_decoder_arguments():
    cell = nn.GRUCell(4, 5)
    kwargs = dict(cell=cell, embedding=torch.randn(6, 4), start_tokens=torch.zeros(2,
                  dtype=torch.long), end_token=1, initial_state=torch.zeros(4, 5), beam_width=2)
    with pytest.raises(ValueError, match="start_tokens must be a vector"):
        BeamSearchDecoder(**{**kwargs, "start_tokens": torch.zeros(2, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="beam_width must be an int >= 1"):
        BeamSearchDecoder(**{**kwargs, "beam_width": 0})
    with pytest.raises(ValueError, match="initial_state .*state has shape \\(3, 5\\)"):
        BeamSearchDecoder(**{**kwargs, "initial_state": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="maximum_iterations must be an int >= 1, got 0"):
        BeamSearchDecoder(**kwargs).decode(0)
    with pytest.raises(ValueError, match="maximum_iterations is needed"):
        BeamSearchDecoder(**kwargs).decode(None)
    with pytest.raises(ValueError, match="end_token=9 is outside the decoder's vocabulary of 6"):
        BeamSearchDecoder(**{**kwargs, "end_token": 9, "output_layer": nn.Linear(5, 6)}
                          ).decode(3)
    with pytest.raises(ValueError, match="coverage_penalty_weight=0.3 needs a step function that "
                                         "returns attention"):
        BeamSearchDecoder(**{**kwargs, "coverage_penalty_weight": 0.3,
                             "output_layer": nn.Linear(5, 6)}).decode(3)
