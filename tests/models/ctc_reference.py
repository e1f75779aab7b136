"""CTC prefix beam search written plainly, one prefix at a time with Python dicts, as Hannun
et al. 2014 print it (Algorithm 1, in log space): the oracle for beams narrower than the
search space, where brute force no longer applies, and the baseline of
``benchmarks/ctc_decoding.py``."""

from __future__ import annotations

import math

NEG_INF = float("-inf")


def log_add(*values: float) -> float:
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


def reference_prefix_beam_search(log_probs, *, blank=0, beam_width=8, lm=None, lm_weight=0.0,
                                 insertion_bonus=0.0):
    """``log_probs``: ``T`` rows of ``C`` floats (one sequence). Returns ``[(labels, score,
    acoustic, lm_score), ...]`` best first."""
    lm_cache: dict[tuple[int, ...], float] = {(): 0.0}

    def lm_score(prefix):
        if lm is None:
            return 0.0
        if prefix not in lm_cache:
            parent = prefix[:-1]
            lm_cache[prefix] = lm_score(parent) + float(lm.log_probs([parent])[0, prefix[-1]])
        return lm_cache[prefix]

    def score(prefix, masses):
        total = log_add(*masses) + insertion_bonus * len(prefix)
        return total + lm_weight * lm_score(prefix) if lm_weight else total

    def add(nxt, prefix, which, value):
        masses = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
        masses[which] = log_add(masses[which], value)

    beams = {(): (0.0, NEG_INF)}                      # prefix -> (ends in blank, in a label)
    for row in log_probs:
        nxt: dict[tuple[int, ...], list[float]] = {}

        for prefix, (p_b, p_nb) in beams.items():
            for c, p in enumerate(row):
                if c == blank:
                    add(nxt, prefix, 0, log_add(p_b, p_nb) + p)
                    continue
                extended = prefix + (c,)
                if prefix and c == prefix[-1]:
                    add(nxt, extended, 1, p_b + p)         # a repeat needs a blank between
                    add(nxt, prefix, 1, p_nb + p)          # or merges into the last label
                else:
                    add(nxt, extended, 1, log_add(p_b, p_nb) + p)
        ranked = sorted(nxt.items(), key=lambda item: -score(*item))
        beams = {prefix: tuple(m) for prefix, m in ranked[:beam_width]
                 if log_add(*m) > NEG_INF}
    out = []
    for prefix, masses in beams.items():
        lm_total = lm_score(prefix)
        if lm is not None and hasattr(lm, "end_log_probs"):
            lm_total += float(lm.end_log_probs([prefix])[0])
        acoustic = log_add(*masses)
        total = acoustic + insertion_bonus * len(prefix) + (lm_weight * lm_total
                                                            if lm_weight else 0.0)
        out.append((prefix, total, acoustic, lm_total))
    out.sort(key=lambda r: -r[1])
    return out
