"""A small training run for the kill-and-resume tests (tests/training/test_resume.py).

Run as a script: ``python resume_script.py FORM RUN_DIR OUT DATA_DIR`` trains with
``checkpoint_dir=RUN_DIR, resume=True``, prints ``step N`` after every batch (so the test can
kill it at a chosen moment) and writes the final weights and the per-epoch logs to OUT.
Imported, :func:`train` runs the same training in-process, without checkpoints: the
uninterrupted reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = {"loader": 4, "source": 3}


class Net(nn.Module):
    """A GRU classifier with dropout (so the random state matters) that honours lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 8, batch_first=True)
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(8, 3)

    def forward(self, x, lengths=None):  # x: (B, T, 2)
        if lengths is not None:
            x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                  enforce_sorted=False)
        _, h = self.rnn(x)  # (1, B, 8) at each sequence's last step
        return self.head(self.drop(h[-1]))  # (B, 3)


def write_source_data(data_dir: Path) -> None:
    from rnnkit.data import write_ctf

    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(30):
        n = int(rng.integers(2, 8))
        x = rng.normal(size=(n, 2))
        seqs.append({"x": x, "y": [int(x[:, 0].sum() > 0) + int(x[:, 1].sum() > 1)]})
    write_ctf(data_dir / "train.ctf", seqs, sparse={"y": 3})


def make_data(form: str, data_dir: Path):
    if form == "loader":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 6, 2, generator=g)
        y = (x[:, :, 0].sum(1) > 0).long() + (x[:, :, 1].sum(1) > 1).long()
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    from rnnkit.data import CTFDeserializer, MinibatchSource, StreamDef, StreamDefs
    from rnnkit.training import SourceBatches

    source = MinibatchSource(CTFDeserializer(data_dir / "train.ctf", StreamDefs(
        x=StreamDef(shape=2), y=StreamDef(shape=3, is_sparse=True)),
        chunk_size_in_bytes=400), randomization_window_in_chunks=2, randomization_seed=7)
    return SourceBatches(source, minibatch_size=30, input_map={
        "x": source.streams.x, "target": source.streams.y})


class Announce:
    """Prints ``step N`` after every batch, for the test to time its kills."""

    def on_fit_start(self, trainer):
        pass

    def on_epoch_start(self, trainer, epoch):
        pass

    def on_batch_end(self, trainer, logs):
        print(f"step {logs['step']}", flush=True)

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_fit_end(self, trainer, history):
        pass


def train(form: str, data_dir: Path, run_dir: Path | None = None, announce: bool = False):
    from rnnkit.training import Trainer

    torch.manual_seed(0)
    model = Net()
    trainer = Trainer(model, loss="cross_entropy", lr=2e-2, seed=3, verbose=False,
                      metrics=["accuracy", "f1"],
                      scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5),
                      callbacks=[Announce()] if announce else [])
    trainer.fit(make_data(form, data_dir), epochs=EPOCHS[form], checkpoint_dir=run_dir,
                resume=run_dir is not None, checkpoint_every=3, keep_last=2)
    return model, trainer


def main(form: str, run_dir: str, out: str, data_dir: str) -> None:
    torch.set_num_threads(1)
    from rnnkit.training.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir) if Path(run_dir).exists() else []
    if found:
        state = torch.load(found[0] / "trainer.pt", weights_only=True)
        mid = state["epoch_accumulators"] is not None
        print(f"resume epoch {state['epoch']} step {state['global_step']} "
              f"{'mid-epoch' if mid else 'epoch-start'}", flush=True)
    model, trainer = train(form, Path(data_dir), Path(run_dir), announce=True)
    torch.save({"weights": model.state_dict(), "history": trainer.history.history}, out)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
