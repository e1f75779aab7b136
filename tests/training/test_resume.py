"""Crash-exact resume: a training process killed with SIGKILL at random moments (mid-epoch and
mid-save included) and resumed ends with bit-identical weights to an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit.training import Trainer
from rnnkit.training.checkpoint import CheckpointMismatchError, list_checkpoints
from tests.training import resume_script

SCRIPT = Path(resume_script.__file__)
ROOT = SCRIPT.parents[2]


def _fresh(form, run_dir, out, data_dir):
    """Start the script in a fresh interpreter (to run to the end)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(SCRIPT), form, str(run_dir), str(out),
                             str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)


def _forked_until_killed(form, run_dir, out, data_dir, kill_at_step, delay):
    """Run the script's main in a forked child (no second torch import: seconds saved) and
    SIGKILL it ``delay`` s after it reports update ``kill_at_step``. Returns its lines.

    A child that finishes training inside ``delay`` (the last updates and the final checkpoint
    take a few ms on a fast CPU) waits to be killed: a kill after the end is one of the random
    moments too, and the next run must then resume a finished run."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: train until killed
        code = 1
        try:
            os.close(read)
            sys.stdout = os.fdopen(write, "w", buffering=1)
            resume_script.main(form, str(run_dir), str(out), str(data_dir))
            sys.stdout.close()  # the parent sees the end of the lines
            time.sleep(60)  # and kills this process, or finds it never reached the step
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    lines = []
    killed = False
    with os.fdopen(read) as pipe:
        for line in pipe:
            lines.append(line.strip())
            if line.startswith("step ") and int(line.split()[1]) >= kill_at_step:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
    if not killed:  # the lines ended (the child finished) before the step was reported
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert killed, f"{form}: the run ended before update {kill_at_step}: {lines[-3:]}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"{form}: the child exited with status {status} before it was killed: {lines[-3:]}")
    return lines


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_killed_runs_resume_to_bit_identical_weights(tmp_path):
    resume_script.write_source_data(tmp_path)
    rng = random.Random(20261130)
    # updates: loader 6 batches x 4 epochs = 24, source 5 minibatches x 3 epochs = 15
    plans = {"loader": sorted(rng.sample(range(2, 22), 3)),
             "source": sorted(rng.sample(range(2, 14), 2))}
    logs: dict = {form: [] for form in plans}
    for form, steps in plans.items():
        for step in steps:
            delay = rng.uniform(0, 0.03)  # often lands inside the checkpoint being written
            lines = _forked_until_killed(form, tmp_path / f"run-{form}", tmp_path / "x.pt",
                                         tmp_path, step, delay)
            logs[form].append((step, round(delay, 3), [ln for ln in lines
                                                       if ln.startswith("resume")]))
    # the last resume runs in a fresh interpreter, both forms at once
    finals = {form: _fresh(form, tmp_path / f"run-{form}", tmp_path / f"{form}.pt", tmp_path)
              for form in plans}
    for form, proc in finals.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{form} run failed:\n{err[-3000:]}"
        logs[form].append(("final", 0, [ln for ln in out.splitlines()
                                         if ln.startswith("resume")]))
    for form in plans:
        saved = torch.load(tmp_path / f"{form}.pt", weights_only=True)
        weights = saved["weights"]
        reference, trainer = resume_script.train(form, tmp_path)  # uninterrupted, in-process
        assert trainer.epoch == resume_script.EPOCHS[form]
        resumed = [r for *_, rs in logs[form] for r in rs]
        # a kill before the first checkpoint is complete leaves nothing: that run starts over
        assert resumed and logs[form][-1][2], logs[form]
        for name, value in reference.state_dict().items():
            assert torch.equal(weights[name], value), f"{form}: {name} differs; {logs[form]}"
        # the epoch losses and metrics too: the accumulators of an epoch resumed mid-way came
        # back exactly
        for key in ("loss", "accuracy", "f1"):
            assert saved["history"][key] == trainer.history.history[key], (key, logs[form])
    mid = [r for form in logs for *_, rs in logs[form] for r in rs if "mid-epoch" in r]
    assert mid, f"no run resumed from the middle of an epoch: {logs}"


def test_resume_into_a_model_that_does_not_match_names_the_parameter(tmp_path):
    x, y = torch.randn(8, 3, 2), torch.randint(0, 3, (8,))
    Trainer(resume_script.Net(), loss="cross_entropy", verbose=False).fit(
        (x, y), epochs=1, checkpoint_dir=tmp_path)

    class Wider(resume_script.Net):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 4)

    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        Trainer(Wider(), loss="cross_entropy", verbose=False).fit(
            (x, y), epochs=1, checkpoint_dir=tmp_path, resume=True)


def test_checkpoints_every_epoch_and_every_n_updates(tmp_path):
    x, y = torch.randn(20, 3, 2), torch.randint(0, 3, (20,))
    trainer = Trainer(resume_script.Net(), loss="cross_entropy", verbose=False)
    trainer.fit((x, y), epochs=2, batch_size=8, checkpoint_dir=tmp_path, keep_last=None,
                checkpoint_every=2)
    steps = sorted(int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path))
    assert steps == [2, 3, 4, 6]  # updates 2, 4, 6 and the epoch ends at 3 and 6
    # resuming a finished run trains no more; asking for more epochs goes on
    again = Trainer(resume_script.Net(), loss="cross_entropy", verbose=False)
    again.fit((x, y), epochs=2, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    assert again.global_step == 6 and again.history.epochs == [0, 1]
    again = Trainer(resume_script.Net(), loss="cross_entropy", verbose=False)
    again.fit((x, y), epochs=3, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    assert again.global_step == 9 and again.history.epochs == [0, 1, 2]


def test_resume_refuses_other_data(tmp_path):
    x, y = torch.randn(20, 3, 2), torch.randint(0, 3, (20,))
    Trainer(resume_script.Net(), loss="cross_entropy", verbose=False).fit(
        (x, y), epochs=1, batch_size=8, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="resume with the same data"):
        Trainer(resume_script.Net(), loss="cross_entropy", verbose=False).fit(
            (x[:10], y[:10]), epochs=2, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        Trainer(resume_script.Net(), verbose=False).fit((x, y), resume=True)
