"""Progress displays: a tqdm bar per epoch (Keras' progress bar) and CNTK's ProgressPrinter table.

:class:`ProgressBar` is what the trainer shows by default: one bar per epoch with the running
loss, the metrics and samples/s, or, when the output is not a terminal (CI, a log file), one
plain line per epoch. :class:`ProgressPrinter` reproduces ``cntk.logging.ProgressPrinter``:
with ``freq=0`` its geometric table ("average since / since last" loss and metric after 1, 2,
4, 8... minibatches), with ``freq=N`` a ``Minibatch[a-b]`` line every N minibatches, and the
``Finished Epoch[k of n]`` summary after each epoch. :class:`TestConfig` evaluates a test set
after training and prints CNTK's ``Finished Evaluation`` line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from rnnkit.training.callbacks import Callback, _is_main

__all__ = ["ProgressBar", "ProgressPrinter", "TestConfig"]

# keys of the minibatch logs that are bookkeeping, not a metric
_BATCH_KEYS = {"epoch", "step", "batch", "batch_size", "samples_seen", "loss", "lr"}
_EPOCH_KEYS = {"epoch", "lr", "seconds", "samples_per_s"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _epochs_total(trainer: Any) -> int | None:
    for name in ("epochs", "max_epochs", "num_epochs"):
        value = getattr(trainer, name, None)
        if isinstance(value, int):
            return value
    return None


class ProgressBar(Callback):
    """One tqdm bar per epoch with the running loss, metrics and samples/s.

    When ``file`` (default ``sys.stderr`` for the bar, ``sys.stdout`` for plain lines) is not
    a terminal, or ``plain=True``, no bar is drawn: one line per epoch instead, e.g.
    ``Epoch 2/10 - 0.41s - 2450 samples/s - loss: 0.1234 - accuracy: 0.91 - val_loss: 0.13``.
    """

    def __init__(self, plain: bool | None = None, file: TextIO | None = None,
                 leave: bool = True) -> None:
        self.plain = plain
        self.file = file
        self.leave = leave
        self._bar: Any = None
        self._loss_sum = 0.0
        self._samples = 0
        self._start = 0.0

    def _is_plain(self) -> bool:
        if self.plain is not None:
            return self.plain
        stream = self.file if self.file is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._loss_sum, self._samples, self._start = 0.0, 0, time.perf_counter()
        if not _is_main(trainer) or self._is_plain():
            return
        from tqdm.auto import tqdm

        total_epochs = _epochs_total(trainer)
        desc = f"Epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else "")
        total = getattr(trainer, "steps_per_epoch", None)
        self._bar = tqdm(total=total if isinstance(total, int) else None, desc=desc,
                         unit="batch", file=self.file, leave=self.leave, dynamic_ncols=True)

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        size = int(logs.get("batch_size", 0))
        self._loss_sum += float(logs["loss"]) * size
        self._samples += size
        if self._bar is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        postfix = {"loss": f"{self._loss_sum / max(self._samples, 1):.4g}"}
        for key, value in logs.items():
            if key not in _BATCH_KEYS and isinstance(value, (int, float)):
                postfix[key] = _fmt(float(value))
        postfix["samples/s"] = f"{self._samples / elapsed:.0f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def summary_line(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> str:
        """The plain line for one epoch."""
        total_epochs = _epochs_total(trainer)
        parts = [f"Epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else "")]
        if "seconds" in logs:
            parts.append(f"{float(logs['seconds']):.2f}s")
        if "samples_per_s" in logs:
            parts.append(f"{float(logs['samples_per_s']):.0f} samples/s")
        for key, value in logs.items():
            if key not in _EPOCH_KEYS and isinstance(value, (int, float)):
                parts.append(f"{key}: {_fmt(float(value))}")
        if "lr" in logs and logs["lr"] is not None:
            parts.append(f"lr: {float(logs['lr']):.3g}")
        return " - ".join(parts)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        if not _is_main(trainer):
            return
        if self._bar is not None:
            postfix = {k: _fmt(float(v)) for k, v in logs.items()
                       if k not in _EPOCH_KEYS and isinstance(v, (int, float))}
            if "samples_per_s" in logs:
                postfix["samples/s"] = f"{float(logs['samples_per_s']):.0f}"
            self._bar.set_postfix(postfix, refresh=True)
            self._bar.close()
            self._bar = None
        else:
            print(self.summary_line(trainer, epoch, logs),
                  file=self.file if self.file is not None else sys.stdout, flush=True)

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _avg(total: float, count: float) -> float:
    return total / count if count > 0 else 0.0


class ProgressPrinter(Callback):
    """CNTK's ``cntk.logging.ProgressPrinter``: the geometric table and the epoch summaries.

    Ported from ``bindings/python/cntk/logging/progress_print.py`` and
    ``Source/CNTKv2LibraryDll/ProgressWriter.cpp`` (CNTK 2.7). Loss and metric are averaged
    over samples (each minibatch weighs its ``batch_size``: sequences for a sequence-to-one
    model, as CNTK counts the samples of the criterion); the counters restart each epoch.

    * ``freq=0``: after minibatch 1, 3, 7, 15, ... of each epoch (``(n + 1) & n == 0``, so the
      "since last" windows hold 1, 2, 4, 8, ... minibatches) one row of the table::

           average      since    average      since      examples
              loss       last     metric       last
           ------------------------------------------------------
          Learning rate per minibatch: 0.005
               0.4        0.4        0.4        0.4            19

      (average since the epoch began, average since the previous row, for the loss and the
      metric, then the samples seen this epoch; ``{:8.3g}`` as CNTK; the metric is not
      scaled to percent in the table, as in CNTK).
    * ``freq=N``: ``Minibatch[   1-  N]: loss = 0.123456 * 640, metric = 12.34% * 640;`` every
      N minibatches, and every one of the first ``first`` minibatches.
    * ``freq=None``: no per-minibatch lines.

    After each epoch: ``Finished Epoch[2 of 10]: [Training] loss = 0.123456 * 1000, metric =
    12.34% * 1000 0.512s (1953.1 samples/s);`` (``tag="Training"``; ``num_epochs`` defaults to
    the trainer's epoch count). CNTK 2.7 prints that line only when ``freq`` is not 0; rnnkit
    prints it in every mode, so a geometric table also ends each epoch with its totals.
    ``Learning rate per minibatch: <lr>`` is printed when the learning rate is first seen and
    whenever it changes, as CNTK's learners do.

    The metric is ``metric`` (default: the trainer's first metric; CNTK's criterion returns
    one): a per-minibatch log value when the logs carry it, else the trainer's running epoch
    value (``trainer.metrics.compute()``) read at each printed row, whose sum since the epoch
    began is that average times the samples seen; without one the metric columns stay blank,
    as in CNTK. ``metric_is_pct`` multiplies it by 100 in the ``%`` lines. ``log_to_file`` appends
    the lines to a file instead of stdout. Only the main process prints.
    """

    def __init__(self, freq: int | None = None, first: int = 0, tag: str = "",
                 log_to_file: str | None = None, num_epochs: int | None = None,
                 metric: str | None = None, metric_is_pct: bool = True,
                 file: TextIO | None = None) -> None:
        if freq is not None and freq < 0:
            raise ValueError(f"freq={freq}: expected 0 (geometric), N > 0 or None")
        self.freq = freq
        self.first = int(first)
        self.tag = f"[{tag}] " if tag else ""
        self.log_to_file = log_to_file
        self.num_epochs = num_epochs
        self.metric = metric
        self.metric_is_pct = metric_is_pct
        self.file = file
        self._source: tuple[str, bool] | None = None
        self._reset_epoch()
        self.epochs_done = 0
        self.last_lr: float | None = None
        self._header_done = False

    # --- accumulators (CNTK's ProgressWriter::Impl: (start, end) pairs of the window) ---
    def _reset_epoch(self) -> None:
        self.samples = [0, 0]
        self.updates = [0, 0]
        self.loss = [0.0, 0.0]
        self.metric_sum: list[float] | None = None
        self._epoch_start = time.perf_counter()

    def log(self, line: str) -> None:
        """Print one line (or append it to ``log_to_file``)."""
        if self.log_to_file is not None:
            with open(self.log_to_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        else:
            print(line, file=self.file if self.file is not None else sys.stdout, flush=True)

    def _should_write(self, update: int) -> bool:
        if self.freq is None:
            return False
        if self.freq == 0:
            return ((update + 1) & update) == 0
        return update % self.freq == 0 or update <= self.first

    def _metric_name(self, trainer: Any, logs: Mapping[str, Any]) -> tuple[str, bool] | None:
        """Which metric the table shows, and whether it is a per-minibatch log value (True)
        or the trainer's running epoch value (False)."""
        names = list(getattr(getattr(trainer, "metrics", None), "names", None) or [])
        if self.metric is not None:
            if isinstance(logs.get(self.metric), (int, float)):
                return self.metric, True
            if self.metric in names:
                return self.metric, False
            raise ValueError(f"ProgressPrinter(metric={self.metric!r}): no such metric; the "
                             f"trainer reports {names or 'none'}")
        for key, value in logs.items():
            if key not in _BATCH_KEYS and isinstance(value, (int, float)):
                return key, True
        for name in names:
            if name != "confusion_matrix":
                return name, False
        return None

    def on_fit_start(self, trainer: Any) -> None:
        if self.num_epochs is None:
            self.num_epochs = _epochs_total(trainer)
        if self.freq == 0 and not self._header_done and _is_main(trainer):
            self.log(" average      since    average      since      examples")
            self.log("    loss       last     metric       last              ")
            self.log(" ------------------------------------------------------")
        self._header_done = True

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if self.updates[1] == 0:
            self._epoch_start = time.perf_counter()

    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        samples = int(logs["batch_size"])
        if samples == 0:
            return
        if self._source is None:
            self._source = self._metric_name(trainer, logs) or ("", True)
        name, per_batch = self._source
        main = _is_main(trainer)
        lr = logs.get("lr")
        if lr is not None and float(lr) != self.last_lr:
            self.last_lr = float(lr)
            if main:
                self.log(f"Learning rate per minibatch: {float(lr):g}")
        self.samples[1] += samples
        self.updates[1] += 1
        self.loss[1] += float(logs["loss"]) * samples
        if name and per_batch and logs.get(name) is not None:
            if self.metric_sum is None:
                self.metric_sum = [0.0, 0.0]
            self.metric_sum[1] += float(logs[name]) * samples
        if self._should_write(self.updates[1]):
            if name and not per_batch:
                self._read_running(trainer, name)
            if main:
                self.log(self.update_line())
            self.samples[0], self.updates[0] = self.samples[1], self.updates[1]
            self.loss[0] = self.loss[1]
            if self.metric_sum is not None:
                self.metric_sum[0] = self.metric_sum[1]

    def _read_running(self, trainer: Any, name: str) -> None:
        """The trainer's metrics are epoch-running averages: sum = average * samples so far."""
        value = trainer.metrics.compute().get(name)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            if self.metric_sum is None:
                self.metric_sum = [0.0, 0.0]
            self.metric_sum[1] = float(value) * self.samples[1]

    def update_line(self) -> str:
        """The line for the current window (``ProgressPrinter.___write_progress_update``)."""
        window = self.samples[1] - self.samples[0]
        loss_since_start = _avg(self.loss[1], self.samples[1])
        loss_since_last = _avg(self.loss[1] - self.loss[0], window)
        metric = self.metric_sum
        if self.freq == 0:
            line = " " + f"{loss_since_start:8.3g}   {loss_since_last:8.3g}   "
            if metric is not None:
                line += (f"{_avg(metric[1], self.samples[1]):8.3g}   "
                         f"{_avg(metric[1] - metric[0], window):8.3g}   ")
            else:
                line += f"{'':8s}   {'':8s}   "
            return line + f" {self.samples[1]:10d}"
        line = f" Minibatch[{self.updates[0] + 1:4d}-{self.updates[1]:4d}]: "
        line += f"loss = {loss_since_last:0.6f} * {window:d}"
        if metric is not None:
            value = _avg(metric[1] - metric[0], window)
            line += ", " + (f"metric = {value * 100:0.2f}% * {window:d}" if self.metric_is_pct
                            else f"metric = {value:0.6f} * {window:d}")
        return line + ";"

    def summary_line(self, seconds: float) -> str:
        """``Finished Epoch[k of n]: ...`` for the epoch just finished."""
        samples = self.samples[1]
        of = f" of {self.num_epochs}" if self.num_epochs is not None else ""
        line = (f"Finished Epoch[{self.epochs_done}{of}]: {self.tag}loss = "
                f"{_avg(self.loss[1], samples):0.6f} * {samples}")
        if self.metric_sum is not None:
            value = _avg(self.metric_sum[1], samples)
            line += (f", metric = {value * 100:0.2f}% * {samples}" if self.metric_is_pct
                     else f", metric = {value:0.6f} * {samples}")
        speed = _avg(samples, seconds)
        return line + f" {seconds:0.3f}s ({speed:5.1f} samples/s);"

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        self.epochs_done = epoch + 1
        if self._source is not None and self._source[0] and not self._source[1] \
                and isinstance(logs.get(self._source[0]), (int, float)):
            if self.metric_sum is None:
                self.metric_sum = [0.0, 0.0]
            self.metric_sum[1] = float(logs[self._source[0]]) * self.samples[1]
        seconds = logs.get("seconds")
        if seconds is None or not math.isfinite(float(seconds)):
            seconds = time.perf_counter() - self._epoch_start
        if _is_main(trainer) and self.updates[1] > 0:
            self.log(self.summary_line(float(seconds)))
        self._reset_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {"samples": list(self.samples), "updates": list(self.updates),
                "loss": list(self.loss),
                "metric_sum": None if self.metric_sum is None else list(self.metric_sum),
                "epochs_done": self.epochs_done, "last_lr": self.last_lr,
                "header_done": self._header_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.samples = [int(v) for v in state["samples"]]
        self.updates = [int(v) for v in state["updates"]]
        self.loss = [float(v) for v in state["loss"]]
        self.metric_sum = (None if state["metric_sum"] is None
                           else [float(v) for v in state["metric_sum"]])
        self.epochs_done = int(state["epochs_done"])
        self.last_lr = state["last_lr"]
        self._header_done = bool(state["header_done"])


class TestConfig(Callback):
    """Evaluate a test set after training and print CNTK's ``Finished Evaluation`` line.

    CNTK's ``cntk.train.TestConfig(minibatch_source, minibatch_size, model_inputs_to_streams)``:
    after the last epoch the trainer's model is evaluated on ``source`` (any data form the
    trainer takes; a ``MinibatchSource`` is read in minibatches of ``minibatch_size`` samples
    with ``input_map``, which :func:`rnnkit.training.cntk.train` fills in from the training
    call when left out) and one line is printed::

        Finished Evaluation [1]: Minibatch[1-4]: metric = 12.34% * 480;

    (the number of test summaries so far, the minibatches read, the metric averaged over the
    samples, and the samples). The metric is ``metric`` or the trainer's first metric, else the
    loss. ``metric_is_pct=False`` prints it as a plain number. Every value the evaluation
    returned is kept in :attr:`results` (``{"loss": ..., "<metric>": ...}``).
    """

    __test__ = False   # not a pytest test class, whatever its name

    def __init__(self, source: Any, minibatch_size: int | None = None,
                 input_map: Mapping[str, Any] | None = None, metric: str | None = None,
                 metric_is_pct: bool = True, file: TextIO | None = None) -> None:
        self.source = source
        self.minibatch_size = minibatch_size
        self.input_map = input_map
        self.metric = metric
        self.metric_is_pct = metric_is_pct
        self.file = file
        self.results: dict[str, Any] = {}
        self.summaries = 0

    def _feed(self, trainer: Any) -> Any:
        from rnnkit.data import MinibatchSource
        from rnnkit.training.batches import SourceBatches, make_feed

        data = self.source
        if isinstance(data, MinibatchSource):
            if self.minibatch_size is None:
                raise ValueError("TestConfig on a MinibatchSource needs minibatch_size= "
                                 "(samples per minibatch, as CNTK)")
            data = SourceBatches(data, self.minibatch_size, self.input_map)
        return make_feed(data, batch_size=self.minibatch_size, shuffle=False,
                         seed=getattr(trainer, "seed", 0))

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        feed = self._feed(trainer)
        minibatches, samples = 0, 0
        while (batch := feed.next_batch()) is not None:
            minibatches += 1
            samples += int(batch.size)
        feed.restart()
        self.results = dict(trainer.evaluate(feed))
        self.summaries += 1
        names = [n for n in getattr(getattr(trainer, "metrics", None), "names", None) or []
                 if n != "confusion_matrix"]
        key = self.metric or (names[0] if names else "loss")
        if key not in self.results:
            raise ValueError(f"TestConfig(metric={key!r}): the evaluation reports "
                             f"{', '.join(self.results)}")
        value = float(self.results[key])
        shown = f"{value * 100:0.2f}%" if self.metric_is_pct else f"{value:0.6f}"
        if _is_main(trainer):
            print(f"Finished Evaluation [{self.summaries}]: Minibatch[1-{minibatches}]: "
                  f"metric = {shown} * {samples};",
                  file=self.file if self.file is not None else sys.stdout, flush=True)
