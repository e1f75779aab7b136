"""The TOML run configuration of ``rnnkit train``: ``[model]``, ``[data]`` and ``[trainer]``.

A run configuration is one TOML file (read with ``tomllib``, ``tomli`` on Python 3.10)::

    [model]
    type = "classifier"          # classifier | regressor | tagger | language_model | forecaster
    cell = "gru"                 #   | module (a registered class: class_name = "MyModel")
    hidden_size = 64
    num_layers = 1
    cell_options = { layer_norm = true }

    [data]
    format = "mnist1d"           # csv | ctf | idx | mnist1d | seq2seq | text
    batch_size = 64

    [trainer]
    lr = 0.003
    epochs = 5
    metrics = ["accuracy"]

Each section is validated into a dataclass (:class:`ModelConfig`, :class:`DataConfig`,
:class:`TrainerConfig`): an unknown key is a :class:`~rnnkit.errors.UsageError` that names the
closest valid key, a value of the wrong type names the key and the type it needs, and a key
that belongs to another data format says which. Relative paths in the file are relative to the
file's folder. ``--set section.key=value`` overrides (:func:`apply_overrides`) parse the value
as a TOML value (``0.001``, ``true``, ``[0.8, 0.2]``, ``"text"``) and take anything else as a
string (``--set model.cell=lstm``); their relative paths are relative to the current folder.

Example:
    >>> config = parse_config({"model": {"type": "classifier", "hidden_size": 32},
    ...                        "data": {"format": "mnist1d"}},
    ...                       overrides=["trainer.lr=0.01", "model.cell=gru"])
    >>> config.model.cell, config.model.hidden_size, config.trainer.lr
    ('gru', 32, 0.01)
    >>> parse_config({"model": {"type": "classifier", "hiden_size": 32},
    ...               "data": {"format": "mnist1d"}})
    Traceback (most recent call last):
    ...
    rnnkit.errors.UsageError: [model] has no key 'hiden_size'; did you mean 'hidden_size'?
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnkit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DATA_FORMATS",
    "MODEL_TYPES",
    "DataConfig",
    "DecodeConfig",
    "ModelConfig",
    "RunConfig",
    "TrainerConfig",
    "apply_overrides",
    "closest",
    "load_config",
    "parse_config",
    "parse_override",
]

MODEL_TYPES = ("classifier", "regressor", "tagger", "language_model", "forecaster", "module",
               "seq2seq")
DATA_FORMATS = ("csv", "ctf", "idx", "mnist1d", "seq2seq", "text")
ATTENTION_TYPES = ("bahdanau", "luong", "luong_general", "luong_concat", "none")


def option(default: Any = None, *, kind: str, doc: str, choices: tuple[str, ...] | None = None,
           formats: tuple[str, ...] | None = None, required: bool = False) -> Any:
    """A dataclass field with what validation needs: ``kind`` (bool, int, float, str, path,
    str-list, float-list, table), ``choices``, the data ``formats`` it belongs to."""
    metadata = {"kind": kind, "doc": doc, "choices": choices, "formats": formats,
                "required": required}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """``[model]``: which task model and its recurrent backbone."""

    type: str = option(kind="str", choices=MODEL_TYPES, required=True,
                       doc="the task model: " + ", ".join(MODEL_TYPES))
    cell: str = option("lstm", kind="str",
                       doc="the recurrent cell by name (lstm, gru, elman, indrnn, ...)")
    hidden_size: int = option(64, kind="int", doc="units of each recurrent layer")
    num_layers: int = option(1, kind="int", doc="stacked recurrent layers")
    bidirectional: bool = option(False, kind="bool", doc="read each sequence both ways")
    dropout: float = option(0.0, kind="float", doc="dropout between recurrent layers")
    cell_options: dict = option({}, kind="table",
                                doc="keyword arguments of the cell (layer_norm, peepholes, ...)")
    options: dict = option({}, kind="table",
                           doc="other keyword arguments of the task model's constructor")
    class_name: str | None = option(kind="str",
                                    doc="type = 'module': the registered class to build")
    attention: str | None = option(kind="str", choices=ATTENTION_TYPES,
                                   doc="type = 'seq2seq': the decoder's attention (default "
                                       "bahdanau; none: the context-vector baseline)")


@dataclass
class DataConfig:
    """``[data]``: where the samples come from and how they are batched."""

    format: str = option(kind="str", choices=DATA_FORMATS, required=True,
                         doc="the data: " + ", ".join(DATA_FORMATS))
    path: str | None = option(kind="path", formats=("csv", "ctf", "idx", "text"),
                              doc="the training file (idx: the folder of IDX files)")
    validation: str | None = option(kind="path", formats=("csv", "ctf", "text"),
                                    doc="a separate validation file (else cut from path)")
    test: str | None = option(kind="path", formats=("csv", "ctf", "text"),
                              doc="a separate test file (else cut from path)")
    batch_size: int = option(32, kind="int", doc="samples per minibatch")
    splits: list = option([0.8, 0.1, 0.1], kind="float-list",
                          doc="train, validation[, test] fractions when there is one file")
    shuffle: bool = option(True, kind="bool", doc="shuffle the training samples every epoch")
    limit: int | None = option(kind="int", doc="use at most this many samples of each split")
    # ctf (the CNTK text format)
    streams: dict = option({}, kind="table", formats=("ctf",),
                           doc="stream name -> {field, shape, is_sparse}")
    input_map: dict = option({}, kind="table", formats=("ctf",),
                             doc="{input = stream or [streams], target = stream}")
    # csv (a time series: windows of look_back rows predict the next horizon rows)
    target: list = option([], kind="str-list", formats=("csv",), doc="the target column(s)")
    columns: list = option([], kind="str-list", formats=("csv",),
                           doc="input columns besides the target (default: none)")
    date_column: str = option("auto", kind="str", formats=("csv",),
                              doc="the date column ('auto': the first that parses as dates)")
    look_back: int | None = option(kind="int", formats=("csv",),
                                   doc="input steps (default: two seasonal periods)")
    horizon: int | None = option(kind="int", formats=("csv",),
                                 doc="steps forecast (default: one seasonal period)")
    scaler: str = option("standard", kind="str", formats=("csv",),
                         doc="minmax, standard, log, or a chain such as log+minmax")
    fill: str | None = option(kind="str", formats=("csv",),
                              doc="missing values and date gaps: ffill, interpolate or a number")
    # text (a language model's corpus)
    level: str = option("char", kind="str", choices=("char", "word"), formats=("text",),
                        doc="tokens are characters or words")
    seq_len: int = option(100, kind="int", formats=("text",), doc="tokens per training window")
    # mnist1d (generated locally)
    num_samples: int = option(5000, kind="int", formats=("mnist1d", "seq2seq"),
                              doc="samples generated (mnist1d: train and test together; "
                                  "seq2seq: training pairs)")
    seed: int = option(42, kind="int", formats=("mnist1d", "seq2seq"),
                       doc="the generator's seed")
    # seq2seq (toy tasks generated locally: rnnkit.data.seq2seq_tasks)
    task: str | None = option(kind="str", choices=("dates", "addition", "reversal"),
                              formats=("seq2seq",), doc="dates, addition or reversal")
    num_validation: int = option(500, kind="int", formats=("seq2seq",),
                                 doc="held-out validation pairs")
    num_test: int = option(1000, kind="int", formats=("seq2seq",), doc="held-out test pairs")
    unknown: str = option("error", kind="str", choices=("error", "map"), formats=("seq2seq",),
                          doc="a source character outside the vocabulary: an error, or <unk>")
    max_digits: int = option(3, kind="int", formats=("seq2seq",),
                             doc="addition: digits per operand")
    min_length: int = option(3, kind="int", formats=("seq2seq",),
                             doc="reversal: shortest sequence")
    max_length: int = option(12, kind="int", formats=("seq2seq",),
                             doc="reversal: longest sequence")


@dataclass
class TrainerConfig:
    """``[trainer]``: the options of :class:`rnnkit.Trainer` and its ``fit``."""

    loss: str | None = option(kind="str", doc="mse, cross_entropy, sequence_cross_entropy "
                                              "(default: the model type's)")
    optimizer: str = option("adam", kind="str", doc="adam, rmsprop or sgd")
    lr: float = option(1e-3, kind="float", doc="learning rate")
    metrics: list | None = option(kind="str-list",
                                  doc="metric names (default: the model type's)")
    label_smoothing: float = option(0.0, kind="float", doc="cross-entropy label smoothing")
    clip_grad_norm: float | None = option(kind="float", doc="clip the gradient norm to this")
    tbptt: int | None = option(kind="int", doc="truncated BPTT: steps per update")
    scheduler: dict = option({}, kind="table",
                             doc="{ name = 'StepLR', step_size = 5, gamma = 0.5 }: a "
                                 "torch.optim.lr_scheduler class and its arguments")
    scheduler_interval: str = option("epoch", kind="str", choices=("epoch", "step"),
                                     doc="step the scheduler per epoch or per update")
    precision: str = option("fp32", kind="str", choices=("fp32", "bf16"), doc="fp32 or bf16")
    device: str | None = option(kind="str", doc="cpu, cuda, cuda:1, ... (default: cpu)")
    check_finite: bool = option(True, kind="bool",
                                doc="stop with a message at a NaN/Inf input, loss or gradient")
    seed: int = option(0, kind="int", doc="seed of every random number generator")
    epochs: int = option(10, kind="int", doc="passes over the training data")
    epoch_size: int | None = option(kind="int",
                                    doc="samples per epoch (default: the whole training set)")
    early_stopping: dict = option({}, kind="table",
                                  doc="{monitor, patience, min_delta}: stop when it stalls")
    keep_last: int = option(3, kind="int", doc="checkpoints kept in the run directory")
    checkpoint_every: int | None = option(kind="int",
                                          doc="also checkpoint every N updates (default: "
                                              "at the end of each epoch only)")
    progress: str = option("bar", kind="str", choices=("bar", "cntk", "none"),
                           doc="a progress bar, CNTK's ProgressPrinter table, or nothing")


@dataclass
class DecodeConfig:
    """``[decode]``: how a seq2seq run decodes (evaluate, predict, translate)."""

    beam_width: int = option(1, kind="int", doc="hypotheses kept per step (1: greedy)")
    max_length: int | None = option(kind="int",
                                    doc="most tokens decoded (default: the task's longest "
                                        "target + 1)")
    length_penalty: float = option(0.0, kind="float",
                                   doc="GNMT length penalty alpha (beam search)")
    coverage_penalty: float = option(0.0, kind="float",
                                     doc="GNMT coverage penalty beta (beam search)")


@dataclass
class RunConfig:
    """A whole run configuration: :class:`ModelConfig`, :class:`DataConfig`,
    :class:`TrainerConfig`, and the file it came from (``None`` for a dict)."""

    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    source: str | None = None
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (TOML/JSON types only) that :func:`parse_config` reads back."""
        return {name: _section_dict(getattr(self, name)) for name in SECTIONS}


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig,
                             "trainer": TrainerConfig, "decode": DecodeConfig}


def _section_dict(section: Any) -> dict[str, Any]:
    fmt = getattr(section, "format", None) if isinstance(section, DataConfig) else None
    return {f.name: copy.deepcopy(getattr(section, f.name)) for f in dataclasses.fields(section)
            if getattr(section, f.name) is not None
            and (f.metadata["formats"] is None or fmt in f.metadata["formats"])}


# what Keras, CNTK and PyTorch users call some keys
SYNONYMS = {"learning_rate": "lr", "max_epochs": "epochs", "num_epochs": "epochs",
            "minibatch_size": "batch_size", "units": "hidden_size", "layers": "num_layers",
            "rnn_type": "cell", "cell_type": "cell", "metric": "metrics",
            "gradient_clipping": "clip_grad_norm", "clipnorm": "clip_grad_norm",
            "patience": "early_stopping", "file": "path", "train": "path"}


def closest(name: str, valid: Any) -> str:
    """``"; did you mean 'x'?"`` for the valid name closest to ``name``, else the list of
    valid names."""
    valid = sorted(valid)
    synonym = SYNONYMS.get(name)
    match = [synonym] if synonym in valid else difflib.get_close_matches(name, valid, n=1,
                                                                         cutoff=0.6)
    if match:
        return f"; did you mean {match[0]!r}?"
    return f"; valid: {', '.join(valid)}"


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _check_value(where: str, value: Any, meta: dict[str, Any], base: Path | None) -> Any:
    kind = meta["kind"]
    need = {"bool": "true or false", "int": "an integer", "float": "a number",
            "str": "a string", "path": "a string (a path)", "str-list": "an array of strings",
            "float-list": "an array of numbers", "table": "a table"}[kind]
    wrong = UsageError(f"{where} must be {need}, got {value!r} ({_type_name(value)})")
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{where} must be a finite number, got {value}")
    elif kind in ("str", "path"):
        if not isinstance(value, str):
            raise wrong
        if kind == "path" and base is not None:
            value = os.path.normpath(base / os.path.expanduser(value))
    elif kind == "str-list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong
    elif kind == "float-list":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise wrong
        value = [float(v) for v in value]
    elif kind == "table":
        if not isinstance(value, dict):
            raise wrong
    choices = meta["choices"]
    if choices is not None and value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        raise UsageError(f"{where} = {value!r} is not one of {', '.join(choices)}"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return value


def _build_section(name: str, table: Any, base: Path | None) -> Any:
    cls = SECTIONS[name]
    if not isinstance(table, dict):
        raise UsageError(f"[{name}] must be a table, got {table!r}")
    known = _fields(cls)
    for key in table:
        if key not in known:
            raise UsageError(f"[{name}] has no key {key!r}{closest(key, known)}")
    missing = [k for k, f in known.items() if f.metadata["required"] and k not in table]
    if missing:
        raise UsageError(f"[{name}] needs {missing[0]} ("
                         f"{known[missing[0]].metadata['doc']})")
    values = {key: _check_value(f"{name}.{key}", value, known[key].metadata, base)
              for key, value in table.items()}
    section = cls(**values)
    if name == "data":
        for key in table:
            formats = known[key].metadata["formats"]
            if formats is not None and section.format not in formats:
                raise UsageError(f"data.{key} applies to format {' or '.join(formats)}, not "
                                 f"{section.format!r}")
    return section


def parse_config(raw: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (),
                 base: str | os.PathLike | None = None,
                 source: str | None = None) -> RunConfig:
    """Validate a TOML document (a dict) and ``--set`` overrides into a :class:`RunConfig`.

    ``base``: the folder relative paths in ``raw`` are relative to (``None``: the current
    folder). Every problem is a :class:`~rnnkit.errors.UsageError` naming the key.
    """
    raw = copy.deepcopy(raw)
    base_path = Path(base) if base is not None else None
    for name in raw:
        if name not in SECTIONS:
            raise UsageError(f"unknown section [{name}]{closest(name, SECTIONS)}")
    # paths in the file are relative to the file; paths given with --set to the current folder
    for name, table in raw.items():
        if isinstance(table, dict) and base_path is not None:
            for key, value in table.items():
                spec = _fields(SECTIONS[name]).get(key)
                if spec is not None and spec.metadata["kind"] == "path" and isinstance(value, str):
                    table[key] = os.path.normpath(base_path / os.path.expanduser(value))
    apply_overrides(raw, overrides)
    for name in ("model", "data"):
        if name not in raw:
            raise UsageError(f"the configuration needs a [{name}] section")
    sections = {name: _build_section(name, raw.get(name, {}), None) for name in SECTIONS}
    config = RunConfig(**sections, source=source)
    _check_consistency(config)
    return config


def load_config(path: str | os.PathLike,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML run configuration and apply ``--set`` overrides (see :func:`parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: not UTF-8 text ({e.reason})") from None
    return parse_config(raw, overrides=overrides, base=path.resolve().parent, source=str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.lr=0.001"`` -> ``(["trainer", "lr"], 0.001)``.

    The value is read as a TOML value (numbers, booleans, arrays, quoted strings, inline
    tables); anything else is taken as a bare string (``model.cell=lstm``).
    """
    key, sep, raw_value = text.partition("=")
    key, raw_value = key.strip(), raw_value.strip()
    parts = key.split(".")
    if not sep or len(parts) < 2 or not all(parts) or any(" " in p for p in parts):
        raise UsageError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. "
                         "--set trainer.lr=0.001")
    if not raw_value:
        raise UsageError(f"--set {text!r}: no value after '='")
    try:
        value = tomllib.loads(f"value = {raw_value}")["value"]
    except tomllib.TOMLDecodeError:
        if raw_value[0] in "[{\"'":  # meant as an array, table or quoted string: say why not
            raise UsageError(f"--set {text!r}: {raw_value!r} is not a valid TOML value") from None
        value = raw_value
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``--set`` overrides to a TOML document in place (and return it). The section and
    key must exist in the schema; deeper keys (``data.streams.features.shape=2``) go into the
    key's table."""
    for text in overrides:
        parts, value = parse_override(text)
        section, key = parts[0], parts[1]
        if section not in SECTIONS:
            raise UsageError(f"--set {text!r}: no section [{section}]{closest(section, SECTIONS)}")
        known = _fields(SECTIONS[section])
        if key not in known:
            raise UsageError(f"--set {text!r}: [{section}] has no key {key!r}"
                             f"{closest(key, known)}")
        kind = known[key].metadata["kind"]
        if len(parts) > 2 and kind != "table":
            raise UsageError(f"--set {text!r}: {section}.{key} is not a table")
        if kind == "path" and isinstance(value, str):
            value = os.path.abspath(os.path.expanduser(value))
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise UsageError(f"--set {text!r}: [{section}] is not a table in the file")
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {text!r}: {'.'.join(parts[:-1])} is not a table")
        target[parts[-1]] = value
    return raw


def _check_consistency(config: RunConfig) -> None:
    """Rules across keys: what a data format needs, what a model type needs."""
    model, data, trainer = config.model, config.data, config.trainer
    if data.format in ("csv", "ctf", "idx", "text") and data.path is None:
        raise UsageError(f"[data] format {data.format!r} needs path (the training "
                         f"{'folder' if data.format == 'idx' else 'file'})")
    if data.format == "csv" and not data.target:
        raise UsageError("[data] format 'csv' needs target (the column to predict)")
    if data.format == "ctf":
        if not data.streams:
            raise UsageError("[data] format 'ctf' needs streams, e.g. streams.features = "
                             "{ field = 'x', shape = 1 }")
        for key in ("input", "target"):
            if key not in data.input_map:
                raise UsageError(f"data.input_map needs {key} (a stream name)")
    if data.format == "seq2seq" and data.task is None:
        raise UsageError("[data] format 'seq2seq' needs task: dates, addition or reversal")
    if (model.type == "seq2seq") != (data.format == "seq2seq"):
        raise UsageError("[model] type 'seq2seq' reads [data] format 'seq2seq' (and only it "
                         f"does), not type {model.type!r} with format {data.format!r}")
    if model.type != "seq2seq" and model.attention is not None:
        raise UsageError(f"model.attention applies to type 'seq2seq', not {model.type!r}")
    if model.type != "seq2seq" and config.decode != DecodeConfig():
        raise UsageError(f"[decode] applies to model.type 'seq2seq', not {model.type!r}")
    if model.type == "module" and not model.class_name:
        raise UsageError("[model] type 'module' needs class_name (a registered class)")
    if model.type != "module" and model.class_name:
        raise UsageError(f"model.class_name applies to type 'module', not {model.type!r}")
    if model.type == "language_model" and data.format != "text":
        raise UsageError(f"[model] type 'language_model' reads format 'text', not "
                         f"{data.format!r}")
    if not 1 <= len(data.splits) <= 3 or any(not 0 <= s <= 1 for s in data.splits):
        raise UsageError(f"data.splits must be 1 to 3 fractions in [0, 1], got {data.splits}")
    if sum(data.splits) > 1 + 1e-9:
        raise UsageError(f"data.splits sum to {sum(data.splits):g} > 1")
    for name in ("batch_size", "epochs", "num_layers", "hidden_size", "keep_last", "look_back",
                 "horizon", "seq_len", "num_samples", "limit", "epoch_size", "tbptt",
                 "checkpoint_every", "max_digits", "min_length", "max_length", "beam_width"):
        for section in (model, data, trainer, config.decode):
            value = getattr(section, name, None)
            if isinstance(value, int) and value < 1:
                section_name = {ModelConfig: "model", DataConfig: "data",
                                TrainerConfig: "trainer", DecodeConfig: "decode"}[type(section)]
                raise UsageError(f"{section_name}.{name} must be at least 1, got {value}")
    for name in ("num_validation", "num_test"):
        if getattr(data, name) < 0:
            raise UsageError(f"data.{name} must be at least 0, got {getattr(data, name)}")
    if data.format == "seq2seq" and data.min_length > data.max_length:
        raise UsageError(f"data.min_length ({data.min_length}) exceeds data.max_length "
                         f"({data.max_length})")
    if not 0 <= model.dropout < 1:
        raise UsageError(f"model.dropout must be in [0, 1), got {model.dropout}")
    if trainer.lr <= 0:
        raise UsageError(f"trainer.lr must be positive, got {trainer.lr}")
