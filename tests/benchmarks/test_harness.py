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


def test_merged_rows_from_another_machine_keep_their_cpu():
    """--merge of a run on one CPU into a report from another names each row's CPU: a ratio
    measured on an AMD box must not read as the Intel box's."""
    from benchmarks import run

    def crashed(row_id):
        return {"id": row_id, "title": "t", "workload": "w", "crashed": "c"}

    old = {"environment": {"cpu": "AMD EPYC", "date": "d1"}, "reps": 10,
           "rows": [crashed("1"), crashed("2")]}
    fresh = [dict(crashed("2"), cpu="Intel Xeon", date="d2", reps=5)]
    merged = run.merge_results(old, fresh)
    assert [(r["id"], r["cpu"]) for r in merged] == [("1", "AMD EPYC"), ("2", "Intel Xeon")]
    env = {"cpu": "Intel Xeon", "torch": "t", "python": "p", "threads": 2, "mkldnn": True,
           "date": "d2"}
    text = run.to_markdown(merged, env, "full", 5)
    assert "  - AMD EPYC: rows 1\n" in text and "  - Intel Xeon: rows 2\n" in text
    assert "rows 1: d1, 10 reps; rows 2: d2, 5 reps" in text
    # one machine: the plain line
    assert "- CPU: Intel Xeon\n" in run.to_markdown(fresh, env, "full", 5)
