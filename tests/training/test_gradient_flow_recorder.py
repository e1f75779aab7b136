"""GradientFlowRecorder: records on schedule, writes its CSV, never changes the run."""

from __future__ import annotations

import csv

import pytest
import torch

import rnnkit
from rnnkit.diagnostics import gradient_flow
from rnnkit.training import GradientFlowRecorder


def _fit(callbacks, tmp_path=None):
    torch.manual_seed(0)
    model = rnnkit.SequenceRegressor(1, 1, cell="gru", hidden_size=4, dropout=0.3)
    x = torch.randn(48, 6, 1)
    y = x.sum(1)
    trainer = rnnkit.Trainer(model, lr=1e-2, callbacks=callbacks, verbose=False, seed=0)
    trainer.fit((x, y), epochs=2, batch_size=16, checkpoint_dir=tmp_path)
    return model, (x[:8], y[:8])


def test_records_on_schedule_without_changing_training(tmp_path):
    plain, probe = _fit([])
    recorder = GradientFlowRecorder(probe, every_n_steps=2)
    recorded, _ = _fit([recorder], tmp_path)
    # the probe runs in eval mode with the RNG state restored: same weights as without it
    for a, b in zip(plain.parameters(), recorded.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [step for step, _ in recorder.records] == [0, 2, 4, 6]
    # the last record is the flow of the final model, in eval mode, on the probe
    recorded.eval()
    expected = gradient_flow(recorded, probe)
    torch.testing.assert_close(recorder.records[-1][1]["layer 1"], expected["layer 1"])
    with open(tmp_path / "gradient_flow.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "layer", "loss", "t1", "t2", "t3", "t4", "t5", "t6"]
    assert [r[0] for r in rows[1:]] == ["0", "2", "4", "6"]
    assert float(rows[-1][-1]) == pytest.approx(float(expected["layer 1"][-1]))


def test_state_round_trip_and_bad_arguments():
    _, probe = _fit([])
    recorder = GradientFlowRecorder(probe, every_n_steps=3, filename=None)
    _fit([recorder])
    copy = GradientFlowRecorder(probe, filename=None)
    copy.load_state_dict(recorder.state_dict())
    assert copy.to_csv() == recorder.to_csv()
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1"):
        GradientFlowRecorder(probe, every_n_steps=0)
