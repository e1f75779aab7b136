"""The LMs for CTC prefix beam search: CharNGramLM against hand-computed estimates, its
normalisation and back-off; LanguageModelScorer against the LM run on each prefix alone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnkit.models import LanguageModel
from rnnkit.models.ctc_decoding import CharNGramLM, LanguageModelScorer, ctc_prefix_beam_search
from tests.models.test_ctc_decoding import brute_force, prefix_count, random_log_probs

CORPUS = [[1, 2, 3], [1, 2], [1, 3]]


def probs_after(lm, prefix):
    """``(P(label 1..C-1 | prefix), P(end | prefix))`` as plain floats."""
    row = lm.log_probs([prefix])[0].exp().tolist()
    return row[1:], float(lm.end_log_probs([prefix]).exp())


def test_witten_bell_by_hand():
    lm = CharNGramLM(4, order=2).fit(CORPUS)
    # unigram over {1, 2, 3, end}: counts 3, 2, 2, 3 of 10, 4 types, over uniform 1/4
    unigram = [(c + 4 * 0.25) / (10 + 4) for c in (3, 2, 2, 3)]
    # after 1: 2 twice, 3 once (2 types) over the unigram
    labels, end = probs_after(lm, (1,))
    expected = [(c + 2 * u) / (3 + 2) for c, u in zip((0, 2, 1, 0), unigram, strict=True)]
    assert labels + [end] == pytest.approx(expected, abs=1e-12)
    # at the start: 1 three times (1 type)
    labels, end = probs_after(lm, ())
    expected = [(c + 1 * u) / (3 + 1) for c, u in zip((3, 0, 0, 0), unigram, strict=True)]
    assert labels + [end] == pytest.approx(expected, abs=1e-12)
    # the blank's column is not a label
    assert lm.log_probs([(1,)])[0, 0] == -math.inf


def test_additive_smoothing_by_hand():
    lm = CharNGramLM(4, order=2, smoothing=1.0).fit(CORPUS)
    unigram = [(c + 0.25) / (10 + 1) for c in (3, 2, 2, 3)]
    labels, end = probs_after(lm, (1,))
    expected = [(c + u) / (3 + 1) for c, u in zip((0, 2, 1, 0), unigram, strict=True)]
    assert labels + [end] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.073864, 0.551136, 0.301136, 0.073864], abs=1e-6)


@pytest.mark.parametrize("smoothing", ["witten_bell", 0.5])
@pytest.mark.parametrize("order", [1, 2, 4])
def test_every_context_sums_to_one_and_unseen_contexts_back_off(smoothing, order):
    gen = torch.Generator().manual_seed(order)
    corpus = [torch.randint(1, 4, (int(torch.randint(0, 7, (1,), generator=gen)),),
                            generator=gen) for _ in range(30)]          # label 4 never seen
    lm = CharNGramLM(5, order=order, blank=0, smoothing=smoothing).fit(corpus)
    prefixes = [p for n in range(4) for p in itertools.product(range(1, 5), repeat=n)]
    total = lm.log_probs(prefixes)[:, 1:].exp().sum(1) + lm.end_log_probs(prefixes).exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
    # sequence_log_prob is the chain of the next-label terms and the end
    seq = [2, 4, 4, 1]
    chain = sum(float(lm.log_probs([tuple(seq[:i])])[0, x]) for i, x in enumerate(seq))
    assert lm.sequence_log_prob(seq) == pytest.approx(
        chain + float(lm.end_log_probs([tuple(seq)])[0]), abs=1e-12)
    if order > 1:
        # a context never seen (it holds label 4) falls back to the next lower order: what
        # the (order-1)-gram model says after the context's seen tail
        lower = CharNGramLM(5, order=order - 1, blank=0, smoothing=smoothing).fit(corpus)
        unseen = (4, 1, 2)[:order - 1]
        assert torch.allclose(lm.log_probs([unseen]), lower.log_probs([unseen]))
        assert torch.allclose(lm.end_log_probs([unseen]), lower.end_log_probs([unseen]))


def test_blank_elsewhere_and_errors():
    lm = CharNGramLM(4, order=2, blank=3).fit([[0, 1, 2], [0, 1]])
    assert lm.log_probs([(0,)])[0, 3] == -math.inf
    assert lm.log_probs([(0,)])[0, 1] > lm.log_probs([(0,)])[0, 2]
    with pytest.raises(ValueError, match="sequence 1 holds 3; labels are ints in 0..3 other "
                                         "than the blank 3"):
        CharNGramLM(4, blank=3).fit([[0], [1, 3]])
    with pytest.raises(ValueError, match="sequence 0 holds 7"):
        CharNGramLM(4).fit([[7]])
    with pytest.raises(RuntimeError, match="call fit"):
        CharNGramLM(4).log_probs([()])
    with pytest.raises(ValueError, match="smoothing must be 'witten_bell' or a positive"):
        CharNGramLM(4, smoothing=0)
    with pytest.raises(ValueError, match="no sequences"):
        CharNGramLM(4).fit([])
    with pytest.raises(ValueError, match="blank=4 is outside the 4 classes"):
        CharNGramLM(4, blank=4)


# ----------------------------------------------------------------------- LanguageModelScorer
def tiny_lm():
    torch.manual_seed(0)
    return LanguageModel(vocab_size=6, hidden_size=8, cell="gru")   # 0 pad, 1 bos, 5 eos


TOKENS = [0, 2, 3, 4]          # classes: blank (unused), labels 1..3 -> tokens 2..4


def alone(model, prefix):
    ids = torch.tensor([[1] + [TOKENS[x] for x in prefix]])
    with torch.no_grad():
        return torch.log_softmax(model(ids)[0][0, -1].double(), -1)


def test_scorer_equals_the_model_run_on_each_prefix_alone():
    model = tiny_lm()
    scorer = LanguageModelScorer(model, TOKENS, bos_token=1, eos_token=5)
    prefixes = [(), (1,), (3, 2, 1, 1), (2, 3), (1,)]
    got, end = scorer.log_probs(prefixes), scorer.end_log_probs(prefixes)
    assert got.shape == (5, 4) and end.shape == (5,)
    for i, prefix in enumerate(prefixes):
        expected = alone(model, prefix)
        assert torch.allclose(got[i, 1:], expected[[2, 3, 4]], atol=1e-6)
        assert end[i] == pytest.approx(float(expected[5]), abs=1e-6)
    with pytest.raises(ValueError, match="must lie in the model's vocabulary 0..5"):
        LanguageModelScorer(model, TOKENS, bos_token=1, eos_token=6)


def test_beam_search_with_the_scorer_equals_brute_force():
    model = tiny_lm()
    scorer = LanguageModelScorer(model, TOKENS, bos_token=1, eos_token=5)
    log_probs = random_log_probs((1, 3, 4), 9)
    width = prefix_count(3, 4)
    found = ctc_prefix_beam_search(log_probs, beam_width=width, n_best=width, lm=scorer,
                                   lm_weight=0.6, insertion_bonus=0.1)[0]
    expected = brute_force(log_probs[0], 0, scorer, lm_weight=0.6, bonus=0.1)
    assert [h.labels for h in found] == [e[1] for e in expected]
    assert [h.score for h in found] == pytest.approx([e[0] for e in expected], abs=1e-9)
