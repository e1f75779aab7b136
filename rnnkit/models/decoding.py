"""Decoding a sequence from any step function: greedy, sampling and batched beam search.

Every function here drives a *step function*

    ``step_fn(tokens (N,), state) -> (log_probs (N, V), state, attention (N, S) | None)``

that reads the previous token of each of ``N`` rows and returns the log-probabilities of the
next one, the new state and (for an attentional decoder) its attention over the ``S`` source
positions. ``state`` is a pytree (tensors inside dicts, lists, tuples or named tuples; other
leaves pass through unchanged) whose tensors have one row per decoded row on dim 0. The step
function knows nothing about the search: the seq2seq model, an image captioner or a language
model plug in the same way. Tensors the step function closes over rather than carries in its
state (an encoder's memory) must have ``N`` rows too: :func:`tile_batch` repeats them as
:func:`beam_search` lays out its rows (all beams of source 0, then of source 1, ...).

Symbols: ``B`` sources (``batch_size``), ``K`` beam width, ``N`` rows handed to ``step_fn``
(``B`` for greedy and sampling, ``B * K`` for beam search), ``V`` vocabulary size, ``S``
source positions, ``L`` decoded steps (at most ``max_length``).

Scores follow GNMT (Wu et al. 2016, section 7) as TensorFlow 1's
``tf.contrib.seq2seq.BeamSearchDecoder`` computes them:

    ``score(Y) = log P(Y) / lp(Y) + [Y ended with EOS] * beta * cp(Y)``
    ``lp(Y) = ((5 + n) / 6) ** alpha``, ``n`` = the tokens of ``Y`` before its EOS
    ``cp(Y) = sum_i log(min(sum_t a_ti, 1))`` over source positions ``i`` with ``sum_t a_ti > 0``

where ``a_ti`` is the attention of the step that produced token ``t``. A hypothesis that
emits EOS stops growing, keeps that score and stays in the beam, competing with the live
ones; hypotheses still alive after ``max_length`` steps end there (``n = max_length``, no
coverage term).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnnkit.errors import ShapeError
from rnnkit.models.language_model import next_token_distribution

__all__ = [
    "BeamSearchDecoder",
    "Hypotheses",
    "StepFunction",
    "beam_search",
    "coverage_penalty",
    "gather_tree",
    "greedy_decode",
    "length_penalty",
    "sample_decode",
    "tile_batch",
]

StepFunction = Callable[[Tensor, Any], tuple[Tensor, Any, "Tensor | None"]]


class Hypotheses(NamedTuple):
    """Decoded sequences, best first.

    tokens: ``(B, n_best, L)`` int64, the generated tokens (BOS not included), ``eos_id``
        after each hypothesis' end.
    lengths: ``(B, n_best)`` int64, tokens of each hypothesis counting the EOS that ended it
        (``L`` for one cut at ``max_length``; 0 for an impossible one, score ``-inf``, which
        only shows up when ``n_best`` exceeds the number of distinct sequences).
    scores: ``(B, n_best)``, sorted best first: the sum of the step's log-probabilities,
        with the length and coverage penalties for beam search.
    attention: ``(B, n_best, L, S)`` attention of each step, zero after a hypothesis' end;
        None when the step function returns no attention.
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    attention: Tensor | None


# --- small helpers -----------------------------------------------------------------------


def _check_int(value: Any, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_float(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _map_state(fn: Callable[[Tensor, str], Tensor], state: Any, path: str = "state") -> Any:
    """``state`` with ``fn(tensor, path)`` applied to each tensor leaf."""
    if isinstance(state, Tensor):
        return fn(state, path)
    if isinstance(state, dict):
        items = {key: _map_state(fn, value, f"{path}[{key!r}]") for key, value in state.items()}
        return items if type(state) is dict else type(state)(items)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return type(state)(*(_map_state(fn, value, f"{path}.{field}")
                             for field, value in zip(state._fields, state, strict=True)))
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(fn, value, f"{path}[{i}]") for i, value in enumerate(state))
    return state


def _leaves(state: Any) -> list[Tensor]:
    found: list[Tensor] = []
    _map_state(lambda tensor, _path: found.append(tensor) or tensor, state)
    return found


def _check_rows(state: Any, rows: int, owner: str, where: str) -> None:
    def check(tensor: Tensor, path: str) -> Tensor:
        if tensor.dim() == 0 or tensor.shape[0] != rows:
            raise ShapeError(f"{owner}: {where} tensor {path} has shape {tuple(tensor.shape)}; "
                             f"every state tensor needs dim 0 = N = {rows} rows")
        return tensor

    _map_state(check, state)


def tile_batch(state: Any, multiplier: int) -> Any:
    """Repeat every tensor of ``state`` ``multiplier`` times along dim 0, each row next to its
    copies: ``(B, ...) -> (B * multiplier, ...)`` with rows ``b0, b0, ..., b1, b1, ...``, as
    TensorFlow 1's ``tf.contrib.seq2seq.tile_batch``. That is the row order of
    :func:`beam_search` (row ``b * K + k`` is beam ``k`` of source ``b``): use it for what the
    step function closes over, such as an encoder's memory and mask.

    Example:
        >>> tile_batch({"h": torch.tensor([[1.0], [2.0]])}, 2)["h"].flatten().tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    _check_int(multiplier, "multiplier", "tile_batch", 1)
    return _map_state(lambda tensor, _path: tensor.repeat_interleave(multiplier, dim=0), state)


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT's ``((5 + lengths) / 6) ** alpha`` (1 where ``alpha == 0``) in float64, as
    TensorFlow 1's ``_length_penalty``; scores are ``log P / length_penalty``."""
    if alpha == 0:
        return torch.ones_like(lengths, dtype=torch.float64)
    return ((5.0 + lengths.to(torch.float64)) / 6.0) ** alpha


def coverage_penalty(accumulated_attention: Tensor) -> Tensor:
    """GNMT's ``sum_i log(min(sum_t a_ti, 1))`` over the last dimension of the attention
    summed over steps ``(..., S)``; positions never attended (zero, source padding) count as
    covered, as TensorFlow 1's ``_get_scores`` masks them."""
    covered = torch.where(accumulated_attention == 0, torch.ones_like(accumulated_attention),
                          accumulated_attention)
    return covered.clamp(max=1.0).log().sum(dim=-1)


class _StepChecker:
    """Calls ``step_fn`` and checks what comes back, naming the shape got and expected."""

    def __init__(self, step_fn: StepFunction, rows: int, bos_id: int, eos_id: int,
                 owner: str, names: tuple[str, str] = ("bos_id", "eos_id")) -> None:
        if not callable(step_fn):
            raise TypeError(f"{owner}: step_fn must be callable (tokens, state) -> "
                            f"(log_probs, state, attention), got {type(step_fn).__name__}")
        self.step_fn, self.rows, self.owner = step_fn, rows, owner
        self.bos_id, self.eos_id = bos_id, eos_id
        self.names = names
        self.vocab: int | None = None
        self.source: int | None = None

    def __call__(self, tokens: Tensor, state: Any, step: int) -> tuple[Tensor, Any, Tensor | None]:
        owner, rows = self.owner, self.rows
        try:
            out = self.step_fn(tokens, state)
        except IndexError as error:
            if step == 0:
                bos = self.names[0]
                raise ValueError(f"{owner}: step_fn failed on its first call, which reads "
                                 f"{bos}={self.bos_id}: {error} (is {bos} inside the decoder's "
                                 f"vocabulary?)") from error
            raise
        if not isinstance(out, tuple) or len(out) != 3:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise TypeError(f"{owner}: step_fn must return (log_probs (N, V), state, attention "
                            f"(N, S) or None), got {got}")
        log_probs, state, attention = out
        expected = f"({rows}, {self.vocab if self.vocab is not None else 'V'})"
        if not isinstance(log_probs, Tensor):
            raise TypeError(f"{owner}: step_fn returned log_probs of type "
                            f"{type(log_probs).__name__} at step {step}; expected a tensor "
                            f"{expected}")
        if (log_probs.dim() != 2 or log_probs.shape[0] != rows or log_probs.shape[1] == 0
                or (self.vocab is not None and log_probs.shape[1] != self.vocab)):
            raise ShapeError(f"{owner}: step_fn returned log_probs of shape "
                             f"{tuple(log_probs.shape)} at step {step}; expected {expected} "
                             f"(N = {rows} rows, V = the vocabulary)")
        if not log_probs.is_floating_point():
            raise TypeError(f"{owner}: step_fn returned log_probs of dtype {log_probs.dtype}; "
                            f"expected floating-point log-probabilities")
        if self.vocab is None:
            self.vocab = int(log_probs.shape[1])
            for name, token in zip(self.names, (self.bos_id, self.eos_id), strict=True):
                if token >= self.vocab:
                    raise ValueError(f"{owner}: {name}={token} is outside the decoder's "
                                     f"vocabulary of {self.vocab} tokens (log_probs width)")
        if torch.isnan(log_probs).any():
            raise ValueError(f"{owner}: step_fn returned NaN log-probabilities at step {step}")
        log_probs = log_probs.detach().to(torch.promote_types(log_probs.dtype, torch.float32))
        # logits instead of log-probabilities would rank and score silently wrong
        total = log_probs.logsumexp(dim=1)  # (N,)
        tolerance = 5e-2 if out[0].element_size() < 4 else 1e-2
        off = (total.abs() > tolerance) | ~torch.isfinite(total)
        if off.any():
            row = int(off.nonzero()[0, 0])
            raise ValueError(f"{owner}: step_fn must return log-probabilities (log_softmax of "
                             f"the logits): row {row} at step {step} has logsumexp "
                             f"{float(total[row]):.4g}, not 0")
        if attention is not None:
            expected = f"({rows}, {self.source if self.source is not None else 'S'})"
            if not isinstance(attention, Tensor):
                raise TypeError(f"{owner}: step_fn returned attention of type "
                                f"{type(attention).__name__}; expected None or a tensor {expected}")
            if (attention.dim() != 2 or attention.shape[0] != rows
                    or (self.source is not None and attention.shape[1] != self.source)):
                raise ShapeError(f"{owner}: step_fn returned attention of shape "
                                 f"{tuple(attention.shape)} at step {step}; expected {expected} "
                                 f"(N = {rows} rows, S = source positions)")
            self.source = int(attention.shape[1])
        elif self.source is not None:
            raise ValueError(f"{owner}: step_fn returned attention before step {step} and None "
                             f"at step {step}")
        return log_probs, state, attention


def _check_common(owner: str, batch_size: Any, bos_id: Any, eos_id: Any,
                  max_length: Any) -> None:
    _check_int(batch_size, "batch_size", owner, 1)
    _check_int(bos_id, "bos_id", owner, 0)
    _check_int(eos_id, "eos_id", owner, 0)
    _check_int(max_length, "max_length", owner, 1)


def _device_of(state: Any, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    leaves = _leaves(state)
    return leaves[0].device if leaves else torch.device("cpu")


# --- greedy and sampling -----------------------------------------------------------------


def _token_by_token(step_fn: StepFunction, state: Any, *, batch_size: int, bos_id: int,
                    eos_id: int, max_length: int, choose: Callable[[Tensor], Tensor],
                    device: torch.device | str | None, owner: str) -> Hypotheses:
    """One token per row and step, picked by ``choose(log_probs (B, V)) -> (B,)``."""
    _check_common(owner, batch_size, bos_id, eos_id, max_length)
    _check_rows(state, batch_size, owner, "the initial state's")
    device = _device_of(state, device)
    call = _StepChecker(step_fn, batch_size, bos_id, eos_id, owner)
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)  # (B,)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (B,)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
    scores: Tensor | None = None
    history: list[Tensor] = []
    attentions: list[Tensor] = []
    for step in range(max_length):
        if step > 0 and bool(finished.all()):
            break
        log_probs, state, attention = call(tokens, state, step)  # (B, V), ..., (B, S)
        picked = choose(log_probs)  # (B,)
        picked = torch.where(finished, torch.full_like(picked, eos_id), picked)
        gained = log_probs.gather(1, picked.unsqueeze(1)).squeeze(1)  # (B,)
        gained = torch.where(finished, torch.zeros_like(gained), gained)
        scores = gained if scores is None else scores + gained
        if attention is not None:
            attentions.append(attention.detach() * (~finished).unsqueeze(1).to(attention.dtype))
        lengths = lengths + (~finished).long()
        finished = finished | (picked == eos_id)
        history.append(picked)
        tokens = picked
    assert scores is not None  # max_length >= 1
    return Hypotheses(
        tokens=torch.stack(history, dim=1).unsqueeze(1),  # (B, 1, L)
        lengths=lengths.unsqueeze(1),  # (B, 1)
        scores=scores.unsqueeze(1),  # (B, 1)
        attention=torch.stack(attentions, dim=1).unsqueeze(1) if attentions else None,
    )


@torch.no_grad()
def greedy_decode(step_fn: StepFunction, state: Any, *, batch_size: int, bos_id: int,
                  eos_id: int, max_length: int,
                  device: torch.device | str | None = None) -> Hypotheses:
    """The most likely next token at every step (the first on ties) until EOS or
    ``max_length`` tokens.

    Args:
        step_fn: ``(tokens (B,), state) -> (log_probs (B, V), state, attention (B, S) | None)``.
        state: the initial state, a pytree of tensors with ``B`` rows on dim 0.
        batch_size: ``B``.
        bos_id: the token fed at the first step. eos_id: the token that ends a sequence.
        max_length: the most tokens generated per sequence (EOS included).
        device: where the tokens live (default: the state's device, else the CPU).

    Returns:
        :class:`Hypotheses` with ``n_best = 1``; scores are the summed log-probabilities.

    Example:
        >>> table = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]).log()
        >>> step = lambda tokens, state: (table[tokens], state, None)   # a Markov chain
        >>> out = greedy_decode(step, None, batch_size=1, bos_id=0, eos_id=1, max_length=5)
        >>> out.tokens.tolist(), out.lengths.tolist()
        ([[[2, 0, 2, 0, 2]]], [[5]])
    """
    return _token_by_token(step_fn, state, batch_size=batch_size, bos_id=bos_id,
                           eos_id=eos_id, max_length=max_length,
                           choose=lambda log_probs: log_probs.argmax(dim=-1), device=device,
                           owner="greedy_decode")


@torch.no_grad()
def sample_decode(step_fn: StepFunction, state: Any, *, batch_size: int, bos_id: int,
                  eos_id: int, max_length: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None, seed: int | None = None,
                  device: torch.device | str | None = None) -> Hypotheses:
    """Draw each next token from the step's distribution until EOS or ``max_length``.

    ``temperature``, ``top_k`` and ``top_p`` reshape the distribution as
    :func:`rnnkit.models.next_token_distribution` (Hugging Face's order: temperature, top-k,
    nucleus); ``temperature=0`` or ``top_k=1`` is greedy decoding. Draws come from
    ``generator`` (a ``torch.Generator`` on the tokens' device), or from a private generator
    seeded with ``seed``, or from torch's global generator when both are None: the same seed
    gives the same sequences. Scores are the model's own log-probabilities of the drawn
    tokens (before temperature and truncation), summed.

    Other arguments and the result: as :func:`greedy_decode`.

    Example:
        >>> table = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]).log()
        >>> step = lambda tokens, state: (table[tokens], state, None)
        >>> a = sample_decode(step, None, batch_size=4, bos_id=0, eos_id=1, max_length=6, seed=3)
        >>> b = sample_decode(step, None, batch_size=4, bos_id=0, eos_id=1, max_length=6, seed=3)
        >>> torch.equal(a.tokens, b.tokens)
        True
    """
    owner = "sample_decode"
    next_token_distribution(torch.zeros(1), temperature, top_k, top_p)  # argument checks
    if generator is not None and seed is not None:
        raise ValueError(f"{owner}: pass generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{owner}: generator must be a torch.Generator, got "
                        f"{type(generator).__name__}")
    if seed is not None:
        _check_int(seed, "seed", owner, 0)
        generator = torch.Generator(device=_device_of(state, device)).manual_seed(seed)
    greedy = temperature == 0 or top_k == 1

    def choose(log_probs: Tensor) -> Tensor:
        if greedy:
            return log_probs.argmax(dim=-1)
        probs = next_token_distribution(log_probs, temperature, top_k, top_p)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _token_by_token(step_fn, state, batch_size=batch_size, bos_id=bos_id,
                           eos_id=eos_id, max_length=max_length, choose=choose, device=device,
                           owner=owner)


# --- beam search -------------------------------------------------------------------------


def _select(scores: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The ``width`` best of ``scores (B, K, V)`` per source: ``(values (B, width), flat
    indices k * V + v (B, width))``, best first, ties to the lower flat index (the lower
    beam, then the lower token), as a stable sort of all ``K * V`` candidates."""
    batch = scores.shape[0]
    flat_scores = scores.reshape(batch, -1)  # (B, K * V)
    if flat_scores.shape[1] > width:
        # topk is much cheaper than sorting everything, but its order among equal scores is
        # unspecified: use it when no tie straddles the cut, then order the survivors
        values, flat = flat_scores.topk(width + 1, dim=1)  # (B, width + 1)
        if not bool((values[:, width - 1] == values[:, width]).any()):
            values, flat = values[:, :width], flat[:, :width]
            by_index = flat.argsort(dim=1)
            values, flat = values.gather(1, by_index), flat.gather(1, by_index)
            by_score = values.argsort(dim=1, descending=True, stable=True)
            return values.gather(1, by_score), flat.gather(1, by_score)
    values, flat = torch.sort(flat_scores, dim=1, descending=True, stable=True)
    return values[:, :width], flat[:, :width]


class _Beam(NamedTuple):
    """What beam search knows of each hypothesis between steps (TF1's
    ``BeamSearchDecoderState`` less the cell state), all ``(B, K)`` but ``accumulated``."""

    log_prob: Tensor  # log P(hypothesis), -inf for an impossible one
    finished: Tensor  # bool: ended with EOS (or impossible)
    lengths: Tensor  # int64: tokens, EOS included
    content: Tensor  # int64: tokens before EOS, the n of the length penalty
    accumulated: Tensor | None  # (B, K, S): attention summed over the hypothesis' steps


class _Chosen(NamedTuple):
    scores: Tensor  # (B, K) best first
    parent: Tensor  # (B, K) the beam each survivor extends
    token: Tensor  # (B, K) the token it appends
    attention: Tensor | None  # (B, K, S) the attention of that step (zero if finished)
    beam: _Beam


def _mask_probs(log_probs: Tensor, eos_id: int, finished: Tensor) -> Tensor:
    """``log_probs (B, K, V)`` with each finished beam's row replaced by EOS at log-prob 0 and
    ``-inf`` elsewhere: a finished hypothesis has one continuation, which costs nothing
    (TF1's ``_mask_probs``, which writes the dtype's lowest finite value instead of
    ``-inf``)."""
    vocab = log_probs.shape[-1]
    eos_only = torch.full((vocab,), -math.inf, dtype=log_probs.dtype, device=log_probs.device)
    eos_only[eos_id] = 0.0
    return torch.where(finished.unsqueeze(-1), eos_only, log_probs)


def _beam_step(beam: _Beam, step_log_probs: Tensor, attention: Tensor | None, *,
               eos_id: int, alpha: float, beta: float) -> _Chosen:
    """One step of beam search (TF1's ``_beam_search_step``) on ``step_log_probs (B, K, V)``
    and the step's ``attention (B, K, S)``."""
    B, K, V = step_log_probs.shape
    dtype, device = beam.log_prob.dtype, beam.log_prob.device
    finished = beam.finished
    is_eos = torch.arange(V, device=device) == eos_id  # (V,)
    step_log_probs = _mask_probs(step_log_probs.to(dtype), eos_id, finished)
    cand_log_prob = beam.log_prob.unsqueeze(2) + step_log_probs  # (B, K, V)
    alive = ~finished.unsqueeze(2)  # (B, K, 1)
    cand_content = beam.content.unsqueeze(2) + (alive & ~is_eos).long()  # (B, K, V)
    cand_finished = finished.unsqueeze(2) | is_eos  # (B, K, V)
    cand_scores = cand_log_prob / length_penalty(cand_content, alpha).to(dtype)  # (B, K, V)
    step_attention = accumulated = None
    if attention is not None:
        step_attention = attention.to(dtype) * (~finished).unsqueeze(2)  # (B, K, S)
        accumulated = (step_attention if beam.accumulated is None
                       else beam.accumulated + step_attention)
        if beta != 0:
            coverage = beta * coverage_penalty(accumulated)  # (B, K)
            # only hypotheses that end here or before carry it (TF1's _get_scores)
            cand_scores = cand_scores + torch.where(cand_finished, coverage.unsqueeze(2), 0.0)
    scores, flat = _select(cand_scores, K)  # (B, K), (B, K)
    parent, token = flat // V, flat % V  # (B, K)
    log_prob = cand_log_prob.view(B, -1).gather(1, flat)
    was_finished = finished.gather(1, parent)
    new_finished = cand_finished.expand(B, K, V).reshape(B, -1).gather(1, flat)
    new_finished = new_finished | torch.isneginf(log_prob)  # impossible ones never grow
    picked_attention = None
    if step_attention is not None:
        assert accumulated is not None
        by_parent = parent.unsqueeze(2).expand(-1, -1, step_attention.shape[2])  # (B, K, S)
        accumulated = accumulated.gather(1, by_parent)
        picked_attention = step_attention.gather(1, by_parent)
    return _Chosen(scores=scores, parent=parent, token=token, attention=picked_attention,
                   beam=_Beam(log_prob=log_prob, finished=new_finished,
                              lengths=beam.lengths.gather(1, parent) + (~was_finished).long(),
                              content=cand_content.view(B, -1).gather(1, flat),
                              accumulated=accumulated))


def _beam_search_tiled(step_fn: StepFunction, state: Any, *, batch_size: int, bos_id: int,
                       eos_id: int, beam_width: int, max_length: int, alpha: float,
                       beta: float, n_best: int, device: torch.device, owner: str,
                       names: tuple[str, str, str] = ("bos_id", "eos_id", "coverage_penalty"),
                       ) -> Hypotheses:
    """Beam search over a state already laid out as ``B * K`` rows (row ``b * K + k``);
    ``names`` are the caller's names for BOS, EOS and the coverage penalty, for errors."""
    B, K = batch_size, beam_width
    N = B * K
    call = _StepChecker(step_fn, N, bos_id, eos_id, owner, names[:2])
    tokens = torch.full((N,), bos_id, dtype=torch.long, device=device)  # (N,)
    dtype = torch.float32
    # beams 1.. start impossible, so the first step expands one copy of each source (as TF1)
    log_prob = torch.full((B, K), -math.inf, dtype=dtype, device=device)  # (B, K)
    log_prob[:, 0] = 0.0
    finished = torch.ones(B, K, dtype=torch.bool, device=device)  # (B, K)
    finished[:, 0] = False
    zeros = torch.zeros(B, K, dtype=torch.long, device=device)
    beam = _Beam(log_prob=log_prob, finished=finished, lengths=zeros, content=zeros,
                 accumulated=None)
    scores = log_prob.clone()  # (B, K)
    # per step: each survivor's token, the beam it extends and its attention; the sequences
    # are read back from the last step (TF1's gather_tree) rather than copied every step
    step_tokens: list[Tensor] = []  # (B, K) each
    parents: list[Tensor] = []  # (B, K) each
    step_attentions: list[Tensor] = []  # (B, K, S) each
    rows_base = (torch.arange(B, device=device) * K).view(B, 1)  # (B, 1)
    for step in range(max_length):
        if step > 0 and bool(beam.finished.all()):
            break
        log_probs, state, attention = call(tokens, state, step)  # (N, V), ..., (N, S)
        if step == 0:  # scores in the step's precision, at least float32
            beam = beam._replace(log_prob=beam.log_prob.to(log_probs.dtype))
        if beta != 0 and attention is None:
            raise ValueError(f"{owner}: {names[2]}={beta} needs a step function that "
                             f"returns attention; it returned None")
        chosen = _beam_step(beam, log_probs.detach().view(B, K, -1),
                            None if attention is None else attention.detach().view(B, K, -1),
                            eos_id=eos_id, alpha=alpha, beta=beta)
        beam, scores, parent = chosen.beam, chosen.scores, chosen.parent
        step_tokens.append(chosen.token)
        parents.append(parent)
        if chosen.attention is not None:
            step_attentions.append(chosen.attention)
        rows = (rows_base + parent).view(N)  # (N,)
        _check_rows(state, N, owner, "step_fn returned a state whose")
        state = _map_state(lambda tensor, _path, rows=rows: tensor.index_select(0, rows), state)
        tokens = chosen.token.view(N)
    # the beam is sorted best first; impossible hypotheses are reported empty
    tokens_out = gather_tree(torch.stack(step_tokens), torch.stack(parents))[:, :n_best]
    lengths_out = beam.lengths[:, :n_best]
    scores_out = scores[:, :n_best]
    impossible = torch.isneginf(scores_out)  # (B, n_best)
    tokens_out = tokens_out.masked_fill(impossible.unsqueeze(2), eos_id)  # (B, n_best, L)
    lengths_out = lengths_out.masked_fill(impossible, 0)
    attention_out = None
    if step_attentions:
        attention_out = gather_tree(torch.stack(step_attentions), torch.stack(parents))
        attention_out = attention_out[:, :n_best].masked_fill(
            impossible.view(B, n_best, 1, 1), 0.0)  # (B, n_best, L, S)
    return Hypotheses(tokens=tokens_out, lengths=lengths_out, scores=scores_out,
                      attention=attention_out)


def gather_tree(values: Tensor, parents: Tensor) -> Tensor:
    """Each final beam's sequence, read back through the parent pointers of a beam search:
    ``values (L, B, K, ...)`` chosen at each step (tokens, attention), ``parents (L, B, K)``
    the beam of step ``t - 1`` that beam ``k`` of step ``t`` extends; returns ``(B, K, L,
    ...)`` (TF1's ``gather_tree`` without its length and end-token masking, which
    :func:`beam_search` does through EOS).

    Example:
        >>> tokens = torch.tensor([[[1, 2]], [[3, 4]]])      # (L=2, B=1, K=2)
        >>> parents = torch.tensor([[[0, 0]], [[1, 0]]])     # step 1: beam 0 extends beam 1
        >>> gather_tree(tokens, parents).tolist()
        [[[2, 3], [1, 4]]]
    """
    if values.dim() < 3 or parents.shape != values.shape[:3]:
        raise ShapeError(f"gather_tree: values (L, B, K, ...) and parents (L, B, K) must agree, "
                         f"got {tuple(values.shape)} and {tuple(parents.shape)}")
    steps, batch, beams = parents.shape
    extra = values.shape[3:]
    beam = torch.arange(beams, device=parents.device).expand(batch, beams)  # (B, K)
    out = []
    for step in range(steps - 1, -1, -1):
        index = beam.view(batch, beams, *([1] * len(extra))).expand(batch, beams, *extra)
        out.append(values[step].gather(1, index))  # (B, K, ...)
        beam = parents[step].gather(1, beam)
    return torch.stack(out[::-1], dim=2)  # (B, K, L, ...)


def _check_beam_arguments(owner: str, batch_size: Any, bos_id: Any, eos_id: Any,
                          beam_width: Any, max_length: Any, length_penalty: Any,
                          coverage_penalty: Any, n_best: Any) -> tuple[float, float]:
    _check_common(owner, batch_size, bos_id, eos_id, max_length)
    _check_int(beam_width, "beam_width", owner, 1)
    _check_int(n_best, "n_best", owner, 1)
    if n_best > beam_width:
        raise ValueError(f"{owner}: n_best={n_best} is more than beam_width={beam_width}; "
                         f"a beam keeps beam_width hypotheses")
    alpha = _check_float(length_penalty, "length_penalty", owner)
    beta = _check_float(coverage_penalty, "coverage_penalty", owner)
    return alpha, beta


@torch.no_grad()
def beam_search(step_fn: StepFunction, state: Any, *, batch_size: int, bos_id: int,
                eos_id: int, beam_width: int, max_length: int, length_penalty: float = 0.0,
                coverage_penalty: float = 0.0, n_best: int = 1,
                device: torch.device | str | None = None) -> Hypotheses:
    """Batched beam search: the ``beam_width`` best hypotheses of each source, grown a token
    at a time, scored as GNMT / TensorFlow 1's ``BeamSearchDecoder`` (module docstring).

    At each step every live hypothesis is extended by every token; the ``beam_width`` best
    candidates of each source survive (ties to the lower beam, then token). A hypothesis that
    emits EOS is finished: it keeps its score and its place while it ranks among the best,
    and its rows still run through ``step_fn`` (their output is ignored). The search stops
    when every hypothesis has finished or after ``max_length`` steps.

    Args:
        step_fn: ``(tokens (B*K,), state) -> (log_probs (B*K, V), state, attention (B*K, S)
            | None)``; row ``b * K + k`` is beam ``k`` of source ``b``.
        state: the initial state with ``B`` rows; each tensor is repeated ``K`` times
            (:func:`tile_batch`) and reordered with ``index_select`` on dim 0 as beams move.
        batch_size: ``B`` sources. bos_id, eos_id: start and end tokens.
        beam_width: ``K >= 1``; 1 is greedy decoding.
        max_length: the most tokens per hypothesis (EOS included).
        length_penalty: GNMT's ``alpha`` (0 = none; 0.6-1.0 favours longer outputs).
        coverage_penalty: GNMT's ``beta`` (0 = none); needs attention from the step.
        n_best: hypotheses returned per source, ``<= beam_width``.
        device: where the tokens live (default: the state's device, else the CPU).

    Returns:
        :class:`Hypotheses` ``(B, n_best, ...)``, best first.

    Example:
        >>> table = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]).log()
        >>> step = lambda tokens, state: (table[tokens], state, None)
        >>> out = beam_search(step, None, batch_size=1, bos_id=0, eos_id=1, beam_width=3,
        ...                   max_length=3, n_best=2)
        >>> out.tokens.tolist(), out.lengths.tolist()       # 2 0 2 (p=0.294), then EOS (0.2)
        ([[[2, 0, 2], [1, 1, 1]]], [[3, 1]])
        >>> [round(p, 3) for p in out.scores.exp()[0].tolist()]
        [0.294, 0.2]
    """
    owner = "beam_search"
    alpha, beta = _check_beam_arguments(owner, batch_size, bos_id, eos_id, beam_width,
                                        max_length, length_penalty, coverage_penalty, n_best)
    _check_rows(state, batch_size, owner, "the initial state's")
    device = _device_of(state, device)
    return _beam_search_tiled(step_fn, tile_batch(state, beam_width), batch_size=batch_size,
                              bos_id=bos_id, eos_id=eos_id, beam_width=beam_width,
                              max_length=max_length, alpha=alpha, beta=beta, n_best=n_best,
                              device=device, owner=owner)


# --- TensorFlow 1's interface ------------------------------------------------------------


def _alignments_of(cell: Any, state: Any) -> Tensor | None:
    """The attention an attentional cell keeps in its state, found as TF1's
    ``get_attention_probs`` finds ``AttentionWrapperState.alignments``: a state with an
    ``alignments`` field, or a tuple state whose cell names its parts (``state_names``, as
    :class:`rnnkit.layers.AttentionWrapper`); several attentional states (a tuple of them)
    are averaged. None for a cell without attention."""
    alignments = getattr(state, "alignments", None)
    if isinstance(alignments, Tensor):
        return alignments
    names = getattr(cell, "state_names", None)
    if isinstance(state, tuple) and names is not None and "alignments" in names:
        found = state[list(names).index("alignments")]
        if isinstance(found, Tensor):
            return found
    if isinstance(state, tuple):
        inner = [getattr(part, "alignments", None) for part in state]
        inner = [part for part in inner if isinstance(part, Tensor)]
        if inner:
            return torch.stack(inner, dim=0).mean(dim=0)
    return None


class BeamSearchDecoder:
    """``tf.contrib.seq2seq.BeamSearchDecoder``'s arguments, over :func:`beam_search`.

    Args:
        cell: a recurrent cell called ``cell(inputs (N, E), state) -> (outputs, state)``
            (rnnkit's cells, :class:`rnnkit.layers.AttentionWrapper`, a user's cell), or a
            ``torch.nn`` ``LSTMCell`` / ``GRUCell`` / ``RNNCell``.
        embedding: a callable from ids ``(N,)`` to ``(N, E)`` (``torch.nn.Embedding``), or the
            embedding matrix ``(V, E)`` (TF1's ``params`` of ``embedding_lookup``).
        start_tokens: ``(B,)`` the first token of each source (they may differ).
        end_token: the token that ends a hypothesis.
        initial_state: the cell's state with ``B * beam_width`` rows tiled with
            :func:`tile_batch`, as TF1 requires (a state with ``B`` rows is tiled here).
        beam_width: ``K``.
        output_layer: maps the cell's outputs to logits (``torch.nn.Linear``); None when the
            outputs are the logits.
        length_penalty_weight: GNMT's ``alpha``. coverage_penalty_weight: GNMT's ``beta``;
            the attention comes from the cell's state (an ``alignments`` field or the
            ``alignments`` part of an :class:`~rnnkit.layers.AttentionWrapper` state).

    Call ``decoder.decode(maximum_iterations)`` (TF1: ``dynamic_decode(decoder,
    maximum_iterations=...)``) for :class:`Hypotheses` with all ``K`` beams best first: TF1's
    ``predicted_ids[:, :, k]`` is ``tokens[:, k]`` and its ``final_sequence_lengths`` are
    ``lengths``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> cell, out = torch.nn.GRUCell(4, 8), torch.nn.Linear(8, 5)
        >>> decoder = BeamSearchDecoder(cell, torch.randn(5, 4), start_tokens=torch.zeros(2,
        ...     dtype=torch.long), end_token=1, initial_state=torch.zeros(2 * 3, 8),
        ...     beam_width=3, output_layer=out, length_penalty_weight=0.6)
        >>> decoder.decode(maximum_iterations=6).tokens.shape[:2]
        torch.Size([2, 3])
    """

    def __init__(self, cell: Any, embedding: Any, start_tokens: Any, end_token: int,
                 initial_state: Any, beam_width: int, output_layer: Any = None,
                 length_penalty_weight: float = 0.0, coverage_penalty_weight: float = 0.0) -> None:
        owner = "BeamSearchDecoder"
        if not callable(cell):
            raise TypeError(f"{owner}: cell must be callable (inputs, state) -> (outputs, "
                            f"state), got {type(cell).__name__}")
        if output_layer is not None and not callable(output_layer):
            raise TypeError(f"{owner}: output_layer must be callable (a torch.nn.Linear), got "
                            f"{type(output_layer).__name__}")
        if isinstance(embedding, Tensor):
            if embedding.dim() != 2:
                raise ShapeError(f"{owner}: an embedding matrix must be (V, E), got shape "
                                 f"{tuple(embedding.shape)}")
            matrix = embedding
            self._embed: Callable[[Tensor], Tensor] = (
                lambda ids: torch.nn.functional.embedding(ids, matrix))
        elif callable(embedding):
            self._embed = embedding
        else:
            raise TypeError(f"{owner}: embedding must be a callable or a (V, E) matrix, got "
                            f"{type(embedding).__name__}")
        start = torch.as_tensor(start_tokens)
        if start.dim() != 1 or start.numel() == 0 or start.is_floating_point():
            raise ValueError(f"{owner}: start_tokens must be a vector of token ids (B,), got "
                             f"shape {tuple(start.shape)} of {start.dtype}")
        if isinstance(end_token, Tensor) and end_token.numel() == 1:
            end_token = int(end_token)
        self.batch_size = int(start.shape[0])
        _check_int(end_token, "end_token", owner, 0)
        _check_int(beam_width, "beam_width", owner, 1)
        self.alpha = _check_float(length_penalty_weight, "length_penalty_weight", owner)
        self.beta = _check_float(coverage_penalty_weight, "coverage_penalty_weight", owner)
        if int(start.min()) < 0:
            raise ValueError(f"{owner}: start_tokens must be ids >= 0, got {start.tolist()}")
        self.cell, self.output_layer = cell, output_layer
        self.end_token, self.beam_width = end_token, beam_width
        rows = self.batch_size * beam_width
        leaves = _leaves(initial_state)
        if leaves and all(leaf.dim() > 0 and leaf.shape[0] == self.batch_size for leaf in leaves):
            initial_state = tile_batch(initial_state, beam_width)
        _check_rows(initial_state, rows, owner, "initial_state (tile it to batch_size * "
                    "beam_width rows with tile_batch): its")
        self.initial_state = initial_state
        self.start_tokens = start.to(torch.long)

    def _cell_step(self, inputs: Tensor, state: Any) -> tuple[Tensor, Any]:
        if isinstance(self.cell, torch.nn.LSTMCell):
            h, c = self.cell(inputs, state)
            return h, (h, c)
        if isinstance(self.cell, torch.nn.RNNCellBase):  # GRUCell, RNNCell
            h = self.cell(inputs, state)
            return h, h
        return self.cell(inputs, state)

    @torch.no_grad()
    def decode(self, maximum_iterations: int, n_best: int | None = None) -> Hypotheses:
        """Run the search for at most ``maximum_iterations`` steps; ``n_best`` hypotheses per
        source (default: all ``beam_width``), best first."""
        owner = "BeamSearchDecoder.decode"
        if maximum_iterations is None:
            raise ValueError(f"{owner}: maximum_iterations is needed (TF1 decodes until every "
                             f"beam ends, which may never happen)")
        _check_int(maximum_iterations, "maximum_iterations", owner, 1)
        n_best = self.beam_width if n_best is None else n_best
        _check_beam_arguments(owner, self.batch_size, int(self.start_tokens.max()),
                              self.end_token, self.beam_width, maximum_iterations, self.alpha,
                              self.beta, n_best)
        device = _device_of(self.initial_state, None)
        first = self.start_tokens.to(device).repeat_interleave(self.beam_width)  # (N,)
        calls = [0]

        def step(tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
            if calls[0] == 0:
                tokens = first  # each source's own start token
            calls[0] += 1
            outputs, state = self._cell_step(self._embed(tokens), state)
            logits = outputs if self.output_layer is None else self.output_layer(outputs)
            return logits.log_softmax(dim=-1), state, _alignments_of(self.cell, state)

        return _beam_search_tiled(step, self.initial_state, batch_size=self.batch_size,
                                  bos_id=int(self.start_tokens.max()), eos_id=self.end_token,
                                  beam_width=self.beam_width, max_length=maximum_iterations,
                                  alpha=self.alpha, beta=self.beta, n_best=n_best,
                                  device=device, owner=owner,
                                  names=("start_tokens", "end_token", "coverage_penalty_weight"))

    __call__ = decode
