"""benchmarks/ctc_decoding.py runs end to end on a tiny shape and finds the batched search and
the plain dict version agreeing (no timing assertions)."""

from __future__ import annotations


def test_ctc_decoding_benchmark_smoke(capsys):
    from benchmarks import ctc_decoding

    ctc_decoding.main(["--batch", "4", "--steps", "9", "--classes", "4", "--reps", "1",
                       "--plain-rows", "4"])
    out = capsys.readouterr().out
    assert "CPU:" in out and "greedy" in out
    assert out.count("same best: True") == 4
