"""The first call of a compiled path in a new process: ``python -m benchmarks.first_call``.

Issue 15: after the README's set-up (``make test`` runs ``python -m rnnkit.engine.compiled
build``, which puts the C++ kernels for this CPU in the cache), a new process must not wait
for a compile: its first compiled recurrence only imports the cached library. This starts
``--runs`` fresh Python processes; each imports torch and rnnkit, then makes the first call of
``rnnkit.Recurrence(GRUCell)`` (the compiled path, training: forward and backward) and
reports, in wall and CPU seconds: the imports, the first call, and the process from start to
the end of that call. It checks that the call ran on the compiled kernels (``explain``) and
says whether the cache entry was there before the first process started. Nothing is asserted
on the times; the CPU model is printed beside them.

Usage::

    python -m benchmarks.first_call              # 3 fresh processes
    python -m benchmarks.first_call --runs 5 --hidden 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import cpu_model

ROOT = Path(__file__).resolve().parent.parent

#: What each fresh process runs: the times it prints are its own (no parent overhead).
CHILD = """
import json, os, sys, time
start_wall, start_cpu = time.perf_counter(), time.process_time()
import torch
import rnnkit
from rnnkit.cells import GRUCell
torch.set_num_threads({threads})
imported_wall, imported_cpu = time.perf_counter(), time.process_time()
layer = rnnkit.Recurrence(GRUCell({hidden}, {hidden}))
x = torch.randn({steps}, {batch}, {hidden})
call_wall, call_cpu = time.perf_counter(), time.process_time()
out, h = layer(x)
out.sum().backward()
done_wall, done_cpu = time.perf_counter(), time.process_time()
plan = rnnkit.engine.explain(layer, x)
print(json.dumps({{
    "import_wall_s": imported_wall - start_wall, "import_cpu_s": imported_cpu - start_cpu,
    "call_wall_s": done_wall - call_wall, "call_cpu_s": done_cpu - call_cpu,
    "total_wall_s": done_wall - start_wall, "total_cpu_s": done_cpu - start_cpu,
    "compiled": "GRUCell -> compiled" in plan, "plan": plan.splitlines()[-1].strip(),
}}))
"""


def cache_entry() -> tuple[Path, bool]:
    """The kernels' cache entry for this CPU, torch, Python and source, and whether it holds
    a finished build (without building anything)."""
    from rnnkit.engine.compiled import _build

    capability = _build.capabilities()[0]
    directory = _build.build_dir(capability)
    library = directory / f"rnnkit_compiled_{capability.lower()}.so"
    return directory, library.exists() and not (directory / "lock").exists()


def measure(hidden: int = 32, steps: int = 20, batch: int = 4, threads: int = 1
            ) -> dict[str, object]:
    """One fresh process: its times (see :data:`CHILD`) as a dict."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = CHILD.format(hidden=hidden, steps=steps, batch=batch, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the fresh process failed (exit {done.returncode}):\n"
                           f"{done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr.strip()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_call", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (default 3)")
    parser.add_argument("--hidden", type=int, default=32, help="H_in = H (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="T (default 20)")
    parser.add_argument("--batch", type=int, default=4, help="B (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    for name in ("runs", "hidden", "steps", "batch", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    directory, built = cache_entry()
    load = Path("/proc/loadavg")
    average = " ".join(load.read_text().split()[:3]) if load.exists() else "n/a"
    print(f"CPU: {cpu_model()}; load average {average}")
    print(f"kernel cache entry {directory}: "
          + ("built before this run (set-up)" if built else
             "NOT built yet: the first process builds it (minutes; the README's set-up, "
             "python -m rnnkit.engine.compiled build, does it ahead)"))
    print(f"first call of rnnkit.Recurrence(GRUCell({args.hidden}, {args.hidden})) on "
          f"T={args.steps}, B={args.batch}, training (forward + backward), {args.threads} "
          f"thread(s), each in a new process:")
    for run in range(args.runs):
        r = measure(args.hidden, args.steps, args.batch, args.threads)
        print(f"  process {run + 1}: first call {r['call_wall_s']:.3f} s wall "
              f"({r['call_cpu_s']:.3f} s CPU); imports {r['import_wall_s']:.2f} s wall "
              f"({r['import_cpu_s']:.2f} s CPU); start to end of the call "
              f"{r['total_wall_s']:.2f} s wall; path: "
              f"{'compiled' if r['compiled'] else 'NOT compiled: ' + str(r['plan'])}")
        if r["stderr"]:
            print("    stderr: " + r["stderr"].replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
