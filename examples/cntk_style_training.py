"""CNTK's sequence-regression tutorial, line for line on rnnkit.

The CNTK script (../shared/seeds/000_*) reads CTF files through a ``MinibatchSource``, builds
``Sequential([Fold(LSTM(15)), Dense(1)])`` with ``initial_state=0.1``, trains with
``adam(lr=0.005, momentum=0.9)`` on a squared-error criterion, and prints ``ProgressPrinter(0)``'s
table and ``TestConfig``'s evaluation. Here the data is a small generated CTF file (a noisy
sine wave; the target is the value after each window), so the script runs anywhere in
seconds:

    python examples/cntk_style_training.py [--epochs 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from torch import nn

import rnnkit
from rnnkit.data import INFINITELY_REPEAT, CTFDeserializer, MinibatchSource, StreamDef, StreamDefs
from rnnkit.training import ProgressPrinter, TestConfig
from rnnkit.training.cntk import adam, train

BATCH_SIZE = 14 * 10   # samples (time steps) per minibatch, as in the CNTK script
EPOCH_SIZE = 2000      # samples per epoch
EPOCHS = 10


def write_data(folder: str, seed: int = 0) -> tuple[str, str]:
    """train.ctf and test.ctf: windows of 5..14 steps of a noisy sine, target = next value."""
    rng = np.random.default_rng(seed)
    series = np.sin(np.arange(4000) * 0.07) + 0.05 * rng.standard_normal(4000)

    def windows(count: int, start: int) -> list[dict]:
        out = []
        for _ in range(count):
            steps = int(rng.integers(5, 15))
            i = int(rng.integers(start, start + 1800))
            out.append({"features": series[i:i + steps, None],
                        "target": series[i + steps, None][None]})    # one (1, 1) sample
        return out

    train_path, test_path = os.path.join(folder, "train.ctf"), os.path.join(folder, "test.ctf")
    rnnkit.write_ctf(train_path, windows(600, 0))
    rnnkit.write_ctf(test_path, windows(120, 2000))
    return train_path, test_path


def create_datasource(filename: str, sweeps: int = INFINITELY_REPEAT) -> MinibatchSource:
    target_stream = StreamDef(field="target", shape=1, is_sparse=False)
    features_stream = StreamDef(field="features", shape=1, is_sparse=False)
    deserializer = CTFDeserializer(filename, StreamDefs(features=features_stream,
                                                        target=target_stream))
    return MinibatchSource(deserializer, randomize=True, max_sweeps=sweeps,
                           randomization_seed=0)


class Model(nn.Module):
    """``Sequential([Fold(LSTM(15)), Dense(1)])`` with ``default_options(initial_state=0.1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fold = rnnkit.Fold(rnnkit.LSTMCell(1, 15), initial_state=0.1, batch_first=True)
        self.dense = nn.Linear(15, 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> torch.Tensor:
        last, _ = self.fold(features, lengths=lengths)   # (B, 15): each sequence's last step
        return self.dense(last)                          # (B, 1)


def main(epochs: int = EPOCHS, workdir: str | None = None) -> dict:
    torch.manual_seed(0)
    folder = workdir or tempfile.mkdtemp(prefix="rnnkit-cntk-")
    train_file, test_file = write_data(folder)
    train_datasource = create_datasource(train_file)
    test_datasource = create_datasource(test_file, sweeps=1)

    model = Model()
    learner = adam(lr=0.005, momentum=0.9)                 # CNTK momentum = Adam's beta1
    progress_writer = ProgressPrinter(0)
    test_config = TestConfig(test_datasource, metric_is_pct=False)
    input_map = {"features": train_datasource.streams.features,
                 "target": train_datasource.streams.target}
    train(model, "squared_error", train_datasource, epoch_size=EPOCH_SIZE, learner=learner,
          input_map=input_map, callbacks=[progress_writer, test_config],
          minibatch_size=BATCH_SIZE, max_epochs=epochs, metric="squared_error")
    return test_config.results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    main(args.epochs, args.workdir)
