"""The benchmark harness (benchmarks/): it runs end to end and reports what it ran. No timing
assertions: speed targets live in benchmarks/, never in unit tests."""

from __future__ import annotations

import pytest


def test_benchmark_harness_smoke(tmp_path):
    """The benchmark harness runs end to end on tiny shapes and writes both reports
    (no timing assertions: speed targets live in benchmarks/, not in unit tests)."""
    import json

    from benchmarks import harness, run

    timings = harness.interleave({"a": lambda: None, "b": lambda: 1 / 0}, reps=2, warmup=0)
    assert len(timings["a"].seconds) == 2 and "ZeroDivisionError" in timings["b"].error
    out = tmp_path / "bench.md"
    assert run.main(["--size", "tiny", "--rows", "3,7,9a", "--reps", "1", "--warmup", "0",
                     "--threads", "1", "--profile", "yes", "--no-isolate",
                     "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 7 | LSTM training, variable lengths" in text
    assert "torch.nn.LSTM on PackedSequence" in text and "CPU: " in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["id"] for r in data["rows"]] == ["3", "7", "9a"]
    assert len(data["rows"][0]["baselines"]) == 2  # nn.LSTM and nn.GRU
    assert "bf16 max abs error" in data["rows"][2]["notes"][0]
    if data["rows"][2]["baselines"][0]["met"] is False:  # bf16 slower here: profiled
        assert "Self CPU time total" in data["rows"][2]["profile"]
    with pytest.raises(SystemExit, match="unknown row"):
        run.select_rows("1,42")


def test_benchmark_row_in_child_process():
    """Rows run in child processes by default, so a crashing kernel costs one row."""
    from benchmarks import run

    row = run.select_rows("6")[0]
    result = run.run_row_isolated(row, "tiny", reps=1, warmup=0, threads=1, profile=False)
    assert result["id"] == "6" and "crashed" not in result
    assert result["candidate"]["seconds"] and result["baselines"][0]["label"] == "torch.nn.RNN"
    # how a row whose process died is reported
    text = run.to_markdown([{"id": "x", "title": "crashing row", "workload": "B=3",
                             "crashed": "benchmark process killed by SIGSEGV"}],
                           {"cpu": "c", "torch": "t", "python": "p", "threads": 1,
                            "mkldnn": True, "date": "d"}, "tiny", 1)
    assert "| x | crashing row, B=3 |" in text and "killed by SIGSEGV" in text
