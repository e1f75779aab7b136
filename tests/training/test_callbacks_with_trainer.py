"""The callbacks on the real rnnkit.Trainer: run directory defaults, checkpoints, resume."""

import csv

import pytest
import torch
from torch import nn

from rnnkit.training import (
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    PlotCurves,
    ProgressBar,
    Trainer,
    list_checkpoints,
    load_checkpoint,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(2, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 2, generator=g)
    return x, x.sum(dim=(1, 2))[:, None]


def _trainer(callbacks=()):
    torch.manual_seed(0)
    return Trainer(_Net(), loss="mse", lr=0.01, seed=1, callbacks=list(callbacks),
                   verbose=False)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_gets_a_csv_log_and_resume_appends(tmp_path):
    x, y = _data()
    first = _trainer()
    first.fit((x, y), epochs=2, batch_size=16, checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in _rows(tmp_path / "history.csv")] == ["0", "1"]
    resumed = _trainer()
    resumed.fit((x, y), epochs=4, batch_size=16, checkpoint_dir=tmp_path, resume=True)
    rows = _rows(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert float(rows[3]["loss"]) == pytest.approx(resumed.history.history["loss"][-1])


def test_defaults_are_not_doubled():
    trainer = _trainer([CSVLogger(), ProgressBar(plain=True)])
    trainer.run_dir = "somewhere"
    made = trainer._progress_callbacks(True)
    assert [type(c).__name__ for c in made] == ["CSVLogger", "ProgressBar"]


def test_model_checkpoint_every_n_steps(tmp_path):
    x, y = _data()
    trainer = _trainer([ModelCheckpoint(every_n_steps=2, every_epoch=False)])
    trainer.fit((x, y), epochs=2, batch_size=16, checkpoint_dir=tmp_path, keep_last=None)
    steps = {int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path)}
    # every 2 updates; the trainer's own epoch-end saves (3, 6) may stand down for the callback
    assert {2, 4, 6} <= steps <= {2, 3, 4, 6}
    restored = load_checkpoint(tmp_path, model=_Net())
    for a, b in zip(restored.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_and_curves_resume_like_an_uninterrupted_run(tmp_path):
    x, y = _data()
    vx, vy = _data(16, seed=5)

    def run(epochs, run_dir=None, resume=False):
        stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.15,
                                restore_best_weights=True)
        trainer = _trainer([stopper, PlotCurves()])
        trainer.fit((x, y), validation=(vx, vy), epochs=epochs, batch_size=16,
                    checkpoint_dir=run_dir, resume=resume)
        return trainer, stopper

    whole, whole_stop = run(30, tmp_path / "whole")
    assert 2 < len(whole.history.epochs) < 30        # it stopped early
    run(2, tmp_path / "split")
    split, split_stop = run(30, tmp_path / "split", resume=True)
    assert split_stop.stopped_epoch == whole_stop.stopped_epoch
    assert split_stop.best_epoch == whole_stop.best_epoch
    for a, b in zip(split.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)                      # the same restored best weights
    assert (tmp_path / "split" / "curves.png").read_bytes()[:4] == b"\x89PNG"
