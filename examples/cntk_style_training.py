"""CNTK's sequence-regression tutorial, line for line on rnnkit (issue 13, row 7).

The CNTK script (../shared/seeds/000_*) reads CTF files through a ``MinibatchSource``, builds
``Sequential([Fold(LSTM(15)), Dense(1)])`` with ``initial_state=0.1``, trains with
``adam(lr=0.005, momentum=0.9)`` on a squared-error criterion, and prints ``ProgressPrinter(0)``'s
table and ``TestConfig``'s evaluation. Here the data is a small generated CTF file (a noisy
sine wave; the target is the value after each window), so the script runs anywhere in
seconds:

    python examples/cntk_style_training.py [--epochs 10] [--workdir DIR]
    python examples/cntk_style_training.py --results docs/results/cntk_style_training.json

The last step is the tutorial's "validate the model": ``model(test_samples) * NORMALIZE``
on a few test windows (the series here is already in its units, so ``NORMALIZE = 1``).
``--tiny`` trains one short epoch (CI).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

import rnnkit
from rnnkit.data import INFINITELY_REPEAT, CTFDeserializer, MinibatchSource, StreamDef, StreamDefs
from rnnkit.training import ProgressPrinter, TestConfig
from rnnkit.training.cntk import adam, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import add_arguments, machine, write_results  # noqa: E402

BATCH_SIZE = 14 * 10   # samples (time steps) per minibatch, as in the CNTK script
EPOCH_SIZE = 2000      # samples per epoch
EPOCHS = 10
NORMALIZE = 1.0        # the tutorial scales its series to ~1 and multiplies back at the end
# the tutorial's ProgressPrinter(0) table: its two header lines and the per-epoch lines
HEADER = (" average      since    average      since      examples",
          "    loss       last     metric       last              ")


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


def main(epochs: int = EPOCHS, workdir: str | None = None,
         epoch_size: int = EPOCH_SIZE) -> tuple[dict, Model, str]:
    """Train as the tutorial does; ``(TestConfig's results, the model, the test file)``."""
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
    train(model, "squared_error", train_datasource, epoch_size=epoch_size, learner=learner,
          input_map=input_map, callbacks=[progress_writer, test_config],
          minibatch_size=BATCH_SIZE, max_epochs=epochs, metric="squared_error")
    return test_config.results, model, test_file


def validate(model: Model, test_file: str, count: int = 5) -> None:
    """The tutorial's last step: predictions for a few test sequences, in the data's units."""
    streams = StreamDefs(features=StreamDef(field="features", shape=1),
                         target=StreamDef(field="target", shape=1))
    samples = rnnkit.data.read_ctf(test_file, streams)[:count]
    model.eval()
    with torch.no_grad():
        for sample in samples:
            features = torch.as_tensor(sample["features"], dtype=torch.float32)[None]
            prediction = float(model(features)[0, 0]) * NORMALIZE
            print(f"  {len(sample['features']):>2} steps -> predicted {prediction:+.4f}, "
                  f"target {float(sample['target'].ravel()[0]) * NORMALIZE:+.4f}")


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy (to check the printed table)."""

    def __init__(self, stream) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.tiny else EPOCHS)
    start = time.perf_counter()
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        results, model, test_file = main(epochs, args.workdir,
                                         epoch_size=500 if args.tiny else EPOCH_SIZE)
        print("model(test_samples) * NORMALIZE:")
        validate(model, test_file)
    wall = time.perf_counter() - start
    printed = tee.copy.getvalue().splitlines()
    losses = [float(m.group(1)) for line in printed
              if (m := re.match(r"Finished Epoch\[\d+ of \d+\]: loss = (\S+) \*", line))]
    same_table = (tuple(printed[:2]) == HEADER and len(losses) == epochs
                  and any(line.startswith("Finished Evaluation") for line in printed))
    test_mse = float(results.get("squared_error", results.get("loss", float("nan"))))
    if args.results:
        write_results(
            args.results, row=7, task="CNTK tutorial workflow: CTF -> MinibatchSource -> "
                                      "Fold(LSTM(15)) -> Dense(1)",
            metric="TestConfig squared error on the test CTF",
            ours=round(test_mse, 5),
            anchor="the tutorial's printed table: average/since last loss and metric, "
                   "examples; 'Learning rate per minibatch'; Finished Epoch/Evaluation lines",
            target="runs unchanged in spirit from a CTF file the example writes; prints the "
                   "same table columns",
            met=None if args.tiny else bool(same_table and losses[-1] < losses[0]),
            settings=f"adam lr 0.005 momentum 0.9, minibatch {BATCH_SIZE} samples, epoch "
                     f"{500 if args.tiny else EPOCH_SIZE} samples, {epochs} epochs, "
                     "initial_state 0.1" + (" (--tiny)" if args.tiny else ""),
            seeds=[0], wall_s=round(wall, 1), machine=machine(),
            details={"same_table_columns": same_table, "epoch_losses": losses,
                     "table_header": list(printed[:2])})
