"""The results format every example of issue 13 writes with ``--results PATH``.

One JSON object per example (``docs/results/<name>.json`` for the full runs, committed)::

    {"row": 4, "task": "adding problem, T=200", "metric": "test MSE",
     "ours": 0.0031, "anchor": "LSTM/GRU solve it, tanh-RNN fails (Le et al. 2015)",
     "target": "< 0.01 for LSTM, GRU and IRNN", "met": true,
     "settings": "hidden 128, Adam 1e-3, batch 50", "seeds": [0],
     "wall_s": 812.4, "machine": "AMD EPYC, 2 cores, shared (load 7.9)",
     "details": {...}}

``ours`` is a number or a short string (several figures); ``met`` is true, false or null (no
target, e.g. a demonstration); ``details`` holds whatever the example wants kept (per-model
numbers, figure paths relative to the repository, a generated sample). ``examples/reproduce.py``
renders ``docs/RESULTS.md`` from these files. Examples import this module as ``_results``
(``examples/`` is on ``sys.path`` when one runs ``python examples/<name>.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from rnnkit._files import atomic_write

__all__ = ["FIELDS", "add_arguments", "load_results", "machine", "validate", "write_results"]

# field -> allowed types (JSON's: int, float, str, bool, None, list, dict)
FIELDS: dict[str, tuple[type, ...]] = {
    "row": (int,),
    "task": (str,),
    "metric": (str,),
    "ours": (float, int, str),
    "anchor": (str,),
    "target": (str,),
    "met": (bool, type(None)),
    "settings": (str,),
    "seeds": (list,),
    "wall_s": (float, int),
    "machine": (str,),
    "details": (dict,),
}


def machine(shared: bool | None = None) -> str:
    """``"<lscpu model name>, <n> cores[, shared (load x.x)]"``.

    ``shared=None`` says "shared" when the 1-minute load average is above half the cores
    (other work was running on the box); True/False force it.
    """
    model = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"}).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("Model name:")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if shared is None:
        shared = load > cores / 2
    return f"{model}, {cores} cores" + (f", shared (load {load:.1f})" if shared else "")


def validate(record: Any, source: str = "results") -> dict[str, Any]:
    """``record`` if it has every field with the right type; a ValueError naming the field
    (and ``source``, the file) otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: a result must be a JSON object, got "
                         f"{type(record).__name__}")
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    for name, types in FIELDS.items():
        value = record[name]
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{source}: field {name!r} must be {wanted}, got "
                             f"{json.dumps(value)[:60]}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in record["seeds"]):
        raise ValueError(f"{source}: field 'seeds' must be a list of ints, got "
                         f"{record['seeds']!r}")
    if isinstance(record["ours"], float) and not math.isfinite(record["ours"]):
        raise ValueError(f"{source}: field 'ours' is {record['ours']}; write a string "
                         "(e.g. 'diverged') for a run without a finite figure")
    return record


def write_results(path: str | os.PathLike, **record: Any) -> Path:
    """Validate ``record`` and write it to ``path`` as indented JSON, atomically."""
    record.setdefault("machine", machine())
    record.setdefault("details", {})
    validate(record, str(path))
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text))


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one results file (errors name the file)."""
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    return validate(record, str(path))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--tiny`` and ``--results PATH``, the two options every issue-13 example takes."""
    parser.add_argument("--tiny", action="store_true",
                        help="a setting that runs in a few seconds (what CI runs)")
    parser.add_argument("--results", metavar="PATH", default=None,
                        help="write the results JSON (docs/results/<name>.json for full runs)")
    return parser
