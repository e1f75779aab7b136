"""Row 17 (the per-call cost of a small drop-in, issue 13 row 2's shape): tiny shapes, no
timing assertions (speed targets live in benchmarks/)."""

from __future__ import annotations

import json

import torch


def test_small_model_rows_report_their_shape_and_path(tmp_path):
    from benchmarks import run
    from rnnkit.engine import compiled

    out = tmp_path / "bench.md"
    threads = torch.get_num_threads()
    assert run.main(["--size", "tiny", "--rows", "17a,17b", "--reps", "2", "--warmup", "0",
                     "--threads", "2", "--profile", "no", "--no-isolate",
                     "--out", str(out)]) == 0
    after = torch.get_num_threads()
    torch.set_num_threads(threads)
    assert after == 2  # the run's --threads, restored after the rows' own 1
    rows = {r["id"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    training, inference = rows["17a"], rows["17b"]
    assert training["workload"] == "B=3, H=8, T=8, H_in=28"  # H_in kept at tiny size
    assert training["candidate"]["label"] == "rnnkit.RNN(nonlinearity='relu')"
    assert training["baselines"][0]["label"] == "torch.nn.RNN(nonlinearity='relu')"
    assert training["baselines"][0]["target"] == ">= 3x faster"
    assert inference["baselines"][0]["target"] == "report the ratio"
    assert "1 thread (this row's setting)" in training["notes"]
    expected = "per layer: compiled" if compiled.available()[0] else "per layer: loop"
    assert training["candidate"]["path"] == inference["candidate"]["path"] == expected
    # one GEMM FLOP count for both: (T*B) x (H_in + H) x H, three times in training
    assert training["flops"] == 3 * inference["flops"] == 3 * 2.0 * 8 * 3 * 8 * (28 + 8)
