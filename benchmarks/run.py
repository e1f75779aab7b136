"""rnnkit's benchmark suite (issue 5): ``python -m benchmarks.run`` (``make bench``).

Rows (float32 unless noted, input size = hidden size, 2 threads by default):

== ============================================================ ===========================
#  workload                                                     baseline in the same run
== ============================================================ ===========================
1  LSTM training, B=32, H=512, T=128                            torch.nn.LSTM
2  LSTM inference, B=64, H=1024, T=64                           torch.nn.LSTM
3  GRU training, B=32, H=512, T=128                             torch.nn.LSTM, torch.nn.GRU
4  LayerNorm-LSTM training, B=16, H=256, T=256                  torch.nn.LSTM
5  Peephole LSTM inference, B=64, H=1024, T=64                  torch.nn.LSTM
6  Elman tanh training, B=16, H=128, T=1024                     torch.nn.RNN
7  LSTM training, lengths uniform in [T/4, T], B=32, H=256,     torch.nn.LSTM on a
   T=256                                                        PackedSequence
8a LSTM training (row 1's shape)                                torch.nn.LSTMCell + loop
8b GRU training (row 3's shape)                                 torch.nn.GRUCell + loop
8c Elman tanh training (row 6's shape)                          torch.nn.RNNCell + loop
9a LSTM inference, precision="bf16", B=64, H=1024, T=64         float32 torch.nn.LSTM
9b GRU inference, precision="bf16", B=64, H=1024, T=64          float32 torch.nn.LSTM
== ============================================================ ===========================

Training = forward, ``output.sum().backward()``, gradients cleared each step; inference =
forward under ``torch.no_grad()`` in eval mode. Each row times its configurations and the
fastest GEMM interleaved (A B G A B G ...) and reports medians, the ratio to each baseline
and each configuration's efficiency (see :mod:`benchmarks.harness`).

Usage::

    python -m benchmarks.run                 # every row, writes docs/benchmarks.md + .json
    python -m benchmarks.run --rows 1,7 --reps 5
    python -m benchmarks.run --quick         # small shapes, prints only (add --out to write)

Rows whose target is not met are profiled (torch.profiler) on full runs and the profiles
are appended to the report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
LENGTH_POOL = 8  # distinct length draws cycled through by every configuration of a row


@dataclass(frozen=True)
class Workload:
    """Shapes and mode of one row: kind is "LSTM", "GRU" or "RNN" (tanh)."""

    kind: str
    batch: int
    hidden: int
    steps: int
    training: bool
    variable_lengths: bool = False

    @property
    def input_size(self) -> int:
        return self.hidden

    def describe(self) -> str:
        text = f"B={self.batch}, H={self.hidden}, T={self.steps}"
        if self.variable_lengths:
            text += f", lengths uniform in [{self.steps // 4}, {self.steps}]"
        return text


@dataclass(frozen=True)
class Target:
    """Candidate time / baseline time must be <= ``limit``; ``text`` is how the issue says it."""

    limit: float | None
    text: str

    def met(self, ratio: float) -> bool | None:
        if self.limit is None or ratio != ratio:
            return None
        return ratio <= self.limit


REPORT = Target(None, "report the ratio")


@dataclass
class Setup:
    """Data shared by all configurations of a row (same inputs, same lengths)."""

    workload: Workload
    inputs: torch.Tensor  # (T, B, H_in)
    lengths: list[torch.Tensor] = field(default_factory=list)  # LENGTH_POOL x (B,)

    def useful_steps(self) -> float:
        """Sequence steps actually computed per call (B*T, or the mean sum of lengths)."""
        if not self.lengths:
            return float(self.workload.batch * self.workload.steps)
        return sum(float(n.sum()) for n in self.lengths) / len(self.lengths)

    def flops(self) -> float:
        """Matrix-product FLOPs of one call (training: forward + backward = 3x forward)."""
        w = self.workload
        gates = GATES[w.kind] * w.hidden
        forward = 2.0 * self.useful_steps() * (w.input_size * gates + w.hidden * gates)
        return 3.0 * forward if w.training else forward


Builder = Callable[[Setup], tuple[Callable[[], object], nn.Module | None]]


@dataclass(frozen=True)
class Config:
    """A way to run a row's workload: ``build(setup)`` returns (step, module or None)."""

    label: str
    build: Builder
    precision: str = "fp32"


@dataclass(frozen=True)
class Row:
    id: str
    title: str
    workload: Workload
    candidate: Config
    baselines: tuple[tuple[Config, Target], ...]


# ----------------------------------------------------------------------------- steps


def _step(module: nn.Module, setup: Setup, call: Callable[[torch.Tensor, int], torch.Tensor],
          precision: str = "fp32") -> Callable[[], object]:
    """One training or inference step of ``module`` on the row's inputs."""
    params = list(module.parameters())
    counter = [0]
    x = setup.inputs
    if setup.workload.training:
        module.train()

        def train_step() -> object:
            for p in params:
                p.grad = None
            out = call(x, counter[0])
            counter[0] += 1
            out.sum().backward()
            return out

        return train_step
    module.eval()

    def infer_step() -> object:
        import rnnkit.engine

        with torch.no_grad(), rnnkit.engine.precision(precision):
            out = call(x, counter[0])
        counter[0] += 1
        return out

    return infer_step


def _lengths(setup: Setup, k: int) -> torch.Tensor | None:
    return setup.lengths[k % len(setup.lengths)] if setup.lengths else None


def torch_module(kind: str) -> Builder:
    def build(setup: Setup):
        w = setup.workload
        torch.manual_seed(0)
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind]
        module = cls(w.input_size, w.hidden)
        return _step(module, setup, lambda x, k: module(x)[0]), module

    return build


def torch_packed(kind: str) -> Builder:
    """torch.nn on a PackedSequence, packed from the padded batch and padded back each call."""
    def build(setup: Setup):
        w = setup.workload
        torch.manual_seed(0)
        module = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind](w.input_size, w.hidden)

        def call(x: torch.Tensor, k: int) -> torch.Tensor:
            packed = pack_padded_sequence(x, _lengths(setup, k), enforce_sorted=False)
            out, _ = module(packed)
            return pad_packed_sequence(out, total_length=x.size(0))[0]

        return _step(module, setup, call), module

    return build


def torch_cell_loop(kind: str) -> Builder:
    """What users write without rnnkit: a torch.nn *Cell stepped in a Python loop."""
    def build(setup: Setup):
        w = setup.workload
        torch.manual_seed(0)
        cell = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell, "RNN": nn.RNNCell}[kind](
            w.input_size, w.hidden)

        def call(x: torch.Tensor, k: int) -> torch.Tensor:
            h = x.new_zeros(x.size(1), w.hidden)
            state = (h, h) if kind == "LSTM" else h
            outs = []
            for x_t in x.unbind(0):
                state = cell(x_t, state)
                outs.append(state[0] if kind == "LSTM" else state)
            return torch.stack(outs)

        return _step(cell, setup, call), cell

    return build


def rnnkit_module(kind: str, precision: str = "fp32", **options: object) -> Builder:
    def build(setup: Setup):
        import rnnkit

        w = setup.workload
        torch.manual_seed(0)
        module = getattr(rnnkit, kind)(w.input_size, w.hidden, **options)

        def call(x: torch.Tensor, k: int) -> torch.Tensor:
            return module(x, lengths=_lengths(setup, k))[0]

        return _step(module, setup, call, precision), module

    return build


def _rnnkit(kind: str, precision: str = "fp32", **options: object) -> Config:
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    if precision != "fp32":
        extra += f", precision={precision!r}"
    return Config(f"rnnkit.{kind}({extra.lstrip(', ')})", rnnkit_module(kind, precision,
                                                                     **options), precision)


def _torch(kind: str) -> Config:
    return Config(f"torch.nn.{kind}", torch_module(kind))


ROWS: tuple[Row, ...] = (
    Row("1", "LSTM training", Workload("LSTM", 32, 512, 128, True), _rnnkit("LSTM"),
        ((_torch("LSTM"), Target(1.05, "<= 1.05x")),)),
    Row("2", "LSTM inference", Workload("LSTM", 64, 1024, 64, False), _rnnkit("LSTM"),
        ((_torch("LSTM"), Target(1.05, "<= 1.05x")),)),
    Row("3", "GRU training", Workload("GRU", 32, 512, 128, True), _rnnkit("GRU"),
        ((_torch("LSTM"), Target(0.8, "<= 0.8x nn.LSTM")),
         (_torch("GRU"), Target(1.0, "<= 1.0x nn.GRU")))),
    Row("4", "LayerNorm-LSTM training", Workload("LSTM", 16, 256, 256, True),
        _rnnkit("LSTM", layer_norm=True), ((_torch("LSTM"), Target(1.3, "<= 1.3x")),)),
    Row("5", "Peephole LSTM inference", Workload("LSTM", 64, 1024, 64, False),
        _rnnkit("LSTM", peepholes=True), ((_torch("LSTM"), Target(1.2, "<= 1.2x")),)),
    Row("6", "Elman tanh training", Workload("RNN", 16, 128, 1024, True), _rnnkit("RNN"),
        ((_torch("RNN"), Target(1 / 3, ">= 3x faster")),)),
    Row("7", "LSTM training, variable lengths", Workload("LSTM", 32, 256, 256, True, True),
        _rnnkit("LSTM"),
        ((Config("torch.nn.LSTM on PackedSequence", torch_packed("LSTM")),
          Target(0.5, ">= 2x faster")),)),
    Row("8a", "LSTM training vs Cell loop", Workload("LSTM", 32, 512, 128, True),
        _rnnkit("LSTM"), ((Config("torch.nn.LSTMCell + loop", torch_cell_loop("LSTM")),
                           REPORT),)),
    Row("8b", "GRU training vs Cell loop", Workload("GRU", 32, 512, 128, True),
        _rnnkit("GRU"), ((Config("torch.nn.GRUCell + loop", torch_cell_loop("GRU")), REPORT),)),
    Row("8c", "Elman tanh training vs Cell loop", Workload("RNN", 16, 128, 1024, True),
        _rnnkit("RNN"), ((Config("torch.nn.RNNCell + loop", torch_cell_loop("RNN")), REPORT),)),
    Row("9a", "LSTM inference, bf16", Workload("LSTM", 64, 1024, 64, False),
        _rnnkit("LSTM", precision="bf16"),
        ((Config("torch.nn.LSTM (float32)", torch_module("LSTM")), Target(0.5, ">= 2x faster")),)),
    Row("9b", "GRU inference, bf16", Workload("GRU", 64, 1024, 64, False),
        _rnnkit("GRU", precision="bf16"),
        ((Config("torch.nn.LSTM (float32)", torch_module("LSTM")), Target(0.5, ">= 2x faster")),)),
)

SIZES = {
    "full": lambda w: w,
    "quick": lambda w: replace(w, batch=max(4, w.batch // 4), hidden=max(32, w.hidden // 4),
                               steps=max(16, w.steps // 4)),
    "tiny": lambda w: replace(w, batch=3, hidden=8, steps=8),
}


# ----------------------------------------------------------------------------- running


def make_setup(workload: Workload, seed: int = 0) -> Setup:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(workload.steps, workload.batch, workload.input_size, generator=g)
    lengths = []
    if workload.variable_lengths:
        low = max(1, workload.steps // 4)
        lengths = [torch.randint(low, workload.steps + 1, (workload.batch,), generator=g)
                   for _ in range(LENGTH_POOL)]
    return Setup(workload, inputs, lengths)


def _path_of(module: nn.Module | None, setup: Setup, precision: str) -> str:
    """The engine path rnnkit takes for this module (from rnnkit.engine.explain)."""
    if module is None or not type(module).__module__.startswith("rnnkit"):
        return ""
    import rnnkit.engine

    with rnnkit.engine.precision(precision):
        text = rnnkit.engine.explain(module, setup.inputs, _lengths(setup, 0))
    lines = text.splitlines()[2:]
    head = lines[0].removeprefix("path: ") if lines else ""
    if head.startswith("fused"):
        why = next((ln.strip() for ln in lines if ln.strip().startswith("why:")), "")
        return "fused: " + why.split("; ", 1)[-1]
    paths = sorted({ln.split("-> ", 1)[1].split(" ", 1)[0] for ln in lines[1:] if "-> " in ln})
    return "per layer: " + "/".join(paths) if paths else head


def bf16_error(row: Row, setup: Setup) -> str:
    """Max abs error (and relative to the output's max) of the bf16 output vs float32."""
    step, module = row.candidate.build(setup)
    import rnnkit.engine

    module.eval()
    with torch.no_grad():
        ref = module(setup.inputs)[0]
        with rnnkit.engine.precision("bf16"):
            out = module(setup.inputs)[0]
    err = float((out.float() - ref).abs().max())
    return f"bf16 max abs error vs float32 {err:.2e} (outputs up to {float(ref.abs().max()):.2f})"


def profile_config(config: Config, setup: Setup, steps: int = 2, rows: int = 12) -> str:
    """torch.profiler's table of the ops where ``config`` spends its time (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = config.build(setup)
    step()  # warm up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"{config.label}, {steps} steps:\n{table}"


def run_row(row: Row, size: str, reps: int, warmup: int, log=print,
            profile_unmet: bool = False) -> dict[str, object]:
    workload = SIZES[size](row.workload)
    setup = make_setup(workload)
    w = workload
    # the fastest GEMM found: every variant, on the row's own (T*B, H_in+H, G*H) product and
    # on a square product with the row's FLOP count; the fastest by GFLOP/s is interleaved
    row_shape = (w.batch * w.steps, w.input_size + w.hidden, GATES[w.kind] * w.hidden)
    gemm_name, gemm_shape, gemm_step, _ = harness.fastest_gemm_over(
        [row_shape, harness.cube_with_flops(setup.flops())], reps=3 if reps > 3 else 1)
    configs = [row.candidate] + [config for config, _ in row.baselines]
    steps, modules = {}, {}
    for config in configs:
        steps[config.label], modules[config.label] = config.build(setup)
    steps["gemm"] = gemm_step
    log(f"row {row.id}: {row.title} ({workload.describe()}), {reps} reps ...")
    timings = harness.interleave(steps, reps=reps, warmup=warmup)
    gemm_seconds = timings["gemm"].median
    gemm_scale = setup.flops() / harness.gemm_flops(*gemm_shape)
    equivalent = gemm_seconds * gemm_scale  # one GEMM with the row's FLOP count

    def summary(config: Config) -> dict[str, object]:
        t = timings[config.label]
        return {
            "label": config.label,
            "median_s": t.median,
            "seconds": t.seconds,
            "error": t.error,
            "efficiency": equivalent / t.median if t.seconds else None,
            "path": _path_of(modules[config.label], setup, config.precision),
        }

    result: dict[str, object] = {
        "id": row.id,
        "title": row.title,
        "workload": workload.describe(),
        "flops": setup.flops(),
        "gemm": {"variant": gemm_name, "shape": gemm_shape, "median_s": gemm_seconds,
                 "gflops": harness.gemm_flops(*gemm_shape) / gemm_seconds / 1e9,
                 "equivalent_s": equivalent},
        "candidate": summary(row.candidate),
        "baselines": [],
        "notes": [],
    }
    cand = timings[row.candidate.label].median
    for config, target in row.baselines:
        base = summary(config)
        ratio = cand / base["median_s"] if base["seconds"] else float("nan")
        base.update(ratio=ratio, target=target.text, met=target.met(ratio))
        result["baselines"].append(base)
    if row.candidate.precision == "bf16":
        result["notes"].append(bf16_error(row, setup))
    unmet = [b for b in result["baselines"] if b["met"] is False]
    if profile_unmet and unmet:
        log(f"row {row.id}: target not met, profiling {row.candidate.label} ...")
        result["profile"] = profile_config(row.candidate, setup)
        worst = max(unmet, key=lambda b: b["ratio"])
        baseline = next(c for c, _ in row.baselines if c.label == worst["label"])
        result["profile_baseline"] = profile_config(baseline, setup)
    return result


def to_markdown(results: list[dict[str, object]], env: dict[str, object], size: str,
                reps: int) -> str:
    lines = [
        "# rnnkit benchmarks",
        "",
        f"- CPU: {env['cpu']}",
        f"- torch {env['torch']}, Python {env['python']}, {env['threads']} threads, "
        f"oneDNN {'on' if env['mkldnn'] else 'off'}",
        f"- date: {env['date']}; sizes: {size}; {reps} timed repetitions per configuration, "
        f"interleaved, median reported",
        "- ratio = rnnkit time / baseline time (below 1 is faster); efficiency = time of one "
        "plain GEMM with the row's FLOP count (the fastest GEMM found: torch.mm / mm(out=) / "
        "addmm / F.linear on the row's own product and on a square one, timed in the same "
        "interleaving) / the configuration's time",
        "- produced by `python -m benchmarks.run`; raw timings in benchmarks.json",
        "",
        "| # | workload | rnnkit (path) | baseline | rnnkit ms | baseline ms | ratio | target "
        "| met | efficiency rnnkit / baseline | notes |",
        "|---|---|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in results:
        if r.get("crashed"):
            lines.append(f"| {r['id']} | {r['title']}, {r['workload']} | - | - | - | - | - | - "
                         f"| **no** | - | {harness.markdown_cell(r['crashed'])} |")
            continue
        cand = r["candidate"]
        for base in r["baselines"]:
            met = {True: "yes", False: "**no**", None: "-"}[base["met"]]
            eff = (f"{cand['efficiency']:.2f} / {base['efficiency']:.2f}"
                   if cand["efficiency"] and base["efficiency"] else "-")
            notes = list(r["notes"])
            for who in (cand, base):
                if who["error"]:
                    notes.append(f"{who['label']} failed: {who['error']}")
            path = f"{cand['label']} ({cand['path']})" if cand["path"] else cand["label"]
            ratio = base["ratio"]
            lines.append("| " + " | ".join(harness.markdown_cell(c) for c in (
                r["id"], f"{r['title']}, {r['workload']}", path, base["label"],
                harness.fmt_ms(cand["median_s"]), harness.fmt_ms(base["median_s"]),
                f"{ratio:.2f}" if ratio == ratio else "-", base["target"], met, eff,
                "; ".join(notes),
            )) + " |")
    lines += ["", "GEMM reference per row: " + "; ".join(
        f"{r['id']}: {r['gemm']['variant']} {tuple(r['gemm']['shape'])} "
        f"{r['gemm']['gflops']:.1f} GFLOP/s" for r in results if "gemm" in r), ""]
    profiled = [r for r in results if r.get("profile")]
    if profiled:
        lines += ["## Profiles of the rows whose target was not met", "",
                  "torch.profiler, self CPU time, candidate then the baseline it missed "
                  "(the time inside rnnkit's C++ kernels shows as the autograd Function "
                  "that calls them).", ""]
        for r in profiled:
            lines += [f"### Row {r['id']}: {r['title']}, {r['workload']}", "", "```",
                      r["profile"].rstrip(), "", r["profile_baseline"].rstrip(), "```", ""]
    return "\n".join(lines)


def run_row_isolated(row: Row, size: str, reps: int, warmup: int, threads: int,
                     profile: bool) -> dict[str, object]:
    """``run_row`` in a child process, so that a crashing kernel costs one row, not the run.

    The child's log lines stream through; its result comes back as JSON in a temporary file.
    """
    import json
    import os
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rnnkit-bench-") as tmp:
        result_path = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "benchmarks.run", "--_row-json", str(result_path),
                   "--rows", row.id, "--size", size, "--reps", str(reps), "--warmup",
                   str(warmup), "--threads", str(threads), "--profile",
                   "yes" if profile else "no"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        code = subprocess.call(command, cwd=ROOT, env=env)
        if code == 0 and result_path.exists():
            return json.loads(result_path.read_text())
    if code < 0:
        try:
            why = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            why = f"killed by signal {-code}"
    else:
        why = f"exited with code {code}"
    print(f"row {row.id}: the benchmark process {why}", flush=True)
    return {"id": row.id, "title": row.title, "workload": SIZES[size](row.workload).describe(),
            "crashed": f"benchmark process {why}"}


def select_rows(spec: str | None) -> list[Row]:
    """Rows named in ``spec`` ("1,3,9" — "9" selects 9a and 9b); all when None."""
    if not spec:
        return list(ROWS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [row for row in ROWS if any(row.id == w or row.id.rstrip("abc") == w
                                         for w in wanted)]
    unknown = [w for w in wanted if not any(r.id == w or r.id.rstrip("abc") == w for r in ROWS)]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; rows are "
                         f"{', '.join(r.id for r in ROWS)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", help="comma-separated row ids, e.g. 1,3,9 (default: all)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per configuration (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes for development; writes only with --out")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="shape preset (full, quick, tiny); --quick means quick")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"Markdown report (JSON beside it); default {DEFAULT_OUT} for "
                             f"full runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--profile", choices=("auto", "yes", "no"), default="auto",
                        help="profile rows whose target is not met (auto: on full runs)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run every row in this process (default: one child process per "
                             "row, so a crash costs only that row)")
    parser.add_argument("--_row-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = args.size or ("quick" if args.quick else "full")
    reps = args.reps if args.reps is not None else (10 if size == "full" else 3)
    if reps < 1:
        parser.error(f"--reps must be >= 1, got {reps}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    rows = select_rows(args.rows)
    torch.set_num_threads(args.threads)
    env = harness.environment(args.threads)
    print(f"CPU: {env['cpu']}; torch {env['torch']}; {args.threads} threads; sizes {size}",
          flush=True)
    profile = args.profile == "yes" or (args.profile == "auto" and size == "full")
    if args._row_json is not None:  # child of run_row_isolated: one row, result as JSON
        result = run_row(rows[0], size, reps, args.warmup, log=lambda m: print(m, flush=True),
                         profile_unmet=profile)
        args._row_json.write_text(harness.dumps(result))
        return 0
    results = []
    for row in rows:
        if args.no_isolate:
            results.append(run_row(row, size, reps, args.warmup,
                                   log=lambda m: print(m, flush=True), profile_unmet=profile))
        else:
            results.append(run_row_isolated(row, size, reps, args.warmup, args.threads,
                                            profile))
    text = to_markdown(results, env, size, reps)
    print(text)
    out = args.out if args.out is not None else (DEFAULT_OUT if size == "full" else None)
    if out is not None and not args.no_write:
        harness.write_atomic(out, text)
        harness.write_atomic(out.with_suffix(".json"), harness.dumps(
            {"environment": env, "size": size, "reps": reps, "rows": results}))
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
