"""``rnnkit.Trainer``: fit, evaluate and predict any model on any data form rnnkit knows.

The trainer knows nothing about which model it trains (minGPT's rule): it calls
``model(*batch.inputs)`` (plus ``lengths=`` for padded batches and ``state=`` when it carries a
recurrent state) and takes the first element when the model returns a tuple such as
``(output, state)``. The ``lengths`` of a padded batch are its first input's; they mask the
loss at the output's steps when the output has as many steps as that input, unless the model
says its output does not follow them (a class attribute ``lengths_mask_output = False``, e.g.
an encoder-decoder, whose output follows the target and whose targets mark their own padding
with -100). A model whose output has fewer steps than its input (a front end that pools time)
gives a method ``output_lengths(lengths) -> (B,)`` and the trainer masks the output with it.
Data forms and the :class:`~rnnkit.training.batches.Batch` they become are
in :mod:`rnnkit.training.batches`; losses in :mod:`rnnkit.training.losses`.

Symbols: ``B`` batch, ``T`` time steps, ``F`` input features, ``C`` classes, ``k`` the
truncated-BPTT window.

Example (a GRU classifier on random sequences; any ``nn.Module`` works):
    >>> import torch, rnnkit
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.rnn = torch.nn.GRU(3, 8, batch_first=True)
    ...         self.head = torch.nn.Linear(8, 2)
    ...     def forward(self, x):                       # x: (B, T, 3)
    ...         return self.head(self.rnn(x)[0][:, -1])  # (B, 2)
    >>> x, y = torch.randn(64, 5, 3), torch.randint(0, 2, (64,))
    >>> trainer = rnnkit.Trainer(Net(), loss="cross_entropy", lr=1e-2, verbose=False)
    >>> history = trainer.fit((x, y), epochs=2, batch_size=16)
    >>> sorted(history.history), len(history.epochs)
    (['loss', 'lr', 'samples_per_s', 'seconds'], 2)
    >>> trainer.predict(x).shape
    torch.Size([64, 2])
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.training.batches import Batch, Feed, make_feed
from rnnkit.training.distributed import DistributedContext
from rnnkit.training.losses import Loss, resolve_loss
from rnnkit.training.rmsprop import RMSprop
from rnnkit.training.tbptt import StateCarrier, split_time

__all__ = ["History", "NonFiniteError", "Trainer"]

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "rmsprop_keras": RMSprop,       # Keras's formula: sqrt(v + epsilon), not sqrt(v) + eps
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
}

_PRECISIONS = {"fp32": None, "float32": None, "32": None,
               "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class NonFiniteError(FloatingPointError, ValueError):
    """A NaN or Inf in a batch's inputs, targets, loss or gradients; the batch was not applied.

    ``epoch`` (0-based), ``batch`` (1-based within the epoch), ``step`` (optimizer updates so
    far) and ``where`` ("loss", "input 0", ...) say which.
    """

    def __init__(self, message: str, *, epoch: int, batch: int, step: int, where: str) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.step, self.where = epoch, batch, step, where


class History:
    """What :meth:`Trainer.fit` returns: per-epoch logs, as Keras' ``History``.

    ``history``: ``{"loss": [...], "val_loss": [...], "<metric>": [...], "lr": [...], ...}``,
    one entry per epoch; ``epochs``: the 0-based epoch numbers (Keras' ``History.epoch``).
    """

    def __init__(self) -> None:
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []

    @property
    def epoch(self) -> list[int]:
        """Keras' spelling of :attr:`epochs`."""
        return self.epochs

    def append(self, epoch: int, logs: Mapping[str, Any]) -> None:
        self.epochs.append(int(epoch))
        for key, value in logs.items():
            if key != "epoch":
                self.history.setdefault(key, []).append(value)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()},
                "epochs": list(self.epochs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epochs = list(state["epochs"])

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, keys={sorted(self.history)})"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _first_nonfinite(t: Tensor) -> str | None:
    """A readable place of the first NaN/Inf of ``t``, or None if all are finite."""
    if not t.is_floating_point() and not t.is_complex():
        return None
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return f"{float(t[index])} at index {index}"


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


class Trainer:
    """Train, evaluate and predict with any ``nn.Module`` on rnnkit's data forms.

    Args:
        model: the module; called ``model(*inputs)`` (+ ``lengths=``, + ``state=`` when the
            trainer carries state). It may return a Tensor or a tuple ``(output, state, ...)``.
        loss: ``"mse"``, ``"cross_entropy"``, ``"sequence_cross_entropy"``, ... (see
            :mod:`rnnkit.training.losses`) or a callable ``(output, target) -> scalar``.
        optimizer: ``"adam"``, ``"adamw"``, ``"rmsprop"`` (torch's), ``"rmsprop_keras"``
            (:class:`rnnkit.training.RMSprop`, Keras's formula), ``"sgd"``, ``"adagrad"``, a
            ``torch.optim.Optimizer`` over the model's parameters, or a callable
            ``params -> Optimizer``.
        lr: learning rate for a named optimizer.
        metrics: metric names or objects for :class:`rnnkit.training.metrics.Metrics`
            ("accuracy", "f1", "mse", "perplexity", ...); padding never counts.
        clip_grad_norm: clip the global gradient norm to this value before each update.
        scheduler: a ``torch.optim.lr_scheduler`` object over ``optimizer``, or a callable
            ``optimizer -> scheduler``; stepped once per epoch (``scheduler_interval="step"``:
            per update). ``ReduceLROnPlateau`` steps on ``val_loss`` (``loss`` without
            validation).
        callbacks: :class:`rnnkit.training.callbacks.Callback` objects (Keras-style hooks).
        tbptt: truncated BPTT window ``k``: each batch's time axis is cut into chunks of ``k``
            steps, one update per chunk, the model's state carried detached across chunks and,
            for stateful data, across batches (see :mod:`rnnkit.training.tbptt`).
        precision: ``"fp32"`` or ``"bf16"`` (``torch.autocast``; the loss is taken in fp32).
        seed: seeds Python, NumPy and torch at the first ``fit`` (unless resuming), and the
            shuffling of every pass (pass ``p`` uses ``seed + p``).
        label_smoothing: for the cross-entropy losses.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        device: where to train; default: where the model's parameters are.
        check_finite: raise :class:`NonFiniteError` naming epoch and batch on a NaN/Inf input,
            target, loss or gradient norm, before the update is applied.
        verbose: show progress (a ``ProgressBar`` from :mod:`rnnkit.training.progress`) unless
            a progress callback is already given.

    Attributes (for callbacks): ``model``, ``optimizer``, ``scheduler``, ``epoch`` (0-based),
    ``epochs`` (the epoch this ``fit`` ends at), ``steps_per_epoch`` (batches per epoch when
    known), ``global_step`` (updates done), ``run_dir`` (``fit``'s ``checkpoint_dir`` or None),
    ``is_main_process``, ``history``, ``stop_training`` (set True to stop after this batch).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss | Callable[..., Tensor] = "mse",
        optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] = "adam",
        lr: float = 1e-3,
        metrics: Iterable[Any] | None = None,
        clip_grad_norm: float | None = None,
        scheduler: Any = None,
        callbacks: Iterable[Any] | None = None,
        tbptt: int | None = None,
        precision: str = "fp32",
        seed: int = 0,
        *,
        label_smoothing: float = 0.0,
        scheduler_interval: str = "epoch",
        device: torch.device | str | None = None,
        check_finite: bool = True,
        verbose: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        param = next(model.parameters(), None)
        if param is None:
            raise ValueError(f"{type(model).__name__} has no parameters to train")
        # under torchrun: this process's rank, its device (cuda:LOCAL_RANK), the process group
        self.distributed = DistributedContext.from_env(
            device=device if device is not None else param.device)
        if device is not None or self.distributed.enabled:
            device = self.distributed.device
            model.to(device)
        self.device = torch.device(device) if device is not None else param.device
        self._ddp_model: nn.Module | None = None  # DistributedDataParallel(model) once fitting
        self.input_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                                None)
        self.loss = resolve_loss(loss, label_smoothing)
        self.optimizer = self._make_optimizer(optimizer, lr)
        if scheduler is not None and not hasattr(scheduler, "step"):
            scheduler = scheduler(self.optimizer)
        self.scheduler = scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got "
                             f"{scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        if clip_grad_norm is not None and not float(clip_grad_norm) > 0:
            raise ValueError(f"clip_grad_norm must be > 0, got {clip_grad_norm!r}")
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        if tbptt is not None and (isinstance(tbptt, bool) or not isinstance(tbptt, int)
                                  or tbptt < 1):
            raise ValueError(f"tbptt must be a positive int (steps per update), got {tbptt!r}")
        self.tbptt = tbptt
        key = str(precision).lower()
        if key not in _PRECISIONS:
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = "bf16" if _PRECISIONS[key] is not None else "fp32"
        self.autocast_dtype = _PRECISIONS[key]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self.metric_names = list(metrics or [])
        self.metrics = self._make_metrics()
        self.callbacks = list(callbacks or [])
        self.check_finite = bool(check_finite)
        self.verbose = verbose
        self.takes_lengths = _accepts(model, "lengths")
        self.takes_state = _accepts(model, "state")
        # what callbacks read
        self.epoch = 0
        self.global_step = 0
        self.run_dir = None
        self.is_main_process = self.distributed.is_main
        self.history = History()
        self.stop_training = False
        self.epochs = 0
        self._seeded = False
        self._samples_seen = 0
        self._run_start_epoch = 0
        self._acc: dict[str, Any] | None = None
        self._phase = "batches"
        self._fit_callbacks: list[Any] = []
        self._batch_in_epoch = 0
        self._feed: Feed | None = None
        self._carrier: StateCarrier | None = None
        self.steps_per_epoch: int | None = None  # batches per epoch, when known
        self._keep_last: int | None = 3
        self._checkpoint_every: int | None = None

    # ------------------------------------------------------------------ construction helpers
    def _make_optimizer(self, optimizer: Any, lr: float) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        if isinstance(optimizer, str):
            key = optimizer.lower()
            if key not in _OPTIMIZERS:
                raise ValueError(f"unknown optimizer {optimizer!r}; known: "
                                 f"{', '.join(sorted(_OPTIMIZERS))}, or a torch.optim.Optimizer")
            if not float(lr) > 0:
                raise ValueError(f"lr must be > 0, got {lr!r}")
            return _OPTIMIZERS[key](self.model.parameters(), lr=float(lr))
        if callable(optimizer):
            built = optimizer(self.model.parameters())
            if not isinstance(built, torch.optim.Optimizer):
                raise TypeError(f"the optimizer factory returned {type(built).__name__}, not a "
                                "torch.optim.Optimizer")
            return built
        raise TypeError(f"optimizer must be a name, a torch.optim.Optimizer or a factory, got "
                        f"{type(optimizer).__name__}")

    def _make_metrics(self) -> Any:
        if not self.metric_names:
            return None
        try:
            from rnnkit.training.metrics import Metrics
        except ImportError as error:  # pragma: no cover - the module ships with rnnkit
            raise ImportError(f"metrics need rnnkit.training.metrics: {error}") from None
        return Metrics(self.metric_names, loss_name=self.loss.name)

    def _progress_callbacks(self, verbose: bool) -> list[Any]:
        """The user's callbacks plus the defaults: a CSVLogger when there is a run directory, a
        ProgressBar when verbose and none shows progress (``callbacks.default_callbacks``)."""
        from rnnkit.training.callbacks import default_callbacks

        return default_callbacks(self.callbacks, run_dir=self.run_dir, progress=verbose)

    def _callback_saves(self, callbacks: list[Any]) -> bool:
        """A ModelCheckpoint callback decides when to save (fit's epoch saves stand down)."""
        try:
            module = importlib.import_module("rnnkit.training.callbacks")
        except ImportError:
            return False
        kind = getattr(module, "ModelCheckpoint", None)
        return kind is not None and any(isinstance(c, kind) for c in callbacks)

    # ------------------------------------------------------------------ one forward
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _forward(self, batch: Batch, state: Any, use_state: bool) -> tuple[Tensor, Any]:
        kwargs: dict[str, Any] = {}
        if batch.lengths is not None:
            if not self.takes_lengths:
                raise TypeError(
                    f"the batch is padded (it has lengths) but {type(self.model).__name__}."
                    "forward takes no lengths= argument, so padding would count; give the "
                    "model a lengths argument or data of equal lengths")
            kwargs["lengths"] = batch.lengths
        if use_state and state is not None:
            kwargs["state"] = state
        # training steps go through DDP (gradients averaged over ranks), evaluation does not
        model = self._ddp_model if self._ddp_model is not None and torch.is_grad_enabled() \
            else self.model
        with self._autocast():
            out = model(*batch.inputs, **kwargs)
        new_state = None
        if isinstance(out, (tuple, list)):
            if not out:
                raise TypeError(f"{type(self.model).__name__} returned an empty tuple")
            if len(out) > 1:
                new_state = out[1]
            out = out[0]
        if not isinstance(out, Tensor):
            raise TypeError(f"{type(self.model).__name__} must return a Tensor or a tuple "
                            f"(output, state), got {type(out).__name__}")
        return out, new_state

    def _mask_for(self, batch: Batch, output: Tensor) -> Tensor | None:
        if batch.lengths is None or output.dim() < 2:
            return None
        if not getattr(self.model, "lengths_mask_output", True):
            return None  # the lengths describe an input the output's steps do not follow
        steps = batch.inputs[0].shape[1]
        if output.shape[1] != steps:
            # a model that shortens time (a conv front end, a pyramidal encoder) says how many
            # output steps each row keeps with output_lengths(lengths); others are not masked
            to_output = getattr(self.model, "output_lengths", None)
            if not callable(to_output):
                return None
            kept = torch.as_tensor(to_output(batch.lengths)).to("cpu", torch.int64)  # (B,)
            return (torch.arange(output.shape[1]) < kept.unsqueeze(1)).to(output.device)
        return batch.mask(steps).to(output.device)

    def _check_batch(self, batch: Batch, where: str) -> None:
        if not self.check_finite:
            return
        for i, x in enumerate(batch.inputs):
            bad = _first_nonfinite(x)
            if bad:
                self._raise_nonfinite(f"input {i}", f"input {i} holds {bad}")
        if batch.target is not None:
            bad = _first_nonfinite(batch.target)
            if bad:
                self._raise_nonfinite("target", f"the target holds {bad}")

    def _raise_nonfinite(self, where: str, what: str) -> None:
        total = f"/{self.epochs}" if self.epochs else ""
        raise NonFiniteError(
            f"epoch {self.epoch + 1}{total}, batch {self._batch_in_epoch} (after "
            f"{self.global_step} updates): {what}; the batch was not applied",
            epoch=self.epoch, batch=self._batch_in_epoch, step=self.global_step, where=where)

    # ------------------------------------------------------------------ training step
    def _train_batch(self, batch: Batch, carrier: StateCarrier | None) -> tuple[float, int]:
        """One batch: one update per tbptt chunk. Returns (loss sum, count) over the batch."""
        batch = batch.to(self.device, self.input_dtype)
        self._check_batch(batch, "training")
        if batch.target is None:
            raise ValueError(f"training batch {self._batch_in_epoch} has no target")
        chunks = split_time(batch, self.tbptt) if self.tbptt else [batch]
        batch_sum, batch_count = 0.0, 0
        for chunk in chunks:
            state = carrier.state_for(chunk) if carrier is not None else None
            output, new_state = self._forward(chunk, state, carrier is not None)
            mask = self._mask_for(chunk, output)
            total, count = self.loss.sum_and_count(output.float(), chunk.target, mask)
            if carrier is not None:
                carrier.update(chunk, new_state)
            if self.check_finite and not bool(torch.isfinite(total.detach())):
                self._raise_nonfinite("loss", f"the loss is {float(total.detach())}")
            if self.metrics is not None:
                with torch.no_grad():
                    self.metrics.update(*self.loss.align(output.detach().float(), chunk.target,
                                                         mask))
            if count == 0:  # a chunk of padding only: nothing to learn from
                continue
            self.optimizer.zero_grad(set_to_none=True)
            (total / count).backward()
            if self.clip_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
                if self.check_finite and not bool(torch.isfinite(norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._raise_nonfinite("gradient", f"the gradient norm is {float(norm)}")
            self.optimizer.step()
            self.global_step += 1
            if self.scheduler is not None and self.scheduler_interval == "step":
                self._step_scheduler(None)
            batch_sum += float(total.detach())
            batch_count += count
        return batch_sum, batch_count

    def _step_scheduler(self, logs: Mapping[str, Any] | None) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if logs is None:
                raise ValueError("ReduceLROnPlateau needs scheduler_interval='epoch'")
            self.scheduler.step(logs.get("val_loss", logs["loss"]))
        else:
            self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train: Any,
        validation: Any = None,
        epochs: int = 10,
        epoch_size: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        keep_last: int | None = 3,
        *,
        checkpoint_every: int | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        verbose: bool | None = None,
    ) -> History:
        """Train for ``epochs`` epochs; returns the :class:`History`.

        Args:
            train: any data form of :func:`rnnkit.training.batches.make_feed`.
            validation: evaluated after every epoch (``val_loss``, ``val_<metric>``).
            epochs: epochs to train in this call (a second ``fit`` goes on from where the
                first stopped; epoch numbers continue). A resumed run counts the epochs its
                checkpoint had done: the same ``epochs`` ends where the first run would have.
            epoch_size: samples per epoch (CNTK's meaning: sequences for tensors and
                DataLoaders, time steps for a ``MinibatchSource``); None: one pass over
                the data. An epoch may end inside a pass; the next goes on from there.
            checkpoint_dir: write a checkpoint (:mod:`rnnkit.training.checkpoint`) there at
                the end of every epoch (unless a ``ModelCheckpoint`` callback decides when) and
                every ``checkpoint_every`` updates; callbacks see it as ``trainer.run_dir``.
            resume: continue from the newest complete checkpoint in ``checkpoint_dir`` (start
                fresh when it holds none): the model, optimizer, scheduler, callbacks, metric
                accumulators, every random state, the epoch, the step and the position in the
                data come back, so the run ends with the weights an uninterrupted run would
                have, bit for bit (CPU, same thread count), even from the middle of an epoch.
            keep_last: how many checkpoints to keep (None: all).
            checkpoint_every: also checkpoint after the batch that completes every N-th
                update.
            batch_size: for tensors and datasets (default 32); samples per minibatch for a
                bare ``MinibatchSource``.
            shuffle: shuffle tensors and datasets (a DataLoader keeps its own sampler).
            verbose: override the trainer's ``verbose`` for this call.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if epoch_size is not None and (isinstance(epoch_size, bool) or
                                       not isinstance(epoch_size, int) or epoch_size < 1):
            raise ValueError(f"epoch_size must be a positive int (samples), got {epoch_size!r}")
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not
                                             isinstance(checkpoint_every, int) or
                                             checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int (updates), got "
                             f"{checkpoint_every!r}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir (where the checkpoints are)")
        feed = make_feed(train, batch_size=batch_size, shuffle=shuffle, seed=self.seed)
        val_feed = (None if validation is None else
                    make_feed(validation, batch_size=batch_size, shuffle=False, seed=self.seed))
        self._check_stateful(feed)
        feed = self.distributed.shard_feed(feed)  # this rank's share (no-op in one process)
        if self.distributed.enabled and self._ddp_model is None:
            self._ddp_model = self.distributed.wrap_model(self.model)
        self.run_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self._keep_last = keep_last
        self._checkpoint_every = checkpoint_every
        self._feed = feed
        self.steps_per_epoch = feed.num_batches() if epoch_size is None else None
        self._carrier = StateCarrier() if (feed.stateful or self.tbptt) else None
        self._phase = "batches"
        callbacks = self._progress_callbacks(self.verbose if verbose is None else verbose)
        self._fit_callbacks = callbacks
        saved = None
        if resume:
            from rnnkit.training.checkpoint import list_checkpoints, load_checkpoint

            if list_checkpoints(self.run_dir):
                # the weights load here; a model that does not match raises the checkpoint
                # module's CheckpointMismatchError naming the first differing parameter
                saved = load_checkpoint(self.run_dir, model=self.model,
                                        map_location=self.device).trainer_state
                self._load_trainer_state(saved, feed, epochs)
                if not self.distributed.is_main and self._acc is not None:
                    # rank 0's running loss and metrics came back on every rank: count once
                    self._acc.update(loss_sum=0.0, loss_count=0)
                    if self.metrics is not None:
                        self.metrics.reset()
        if saved is None:
            self._run_start_epoch = self.epoch
            self.epochs = self.epoch + epochs
            self._acc = None
            if not self._seeded:
                _seed_everything(self.seed)
        self._seeded = True
        self.stop_training = False
        for cb in callbacks:
            cb.on_fit_start(self)
        if saved is not None:
            # after on_fit_start, which may reset a callback (Keras' EarlyStopping does)
            self._load_callbacks(saved["callbacks"], self.callbacks)
            from rnnkit.training.checkpoint import restore_rng_state

            restore_rng_state(saved["rng"])
        while self.epoch < self.epochs and not self.stop_training and not feed.exhausted:
            logs = self._run_epoch(feed, val_feed, epoch_size, callbacks)
            if logs is None:  # the data ran out before the epoch began
                break
            self.history.append(self.epoch, logs)
            self._phase = "epoch_end"
            for cb in callbacks:
                cb.on_epoch_end(self, self.epoch, logs)
            self.stop_training = self.distributed.any(self.stop_training)  # all ranks stop
            self._phase = "batches"
            self.epoch += 1
            self._acc = None
            if self.run_dir is not None and not self._callback_saves(callbacks):
                self.save_checkpoint()
        for cb in callbacks:
            cb.on_fit_end(self, self.history)
        return self.history

    def _check_stateful(self, feed: Feed) -> None:
        if (feed.stateful or self.tbptt) and not self.takes_state:
            why = f"tbptt={self.tbptt}" if self.tbptt else f"stateful data ({feed.describe()})"
            raise TypeError(f"{why} carries the recurrent state between updates, but "
                            f"{type(self.model).__name__}.forward takes no state= argument; "
                            "give it forward(x, lengths=None, state=None) -> (output, state)")

    def _run_epoch(self, feed: Feed, val_feed: Feed | None, epoch_size: int | None,
                   callbacks: list[Any]) -> dict[str, Any] | None:
        self.model.train()
        carrier = self._carrier
        if self._acc is None:  # a new epoch (a resumed one goes on with its accumulators)
            for cb in callbacks:
                cb.on_epoch_start(self, self.epoch)
            if self.metrics is not None:
                self.metrics.reset()
            self._acc = {"loss_sum": 0.0, "loss_count": 0, "samples": 0, "batches": 0,
                         "seconds": 0.0}
        acc = self._acc
        started = time.perf_counter()
        while not self.stop_training:
            if epoch_size is not None and acc["samples"] >= epoch_size:
                break
            batch = feed.next_batch()
            if batch is None:
                if carrier is not None:
                    carrier.reset()  # a new pass starts new sequences
                if feed.exhausted or epoch_size is None:
                    break
                continue
            acc["batches"] += 1
            self._batch_in_epoch = acc["batches"]
            steps_before = self.global_step
            batch_sum, batch_count = self._train_batch(batch, carrier)
            acc["loss_sum"] += batch_sum
            acc["loss_count"] += batch_count
            batch_samples = int(batch.num_samples)
            if self.distributed.enabled:  # every rank's samples: epoch_size counts them all
                batch_samples = int(self.distributed.all_reduce(torch.tensor([batch_samples]))[0])
            acc["samples"] += batch_samples
            self._samples_seen += batch_samples
            batch_logs = {"epoch": self.epoch, "step": self.global_step,
                          "batch": acc["batches"], "batch_size": batch.size,
                          "samples_seen": self._samples_seen,
                          "loss": batch_sum / max(batch_count, 1), "lr": self.lr}
            for cb in callbacks:
                cb.on_batch_end(self, batch_logs)
            if self.distributed.enabled:  # a callback that stops one rank stops them all
                self.stop_training = self.distributed.any(self.stop_training)
            every = self._checkpoint_every
            if (self.run_dir is not None and every is not None and
                    self.global_step // every > steps_before // every):
                acc["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
        if feed.exhausted and acc["batches"] == 0:
            return None
        seconds = acc["seconds"] + time.perf_counter() - started
        loss_sum, loss_count = acc["loss_sum"], acc["loss_count"]
        if self.distributed.enabled:  # report the epoch over every rank's share
            totals = torch.tensor([loss_sum, loss_count], dtype=torch.float64)
            loss_sum, loss_count = self.distributed.all_reduce(totals).tolist()
            if self.metrics is not None:
                self.metrics.sync(self.distributed.all_reduce)
        logs: dict[str, Any] = {"epoch": self.epoch,
                                "loss": loss_sum / loss_count if loss_count else math.nan}
        if self.metrics is not None:
            logs.update(self.metrics.compute())
        if val_feed is not None:
            for key, value in self._evaluate_feed(val_feed).items():
                logs[f"val_{key}"] = value
        logs["lr"] = self.lr  # the rate this epoch trained with (Keras logs it before stepping)
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self._step_scheduler(logs)
        logs["seconds"] = seconds
        logs["samples_per_s"] = acc["samples"] / seconds if seconds > 0 else math.inf
        return logs

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a checkpoint of everything a resume needs to ``run_dir`` now; returns its path.

        Called by ``fit`` at the end of every epoch and every ``checkpoint_every`` updates;
        callbacks may call it too (from ``on_epoch_end`` it counts the epoch as done).
        """
        if self.run_dir is None or self._feed is None:
            raise ValueError("save_checkpoint needs a run directory: call it during "
                             "fit(..., checkpoint_dir=...)")
        from rnnkit.training.checkpoint import save_checkpoint

        if not self.is_main_process:
            return self.run_dir
        return save_checkpoint(self.run_dir, model=self.model,
                               trainer_state=self._trainer_state(), step=self.global_step,
                               keep_last=self._keep_last)

    def _trainer_state(self) -> dict[str, Any]:
        from rnnkit.training.checkpoint import capture_rng_state

        epoch_done = self._phase == "epoch_end"
        acc = None if (epoch_done or self._acc is None) else dict(self._acc)
        feed = self._feed
        return {
            "format": "rnnkit.Trainer", "version": 1,
            "epoch": self.epoch + (1 if epoch_done else 0),
            "global_step": self.global_step,
            "run_start_epoch": self._run_start_epoch,
            "samples_seen": self._samples_seen,
            "epoch_accumulators": acc,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            # the user's callbacks (the default progress bar keeps nothing)
            "callbacks": [{"type": type(cb).__name__,
                           "state": cb.state_dict() if hasattr(cb, "state_dict") else None}
                          for cb in self.callbacks],
            "metrics": None if self.metrics is None else self.metrics.state_dict(),
            "rng": capture_rng_state(),
            "data": {"kind": feed.describe(), "batches_per_pass": feed.num_batches(),
                     "position": feed.state_dict()},
            "carried_state": None if self._carrier is None else self._carrier.state_dict(),
            "history": self.history.state_dict(),
        }

    def _load_trainer_state(self, state: Mapping[str, Any], feed: Feed, epochs: int) -> None:
        if not isinstance(state, Mapping) or state.get("format") != "rnnkit.Trainer":
            raise ValueError(f"the checkpoint in {self.run_dir} was not written by "
                             "rnnkit.Trainer (no trainer state to resume from)")
        data = state["data"]
        if data["kind"] != feed.describe() or data["batches_per_pass"] != feed.num_batches():
            raise ValueError(
                f"the checkpoint in {self.run_dir} was trained on {data['kind']} with "
                f"{data['batches_per_pass']} batches per pass; this run's data is "
                f"{feed.describe()} with {feed.num_batches()}: resume with the same data")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.metrics is not None and state["metrics"] is not None:
            self.metrics.load_state_dict(state["metrics"])
        feed.load_state_dict(data["position"])
        if self._carrier is not None and state["carried_state"] is not None:
            self._carrier.load_state_dict(state["carried_state"], self.device)
        self.history.load_state_dict(state["history"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self._run_start_epoch = int(state["run_start_epoch"])
        self.epochs = self._run_start_epoch + epochs
        self._samples_seen = int(state["samples_seen"])
        acc = state["epoch_accumulators"]
        self._acc = None if acc is None else dict(acc)

    def _load_callbacks(self, states: list[Any], callbacks: list[Any]) -> None:
        saved = [entry["type"] for entry in states]
        given = [type(cb).__name__ for cb in callbacks]
        if saved != given:
            raise ValueError(f"the checkpoint in {self.run_dir} was written with the callbacks "
                             f"{saved}, this run has {given}: resume with the same callbacks")
        for cb, entry in zip(callbacks, states, strict=True):
            if entry["state"] is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(entry["state"])

    # ------------------------------------------------------------------ evaluate / predict
    def _eval_batches(self, feed: Feed) -> Iterable[tuple[Batch, Tensor]]:
        """(batch on the device, model output) for one pass of ``feed``, state carried."""
        carrier = StateCarrier() if feed.stateful else None
        if carrier is not None:
            self._check_stateful(feed)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                while (batch := feed.next_batch()) is not None:
                    batch = batch.to(self.device, self.input_dtype)
                    state = carrier.state_for(batch) if carrier is not None else None
                    output, new_state = self._forward(batch, state, carrier is not None)
                    if carrier is not None:
                        carrier.update(batch, new_state)
                    yield batch, output.float()
        finally:
            feed.restart()
            self.model.train(was_training)

    def _evaluate_feed(self, feed: Feed) -> dict[str, float]:
        metrics = self._make_metrics()
        loss_sum, loss_count = 0.0, 0
        for i, (batch, output) in enumerate(self._eval_batches(feed)):
            if batch.target is None:
                raise ValueError(f"evaluation batch {i + 1} has no target; use predict()")
            mask = self._mask_for(batch, output)
            total, count = self.loss.sum_and_count(output, batch.target, mask)
            loss_sum += float(total)
            loss_count += count
            if metrics is not None:
                metrics.update(*self.loss.align(output, batch.target, mask))
        result = {"loss": loss_sum / loss_count if loss_count else math.nan}
        if metrics is not None:
            result.update(metrics.compute())
        return result

    def evaluate(self, data: Any, *, batch_size: int | None = None) -> dict[str, Any]:
        """Loss and metrics over one pass of ``data`` (model in eval mode, no gradients).

        Returns ``{"loss": ..., "<metric>": ...}``; the loss is the exact mean over every
        counted element (padding excluded), whatever the batch sizes.
        """
        return self._evaluate_feed(make_feed(data, batch_size=batch_size, shuffle=False,
                                             seed=self.seed))

    def predict(self, data: Any, *, batch_size: int | None = None) -> Tensor:
        """The model's outputs over one pass of ``data``, concatenated on the CPU.

        ``data`` may be inputs alone (a tensor or array) or any form with targets (ignored).
        Sequence outputs of batches with different ``T`` are zero-padded to the longest.
        """
        outputs = [out.cpu() for _, out in self._eval_batches(
            make_feed(data, batch_size=batch_size, shuffle=False, seed=self.seed))]
        if not outputs:
            raise ValueError("predict got no batches")
        if outputs[0].dim() >= 2 and len({o.shape[1] for o in outputs}) > 1:
            steps = max(o.shape[1] for o in outputs)
            outputs = [torch.nn.functional.pad(o, (0, 0) * (o.dim() - 2) + (0, steps - o.shape[1]))
                       for o in outputs]
        return torch.cat(outputs)
