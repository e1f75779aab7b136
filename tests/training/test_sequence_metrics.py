"""Exact match, token accuracy and BLEU over decoded sequences: hand counts, and BLEU against
sacrebleu's own ``corpus_bleu`` and against the BLEU formula computed here from n-gram counts."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from rnnkit.training.metrics import (
    SequenceMetrics,
    corpus_bleu,
    exact_match_counts,
    token_accuracy_counts,
)

sacrebleu = pytest.importorskip("sacrebleu")


def test_exact_match_and_token_accuracy_by_hand():
    predictions = ["1997-05-03", "596", "12", "abcd", ""]
    references = ["1997-05-03", "597", "123", "abc", "x"]
    # exact: only the first
    assert exact_match_counts(predictions, references) == (1, 5)
    # tokens: 10/10, 2/3 ("59" right, "6" wrong), 2/3 ("3" missing), 3/4 ("d" extra), 0/1
    assert token_accuracy_counts(predictions, references) == (17, 21)
    # token lists work the same way as strings
    assert token_accuracy_counts([[5, 9, 6]], [[5, 9, 7]]) == (2, 3)


def test_sequence_metrics_accumulates_batches():
    metrics = SequenceMetrics(["exact_match", "token_accuracy", "bleu"], tokenize="char")
    assert all(math.isnan(v) for v in metrics.compute().values())
    metrics.update(["1997-05-03", "596"], ["1997-05-03", "597"])
    metrics.update(["12", "abcd", ""], ["123", "abc", "x"])
    result = metrics.compute()
    assert list(result) == ["exact_match", "token_accuracy", "bleu"]
    assert result["exact_match"] == pytest.approx(1 / 5)
    assert result["token_accuracy"] == pytest.approx(17 / 21)
    expected = sacrebleu.corpus_bleu(["1997-05-03", "596", "12", "abcd", ""],
                                     [["1997-05-03", "597", "123", "abc", "x"]],
                                     tokenize="char").score
    assert result["bleu"] == pytest.approx(expected)
    metrics.reset()
    assert math.isnan(metrics.compute()["exact_match"])


def test_bleu_matches_sacrebleu_on_words():
    hyps = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi"]
    refs = ["the cat is on the mat", "the quick brown fox jumps over", "hello there general kenobi"]
    ours = corpus_bleu(hyps, refs)
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_bleu_formula_from_hand_counts():
    """Papineni et al.'s corpus BLEU (clipped n-gram precisions, brevity penalty) counted here
    on whitespace tokens, against corpus_bleu with sacrebleu's no-op tokenizer."""
    hyps = ["a b c d e f", "a b x d", "p q r s t"]
    refs = ["a b c d e g", "a b c d e", "p q r s t"]

    def ngrams(tokens, n):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    log_precision = 0.0
    for n in range(1, 5):
        hits = total = 0
        for h, r in zip(hyps, refs, strict=True):
            h_counts, r_counts = ngrams(h.split(), n), ngrams(r.split(), n)
            hits += sum(min(c, r_counts[g]) for g, c in h_counts.items())
            total += sum(h_counts.values())
        log_precision += math.log(hits / total) / 4
    hyp_len = sum(len(h.split()) for h in hyps)
    ref_len = sum(len(r.split()) for r in refs)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    expected = 100 * brevity * math.exp(log_precision)
    assert corpus_bleu(hyps, refs, tokenize="none") == pytest.approx(expected, rel=1e-9)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match_counts(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="not one str"):
        token_accuracy_counts("abc", "abc")
    with pytest.raises(ValueError, match="did you mean 'exact_match'"):
        SequenceMetrics(["exact_mach"])
    with pytest.raises(ValueError, match="not a sacrebleu tokenizer"):
        corpus_bleu(["a"], ["a"], tokenize="klingon")
