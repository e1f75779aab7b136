"""Bad arguments and badly shaped step functions get one-line errors naming the problem."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import ShapeError
from rnnkit.models.decoding import beam_search, greedy_decode, sample_decode

BOS, EOS = 0, 1
TABLE = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4).log()


def chain(tokens, state):
    return TABLE[tokens], state, None


def raises_one_line(error, match, call, *args, **kwargs):
    with pytest.raises(error, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


DECODERS = {
    "greedy": lambda step, state, **kw: greedy_decode(step, state, **kw),
    "sample": lambda step, state, **kw: sample_decode(step, state, seed=0, **kw),
    "beam": lambda step, state, **kw: beam_search(step, state, beam_width=2, **kw),
}


@pytest.mark.parametrize("method", DECODERS)
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_length_below_one(method, bad):
    raises_one_line(ValueError, r"max_length must be an int >= 1, got", DECODERS[method],
                    chain, None, batch_size=1, bos_id=BOS, eos_id=EOS, max_length=bad)


@pytest.mark.parametrize("bad", [0, -2, 1.0])
def test_beam_width_below_one(bad):
    raises_one_line(ValueError, r"beam_width must be an int >= 1, got", beam_search, chain,
                    None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=bad, max_length=3)


def test_n_best_above_beam_width():
    raises_one_line(ValueError, r"n_best=4 is more than beam_width=3", beam_search, chain,
                    None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=3, max_length=3,
                    n_best=4)


@pytest.mark.parametrize("name, value", [("length_penalty", float("nan")),
                                         ("coverage_penalty", float("inf")),
                                         ("length_penalty", "0.6")])
def test_penalties_must_be_finite_numbers(name, value):
    raises_one_line(ValueError, rf"{name} must be a finite number", beam_search, chain, None,
                    batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=2, max_length=3,
                    **{name: value})


@pytest.mark.parametrize("method", DECODERS)
def test_eos_outside_the_vocabulary(method):
    raises_one_line(ValueError, r"eos_id=4 is outside the decoder's vocabulary of 4 tokens",
                    DECODERS[method], chain, None, batch_size=2, bos_id=BOS, eos_id=4,
                    max_length=3)


@pytest.mark.parametrize("method", DECODERS)
def test_bos_outside_the_vocabulary(method):
    # a step function that reads no embedding: caught from the width of its log_probs
    def ignores_tokens(tokens, state):
        return TABLE[torch.zeros_like(tokens)], state, None

    raises_one_line(ValueError, r"bos_id=9 is outside the decoder's vocabulary of 4 tokens",
                    DECODERS[method], ignores_tokens, None, batch_size=2, bos_id=9,
                    eos_id=EOS, max_length=3)
    # one that looks the token up fails inside: the error says which id it read
    raises_one_line(ValueError, r"bos_id=9.*is bos_id inside the decoder's vocabulary",
                    DECODERS[method], chain, None, batch_size=2, bos_id=9, eos_id=EOS,
                    max_length=3)


@pytest.mark.parametrize("method", DECODERS)
@pytest.mark.parametrize("bad_id", [-1, 1.5, None])
def test_negative_or_non_integer_ids(method, bad_id):
    raises_one_line(ValueError, r"bos_id must be an int >= 0", DECODERS[method], chain, None,
                    batch_size=1, bos_id=bad_id, eos_id=EOS, max_length=3)


@pytest.mark.parametrize("method, rows", [("greedy", 3), ("sample", 3), ("beam", 6)])
def test_log_probs_of_the_wrong_shape(method, rows):
    def three_dimensional(tokens, state):
        return TABLE[tokens].unsqueeze(2), state, None

    error = raises_one_line(ShapeError, rf"log_probs of shape \({rows}, 4, 1\) at step 0; "
                            rf"expected \({rows}, V\)", DECODERS[method], three_dimensional,
                            None, batch_size=3, bos_id=BOS, eos_id=EOS, max_length=3)
    assert isinstance(error, ValueError)

    def one_row_short(tokens, state):
        return TABLE[tokens][1:], state, None

    raises_one_line(ShapeError, rf"log_probs of shape \({rows - 1}, 4\) at step 0; expected "
                    rf"\({rows}, V\)", DECODERS[method], one_row_short, None, batch_size=3,
                    bos_id=BOS, eos_id=EOS, max_length=3)

    def vocabulary_changes(tokens, state):
        step = state["step"]
        log_probs = TABLE[tokens] if int(step[0]) == 0 else TABLE[tokens][:, :3]
        return log_probs, {"step": step + 1}, None

    raises_one_line(ShapeError, rf"log_probs of shape \({rows}, 3\) at step 1; expected "
                    rf"\({rows}, 4\)", DECODERS[method], vocabulary_changes,
                    {"step": torch.zeros(3)}, batch_size=3, bos_id=BOS, eos_id=2, max_length=3)


def test_step_function_returning_the_wrong_things():
    raises_one_line(TypeError, r"step_fn must return \(log_probs \(N, V\), state, attention",
                    greedy_decode, lambda tokens, state: (TABLE[tokens], state), None,
                    batch_size=1, bos_id=BOS, eos_id=EOS, max_length=2)
    raises_one_line(TypeError, r"log_probs of type list", greedy_decode,
                    lambda tokens, state: ([0.0], state, None), None, batch_size=1,
                    bos_id=BOS, eos_id=EOS, max_length=2)
    raises_one_line(TypeError, r"dtype torch.int64", greedy_decode,
                    lambda tokens, state: (torch.zeros(1, 4, dtype=torch.long), state, None),
                    None, batch_size=1, bos_id=BOS, eos_id=EOS, max_length=2)
    raises_one_line(ValueError, r"NaN log-probabilities at step 0", beam_search,
                    lambda tokens, state: (torch.full((2, 4), float("nan")), state, None),
                    None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=2, max_length=2)
    raises_one_line(TypeError, r"step_fn must be callable", beam_search, "not a function",
                    None, batch_size=1, bos_id=BOS, eos_id=EOS, beam_width=2, max_length=2)


def test_attention_of_the_wrong_shape():
    def flat_attention(tokens, state):
        return TABLE[tokens], state, torch.ones(tokens.shape[0] * 5)

    raises_one_line(ShapeError, r"attention of shape \(10,\) at step 0; expected \(2, S\)",
                    beam_search, flat_attention, None, batch_size=1, bos_id=BOS, eos_id=EOS,
                    beam_width=2, max_length=2)

    def source_shrinks(tokens, state):
        width = 5 if int(state[0]) == 0 else 4
        return TABLE[tokens], state + 1, torch.full((tokens.shape[0], width), 0.2)

    raises_one_line(ShapeError, r"attention of shape \(4, 4\) at step 1; expected \(4, 5\)",
                    beam_search, source_shrinks, torch.zeros(2), batch_size=2, bos_id=BOS,
                    eos_id=EOS, beam_width=2, max_length=3)


def test_coverage_penalty_needs_attention():
    raises_one_line(ValueError, r"coverage_penalty=0.4 needs a step function that returns "
                    r"attention", beam_search, chain, None, batch_size=1, bos_id=BOS,
                    eos_id=EOS, beam_width=2, max_length=3, coverage_penalty=0.4)


def test_state_rows_must_match():
    state = {"h": torch.zeros(3, 5), "cell": (torch.zeros(2, 5),)}
    raises_one_line(ShapeError, r"the initial state's tensor state\['h'\] has shape \(3, 5\); "
                    r"every state tensor needs dim 0 = N = 2 rows", beam_search, chain, state,
                    batch_size=2, bos_id=BOS, eos_id=EOS, beam_width=2, max_length=3)

    def drops_a_row(tokens, state):
        return TABLE[tokens], (state[0][:-1],), None

    raises_one_line(ShapeError, r"step_fn returned a state whose tensor state\[0\] has shape "
                    r"\(3, 5\); every state tensor needs dim 0 = N = 4 rows", beam_search,
                    drops_a_row, (torch.zeros(2, 5),), batch_size=2, bos_id=BOS, eos_id=EOS,
                    beam_width=2, max_length=3)


def test_sampling_arguments():
    kwargs = dict(batch_size=1, bos_id=BOS, eos_id=EOS, max_length=3)
    raises_one_line(ValueError, r"temperature must be a finite number >= 0", sample_decode,
                    chain, None, temperature=-1.0, **kwargs)
    raises_one_line(ValueError, r"top_k must be None or an int >= 1", sample_decode, chain,
                    None, top_k=0, **kwargs)
    raises_one_line(ValueError, r"top_p must be None or a probability", sample_decode, chain,
                    None, top_p=1.5, **kwargs)
    raises_one_line(ValueError, r"pass generator or seed, not both", sample_decode, chain, None,
                    generator=torch.Generator(), seed=1, **kwargs)
    raises_one_line(TypeError, r"generator must be a torch.Generator", sample_decode, chain,
                    None, generator=3, **kwargs)


@pytest.mark.parametrize("method", DECODERS)
def test_logits_instead_of_log_probabilities(method):
    def logits(tokens, state):
        return TABLE[tokens] + 2.0, state, None

    raises_one_line(ValueError, r"step_fn must return log-probabilities \(log_softmax of the "
                    r"logits\): row 0 at step 0 has logsumexp 2, not 0", DECODERS[method],
                    logits, None, batch_size=2, bos_id=BOS, eos_id=EOS, max_length=3)


def test_gather_tree_shapes_must_agree():
    from rnnkit.models.decoding import gather_tree

    raises_one_line(ShapeError, r"values \(L, B, K, \.\.\.\) and parents \(L, B, K\) must agree, "
                    r"got \(3, 2, 4\) and \(3, 2, 5\)", gather_tree, torch.zeros(3, 2, 4),
                    torch.zeros(3, 2, 5, dtype=torch.long))
