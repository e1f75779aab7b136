"""rnnkit.models.decoding against independent oracles: brute-force enumeration of every
sequence a tiny decoder can emit (with the GNMT length and coverage penalties written out
in plain Python), a plain greedy loop, exact sampling probabilities, and each source decoded
alone."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.models import decoding
from rnnkit.models.decoding import (
    Hypotheses,
    beam_search,
    greedy_decode,
    sample_decode,
    tile_batch,
)

BOS, EOS = 0, 1


class TinyDecoder:
    """A decoder with random weights: embedding, GRU cell, dot attention over a random
    per-source memory (positions past each source's length masked), output layer. Its state
    is a dict holding the hidden state, the memory and the mask, so beam search reorders all
    three."""

    def __init__(self, vocab: int = 4, hidden: int = 6, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.vocab, self.hidden = vocab, hidden
        self.embedding = torch.randn(vocab, hidden, generator=generator)
        self.cell = torch.nn.GRUCell(hidden, hidden)
        with torch.no_grad():
            for param in self.cell.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))
        self.out = torch.randn(2 * hidden, vocab, generator=generator) * 1.5
        self.calls = 0

    def initial_state(self, batch: int, source_lengths: list[int], seed: int = 1) -> dict:
        generator = torch.Generator().manual_seed(seed)
        width = max(source_lengths)
        mask = torch.arange(width).unsqueeze(0) < torch.tensor(source_lengths).unsqueeze(1)
        return {"h": torch.randn(batch, self.hidden, generator=generator),
                "memory": torch.randn(batch, width, self.hidden, generator=generator),
                "mask": mask}

    def __call__(self, tokens, state):
        self.calls += 1
        with torch.no_grad():
            h = self.cell(self.embedding[tokens], state["h"])  # (N, H)
            energy = (state["memory"] @ h.unsqueeze(2)).squeeze(2)  # (N, S)
            attention = energy.masked_fill(~state["mask"], -math.inf).softmax(dim=-1)
            context = (attention.unsqueeze(1) @ state["memory"]).squeeze(1)  # (N, H)
            log_probs = (torch.cat([h, context], dim=1) @ self.out).log_softmax(dim=-1)
        return log_probs, {**state, "h": h}, attention


def markov_chain(vocab: int, seed: int, sharpness: float = 1.0):
    """A step function whose next-token distribution depends on the last token only."""
    generator = torch.Generator().manual_seed(seed)
    table = (torch.randn(vocab, vocab, generator=generator) * sharpness).log_softmax(dim=-1)

    def step(tokens, state):
        return table[tokens], state, None

    return step, table


def row(state, index: int):
    """Source ``index`` of a batched state, as a batch of one."""
    return {key: value[index:index + 1] for key, value in state.items()}


def brute_force(step_fn, state, *, max_length: int, alpha: float = 0.0, beta: float = 0.0):
    """Every sequence one source can produce (ended by EOS, or cut at ``max_length``), with
    its score ``log P / ((5 + n) / 6) ** alpha (+ beta * sum_i log(min(sum_t a_ti, 1)) over
    attended positions, for ended ones)``, ``n`` the tokens before EOS, and its attention rows.
    Depth-first: each prefix carries its own state."""
    found: dict[tuple[int, ...], tuple[float, list]] = {}

    def visit(prefix, token, state, log_prob, attention_rows):
        log_probs, next_state, attention = step_fn(torch.tensor([token]), state)
        rows = attention_rows + ([attention[0].double().tolist()] if attention is not None else [])
        for v in range(log_probs.shape[1]):
            total = log_prob + float(log_probs[0, v].double())
            sequence = prefix + (v,)
            if v == EOS or len(sequence) == max_length:
                n = len(prefix) if v == EOS else len(sequence)
                score = total / ((5.0 + n) / 6.0) ** alpha
                if v == EOS and beta != 0:
                    sums = [sum(column) for column in zip(*rows, strict=True)]
                    score += beta * sum(math.log(min(a, 1.0)) for a in sums if a > 0)
                found[sequence] = (score, rows)
            else:
                visit(sequence, v, next_state, total, rows)

    visit((), BOS, state, 0.0, [])
    return found


def hypotheses_of(out: Hypotheses, source: int) -> list[tuple[tuple[int, ...], float]]:
    result = []
    for k in range(out.tokens.shape[1]):
        n = int(out.lengths[source, k])
        result.append((tuple(out.tokens[source, k, :n].tolist()), float(out.scores[source, k])))
    return result


def assert_padded_with_eos(out: Hypotheses) -> None:
    steps = out.tokens.shape[2]
    after_end = torch.arange(steps).view(1, 1, steps) >= out.lengths.unsqueeze(2)
    assert (out.tokens[after_end] == EOS).all()
    if out.attention is not None:
        assert (out.attention[after_end] == 0).all()


# --- beam search = brute force -----------------------------------------------------------


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.0), (0.8, 0.0), (0.0, 0.5), (0.6, 0.3)])
@pytest.mark.parametrize("max_length", [1, 3])
def test_beam_as_wide_as_the_search_space_equals_enumeration(alpha, beta, max_length):
    decoder = TinyDecoder(vocab=4)
    state = decoder.initial_state(2, [3, 2])
    # 3 tokens besides EOS: 1 + 3 + ... + 3**(L-1) sequences ended by EOS, 3**L cut
    space = sum(3**n for n in range(max_length)) + 3**max_length
    out = beam_search(decoder, state, batch_size=2, bos_id=BOS, eos_id=EOS, beam_width=space,
                      max_length=max_length, length_penalty=alpha, coverage_penalty=beta,
                      n_best=space)
    assert out.tokens.shape == (2, space, max_length)
    assert out.attention is not None and out.attention.shape == (2, space, max_length, 3)
    assert_padded_with_eos(out)
    for source in range(2):
        expected = brute_force(decoder, row(state, source), max_length=max_length,
                               alpha=alpha, beta=beta)
        got = hypotheses_of(out, source)
        assert len(expected) == space
        assert {sequence for sequence, _ in got} == set(expected)
        for k, (sequence, score) in enumerate(got):
            assert score == pytest.approx(expected[sequence][0], abs=1e-5)
            rows = torch.tensor(expected[sequence][1], dtype=torch.float64)[: len(sequence)]
            torch.testing.assert_close(out.attention[source, k, : len(sequence)].double(), rows,
                                       atol=1e-6, rtol=0)
        scores = out.scores[source]
        assert (scores[:-1] >= scores[1:]).all()  # best first
        # padding positions of the shorter source are never attended
        if source == 1:
            assert (out.attention[source, :, :, 2] == 0).all()


def test_beam_search_best_is_the_enumerated_best_with_a_narrow_beam_too():
    # the best of 40 sequences, found with a beam of 40: n_best=3 gives the 3 best, in order
    decoder = TinyDecoder(vocab=4, seed=3)
    state = decoder.initial_state(1, [3])
    expected = brute_force(decoder, state, max_length=3, alpha=0.6)
    ranked = sorted(expected.items(), key=lambda item: -item[1][0])[:3]
    out = beam_search(decoder, state, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=40,
                      max_length=3, length_penalty=0.6, n_best=3)
    got = hypotheses_of(out, 0)
    assert [sequence for sequence, _ in got] == [sequence for sequence, _ in ranked]
    assert [score for _, score in got] == pytest.approx([s for _, (s, _) in ranked], abs=1e-5)


def test_n_best_beyond_the_search_space_reports_impossible_hypotheses():
    step, table = markov_chain(3, seed=0)
    # 2 tokens besides EOS, max_length 2: [EOS], [a, EOS] x2, [a, b] x4 = 7 sequences
    out = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=9,
                      max_length=2, n_best=9)
    assert torch.isfinite(out.scores[0, :7]).all()
    assert torch.isneginf(out.scores[0, 7:]).all()
    assert out.lengths[0, 7:].tolist() == [0, 0]
    assert (out.tokens[0, 7:] == EOS).all()
    expected = brute_force(step, None, max_length=2)
    assert {sequence for sequence, _ in hypotheses_of(out, 0)[:7]} == set(expected)


# --- state reordering --------------------------------------------------------------------


def history_decoder(vocab: int = 4, seed: int = 0):
    """A step function whose state records every token fed so far, and whose next-token
    distribution depends on that whole history (a random table indexed by a hash of it):
    a state row that follows the wrong hypothesis gives the wrong scores."""
    generator = torch.Generator().manual_seed(seed)
    buckets = 1009
    table = torch.randn(buckets, vocab, generator=generator).log_softmax(dim=-1)
    last_state = {}

    def step(tokens, state):
        history = torch.cat([state["history"], tokens.unsqueeze(1)], dim=1)  # (N, t + 1)
        powers = torch.tensor([7**i for i in range(history.shape[1])])
        key = (history * powers).sum(dim=1) % buckets
        new_state = {"history": history}
        last_state["state"] = new_state
        return table[key], new_state, None

    return step, last_state


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_state_reorder_follows_each_hypothesis(alpha):
    step, last_state = history_decoder()
    batch, width, max_length = 2, 6, 4
    state = {"history": torch.zeros(batch, 0, dtype=torch.long)}
    out = beam_search(step, state, batch_size=batch, bos_id=BOS, eos_id=EOS, beam_width=width,
                      max_length=max_length, length_penalty=alpha, n_best=width)
    # every hypothesis extends a row the last step was fed, whose recorded history is that
    # hypothesis' own prefix (BOS and all its tokens but the last; EOS again once finished)
    fed = last_state["state"]["history"].view(batch, width, -1)
    assert fed.shape[2] == out.tokens.shape[2]
    for source in range(batch):
        rows = {tuple(history) for history in fed[source].tolist()}
        for k in range(width):
            assert (BOS, *out.tokens[source, k, :-1].tolist()) in rows
        expected = brute_force(step, {"history": torch.zeros(1, 0, dtype=torch.long)},
                               max_length=max_length, alpha=alpha)
        for sequence, score in hypotheses_of(out, source):
            assert score == pytest.approx(expected[sequence][0], abs=1e-5)


def test_state_tensors_of_any_rank_in_tuples_and_lists_are_reordered():
    # an LSTM-like state: a tuple (h, c) plus a list with a 3-D tensor; every leaf must
    # follow its hypothesis, so each carries the same history fingerprint
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(97, 4, generator=generator).log_softmax(dim=-1)

    def step(tokens, state):
        (h, c), [deep] = state
        key = (h * 5 + tokens) % 97
        assert torch.equal(h, c) and torch.equal(h, deep[:, 0, 0])
        new = key.clone()
        return table[key], ((new, new.clone()), [new.view(-1, 1, 1).expand(-1, 2, 3).clone()]), None

    start = torch.tensor([3, 11])
    state = ((start, start.clone()), [start.view(2, 1, 1).expand(2, 2, 3).clone()])
    out = beam_search(step, state, batch_size=2, bos_id=BOS, eos_id=EOS, beam_width=4,
                      max_length=4, n_best=4)
    for source in range(2):
        one = ((start[source:source + 1], start[source:source + 1].clone()),
               [start[source:source + 1].view(1, 1, 1).expand(1, 2, 3).clone()])
        expected = brute_force(step, one, max_length=4)
        for sequence, score in hypotheses_of(out, source):
            assert score == pytest.approx(expected[sequence][0], abs=1e-5)


# --- greedy, beam of one, sampling -------------------------------------------------------


def plain_greedy(step_fn, state, max_length):
    """One source, one token at a time: the arg-max until EOS."""
    tokens, score, token = [], 0.0, BOS
    for _ in range(max_length):
        log_probs, state, _ = step_fn(torch.tensor([token]), state)
        token = int(torch.argmax(log_probs[0]))
        score += float(log_probs[0, token])
        tokens.append(token)
        if token == EOS:
            break
    return tokens, score


def test_greedy_equals_a_plain_loop_per_source():
    decoder = TinyDecoder(vocab=5, seed=2)
    state = decoder.initial_state(4, [4, 2, 3, 1], seed=5)
    out = greedy_decode(decoder, state, batch_size=4, bos_id=BOS, eos_id=EOS, max_length=7)
    assert out.tokens.shape[:2] == (4, 1)
    assert_padded_with_eos(out)
    for source in range(4):
        tokens, score = plain_greedy(decoder, row(state, source), 7)
        assert out.tokens[source, 0, : len(tokens)].tolist() == tokens
        assert int(out.lengths[source, 0]) == len(tokens)
        assert float(out.scores[source, 0]) == pytest.approx(score, abs=1e-5)


def test_beam_width_one_equals_greedy():
    decoder = TinyDecoder(vocab=5, seed=4)
    state = decoder.initial_state(3, [3, 1, 2], seed=2)
    kwargs = dict(batch_size=3, bos_id=BOS, eos_id=EOS, max_length=6)
    greedy = greedy_decode(decoder, state, **kwargs)
    beam = beam_search(decoder, state, beam_width=1, **kwargs)
    assert torch.equal(beam.tokens, greedy.tokens)
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.scores, greedy.scores)
    torch.testing.assert_close(beam.attention, greedy.attention)


@pytest.mark.parametrize("options", [dict(top_k=1), dict(temperature=0.0),
                                     dict(top_k=1, top_p=0.5, temperature=2.0)])
def test_sampling_that_keeps_one_token_equals_greedy(options):
    decoder = TinyDecoder(vocab=5, seed=6)
    state = decoder.initial_state(3, [2, 3, 3], seed=4)
    kwargs = dict(batch_size=3, bos_id=BOS, eos_id=EOS, max_length=6)
    greedy = greedy_decode(decoder, state, **kwargs)
    sampled = sample_decode(decoder, state, seed=0, **kwargs, **options)
    assert torch.equal(sampled.tokens, greedy.tokens)
    assert torch.equal(sampled.lengths, greedy.lengths)
    torch.testing.assert_close(sampled.scores, greedy.scores)


def sequence_probabilities(table, max_length, transform):
    """Exact probability of each sequence a Markov chain produces when each step draws from
    ``transform(probabilities of the next token)``."""
    result = {}

    def visit(prefix, token, p):
        weights = transform(table[token].double().exp())
        for v, q in enumerate(weights.tolist()):
            if q == 0:
                continue
            sequence = prefix + (v,)
            if v == EOS or len(sequence) == max_length:
                result[sequence] = p * q
            else:
                visit(sequence, v, p * q)

    visit((), BOS, 1.0)
    return result


def temperature_top_k(temperature, top_k):
    def transform(probs):
        weights = probs ** (1.0 / temperature)
        if top_k is not None:
            kth = sorted(weights.tolist(), reverse=True)[top_k - 1]
            weights = torch.where(weights >= kth, weights, torch.zeros_like(weights))
        return weights / weights.sum()

    return transform


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.6, None), (1.5, 3)])
def test_sampling_frequencies_match_the_distribution(temperature, top_k):
    stats = pytest.importorskip("scipy.stats")
    step, table = markov_chain(4, seed=1)
    draws = 6000
    out = sample_decode(step, None, batch_size=draws, bos_id=BOS, eos_id=EOS, max_length=3,
                        temperature=temperature, top_k=top_k, seed=1234)
    expected = sequence_probabilities(table, 3, temperature_top_k(temperature, top_k))
    assert sum(expected.values()) == pytest.approx(1.0)
    counts: dict[tuple[int, ...], int] = {}
    for source in range(draws):
        n = int(out.lengths[source, 0])
        sequence = tuple(out.tokens[source, 0, :n].tolist())
        assert sequence in expected, f"drew {sequence}, which has probability 0"
        counts[sequence] = counts.get(sequence, 0) + 1
        # the score is the model's own log-probability of the drawn tokens
    # chi-square over the sequences expected at least 5 times, the rest pooled
    observed, wanted, rest_observed, rest_wanted = [], [], 0, 0.0
    for sequence, p in expected.items():
        if p * draws >= 5:
            observed.append(counts.get(sequence, 0))
            wanted.append(p * draws)
        else:
            rest_observed += counts.get(sequence, 0)
            rest_wanted += p * draws
    if rest_wanted > 0:
        observed.append(rest_observed)
        wanted.append(rest_wanted)
    statistic = sum((o - w) ** 2 / w for o, w in zip(observed, wanted, strict=True))
    assert statistic < stats.chi2.ppf(0.999, len(observed) - 1)


def test_sample_scores_are_the_models_log_probabilities():
    step, table = markov_chain(4, seed=2)
    out = sample_decode(step, None, batch_size=50, bos_id=BOS, eos_id=EOS, max_length=4,
                        temperature=0.7, seed=0)
    for source in range(50):
        n = int(out.lengths[source, 0])
        previous, total = BOS, 0.0
        for token in out.tokens[source, 0, :n].tolist():
            total += float(table[previous, token])
            previous = token
        assert float(out.scores[source, 0]) == pytest.approx(total, abs=1e-5)


def test_sampling_is_reproducible_with_a_seed_or_a_generator():
    step, _ = markov_chain(4, seed=3)
    kwargs = dict(batch_size=200, bos_id=BOS, eos_id=EOS, max_length=5)
    a = sample_decode(step, None, seed=7, **kwargs)
    b = sample_decode(step, None, seed=7, **kwargs)
    c = sample_decode(step, None, generator=torch.Generator().manual_seed(7), **kwargs)
    d = sample_decode(step, None, seed=8, **kwargs)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens, d.tokens)
    before = torch.random.get_rng_state()
    sample_decode(step, None, seed=7, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched


# --- batching, EOS, tiling ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_batched_results_equal_each_source_decoded_alone(method):
    decoder = TinyDecoder(vocab=5, seed=8)
    lengths = [4, 2, 3]
    state = decoder.initial_state(3, lengths, seed=9)

    def decode(state, batch):
        kwargs = dict(batch_size=batch, bos_id=BOS, eos_id=EOS, max_length=6)
        if method == "greedy":
            return greedy_decode(decoder, state, **kwargs)
        return beam_search(decoder, state, beam_width=4, length_penalty=0.6,
                           coverage_penalty=0.3, n_best=3, **kwargs)

    together = decode(state, 3)
    for source in range(3):
        alone = decode(row(state, source), 1)
        steps = alone.tokens.shape[2]
        assert torch.equal(together.tokens[source, :, :steps], alone.tokens[0])
        assert (together.tokens[source, :, steps:] == EOS).all()
        assert torch.equal(together.lengths[source], alone.lengths[0])
        torch.testing.assert_close(together.scores[source], alone.scores[0])
        torch.testing.assert_close(together.attention[source, :, :steps], alone.attention[0])


def test_eos_at_the_first_step():
    table = torch.tensor([[0.012, 0.97, 0.008, 0.01], [0.25] * 4, [0.1, 0.1, 0.4, 0.4],
                          [0.4, 0.2, 0.2, 0.2]]).log()

    def step(tokens, state):
        return table[tokens], state, None

    greedy = greedy_decode(step, None, batch_size=2, bos_id=BOS, eos_id=EOS, max_length=5)
    assert greedy.tokens.tolist() == [[[EOS]], [[EOS]]]
    assert greedy.lengths.tolist() == [[1], [1]]
    torch.testing.assert_close(greedy.scores, torch.full((2, 1), math.log(0.97)))
    narrow = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=1,
                         max_length=5)
    assert narrow.tokens.tolist() == [[[EOS]]]
    # a wider beam keeps growing the others; the finished one keeps its place and score, and
    # the search stops once all three have ended: [EOS], [0, EOS], [3, 0, EOS]
    wide = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=3,
                       max_length=6, n_best=3)
    assert wide.tokens.tolist() == [[[EOS] * 3, [0, EOS, EOS], [3, 0, EOS]]]
    assert wide.lengths.tolist() == [[1, 2, 3]]
    torch.testing.assert_close(wide.scores, torch.tensor(
        [[math.log(0.97), math.log(0.012 * 0.97), math.log(0.01 * 0.4 * 0.97)]]))


def test_hypotheses_cut_at_max_length_end_there():
    # EOS is never likely: every hypothesis runs to max_length
    table = torch.tensor([[0.3, 0.01, 0.69], [0.3, 0.4, 0.3], [0.6, 0.01, 0.39]]).log()

    def step(tokens, state):
        return table[tokens], state, None

    out = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=2,
                      max_length=3, n_best=2)
    assert out.lengths.tolist() == [[3, 3]]
    assert out.tokens[0, 0].tolist() == [2, 0, 2]
    greedy = greedy_decode(step, None, batch_size=1, bos_id=BOS, eos_id=EOS, max_length=3)
    assert greedy.tokens.tolist() == [[[2, 0, 2]]] and greedy.lengths.tolist() == [[3]]


def test_tile_batch_repeats_each_row_next_to_its_copies():
    memory = torch.arange(6.0).view(3, 2)
    state = {"memory": memory, "pair": (memory[:, 0], None), "keep": 5}
    tiled = tile_batch(state, 2)
    assert tiled["memory"].tolist() == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert tiled["pair"][0].tolist() == [0, 0, 2, 2, 4, 4]
    assert tiled["pair"][1] is None and tiled["keep"] == 5


def test_a_closed_over_memory_tiled_with_tile_batch():
    # the memory lives outside the state: the step function reads it for rows b * K + k
    decoder = TinyDecoder(vocab=4, seed=11)
    full = decoder.initial_state(2, [3, 2], seed=3)
    width = 3
    tiled = tile_batch({"memory": full["memory"], "mask": full["mask"]}, width)

    def step(tokens, h):
        log_probs, new_state, attention = decoder(tokens, {"h": h, **tiled})
        return log_probs, new_state["h"], attention

    out = beam_search(step, full["h"], batch_size=2, bos_id=BOS, eos_id=EOS, beam_width=width,
                      max_length=4, n_best=width)
    reference = beam_search(decoder, full, batch_size=2, bos_id=BOS, eos_id=EOS,
                            beam_width=width, max_length=4, n_best=width)
    assert torch.equal(out.tokens, reference.tokens)
    torch.testing.assert_close(out.scores, reference.scores)


def test_ties_go_to_the_lower_beam_then_the_lower_token():
    # every continuation equally likely: the beam keeps the lowest token ids
    uniform = torch.zeros(5, 5).log_softmax(dim=-1)

    def step(tokens, state):
        return uniform[tokens], state, None

    out = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=4, beam_width=3,
                      max_length=2, n_best=3)
    assert out.tokens.tolist() == [[[0, 0], [0, 1], [0, 2]]]
    greedy = greedy_decode(step, None, batch_size=1, bos_id=BOS, eos_id=4, max_length=2)
    beam = beam_search(step, None, batch_size=1, bos_id=BOS, eos_id=4, beam_width=1,
                       max_length=2)
    assert torch.equal(beam.tokens, greedy.tokens)


@pytest.mark.parametrize("ties", [False, True])
def test_selection_is_a_stable_sort_of_all_candidates(ties):
    # beam search's pick of the best `width` candidates (topk when no tie straddles the
    # cut, a full sort otherwise) against Python's sorted(): score descending, index ascending
    generator = torch.Generator().manual_seed(int(ties))
    for width in (1, 3, 7):
        scores = torch.randn(4, 3, 5, generator=generator)
        if ties:
            scores = (scores * 2).round() / 2  # few distinct values
            scores[0, 1:] = -math.inf
        values, flat = decoding._select(scores, width)
        for b in range(4):
            row = scores[b].flatten().tolist()
            expected = sorted(range(len(row)), key=lambda i: (-row[i], i))[:width]
            assert flat[b].tolist() == expected
            assert values[b].tolist() == [row[i] for i in expected]


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64),
                                             (torch.bfloat16, torch.float32)])
def test_scores_keep_the_steps_precision_at_least_float32(dtype, expected):
    _, table = markov_chain(4, seed=5)

    def step(tokens, state):
        return table.to(dtype)[tokens], state, None

    kwargs = dict(batch_size=2, bos_id=BOS, eos_id=EOS, max_length=3)
    beam = beam_search(step, None, beam_width=40, n_best=40, length_penalty=0.6, **kwargs)
    greedy = greedy_decode(step, None, **kwargs)
    assert beam.scores.dtype == expected and greedy.scores.dtype == expected
    if dtype == torch.float64:
        found = brute_force(step, None, max_length=3, alpha=0.6)
        for sequence, score in hypotheses_of(beam, 0):
            assert score == pytest.approx(found[sequence][0], abs=1e-12)
