"""Every example runs on its tiny setting (so none of them rots), and the results page is
rendered correctly from sample results files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


reproduce = _load("reproduce")
results_format = _load("_results")


def _tiny_examples() -> list[str]:
    """Examples with a ``--tiny`` setting: those of issue 13 and the seq2seq ones."""
    names = []
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.name.startswith("_") or path.name == "reproduce.py":
            continue
        text = path.read_text(encoding="utf-8")
        if '"--tiny"' in text or path.stem in reproduce.discover():
            names.append(path.stem)
    return names


def _fake_mnist_test_set(folder: Path, count: int = 300) -> Path:
    """MNIST's test-set files in ``folder``, filled with noise digits (each label a bright
    stroke in its own rows, so they are told apart): what the digit-string examples read when
    the real files (../shared/data) are not there, as in a fresh CI clone."""
    import numpy as np

    from rnnkit.data.idx import write_idx

    rng = np.random.default_rng(0)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, 4 + 2 * label: 6 + 2 * label, 6:22] = 255
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.mark.parametrize("name", _tiny_examples())
def test_example_runs_tiny(name, tmp_path):
    results = tmp_path / f"{name}.json"
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--tiny"]
    writes_results = name in reproduce.discover()
    if writes_results:
        command += ["--results", str(results)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    if name.startswith("mnist_digit_strings"):  # tests make their own data
        env["RNNKIT_MNIST"] = str(_fake_mnist_test_set(tmp_path / "mnist"))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode == reproduce.MISSING_DATA:
        pytest.skip(f"{name}: data set missing: {done.stdout[-300:]}{done.stderr[-300:]}")
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if writes_results:
        record = results_format.load_results(results)
        assert record["seeds"] and record["wall_s"] > 0
    if name == "adding_problem":      # the weights tested are those of the best validation check
        for models in record["details"]["results"].values():
            for row in models.values():
                curve = row["validation_curve"]
                best = min(mse for _, mse in curve)
                assert row["best_validation_mse"] == best
                assert row["kept_weights_of_update"] == next(u for u, m in curve if m == best)


def _sample(row: int, **changes) -> dict:
    record = {"row": row, "task": f"task {row}", "metric": "test MSE", "ours": 0.00123456,
              "anchor": "paper: 0.01", "target": "< 0.01", "met": True,
              "settings": "hidden 8 | batch 4", "seeds": [0, 1], "wall_s": 75.0,
              "machine": "AMD EPYC, 2 cores, shared (load 3.0)", "details": {}}
    record.update(changes)
    return record


def test_render_sorts_by_row_and_shows_every_field(tmp_path):
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    (results / "b_second.json").write_text(json.dumps(_sample(
        4, ours="LSTM 0.003, tanh-RNN 0.17", met=False,
        details={"figure": "docs/figures/flow.png", "note": "What limits it: the budget."})))
    (results / "a_first.json").write_text(json.dumps(_sample(1, met=None, wall_s=4000.0)))
    text = reproduce.render(results, tmp_path / "docs" / "RESULTS.md")
    assert (tmp_path / "docs" / "RESULTS.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| # | task | ours |")
    assert rows[1] == ("| 1 | task 1 (`examples/a_first.py`) | test MSE: 0.001235 | paper: 0.01 "
                       "| < 0.01 | — | hidden 8 \\| batch 4 | 0, 1 | 1.1 h | AMD EPYC, 2 cores, "
                       "shared (load 3.0) |")
    assert "| test MSE: LSTM 0.003, tanh-RNN 0.17 |" in rows[2] and "| **no** |" in rows[2]
    assert "| 1.2 min |" in rows[2]
    assert "![b_second](figures/flow.png)" in text        # relative to docs/RESULTS.md
    assert "What limits it: the budget." in text


def test_render_names_a_bad_file(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({**_sample(2), "met": "yes"}))
    with pytest.raises(ValueError, match=r"bad.json: field 'met' must be bool or null"):
        reproduce.render(tmp_path, None)
    (tmp_path / "bad.json").write_text(json.dumps({k: v for k, v in _sample(2).items()
                                                   if k != "seeds"}))
    with pytest.raises(ValueError, match="bad.json: missing field"):
        reproduce.render(tmp_path, None)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        reproduce.render(tmp_path, None)


def test_write_results_validates_before_writing(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match="'ours' is nan"):
        results_format.write_results(path, **{**_sample(3), "ours": float("nan")})
    assert not path.exists()
    results_format.write_results(path, **_sample(3))
    assert results_format.load_results(path)["row"] == 3
    assert "cores" in results_format.machine()


def _committed_results() -> list[Path]:
    """docs/results/*.json as git tracks them (a run in progress may be writing another)."""
    folder = ROOT / "docs" / "results"
    try:
        listed = subprocess.run(["git", "ls-files", "docs/results"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(folder.glob("*.json"))        # not a git checkout: every file
    return [ROOT / name for name in listed if name.endswith(".json")]


def test_committed_results_render(tmp_path):
    # the committed docs/results/*.json are valid and docs/RESULTS.md is up to date
    files = _committed_results()
    if not files:
        pytest.skip("no committed results yet")
    for path in files:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    text = reproduce.render(tmp_path, None)
    assert (ROOT / "docs" / "RESULTS.md").read_text() == text, (
        "docs/RESULTS.md is stale: run python examples/reproduce.py --render-only")
