"""CTC decoding speed on the digit-string shape: ``python -m benchmarks.ctc_decoding``.

Times :func:`rnnkit.models.ctc_decoding.ctc_greedy_decode` and the batched
:func:`~rnnkit.models.ctc_decoding.ctc_prefix_beam_search` (beam 8 and 16, with and without a
trigram :class:`~rnnkit.models.ctc_decoding.CharNGramLM`) on ``B`` rows of ``T`` steps over
``C`` classes shaped like a trained recognizer's output (one class per step carries most of
the mass), against the same search written plainly with Python dicts (Hannun et al.'s
Algorithm 1, ``tests/models/ctc_reference.py``), which must return the same hypotheses.
Prints medians of ``--reps`` runs with the CPU model; one thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.harness import cpu_model
from rnnkit.models.ctc_decoding import CharNGramLM, ctc_greedy_decode, ctc_prefix_beam_search
from tests.models.ctc_reference import reference_prefix_beam_search


def recognizer_like(batch: int, steps: int, classes: int, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_probs (B, T, C)`` peaked on a path with blanks between labels, and lengths."""
    gen = torch.Generator().manual_seed(seed)
    path = torch.randint(1, classes, (batch, steps), generator=gen)
    path[:, 1::2] = 0
    logits = torch.randn(batch, steps, classes, generator=gen) \
        + 4.0 * torch.nn.functional.one_hot(path, classes)
    lengths = torch.randint(steps * 2 // 3, steps + 1, (batch,), generator=gen)
    return torch.log_softmax(logits, -1), lengths


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--plain-rows", type=int, default=20,
                        help="rows the plain dict version decodes (it is slow); its time is "
                             "scaled to --batch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log_probs, lengths = recognizer_like(args.batch, args.steps, args.classes)
    corpus = torch.randint(1, args.classes, (2000, 5), generator=torch.Generator().manual_seed(1))
    lm = CharNGramLM(args.classes, order=3).fit(corpus)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"B={args.batch}, T={args.steps}, C={args.classes}; median of {args.reps}")
    greedy = median_seconds(lambda: ctc_greedy_decode(log_probs, lengths), args.reps)
    print(f"  greedy                       {greedy:8.3f} s")
    rows = args.plain_rows
    for width in (8, 16):
        for name, opts in (("", {}), (" + trigram LM", {"lm": lm, "lm_weight": 0.5})):
            fast = median_seconds(lambda o=opts, w=width: ctc_prefix_beam_search(
                log_probs, lengths, beam_width=w, **o), args.reps)
            start = time.perf_counter()
            plain = [reference_prefix_beam_search(log_probs[r, :int(lengths[r])].tolist(),
                                                  beam_width=width, **opts)
                     for r in range(rows)]
            plain_time = (time.perf_counter() - start) * args.batch / rows
            batched = ctc_prefix_beam_search(log_probs[:rows], lengths[:rows],
                                             beam_width=width, **opts)
            same = all(b[0].labels == p[0][0] for b, p in zip(batched, plain, strict=True))
            print(f"  beam {width:2d}{name:14s}         {fast:8.3f} s   plain dicts "
                  f"{plain_time:8.3f} s (scaled from {rows} rows)   x{plain_time / fast:5.1f}"
                  f"   same best: {same}")


if __name__ == "__main__":
    main()
