"""Seq2Seq.decode through rnnkit.models.decoding, against a hand-written greedy loop over
decoder_step and brute-force enumeration of every output scored by the teacher-forced
forward pass."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models import Seq2Seq

BOS, EOS = 1, 2


def _model(attention="bahdanau", seed=0, vocab=6):
    torch.manual_seed(seed)
    return Seq2Seq(7, vocab, embedding_dim=4, hidden_size=6, attention=attention).eval()


def _source():
    return torch.tensor([[3, 4, 5, 6], [5, 3, 0, 0]]), torch.tensor([4, 2])


def _greedy_oracle(model, source, lengths, steps):
    state = model.initial_decoder_state(model.encode(source, lengths))
    tokens, out, done = torch.full((source.shape[0],), BOS), [], torch.zeros(2, dtype=bool)
    for _ in range(steps):
        log_probs, state, _ = model.decoder_step(tokens, state)
        tokens = torch.where(done, EOS, log_probs.argmax(-1))
        done |= tokens == EOS
        out.append(tokens)
    return torch.stack(out, 1)


@pytest.mark.parametrize("attention,seed", [("luong_concat", 2), (None, 3)])
def test_greedy_and_width_one_beams_equal_a_hand_written_greedy_loop(attention, seed):
    model = _model(attention, seed=seed)
    with torch.no_grad():  # an untrained model: varied outputs that do not end at once
        model.decoder.output.bias[EOS] -= 1.0
        model.decoder.output.weight.mul_(4.0)
    source, lengths = _source()
    with torch.no_grad():
        expected = _greedy_oracle(model, source, lengths, 7)
    greedy = model.decode(source, lengths, method="greedy", max_length=7)
    beam = model.decode(source, lengths, method="beam", beam_width=1, max_length=7)
    steps = greedy.tokens.shape[-1]
    assert steps == 7 and len(set(greedy.tokens.flatten().tolist())) >= 3
    assert torch.equal(greedy.tokens[:, 0], expected[:, :steps])
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.scores, greedy.scores)
    if attention is None:
        assert greedy.attention is None
    else:
        assert greedy.attention.shape == (2, 1, steps, 4)
        assert torch.all(greedy.attention[1, :, :, 2:] == 0)


def _sequence_log_prob(model, source, lengths, tokens):
    """log P(tokens | source) from the teacher-forced forward pass (up to the first EOS)."""
    target_in = torch.tensor([[BOS, *tokens[:-1]]])
    with torch.no_grad():
        log_probs = F.log_softmax(model(source, target_in, lengths=lengths), -1)[0]
    return float(sum(log_probs[t, token] for t, token in enumerate(tokens)))


def test_a_beam_as_wide_as_the_search_space_finds_the_best_sequence():
    vocab, max_length = 4, 3
    model = _model("bahdanau", seed=3, vocab=vocab)
    source, lengths = torch.tensor([[3, 4, 5]]), torch.tensor([3])
    candidates = set()
    for tokens in itertools.product(range(vocab), repeat=max_length):
        end = tokens.index(EOS) + 1 if EOS in tokens else max_length
        candidates.add(tokens[:end])
    scored = {c: _sequence_log_prob(model, source, lengths, list(c)) for c in candidates}
    best = max(scored, key=scored.get)
    found = model.decode(source, lengths, method="beam", beam_width=vocab ** (max_length - 1),
                         max_length=max_length, n_best=2)
    length = int(found.lengths[0, 0])
    assert tuple(found.tokens[0, 0, :length].tolist()) == best
    assert abs(float(found.scores[0, 0]) - scored[best]) < 1e-5
    second = tuple(found.tokens[0, 1, :int(found.lengths[0, 1])].tolist())
    assert second == sorted(scored, key=scored.get)[-2]


def test_sampling_is_reproducible_and_decode_leaves_the_training_mode_alone():
    model = _model("luong").train()
    source, lengths = _source()
    a = model.decode(source, lengths, method="sample", seed=5, temperature=0.7, top_k=3)
    b = model.decode(source, lengths, method="sample", seed=5, temperature=0.7, top_k=3)
    assert torch.equal(a.tokens, b.tokens) and model.training


def test_decode_errors_are_one_line():
    model = _model()
    source, lengths = _source()
    for kwargs, message in [
        (dict(max_length=0), "max_length must be an int >= 1, got 0"),
        (dict(method="viterbi"), "method must be one of greedy, sample, beam"),
        (dict(method="greedy", beam_width=3), "beam_width do not apply to method='greedy'"),
        (dict(method="beam", beam_width=0), "beam_width"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.decode(source, lengths, **kwargs)
    bad = source.clone()
    bad[0, 1] = 7
    with pytest.raises(ValueError, match=r"id 7 at \(batch 0, step 1\)"):
        model.decode(bad, lengths)
