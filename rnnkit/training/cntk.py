"""CNTK-style training: ``train(model, loss, source, ...)`` and the learners ``adam``, ``sgd``,
``momentum_sgd``, so a CNTK script reads almost line for line.

CNTK (``cntk.ops.functions.Function.train``)::

    learner = adam(model.parameters, lr=0.005, momentum=0.9)
    progress_writer = ProgressPrinter(0)
    test_config = TestConfig(test_source)
    input_map = {features: source.streams.features, target: source.streams.target}
    loss.train(source, epoch_size=EPOCH_SIZE, parameter_learners=[learner],
               model_inputs_to_streams=input_map, callbacks=[progress_writer, test_config],
               minibatch_size=BATCH_SIZE, max_epochs=EPOCHS)

rnnkit::

    from rnnkit.training import ProgressPrinter, TestConfig
    from rnnkit.training.cntk import adam, train

    learner = adam(lr=0.005, momentum=0.9)
    input_map = {"features": source.streams.features, "target": source.streams.target}
    train(model, "squared_error", source, epoch_size=EPOCH_SIZE, learner=learner,
          input_map=input_map, callbacks=[ProgressPrinter(0), TestConfig(test_source)],
          minibatch_size=BATCH_SIZE, max_epochs=EPOCHS, metric="squared_error")

The differences are PyTorch's: the model is an ``nn.Module`` called on batch-major tensors, the
criterion is a loss name or callable (CNTK's ``(loss, metric)`` pair is ``loss=`` and
``metric=``), and ``input_map`` keys are names (the model's inputs, in order, plus
``"target"``) instead of CNTK input variables. It all runs on :class:`rnnkit.Trainer`, so
checkpoints, resume, tbptt and the other callbacks work here too.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from rnnkit.training.callbacks import Callback
from rnnkit.training.progress import ProgressBar, ProgressPrinter, TestConfig

__all__ = ["Learner", "adam", "classification_error", "momentum_sgd", "sgd", "train"]


class Learner:
    """What ``adam``/``sgd``/``momentum_sgd`` return: an optimizer factory with CNTK's options.

    Calling it with parameters builds the ``torch.optim`` optimizer (the trainer does that);
    ``lr`` may be a list: value ``i`` is the learning rate of epoch ``i`` (the last one stays),
    as a CNTK ``learning_parameter_schedule`` whose unit is the training epoch.
    """

    def __init__(self, kind: str, lr: float | Sequence[float], parameters: Any = None,
                 **options: Any) -> None:
        values = [lr] if isinstance(lr, numbers.Real) else list(lr)
        if not values or any(not isinstance(v, numbers.Real) or not float(v) > 0
                             for v in values):
            raise ValueError(f"{kind}: lr must be a positive number or a list of them, "
                             f"got {lr!r}")
        self.kind = kind
        self.lr_values = [float(v) for v in values]
        self.parameters = parameters
        self.options = options

    @property
    def lr(self) -> float:
        """The first learning rate (per minibatch)."""
        return self.lr_values[0]

    def __call__(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        params = list(self.parameters if self.parameters is not None else parameters)
        o = self.options
        if self.kind == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(o["momentum"],
                                    o["variance_momentum"]), eps=o["epsilon"],
                                    weight_decay=o["l2_regularization_weight"])
        momentum = o.get("momentum", 0.0)
        unit_gain = o.get("unit_gain", False)
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=momentum,
                                    dampening=momentum if unit_gain else 0.0,
                                    weight_decay=o["l2_regularization_weight"])
        if momentum and unit_gain:
            # CNTK's velocity starts at 0: v1 = (1 - m) g. torch's buffer starts at g unless a
            # buffer exists, so start one at zero to get CNTK's first step too.
            for group in optimizer.param_groups:
                for p in group["params"]:
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return optimizer

    def scheduler(self) -> Callable[[torch.optim.Optimizer], Any] | None:
        """A factory of the per-epoch schedule when ``lr`` is a list, else None."""
        if len(self.lr_values) == 1:
            return None
        values = self.lr_values

        def factory(optimizer: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda epoch: values[min(epoch, len(values) - 1)] / values[0])

        return factory

    def __repr__(self) -> str:
        lr = self.lr_values[0] if len(self.lr_values) == 1 else self.lr_values
        extra = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.kind}(lr={lr}{extra})"


def _split(first: Any, lr: Any, who: str) -> tuple[Any, Any]:
    """CNTK passes parameters first (``adam(model.parameters, lr=...)``); rnnkit lets you drop
    them (``adam(0.005, momentum=0.9)``): the trainer gives the model's."""
    if first is None:
        params = None
    elif isinstance(first, numbers.Real) or (
            isinstance(first, (list, tuple)) and first
            and all(isinstance(v, numbers.Real) for v in first)):
        if lr is not None:
            raise TypeError(f"{who}: lr given twice ({first!r} and lr={lr!r})")
        return None, first
    else:
        params = first() if callable(first) else first
    if lr is None:
        raise TypeError(f"{who}() needs lr=")
    return params, lr


def adam(parameters: Any = None, lr: float | Sequence[float] | None = None,
         momentum: float = 0.9, variance_momentum: float = 0.999, epsilon: float = 1e-8,
         l2_regularization_weight: float = 0.0) -> Learner:
    """CNTK's ``adam`` learner as ``torch.optim.Adam``.

    CNTK's ``momentum`` is Adam's ``beta1`` (the decay of the gradient's running mean) and
    ``variance_momentum`` its ``beta2`` (of the squared gradient's): ``adam(lr=0.005,
    momentum=0.9)`` is ``torch.optim.Adam(params, lr=0.005, betas=(0.9, 0.999))``. CNTK gives
    ``variance_momentum`` per sample (``momentum_schedule_per_sample(0.9999986)``); rnnkit's
    is per minibatch, torch's default 0.999. ``l2_regularization_weight`` adds ``w * param`` to
    the gradient (torch's ``weight_decay``). ``lr`` is per minibatch (the loss is the
    minibatch mean), as CNTK prints it: ``Learning rate per minibatch``. ``parameters`` may be
    left out; the trainer gives the model's.

    >>> adam(lr=0.005, momentum=0.9)  # doctest: +ELLIPSIS
    adam(lr=0.005, momentum=0.9, variance_momentum=0.999, ...)
    """
    params, lr = _split(parameters, lr, "adam")
    for name, value in (("momentum", momentum), ("variance_momentum", variance_momentum)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"adam: {name}={value!r} must be in [0, 1)")
    return Learner("adam", lr, params, momentum=float(momentum),
                   variance_momentum=float(variance_momentum), epsilon=float(epsilon),
                   l2_regularization_weight=float(l2_regularization_weight))


def sgd(parameters: Any = None, lr: float | Sequence[float] | None = None,
        l2_regularization_weight: float = 0.0) -> Learner:
    """CNTK's ``sgd``: plain gradient descent, ``torch.optim.SGD`` without momentum."""
    params, lr = _split(parameters, lr, "sgd")
    return Learner("sgd", lr, params, l2_regularization_weight=float(l2_regularization_weight))


def momentum_sgd(parameters: Any = None, lr: float | Sequence[float] | None = None,
                 momentum: float | None = None, unit_gain: bool = True,
                 l2_regularization_weight: float = 0.0) -> Learner:
    """CNTK's ``momentum_sgd``: SGD with momentum, CNTK's unit-gain form by default.

    Unit gain (CNTK's default): ``v = momentum * v + (1 - momentum) * g`` from ``v = 0``,
    ``param -= lr * v``; that is ``torch.optim.SGD(momentum=m, dampening=m)`` with the buffer
    started at zero. ``unit_gain=False`` is torch's classic ``v = m * v + g``.
    """
    params, lr = _split(parameters, lr, "momentum_sgd")
    if momentum is None:
        raise TypeError("momentum_sgd() needs momentum=")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum_sgd: momentum={momentum!r} must be in [0, 1)")
    return Learner("momentum_sgd", lr, params, momentum=float(momentum),
                   unit_gain=bool(unit_gain),
                   l2_regularization_weight=float(l2_regularization_weight))


def classification_error() -> Any:
    """CNTK's ``classification_error`` metric: the fraction of samples whose arg-max class is
    not the target, as a ``torchmetrics.Metric`` for the trainer's ``metrics=``."""
    import torchmetrics

    class ClassificationError(torchmetrics.Metric):
        higher_is_better = False
        full_state_update = False
        name = "classification_error"
        num_classes = None   # ask rnnkit's Metrics for (N, C) scores and (N,) class ids

        def __init__(self) -> None:
            super().__init__()
            self.add_state("wrong", default=torch.tensor(0, dtype=torch.long),
                           dist_reduce_fx="sum")
            self.add_state("total", default=torch.tensor(0, dtype=torch.long),
                           dist_reduce_fx="sum")

        def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
            self.wrong += (scores.argmax(dim=-1) != target).sum()
            self.total += target.numel()

        def compute(self) -> torch.Tensor:
            return self.wrong.double() / self.total.clamp(min=1)

    return ClassificationError()


# CNTK's criterion names -> rnnkit's losses and metrics
_LOSSES = {"squared_error": "mse", "cross_entropy_with_softmax": "cross_entropy"}
_METRICS: dict[str, Callable[[], Any] | str] = {"squared_error": "mse",
                                                "classification_error": classification_error}


def train(model: torch.nn.Module, loss: str | Callable[..., torch.Tensor], source: Any, *,
          max_epochs: int = 1, epoch_size: int | None = None,
          minibatch_size: int | None = None, learner: Learner | None = None,
          parameter_learners: Sequence[Learner] | None = None,
          callbacks: Sequence[Callback] | None = None,
          input_map: Mapping[str, Any] | None = None,
          model_inputs_to_streams: Mapping[str, Any] | None = None,
          metric: str | Any | None = None, validation: Any = None, seed: int = 0,
          **trainer_options: Any) -> Any:
    """Train ``model`` the way CNTK's ``criterion.train(source, ...)`` does; returns the
    :class:`~rnnkit.training.trainer.History`.

    Args:
        model: any ``nn.Module`` (batch-major input, e.g. ``Sequential(Fold(LSTM), Linear)``).
        loss: CNTK's ``"squared_error"`` (``"mse"``) or ``"cross_entropy_with_softmax"``
            (``"cross_entropy"``), any rnnkit loss name, or a callable ``(output, target)``.
        source: a ``MinibatchSource`` (read in minibatches of ``minibatch_size`` samples, time
            steps as CNTK counts, with ``input_map``) or any data form the trainer takes.
        max_epochs, epoch_size: epochs of ``epoch_size`` samples each (None: one sweep).
        learner / parameter_learners: an :func:`adam`, :func:`sgd` or :func:`momentum_sgd`
            (CNTK's one-element ``parameter_learners=[...]`` list is accepted); required, as
            in CNTK.
        callbacks: :class:`ProgressPrinter`, :class:`TestConfig` and any other callback. A
            ``TestConfig`` without its own ``minibatch_size``/``input_map`` takes this call's.
            Without a progress callback nothing is printed, as in CNTK.
        input_map / model_inputs_to_streams: model input names -> streams, plus ``"target"``.
        metric: CNTK's second criterion output: ``"squared_error"``,
            ``"classification_error"``, an rnnkit metric name or a ``torchmetrics.Metric``;
            ProgressPrinter's metric columns and TestConfig's line show it.
        validation: data evaluated after each epoch (``val_loss``...).
        trainer_options: passed to :class:`rnnkit.Trainer` (``tbptt``, ``precision``,
            ``clip_grad_norm``, ...).
    """
    from rnnkit.data import MinibatchSource
    from rnnkit.training.batches import SourceBatches
    from rnnkit.training.trainer import Trainer

    if learner is not None and parameter_learners is not None:
        raise TypeError("give learner= or parameter_learners=, not both")
    if parameter_learners is not None:
        if len(parameter_learners) != 1:
            raise ValueError(f"parameter_learners: rnnkit trains all parameters with one "
                             f"learner; got {len(parameter_learners)}")
        learner = parameter_learners[0]
    if not isinstance(learner, Learner):
        raise TypeError("train() needs learner=adam(lr, momentum) (or sgd / momentum_sgd), "
                        f"got {type(learner).__name__}")
    if input_map is not None and model_inputs_to_streams is not None:
        raise TypeError("give input_map= or model_inputs_to_streams=, not both")
    input_map = input_map if input_map is not None else model_inputs_to_streams
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if isinstance(cb, TestConfig):
            if cb.minibatch_size is None:
                cb.minibatch_size = minibatch_size
            if cb.input_map is None:
                cb.input_map = input_map
    data = source
    if isinstance(source, MinibatchSource):
        if minibatch_size is None:
            raise ValueError("train() on a MinibatchSource needs minibatch_size= (samples)")
        data = SourceBatches(source, minibatch_size, input_map)
    elif input_map is not None:
        raise TypeError("input_map maps the streams of a MinibatchSource; the "
                        f"{type(source).__name__} given has none")
    metrics = []
    if metric is not None:
        made = _METRICS.get(metric, metric) if isinstance(metric, str) else metric
        metrics.append(made() if callable(made) and not isinstance(made, str)
                       and not hasattr(made, "update") else made)
    loss_name = _LOSSES.get(loss, loss) if isinstance(loss, str) else loss
    verbose = any(isinstance(cb, (ProgressBar, ProgressPrinter)) for cb in callbacks)
    trainer = Trainer(model, loss=loss_name, optimizer=learner, metrics=metrics or None,
                      scheduler=learner.scheduler(), callbacks=callbacks, seed=seed,
                      verbose=verbose, **trainer_options)
    return trainer.fit(data, validation=validation, epochs=max_epochs, epoch_size=epoch_size,
                       batch_size=minibatch_size)
