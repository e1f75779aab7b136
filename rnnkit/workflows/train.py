"""Runs from a TOML configuration: what ``rnnkit train / evaluate / predict / generate`` do.

:func:`train_run` reads a :class:`~rnnkit.workflows.config.RunConfig`, builds the data
(:func:`build_data`) and the task model (:func:`build_model`), trains it with
:class:`rnnkit.Trainer` (checkpoints, ``history.csv`` and the loss curves in the run
directory; ``resume=True`` continues a killed run from its newest complete checkpoint), saves
the final model there with :func:`rnnkit.save` (the configuration goes into its
``config.json``), and evaluates it on the test split when there is one (``metrics.json``).

A run directory then holds everything prediction needs: :func:`load_run` gives back the model
and the configuration, :func:`evaluate_run` / :func:`predict_run` read new data the way the
run read its own, and language models generate text (:func:`generate_text`).

Example:
    >>> import tempfile
    >>> from rnnkit.workflows.config import parse_config
    >>> config = parse_config({"model": {"type": "classifier", "cell": "gru",
    ...                                  "hidden_size": 16},
    ...                        "data": {"format": "mnist1d", "num_samples": 300},
    ...                        "trainer": {"epochs": 1, "progress": "none"}})
    >>> run = train_run(config, tempfile.mkdtemp())         # doctest: +SKIP
    >>> sorted(run.test_metrics)                             # doctest: +SKIP
    ['accuracy', 'loss']
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit._files import atomic_write
from rnnkit.errors import UsageError
from rnnkit.workflows.config import RunConfig, closest, parse_config

__all__ = [
    "DEFAULT_LOSSES",
    "DEFAULT_METRICS",
    "Run",
    "RunData",
    "build_data",
    "build_model",
    "evaluate_run",
    "generate_text",
    "is_run_dir",
    "load_run",
    "predict_run",
    "train_run",
]

DEFAULT_LOSSES = {"classifier": "cross_entropy", "regressor": "mse",
                  "tagger": "sequence_cross_entropy", "language_model": "sequence_cross_entropy",
                  "module": "mse", "seq2seq": "sequence_cross_entropy"}
DEFAULT_METRICS = {"classifier": ["accuracy"], "regressor": ["rmse", "mae"],
                   "tagger": ["accuracy"], "language_model": ["perplexity", "bits_per_character"],
                   "module": [], "seq2seq": ["accuracy"]}
RUN_KEY = "run"  # the configuration's key in config.json's "extra"


@dataclass
class RunData:
    """The splits a configuration's ``[data]`` gives, and what the model needs to know."""

    train: Any
    validation: Any = None
    test: Any = None
    input_size: int | None = None
    output_size: int | None = None  # classes, tags, outputs
    vocabulary: Any = None
    fit_options: dict[str, Any] = field(default_factory=dict)  # batch_size / shuffle for fit


@dataclass
class Run:
    """What :func:`train_run` returns."""

    directory: Path
    model: nn.Module
    history: dict[str, list] = field(default_factory=dict)
    test_metrics: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- data
def _read_user_file(path: str, what: Callable[[], Any]) -> Any:
    """Call ``what`` (which reads ``path``) and turn the readers' complaints about the file
    into :class:`UsageError`: here they are the user's input, not a bug."""
    from rnnkit.data import CTFFormatError, IDXFormatError

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or folder")
    try:
        return what()
    except (CTFFormatError, IDXFormatError, ValueError, UnicodeDecodeError,
            IsADirectoryError, NotADirectoryError) as e:
        message = " ".join(str(e).split())
        raise UsageError(message if path in message else f"{path}: {message}") from None


def _limit(dataset: Any, limit: int | None) -> Any:
    if limit is None or dataset is None or len(dataset) <= limit:
        return dataset
    return torch.utils.data.Subset(dataset, range(limit))


def _split_off(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """A random ``fraction`` of ``dataset`` as validation (seeded), the rest to train."""
    n_val = int(round(len(dataset) * fraction))
    if n_val == 0:
        return dataset, None
    if n_val >= len(dataset):
        raise UsageError(f"data.splits leaves no training samples of {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return (torch.utils.data.Subset(dataset, order[n_val:]),
            torch.utils.data.Subset(dataset, order[:n_val]))


def _labeled(config: RunConfig, train: Any, test: Any) -> RunData:
    data = config.data
    val_fraction = data.splits[1] if len(data.splits) > 1 else 0.0
    features, classes = train.features, train.num_classes
    train, validation = _split_off(train, val_fraction, config.trainer.seed)
    return RunData(train=_limit(train, data.limit), validation=_limit(validation, data.limit),
                   test=_limit(test, data.limit), input_size=features, output_size=classes,
                   fit_options={"batch_size": data.batch_size, "shuffle": data.shuffle})


def _text_splits(config: RunConfig, vocabulary: Any = None) -> RunData:
    from rnnkit.data import LanguageModelDataset, Vocabulary

    data = config.data

    def read(path: str) -> str:
        return _read_user_file(path, lambda: Path(path).read_text(encoding="utf-8"))

    text = read(data.path)
    if vocabulary is None:
        vocabulary = Vocabulary.build([text], level=data.level)
    parts = {"validation": None, "test": None}
    if data.validation is None and data.test is None:
        # one file: train, validation, test in reading order (never shuffled across the cut)
        n = len(text)
        train_end = int(n * data.splits[0])
        val_end = train_end + int(n * (data.splits[1] if len(data.splits) > 1 else 0.0))
        pieces = {"train": text[:train_end], "validation": text[train_end:val_end],
                  "test": text[val_end:] if len(data.splits) > 2 else ""}
    else:
        pieces = {"train": text, "validation": read(data.validation) if data.validation else "",
                  "test": read(data.test) if data.test else ""}

    def windows(name: str, piece: str) -> Any:
        ids = vocabulary.encode(piece)
        if len(ids) < data.seq_len + 1:
            if name == "train":
                raise UsageError(f"{data.path}: the training text has {len(ids)} tokens, too "
                                 f"few for one window of data.seq_len={data.seq_len}")
            return None
        return _limit(LanguageModelDataset(ids, data.seq_len), data.limit)

    train = windows("train", pieces["train"])
    for name in parts:
        if pieces[name]:
            parts[name] = windows(name, pieces[name])
    return RunData(train=train, validation=parts["validation"], test=parts["test"],
                   vocabulary=vocabulary, output_size=len(vocabulary),
                   fit_options={"batch_size": data.batch_size, "shuffle": data.shuffle})


def _ctf_definitions(config: RunConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """``[data] streams`` as ``StreamDef`` objects, and the input map (``input0``, ...,
    ``target``) checked against them."""
    from rnnkit.data import StreamDef

    data = config.data
    definitions = {}
    allowed = {"field", "shape", "is_sparse", "dtype", "defines_mb_size"}
    for name, spec in data.streams.items():
        if not isinstance(spec, dict):
            raise UsageError(f"data.streams.{name} must be a table such as "
                             "{ field = 'x', shape = 1 }")
        for key in spec:
            if key not in allowed:
                raise UsageError(f"data.streams.{name} has no key {key!r}{closest(key, allowed)}")
        try:
            definitions[name] = StreamDef(**{"field": name, **spec})
        except (TypeError, ValueError) as e:
            raise UsageError(f"data.streams.{name}: {e}") from None
    names = list(definitions)
    input_map: dict[str, Any] = {}
    inputs = data.input_map["input"]
    for i, name in enumerate([inputs] if isinstance(inputs, str) else list(inputs)):
        input_map[f"input{i}"] = name
    input_map["target"] = data.input_map["target"]
    for name in input_map.values():
        if not isinstance(name, str) or name not in names:
            raise UsageError(f"data.input_map: {name!r} is not a stream"
                             f"{closest(str(name), names)}")
    return definitions, input_map


def _ctf_source(config: RunConfig, path: str, training: bool) -> Any:
    from rnnkit.data import CTFDeserializer, MinibatchSource, StreamDefs
    from rnnkit.training import SourceBatches

    data = config.data
    definitions, input_map = _ctf_definitions(config)
    source = _read_user_file(path, lambda: MinibatchSource(
        CTFDeserializer(path, StreamDefs(**definitions)), randomize=training and data.shuffle,
        randomization_seed=config.trainer.seed,
        **({} if training else {"max_sweeps": 1})))
    return SourceBatches(source, minibatch_size=data.batch_size, input_map=input_map), \
        definitions, input_map


def _ctf_splits(config: RunConfig) -> RunData:
    data = config.data
    train, definitions, input_map = _ctf_source(config, data.path, training=True)
    validation = None if data.validation is None else _ctf_source(config, data.validation,
                                                                  False)[0]
    test = None if data.test is None else _ctf_source(config, data.test, False)[0]

    def width(name: str) -> int:
        shape = definitions[name].shape
        return int(math.prod(shape)) if isinstance(shape, (tuple, list)) else int(shape)

    input_size = sum(width(n) for k, n in input_map.items() if k != "target")
    return RunData(train=train, validation=validation, test=test, input_size=input_size,
                   output_size=width(input_map["target"]))


def build_data(config: RunConfig, vocabulary: Any = None) -> RunData:
    """The training, validation and test data of ``config.data`` (see the module docstring
    of :mod:`rnnkit.workflows.config` for the keys of each format)."""
    data = config.data
    if data.format == "mnist1d":
        from rnnkit import datasets

        def make(split: str) -> Any:
            return datasets.mnist1d(split, num_samples=data.num_samples, seed=data.seed)

        return _labeled(config, make("train"), make("test"))
    if data.format == "idx":
        from rnnkit import datasets

        train = _read_user_file(data.path, lambda: datasets.mnist(data.path, "train"))
        try:
            test = datasets.mnist(data.path, "test")
        except (FileNotFoundError, ValueError):  # a folder with the training files only
            test = None
        return _labeled(config, train, test)
    if data.format == "text":
        return _text_splits(config, vocabulary)
    if data.format == "ctf":
        return _ctf_splits(config)
    if data.format == "seq2seq":
        from rnnkit.workflows.seq2seq import build_seq2seq_data

        return build_seq2seq_data(config, vocabulary)
    raise UsageError(f"data.format {data.format!r} trains model.type 'forecaster' only "
                     f"(through rnnkit forecast's workflow), not {config.model.type!r}")


# ----------------------------------------------------------------------------- model
def build_model(config: RunConfig, data: RunData) -> nn.Module:
    """The task model ``config.model`` describes, sized from ``data``."""
    from rnnkit import models

    spec = config.model
    if spec.type == "seq2seq":
        from rnnkit.workflows.seq2seq import build_seq2seq_model

        return build_seq2seq_model(config, data)
    backbone = {"cell": spec.cell, "hidden_size": spec.hidden_size,
                "num_layers": spec.num_layers, "dropout": spec.dropout,
                "cell_options": dict(spec.cell_options) or None}
    if spec.type in ("classifier", "regressor", "tagger"):
        backbone["bidirectional"] = spec.bidirectional
    elif spec.bidirectional:
        raise UsageError(f"model.bidirectional: a {spec.type} reads forwards only")
    if spec.type == "classifier":
        build = lambda: models.SequenceClassifier(  # noqa: E731
            data.input_size, data.output_size, **backbone, **spec.options)
    elif spec.type == "regressor":
        build = lambda: models.SequenceRegressor(  # noqa: E731
            data.input_size, data.output_size, **backbone, **spec.options)
    elif spec.type == "tagger":
        build = lambda: models.SequenceTagger(  # noqa: E731
            data.input_size, data.output_size, **backbone, **spec.options)
    elif spec.type == "language_model":
        build = lambda: models.LanguageModel(  # noqa: E731
            vocabulary=data.vocabulary, **backbone, **spec.options)
    elif spec.type == "module":
        from rnnkit.config import registered_classes

        classes = registered_classes()
        if spec.class_name not in classes:
            raise UsageError(f"model.class_name {spec.class_name!r} is not a registered class"
                             f"{closest(spec.class_name, classes)}")
        cls = classes[spec.class_name]
        build = lambda: cls(**spec.options)  # noqa: E731
    else:
        raise UsageError(f"model.type {spec.type!r} is trained by rnnkit forecast's workflow")
    try:
        model = build()
    except (TypeError, ValueError) as e:  # the constructor refused the configuration's values
        raise UsageError(f"[model]: {' '.join(str(e).split())}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model.class_name {spec.class_name!r} builds a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    return model


# ----------------------------------------------------------------------------- train
def _callbacks(config: RunConfig) -> list[Any]:
    from rnnkit.training import callbacks

    trainer = config.trainer
    # the trainer checkpoints into the run directory itself (every epoch, keep_last)
    chosen: list[Any] = [callbacks.CSVLogger(), callbacks.PlotCurves()]
    if trainer.early_stopping:
        allowed = {"monitor", "patience", "min_delta", "mode", "restore_best_weights"}
        for key in trainer.early_stopping:
            if key not in allowed:
                raise UsageError(f"trainer.early_stopping has no key {key!r}"
                                 f"{closest(key, allowed)}")
        try:
            chosen.append(callbacks.EarlyStopping(**trainer.early_stopping))
        except (TypeError, ValueError) as e:
            raise UsageError(f"trainer.early_stopping: {e}") from None
    if trainer.progress == "cntk":
        from rnnkit.training import ProgressPrinter

        chosen.append(ProgressPrinter(0))
    return chosen


def make_trainer(config: RunConfig, model: nn.Module, callbacks: list[Any] | None = None) -> Any:
    """An :class:`rnnkit.Trainer` with ``[trainer]``'s options (losses and metrics default to
    the model type's)."""
    from rnnkit import Trainer

    spec = config.trainer
    kind = config.model.type
    try:
        return Trainer(model, loss=spec.loss or DEFAULT_LOSSES[kind], optimizer=spec.optimizer,
                       lr=spec.lr, metrics=(spec.metrics if spec.metrics is not None
                                            else DEFAULT_METRICS[kind]),
                       clip_grad_norm=spec.clip_grad_norm, scheduler=_scheduler(spec.scheduler),
                       callbacks=callbacks or [], tbptt=spec.tbptt, precision=spec.precision,
                       seed=spec.seed, label_smoothing=spec.label_smoothing,
                       scheduler_interval=spec.scheduler_interval, device=spec.device,
                       check_finite=spec.check_finite, verbose=spec.progress == "bar")
    except (TypeError, ValueError, KeyError) as e:
        raise UsageError(f"[trainer]: {' '.join(str(e).split())}") from None


def _scheduler(spec: dict[str, Any]) -> Callable[[Any], Any] | None:
    """``{ name = "StepLR", step_size = 5 }`` -> ``optimizer -> StepLR(optimizer, step_size=5)``."""
    if not spec:
        return None
    options = dict(spec)
    name = options.pop("name", None)
    schedulers = {n for n, v in vars(torch.optim.lr_scheduler).items()
                  if isinstance(v, type) and issubclass(v, torch.optim.lr_scheduler.LRScheduler)
                  and not n.startswith("_") and n != "LRScheduler"}
    schedulers.add("ReduceLROnPlateau")
    if not isinstance(name, str):
        raise UsageError("trainer.scheduler needs name, a torch.optim.lr_scheduler class such "
                         "as 'StepLR'")
    if name not in schedulers:
        raise UsageError(f"trainer.scheduler.name {name!r} is not a torch.optim.lr_scheduler "
                         f"class{closest(name, schedulers)}")
    cls = getattr(torch.optim.lr_scheduler, name)

    def build(optimizer: Any) -> Any:
        try:
            return cls(optimizer, **options)
        except (TypeError, ValueError) as e:
            raise UsageError(f"trainer.scheduler ({name}): {e}") from None

    return build


def _write_json(path: Path, value: Any) -> None:
    def write(f: Any) -> None:
        json.dump(value, f, indent=2, default=float)
        f.write("\n")

    atomic_write(path, write)


def train_run(config: RunConfig, directory: str | os.PathLike, *, resume: bool = False,
              echo: Callable[[str], None] | None = print) -> Run:
    """Train what ``config`` describes into the run directory ``directory``.

    ``resume=True`` continues from the newest complete checkpoint in ``directory`` (a killed
    run); without it a directory that already holds checkpoints is refused, so a run is never
    overwritten by accident.
    """
    import rnnkit
    from rnnkit.training.checkpoint import list_checkpoints

    directory = Path(directory)
    if config.model.type == "forecaster":
        return _train_forecaster(config, directory, echo)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--output {directory}: exists and is not a folder")
    has_checkpoints = directory.is_dir() and bool(list_checkpoints(directory))
    if resume and not has_checkpoints:
        raise UsageError(f"--resume: {directory} holds no checkpoint to resume from")
    if not resume and (has_checkpoints or (directory / "config.json").exists()):
        raise UsageError(f"{directory} already holds a run; pass --resume to continue it or "
                         "--output another folder")
    torch.manual_seed(config.trainer.seed)
    data = build_data(config)
    model = build_model(config, data)
    trainer = make_trainer(config, model, _callbacks(config))
    directory.mkdir(parents=True, exist_ok=True)
    with _file_errors(config):
        history = trainer.fit(data.train, data.validation, epochs=config.trainer.epochs,
                              epoch_size=config.trainer.epoch_size,
                              checkpoint_dir=directory, resume=resume,
                              keep_last=config.trainer.keep_last,
                              checkpoint_every=config.trainer.checkpoint_every,
                              **data.fit_options)
    rnnkit.save(model, directory, extra={RUN_KEY: config.to_dict()})
    run = Run(directory=directory, model=model, history=dict(history.history))
    if data.test is not None:
        run.test_metrics = trainer.evaluate(data.test, **_eval_options(data))
    if config.model.type == "seq2seq":  # the vocabularies, and the decoded test metrics
        from rnnkit.workflows.seq2seq import finish_seq2seq_run

        run.test_metrics = finish_seq2seq_run(config, directory, model, data, run.test_metrics)
    if run.test_metrics is not None:
        _write_json(directory / "metrics.json", {"test": run.test_metrics})
        if echo is not None:
            echo("test: " + format_metrics(run.test_metrics))
    if echo is not None:
        echo(f"saved the model to {directory}")
    return run


@contextlib.contextmanager
def _file_errors(config: RunConfig) -> Iterator[None]:
    """The CTF and IDX readers parse lazily, while the trainer iterates: a malformed line of
    the user's file surfaces there, and is still the user's input (named by file and line)."""
    from rnnkit.data import CTFFormatError, IDXFormatError
    from rnnkit.training.batches import EmptyDataError

    try:
        yield
    except (CTFFormatError, IDXFormatError) as e:
        raise UsageError(" ".join(str(e).split())) from None
    except EmptyDataError as e:
        raise UsageError(f"{config.data.path or config.data.format}: {e}") from None


def _eval_options(data: RunData) -> dict[str, Any]:
    return {"batch_size": data.fit_options["batch_size"]} if data.fit_options else {}


def _train_forecaster(config: RunConfig, directory: Path, echo: Any) -> Run:
    """``model.type = "forecaster"``: rnnkit forecast's workflow (its own training loop, held-out
    tail and baselines) with the configuration's values."""
    import inspect

    from rnnkit.workflows.forecast import forecast_csv, forecast_series

    data, model, trainer = config.data, config.model, config.trainer
    if data.format != "csv":
        raise UsageError(f"model.type 'forecaster' reads format 'csv', not {data.format!r}")
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty; --output another folder")
    options = dict(model.options)
    # the Forecaster's own arguments that the workflow sets from the data: the step between
    # the dates (freq) comes from the CSV's date column
    options.pop("freq", None)
    horizon = options.pop("horizon", data.horizon)
    look_back = options.pop("look_back", data.look_back)
    settings = {"epochs": trainer.epochs, "lr": trainer.lr, "batch_size": data.batch_size,
                "seed": trainer.seed, "cell": model.cell, "hidden_size": model.hidden_size,
                "num_layers": model.num_layers}
    if trainer.early_stopping.get("patience") is not None:
        settings["patience"] = trainer.early_stopping["patience"]
    if look_back is not None:
        settings["look_back"] = look_back
    accepted = set(inspect.signature(forecast_series).parameters) - {
        "series", "horizon", "output", "source", "date_column", "echo"}
    for key in options:
        if key not in accepted:
            raise UsageError(f"model.options: the forecaster workflow takes no {key!r}"
                             f"{closest(key, accepted)}")
    settings.update(options)
    result = forecast_csv(
        data.path, target=data.target[0], exogenous=data.columns, horizon=horizon,
        date_column=None if data.date_column == "auto" else data.date_column,
        fill=parse_fill(data.fill), output=directory, echo=echo, **settings)
    if echo is not None:
        echo(result.table())
        echo(f"saved the model to {directory}")
    return Run(directory=directory, model=result.model,
               test_metrics=result.metrics.get("rnnkit"))


def parse_fill(fill: str | None, what: str = "data.fill") -> str | float | None:
    """``"ffill"``, ``"interpolate"``, a number (as text) or None, for the forecast's ``fill``."""
    if fill is None or fill in ("ffill", "interpolate"):
        return fill
    try:
        return float(fill)
    except ValueError:
        raise UsageError(f"{what} {fill!r}: expected ffill, interpolate or a number") from None


def format_metrics(metrics: dict[str, Any]) -> str:
    """``loss 0.1234  accuracy 0.9500`` (lists such as a confusion matrix left out)."""
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))


# ----------------------------------------------------------------------------- a finished run
def is_run_dir(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def load_run(directory: str | os.PathLike) -> tuple[nn.Module, RunConfig | None]:
    """The model saved in a run directory and the configuration it was trained from (None
    for a run written by ``rnnkit forecast``)."""
    import rnnkit

    directory = Path(directory)
    if not directory.exists():
        raise UsageError(f"{directory}: no such run directory")
    if not is_run_dir(directory):
        raise UsageError(f"{directory} is not a run directory (no config.json and "
                         "model.safetensors; rnnkit train and rnnkit forecast write them)")
    try:
        model = rnnkit.load(directory)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"{directory} is not a complete run directory: "
                         f"{' '.join(str(e).split())}") from None
    config_json = json.loads((directory / "config.json").read_text())
    raw = (config_json.get("extra") or {}).get(RUN_KEY)
    return model, None if raw is None else parse_config(raw)


def _data_like_run(config: RunConfig, path: str | None, model: nn.Module) -> tuple[Any, RunData]:
    """``path`` read the way the run read its training file (``None``: the run's own test
    split)."""
    if path is None:
        data = build_data(config, vocabulary=getattr(model, "vocabulary", None))
        if data.test is None:
            raise UsageError("the run has no test split: give DATA (a file to evaluate on)")
        return data.test, data
    raw = config.to_dict()
    fmt = config.data.format
    if fmt == "mnist1d":
        raise UsageError("a run on format 'mnist1d' evaluates on its own test split: leave "
                         "out DATA")
    raw["data"].update({"path": os.path.abspath(path), "splits": [1.0], "shuffle": False})
    raw["data"].pop("validation", None)
    raw["data"].pop("test", None)
    new = parse_config(raw)
    data = build_data(new, vocabulary=getattr(model, "vocabulary", None))
    if fmt == "ctf":  # one pass over the file, in file order
        data.train = _ctf_source(new, new.data.path, training=False)[0]
    return data.train, data


def evaluate_run(directory: str | os.PathLike, path: str | None = None) -> dict[str, Any]:
    """Loss and metrics of the run's model on ``path`` (or its own test split)."""
    model, config = load_run(directory)
    if config is None:  # rnnkit forecast's run: its held-out metrics, computed when it ran
        if path is not None:
            raise UsageError(f"{directory} holds a forecaster; rnnkit forecast evaluates one on "
                             "the held-out tail of its CSV (leave out DATA to see them)")
        extra = json.loads((Path(directory) / "config.json").read_text()).get("extra") or {}
        metrics = (extra.get("metrics") or {}).get("rnnkit")
        if metrics is None:
            raise UsageError(f"{directory} holds no metrics (config.json has no 'metrics')")
        return metrics
    if config.model.type == "seq2seq":
        from rnnkit.workflows.seq2seq import evaluate_seq2seq

        return evaluate_seq2seq(directory, path)
    data, info = _data_like_run(config, path, model)
    trainer = make_trainer(config, model)
    with _file_errors(config):
        return trainer.evaluate(data, **_eval_options(info))


def predict_run(directory: str | os.PathLike, path: str | None,
                output: str | os.PathLike) -> Path:
    """Write the run's predictions on ``path`` to the CSV ``output``: per sample the class
    (name when the model has names) and each class's probability, or the regressed values."""
    model, config = load_run(directory)
    if config is None:  # a forecaster written by rnnkit forecast: forecast past DATA's end
        from rnnkit.workflows.forecast import predict_csv

        if path is None:
            raise UsageError(f"{directory} holds a forecaster: give DATA, a CSV whose last "
                             "rows it forecasts from")
        predict_csv(directory, path, output)
        return Path(output)
    if config.model.type == "language_model":
        raise UsageError("a language model generates text: use rnnkit generate RUN_DIR "
                         "--prompt ...")
    if config.model.type == "seq2seq":
        from rnnkit.workflows.seq2seq import predict_seq2seq

        return predict_seq2seq(directory, path, output)
    data, info = _data_like_run(config, path, model)
    trainer = make_trainer(config, model)
    with _file_errors(config):
        outputs = trainer.predict(data, **_eval_options(info))  # (N, C) / (N, D) / (N, T, C)
    rows: list[list[Any]]
    if config.model.type == "classifier":
        probs = torch.softmax(outputs, dim=-1)
        names = getattr(model, "class_names", None)
        header = ["sample", "prediction", *(f"p_{names[i] if names else i}"
                                            for i in range(probs.shape[1]))]
        rows = [[i, (names[k] if names else k), *(f"{p:.6g}" for p in row.tolist())]
                for i, (k, row) in enumerate(zip(probs.argmax(-1).tolist(), probs, strict=True))]
    elif config.model.type == "tagger":
        tags = outputs.argmax(-1)  # (N, T)
        steps = _sequence_lengths(config, path, tags.shape)
        header = ["sample", "step", "prediction"]
        rows = [[i, t, int(tags[i, t])] for i in range(tags.shape[0])
                for t in range(int(steps[i]))]
    else:
        flat = outputs.reshape(outputs.shape[0], -1)
        names = getattr(model, "output_names", None) or [f"output_{j}"
                                                         for j in range(flat.shape[1])]
        header = ["sample", *names]
        rows = [[i, *(f"{v:.7g}" for v in row.tolist())] for i, row in enumerate(flat)]
    def write(f: Any) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    return atomic_write(output, write)


def _sequence_lengths(config: RunConfig, path: str | None, shape: torch.Size) -> list[int]:
    """Each predicted sequence's own number of steps (the outputs are padded to the longest):
    from the file for CTF data, else every sequence has all ``T`` steps."""
    if config.data.format != "ctf":
        return [shape[1]] * shape[0]
    from rnnkit.data import StreamDefs, read_ctf

    definitions, input_map = _ctf_definitions(config)
    first = input_map["input0"]
    file = path or config.data.test
    sequences = _read_user_file(file, lambda: read_ctf(file, StreamDefs(**definitions)))
    return [len(sequence[first]) for sequence in sequences]


def generate_text(directory: str | os.PathLike, prompt: str, length: int,
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = None) -> str:
    """The run's language model continues ``prompt`` by ``length`` tokens."""
    from rnnkit.models import LanguageModel

    model, _ = load_run(directory)
    if not isinstance(model, LanguageModel):
        raise UsageError(f"{directory} holds a {type(model).__name__}, not a LanguageModel: "
                         "only language models generate text")
    try:
        return model.generate(prompt, length, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed)
    except (TypeError, ValueError) as e:
        raise UsageError(" ".join(str(e).split())) from None


# ----------------------------------------------------------------------------- explain
def _is_recurrent_layer(module: nn.Module) -> bool:
    from rnnkit.layers import Bidirectional, Fold, Recurrence, Sequence

    return isinstance(module, (nn.RNNBase, Recurrence, Fold, Bidirectional, Sequence))


def explain_config(config: RunConfig) -> str:
    """Which kernel each recurrent layer of the configured model runs, and why
    (:func:`rnnkit.engine.explain` on the input each layer receives for one training batch)."""
    from rnnkit.engine import explain
    from rnnkit.training.batches import make_feed

    if config.model.type == "forecaster":
        raise UsageError("rnnkit explain builds models of rnnkit train; a forecaster's layers "
                         "are chosen from the data by rnnkit forecast")
    data = build_data(config)
    model = build_model(config, data).eval()
    batch = make_feed(data.train, shuffle=False, seed=0,
                      batch_size=data.fit_options.get("batch_size")).next_batch()
    calls: list[tuple[str, nn.Module, tuple, dict]] = []
    depth = [0]
    names = {module: name for name, module in model.named_modules()}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if depth[0] == 0:
            calls.append((names.get(module, type(module).__name__), module, args, kwargs))
        depth[0] += 1

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        depth[0] -= 1

    handles = []
    for module in model.modules():
        if _is_recurrent_layer(module):
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after))
    try:
        with torch.no_grad():
            kwargs = {} if batch.lengths is None else {"lengths": batch.lengths}
            model(*batch.inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return f"{type(model).__name__} has no recurrent layer to explain"
    lines = [f"{type(model).__name__} ({config.model.type}), one training batch of "
             f"{batch.size} sequences:"]
    for name, module, args, kwargs in calls:
        lines.append(f"\n[{name}]")
        lines.append(explain(module, args[0], lengths=kwargs.get("lengths"),
                             mask=kwargs.get("mask")))
    return "\n".join(lines)
