"""Decoding CTC outputs: best path (greedy) and prefix beam search with a character-level LM.

A CTC recognizer emits, at every step, log-probabilities over the labels and a *blank*.
A label sequence ``y`` is read off a path (one class per step) by merging repeated classes and
dropping blanks (``a a - b b -> a b``, ``a - a -> a a``); its probability is the sum over every
path that collapses to it (Graves et al. 2006).

* :func:`ctc_greedy_decode` collapses the best path (the arg-max at every step).
* :func:`ctc_prefix_beam_search` keeps the ``beam_width`` best label prefixes, each with the
  probability of the paths ending in a blank and of those ending in its last label (Graves
  2012, section 7.5; Hannun et al. 2014, "First-pass large vocabulary continuous speech
  recognition using bi-directional recurrent DNNs", Algorithm 1). With a language model a
  prefix's score is ``log P_ctc(y) + lm_weight * log P_lm(y) + insertion_bonus * |y|``
  (Hannun's ``alpha`` and ``beta``), the LM's end-of-sequence term added when the input ends.

Symbols: ``B`` batch, ``T`` time steps, ``C`` classes (the labels and the blank), ``K`` the
beam width. Inputs are batch-major ``log_probs (B, T, C)`` (a ``log_softmax`` output);
``lengths (B,)`` give each row's valid steps (the rest is padding and never read).

Beam width 1 keeps, at every step, the one prefix of highest *total* probability (all its
paths), so it returns greedy's answer whenever the best path dominates its steps, as it does
for a trained recognizer; where several paths share the mass it may return a more probable
labelling than greedy (``tests/models/test_ctc_decoding.py`` shows both). A beam as wide as the
number of label prefixes makes the search exact: the n-best list is the brute-force ranking.

Example:
    >>> import torch
    >>> probs = torch.tensor([[[0.1, 0.8, 0.1],     # t=0: label 1
    ...                        [0.7, 0.2, 0.1],     # t=1: blank
    ...                        [0.1, 0.8, 0.1],     # t=2: label 1 again (a blank between)
    ...                        [0.1, 0.1, 0.8]]])   # t=3: label 2          (B=1, T=4, C=3)
    >>> ctc_greedy_decode(probs.log(), blank=0)
    [[1, 1, 2]]
    >>> best = ctc_prefix_beam_search(probs.log(), beam_width=4, n_best=2)[0]
    >>> [h.labels for h in best]
    [(1, 1, 2), (1, 2)]
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.errors import ShapeError

__all__ = ["CTCHypothesis", "CharNGramLM", "LanguageModelScorer", "ctc_greedy_decode",
           "ctc_prefix_beam_search"]

_NEG_INF = float("-inf")
# at most this many child-table entries (int32) per chunk of the batch: bounds the memory
_MAX_TABLE = 1 << 25


class CTCHypothesis(NamedTuple):
    """One decoded label sequence: ``score = acoustic_score + lm_weight * lm_score +
    insertion_bonus * len(labels)``.

    ``acoustic_score`` is ``log P_ctc(labels | input)`` (every path), ``lm_score`` the LM's
    ``log P(labels)`` with its end-of-sequence term (0.0 without an LM).
    """

    labels: tuple[int, ...]
    score: float
    acoustic_score: float
    lm_score: float


# ----------------------------------------------------------------------------------- checks
def _integer(value: Any, name: str, where: str) -> int:
    """``value`` as an int (Python, NumPy or 0-d tensor integers; never a bool or a float)."""
    if isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an int, got {value!r}") from None


def _check_log_probs(log_probs: Any, lengths: Any, blank: Any, where: str
                     ) -> tuple[Tensor, Tensor, int]:
    """Checked ``(log_probs (B, T, C), lengths (B,) int64 on CPU, blank in [0, C))``."""
    if not isinstance(log_probs, Tensor):
        raise TypeError(f"{where}: log_probs must be a Tensor (B, T, C), got "
                        f"{type(log_probs).__name__}")
    if log_probs.dim() != 3:
        raise ShapeError(f"{where}: log_probs must be (B, T, C) (batch-major log-probabilities "
                         f"over the classes and the blank), got shape {tuple(log_probs.shape)}")
    if not log_probs.is_floating_point():
        raise TypeError(f"{where}: log_probs must be floating point, got {log_probs.dtype}")
    b, t, c = log_probs.shape
    if c < 1:
        raise ShapeError(f"{where}: log_probs has no classes (shape {tuple(log_probs.shape)})")
    blank = _integer(blank, "blank", where)
    if not -c <= blank < c:
        raise ValueError(f"{where}: blank={blank} is outside the {c} classes of log_probs "
                         f"(shape {tuple(log_probs.shape)}); valid: 0..{c - 1} (or -{c}..-1)")
    blank %= c
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.int64)
    else:
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"{where}: lengths must hold integers, got {lengths.dtype}")
        lengths = lengths.detach().to("cpu", torch.int64)
        if lengths.shape != (b,):
            raise ShapeError(f"{where}: lengths must be (B,) = ({b},) for log_probs "
                             f"{tuple(log_probs.shape)}, got shape {tuple(lengths.shape)}")
        if b:
            longest, shortest = int(lengths.max()), int(lengths.min())
            if longest > t:
                row = int(lengths.argmax())
                raise ValueError(f"{where}: lengths[{row}] = {longest} is longer than the "
                                 f"{t} time steps of log_probs {tuple(log_probs.shape)}")
            if shortest < 0:
                raise ValueError(f"{where}: lengths[{int(lengths.argmin())}] = {shortest} is "
                                 "negative")
    if log_probs.numel() and bool((torch.isnan(log_probs) | (log_probs == math.inf)).any()):
        raise ValueError(f"{where}: log_probs holds NaN or +inf (log-probabilities are <= 0; "
                         "-inf is a probability of 0)")
    return log_probs, lengths, blank


# ----------------------------------------------------------------------------------- greedy
def ctc_greedy_decode(log_probs: Tensor, lengths: Tensor | Sequence[int] | None = None, *,
                      blank: int = 0) -> list[list[int]]:
    """Best-path decoding: the arg-max class at every valid step, repeats merged, blanks dropped.

    Args:
        log_probs: ``(B, T, C)`` scores (log-probabilities; any monotone score works).
        lengths: ``(B,)`` valid steps of each row (default: all ``T``); padding is never read.
        blank: the blank's class index (a negative index counts from the end, as TF's
            ``blank_index``).

    Returns:
        ``B`` lists of label ids. Ties go to the lowest class index (``torch.argmax``).

    Example:
        >>> import torch
        >>> path = torch.tensor([[1, 1, 0, 1, 2, 2, 0]])                  # (B=1, T=7)
        >>> ctc_greedy_decode(torch.nn.functional.one_hot(path, 3).float().log())
        [[1, 1, 2]]
    """
    log_probs, lengths, blank = _check_log_probs(log_probs, lengths, blank, "ctc_greedy_decode")
    b, t, _ = log_probs.shape
    if b == 0:
        return []
    if t == 0:
        return [[] for _ in range(b)]
    best = log_probs.detach().argmax(dim=-1).cpu()                      # (B, T)
    valid = torch.arange(t) < lengths[:, None]                           # (B, T)
    previous = torch.cat([torch.full((b, 1), -1, dtype=best.dtype), best[:, :-1]], dim=1)
    keep = valid & (best != blank) & (best != previous)                  # (B, T)
    return [[label for label, k in zip(row, mask, strict=True) if k]
            for row, mask in zip(best.tolist(), keep.tolist(), strict=True)]


# -------------------------------------------------------------------------------- LM helpers
def _query_lm(lm: Any, prefixes: list[tuple[int, ...]], num_classes: int, blank: int
              ) -> Tensor:
    """``lm.log_probs(prefixes)`` checked: ``(N, C)`` float64 on CPU, blank column 0."""
    out = lm.log_probs(prefixes)
    if not isinstance(out, Tensor):
        raise TypeError(f"lm.log_probs must return a Tensor (N, C), got {type(out).__name__}")
    if tuple(out.shape) != (len(prefixes), num_classes):
        raise ShapeError(f"lm.log_probs returned shape {tuple(out.shape)} for {len(prefixes)} "
                         f"prefixes; expected (N, C) = ({len(prefixes)}, {num_classes}), one "
                         "log P(next label | prefix) per class of log_probs")
    out = out.detach().to("cpu", torch.float64).clone()
    out[:, blank] = 0.0                        # the blank column is ignored
    if bool(torch.isnan(out).any()) or bool((out == math.inf).any()):
        raise ValueError("lm.log_probs returned NaN or +inf (log-probabilities are <= 0)")
    return out


def _query_lm_end(lm: Any, prefixes: list[tuple[int, ...]]) -> Tensor:
    """``lm.end_log_probs(prefixes)`` checked ``(N,)`` float64, or zeros without the method."""
    end = getattr(lm, "end_log_probs", None)
    if end is None or not prefixes:
        return torch.zeros(len(prefixes), dtype=torch.float64)
    out = end(prefixes)
    if not isinstance(out, Tensor) or tuple(out.shape) != (len(prefixes),):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"lm.end_log_probs returned {got} for {len(prefixes)} prefixes; "
                         f"expected a Tensor (N,) = ({len(prefixes)},)")
    out = out.detach().to("cpu", torch.float64)
    if bool(torch.isnan(out).any()) or bool((out == math.inf).any()):
        raise ValueError("lm.end_log_probs returned NaN or +inf (log-probabilities are <= 0)")
    return out


# ------------------------------------------------------------------------------ beam search
def ctc_prefix_beam_search(
    log_probs: Tensor,
    lengths: Tensor | Sequence[int] | None = None,
    *,
    blank: int = 0,
    beam_width: int = 8,
    n_best: int = 1,
    lm: Any = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
    prune_log_prob: float | None = None,
) -> list[list[CTCHypothesis]]:
    """CTC prefix beam search (Graves 2012 section 7.5; Hannun et al. 2014, Algorithm 1).

    Every step extends each kept prefix by every label, keeps the prefix itself (a blank, or
    its last label repeated), merges the paths that reach the same prefix (log-sum-exp over
    blank- and label-ending paths) and keeps the ``beam_width`` best by score. All rows of the
    batch and all prefixes of the beam advance together as tensors.

    Args:
        log_probs: ``(B, T, C)`` log-probabilities (``log_softmax`` over the classes).
        lengths: ``(B,)`` valid steps per row (default: ``T``); padding is never read, so a
            padded row decodes exactly as it does alone.
        blank: the blank's class index (negative counts from the end).
        beam_width: prefixes kept per step (``K >= 1``).
        n_best: hypotheses returned per row, best first (``<= beam_width``; fewer when fewer
            label sequences are possible).
        lm: ``None`` or an object with ``log_probs(prefixes: list[tuple[int, ...]]) -> Tensor
            (N, C)``: ``log P(next label | prefix)`` for every class (the blank column is
            ignored), and optionally ``end_log_probs(prefixes) -> Tensor (N,)``: ``log P(end |
            prefix)``, added when a row ends. :class:`CharNGramLM` is one;
            :class:`LanguageModelScorer` wraps a trained :class:`~rnnkit.models.LanguageModel`.
        lm_weight: ``alpha``, the LM's weight in the score.
        insertion_bonus: ``beta``, added per label (counters the LM's bias to short outputs).
        prune_log_prob: if set, a class (label or blank) is used at a step only where its
            log-probability is at least this, the step's best class always (pyctcdecode's
            ``token_min_logp``): the search then runs as if the others had probability 0, and
            the scores count only the paths through used classes.

    Returns:
        Per row, up to ``n_best`` :class:`CTCHypothesis` sorted by ``score`` (best first).

    Raises:
        ShapeError / ValueError / TypeError: a bad ``log_probs`` shape, ``blank`` outside the
        classes, ``lengths`` longer than ``T``, ``n_best > beam_width``, an ``lm`` answer of the
        wrong shape.
    """
    where = "ctc_prefix_beam_search"
    log_probs, lengths, blank = _check_log_probs(log_probs, lengths, blank, where)
    beam_width, n_best = _integer(beam_width, "beam_width", where), _integer(n_best, "n_best",
                                                                              where)
    for name, value in (("beam_width", beam_width), ("n_best", n_best)):
        if value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    if n_best > beam_width:
        raise ValueError(f"{where}: n_best={n_best} asks for more hypotheses than the "
                         f"beam_width={beam_width} keeps")
    for name, value in (("lm_weight", lm_weight), ("insertion_bonus", insertion_bonus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
    if lm_weight < 0:
        raise ValueError(f"{where}: lm_weight must be >= 0 (the LM's weight), got {lm_weight}")
    if prune_log_prob is not None and (isinstance(prune_log_prob, bool) or not isinstance(
            prune_log_prob, (int, float)) or math.isnan(prune_log_prob)):
        raise ValueError(f"{where}: prune_log_prob must be a number or None, got "
                         f"{prune_log_prob!r}")
    if lm is not None and not callable(getattr(lm, "log_probs", None)):
        raise TypeError(f"{where}: lm must have a log_probs(prefixes) method, got "
                        f"{type(lm).__name__}")
    if lm is None and lm_weight != 0.0:
        raise ValueError(f"{where}: lm_weight={lm_weight} without an lm")
    b, t, c = log_probs.shape
    if b == 0:
        return []
    scores = log_probs.detach().to("cpu", torch.float64)                  # (B, T, C)
    if prune_log_prob is not None:
        best = scores.argmax(-1, keepdim=True)                            # (B, T, 1)
        used = (scores >= prune_log_prob) | (torch.arange(c) == best)      # (B, T, C)
        scores = scores.masked_fill(~used, _NEG_INF)
    # longest rows first: at step s the rows still running are a leading slice
    order = torch.argsort(lengths, descending=True, stable=True)
    results: list[list[CTCHypothesis]] = [[] for _ in range(b)]
    nodes = 1 + beam_width * t                       # trie nodes a row can ever need
    chunk = max(1, _MAX_TABLE // max(1, nodes * c))
    for start in range(0, b, chunk):
        rows = order[start:start + chunk]
        found = _beam_search_rows(scores[rows], lengths[rows], blank=blank, width=beam_width,
                                  n_best=n_best, lm=lm, lm_weight=float(lm_weight),
                                  bonus=float(insertion_bonus))
        for row, hyps in zip(rows.tolist(), found, strict=True):
            results[row] = hyps
    return results


def _beam_search_rows(scores: Tensor, lengths: Tensor, *, blank: int, width: int, n_best: int,
                      lm: Any, lm_weight: float, bonus: float) -> list[list[CTCHypothesis]]:
    """The search over rows sorted by decreasing length (``scores (B, T, C)`` float64)."""
    b, t, c = scores.shape
    k = width
    neg = torch.tensor(_NEG_INF, dtype=torch.float64)
    # every prefix ever kept is a node of a trie (one per row): child[row, node, label] ->
    # node, so a prefix has one id for the whole search and merging compares ids exactly
    nodes = 1 + k * t
    child = torch.full((b, nodes, c), -1, dtype=torch.int32)             # (B, N, C)
    parent_of = torch.full((b, nodes), -1, dtype=torch.int64)            # (B, N)
    label_of = torch.full((b, nodes), -1, dtype=torch.int64)             # (B, N)
    allocated = torch.ones(b, dtype=torch.int64)                         # (B,) node 0: empty
    # beam slots: the prefix's node (-1: an empty slot), its parent's node, its last label,
    # its length, its masses ending in a blank / in its last label, its LM terms
    node = torch.full((b, k), -1, dtype=torch.int64)                     # (B, K)
    node[:, 0] = 0
    parent = torch.full((b, k), -1, dtype=torch.int64)                   # (B, K)
    last = torch.full((b, k), -1, dtype=torch.int64)                     # (B, K)
    size = torch.zeros((b, k), dtype=torch.int64)                        # (B, K)
    p_blank = torch.full((b, k), _NEG_INF, dtype=torch.float64)          # (B, K)
    p_blank[:, 0] = 0.0
    p_label = torch.full((b, k), _NEG_INF, dtype=torch.float64)          # (B, K)
    lm_total = torch.zeros((b, k), dtype=torch.float64)                  # (B, K) log P_lm(y)
    lm_next = torch.zeros((b, k, c), dtype=torch.float64)                # (B, K, C)
    prefixes: list[list[tuple[int, ...]]] = []                           # [row][node]
    if lm is not None:
        lm_next[:] = _query_lm(lm, [()], c, blank)[0]
        prefixes = [[()] for _ in range(b)]
    label_ids = torch.arange(c)
    row_ids = torch.arange(b)
    active_counts = (lengths[None, :] > torch.arange(t)[:, None]).sum(1).tolist()   # (T,)
    for step in range(t):
        n = active_counts[step]
        if n == 0:
            break
        frame = scores[:n, step]                                          # (n, C)
        rows = row_ids[:n, None].expand(n, k)                             # (n, K)
        pb, pl, nd, ls = p_blank[:n], p_label[:n], node[:n], last[:n]
        total = torch.logaddexp(pb, pl)                                   # (n, K)
        # the prefix itself: a blank, or its last label again (merged into that label)
        stay_blank = total + frame[:, blank, None]                        # (n, K)
        stay_label = torch.where(ls >= 0, pl + frame.gather(1, ls.clamp(min=0)), neg)
        # the prefix + label c: after its own last label only through a blank
        same = ls[:, :, None] == label_ids                                # (n, K, C)
        ext = torch.where(same, pb[:, :, None], total[:, :, None]) + frame[:, None, :]
        ext[:, :, blank] = _NEG_INF                                       # (n, K, C)
        ext = ext.flatten(1)                                              # (n, K*C)
        # a kept prefix whose parent is kept too takes in the parent's extension by its label
        match = (parent[:n, :, None] == nd[:, None, :]) & (parent[:n, :, None] >= 0)  # (n,K,K)
        has_parent = match.any(2)                                         # (n, K)
        if bool(has_parent.any()):
            slot = match.long().argmax(2) * c + ls.clamp(min=0)           # (n, K) into ext
            stay_label = torch.where(has_parent, torch.logaddexp(stay_label, ext.gather(1, slot)),
                                     stay_label)
            ext[rows[has_parent], slot[has_parent]] = _NEG_INF
        # scores with the LM and the insertion bonus; the best K of stay + extensions
        stay_score = torch.logaddexp(stay_blank, stay_label) + bonus * size[:n].double()
        ext_score = ext + bonus * (size[:n] + 1).double().repeat_interleave(c, dim=1)
        if lm_weight:   # (0 * a log-probability of -inf would be NaN)
            ext_lm = (lm_total[:n, :, None] + lm_next[:n]).flatten(1)     # (n, K*C)
            stay_score = stay_score + lm_weight * lm_total[:n]
            ext_score = (ext_score + lm_weight * ext_lm).masked_fill(ext == _NEG_INF, _NEG_INF)
        candidates = torch.cat([stay_score, ext_score], dim=1)            # (n, K + K*C)
        best, pick = candidates.topk(k, dim=1)                            # (n, K)
        alive = best > _NEG_INF
        is_ext = pick >= k
        ext_pick = (pick - k).clamp(min=0)
        source = torch.where(is_ext, ext_pick // c, pick)                 # (n, K) beam slot
        label = torch.where(is_ext, ext_pick % c, ls.gather(1, source))   # (n, K) last label
        src_node = nd.gather(1, source)
        extended = is_ext & alive
        new_node = torch.where(extended, child[rows, src_node.clamp(min=0),
                                               label.clamp(min=0)].long(), src_node)
        fresh = extended & (new_node < 0)                                 # new trie nodes
        if bool(fresh.any()):
            ids = allocated[:n, None] + fresh.long().cumsum(1) - 1
            new_node = torch.where(fresh, ids, new_node)
            f_rows, f_parent, f_label, f_node = (rows[fresh], src_node[fresh], label[fresh],
                                                 new_node[fresh])
            child[f_rows, f_parent, f_label] = f_node.int()
            parent_of[f_rows, f_node] = f_parent
            label_of[f_rows, f_node] = f_label
            allocated[:n] += fresh.sum(1)
            if lm is not None:      # nonzero order is row-major, as the ids were given
                for r, p, lab in zip(f_rows.tolist(), f_parent.tolist(), f_label.tolist(),
                                     strict=True):
                    prefixes[r].append(prefixes[r][p] + (lab,))
        new_lm = lm_total[:n].gather(1, source)
        new_next = lm_next[:n].gather(1, source[:, :, None].expand(-1, -1, c))
        if lm is not None and bool(extended.any()):
            new_lm = torch.where(extended, new_lm + new_next.gather(2, label.clamp(min=0)[
                :, :, None]).squeeze(2), new_lm)
            asked = [prefixes[r][m] for r, m in zip(rows[extended].tolist(),
                                                    new_node[extended].tolist(), strict=True)]
            new_next[extended] = _query_lm(lm, asked, c, blank)
        p_blank[:n] = torch.where(is_ext | ~alive, neg, stay_blank.gather(1, source))
        p_label[:n] = torch.where(is_ext, ext.gather(1, ext_pick),
                                  stay_label.gather(1, source)).masked_fill(~alive, _NEG_INF)
        parent[:n] = torch.where(is_ext, src_node, parent[:n].gather(1, source)).masked_fill(
            ~alive, -1)
        node[:n] = new_node.masked_fill(~alive, -1)
        last[:n] = label
        size[:n] = size[:n].gather(1, source) + extended.long()
        lm_total[:n] = new_lm
        lm_next[:n] = new_next
    # the end: every kept prefix spelled out from the trie, its LM end term, the ranking
    acoustic = torch.logaddexp(p_blank, p_label)                          # (B, K)
    alive = acoustic > _NEG_INF
    longest = int(size.max()) if size.numel() else 0
    spelled = torch.zeros((b, k, longest), dtype=torch.int64)             # (B, K, L)
    walk = node.clamp(min=0)
    for back in range(longest):                                           # last label first
        position = size - 1 - back                                        # (B, K)
        inside = position >= 0
        spelled[inside.nonzero(as_tuple=True) + (position[inside],)] = \
            label_of.gather(1, walk)[inside]
        walk = torch.where(inside, parent_of.gather(1, walk), walk)
    final_labels = [[tuple(seq[:m]) for seq, m in zip(row_labels, row_sizes, strict=True)]
                    for row_labels, row_sizes in zip(spelled.tolist(), size.tolist(),
                                                     strict=True)]
    lm_score = lm_total.clone()
    if lm is not None:
        flat = [p for row, keep in zip(final_labels, alive.tolist(), strict=True)
                for p, a in zip(row, keep, strict=True) if a]
        lm_score[alive] += _query_lm_end(lm, flat)
    final = acoustic + bonus * size.double()                              # (B, K)
    if lm_weight:
        final = final + lm_weight * lm_score
    final = final.masked_fill(~alive, _NEG_INF)
    ranked = final.argsort(dim=1, descending=True, stable=True)
    out: list[list[CTCHypothesis]] = []
    final_l, acoustic_l, lm_l = final.tolist(), acoustic.tolist(), lm_score.tolist()
    for row, slots in enumerate(ranked.tolist()):
        hyps = [CTCHypothesis(final_labels[row][s], final_l[row][s], acoustic_l[row][s],
                              lm_l[row][s] if lm is not None else 0.0)
                for s in slots if final_l[row][s] > _NEG_INF]
        out.append(hyps[:n_best])
    return out


# --------------------------------------------------------------------------- language models
class CharNGramLM:
    """A character (label) n-gram language model with an end-of-sequence event, for
    :func:`ctc_prefix_beam_search`'s ``lm``.

    ``P(label | the previous order-1 labels)``, sequences padded at the start with a
    begin-of-sequence context and closed by an end event, so ``exp(log_probs)`` over the labels
    plus ``exp(end_log_probs)`` sums to 1 for every prefix. Estimates are interpolated with the
    next lower order down to the uniform distribution over the labels and the end:

    * ``smoothing="witten_bell"`` (default): ``P(w|h) = (c(h, w) + N1(h) P_lower(w|h')) /
      (c(h) + N1(h))`` where ``N1(h)`` counts the distinct labels seen after ``h`` (Witten &
      Bell 1991; Chen & Goodman 1998, section 2.3);
    * ``smoothing=k`` (a number > 0): ``P(w|h) = (c(h, w) + k P_lower(w|h')) / (c(h) + k)``
      (additive interpolation, a Dirichlet prior centred on the lower order).

    A context never seen falls back to the lower order entirely.

    Args:
        num_classes: ``C`` of the recognizer's output (labels and the blank).
        order: ``n`` (1 = unigram).
        blank: the blank's class index (never a label).
        smoothing: ``"witten_bell"`` or a positive number.

    Example:
        >>> lm = CharNGramLM(num_classes=4, order=2).fit([[1, 2, 3], [1, 2], [1, 3]])
        >>> probs = lm.log_probs([(1,)]).exp()[0]          # after label 1: 2 twice, 3 once
        >>> [round(p, 3) for p in probs.tolist()]
        [0.0, 0.114, 0.486, 0.286]
        >>> round(float(lm.end_log_probs([(1,)]).exp()), 3)
        0.114
    """

    def __init__(self, num_classes: int, order: int = 3, blank: int = 0,
                 smoothing: str | float = "witten_bell") -> None:
        for name, value, low in (("num_classes", num_classes, 2), ("order", order, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CharNGramLM: {name} must be an int >= {low}, got {value!r}")
        if isinstance(blank, bool) or not isinstance(blank, int) \
                or not -num_classes <= blank < num_classes:
            raise ValueError(f"CharNGramLM: blank={blank!r} is outside the {num_classes} "
                             f"classes")
        if smoothing != "witten_bell" and (isinstance(smoothing, bool) or not isinstance(
                smoothing, (int, float)) or not 0 < smoothing < math.inf):
            raise ValueError(f"CharNGramLM: smoothing must be 'witten_bell' or a positive "
                             f"number, got {smoothing!r}")
        self.num_classes = num_classes
        self.order = order
        self.blank = blank % num_classes
        self.smoothing = smoothing
        # the blank's index stands for "begin" in contexts and for "end" as an outcome
        self._counts: list[dict[tuple[int, ...], Counter[int]]] | None = None
        self._cache: dict[tuple[int, ...], Tensor] = {}
        # the distributions asked for so far as rows of one matrix, so a query is one gather
        self._row_of: dict[tuple[int, ...], int] = {}
        self._matrix = torch.zeros((0, num_classes), dtype=torch.float64)

    def fit(self, sequences: Iterable[Sequence[int] | Tensor]) -> CharNGramLM:
        """Count the n-grams of ``sequences`` (label ids, no blank); replaces earlier counts."""
        counts: list[dict[tuple[int, ...], Counter[int]]] = [{} for _ in range(self.order)]
        edge = self.blank
        number = 0
        for index, seq in enumerate(sequences):
            seq = seq.tolist() if isinstance(seq, Tensor) else list(seq)
            for value in seq:
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not 0 <= value < self.num_classes or value == self.blank:
                    raise ValueError(f"CharNGramLM.fit: sequence {index} holds {value!r}; labels "
                                     f"are ints in 0..{self.num_classes - 1} other than the "
                                     f"blank {self.blank}")
            padded = [edge] * (self.order - 1) + seq + [edge]
            for i in range(self.order - 1, len(padded)):
                for n in range(self.order):                 # context of n labels
                    context = tuple(padded[i - n:i])
                    counts[n].setdefault(context, Counter())[padded[i]] += 1
            number += 1
        if number == 0:
            raise ValueError("CharNGramLM.fit: no sequences to count")
        self._counts = counts
        self._cache = {}
        self._row_of = {}
        self._matrix = torch.zeros((0, self.num_classes), dtype=torch.float64)
        return self

    def _distribution(self, context: tuple[int, ...]) -> Tensor:
        """``log P(. | context)`` (C,) float64, the end at the blank's index."""
        cached = self._cache.get(context)
        if cached is not None:
            return cached
        assert self._counts is not None
        probs = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)
        for n in range(len(context) + 1):
            seen = self._counts[n].get(context[len(context) - n:])
            if not seen:
                continue
            total = sum(seen.values())
            weight = len(seen) if self.smoothing == "witten_bell" else float(self.smoothing)
            observed = torch.zeros(self.num_classes, dtype=torch.float64)
            observed[list(seen)] = torch.tensor(list(seen.values()), dtype=torch.float64)
            probs = (observed + weight * probs) / (total + weight)
        result = probs.log()
        self._cache[context] = result
        return result

    def _contexts(self, prefixes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        if self._counts is None:
            raise RuntimeError("CharNGramLM: call fit(sequences) before scoring")
        width = self.order - 1
        begin = (self.blank,) * width
        return [(begin + tuple(p))[len(p):] if width else () for p in prefixes]

    def _table(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        contexts = self._contexts(prefixes)
        row_of = self._row_of
        new = [ctx for ctx in dict.fromkeys(contexts) if ctx not in row_of]
        if new:
            for ctx in new:
                row_of[ctx] = len(row_of)
            self._matrix = torch.cat([self._matrix,
                                      torch.stack([self._distribution(c) for c in new])])
        rows = torch.tensor([row_of[ctx] for ctx in contexts], dtype=torch.int64)   # (N,)
        return self._matrix[rows]                                                  # (N, C)

    def log_probs(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """``(N, C)`` float64: ``log P(next label | prefix)``; the blank column is ``-inf``."""
        table = self._table(prefixes).clone()
        table[:, self.blank] = _NEG_INF
        return table

    def end_log_probs(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """``(N,)`` float64: ``log P(end | prefix)``."""
        return self._table(prefixes)[:, self.blank].clone()

    def sequence_log_prob(self, labels: Sequence[int]) -> float:
        """``log P(labels, end)``: the sum of the next-label terms and the end term."""
        labels = list(labels)
        prefixes = [tuple(labels[:i]) for i in range(len(labels) + 1)]
        table = self._table(prefixes)                                     # (L + 1, C)
        steps = table[torch.arange(len(labels)), torch.tensor(labels, dtype=torch.int64)] \
            if labels else table.new_zeros(0)
        return float(steps.sum() + table[-1, self.blank])

    def __repr__(self) -> str:
        return (f"CharNGramLM(num_classes={self.num_classes}, order={self.order}, "
                f"blank={self.blank}, smoothing={self.smoothing!r})")


class LanguageModelScorer:
    """A trained :class:`~rnnkit.models.LanguageModel` as the ``lm`` of
    :func:`ctc_prefix_beam_search`.

    Each prefix is fed as ``[bos_token] + [label_to_token[y] for y in prefix]``; the logits
    after its last token give ``log P(next label)`` (the LM's softmax over its whole
    vocabulary, read at each label's token) and ``log P(end)`` at ``eos_token``. Prefixes are
    run as one padded batch (``lengths``) per call, in eval mode without gradients; results are
    cached per prefix (``cache_size`` entries, then the cache is cleared).

    Args:
        model: the language model (any module with ``model(ids (B, T), lengths=) -> (logits
            (B, T, V), ...)``).
        label_to_token: ``C`` token ids, one per class of the recognizer (the blank's entry is
            ignored; give any id).
        bos_token: the token the LM saw at the start of each sequence.
        eos_token: the token that ends a sequence; ``None``: no end term.
    """

    def __init__(self, model: torch.nn.Module, label_to_token: Sequence[int], *, bos_token: int,
                 eos_token: int | None = None, cache_size: int = 100_000) -> None:
        self.model = model
        self.tokens = torch.as_tensor(list(label_to_token), dtype=torch.int64)   # (C,)
        vocab = getattr(model, "vocab_size", None)
        ids = [*self.tokens.tolist(), bos_token] + ([] if eos_token is None else [eos_token])
        if vocab is not None and any(not 0 <= i < vocab for i in ids):
            raise ValueError(f"LanguageModelScorer: token ids {ids} must lie in the model's "
                             f"vocabulary 0..{vocab - 1}")
        self.bos_token = int(bos_token)
        self.eos_token = eos_token
        self.cache_size = int(cache_size)
        self._cache: dict[tuple[int, ...], Tensor] = {}

    def _log_softmax(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """``(N, V)`` float64 next-token log-probabilities after each prefix."""
        wanted = [tuple(p) for p in prefixes]
        missing = list(dict.fromkeys(p for p in wanted if p not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache = {}
            device = next(self.model.parameters()).device
            longest = max(len(p) for p in missing) + 1
            ids = torch.zeros((len(missing), longest), dtype=torch.int64)   # (N, L + 1)
            ids[:, 0] = self.bos_token
            for i, p in enumerate(missing):
                if p:
                    ids[i, 1:len(p) + 1] = self.tokens[list(p)]
            lengths = torch.tensor([len(p) + 1 for p in missing], dtype=torch.int64)
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    out = self.model(ids.to(device), lengths=lengths)
            finally:
                self.model.train(was_training)
            logits = out[0] if isinstance(out, (tuple, list)) else out          # (N, L+1, V)
            last = logits[torch.arange(len(missing)), lengths - 1].double().cpu()  # (N, V)
            for p, row in zip(missing, F.log_softmax(last, dim=-1), strict=True):
                self._cache[p] = row
        return torch.stack([self._cache[p] for p in wanted]) if wanted else \
            torch.zeros((0, 0), dtype=torch.float64)

    def log_probs(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """``(N, C)`` float64 ``log P(next label | prefix)`` (the blank's column is unused)."""
        if not prefixes:
            return torch.zeros((0, len(self.tokens)), dtype=torch.float64)
        return self._log_softmax(prefixes)[:, self.tokens]

    def end_log_probs(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """``(N,)`` float64 ``log P(eos | prefix)`` (zeros when there is no ``eos_token``)."""
        if self.eos_token is None or not prefixes:
            return torch.zeros(len(prefixes), dtype=torch.float64)
        return self._log_softmax(prefixes)[:, self.eos_token]
