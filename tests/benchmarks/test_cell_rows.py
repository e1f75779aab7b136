"""Issue 15's benchmark rows (10-16): the cells through Recurrence against nn.LSTM and their
own loop, the user-written cell, the neighbour-process row, and --merge. Tiny shapes, no
timing assertions (speed targets live in benchmarks/)."""

from __future__ import annotations

import json

import torch


def test_cell_rows_and_neighbour_row_report(tmp_path, monkeypatch):
    from benchmarks import run
    from rnnkit.engine import inductor

    monkeypatch.setattr(inductor, "COMPILE", False)  # row 15's path, without a real compile

    out = tmp_path / "bench.md"
    assert run.main(["--size", "tiny", "--rows", "11,15,16f", "--reps", "1", "--warmup", "0",
                     "--threads", "1", "--profile", "no", "--no-isolate", "--note", "shared",
                     "--out", str(out)]) == 0
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {r["id"]: r for r in data["rows"]}
    indrnn = rows["11"]
    assert [b["label"] for b in indrnn["baselines"]] == [
        "torch.nn.LSTM", "Recurrence(IndRNNCell(), engine='loop')"]
    # each configuration's efficiency counts its own GEMM FLOPs: IndRNN has 1/8 of nn.LSTM's
    assert indrnn["candidate"]["flops"] * 8 == indrnn["baselines"][0]["flops"]
    assert "GEMM FLOPs 0.125x torch.nn.LSTM's" in indrnn["notes"]
    assert indrnn["candidate"]["path"].startswith(("compiled", "loop"))
    assert rows["15"]["baselines"][1]["target"] == ">= 2x faster than its loop"
    user = rows["15"]
    assert user["candidate"]["label"] == "Recurrence(TwoGateCell(), engine='inductor')"
    assert user["candidate"]["path"].startswith("inductor")
    assert user["first_call"]["wall_s"] > 0
    assert any("first call" in note for note in user["notes"])
    load = rows["16f"]
    assert load["neighbour"] and load["candidate"]["loaded_seconds"]
    assert load["baselines"][0]["slowdown"] > 0
    assert "## Steady under load (row 16)" in text and "| 16f |" in text
    assert "rows 11, 15, 16f:" in text and "(shared)" in text
    # --merge keeps the rows of the earlier report that a later run does not re-run
    assert run.main(["--size", "tiny", "--rows", "11", "--reps", "1", "--warmup", "0",
                     "--threads", "1", "--profile", "no", "--no-isolate", "--merge",
                     "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    assert [r["id"] for r in merged["rows"]] == ["11", "15", "16f"]


def test_user_cell_follows_the_cell_contract():
    import rnnkit
    from benchmarks.user_cell import TwoGateCell

    torch.manual_seed(0)
    cell = TwoGateCell(3, 4)
    x = torch.randn(5, 2, 3)
    out, (h, c) = rnnkit.Recurrence(cell, engine="loop")(x)
    # the equations, step by step by hand
    h_ref, c_ref = torch.zeros(2, 4), torch.zeros(2, 4)
    for x_t in x:
        a_f, a_g = (x_t @ cell.x2h.weight.T + cell.x2h.bias + h_ref @ cell.h2h.weight.T).chunk(2, 1)
        f = torch.sigmoid(a_f)
        c_ref = f * c_ref + (1 - f) * torch.tanh(a_g)
        h_ref = torch.tanh(c_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(out[-1], h_ref)
