"""A minimal trainer that calls callbacks by the hook contract (COMMON.md), for callback tests.

It stands in for ``rnnkit.Trainer`` so the callbacks are tested on their own: a plain loop
over ``(x, y)`` minibatches, SGD on a ``torch.nn.Module``, the documented attributes, and a
``save_checkpoint`` that writes ``run_dir/step-<n>/`` (rnnkit's checkpoint module) with the
weights and the callback states.
Losses can be planted per step (``planted={step: value}``) to drive the callbacks exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch


class History:
    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []


class FakeTrainer:
    def __init__(self, model, callbacks=(), lr=0.1, run_dir=None, planted=None,
                 is_main_process=True, val_losses=None):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.scheduler = None
        self.callbacks = list(callbacks)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.is_main_process = is_main_process
        self.planted = planted or {}
        self.val_losses = val_losses
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False
        self.history = History()
        self.saved: list[Path] = []

    def save_checkpoint(self):
        from rnnkit.training.checkpoint import save_checkpoint

        path = save_checkpoint(self.run_dir, model=self.model, step=self.global_step,
                               trainer_state={"callbacks": [cb.state_dict()
                                                            for cb in self.callbacks]},
                               keep_last=None)
        self.saved.append(path)
        return path

    def evaluate(self, batches):
        with torch.no_grad():
            losses = [torch.nn.functional.mse_loss(self.model(x), y).item() for x, y in batches]
        return {"loss": sum(losses) / len(losses)}

    def fit(self, batches, epochs, start_epoch=0):
        self.epochs = epochs
        self.stop_training = False
        for cb in self.callbacks:
            cb.on_fit_start(self)
        for epoch in range(start_epoch, epochs):
            self.epoch = epoch
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            t0 = time.perf_counter()
            total, seen = 0.0, 0
            for i, (x, y) in enumerate(batches):
                self.optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                self.global_step += 1
                value = self.planted.get(self.global_step, loss.item())
                total += value * len(x)
                seen += len(x)
                logs = {"epoch": epoch, "step": self.global_step, "batch": i + 1,
                        "batch_size": len(x), "samples_seen": seen, "loss": value,
                        "lr": self.optimizer.param_groups[0]["lr"]}
                for cb in self.callbacks:
                    cb.on_batch_end(self, logs)
                if self.stop_training:
                    break
            seconds = time.perf_counter() - t0
            logs = {"epoch": epoch, "loss": total / seen}
            if self.val_losses is not None:
                logs["val_loss"] = self.val_losses[epoch]
            logs.update(lr=self.optimizer.param_groups[0]["lr"], seconds=seconds,
                        samples_per_s=seen / seconds)
            for key, value in logs.items():
                self.history.history.setdefault(key, []).append(value)
            self.history.epochs.append(epoch)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, logs)
            if self.stop_training:
                break
        for cb in self.callbacks:
            cb.on_fit_end(self, self.history)
        return self.history


def regression_batches(n_batches=4, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch_size, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
