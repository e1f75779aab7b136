"""CTC decoding against independent oracles: brute-force enumeration of every path (tiny T and
C), TensorFlow's decoder tests with their expected outputs, hand-worked cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnnkit.models.ctc_decoding import (
    CharNGramLM,
    CTCHypothesis,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
)
from tests.models.ctc_reference import reference_prefix_beam_search

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------ the oracle
def collapse(path, blank):
    """A path's label sequence, written out: merge repeats, then drop blanks."""
    out = []
    previous = None
    for cls in path:
        if cls != previous and cls != blank:
            out.append(cls)
        previous = cls
    return tuple(out)


def log_add(a, b):
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def lm_sequence_score(lm, labels):
    """``log P_lm(labels, end)`` asked one prefix at a time (no search involved)."""
    total = 0.0
    for i, label in enumerate(labels):
        total += float(lm.log_probs([tuple(labels[:i])])[0, label])
    if hasattr(lm, "end_log_probs"):
        total += float(lm.end_log_probs([tuple(labels)])[0])
    return total


def brute_force(log_probs, blank, lm=None, lm_weight=0.0, bonus=0.0):
    """Every label sequence with its score, best first: the acoustic score sums every one of
    the C**T paths that collapse to it (``log_probs (T, C)``)."""
    table = log_probs.double().tolist()
    steps, classes = len(table), len(table[0]) if table else 0
    acoustic: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(classes), repeat=steps):
        score = sum(table[t][c] for t, c in enumerate(path))
        labels = collapse(path, blank)
        acoustic[labels] = log_add(acoustic.get(labels, NEG_INF), score)
    ranked = []
    for labels, ac in acoustic.items():
        if ac == NEG_INF:
            continue
        lm_score = lm_sequence_score(lm, labels) if lm is not None else 0.0
        total = ac + bonus * len(labels) + (lm_weight * lm_score if lm_weight else 0.0)
        ranked.append((total, labels, ac, lm_score))
    ranked.sort(key=lambda r: -r[0])
    return ranked


def prefix_count(steps, classes):
    """How many label prefixes a search over ``steps`` steps can ever hold."""
    return sum((classes - 1) ** n for n in range(steps + 1))


def random_log_probs(shape, seed, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=gen, dtype=torch.float64) * scale, -1)


class TableLM:
    """A bigram LM written for the tests: a fixed random table ``P(next | last label or start)``
    with the end event in the blank's column."""

    def __init__(self, classes, blank, seed):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.log_softmax(torch.randn(classes + 1, classes, generator=gen) * 2, -1)
        self.blank = blank

    def _rows(self, prefixes):
        return self.table[[p[-1] if p else -1 for p in prefixes]]

    def log_probs(self, prefixes):
        return self._rows(prefixes).double()

    def end_log_probs(self, prefixes):
        return self._rows(prefixes)[:, self.blank].double()


def assert_same_ranking(found, expected, n):
    """``found`` (CTCHypothesis) == the first ``n`` of ``expected``: (score, labels, acoustic,
    lm) tuples from brute force, or (labels, score, acoustic, lm) from the plain version."""
    assert len(found) == min(n, len(expected))
    for hyp, row in zip(found, expected, strict=False):
        score, labels, ac, lm_score = row if isinstance(row[0], float) else (
            row[1], row[0], row[2], row[3])
        assert hyp.labels == labels
        assert hyp.score == pytest.approx(score, abs=1e-9)
        assert hyp.acoustic_score == pytest.approx(ac, abs=1e-9)
        assert hyp.lm_score == pytest.approx(lm_score, abs=1e-9)


# ------------------------------------------------------------------- exhaustive == brute force
@pytest.mark.parametrize(("steps", "classes", "blank", "seed"),
                         [(4, 3, 0, 0), (4, 3, 2, 1), (5, 3, 1, 2), (3, 4, 0, 3), (4, 4, 3, 4)])
def test_exhaustive_beam_equals_brute_force(steps, classes, blank, seed):
    log_probs = random_log_probs((1, steps, classes), seed)
    width = prefix_count(steps, classes)
    expected = brute_force(log_probs[0], blank)
    found = ctc_prefix_beam_search(log_probs, blank=blank, beam_width=width, n_best=width)[0]
    assert_same_ranking(found, expected, width)
    # the acoustic scores of all label sequences sum to one (every path counted once)
    assert sum(math.exp(h.acoustic_score) for h in found) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("lm_kind", ["table", "ngram"])
@pytest.mark.parametrize(("steps", "classes", "blank", "seed"), [(4, 3, 0, 5), (4, 4, 1, 6)])
def test_exhaustive_beam_with_lm_equals_brute_force_rescoring(lm_kind, steps, classes, blank,
                                                              seed):
    log_probs = random_log_probs((1, steps, classes), seed)
    if lm_kind == "table":
        lm = TableLM(classes, blank, seed)
    else:
        labels = [c for c in range(classes) if c != blank]
        rng = np.random.default_rng(seed)
        corpus = [list(rng.choice(labels, size=rng.integers(0, 5))) for _ in range(20)]
        lm = CharNGramLM(classes, order=2, blank=blank).fit([[int(x) for x in s] for s in corpus])
    width = prefix_count(steps, classes)
    expected = brute_force(log_probs[0], blank, lm, lm_weight=0.8, bonus=0.4)
    found = ctc_prefix_beam_search(log_probs, blank=blank, beam_width=width, n_best=width,
                                   lm=lm, lm_weight=0.8, insertion_bonus=0.4)[0]
    assert_same_ranking(found, expected, width)


def test_exhaustive_beam_over_a_padded_batch_matches_brute_force_per_row():
    log_probs = random_log_probs((3, 5, 3), 7)
    lengths = torch.tensor([2, 5, 4])
    width = prefix_count(5, 3)
    found = ctc_prefix_beam_search(log_probs, lengths, beam_width=width, n_best=6)
    for row, length in enumerate(lengths.tolist()):
        assert_same_ranking(found[row], brute_force(log_probs[row, :length], 0), 6)


# --------------------------------------------------------------------- TensorFlow's tests
def tf_greedy_inputs():
    """``testCTCGreedyDecoder`` in tensorflow/python/kernel_tests/nn_ops/ctc_decoder_ops_test.py:
    two rows (lengths 4 and 5 of 6 steps), the blank last; log of probabilities with zeros."""
    probs_0 = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6], [0.0, 0.0, 0.4, 0.6],
               [0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    probs_1 = [[0.1, 0.9, 0.0, 0.0], [0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.1, 0.9],
               [0.0, 0.9, 0.1, 0.1], [0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    return torch.tensor([probs_0, probs_1]).log(), torch.tensor([4, 5])


def test_greedy_matches_tensorflow_ctc_greedy_decoder():
    log_probs, lengths = tf_greedy_inputs()
    expected = [[0, 1], [1, 1, 0]]                          # TF's decode_truth
    assert ctc_greedy_decode(log_probs, lengths, blank=3) == expected
    # TF moves the blank to index 2 and asks again with blank_index=2 and -2
    moved = torch.cat([log_probs[..., :2], log_probs[..., -1:], log_probs[..., 2:-1]], dim=-1)
    assert ctc_greedy_decode(moved, lengths, blank=2) == expected
    assert ctc_greedy_decode(moved, lengths, blank=-2) == expected


def test_beam_search_matches_tensorflow_ctc_beam_search_decoder():
    """``testCTCDecoderBeamSearch``: TF takes logits (here probabilities + 2) and normalises
    them; the blank is the last class; beam width 2, two paths."""
    probs = torch.tensor([
        [0.30999, 0.309938, 0.0679938, 0.0673362, 0.0708352, 0.173908],
        [0.215136, 0.439699, 0.0370931, 0.0393967, 0.0381581, 0.230517],
        [0.199959, 0.489485, 0.0233221, 0.0251417, 0.0233289, 0.238763],
        [0.279611, 0.452966, 0.0204795, 0.0209126, 0.0194803, 0.20655],
        [0.51286, 0.288951, 0.0243026, 0.0220788, 0.0219297, 0.129878],
        [0.155251, 0.164444, 0.173517, 0.176138, 0.169979, 0.160671]])
    logits = torch.cat([probs + 2.0, torch.zeros(2, 6)])[None]            # (1, 8, 6)
    found = ctc_prefix_beam_search(torch.log_softmax(logits, -1), torch.tensor([5]), blank=5,
                                   beam_width=2, n_best=2)[0]
    assert [h.labels for h in found] == [(1, 0), (1,)]
    assert [h.score for h in found] == pytest.approx([-5.811451, -6.63339], abs=1e-5)
    with pytest.raises(ValueError, match="more hypotheses than the beam_width"):
        ctc_prefix_beam_search(torch.log_softmax(logits, -1), blank=5, beam_width=2, n_best=3)


# ---------------------------------------------------------------------- greedy and beam 1
def test_greedy_collapses_the_arg_max_path():
    path = torch.tensor([[2, 2, 0, 2, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    log_probs = torch.nn.functional.one_hot(path, 3).double().log()
    assert ctc_greedy_decode(log_probs) == [[2, 2, 1, 1], []]
    assert ctc_greedy_decode(log_probs, [3, 9]) == [[2], []]


def test_greedy_equals_beam_width_one_when_the_best_path_dominates():
    # a trained recognizer's output: each step puts most of its mass on one class
    gen = torch.Generator().manual_seed(0)
    b, t, c = 64, 30, 6
    path = torch.randint(0, c, (b, t), generator=gen)
    logits = torch.randn(b, t, c, generator=gen) + 6.0 * torch.nn.functional.one_hot(path, c)
    log_probs = torch.log_softmax(logits, -1)
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    beam = ctc_prefix_beam_search(log_probs, lengths, beam_width=1)
    assert [list(h[0].labels) for h in beam] == ctc_greedy_decode(log_probs, lengths)


def test_beam_width_one_can_beat_greedy_where_paths_share_the_mass():
    # greedy reads 1 then 2; but "1" owns the paths 1-, 11 and -1 (0.555) against "12" (0.36)
    probs = torch.tensor([[[0.05, 0.9, 0.05], [0.3, 0.3, 0.4]]], dtype=torch.float64)
    assert ctc_greedy_decode(probs.log()) == [[1, 2]]
    oracle = brute_force(probs.log()[0], 0)
    assert oracle[0][1] == (1,) and math.exp(oracle[0][2]) == pytest.approx(0.555)
    assert ctc_prefix_beam_search(probs.log(), beam_width=1)[0][0].labels == (1,)


# ----------------------------------------------------------------- n-best, lengths, pruning
def test_n_best_is_sorted_distinct_and_consistent():
    log_probs = random_log_probs((4, 12, 5), 11)
    lm = TableLM(5, 0, 3)
    for rows in (ctc_prefix_beam_search(log_probs, beam_width=10, n_best=10),
                 ctc_prefix_beam_search(log_probs, beam_width=10, n_best=10, lm=lm,
                                        lm_weight=0.5, insertion_bonus=1.0)):
        for hyps in rows:
            assert len(hyps) == 10
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True)
            assert len({h.labels for h in hyps}) == 10
            for h in hyps:
                assert isinstance(h, CTCHypothesis)
                assert all(isinstance(x, int) and x != 0 for x in h.labels)
    assert ctc_prefix_beam_search(log_probs, beam_width=10, n_best=3)[1] == \
        ctc_prefix_beam_search(log_probs, beam_width=10, n_best=10)[1][:3]


def test_padded_rows_decode_as_they_do_alone():
    gen = torch.Generator().manual_seed(5)
    lengths = [7, 15, 1, 0, 11]
    padded = torch.log_softmax(torch.randn(5, 15, 4, generator=gen) * 3, -1)
    padded[0, 7:] = 50.0                         # garbage in the padding is never read
    lm = CharNGramLM(4, order=2).fit([[1, 2, 3], [3, 2, 1, 1], [2]])
    opts = {"beam_width": 6, "n_best": 3, "lm": lm, "lm_weight": 0.5, "insertion_bonus": 0.2}
    batch_beam = ctc_prefix_beam_search(padded, torch.tensor(lengths), **opts)
    batch_greedy = ctc_greedy_decode(padded, torch.tensor(lengths))
    for row, length in enumerate(lengths):
        alone = padded[row:row + 1, :length]
        assert batch_beam[row] == ctc_prefix_beam_search(alone, **opts)[0]
        assert batch_greedy[row] == ctc_greedy_decode(alone)[0]
    assert batch_beam[3] == [CTCHypothesis((), pytest.approx(lm.end_log_probs([()]).item() * 0.5),
                                           0.0, pytest.approx(lm.end_log_probs([()]).item()))]


def test_pruning_drops_unlikely_classes_from_every_path():
    # at 0.3: step 0 keeps label 1 only, step 1 blank and 1, step 2 the blank only
    probs = torch.tensor([[[0.1, 0.8, 0.1], [0.35, 0.45, 0.2], [0.8, 0.1, 0.1]]],
                         dtype=torch.float64)
    full = ctc_prefix_beam_search(probs.log(), beam_width=8, n_best=8)[0]
    assert ctc_prefix_beam_search(probs.log(), beam_width=8, n_best=8,
                                  prune_log_prob=-1e9)[0] == full
    assert {(), (1,), (1, 1), (1, 2), (2,)} <= {h.labels for h in full}
    pruned = ctc_prefix_beam_search(probs.log(), beam_width=8, n_best=8,
                                    prune_log_prob=math.log(0.3))[0]
    assert [h.labels for h in pruned] == [(1,)]
    assert math.exp(pruned[0].acoustic_score) == pytest.approx(0.8 * 0.35 * 0.8 + 0.8 * 0.45 * 0.8)
    # the best class of a step is always used, however unlikely
    flat = torch.tensor([[[0.3, 0.3, 0.4], [0.3, 0.3, 0.4]]], dtype=torch.float64).log()
    kept = ctc_prefix_beam_search(flat, beam_width=8, n_best=8, prune_log_prob=0.0)[0]
    assert [h.labels for h in kept] == [(2,)]


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_exhaustive_beam_equals_brute_force_without_the_pruned_classes(seed):
    log_probs = random_log_probs((1, 5, 3), seed)
    threshold = math.log(0.25)
    best = log_probs.argmax(-1, keepdim=True)
    used = (log_probs >= threshold) | (torch.arange(3) == best)
    width = prefix_count(5, 3)
    found = ctc_prefix_beam_search(log_probs, beam_width=width, n_best=width,
                                   prune_log_prob=threshold)[0]
    assert_same_ranking(found, brute_force(log_probs.masked_fill(~used, NEG_INF)[0], 0), width)


# ------------------------------------------------------------ narrow beams: the plain version
@pytest.mark.parametrize(("width", "with_lm"), [(1, False), (3, False), (8, False), (4, True)])
def test_narrow_beams_equal_the_plain_dict_implementation(width, with_lm):
    log_probs = random_log_probs((6, 25, 5), 40 + width, scale=2.0)
    lengths = torch.tensor([25, 18, 25, 7, 1, 12])
    lm = TableLM(5, 0, width) if with_lm else None
    opts = {"lm": lm, "lm_weight": 0.9 if with_lm else 0.0, "insertion_bonus": 0.3}
    found = ctc_prefix_beam_search(log_probs, lengths, beam_width=width, n_best=width, **opts)
    for row, length in enumerate(lengths.tolist()):
        expected = reference_prefix_beam_search(log_probs[row, :length].tolist(),
                                                beam_width=width, **opts)
        assert_same_ranking(found[row], expected, width)


# ------------------------------------------------------------------------------ LM effect
def test_lm_turns_an_ambiguous_reading_into_the_likely_word():
    # the acoustic model cannot tell 1 from 2 at the middle step (0.46 vs 0.44), so alone it
    # reads 3-1-3; the LM has only ever seen 3-2-3 and flips it
    probs = torch.tensor([[[0.1, 0.0, 0.0, 0.9], [0.9, 0.0, 0.0, 0.1],
                           [0.1, 0.46, 0.44, 0.0], [0.9, 0.0, 0.0, 0.1],
                           [0.1, 0.0, 0.0, 0.9]]], dtype=torch.float64)
    log_probs = probs.clamp(min=1e-12).log()
    lm = CharNGramLM(4, order=3).fit([[3, 2, 3]] * 20 + [[3, 3], [2, 2]])
    assert ctc_prefix_beam_search(log_probs, beam_width=8)[0][0].labels == (3, 1, 3)
    best = ctc_prefix_beam_search(log_probs, beam_width=8, lm=lm, lm_weight=1.0)[0][0]
    assert best.labels == (3, 2, 3)
    oracle = brute_force(log_probs[0], 0, lm, lm_weight=1.0)
    assert oracle[0][1] == (3, 2, 3) and best.score == pytest.approx(oracle[0][0])


def test_insertion_bonus_adds_per_label():
    log_probs = random_log_probs((1, 5, 3), 21)
    width = prefix_count(5, 3)                   # exhaustive: every score is exact
    plain = ctc_prefix_beam_search(log_probs, beam_width=width, n_best=10)[0]
    bonus = ctc_prefix_beam_search(log_probs, beam_width=width, n_best=width,
                                   insertion_bonus=0.75)[0]
    scores = {h.labels: h for h in bonus}
    for h in plain:
        assert scores[h.labels].score == pytest.approx(h.score + 0.75 * len(h.labels))


# ---------------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_input():
    log_probs = random_log_probs((2, 5, 4), 0)
    with pytest.raises(ValueError, match=r"blank=4 is outside the 4 classes"):
        ctc_greedy_decode(log_probs, blank=4)
    with pytest.raises(ValueError, match=r"blank=-5 is outside"):
        ctc_prefix_beam_search(log_probs, blank=-5)
    with pytest.raises(ValueError, match=r"must be \(B, T, C\).*got shape \(5, 4\)"):
        ctc_prefix_beam_search(log_probs[0])
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 is longer than the 5 time steps"):
        ctc_prefix_beam_search(log_probs, torch.tensor([5, 6]))
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 is negative"):
        ctc_greedy_decode(log_probs, [-1, 2])
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(2,\)"):
        ctc_greedy_decode(log_probs, torch.tensor([5]))
    with pytest.raises(TypeError, match="lengths must hold integers"):
        ctc_greedy_decode(log_probs, torch.tensor([5.0, 5.0]))
    with pytest.raises(ValueError, match="NaN"):
        ctc_prefix_beam_search(torch.full((1, 2, 3), float("nan")))
    with pytest.raises(ValueError, match=r"NaN or \+inf"):
        ctc_greedy_decode(torch.full((1, 2, 3), float("inf")))
    with pytest.raises(ValueError, match="beam_width must be an int >= 1"):
        ctc_prefix_beam_search(log_probs, beam_width=0)
    with pytest.raises(TypeError, match="beam_width must be an int, got 2.5"):
        ctc_prefix_beam_search(log_probs, beam_width=2.5)
    with pytest.raises(TypeError, match="blank must be an int, got True"):
        ctc_greedy_decode(log_probs, blank=True)
    # NumPy and tensor integers are integers
    assert ctc_prefix_beam_search(log_probs, blank=np.int64(3), beam_width=torch.tensor(4)) == \
        ctc_prefix_beam_search(log_probs, blank=3, beam_width=4)
    with pytest.raises(ValueError, match="lm_weight=0.5 without an lm"):
        ctc_prefix_beam_search(log_probs, lm_weight=0.5)
    with pytest.raises(TypeError, match="must be a Tensor"):
        ctc_greedy_decode(log_probs.numpy())


class WrongShapeLM:
    def __init__(self, shape, end_shape=None):
        self.shape, self.end_shape = shape, end_shape

    def log_probs(self, prefixes):
        return torch.zeros(*self.shape(len(prefixes)))

    def end_log_probs(self, prefixes):
        return torch.zeros(*self.end_shape(len(prefixes)))


def test_clear_errors_for_an_lm_of_the_wrong_shape():
    log_probs = random_log_probs((2, 5, 4), 0)
    with pytest.raises(ValueError, match=r"lm.log_probs returned shape \(1, 3\) for 1 prefixes; "
                                         r"expected \(N, C\) = \(1, 4\)"):
        ctc_prefix_beam_search(log_probs, lm=WrongShapeLM(lambda n: (n, 3)), lm_weight=1.0)
    with pytest.raises(ValueError, match=r"lm.end_log_probs returned \(16, 1\) for 16 "
                                         r"prefixes; expected"):
        ctc_prefix_beam_search(log_probs, lm=WrongShapeLM(lambda n: (n, 4), lambda n: (n, 1)),
                               lm_weight=1.0)
    with pytest.raises(TypeError, match="log_probs.prefixes. method"):
        ctc_prefix_beam_search(log_probs, lm=object(), lm_weight=1.0)


def test_empty_inputs():
    assert ctc_greedy_decode(torch.zeros(0, 3, 4)) == []
    assert ctc_prefix_beam_search(torch.zeros(0, 3, 4)) == []
    assert ctc_greedy_decode(torch.zeros(2, 0, 4)) == [[], []]
    assert ctc_prefix_beam_search(torch.zeros(2, 0, 4), n_best=2) == \
        [[CTCHypothesis((), 0.0, 0.0, 0.0)]] * 2


# ------------------------------------------------------------------ random shapes (hypothesis)
def test_random_small_problems_equal_brute_force():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
    @hypothesis.given(classes=st.integers(1, 4), data=st.data())
    def check(classes, data):
        steps = data.draw(st.integers(0, 4 if classes < 4 else 3))   # beams of <= 40 prefixes
        blank = data.draw(st.integers(-classes, classes - 1))
        rows = data.draw(st.integers(1, 3))
        lengths = data.draw(st.lists(st.integers(0, steps), min_size=rows, max_size=rows))
        seed = data.draw(st.integers(0, 2**16))
        log_probs = random_log_probs((rows, steps, classes), seed, scale=3.0)
        width = prefix_count(steps, classes) if classes > 1 else 1
        found = ctc_prefix_beam_search(log_probs, torch.tensor(lengths), blank=blank,
                                       beam_width=width, n_best=width)
        greedy = ctc_greedy_decode(log_probs, lengths, blank=blank)
        for row, length in enumerate(lengths):
            expected = brute_force(log_probs[row, :length], blank % classes)
            assert_same_ranking(found[row], expected, width)
            path = log_probs[row, :length].argmax(-1).tolist()
            assert tuple(greedy[row]) == collapse(path, blank % classes)

    check()
