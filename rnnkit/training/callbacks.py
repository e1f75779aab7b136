"""Callbacks: hooks the trainer calls around epochs and minibatches.

A callback subclasses :class:`Callback` and overrides the hooks it needs (Keras'
``keras.callbacks.Callback``, with the trainer passed in instead of ``self.model``):

====================================  ===========================================================
hook                                  when, and what ``logs`` holds
====================================  ===========================================================
``on_fit_start(trainer)``             once, before the first (or the resumed) epoch
``on_epoch_start(trainer, epoch)``    before each epoch (``epoch`` counts from 0, as in Keras)
``on_batch_end(trainer, logs)``       after each optimizer step: ``epoch``, ``step`` (global),
                                      ``batch`` (1-based, in the epoch), ``batch_size``,
                                      ``samples_seen``, ``loss`` (the minibatch mean), ``lr``
``on_epoch_end(trainer, epoch, logs)``  ``epoch``, ``loss``, each metric, ``val_loss`` and
                                      ``val_<metric>`` when validated, ``lr``, ``seconds``,
                                      ``samples_per_s``
``on_fit_end(trainer, history)``      once, after the last epoch or an early stop
====================================  ===========================================================

A callback stops training with ``trainer.stop_training = True``. ``state_dict()`` /
``load_state_dict()`` travel in the checkpoint's ``trainer.pt`` (plain Python values and tensors
only, loadable with ``weights_only=True``), so a resumed run continues exactly where the
killed one was: EarlyStopping's patience counter, the CSV log, the curves.

Only the main process (rank 0 under ``torchrun``) writes files or prints: every callback here
checks ``trainer.is_main_process``.

Example:
    >>> import torch
    >>> from rnnkit.training.callbacks import Callback
    >>> class StopAtLoss(Callback):
    ...     def __init__(self, threshold):
    ...         self.threshold = threshold
    ...     def on_epoch_end(self, trainer, epoch, logs):
    ...         if logs["loss"] < self.threshold:
    ...             trainer.stop_training = True
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from rnnkit._files import atomic_write_bytes

__all__ = [
    "CSVLogger",
    "Callback",
    "ModelCheckpoint",
    "EarlyStopping",
    "GradientFlowRecorder",
    "LearningRateScheduler",
    "NaNGuard",
    "NonFiniteLossError",
    "PlotCurves",
    "TensorBoard",
    "default_callbacks",
    "monitor_direction",
]


class Callback:
    """Base class: every hook is a no-op; override the ones you need.

    The trainer exposes ``model`` (unwrapped), ``optimizer``, ``scheduler``, ``epoch``,
    ``global_step``, ``run_dir`` (the checkpoint directory or ``None``), ``is_main_process``,
    ``history``, ``evaluate(data)`` and ``save_checkpoint()``; set ``trainer.stop_training =
    True`` to stop after the current minibatch.
    """

    def on_fit_start(self, trainer: Any) -> None:
        """Called once before training starts (or resumes)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Called before each epoch; ``epoch`` counts from 0."""

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        """Called after each epoch (and its validation)."""

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        """Called once when training ends."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (plain values and tensors only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _is_main(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_main_process", True))


# --- the direction of a monitored quantity -----------------------------------------------------

# Names whose larger value is better; everything else listed in _LOWER is better smaller.
# Keras infers the direction from the metric object; rnnkit's metric names are fixed strings.
_HIGHER = {"accuracy", "acc", "f1", "f1_score", "auc", "precision", "recall", "r2"}
_LOWER = {"loss", "mse", "rmse", "mae", "mape", "perplexity", "bits_per_character", "bpc",
          "error", "classification_error", "squared_error", "metric"}


def monitor_direction(monitor: str, mode: str = "auto") -> str:
    """``"min"`` or ``"max"`` for a monitored quantity (``mode="auto"`` infers it from the name).

    As in Keras, ``val_`` is stripped before the name is looked up and a name whose direction
    cannot be inferred is an error asking for ``mode``.

    >>> monitor_direction("val_accuracy"), monitor_direction("loss"), monitor_direction("x", "max")
    ('max', 'min', 'max')
    """
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode={mode!r}: expected 'auto', 'min' or 'max'")
    name = monitor.removeprefix("val_")
    if name in _HIGHER:
        return "max"
    if name in _LOWER:
        return "min"
    raise ValueError(
        f"monitor={monitor!r}: cannot tell whether it should be maximized or minimized; "
        "pass mode='max' to keep the highest value or mode='min' to keep the lowest")


def _monitored(logs: Mapping[str, Any], monitor: str, who: str) -> float | None:
    value = logs.get(monitor)
    if value is None:
        # Keras warns and skips the epoch rather than failing a long run at its end.
        warnings.warn(f"{who} is conditioned on {monitor!r}, which is not in the logs; "
                      f"available: {', '.join(sorted(logs))}", stacklevel=3)
        return None
    return float(value)


# --- EarlyStopping ------------------------------------------------------------------------------

class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving (Keras semantics).

    Ported from ``keras/src/callbacks/early_stopping.py`` (Keras 3), edge cases included:

    * an improvement is ``current + min_delta < best`` (``mode="min"``) or
      ``current - min_delta > best`` (``"max"``); ``min_delta`` is taken as ``abs(min_delta)``;
    * the first monitored epoch is always an improvement; training never stops at epoch 0;
    * ``patience=p`` stops after ``p`` epochs without improvement (``patience=0`` and ``1`` both
      stop at the first epoch without improvement after epoch 0);
    * with a ``baseline``, the wait counter restarts only when the value beats both the
      previous best *and* the baseline, so a run that never beats it stops after ``patience``
      epochs;
    * ``restore_best_weights`` restores the best epoch's weights at the end, whatever stopped
      the run (this callback, another callback, the last epoch), even when no epoch beat the
      baseline;
    * epochs before ``start_from_epoch`` are not monitored (a warm-up);
    * a missing monitored value warns (naming the available keys) and skips the epoch.

    ``mode="auto"`` infers the direction from the name (``val_`` stripped): ``loss``, ``mse``,
    ``rmse``, ``mae``, ``mape``, ``perplexity``, ``bpc`` are minimized; ``accuracy``, ``f1``
    maximized; any other name needs ``mode``.

    The counters and the best weights are part of :meth:`state_dict`, so a resumed run stops
    at the same epoch as an uninterrupted one.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"patience={patience}: expected an integer >= 0")
        if mode not in ("auto", "min", "max"):
            # Keras warns and falls back to auto; rnnkit refuses a typo outright.
            raise ValueError(f"mode={mode!r}: expected 'auto', 'min' or 'max'")
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = monitor_direction(monitor, mode)
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = int(start_from_epoch)
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_fit_start(self, trainer: Any) -> None:
        # A fresh fit starts from zero (Keras' on_train_begin); a resumed run's counters come
        # back through load_state_dict, before or after this hook.
        if not getattr(self, "_restored", False):
            self._reset()

    def _snapshot(self, trainer: Any) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        current = _monitored(logs, self.monitor, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self._snapshot(trainer)
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot(trainer)
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        self._restored = False     # a later fit starts afresh, as Keras' on_train_begin
        if self.stopped_epoch > 0 and self.verbose > 0 and _is_main(trainer):
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0 and _is_main(trainer):
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": self.best,
                "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.best_weights = state["best_weights"]
        self._restored = True


# --- LearningRateScheduler ----------------------------------------------------------------------

class LearningRateScheduler(Callback):
    """Step a ``torch.optim.lr_scheduler`` scheduler per epoch or per optimizer step.

    Args:
        scheduler: a scheduler instance built on the trainer's optimizer, or a factory
            ``optimizer -> scheduler`` (the trainer builds the optimizer, so a factory is
            usually what you pass: ``lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)``).
        interval: ``"epoch"`` (step after each epoch) or ``"step"`` (after each minibatch).
        monitor: for ``ReduceLROnPlateau``, the epoch log value passed to ``step(value)``
            (default ``"val_loss"``; a missing value warns and skips that epoch, as Keras).
        schedule: instead of ``scheduler``, Keras' ``schedule(epoch, lr) -> lr`` called at the
            start of each epoch (``epoch`` from 0).

    The scheduler's ``state_dict`` is saved with the checkpoint, so a resumed run continues the
    schedule exactly.
    """

    def __init__(self, scheduler: Any = None, interval: str = "epoch",
                 monitor: str | None = None,
                 schedule: Callable[[int, float], float] | None = None) -> None:
        if (scheduler is None) == (schedule is None):
            raise ValueError("LearningRateScheduler needs exactly one of scheduler= "
                             "(a torch scheduler or a factory optimizer -> scheduler) "
                             "and schedule= (Keras' schedule(epoch, lr) -> lr)")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval={interval!r}: expected 'epoch' or 'step'")
        self._factory = scheduler if callable(scheduler) and not hasattr(scheduler, "step") \
            else None
        self.scheduler = None if self._factory is not None else scheduler
        self.interval = interval
        self.monitor = monitor
        self.schedule = schedule
        self._pending_state: Mapping[str, Any] | None = None

    @property
    def _plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def on_fit_start(self, trainer: Any) -> None:
        if self.scheduler is None and self._factory is not None:
            self.scheduler = self._factory(trainer.optimizer)
            if not hasattr(self.scheduler, "step"):
                raise TypeError("LearningRateScheduler's factory returned "
                                f"{type(self.scheduler).__name__}, not a scheduler")
        if self.scheduler is not None:
            if getattr(self.scheduler, "optimizer", trainer.optimizer) is not trainer.optimizer:
                raise ValueError("LearningRateScheduler: the scheduler was built on another "
                                 "optimizer than the trainer's; pass a factory "
                                 "`lambda optimizer: Scheduler(optimizer, ...)` instead")
            if self._plateau and self.interval == "step" and self.monitor is None:
                raise ValueError("ReduceLROnPlateau steps on a monitored value: use "
                                 "interval='epoch' (and monitor=...)")
        if self._pending_state is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(self._pending_state)
        self._pending_state = None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if self.schedule is None:
            return
        lr = float(self.schedule(epoch, float(trainer.optimizer.param_groups[0]["lr"])))
        if not math.isfinite(lr):
            raise ValueError(f"schedule({epoch}, lr) returned {lr}; expected a finite float")
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if self.scheduler is not None and self.interval == "step":
            if self._plateau:
                value = _monitored(logs, self.monitor or "loss", "LearningRateScheduler")
                if value is not None:
                    self.scheduler.step(value)
            else:
                self.scheduler.step()

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self._plateau:
            value = _monitored(logs, self.monitor or "val_loss", "LearningRateScheduler")
            if value is not None:
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {"scheduler": self._pending_state}
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("scheduler") is None:
            return
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self._pending_state = state["scheduler"]   # loaded once the factory has run


# --- Checkpoint ---------------------------------------------------------------------------------

def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ModelCheckpoint(Callback):
    """Save checkpoints through ``trainer.save_checkpoint()``: every N steps, each epoch, or
    only when a monitored quantity improves.

    Args:
        every_n_steps: also save after every ``every_n_steps`` optimizer steps.
        every_epoch: save after each epoch (``True`` by default).
        keep_last: keep the newest ``keep_last`` checkpoints this callback wrote (older ones
            are deleted once the new one is complete); ``None`` keeps all.
        monitor, mode, save_best_only: with ``save_best_only=True`` an epoch checkpoint is
            written only when ``monitor`` beats the best so far (Keras' ModelCheckpoint).

    A model whose parameters are no longer finite is never saved: the last good checkpoint
    stays the newest (see :class:`NaNGuard`).
    """

    def __init__(self, every_n_steps: int | None = None, every_epoch: bool = True,
                 keep_last: int | None = None, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = False, verbose: int = 0) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: expected an integer >= 1")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: expected an integer >= 1 or None")
        self.every_n_steps = every_n_steps
        self.every_epoch = every_epoch
        self.keep_last = keep_last
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = monitor_direction(monitor, mode) if save_best_only else mode
        self.verbose = verbose
        self.best: float | None = None
        self.saved: list[str] = []

    def _save(self, trainer: Any, why: str) -> None:
        if not _all_finite(trainer.model):
            warnings.warn(f"ModelCheckpoint: parameters are not finite at step "
                          f"{trainer.global_step}; not saving (the last good checkpoint stays)",
                          stacklevel=3)
            return
        path = trainer.save_checkpoint()
        if not _is_main(trainer) or path is None:
            return
        path = str(path)
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)
        if self.verbose and _is_main(trainer):
            print(f"ModelCheckpoint ({why}): {path}")
        if self.keep_last is not None:
            import shutil

            while len(self.saved) > self.keep_last:
                old = self.saved.pop(0)
                shutil.rmtree(old, ignore_errors=True)

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if self.every_n_steps and int(logs["step"]) % self.every_n_steps == 0:
            self._save(trainer, f"step {logs['step']}")

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if value is None:
                return
            better = self.best is None or (value < self.best if self.mode == "min"
                                           else value > self.best)
            if better:
                self.best = value
                self._save(trainer, f"{self.monitor} improved to {value:.6g}")
        elif self.every_epoch:
            self._save(trainer, f"epoch {epoch + 1}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "saved": list(self.saved)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.saved = [str(p) for p in state["saved"]]


# --- NaNGuard -----------------------------------------------------------------------------------

class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or parameter (raised by NaNGuard)."""


def _newest_checkpoint(run_dir: Any) -> str | None:
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    from rnnkit.training.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)   # complete ones, newest first
    return str(found[0]) if found else None


class NaNGuard(Callback):
    """Stop training at the first NaN/Inf loss or gradient, naming the epoch and the step.

    After each optimizer step it checks the minibatch loss and (``check_gradients=True``) every
    parameter's gradient and value. On the first non-finite one it raises
    :class:`NonFiniteLossError` (a ``FloatingPointError``) from inside ``fit``: nothing after
    the poisoned step runs, so no checkpoint of the poisoned weights is ever written and the
    newest checkpoint in the run directory is the last good one; the message names it.
    (Keras' ``TerminateOnNaN`` only sets ``stop_training``, which lets end-of-epoch saving run.)
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def _what_is_bad(self, trainer: Any, logs: Mapping[str, Any]) -> str | None:
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return f"the loss is {float(loss)}"
        if not self.check_gradients:
            return None
        for name, p in trainer.model.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"the gradient of {name} is not finite"
            if not bool(torch.isfinite(p).all()):
                return f"parameter {name} is not finite"
        return None

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        bad = self._what_is_bad(trainer, logs)
        if bad is None:
            return
        trainer.stop_training = True
        where = (f"epoch {int(logs['epoch']) + 1}, step {int(logs['step'])} "
                 f"(minibatch {int(logs['batch'])} of the epoch)")
        last = _newest_checkpoint(getattr(trainer, "run_dir", None))
        kept = (f"the last good checkpoint is {last}; resume from it with "
                "fit(..., resume=True) after lowering the learning rate or clipping gradients"
                if last else "no checkpoint was written before it")
        raise NonFiniteLossError(f"NaNGuard: {bad} at {where}; training stopped, {kept}")


# --- CSVLogger ----------------------------------------------------------------------------------

def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        import json

        return json.dumps(value)
    return value


class CSVLogger(Callback):
    """One CSV row per epoch (``epoch`` from 0, then every log value), Keras' ``CSVLogger``.

    The file is ``run_dir / filename`` unless ``filename`` is absolute; without a run directory
    and with a relative name nothing is written. Each epoch rewrites the whole (small) file
    through a temporary file and a rename, so a crash never leaves half a row. On resume
    (``append=True``) the rows of the epochs being trained again are replaced, never
    duplicated; ``append=False`` starts a new file at the first epoch of a fresh fit. A
    column that appears later (``val_loss`` from the second epoch) is added to the header and
    left empty in the earlier rows. Lists (a confusion matrix) are written as JSON.
    """

    def __init__(self, filename: str | os.PathLike = "history.csv", separator: str = ",",
                 append: bool = True) -> None:
        self.filename = Path(filename)
        self.separator = separator
        self.append = append
        self._started = False

    def path(self, trainer: Any) -> Path | None:
        if self.filename.is_absolute():
            return self.filename
        run_dir = getattr(trainer, "run_dir", None)
        return None if run_dir is None else Path(run_dir) / self.filename

    def _read(self, path: Path) -> tuple[list[str], list[dict[str, str]]]:
        if not path.exists():
            return [], []
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=self.separator)
            return list(reader.fieldnames or []), list(reader)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        path = self.path(trainer)
        if path is None or not _is_main(trainer):
            return
        columns, rows = self._read(path)
        if not self._started and not self.append:
            columns, rows = [], []
        self._started = True
        # rows of epochs at or after this one come from a run that was killed and resumed
        rows = [r for r in rows if r.get("epoch", "") != "" and int(r["epoch"]) < epoch]
        row = {"epoch": epoch, **{k: _scalar(v) for k, v in logs.items() if k != "epoch"}}
        for key in row:
            if key not in columns:
                columns.append(key)
        if columns[0] != "epoch":
            columns.remove("epoch")
            columns.insert(0, "epoch")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, delimiter=self.separator,
                                restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow(row)
        atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


# --- TensorBoard --------------------------------------------------------------------------------

class TensorBoard(Callback):
    """Scalars for TensorBoard: every epoch log value (``epoch/<name>``) and, with
    ``update_freq=N``, the minibatch loss and learning rate every N steps (``batch/loss``).

    Needs the ``tensorboard`` extra (``pip install rnnkit[tensorboard]``), imported only when
    training starts. ``log_dir`` defaults to ``run_dir / "tensorboard"``.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None,
                 update_freq: int | str = "epoch") -> None:
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq={update_freq!r}: expected 'epoch' or an integer >= 1")
        self.log_dir = log_dir
        self.update_freq = update_freq
        self.writer: Any = None

    def on_fit_start(self, trainer: Any) -> None:
        if not _is_main(trainer):
            return
        log_dir = self.log_dir
        if log_dir is None:
            run_dir = getattr(trainer, "run_dir", None)
            if run_dir is None:
                raise ValueError("TensorBoard needs log_dir= or fit(..., checkpoint_dir=...)")
            log_dir = Path(run_dir) / "tensorboard"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch imports the tensorboard package lazily
            raise ImportError("the TensorBoard callback needs the tensorboard package: "
                              "pip install 'rnnkit[tensorboard]'") from error
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if self.writer is None or self.update_freq == "epoch":
            return
        step = int(logs["step"])
        if step % int(self.update_freq) == 0:
            self.writer.add_scalar("batch/loss", float(logs["loss"]), step)
            if logs.get("lr") is not None:
                self.writer.add_scalar("batch/lr", float(logs["lr"]), step)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in logs.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", float(value), epoch + 1)
        self.writer.flush()

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- PlotCurves ---------------------------------------------------------------------------------

_NOT_CURVES = {"epoch", "lr", "seconds", "samples_per_s"}


class PlotCurves(Callback):
    """A PNG of the loss and each metric per epoch, training and validation, in ``run_dir``.

    One panel per quantity (``loss``, ``accuracy``, ...), the training curve and, when
    validated, the ``val_`` curve on the same axes. The figure is redrawn after every epoch
    (matplotlib's Agg backend, no display needed) and written through a temporary file and a
    rename, so the PNG on disk is always a complete image. ``filename`` is relative to
    ``run_dir`` unless absolute; without either nothing is drawn.
    """

    def __init__(self, filename: str | os.PathLike = "curves.png", dpi: int = 100) -> None:
        self.filename = Path(filename)
        self.dpi = dpi
        self.records: list[dict[str, float]] = []

    def path(self, trainer: Any) -> Path | None:
        if self.filename.is_absolute():
            return self.filename
        run_dir = getattr(trainer, "run_dir", None)
        return None if run_dir is None else Path(run_dir) / self.filename

    def quantities(self) -> list[str]:
        """The panels: each logged scalar that is not a ``val_`` twin or bookkeeping."""
        names: list[str] = []
        for record in self.records:
            for key in record:
                base = key.removeprefix("val_")
                if base not in _NOT_CURVES and base not in names:
                    names.append(base)
        return names

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        record = {"epoch": float(epoch + 1)}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                record[key] = float(value)
        self.records = [r for r in self.records if r["epoch"] < epoch + 1] + [record]
        path = self.path(trainer)
        if path is not None and _is_main(trainer):
            atomic_write_bytes(path, self.render())

    def render(self) -> bytes:
        """The PNG bytes of the current curves."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = self.quantities()
        figure = Figure(figsize=(5.0 * max(1, len(names)), 3.6))
        FigureCanvasAgg(figure)
        for i, name in enumerate(names):
            axes = figure.add_subplot(1, max(1, len(names)), i + 1)
            for key, label in ((name, "train"), (f"val_{name}", "validation")):
                points = [(r["epoch"], r[key]) for r in self.records if key in r]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes.plot(xs, ys, marker="o", markersize=3, label=label)
            axes.set_title(name)
            axes.set_xlabel("epoch")
            axes.grid(alpha=0.3)
            axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=self.dpi)
        return buffer.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]


# --- the defaults the trainer adds --------------------------------------------------------------

_HOOKS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")


def default_callbacks(callbacks: Iterable[Callback] | None, *, run_dir: Any = None,
                      progress: bool = True) -> list[Callback]:
    """The user's callbacks plus what is always on: a :class:`CSVLogger` when there is a run
    directory (unless one is given) and a progress display (unless one is given, or
    ``progress=False``): :class:`~rnnkit.training.progress.ProgressBar`.

    A ``ProgressPrinter`` counts as a progress display, so a CNTK-style script prints only its
    table. Objects that are not :class:`Callback` subclasses but have all five hooks are
    accepted (duck typing).
    """
    result = list(callbacks or [])
    for cb in result:
        if not isinstance(cb, Callback) and not all(hasattr(cb, hook) for hook in _HOOKS):
            raise TypeError(f"callbacks: {type(cb).__name__} is not an "
                            "rnnkit.training.Callback (nor has all of its hooks: "
                            f"{', '.join(_HOOKS)})")
    if run_dir is not None and not any(isinstance(cb, CSVLogger) for cb in result):
        result.append(CSVLogger())
    if progress and not any(isinstance(cb, (ProgressBar, ProgressPrinter)) for cb in result):
        result.append(ProgressBar())
    return result


# The progress displays live in progress.py; the trainer and Keras users look for them here.
from rnnkit.training.progress import ProgressBar, ProgressPrinter  # noqa: E402, F401

# --- gradient flow (owner: diagnostics) ---------------------------------------------------------

class GradientFlowRecorder(Callback):
    r"""Record :math:`\lVert \partial L / \partial h_t \rVert` on a fixed probe batch every
    ``every_n_steps`` updates (and once before the first), with
    :func:`rnnkit.diagnostics.gradient_flow`.

    Args:
        batch: the probe, ``(inputs, target)``, ``(inputs, target, lengths)`` or a dict (see
            ``gradient_flow``), on the model's device.
        every_n_steps: record after every ``N``-th update (``logs["step"] % N == 0``).
        loss: ``loss(output, target) -> scalar``; default the trainer's own loss.
        filename: a CSV (``step, layer, loss, t1 .. tT``), rewritten atomically after each
            record; relative to ``run_dir`` unless absolute; None (or no run directory with a
            relative name): kept in memory only.
        at_start: also record before the first update (step 0).

    The probe runs in eval mode (no dropout) with the random number generators' state saved
    and restored, and leaves the parameters' gradients alone, so recording never changes the
    training run. ``records`` is a list of ``(step, GradientFlow)``; ``history`` the same as
    plain values (it travels in checkpoints).

    Example:
        >>> import torch, rnnkit
        >>> x, y = torch.randn(64, 20, 1), torch.randn(64, 1)
        >>> recorder = GradientFlowRecorder((x[:8], y[:8]), every_n_steps=2, filename=None)
        >>> trainer = rnnkit.Trainer(rnnkit.SequenceRegressor(1, 1, hidden_size=4), lr=1e-2,
        ...                          callbacks=[recorder], verbose=False)
        >>> _ = trainer.fit((x, y), epochs=1, batch_size=16)
        >>> [step for step, _ in recorder.records], recorder.records[-1][1]["layer 1"].shape
        ([0, 2, 4], torch.Size([20]))
    """

    def __init__(self, batch: Any, every_n_steps: int = 100, loss: Callable | None = None,
                 filename: str | os.PathLike | None = "gradient_flow.csv",
                 at_start: bool = True) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) \
                or every_n_steps < 1:
            raise ValueError(f"GradientFlowRecorder: every_n_steps must be an int >= 1, got "
                             f"{every_n_steps!r}")
        self.batch = batch
        self.every_n_steps = every_n_steps
        self.loss = loss
        self.filename = None if filename is None else Path(filename)
        self.at_start = at_start
        self.records: list[tuple[int, Any]] = []

    @property
    def history(self) -> list[dict[str, Any]]:
        return [{"step": step, **flow.to_dict()} for step, flow in self.records]

    def path(self, trainer: Any) -> Path | None:
        if self.filename is None or self.filename.is_absolute():
            return self.filename
        run_dir = getattr(trainer, "run_dir", None)
        return None if run_dir is None else Path(run_dir) / self.filename

    def record(self, trainer: Any, step: int) -> None:
        from rnnkit.diagnostics import gradient_flow

        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                flow = gradient_flow(model, self.batch, loss=self.loss or trainer.loss)
        finally:
            model.train(was_training)
        self.records = [r for r in self.records if r[0] < step] + [(step, flow)]
        path = self.path(trainer)
        if path is not None and _is_main(trainer):
            atomic_write_bytes(path, self.to_csv().encode("utf-8"))

    def to_csv(self) -> str:
        """``step,layer,loss,t1,...,tT``: one row per record and layer (NaN left empty)."""
        steps = max((flow.steps for _, flow in self.records), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "layer", "loss", *(f"t{t}" for t in range(1, steps + 1))])
        for step, flow in self.records:
            for label, norms in flow.items():
                writer.writerow([step, label, repr(flow.loss),
                                 *("" if math.isnan(v) else repr(v) for v in norms.tolist())])
        return buffer.getvalue()

    def on_fit_start(self, trainer: Any) -> None:
        step = int(getattr(trainer, "global_step", 0))
        if self.at_start and step == 0 and not self.records:
            self.record(trainer, 0)

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        step = int(logs["step"])
        if step % self.every_n_steps == 0:
            self.record(trainer, step)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [(step, flow.to_dict()) for step, flow in self.records]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from rnnkit.diagnostics import GradientFlow

        self.records = [
            (int(step), GradientFlow({k: torch.tensor([math.nan if v is None else v
                                                       for v in values], dtype=torch.float64)
                                      for k, values in flow["norms"].items()},
                                     float(flow["loss"])))
            for step, flow in state["records"]]
