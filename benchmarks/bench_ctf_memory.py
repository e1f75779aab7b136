"""CTF reading speed and memory: parse MB/s for dense and sparse files, and bounded memory.

Generates CTF files of ``--size-gb`` (default 2 GB) in a temporary folder, then, in a fresh
process each:

1. ``--kind dense`` / ``--kind sparse`` (both by default, at ``--speed-gb``): parses every
   chunk with ``CTFDeserializer.get_chunk`` and reports MB/s of file text per CPU second of
   that process (one core; ``time.process_time``, so other load on the machine does not
   count) and per wall second. The target is >= 80 MB/s for both (issue 9, item 2.11).
2. ``--kind mixed`` (dense features, a sparse label on each sequence's first line): reads
   every minibatch of one randomised sweep through ``MinibatchSource`` with its default
   chunking and randomisation window, checks that every sequence and sample arrived, and
   reports the process's peak resident set size (``ru_maxrss``). It fails if the reader adds
   ``LIMIT_MB`` or more above what importing torch and rnnkit costs (torch alone is ~270 MB
   with torch 2.13 on Linux, so a total limit would measure torch, not the reader).

    python benchmarks/bench_ctf_memory.py                      # all, 2 GB memory check
    python benchmarks/bench_ctf_memory.py --size-gb 0.1 --speed-gb 0.1
    python benchmarks/bench_ctf_memory.py --parser python      # the reference parser

The CPU model is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

LIMIT_MB = 100.0  # above the imports
TARGET_MB_S = 80.0
FEATURES = 8
LINES_PER_SEQUENCE = 10
CLASSES = 10
VOCABULARY = 10000
NONZEROS = 4


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bodies(kind: str, rng: np.random.Generator, block: int) -> list[str]:
    """The text after the id of each line of ``block`` sequences."""
    bodies = []
    if kind == "sparse":
        idx = rng.integers(0, VOCABULARY, size=(block * LINES_PER_SEQUENCE, NONZEROS))
        val = rng.standard_normal((block * LINES_PER_SEQUENCE, NONZEROS))
        for i, v in zip(idx, val, strict=True):
            bodies.append("|w " + " ".join(f"{a}:{b:.4f}" for a, b in zip(i, v, strict=True))
                          + "\n")
        return bodies
    values = rng.standard_normal((block * LINES_PER_SEQUENCE, FEATURES))
    labels = rng.integers(0, CLASSES, size=block)
    for s in range(block):
        for t in range(LINES_PER_SEQUENCE):
            row = " ".join(f"{v:.5f}" for v in values[s * LINES_PER_SEQUENCE + t])
            label = f" |y {labels[s]}:1" if kind == "mixed" and t == 0 else ""
            bodies.append(f"|x {row}{label}\n")
    return bodies


def generate(path: str, size_bytes: int, kind: str, seed: int = 0) -> tuple[int, int]:
    """Write sequences of LINES_PER_SEQUENCE lines until the file reaches ``size_bytes``.

    Returns (sequences, samples). Values are drawn once per block and reused with new ids,
    which keeps generation fast.
    """
    rng = np.random.default_rng(seed)
    block = 2000
    bodies = _bodies(kind, rng, block)
    sequences = written = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        while written < size_bytes:
            parts = []
            for s in range(block):
                sid = f"{sequences + s} "
                parts.extend(sid + bodies[s * LINES_PER_SEQUENCE + t]
                             for t in range(LINES_PER_SEQUENCE))
            text = "".join(parts)
            f.write(text)
            written += len(text)
            sequences += block
    return sequences, sequences * LINES_PER_SEQUENCE


def _streams(kind: str):
    from rnnkit.data.sources import StreamDef, StreamDefs

    if kind == "sparse":
        return StreamDefs(words=StreamDef(field="w", shape=VOCABULARY, is_sparse=True))
    if kind == "dense":
        return StreamDefs(features=StreamDef(field="x", shape=FEATURES))
    return StreamDefs(features=StreamDef(field="x", shape=FEATURES),
                      labels=StreamDef(field="y", shape=CLASSES, is_sparse=True))


def read_speed(path: str, kind: str, parser: str, n_seq: int) -> int:
    """Parse every chunk once in this (fresh) process: MB/s per CPU second and wall second."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rnnkit.data import _ctf_native
    from rnnkit.data.ctf import CTFDeserializer

    if parser != "python":
        _ctf_native.load()  # build or load outside the timing
    d = CTFDeserializer(path, _streams(kind), parser=parser)
    size = os.path.getsize(path)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sequences = sum(d.get_chunk(c).num_sequences for c in range(d.num_chunks))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rate = size / 1e6 / cpu
    native = _ctf_native.unavailable_reason() or "C++ fast path"
    print(f"{kind:6s} parse ({parser}: {native if parser != 'python' else 'Python'}): "
          f"{size / 1e6:.0f} MB in {cpu:.2f} CPU s = {rate:.1f} MB/s per core "
          f"({size / 1e6 / wall:.1f} MB/s wall), peak RSS {peak_rss_mb():.0f} MB")
    if sequences != n_seq:
        print(f"FAIL: {sequences} sequences, expected {n_seq}")
        return 1
    if parser != "python" and rate < TARGET_MB_S:
        print(f"FAIL: {rate:.1f} MB/s < {TARGET_MB_S:.0f} MB/s")
        return 1
    return 0


def read_sweep(path: str, minibatch: int, parser: str, n_seq: int, n_samples: int) -> int:
    """Read one randomised sweep in this (fresh) process and check its peak RSS."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rnnkit.data.ctf import CTFDeserializer
    from rnnkit.data.sources import MinibatchSource

    base = peak_rss_mb()
    print(f"reader: peak RSS after importing torch and rnnkit: {base:.1f} MB")
    size = os.path.getsize(path)
    source = MinibatchSource(CTFDeserializer(path, _streams("mixed"), parser=parser),
                             max_sweeps=1)
    t0 = time.perf_counter()
    seen_samples = seen_sequences = 0
    while mb := source.next_minibatch(minibatch):
        x = mb[source.streams.features]
        seen_samples += x.num_samples
        seen_sequences += x.num_sequences
        assert x.data.shape[-1] == FEATURES
        assert int(mb[source.streams.labels].indices[:, 0].min()) >= 0  # a label per sequence
    elapsed = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(f"sweep: {seen_sequences} sequences / {seen_samples} samples in {elapsed:.1f} s "
          f"({size / 1e6 / elapsed:.1f} MB/s through MinibatchSource), "
          f"{source.deserializer.num_chunks} chunks of "
          f"{source.deserializer.chunk_size / 2**20:.0f} MiB, window of {source.window} chunks")
    print(f"peak RSS: {peak:.1f} MB, {peak - base:.1f} MB above the imports "
          f"(limit {LIMIT_MB:.0f} MB)")
    if seen_samples != n_samples or seen_sequences != n_seq:
        print(f"FAIL: expected {n_seq} sequences / {n_samples} samples")
        return 1
    if peak - base >= LIMIT_MB:
        print(f"FAIL: the reader added {peak - base:.1f} MB >= {LIMIT_MB:.0f} MB")
        return 1
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="the memory check's file")
    parser.add_argument("--speed-gb", type=float, default=0.2, help="each speed file")
    parser.add_argument("--kind", choices=["dense", "sparse", "mixed", "all"], default="all")
    parser.add_argument("--parser", choices=["auto", "native", "python"], default="auto")
    parser.add_argument("--minibatch", type=int, default=2000, help="samples per minibatch")
    parser.add_argument("--dir", default=None, help="where to write the temporary files")
    parser.add_argument("--read", nargs=4, metavar=("KIND", "PATH", "SEQUENCES", "SAMPLES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.read:
        kind, path, n_seq, n_samples = args.read
        if kind == "mixed":
            return read_sweep(path, args.minibatch, args.parser, int(n_seq), int(n_samples))
        return read_speed(path, kind, args.parser, int(n_seq))

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    kinds = ["dense", "sparse", "mixed"] if args.kind == "all" else [args.kind]
    status = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind in kinds:
            path = os.path.join(tmp, f"{kind}.ctf")
            size = args.size_gb if kind == "mixed" else args.speed_gb
            t0 = time.perf_counter()
            n_seq, n_samples = generate(path, int(size * 1e9), kind)
            print(f"generated {kind} {os.path.getsize(path) / 1e9:.2f} GB ({n_seq} sequences, "
                  f"{n_samples} samples) in {time.perf_counter() - t0:.1f} s")
            # each read runs in a fresh process so its peak RSS is its own
            status |= subprocess.run([sys.executable, os.path.abspath(__file__), "--minibatch",
                                      str(args.minibatch), "--parser", args.parser, "--read",
                                      kind, path, str(n_seq), str(n_samples)]).returncode
            os.unlink(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
