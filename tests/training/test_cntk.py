"""CNTK-style training: learners against hand-written update rules, train()/TestConfig/
ProgressPrinter on the real Trainer, and examples/cntk_style_training.py end to end."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rnnkit.training import Callback, ProgressPrinter, TestConfig
from rnnkit.training.cntk import adam, classification_error, momentum_sgd, sgd, train

ROOT = Path(__file__).resolve().parents[2]


def _steps(learner, grads, start):
    """Apply ``grads`` (fixed gradients) with the learner's optimizer; the parameter values."""
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = learner([p])
    seen = []
    for g in grads:
        optimizer.zero_grad()
        p.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        seen.append(p.detach().numpy().copy())
    return np.array(seen)


GRADS = [[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]]


def test_momentum_sgd_is_cntk_unit_gain():
    lr, m = 0.1, 0.9
    p, v, expected = np.array([1.0, 1.0]), np.zeros(2), []
    for g in GRADS:                      # CNTK: v = m v + (1 - m) g from v = 0; p -= lr v
        v = m * v + (1 - m) * np.array(g)
        p = p - lr * v
        expected.append(p)
    np.testing.assert_allclose(_steps(momentum_sgd(lr=lr, momentum=m), GRADS, [1.0, 1.0]),
                               expected, rtol=1e-12)
    p, v, classic = np.array([1.0, 1.0]), np.zeros(2), []
    for g in GRADS:                      # unit_gain=False: v = m v + g
        v = m * v + np.array(g)
        p = p - lr * v
        classic.append(p)
    np.testing.assert_allclose(
        _steps(momentum_sgd(lr=lr, momentum=m, unit_gain=False), GRADS, [1.0, 1.0]), classic,
        rtol=1e-12)


def test_adam_momentum_is_beta1():
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-8
    p, m, v, expected = np.array([1.0, 1.0]), np.zeros(2), np.zeros(2), []
    for t, g in enumerate(GRADS, start=1):   # Kingma & Ba, Algorithm 1
        g = np.array(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        expected.append(p)
    learner = adam(lr=lr, momentum=b1, variance_momentum=b2)
    np.testing.assert_allclose(_steps(learner, GRADS, [1.0, 1.0]), expected, rtol=1e-10)


def test_sgd_and_cntk_parameter_first_form():
    model = torch.nn.Linear(2, 1)
    learner = sgd(model.parameters, lr=0.5)          # CNTK passes the parameters first
    optimizer = learner(iter(()))                    # the learner's own parameters win
    assert optimizer.param_groups[0]["params"][0] is model.weight
    np.testing.assert_allclose(_steps(sgd(lr=0.5), GRADS[:1], [1.0, 1.0]), [[0.5, 2.0]])
    assert repr(adam(0.005, momentum=0.9)).startswith("adam(lr=0.005, momentum=0.9")


@pytest.mark.parametrize("make, message", [
    (lambda: adam(lr=-1.0), "lr must be a positive number"),
    (lambda: adam(lr=0.1, momentum=1.0), "momentum=1.0 must be in"),
    (lambda: momentum_sgd(lr=0.1), "needs momentum="),
    (lambda: sgd(), "needs lr="),
    (lambda: adam(0.1, lr=0.2), "lr given twice"),
])
def test_learner_errors(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def _classification_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 3, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long()
    return x, y


class _Last(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = torch.nn.GRU(3, 6, batch_first=True)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_train_errors():
    x, y = _classification_data()
    with pytest.raises(TypeError, match="needs learner="):
        train(_Last(), "cross_entropy", (x, y))
    with pytest.raises(ValueError, match="one learner; got 2"):
        train(_Last(), "cross_entropy", (x, y), parameter_learners=[sgd(lr=1), sgd(lr=1)])
    with pytest.raises(TypeError, match="input_map maps the streams"):
        train(_Last(), "cross_entropy", (x, y), learner=sgd(lr=1), input_map={"x": "x"})


def test_printer_table_reads_the_trainers_running_metric():
    # lr 1e-30 leaves the float32 weights unchanged, so each minibatch's errors are known
    # in advance from the untrained model (the oracle); no shuffling (a DataLoader in order).
    x, y = _classification_data()
    model = _Last()
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).double()
        losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none").double()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=False)
    out, test_out = io.StringIO(), io.StringIO()
    test = TestConfig((x, y), minibatch_size=16, file=test_out)
    train(model, "cross_entropy_with_softmax", loader, max_epochs=1, learner=sgd(lr=1e-30),
          metric="classification_error", callbacks=[ProgressPrinter(0, file=out), test])
    rows = out.getvalue().splitlines()[4:7]
    for row, n, since in zip(rows, (5, 15, 35), (0, 5, 15), strict=True):
        expected = (f" {losses[:n].mean():8.3g}   {losses[since:n].mean():8.3g}   "
                    f"{wrong[:n].mean():8.3g}   {wrong[since:n].mean():8.3g}    {n:10d}")
        assert row == expected
    summary = out.getvalue().splitlines()[7]
    assert summary.startswith(f"Finished Epoch[1 of 1]: loss = {losses.mean():0.6f} * 40, "
                              f"metric = {wrong.mean() * 100:0.2f}% * 40 ")
    # 40 samples in minibatches of 16: 3 minibatches
    assert test_out.getvalue() == (f"Finished Evaluation [1]: Minibatch[1-3]: "
                                   f"metric = {wrong.mean() * 100:0.2f}% * 40;\n")
    assert test.results["classification_error"] == pytest.approx(float(wrong.mean()))


def test_lr_list_is_a_per_epoch_schedule():
    x, y = _classification_data()
    seen = []

    class Record(Callback):
        def on_epoch_start(self, trainer, epoch):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    train(_Last(), "cross_entropy", (x, y), max_epochs=4, minibatch_size=8,
          learner=adam(lr=[0.01, 0.005, 0.001]), callbacks=[Record()])
    assert seen == pytest.approx([0.01, 0.005, 0.001, 0.001])


def test_classification_error_metric():
    metric = classification_error()
    metric.update(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]))
    assert float(metric.compute()) == pytest.approx(2 / 3)


def test_cntk_style_example_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cntk_style_training.py"), "--epochs", "3",
         "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [" average      since    average      since      examples",
                         "    loss       last     metric       last              ",
                         " ------------------------------------------------------",
                         "Learning rate per minibatch: 0.005"]
    assert re.fullmatch(r" {1,9}\S+ {1,10}\S+ {1,10}\S+ {1,10}\S+ {4,13}\d+", lines[4])
    epochs = [float(m.group(1)) for line in lines
              if (m := re.match(r"Finished Epoch\[\d of 3\]: loss = (\S+) \* \d+", line))]
    assert len(epochs) == 3 and epochs[-1] < epochs[0] / 2
    evaluation = re.fullmatch(r"Finished Evaluation \[1\]: Minibatch\[1-(\d+)\]: "
                              r"metric = (\S+) \* 120;",
                              next(line for line in lines if line.startswith("Finished Eval")))
    assert evaluation is not None
    # predicting the mean of a unit sine gives ~0.5; the fitted LSTM is far below
    assert float(evaluation.group(2)) < 0.1
