"""Reading a CTF file larger than memory: peak resident memory must stay under 300 MB.

Generates a CTF file of ``--size-gb`` (default 2 GB) in a temporary folder, then, in a fresh
process, reads every minibatch of one randomised sweep through ``MinibatchSource`` with its
default chunking and randomisation window, checks that every sequence and sample arrived, and
reports that process's peak resident set size (``ru_maxrss``, torch included) next to the CPU
model. Exits non-zero if the peak is 300 MB or more.

    python benchmarks/bench_ctf_memory.py              # the 2 GB check
    python benchmarks/bench_ctf_memory.py --size-gb 0.1
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

LIMIT_MB = 300.0
FEATURES = 8
LINES_PER_SEQUENCE = 10
CLASSES = 10


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


def generate(path: str, size_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write sequences of LINES_PER_SEQUENCE lines until the file reaches ``size_bytes``.

    Returns (sequences, samples). Values are drawn once per block and reused with new ids,
    which keeps generation fast; ids stay unique, so the reader's adjacency check holds.
    """
    rng = np.random.default_rng(seed)
    block_sequences = 2000
    values = rng.standard_normal((block_sequences * LINES_PER_SEQUENCE, FEATURES))
    labels = rng.integers(0, CLASSES, size=block_sequences)
    bodies = []
    for s in range(block_sequences):
        for t in range(LINES_PER_SEQUENCE):
            row = " ".join(f"{v:.5f}" for v in values[s * LINES_PER_SEQUENCE + t])
            label = f" |y {labels[s]}:1" if t == 0 else ""
            bodies.append(f"|x {row}{label}\n")
    sequences = 0
    written = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        while written < size_bytes:
            parts = []
            for s in range(block_sequences):
                sid = f"{sequences + s} "
                parts.extend(sid + bodies[s * LINES_PER_SEQUENCE + t]
                             for t in range(LINES_PER_SEQUENCE))
            text = "".join(parts)
            f.write(text)
            written += len(text)
            sequences += block_sequences
    return sequences, sequences * LINES_PER_SEQUENCE


def read(path: str, minibatch: int, n_seq: int, n_samples: int) -> int:
    """Read one randomised sweep in this (fresh) process and check its peak RSS."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rnnkit.data.ctf import CTFDeserializer
    from rnnkit.data.sources import MinibatchSource, StreamDef, StreamDefs

    base = peak_rss_mb()
    print(f"reader: peak RSS after importing torch and rnnkit: {base:.1f} MB")
    size = os.path.getsize(path)
    streams = StreamDefs(features=StreamDef(field="x", shape=FEATURES),
                         labels=StreamDef(field="y", shape=CLASSES, is_sparse=True))
    source = MinibatchSource(CTFDeserializer(path, streams), max_sweeps=1)
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
    print(f"read {seen_sequences} sequences / {seen_samples} samples in {elapsed:.1f} s "
          f"({size / 1e6 / elapsed:.1f} MB/s), {source.deserializer.num_chunks} chunks of "
          f"{source.deserializer.chunk_size / 2**20:.0f} MiB, window of {source.window} chunks")
    print(f"peak RSS: {peak:.1f} MB (limit {LIMIT_MB:.0f} MB; {peak - base:.1f} MB above the "
          "imports)")
    if seen_samples != n_samples or seen_sequences != n_seq:
        print(f"FAIL: expected {n_seq} sequences / {n_samples} samples")
        return 1
    if peak >= LIMIT_MB:
        print(f"FAIL: peak RSS {peak:.1f} MB >= {LIMIT_MB:.0f} MB")
        return 1
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--minibatch", type=int, default=2000, help="samples per minibatch")
    parser.add_argument("--dir", default=None, help="where to write the temporary file")
    parser.add_argument("--read", nargs=3, metavar=("PATH", "SEQUENCES", "SAMPLES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.read:
        return read(args.read[0], args.minibatch, int(args.read[1]), int(args.read[2]))

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "large.ctf")
        t0 = time.perf_counter()
        n_seq, n_samples = generate(path, int(args.size_gb * 1e9))
        print(f"generated {os.path.getsize(path) / 1e9:.2f} GB ({n_seq} sequences, "
              f"{n_samples} samples) in {time.perf_counter() - t0:.1f} s")
        # the reader runs in a fresh process so its peak RSS is its own, not the generator's
        return subprocess.run([sys.executable, os.path.abspath(__file__), "--minibatch",
                               str(args.minibatch), "--read", path, str(n_seq),
                               str(n_samples)]).returncode


if __name__ == "__main__":
    sys.exit(main())
