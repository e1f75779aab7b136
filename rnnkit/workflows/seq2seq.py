"""Seq2seq runs: ``rnnkit train`` on a toy task, ``rnnkit evaluate``, ``predict``, ``translate``.

A configuration with ``[model] type = "seq2seq"`` and ``[data] format = "seq2seq"`` trains a
:class:`~rnnkit.models.Seq2Seq` on one of the tasks of :mod:`rnnkit.data.seq2seq_tasks`
(``task = "dates" | "addition" | "reversal"``, ``num_samples`` training pairs, held-out
``num_validation`` and ``num_test`` pairs, all drawn from ``seed``). ``[decode]`` says how the
run decodes (``beam_width``, ``max_length``, ``length_penalty``, ``coverage_penalty``).

The run directory holds what the other tasks' hold (the model with its configuration,
checkpoints, ``history.csv``, ``metrics.json``) plus the two vocabularies
(``source_vocab.json``, ``target_vocab.json``). Its test metrics are the trainer's
teacher-forced ``loss`` and per-token ``accuracy``, and those of the *decoded* outputs:
``exact_match``, ``token_accuracy`` (position by position, a missing or extra character
counts as wrong) and sacreBLEU's corpus ``bleu`` on characters (0-100).

Example:
    >>> import tempfile
    >>> from rnnkit.workflows.config import parse_config
    >>> config = parse_config({
    ...     "model": {"type": "seq2seq", "hidden_size": 32, "attention": "luong"},
    ...     "data": {"format": "seq2seq", "task": "addition", "num_samples": 500},
    ...     "trainer": {"epochs": 1, "progress": "none"}})
    >>> run = train_run(config, tempfile.mkdtemp())              # doctest: +SKIP
    >>> translate(run.directory, "12+30").texts                  # doctest: +SKIP
    ['42']
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit._files import atomic_write, atomic_write_bytes
from rnnkit.errors import UsageError
from rnnkit.workflows.config import RunConfig

__all__ = [
    "SOURCE_VOCAB",
    "TARGET_VOCAB",
    "Translation",
    "build_seq2seq_data",
    "build_seq2seq_model",
    "decode_texts",
    "evaluate_seq2seq",
    "finish_seq2seq_run",
    "predict_seq2seq",
    "save_attention_png",
    "translate",
]

SOURCE_VOCAB = "source_vocab.json"
TARGET_VOCAB = "target_vocab.json"
#: sources decoded per batch by evaluate / predict
DECODE_BATCH = 256


def _task(config: RunConfig) -> Any:
    from rnnkit.data.seq2seq_tasks import make_task

    data = config.data
    try:
        return make_task(data.task, max_digits=data.max_digits, min_length=data.min_length,
                         max_length=data.max_length)
    except (TypeError, ValueError) as e:
        raise UsageError(f"[data]: {e}") from None


def _loader(pairs: list[tuple[str, str]], vocabularies: tuple[Any, Any], *, batch_size: int,
            shuffle: bool, unknown: str, where: str) -> Any:
    from rnnkit.data.seq2seq_tasks import Seq2SeqCollate, Seq2SeqDataset

    try:
        dataset = Seq2SeqDataset(pairs, *vocabularies, unknown=unknown)
    except ValueError as e:
        raise UsageError(f"{where}: {' '.join(str(e).split())}") from None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=Seq2SeqCollate())


def build_seq2seq_data(config: RunConfig, vocabularies: tuple[Any, Any] | None = None) -> Any:
    """The task's training, validation and test splits as DataLoaders of
    :class:`~rnnkit.data.seq2seq_tasks.Seq2SeqCollate` batches (``RunData.vocabulary`` is the
    pair ``(source, target)``)."""
    from rnnkit.data.seq2seq_tasks import make_splits
    from rnnkit.workflows.train import RunData

    data = config.data
    task = _task(config)
    try:
        splits = make_splits(task, data.num_samples, data.num_validation, data.num_test,
                             seed=data.seed)
    except ValueError as e:
        raise UsageError(f"[data]: {e}") from None
    vocabularies = vocabularies or (task.source_vocabulary, task.target_vocabulary)
    limit = data.limit

    def loader(pairs: list[tuple[str, str]], shuffle: bool, name: str) -> Any:
        pairs = pairs[:limit] if limit is not None else pairs
        if not pairs:
            return None
        return _loader(pairs, vocabularies, batch_size=data.batch_size, shuffle=shuffle,
                       unknown=data.unknown, where=f"the {data.task} task's {name} split")

    return RunData(train=loader(splits.train, data.shuffle, "training"),
                   validation=loader(splits.validation, False, "validation"),
                   test=loader(splits.test, False, "test"), vocabulary=vocabularies,
                   output_size=len(vocabularies[1]))


def build_seq2seq_model(config: RunConfig, data: Any) -> nn.Module:
    """The :class:`~rnnkit.models.Seq2Seq` ``[model]`` describes, sized from the vocabularies."""
    from rnnkit.data.seq2seq_tasks import BOS_ID, EOS_ID, PAD_ID
    from rnnkit.models import Seq2Seq

    spec = config.model
    source, target = data.vocabulary
    attention = spec.attention or "bahdanau"
    arguments = {"hidden_size": spec.hidden_size, "cell": spec.cell,
                 "encoder_layers": spec.num_layers, "decoder_layers": spec.num_layers,
                 "bidirectional_encoder": spec.bidirectional,
                 "attention": None if attention == "none" else attention,
                 "dropout": spec.dropout, "cell_options": dict(spec.cell_options) or None,
                 "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, **spec.options}
    try:
        return Seq2Seq(len(source), len(target), **arguments)
    except (TypeError, ValueError) as e:
        raise UsageError(f"[model]: {' '.join(str(e).split())}") from None


# ----------------------------------------------------------------------------- decoding
def _vocabularies(directory: Path) -> tuple[Any, Any]:
    from rnnkit.data import Vocabulary

    try:
        return (Vocabulary.load(directory / SOURCE_VOCAB),
                Vocabulary.load(directory / TARGET_VOCAB))
    except (OSError, ValueError) as e:
        raise UsageError(f"{directory} is not a complete seq2seq run: "
                         f"{' '.join(str(e).split())}") from None


def _settings(config: RunConfig, *, beam_width: int | None = None, n_best: int = 1,
              max_length: int | None = None, length_penalty: float | None = None,
              coverage_penalty: float | None = None) -> dict[str, Any]:
    """The decode keywords: the run's ``[decode]`` section, overridden by the arguments given,
    checked with one-line errors."""
    decode = config.decode
    beam_width = decode.beam_width if beam_width is None else beam_width
    max_length = decode.max_length if max_length is None else max_length
    if max_length is None:
        max_length = _task(config).max_target_length + 1   # the target and its <eos>
    checks = (("beam width", beam_width), ("n-best", n_best), ("max length", max_length))
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"the {name} must be an integer of at least 1, got {value!r}")
    if n_best > beam_width:
        raise UsageError(f"n-best {n_best} exceeds the beam width {beam_width}: a beam keeps "
                         "only beam-width hypotheses")
    settings: dict[str, Any] = {"max_length": max_length}
    if beam_width == 1 and n_best == 1:
        settings["method"] = "greedy"
    else:
        settings.update(method="beam", beam_width=beam_width, n_best=n_best,
                        length_penalty=decode.length_penalty if length_penalty is None
                        else length_penalty,
                        coverage_penalty=decode.coverage_penalty if coverage_penalty is None
                        else coverage_penalty)
    return settings


def _hypothesis_tokens(tokens: torch.Tensor, length: int, vocabulary: Any) -> list[str]:
    """A hypothesis' tokens as characters, without its ``<eos>`` (``<unk>`` stays visible)."""
    from rnnkit.data.seq2seq_tasks import BOS_ID, EOS_ID, PAD_ID

    ids = tokens[:length].tolist()
    if ids and ids[-1] == EOS_ID:
        ids = ids[:-1]
    return [vocabulary.itos[i] for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)]


def _encode_batch(sources: list[str], vocabulary: Any, unknown: str, where: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    from rnnkit.data.seq2seq_tasks import PAD_ID, encode_text

    ids = []
    for source in sources:
        if not source:
            raise UsageError(f"{where}: an empty input (a source needs at least one character)")
        try:
            ids.append(encode_text(vocabulary, source, unknown=unknown))
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)             # (B,)
    padded = torch.full((len(ids), int(lengths.max())), PAD_ID, dtype=torch.int64)  # (B, S)
    for row, x in enumerate(ids):
        padded[row, : len(x)] = torch.tensor(x, dtype=torch.int64)
    return padded, lengths


def _decode(model: nn.Module, source: torch.Tensor, lengths: torch.Tensor,
            settings: dict[str, Any]) -> Any:
    model.eval()
    try:
        with torch.no_grad():
            return model.decode(source, lengths, **settings)
    except (TypeError, ValueError) as e:
        raise UsageError(" ".join(str(e).split())) from None


def decode_texts(model: nn.Module, sources: list[str], vocabularies: tuple[Any, Any],
                 settings: dict[str, Any], *, unknown: str = "error",
                 where: str = "input") -> list[tuple[str, float]]:
    """The best decoding of each source and its score, ``DECODE_BATCH`` sources at a time."""
    out = []
    for start in range(0, len(sources), DECODE_BATCH):
        chunk = sources[start: start + DECODE_BATCH]
        source, lengths = _encode_batch(chunk, vocabularies[0], unknown, where)
        hyps = _decode(model, source, lengths, {**settings, "n_best": 1}
                       if settings.get("method") == "beam" else settings)
        for row in range(len(chunk)):
            chars = _hypothesis_tokens(hyps.tokens[row, 0], int(hyps.lengths[row, 0]),
                                       vocabularies[1])
            out.append(("".join(chars), float(hyps.scores[row, 0])))
    return out


def _decoded_metrics(model: nn.Module, pairs: list[tuple[str, str]],
                     vocabularies: tuple[Any, Any], settings: dict[str, Any], unknown: str,
                     where: str) -> dict[str, float]:
    from rnnkit.training.metrics import SequenceMetrics

    decoded = decode_texts(model, [s for s, _ in pairs], vocabularies, settings,
                           unknown=unknown, where=where)
    metrics = SequenceMetrics(["exact_match", "token_accuracy", "bleu"], tokenize="char")
    metrics.update([text for text, _ in decoded], [t for _, t in pairs])
    return metrics.compute()


def _pairs_of(loader: Any) -> list[tuple[str, str]]:
    return list(loader.dataset.pairs)


def finish_seq2seq_run(config: RunConfig, directory: Path, model: nn.Module, data: Any,
                       test_metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """After training: write the vocabularies into the run directory and add the decoded test
    split's exact match, token accuracy and BLEU to the trainer's test metrics."""
    source, target = data.vocabulary
    source.save(directory / SOURCE_VOCAB)
    target.save(directory / TARGET_VOCAB)
    if data.test is None:
        return test_metrics
    decoded = _decoded_metrics(model, _pairs_of(data.test), data.vocabulary, _settings(config),
                               config.data.unknown, "the test split")
    return {**(test_metrics or {}), **decoded}


def _read_pairs(path: str, *, targets: bool) -> list[tuple[str, str]]:
    """A text file of ``source<TAB>target`` lines (``targets=False``: the target may be left
    out). Empty lines are skipped; a line without a tab is an error naming it."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source, tab, target = line.partition("\t")
        if targets and not tab:
            raise UsageError(f"{path}:{number}: expected SOURCE<TAB>TARGET, got {line!r}")
        pairs.append((source, target))
    if not pairs:
        raise UsageError(f"{path}: no lines to read")
    return pairs


def _load(directory: str | os.PathLike) -> tuple[nn.Module, RunConfig, tuple[Any, Any]]:
    from rnnkit.workflows.train import load_run

    model, config = load_run(directory)
    if config is None or config.model.type != "seq2seq":
        kind = "a forecaster" if config is None else f"a {config.model.type}"
        raise UsageError(f"{directory} holds {kind}, not a seq2seq model")
    return model, config, _vocabularies(Path(directory))


def evaluate_seq2seq(directory: str | os.PathLike, path: str | None = None) -> dict[str, Any]:
    """Teacher-forced loss and accuracy, and the decoded exact match, token accuracy and BLEU
    of the run on ``path`` (``source<TAB>target`` lines) or on its own test split."""
    from rnnkit.workflows.train import make_trainer

    model, config, vocabularies = _load(directory)
    if path is None:
        data = build_seq2seq_data(config, vocabularies)
        if data.test is None:
            raise UsageError("the run has no test split (data.num_test = 0): give DATA, a file "
                             "of SOURCE<TAB>TARGET lines")
        loader, where = data.test, "the test split"
    else:
        loader = _loader(_read_pairs(path, targets=True), vocabularies,
                         batch_size=config.data.batch_size, shuffle=False,
                         unknown=config.data.unknown, where=path)
        where = path
    metrics = make_trainer(config, model).evaluate(loader)
    metrics.update(_decoded_metrics(model, _pairs_of(loader), vocabularies, _settings(config),
                                    config.data.unknown, where))
    return metrics


def predict_seq2seq(directory: str | os.PathLike, path: str | None,
                    output: str | os.PathLike) -> Path:
    """A CSV of ``sample,source,prediction,score`` for each line of ``path`` (a source per
    line, or ``source<TAB>target``) or each pair of the run's test split."""
    model, config, vocabularies = _load(directory)
    if path is None:
        data = build_seq2seq_data(config, vocabularies)
        if data.test is None:
            raise UsageError("the run has no test split (data.num_test = 0): give DATA")
        sources, where = [s for s, _ in _pairs_of(data.test)], "the test split"
    else:
        sources, where = [s for s, _ in _read_pairs(path, targets=False)], path
    decoded = decode_texts(model, sources, vocabularies, _settings(config),
                           unknown=config.data.unknown, where=where)

    def write(f: Any) -> None:
        writer = csv.writer(f)
        writer.writerow(["sample", "source", "prediction", "score"])
        for i, (source, (text, score)) in enumerate(zip(sources, decoded, strict=True)):
            writer.writerow([i, source, text, f"{score:.6g}"])

    return atomic_write(output, write)


# ----------------------------------------------------------------------------- translate
@dataclass
class Translation:
    """What :func:`translate` returns: the n-best decodings, best first."""

    source: str
    texts: list[str]
    scores: list[float]
    tokens: list[list[str]]          # each hypothesis' characters, plus "<eos>" if it ended
    attention: torch.Tensor | None   # (L, S) of the best hypothesis, None without attention


def translate(directory: str | os.PathLike, text: str, *, beam_width: int | None = None,
              n_best: int = 1, max_length: int | None = None,
              length_penalty: float | None = None, coverage_penalty: float | None = None,
              attention_png: str | os.PathLike | None = None) -> Translation:
    """Decode ``text`` with the run's model: greedy when ``beam_width`` is 1, else beam
    search keeping ``n_best`` hypotheses (defaults: the run's ``[decode]``). With
    ``attention_png``, write the best hypothesis' attention as a heat map (source characters
    on x, output characters on y)."""
    from rnnkit.data.seq2seq_tasks import EOS_ID

    model, config, vocabularies = _load(directory)
    settings = _settings(config, beam_width=beam_width, n_best=n_best, max_length=max_length,
                         length_penalty=length_penalty, coverage_penalty=coverage_penalty)
    if attention_png is not None and config.model.attention == "none":
        raise UsageError("the run's model has no attention (model.attention = 'none'): there "
                         "is no heat map to draw")
    source, lengths = _encode_batch([text], vocabularies[0], config.data.unknown, "input")
    hyps = _decode(model, source, lengths, settings)
    texts, scores, tokens = [], [], []
    for k in range(hyps.tokens.shape[1]):
        length = int(hyps.lengths[0, k])
        if length == 0 or not math.isfinite(float(hyps.scores[0, k])):
            continue  # fewer distinct sequences than n_best
        chars = _hypothesis_tokens(hyps.tokens[0, k], length, vocabularies[1])
        ended = int(hyps.tokens[0, k, length - 1]) == EOS_ID
        texts.append("".join(chars))
        scores.append(float(hyps.scores[0, k]))
        tokens.append(chars + (["<eos>"] if ended else []))
    attention = None
    if hyps.attention is not None:
        attention = hyps.attention[0, 0, : len(tokens[0]), : int(lengths[0])].detach().cpu()
    result = Translation(source=text, texts=texts, scores=scores, tokens=tokens,
                         attention=attention)
    if attention_png is not None:
        if attention is None:
            raise UsageError("the model's decoder returned no attention: there is no heat map "
                             "to draw")
        save_attention_png(attention_png, attention, list(text), tokens[0])
    return result


def save_attention_png(path: str | os.PathLike, attention: torch.Tensor,
                       source_tokens: list[str], output_tokens: list[str]) -> Path:
    """A heat map of ``attention (L, S)``: source tokens on x, output tokens on y (matplotlib's
    Agg backend, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, positions = attention.shape
    if (steps, positions) != (len(output_tokens), len(source_tokens)):
        raise ValueError(f"attention {tuple(attention.shape)} does not match "
                         f"{len(output_tokens)} output and {len(source_tokens)} source tokens")
    figure = Figure(figsize=(max(3.0, 0.35 * positions + 1.8), max(2.5, 0.35 * steps + 1.2)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(attention.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                        aspect="auto")
    shown = ["\u2423" if c == " " else c for c in source_tokens]  # a visible space
    axes.set_xticks(range(positions), labels=shown)
    axes.set_yticks(range(steps), labels=output_tokens)
    axes.set_xlabel("source")
    axes.set_ylabel("output")
    axes.xaxis.set_ticks_position("top")
    axes.xaxis.set_label_position("top")
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())
