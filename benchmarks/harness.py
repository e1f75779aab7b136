"""Benchmark harness: interleaved timing, medians, the fastest GEMM, atomic reports.

Every configuration of a row is timed in the same process, interleaved (A B A B ...), so slow
drift of the machine (other processes, frequency) hits all of them alike; the figure reported
is the median. A row's *efficiency* is the time one plain GEMM with the row's FLOP count takes
with the fastest GEMM found on this machine (measured inside the same interleaving), divided
by the row's time: 1.0 means the recurrence runs as fast as a single big matrix product.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

Step = Callable[[], object]


@dataclass
class Timing:
    """Wall-clock seconds of each repetition of one configuration."""

    name: str
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def interleave(steps: dict[str, Step], reps: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each step ``reps`` times, interleaved A B A B ...; ``warmup`` untimed calls first.

    A step that raises is recorded with its error and dropped from the remaining rounds.
    """
    timings = {name: Timing(name) for name in steps}
    live = dict(steps)
    for _ in range(warmup):
        for name, step in list(live.items()):
            try:
                step()
            except Exception as error:  # report, keep the other configurations running
                timings[name].error = f"{type(error).__name__}: {error}"
                del live[name]
    for _ in range(reps):
        for name, step in list(live.items()):
            start = time.perf_counter()
            try:
                step()
            except Exception as error:
                timings[name].error = f"{type(error).__name__}: {error}"
                del live[name]
                continue
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def first_call(step: Step) -> tuple[float, float, str]:
    """``(wall seconds, CPU seconds of this process and its finished children, error or "")``
    of one call of ``step``: what the first call of a path that compiles on first use costs."""

    def cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    start, start_cpu = time.perf_counter(), cpu()
    try:
        step()
    except Exception as error:
        return time.perf_counter() - start, cpu() - start_cpu, f"{type(error).__name__}: {error}"
    return time.perf_counter() - start, cpu() - start_cpu, ""


# ----------------------------------------------------------------------------- GEMM


def gemm_candidates(m: int, k: int, n: int, dtype=torch.float32) -> dict[str, Step]:
    """Ways to compute a float32 (m, k) x (k, n) product with what torch ships."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g, dtype=dtype)
    b = torch.randn(k, n, generator=g, dtype=dtype)
    w = b.t().contiguous()  # (n, k): nn.Linear's layout
    bias = torch.zeros(n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    return {
        "torch.mm": lambda: torch.mm(a, b),
        "torch.mm(out=)": lambda: torch.mm(a, b, out=out),
        "F.linear": lambda: F.linear(a, w),
        "torch.addmm": lambda: torch.addmm(bias, a, w.t()),
    }


def gemm_flops(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def fastest_gemm(m: int, k: int, n: int, reps: int = 5) -> tuple[str, Step, float]:
    """The fastest GEMM variant for this shape: (name, step, GFLOP/s)."""
    candidates = gemm_candidates(m, k, n)
    timings = interleave(candidates, reps=reps, warmup=1)
    name = min(timings, key=lambda key: timings[key].median)
    rate = gemm_flops(m, k, n) / timings[name].median / 1e9
    return name, candidates[name], rate


def cube_with_flops(flops: float, multiple: int = 64, cap: int = 4096) -> tuple[int, int, int]:
    """A square GEMM shape (s, s, s) with about ``flops`` FLOPs (s a multiple of 64, capped)."""
    side = round((flops / 2.0) ** (1.0 / 3.0) / multiple) * multiple
    side = min(max(side, multiple), cap)
    return side, side, side


def fastest_gemm_over(shapes: list[tuple[int, int, int]], reps: int = 5) -> tuple[
        str, tuple[int, int, int], Step, float]:
    """The fastest (variant, shape) over several GEMM shapes, by GFLOP/s:
    (name, shape, step, GFLOP/s)."""
    best = None
    for shape in dict.fromkeys(shapes):  # unique, in order
        name, step, rate = fastest_gemm(*shape, reps=reps)
        if best is None or rate > best[3]:
            best = (name, shape, step, rate)
    assert best is not None
    return best


# ----------------------------------------------------------------------------- environment


def cpu_model() -> str:
    """``lscpu``'s model name with family/model numbers and the SIMD features that matter."""
    fields: dict[str, str] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              check=False).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    name = fields.get("Model name") or platform.processor() or "unknown CPU"
    flags = set(fields.get("Flags", "").split())
    extras = []
    if "CPU family" in fields:
        extras.append(f"family {fields['CPU family']} model {fields.get('Model', '?')}")
    if "CPU(s)" in fields:
        extras.append(f"{fields['CPU(s)']} CPUs")
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if flags:
        extras.append(" ".join(simd) if simd else "no AVX2")
    return f"{name} ({', '.join(extras)})" if extras else name


def environment(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }


# ----------------------------------------------------------------------------- writing


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half a file),
    with the mode ``open`` would give it (``rnnkit._files``: not ``mkstemp``'s 0o600)."""
    from rnnkit._files import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def fmt_ms(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def markdown_cell(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|")


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
