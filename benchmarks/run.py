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
9c Peephole LSTM inference, precision="bf16" (compiled kernels'  float32 torch.nn.LSTM
   bf16 GEMMs), B=64, H=1024, T=64
9d GRU inference, precision="bf16", engine="compiled" (compiled  float32 torch.nn.LSTM,
   kernels' bf16 GEMMs), B=64, H=1024, T=64                     torch.nn.GRU
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
import json
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
#: GEMM columns per kind, in multiples of H: (input projection, recurrent projection). The
#: cells of issue 15 (rows 10-16) are named as in rnnkit.cells; "TwoGate" is
#: benchmarks/user_cell.py; GroupedLSTM is groups=2 (block-diagonal: 4H/2 columns of H/2).
PROJECTIONS = {
    "LSTM": (4, 4), "GRU": (3, 3), "RNN": (1, 1),
    "UGRNN": (2, 2), "IndRNN": (1, 0), "GroupedLSTM": (2, 2), "NAS": (8, 8),
    "MinGRU": (2, 0), "MinLSTM": (3, 0), "TwoGate": (2, 2),
}
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
    features: int | None = None  # H_in when it differs from H (row 17)

    @property
    def input_size(self) -> int:
        return self.hidden if self.features is None else self.features

    def describe(self) -> str:
        text = f"B={self.batch}, H={self.hidden}, T={self.steps}"
        if self.features is not None:
            text += f", H_in={self.features}"
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

    def flops(self, kind: str | None = None) -> float:
        """Matrix-product FLOPs of one call of ``kind`` (default the row's) on this workload
        (training: forward + backward = 3x forward)."""
        w = self.workload
        into_input, into_hidden = PROJECTIONS[kind or w.kind]
        forward = 2.0 * self.useful_steps() * w.hidden * (
            w.input_size * into_input + w.hidden * into_hidden)
        return 3.0 * forward if w.training else forward


Builder = Callable[[Setup], tuple[Callable[[], object], nn.Module | None]]


@dataclass(frozen=True)
class Config:
    """A way to run a row's workload: ``build(setup)`` returns (step, module or None).

    ``kind`` names what it computes (a key of ``PROJECTIONS``) when that differs from the
    row's workload, e.g. the ``nn.LSTM`` baseline of a UGRNN row: its efficiency is then
    counted with its own GEMM FLOPs."""

    label: str
    build: Builder
    precision: str = "fp32"
    kind: str | None = None
    #: time the first call apart (trace and compile: what a user pays once per shape)
    first_call: bool = False


@dataclass(frozen=True)
class Row:
    id: str
    title: str
    workload: Workload
    candidate: Config
    baselines: tuple[tuple[Config, Target], ...]
    #: time every configuration alone and beside a CPU-bound neighbour process (row 16)
    neighbour: bool = False
    #: torch threads for this row alone (None: the run's --threads); row 17 runs one, as
    #: issue 13 row 2 does (tiny GEMMs: a second thread only adds barriers)
    threads: int | None = None


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


def torch_module(kind: str, **options: object) -> Builder:
    def build(setup: Setup):
        w = setup.workload
        torch.manual_seed(0)
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind]
        module = cls(w.input_size, w.hidden, **options)
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


def _torch(kind: str, **options: object) -> Config:
    extra = ", ".join(f"{k}={v!r}" for k, v in options.items())
    label = f"torch.nn.{kind}" + (f"({extra})" if extra else "")
    return Config(label, torch_module(kind, **options), kind=kind)


def rnnkit_recurrence(make_cell: Callable[[int, int], nn.Module], engine: str = "auto",
                      go_backwards: bool = False) -> Builder:
    """``rnnkit.Recurrence(make_cell(H_in, H))``: a cell through the generic driver."""
    def build(setup: Setup):
        import rnnkit

        w = setup.workload
        torch.manual_seed(0)
        module = rnnkit.Recurrence(make_cell(w.input_size, w.hidden), engine=engine,
                                   go_backwards=go_backwards)

        def call(x: torch.Tensor, k: int) -> torch.Tensor:
            return module(x, lengths=_lengths(setup, k))[0]

        return _step(module, setup, call), module

    return build


def _cell(name: str, **options: object) -> Callable[[int, int], nn.Module]:
    def make(input_size: int, hidden: int) -> nn.Module:
        if name == "TwoGateCell":
            from benchmarks.user_cell import TwoGateCell

            return TwoGateCell(input_size, hidden)
        import rnnkit.cells

        return getattr(rnnkit.cells, name)(input_size, hidden, **options)

    return make


def _recurrence(cell: str, engine: str = "auto", **options: object) -> Config:
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    forced = f", engine={engine!r}" if engine != "auto" else ""
    return Config(f"Recurrence({cell}({extra.lstrip(', ')}){forced})",
                  rnnkit_recurrence(_cell(cell, **options), engine))


#: Issue 15's cells (rows 10-15): row id, title, the kind (PROJECTIONS), the cell's class
#: name and options, the target as a ratio to nn.LSTM (None: report only).
CELL_ROWS = (
    ("10", "UGRNN", "UGRNN", "UGRNNCell", {}, 0.7),
    ("11", "IndRNN", "IndRNN", "IndRNNCell", {}, 0.5),
    ("12", "GroupedLSTM(groups=2)", "GroupedLSTM", "GroupedLSTMCell", {"groups": 2}, 0.9),
    ("13", "NAS", "NAS", "NASCell", {}, 2.2),
    ("14a", "MinGRU", "MinGRU", "MinGRUCell", {}, 0.3),
    ("14b", "MinLSTM", "MinLSTM", "MinLSTMCell", {}, 0.3),
    ("15", "user-written cell, two LSTM-like gates (benchmarks/user_cell.py)", "TwoGate",
     "TwoGateCell", {}, 1.0),
)
CELL_SHAPE = (32, 256, 128)  # B, H (= H_in), T: issue 15's training step
#: rows whose candidate forces a path: the user-written cell runs the generic fast path,
#: which is opt-in (engine="auto" keeps a user's cell on the loop: docs/engine.md)
CELL_ENGINES = {"15": "inductor"}


def _cell_rows() -> tuple[Row, ...]:
    batch, hidden, steps = CELL_SHAPE
    rows = []
    for row_id, title, kind, cell, options, limit in CELL_ROWS:
        baselines: list[tuple[Config, Target]] = [
            (_torch("LSTM"), Target(limit, f"<= {limit}x nn.LSTM"))]
        # the eager loop of the same cell, interleaved: what the new path gains over it (the
        # issue's second target for the user-written cell: >= 2x faster than its own loop)
        baselines.append((replace(_recurrence(cell, engine="loop", **options), kind=kind),
                          Target(0.5, ">= 2x faster than its loop") if row_id == "15"
                          else REPORT))
        engine = CELL_ENGINES.get(row_id, "auto")
        candidate = replace(_recurrence(cell, engine=engine, **options), kind=kind,
                            first_call=engine == "inductor")
        rows.append(Row(row_id, f"{title} training", Workload(kind, batch, hidden, steps, True),
                        candidate, tuple(baselines)))
    return tuple(rows)


#: Row 16: each compiled kernel's training step beside a CPU-bound neighbour process
#: (issue 15, "steady under load"): slowdown (with / without the neighbour) next to
#: nn.LSTM's, both interleaved in the same run.
LOAD_ROWS = (
    ("16a", "LSTM", "LSTMCell", {}),
    ("16b", "LayerNorm-LSTM", "LSTMCell", {"layer_norm": True}),
    ("16c", "GRU", "GRUCell", {}),
    ("16d", "Elman tanh", "ElmanCell", {}),
    ("16e", "UGRNN", "UGRNNCell", {}),
    ("16f", "IndRNN", "IndRNNCell", {}),
    ("16g", "GroupedLSTM(groups=2)", "GroupedLSTMCell", {"groups": 2}),
    ("16h", "NAS", "NASCell", {}),
    ("16i", "user-written cell (engine='inductor', row 15)", "TwoGateCell",
     {"engine": "inductor"}),
)
LOAD_KINDS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "ElmanCell": "RNN", "UGRNNCell": "UGRNN",
              "IndRNNCell": "IndRNN", "GroupedLSTMCell": "GroupedLSTM", "NASCell": "NAS",
              "TwoGateCell": "TwoGate"}


def _load_rows() -> tuple[Row, ...]:
    batch, hidden, steps = CELL_SHAPE
    return tuple(
        Row(row_id, f"{title} training beside a CPU-bound neighbour",
            Workload(LOAD_KINDS[cell], batch, hidden, steps, True),
            replace(_recurrence(cell, **options), kind=LOAD_KINDS[cell],
                    first_call=options.get("engine") == "inductor"),
            ((_torch("LSTM"), REPORT),), neighbour=True)
        for row_id, title, cell, options in LOAD_ROWS)


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
    # Rows 9c/9d: the compiled kernels' bf16 GEMMs (docs/engine-compiled.md, "bf16"). Only a
    # CPU with AVX512-bf16/AMX can meet the target; elsewhere the GEMMs are emulated.
    Row("9c", "Peephole LSTM inference, bf16 GEMMs (compiled)",
        Workload("LSTM", 64, 1024, 64, False), _rnnkit("LSTM", precision="bf16", peepholes=True),
        ((Config("torch.nn.LSTM (float32)", torch_module("LSTM")), Target(0.5, ">= 2x faster")),)),
    Row("9d", "GRU inference, bf16 GEMMs (compiled)", Workload("GRU", 64, 1024, 64, False),
        _rnnkit("GRU", precision="bf16", engine="compiled"),
        ((Config("torch.nn.LSTM (float32)", torch_module("LSTM")), Target(0.5, ">= 2x faster")),
         (Config("torch.nn.GRU (float32)", torch_module("GRU")), REPORT))),
) + _cell_rows() + _load_rows() + (
    # Row 17: the per-call cost of a small drop-in (issue 13 row 2's SimpleRNN(16, relu) on
    # Fashion-MNIST rows: B=100, T=28, H_in=28), where Python around the kernel, not the
    # kernel, sets the time (docs/engine.md, "Per-call overhead").
    Row("17a", "Small Elman relu training (per-call cost)",
        Workload("RNN", 100, 16, 28, True, features=28), _rnnkit("RNN", nonlinearity="relu"),
        ((_torch("RNN", nonlinearity="relu"), Target(1 / 3, ">= 3x faster")),), threads=1),
    Row("17b", "Small Elman relu inference (per-call cost)",
        Workload("RNN", 100, 16, 28, False, features=28), _rnnkit("RNN", nonlinearity="relu"),
        ((_torch("RNN", nonlinearity="relu"), REPORT),), threads=1),
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
    if head.strip().startswith("forward: ") and "-> " in head:  # a driver (Recurrence): one
        # cell, "forward: Cell -> path (why)"; the path's name and, on the loop, why
        path = head.split("-> ", 1)[1].split(";")[0]
        return path + ")" * (path.count("(") - path.count(")"))
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


class Neighbour:
    """A CPU-bound process beside the benchmark (a pure-Python busy loop, one thread), for the
    "steady under load" rows: ``with Neighbour(): ...``. It inherits this process's niceness."""

    def __enter__(self) -> Neighbour:
        import subprocess

        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def run_row(row: Row, size: str, reps: int, warmup: int, log=print,
            profile_unmet: bool = False) -> dict[str, object]:
    if row.threads is None:
        return _run_row(row, size, reps, warmup, log, profile_unmet)
    previous = torch.get_num_threads()
    torch.set_num_threads(row.threads)
    try:
        result = _run_row(row, size, reps, warmup, log, profile_unmet)
    finally:
        torch.set_num_threads(previous)
    result["notes"].append(f"{row.threads} thread{'s' if row.threads > 1 else ''} "
                           f"(this row's setting)")
    return result


def _run_row(row: Row, size: str, reps: int, warmup: int, log,
             profile_unmet: bool) -> dict[str, object]:
    workload = SIZES[size](row.workload)
    setup = make_setup(workload)
    w = workload
    # the fastest GEMM found: every variant, on the row's own (T*B, H_in+H, G*H) product and
    # on a square product with the row's FLOP count; the fastest by GFLOP/s is interleaved
    # (the cells of issue 15 use the LSTM's product: they are compared with nn.LSTM)
    row_shape = (w.batch * w.steps, w.input_size + w.hidden, GATES.get(w.kind, 4) * w.hidden)
    gemm_name, gemm_shape, gemm_step, _ = harness.fastest_gemm_over(
        [row_shape, harness.cube_with_flops(setup.flops())], reps=3 if reps > 3 else 1)
    configs = [row.candidate] + [config for config, _ in row.baselines]
    steps, modules = {}, {}
    for config in configs:
        steps[config.label], modules[config.label] = config.build(setup)
    steps["gemm"] = gemm_step
    first_calls = {}
    for config in configs:
        if config.first_call:  # before any other call: the trace and compile happen here
            log(f"row {row.id}: first call of {config.label} (trace, compile) ...")
            first_calls[config.label] = harness.first_call(steps[config.label])
    log(f"row {row.id}: {row.title} ({workload.describe()}), {reps} reps ...")
    gate_before = _gate_counts()
    timings = harness.interleave(steps, reps=reps, warmup=warmup)
    loaded, gate = None, {}
    if row.neighbour:
        gate_alone = _gate_counts()
        log(f"row {row.id}: again beside a CPU-bound neighbour process ...")
        with Neighbour():
            loaded = harness.interleave(steps, reps=reps, warmup=warmup)
        gate = {"alone": _gate_delta(gate_before, gate_alone),
                "beside": _gate_delta(gate_alone, _gate_counts())}
    gemm_seconds = timings["gemm"].median

    def equivalent(config: Config) -> float:
        """Seconds one GEMM with the configuration's FLOP count takes."""
        return gemm_seconds * setup.flops(config.kind) / harness.gemm_flops(*gemm_shape)

    def summary(config: Config) -> dict[str, object]:
        t = timings[config.label]
        result = {
            "label": config.label,
            "median_s": t.median,
            "seconds": t.seconds,
            "error": t.error,
            "flops": setup.flops(config.kind),
            "efficiency": equivalent(config) / t.median if t.seconds else None,
            "path": _path_of(modules[config.label], setup, config.precision),
        }
        if loaded is not None:
            busy = loaded[config.label]
            result.update(loaded_s=busy.median, loaded_seconds=busy.seconds,
                          loaded_error=busy.error,
                          slowdown=busy.median / t.median if t.seconds and busy.seconds
                          else float("nan"))
        return result

    result: dict[str, object] = {
        "thread_gate": gate,
        "id": row.id,
        "title": row.title,
        "workload": workload.describe(),
        "flops": setup.flops(),
        "gemm": {"variant": gemm_name, "shape": gemm_shape, "median_s": gemm_seconds,
                 "gflops": harness.gemm_flops(*gemm_shape) / gemm_seconds / 1e9,
                 "equivalent_s": equivalent(row.candidate)},
        "candidate": summary(row.candidate),
        "baselines": [],
        "notes": [],
        "neighbour": row.neighbour,
    }
    for label, (wall, cpu, error) in first_calls.items():
        if error:
            result["notes"].append(f"{label}: first call failed: {error}")
            continue
        result["notes"].append(
            f"{label}: first call {wall:.1f} s wall, {cpu:.1f} s CPU (trace, check, compile "
            f"forward and backward: paid once per process and shape, not in the times)")
        result["first_call"] = {"label": label, "wall_s": wall, "cpu_s": cpu}
    cand = timings[row.candidate.label].median
    for config, target in row.baselines:
        base = summary(config)
        ratio = cand / base["median_s"] if base["seconds"] else float("nan")
        base.update(ratio=ratio, target=target.text, met=target.met(ratio))
        result["baselines"].append(base)
        if (config.kind or w.kind) != (row.candidate.kind or w.kind) and not row.neighbour:
            share = setup.flops(row.candidate.kind) / setup.flops(config.kind)
            result["notes"].append(f"GEMM FLOPs {share:.3g}x {config.label}'s")
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


def _cells_note(results: list[dict[str, object]]) -> list[str]:
    """What rows 10-15 (issue 15's cells) measure, under the main table."""
    ids = {r["id"] for r in results}
    if not ids & {row_id for row_id, *_ in CELL_ROWS}:
        return []
    return [
        "Rows 10-15 (issue 15): each cell through `rnnkit.Recurrence` (the generic driver, "
        "`engine='auto'`, except the user-written cell of row 15: `engine='inductor'`, the "
        "opt-in generic fast path; the path in brackets), training step (forward + "
        "`sum().backward()`) at B=32, H_in=H=256, T=128, against `nn.LSTM` of the same shape "
        "and against the same "
        "cell on the eager loop (`engine='loop'`), all interleaved in one process. Each "
        "configuration's efficiency counts its own GEMM FLOPs (the notes give them as a "
        "fraction of nn.LSTM's): UGRNN 1/2, IndRNN 1/8 (input projection only; issue 15's table "
        "says 1/4), "
        "GroupedLSTM(groups=2) 1/2 (block-diagonal input and recurrent weights; issue 15's "
        "table says 3/4), NAS 2, MinGRU 1/4, MinLSTM 3/8, the user-written cell "
        "(`benchmarks/user_cell.py`: forget gate and candidate, h = tanh(c)) 1/2.",
        "",
    ]


def _cpu_lines(results: list[dict[str, object]], env: dict[str, object]) -> list[str]:
    """The header's CPU line: one model, or (rows merged from runs on other machines) each
    model with its rows, so no ratio is read against the wrong processor."""
    rows_by_cpu: dict[str, list[str]] = {}
    for r in results:
        rows_by_cpu.setdefault(str(r.get("cpu", env["cpu"])), []).append(str(r["id"]))
    if len(rows_by_cpu) <= 1:
        return [f"- CPU: {next(iter(rows_by_cpu), env['cpu'])}"]
    return ["- CPU: rows come from runs on different machines; compare ratios within a row, "
            "never times across machines:",
            *(f"  - {cpu}: rows {', '.join(ids)}" for cpu, ids in rows_by_cpu.items())]


def _dates_note(results: list[dict[str, object]]) -> list[str]:
    """A header line when rows come from runs on several dates or machine states
    (``--merge``, ``--note``)."""
    runs: dict[tuple[str, str, object], list[str]] = {}
    for r in results:
        key = (str(r.get("date", "?")), str(r.get("machine_note", "")), r.get("reps"))
        runs.setdefault(key, []).append(str(r["id"]))
    if len(runs) <= 1 and not any(note for _, note, _ in runs):
        return []
    parts = []
    for (date, note, reps), ids in runs.items():
        reps_text = f", {reps} reps" if reps else ""
        parts.append(f"rows {', '.join(ids)}: {date}{reps_text}" + (f" ({note})" if note else ""))
    return ["- rows by run: " + "; ".join(parts)]


def _gate_counts() -> dict[str, int] | None:
    """The compiled kernels' thread-gate counters (None without the kernels)."""
    from rnnkit.engine import compiled

    ok, _ = compiled.available()
    return compiled.thread_gate() if ok else None


def _gate_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    """Regions timed / lost and gate closings between two counter readings."""
    if before is None or after is None:
        return {}
    return {key: after[key] - before[key] for key in ("regions", "lost", "closings")}


def _gate_text(counts: dict[str, int] | None) -> str:
    if not counts:
        return "-"
    return f"{counts['lost']}/{counts['regions']}, {counts['closings']}"


def _load_table(results: list[dict[str, object]]) -> list[str]:
    """Row 16's own table: each configuration alone and beside the neighbour process."""
    rows = [r for r in results if r.get("neighbour") and not r.get("crashed")]
    if not rows:
        return []
    lines = [
        "## Steady under load (row 16)", "",
        "Each training step timed alone (interleaved with nn.LSTM), then again with a "
        "CPU-bound neighbour process (a one-thread Python busy loop) running beside the "
        "benchmark; slowdown = with / without the neighbour. \"alone\" means without *our* "
        "neighbour: the machine may carry other load (see the header). Thread gate "
        "(docs/engine-compiled.md, \"Steady under load\"): per-step parallel regions that "
        "lost (took longer than one thread would have) / regions run on the threads, and "
        "the gate's closings, alone and beside.", "",
        "| # | workload | rnnkit (path) | alone ms | beside neighbour ms | slowdown "
        "| nn.LSTM alone ms | nn.LSTM beside ms | nn.LSTM slowdown | ratio to nn.LSTM "
        "alone / beside | thread gate alone | thread gate beside |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        cand, base = r["candidate"], r["baselines"][0]
        path = f"{cand['label']} ({cand['path']})" if cand["path"] else cand["label"]
        ratio_busy = (cand["loaded_s"] / base["loaded_s"]
                      if cand.get("loaded_s") and base.get("loaded_s") else float("nan"))
        lines.append("| " + " | ".join(harness.markdown_cell(c) for c in (
            r["id"], f"{r['title']}, {r['workload']}", path,
            harness.fmt_ms(cand["median_s"]), harness.fmt_ms(cand.get("loaded_s", float("nan"))),
            f"{cand.get('slowdown', float('nan')):.2f}",
            harness.fmt_ms(base["median_s"]), harness.fmt_ms(base.get("loaded_s", float("nan"))),
            f"{base.get('slowdown', float('nan')):.2f}",
            f"{base['ratio']:.2f} / {ratio_busy:.2f}",
            _gate_text(r.get("thread_gate", {}).get("alone")),
            _gate_text(r.get("thread_gate", {}).get("beside")),
        )) + " |")
    return lines + [""]


def to_markdown(results: list[dict[str, object]], env: dict[str, object], size: str,
                reps: int) -> str:
    lines = [
        "# rnnkit benchmarks",
        "",
        *_cpu_lines(results, env),
        f"- torch {env['torch']}, Python {env['python']}, {env['threads']} threads, "
        f"oneDNN {'on' if env['mkldnn'] else 'off'}",
        f"- date: {env['date']}; sizes: {size}; {reps} timed repetitions per configuration, "
        f"interleaved, median reported",
        "- ratio = rnnkit time / baseline time (below 1 is faster); efficiency = time of one "
        "plain GEMM with the row's FLOP count (the fastest GEMM found: torch.mm / mm(out=) / "
        "addmm / F.linear on the row's own product and on a square one, timed in the same "
        "interleaving) / the configuration's time",
        "- produced by `python -m benchmarks.run`; raw timings in benchmarks.json",
        *_dates_note(results),
        "",
        "| # | workload | rnnkit (path) | baseline | rnnkit ms | baseline ms | ratio | target "
        "| met | efficiency rnnkit / baseline | notes |",
        "|---|---|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in results:
        if r.get("neighbour") and not r.get("crashed"):
            continue  # their own table below
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
    lines += _cells_note(results)
    lines += _load_table(results)
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


def merge_results(old: dict[str, object], fresh: list[dict[str, object]]
                  ) -> list[dict[str, object]]:
    """The rows of an earlier report (its JSON) that ``fresh`` does not re-run, plus
    ``fresh``, in the order of ``ROWS``; old rows keep their own date."""
    rerun = {r["id"] for r in fresh}
    kept = []
    for row in old.get("rows", []):
        if row.get("id") in rerun:
            continue
        row = dict(row)
        row.setdefault("date", old.get("environment", {}).get("date", "?"))
        row.setdefault("reps", old.get("reps"))
        row.setdefault("cpu", old.get("environment", {}).get("cpu", "?"))
        kept.append(row)
    order = {row.id: index for index, row in enumerate(ROWS)}
    return sorted(kept + fresh, key=lambda r: order.get(r["id"], len(order)))


def select_rows(spec: str | None) -> list[Row]:
    """Rows named in ``spec`` ("1,3,9" — "9" selects 9a to 9d); all when None."""
    if not spec:
        return list(ROWS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    def matches(row: Row, wanted_id: str) -> bool:
        return row.id == wanted_id or row.id.rstrip("abcdefghijklmnopqrstuvwxyz") == wanted_id

    chosen = [row for row in ROWS if any(matches(row, w) for w in wanted)]
    unknown = [w for w in wanted if not any(matches(r, w) for r in ROWS)]
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
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of the existing report (the JSON beside --out) that "
                             "this run does not re-run; each row keeps its date and load note")
    parser.add_argument("--note", default="",
                        help="a note on the machine's state for this run's rows (e.g. 'box "
                             "shared with other jobs, run under nice -n 10')")
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
    for result in results:
        result["date"] = env["date"]
        result["reps"] = reps
        result["cpu"] = env["cpu"]
        if args.note:
            result["machine_note"] = args.note
    out = args.out if args.out is not None else (DEFAULT_OUT if size == "full" else None)
    if args.merge and out is not None and out.with_suffix(".json").exists():
        results = merge_results(json.loads(out.with_suffix(".json").read_text()), results)
    text = to_markdown(results, env, size, reps)
    print(text)
    if out is not None and not args.no_write:
        harness.write_atomic(out, text)
        harness.write_atomic(out.with_suffix(".json"), harness.dumps(
            {"environment": env, "size": size, "reps": reps, "rows": results}))
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
