"""Epoch metrics for the trainer: torchmetrics accumulators behind one masked ``update``.

:class:`Metrics` holds one accumulator per requested name and feeds each the *counted*
elements of a batch only: padding (``mask`` False) never reaches an accumulator, so an epoch's
value is exactly the value over the real steps, whatever the batching.

Names (Keras-like; the value is reported under the name you gave):

=====================  ===================================================================
``accuracy``           fraction of correct class predictions (``MulticlassAccuracy``, micro)
``f1``                 macro F1 over the classes seen in targets or predictions
                       (``MulticlassF1Score(average="macro")``, as scikit-learn's default)
``confusion_matrix``   ``C x C`` counts, rows = true class, columns = predicted (a list)
``mse`` ``rmse``       mean (root mean) squared error over every counted element
``mae`` ``mape``       mean absolute (percentage) error; MAPE divides by ``max(|y|, 1.17e-6)``
``perplexity``         ``exp(sum cross-entropy / tokens)`` over the counted tokens
``bits_per_character`` ``sum cross-entropy / tokens / ln 2`` (alias ``bpc``)
=====================  ===================================================================

Shapes (batch-major, as the trainer's contract; ``C`` classes, ``D`` values per step):

* classification metrics: output ``(B, C)`` scores with target ``(B,)`` class ids; output
  ``(B, T, C)`` with per-step target ``(B, T)`` (masked); output ``(B, T, C)`` with a
  per-sample target ``(B,)`` scores the last valid step of each row (from ``mask``). A target
  of the output's shape holds class probabilities (one-hot) and counts as its arg-max. One
  score column (``C == 1``) is a binary logit: class 1 when it is positive. Target ids of
  ``-100`` (``IGNORE_INDEX``, torch's ``ignore_index``) never count, like padding.
* regression metrics: output and target of one shape (``(B, D)``, ``(B, T)``, ``(B, T, D)``;
  a trailing 1 on either side is squeezed); ``mask (B, T)`` drops padded steps; output
  ``(B, T, D)`` with target ``(B, D)`` scores the last valid step.

The number of classes comes from the output's last dimension on the first update.

Example:
    >>> import torch
    >>> metrics = Metrics(["accuracy", "perplexity"])
    >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]])   # (B=1, T=3, C=2)
    >>> target = torch.tensor([[0, 1, 1]])                              # (B, T)
    >>> mask = torch.tensor([[True, True, False]])                       # the third step is padding
    >>> metrics.update(logits, target, mask)
    >>> round(metrics.compute()["accuracy"], 4), round(metrics.compute()["perplexity"], 4)
    (1.0, 1.1353)
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from rnnkit.errors import ShapeError

if TYPE_CHECKING:
    import torchmetrics

__all__ = ["IGNORE_INDEX", "METRIC_NAMES", "SEQUENCE_METRIC_NAMES", "Metrics", "SequenceMetrics",
           "corpus_bleu", "exact_match_counts", "token_accuracy_counts"]
__all__ += ["RECOGNITION_METRIC_NAMES", "RecognitionMetrics", "character_error_rate",
            "edit_distance", "edit_distance_counts", "sequence_error_rate"]   # recognition


def __getattr__(name: str) -> Any:
    # torchmetrics takes seconds to import (scipy.signal); only code that uses it pays
    if name == "Metric":
        #: A user-supplied accumulator: any ``torchmetrics.Metric`` (fed counted elements only).
        import torchmetrics
        return torchmetrics.Metric
    if name == "CTCErrorRate":
        return _ctc_error_rate_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# name -> (kind, canonical name); kind decides how output and target are read
_NAMES: dict[str, tuple[str, str]] = {
    "accuracy": ("class", "accuracy"),
    "f1": ("class", "f1"),
    "confusion_matrix": ("class", "confusion_matrix"),
    "mse": ("regression", "mse"),
    "rmse": ("regression", "rmse"),
    "mae": ("regression", "mae"),
    "mape": ("regression", "mape"),
    "perplexity": ("cross_entropy", "perplexity"),
    "bits_per_character": ("cross_entropy", "bits_per_character"),
    "bpc": ("cross_entropy", "bits_per_character"),
}

#: Every metric name :class:`Metrics` accepts.
METRIC_NAMES: tuple[str, ...] = tuple(sorted(_NAMES))

# losses whose outputs are class scores / values; a metric of the other kind is a mistake
_CLASS_LOSSES = {"cross_entropy", "sequence_cross_entropy", "binary_cross_entropy"}
_REGRESSION_LOSSES = {"mse", "mae", "huber"}

#: a target class id that never counts (torch's ``ignore_index``; rnnkit's sparse padding)
IGNORE_INDEX = -100

_STATE_VERSION = 1


def _unknown_name(name: object) -> ValueError:
    close = difflib.get_close_matches(str(name), METRIC_NAMES, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown metric {name!r}{hint}; valid names: {', '.join(METRIC_NAMES)}")


def _is_torchmetric(value: Any) -> bool:
    import torchmetrics

    return isinstance(value, torchmetrics.Metric)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@functools.cache
def _cross_entropy_sum() -> type:
    """The perplexity/bits-per-character accumulator class (built on first use)."""
    import torchmetrics

    class _CrossEntropySum(torchmetrics.Metric):
        """Summed cross-entropy (nats, float64) and token count: perplexity and bits/char.

        torchmetrics' ``text.Perplexity`` keeps the same two sums but in the input's precision
        and only for ``(B, T, V)``; this one takes the already-masked ``(N, C)`` scores.
        """

        full_state_update = False

        def __init__(self, what: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.what = what
            self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

        def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
            ce = F.cross_entropy(scores.double(), target, reduction="sum")
            self.total += ce.to(self.total.device)
            self.count += target.numel()

        def compute(self) -> torch.Tensor:
            mean = self.total / self.count
            return torch.exp(mean) if self.what == "perplexity" else mean / math.log(2.0)

    return _CrossEntropySum


def _make(canonical: str, num_classes: int) -> torchmetrics.Metric:
    from torchmetrics import classification, regression

    # sync_on_compute=False: Metrics.sync reduces explicitly, so compute() never blocks on the
    # other ranks (only rank 0 reports) and never reduces twice
    opts: dict[str, Any] = {"sync_on_compute": False}
    # Metrics.update checks the class ids once; torchmetrics' own checks would sync per metric
    checked = {"validate_args": False, **opts}
    if canonical == "accuracy":
        return classification.MulticlassAccuracy(num_classes, average="micro", **checked)
    if canonical == "f1":
        return classification.MulticlassF1Score(num_classes, average="macro", **checked)
    if canonical == "confusion_matrix":
        return classification.MulticlassConfusionMatrix(num_classes, **checked)
    if canonical == "mse":
        return regression.MeanSquaredError(**opts)
    if canonical == "rmse":
        return regression.MeanSquaredError(squared=False, **opts)
    if canonical == "mae":
        return regression.MeanAbsoluteError(**opts)
    if canonical == "mape":
        return regression.MeanAbsolutePercentageError(**opts)
    return _cross_entropy_sum()(canonical, **opts)


def _last_valid(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Row ``b``'s last step with ``mask`` True: ``(B, T, ...) -> (N, ...)`` (empty rows drop)."""
    if mask is None:
        return values[:, -1]
    steps = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)   # (B, T)
    last = torch.where(mask, steps, -1).amax(dim=1)                           # (B,)
    keep = last >= 0
    rows = torch.arange(values.shape[0], device=values.device)[keep]
    return values[rows, last[keep]]


class Metrics:
    """Masked epoch metrics: ``update`` per batch, ``compute`` at the end, ``reset`` between.

    Args:
        names: metric names (see the module docstring) or ``torchmetrics.Metric`` instances
            (reported under their ``name`` attribute or their class name in snake case). They
            receive the counted elements only: a metric with a ``num_classes`` attribute gets
            class scores ``(N, C)`` and ids ``(N,)``, any other flat values ``(N,)``; one with
            ``takes_batch = True`` (:class:`CTCErrorRate`) gets the whole ``(output, target,
            mask)`` to decode.
        loss_name: the trainer's loss (``"mse"``, ``"cross_entropy"``,
            ``"sequence_cross_entropy"``, or ``None`` for a callable); a classification metric
            with the ``"mse"`` loss, or a regression metric with a cross-entropy loss, is
            refused at once instead of failing on the first batch.

    ``state_dict()`` holds every accumulator (plain tensors and ints, ``weights_only``-safe);
    ``load_state_dict`` restores them exactly, so an epoch resumed mid-way reports what an
    uninterrupted one would. ``sync(reduce_fn)`` sums the accumulators over data-parallel
    ranks (see :mod:`rnnkit.training.distributed`).
    """

    def __init__(self, names: Sequence[str | torchmetrics.Metric] | None = None,
                 loss_name: str | None = None) -> None:
        if isinstance(names, str) or (names is not None and not isinstance(names, Sequence)):
            names = [names]
        self.loss_name = loss_name
        self._specs: list[tuple[str, str, str]] = []        # (reported name, kind, canonical)
        self._custom: dict[str, torchmetrics.Metric] = {}
        for entry in names or ():
            if not isinstance(entry, str) and _is_torchmetric(entry):
                name = str(getattr(entry, "name", None) or _snake_case(type(entry).__name__))
                kind = ("batch" if getattr(entry, "takes_batch", False)   # e.g. CTCErrorRate
                        else "class" if hasattr(entry, "num_classes") else "regression")
                entry.sync_on_compute = False
                self._custom[name] = entry
                self._specs.append((name, kind, "custom"))
                continue
            if not isinstance(entry, str):
                raise TypeError(f"a metric is a name or a torchmetrics.Metric, got "
                                f"{type(entry).__name__}")
            if entry not in _NAMES:
                raise _unknown_name(entry)
            kind, canonical = _NAMES[entry]
            self._specs.append((entry, kind, canonical))
        reported = [name for name, _, _ in self._specs]
        duplicates = sorted({n for n in reported if reported.count(n) > 1})
        if duplicates:
            raise ValueError(f"metric {duplicates[0]!r} is listed twice")
        if loss_name in _REGRESSION_LOSSES or loss_name in _CLASS_LOSSES:
            wrong = "regression" if loss_name in _CLASS_LOSSES else "class"
            for name, kind, canonical in self._specs:
                if canonical != "custom" and (kind == wrong or (
                        wrong == "class" and kind == "cross_entropy")):
                    needs = ("values (a regression loss such as 'mse')" if kind == "regression"
                             else "class scores (a cross-entropy loss)")
                    raise ValueError(f"metric {name!r} needs {needs}, but the loss is "
                                     f"{loss_name!r}")
        self.num_classes: int | None = None
        self._metrics: dict[str, torchmetrics.Metric] = {}
        self._updates = 0
        self._build_regression()

    # -- construction ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Reported names, in the order given."""
        return [name for name, _, _ in self._specs]

    def _build_regression(self) -> None:
        for name, kind, canonical in self._specs:
            if canonical == "custom":
                self._metrics[name] = self._custom[name]
            elif kind == "regression":
                self._metrics[name] = _make(canonical, 0)

    def _build_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        for name, kind, canonical in self._specs:
            if kind != "regression" and canonical != "custom":
                self._metrics[name] = _make(canonical, num_classes)

    # -- reading a batch ------------------------------------------------------------------------
    @staticmethod
    def _class_view(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counted ``(N, C)`` scores and ``(N,)`` class ids."""
        if output.dim() < 2:
            raise ShapeError(f"classification metrics need scores (B, C) or (B, T, C), got "
                             f"output {tuple(output.shape)} and target {tuple(target.shape)}")
        if output.shape[-1] == 1:            # one binary logit: scores [0, z] -> class 1 iff z > 0
            if target.shape == output.shape:
                target = target.squeeze(-1)
            output = torch.cat([torch.zeros_like(output), output], dim=-1)
        elif target.shape == output.shape and target.is_floating_point():
            target = target.argmax(dim=-1)   # class probabilities / one-hot rows
        if target.is_floating_point():
            if not torch.equal(target, target.round()):
                raise ValueError("classification metrics need integer class ids as targets, "
                                 "got fractional values")
        target = target.long()
        if output.dim() == target.dim() + 1 and output.shape[:-1] == target.shape:
            if mask is not None and mask.shape == target.shape:
                scores, ids = output[mask], target[mask]                 # (N, C), (N,)
            else:
                scores, ids = output.reshape(-1, output.shape[-1]), target.reshape(-1)
        elif output.dim() == 3 and target.dim() == 1 and output.shape[0] == target.shape[0]:
            if mask is not None:
                scores, ids = _last_valid(output, mask), target[mask.any(dim=1)]
            else:
                scores, ids = output[:, -1], target
        else:
            raise ShapeError(f"classification metrics cannot read output {tuple(output.shape)} "
                             f"with target {tuple(target.shape)}: expected (B, C) with (B,), "
                             f"(B, T, C) with (B, T) or (B,)")
        keep = ids != IGNORE_INDEX
        return scores[keep], ids[keep]

    @staticmethod
    def _value_view(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counted values of output and target, both flat ``(N,)``."""
        out, tgt = output, target
        if out.dim() == tgt.dim() + 1 and out.shape[-1] == 1 and out.shape[:-1] == tgt.shape:
            out = out.squeeze(-1)
        elif tgt.dim() == out.dim() + 1 and tgt.shape[-1] == 1 and tgt.shape[:-1] == out.shape:
            tgt = tgt.squeeze(-1)
        if out.shape == tgt.shape:
            if mask is not None and out.dim() >= 2 and out.shape[:2] == mask.shape:
                out, tgt = out[mask], tgt[mask]
        elif out.dim() == 3 and tgt.dim() == 2 and out.shape[0] == tgt.shape[0] \
                and out.shape[2] == tgt.shape[1]:
            keep = mask.any(dim=1) if mask is not None else slice(None)
            out, tgt = _last_valid(out, mask), tgt[keep]
        else:
            raise ShapeError(f"regression metrics cannot compare output {tuple(output.shape)} "
                             f"with target {tuple(target.shape)}: expected equal shapes, or "
                             f"(B, T, D) with a per-sample (B, D)")
        return out.reshape(-1).float(), tgt.reshape(-1).float()

    # -- public API -----------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> None:
        """Add one batch: ``mask`` (True = real step, batch-major ``(B, T)``) drops padding."""
        if not self._specs:
            return
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.detach()
        target = target.detach().to(output.device)
        if mask is not None:
            mask = mask.to(device=output.device, dtype=torch.bool)
        kinds = {kind for _, kind, _ in self._specs}
        classes = None
        if kinds & {"class", "cross_entropy"}:
            if output.dim() < 2:
                raise ShapeError(f"classification metrics need scores (B, C) or (B, T, C), got "
                                 f"output {tuple(output.shape)} and target "
                                 f"{tuple(target.shape)}")
            num_classes = max(2, output.shape[-1])
            if self.num_classes is None:
                self._build_classes(num_classes)
            elif num_classes != self.num_classes:
                raise ShapeError(f"the output has {output.shape[-1]} classes (last dimension "
                                 f"of {tuple(output.shape)}); earlier batches had "
                                 f"{self.num_classes}")
            scores, ids = self._class_view(output, target, mask)
            scores = scores.float()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                raise ValueError(f"target class {bad} is outside 0..{self.num_classes - 1} "
                                 f"(output {tuple(output.shape)} has {self.num_classes} "
                                 f"classes)")
            classes = (scores, ids)
        values = self._value_view(output, target, mask) if "regression" in kinds else None
        for name, kind, _ in self._specs:
            metric = self._metrics[name]
            if metric.device != output.device:
                metric.to(output.device)
            if kind == "batch":          # whole (output, target, mask): decoded sequences
                metric.update(output, target, mask)
                continue
            pair = values if kind == "regression" else classes
            if pair[1].numel():
                metric.update(*pair)
        self._updates += 1

    def compute(self) -> dict[str, float | list]:
        """Each metric over everything since the last reset (NaN before any counted element)."""
        result: dict[str, float | list] = {}
        for name, _, canonical in self._specs:
            metric = self._metrics.get(name)
            if metric is None or metric.update_count == 0:
                result[name] = [] if canonical == "confusion_matrix" else float("nan")
                continue
            value = metric.compute()
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                value = value.tolist() if value.numel() != 1 or canonical == "confusion_matrix" \
                    else float(value)
            result[name] = value
        return result

    def reset(self) -> None:
        """Empty every accumulator (the number of classes stays)."""
        for metric in self._metrics.values():
            metric.reset()
        self._updates = 0

    def sync(self, reduce_fn: Callable[[torch.Tensor], torch.Tensor]) -> Metrics:
        """Replace each accumulator by its sum over ranks: ``reduce_fn(t)`` returns the sum of
        ``t`` over all ranks (every rank must call it, in the same order). Call once, after the
        epoch's last update and before ``compute``."""
        # ranks that saw no classification batch learn the class count from the others
        known = torch.tensor([self.num_classes or 0, 1 if self.num_classes else 0],
                             dtype=torch.int64)
        known = reduce_fn(known)
        if self.num_classes is None and int(known[1]) > 0:
            self._build_classes(int(known[0]) // int(known[1]))
        for name, _, _ in self._specs:
            metric = self._metrics.get(name)
            if metric is None:
                continue
            from torchmetrics.utilities.data import dim_zero_sum

            for state, value in metric.metric_state.items():
                if metric._reductions[state] is not dim_zero_sum or not isinstance(
                        value, torch.Tensor):
                    raise ValueError(f"metric {name!r} keeps state {state!r} that is not a sum; "
                                     f"use torchmetrics' own dist_sync for it")
                setattr(metric, state, reduce_fn(value.clone()).to(value.device, value.dtype))
            counts = reduce_fn(torch.tensor([metric._update_count], dtype=torch.int64))
            metric._update_count = int(counts[0])
            metric._computed = None
        return self

    def state_dict(self) -> dict[str, Any]:
        """Every accumulator as CPU tensors (``torch.load(weights_only=True)``-safe)."""
        metrics = {}
        for name, metric in self._metrics.items():
            states = {}
            for state, value in metric.metric_state.items():
                states[state] = ([v.detach().cpu().clone() for v in value]
                                 if isinstance(value, list) else value.detach().cpu().clone())
            metrics[name] = {"states": states, "update_count": int(metric._update_count)}
        return {"version": _STATE_VERSION, "names": self.names, "num_classes": self.num_classes,
                "updates": self._updates, "metrics": metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s accumulators exactly (the names must match)."""
        if list(state.get("names", [])) != self.names:
            raise ValueError(f"metrics state holds {list(state.get('names', []))}, these "
                             f"metrics are {self.names}")
        if state.get("num_classes") is not None:
            self._build_classes(int(state["num_classes"]))
        self._updates = int(state.get("updates", 0))
        for name, saved in state["metrics"].items():
            metric = self._metrics[name]
            device = metric.device
            for key, value in saved["states"].items():
                if isinstance(value, list):
                    setattr(metric, key, [v.to(device) for v in value])
                else:
                    current = getattr(metric, key)
                    setattr(metric, key, value.to(device=device, dtype=current.dtype).clone())
            metric._update_count = int(saved["update_count"])
            metric._computed = None

    def __repr__(self) -> str:
        return f"Metrics({self.names!r}, loss_name={self.loss_name!r})"


# ----------------------------------------------------------------------------- decoded sequences
# Exact match, token accuracy and BLEU compare *decoded* sequences with references (what a
# seq2seq model writes, not its teacher-forced scores), so they take strings or token lists.

#: the names :class:`SequenceMetrics` accepts
SEQUENCE_METRIC_NAMES: tuple[str, ...] = ("bleu", "exact_match", "token_accuracy")

Tokens = str | Sequence[Any]


def _check_pairs(predictions: Sequence[Tokens], references: Sequence[Tokens]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references are lists of sequences (a list of str, or "
                        "of token lists), not one str")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def exact_match_counts(predictions: Sequence[Tokens],
                       references: Sequence[Tokens]) -> tuple[int, int]:
    """``(sequences equal to their reference, sequences)``."""
    _check_pairs(predictions, references)
    hits = sum(list(p) == list(r) for p, r in zip(predictions, references, strict=True))
    return hits, len(references)


def token_accuracy_counts(predictions: Sequence[Tokens],
                          references: Sequence[Tokens]) -> tuple[int, int]:
    """``(tokens equal to the reference's at the same position, positions)``, where a pair
    counts ``max(len(prediction), len(reference))`` positions: a missing or extra token is
    an error, so only an exact match scores 1 (for strings, a token is a character)."""
    _check_pairs(predictions, references)
    hits = total = 0
    for p, r in zip(predictions, references, strict=True):
        p, r = list(p), list(r)
        hits += sum(a == b for a, b in zip(p, r, strict=False))
        total += max(len(p), len(r))
    return hits, total


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], *,
                tokenize: str = "13a") -> float:
    """sacreBLEU's corpus BLEU (0-100, one reference per prediction), with sacreBLEU's
    tokenizer ``tokenize`` (``"13a"`` for words, ``"char"`` for character-level tasks). Token
    lists are joined with spaces first. Needs the seq2seq extra
    (``pip install rnnkit[seq2seq]``)."""
    _check_pairs(predictions, references)
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("BLEU needs sacrebleu: pip install rnnkit[seq2seq]") from None

    def text(seq: Tokens) -> str:
        return seq if isinstance(seq, str) else " ".join(str(t) for t in seq)

    try:
        bleu = BLEU(tokenize=tokenize)
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"tokenize={tokenize!r} is not a sacrebleu tokenizer: {e}") from None
    return float(bleu.corpus_score([text(p) for p in predictions],
                                   [[text(r) for r in references]]).score)


def _checked_names(kind: str, names: str | Sequence[str], valid: Sequence[str]) -> list[str]:
    """``names`` (one name or several) as a list, each one of ``valid`` and none twice; an
    unknown name is an error suggesting the closest valid one."""
    if isinstance(names, str):
        names = [names]
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {kind} metric {name!r}{hint}; valid names: "
                             f"{', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a metric is listed twice in {list(names)}")
    return list(names)


class SequenceMetrics:
    """Exact match, token accuracy and BLEU over decoded sequences, batch by batch, with the
    conventions of :class:`Metrics`: ``update`` per batch, ``compute`` -> ``{name: value}`` in
    the order given (NaN before any update), ``reset``.

    ``exact_match`` and ``token_accuracy`` are fractions (see :func:`token_accuracy_counts`);
    ``bleu`` is sacreBLEU's corpus BLEU on 0-100 over every sequence seen (``tokenize``:
    sacreBLEU's tokenizer, ``"char"`` for character-level tasks).

    Example:
        >>> metrics = SequenceMetrics(["exact_match", "token_accuracy"])
        >>> metrics.update(["1997-05-03", "596"], ["1997-05-03", "597"])
        >>> metrics.compute()
        {'exact_match': 0.5, 'token_accuracy': 0.9230769230769231}
    """

    def __init__(self, names: Sequence[str] = SEQUENCE_METRIC_NAMES, *,
                 tokenize: str = "13a") -> None:
        self.names = _checked_names("sequence", names, SEQUENCE_METRIC_NAMES)
        self.tokenize = tokenize
        self.reset()

    def reset(self) -> None:
        self._exact = [0, 0]
        self._tokens = [0, 0]
        self._predictions: list[Tokens] = []
        self._references: list[Tokens] = []

    def update(self, predictions: Sequence[Tokens], references: Sequence[Tokens]) -> None:
        for counts, fn in ((self._exact, exact_match_counts),
                           (self._tokens, token_accuracy_counts)):
            hits, total = fn(predictions, references)
            counts[0] += hits
            counts[1] += total
        if "bleu" in self.names:
            self._predictions.extend(predictions)
            self._references.extend(references)

    def compute(self) -> dict[str, float]:
        result = {}
        for name in self.names:
            if self._exact[1] == 0:
                result[name] = float("nan")
            elif name == "exact_match":
                result[name] = self._exact[0] / self._exact[1]
            elif name == "token_accuracy":
                result[name] = self._tokens[0] / self._tokens[1] if self._tokens[1] else 1.0
            else:
                result[name] = corpus_bleu(self._predictions, self._references,
                                           tokenize=self.tokenize)
        return result

    def __repr__(self) -> str:
        return f"SequenceMetrics({self.names!r}, tokenize={self.tokenize!r})"


# ------------------------------------------------------------------------- recognition: CER/SER
# A recognizer's output is judged by edit distance to the reference (Levenshtein: insertions,
# deletions, substitutions), through the `editdistance` package. Sequences are strings or
# sequences of hashable tokens (label ids, words).

#: the names :class:`RecognitionMetrics` accepts
RECOGNITION_METRIC_NAMES: tuple[str, ...] = ("cer", "ser")


def _as_tokens(seq: Any) -> str | list[Any]:
    if isinstance(seq, str):
        return seq
    if isinstance(seq, torch.Tensor):
        return seq.tolist()
    return list(seq)


def edit_distance(prediction: Tokens, reference: Tokens) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that turn
    ``prediction`` into ``reference`` (strings, or sequences of ints / hashable tokens)."""
    import editdistance

    return int(editdistance.eval(_as_tokens(prediction), _as_tokens(reference)))


def edit_distance_counts(predictions: Sequence[Tokens],
                         references: Sequence[Tokens]) -> tuple[int, int]:
    """``(summed edit distance, summed reference length)`` over the pairs."""
    _check_pairs(predictions, references)
    errors = total = 0
    for p, r in zip(predictions, references, strict=True):
        errors += edit_distance(p, r)
        total += len(_as_tokens(r))
    return errors, total


def _rate(errors: int, total: int) -> float:
    # no reference tokens: no error is 0, any inserted token an infinite rate (not NaN)
    return errors / total if total else (0.0 if errors == 0 else math.inf)


def character_error_rate(predictions: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    """CER: summed edit distance over summed reference length (a corpus rate, as torchmetrics'
    ``CharErrorRate``; it can exceed 1 when predictions insert). Each sequence is a string or
    a sequence of label ids.

    Example:
        >>> character_error_rate(["3147", "20"], ["3141", "205"])   # 1 + 1 errors / 7
        0.2857142857142857
    """
    return _rate(*edit_distance_counts(predictions, references))


def sequence_error_rate(predictions: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    """SER: the fraction of sequences that are not exactly their reference (``1 - exact
    match``).

    Example:
        >>> sequence_error_rate([[3, 1, 4], [2, 0]], [[3, 1, 4], [2, 0, 5]])
        0.5
    """
    hits, total = exact_match_counts([_as_tokens(p) for p in predictions],
                                     [_as_tokens(r) for r in references])
    return (total - hits) / total if total else math.nan


class RecognitionMetrics:
    """Character and sequence error rates over decoded sequences, batch by batch (the
    conventions of :class:`SequenceMetrics`): ``update(predictions, references)``,
    ``compute() -> {"cer": ..., "ser": ...}`` (NaN before any update), ``reset()``.

    Example:
        >>> metrics = RecognitionMetrics()
        >>> metrics.update([[3, 1, 4], [2, 0]], [[3, 1, 4], [2, 0, 5]])
        >>> metrics.update(["77"], ["71"])
        >>> {k: round(v, 4) for k, v in metrics.compute().items()}
        {'cer': 0.25, 'ser': 0.6667}
    """

    def __init__(self, names: Sequence[str] = RECOGNITION_METRIC_NAMES) -> None:
        self.names = _checked_names("recognition", names, RECOGNITION_METRIC_NAMES)
        self.reset()

    def reset(self) -> None:
        self._edits = [0, 0]          # edit distance, reference tokens
        self._sequences = [0, 0]      # wrong sequences, sequences

    def update(self, predictions: Sequence[Tokens], references: Sequence[Tokens]) -> None:
        errors, total = edit_distance_counts(predictions, references)
        hits, count = exact_match_counts([_as_tokens(p) for p in predictions],
                                         [_as_tokens(r) for r in references])
        self._edits[0] += errors
        self._edits[1] += total
        self._sequences[0] += count - hits
        self._sequences[1] += count

    def compute(self) -> dict[str, float]:
        if self._sequences[1] == 0:
            return {name: math.nan for name in self.names}
        values = {"cer": _rate(*self._edits), "ser": self._sequences[0] / self._sequences[1]}
        return {name: values[name] for name in self.names}

    def __repr__(self) -> str:
        return f"RecognitionMetrics({self.names!r})"


def _target_sequences(target: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    """Reference label sequences from padded ids ``(B, L)`` (entries < 0 are padding)."""
    if isinstance(target, torch.Tensor):
        if target.dim() != 2 or target.is_floating_point():
            raise ShapeError(f"a CTC target must be padded label ids (B, L) (padding < 0), got "
                             f"{target.dtype} of shape {tuple(target.shape)}")
        return [[v for v in row if v >= 0] for row in target.tolist()]
    return [list(_as_tokens(row)) for row in target]


@functools.cache
def _ctc_error_rate_class() -> type:
    """:class:`CTCErrorRate`, built on first use (torchmetrics is slow to import)."""
    import torchmetrics

    class CTCErrorRate(torchmetrics.Metric):
        """CER or SER of a CTC recognizer's decoded output, as a trainer metric.

        ``update(log_probs (B, T, C), target (B, L), mask (B, T) | None = None, *,
        lengths (B,) | None = None)``: decodes each row's valid steps (``lengths``, else
        ``mask.sum(1)``, else all ``T``) with best-path decoding (or ``decoder(log_probs,
        lengths) -> list[list[int]]``, e.g. a prefix beam search) and compares with the
        target's labels (entries < 0 are padding; a list of sequences works too).
        ``compute()``: the rate over everything since ``reset()`` (sum-reduced states, so
        :meth:`Metrics.sync` and checkpoints keep it exact).

        The trainer's :class:`Metrics` hands it the whole batch (``takes_batch``):
        ``Trainer(..., metrics=[CTCErrorRate("cer"), CTCErrorRate("ser")])``, reported as
        ``cer`` and ``ser``.

        Args:
            what: ``"cer"`` (summed edit distance / reference labels) or ``"ser"``
                (fraction of sequences not exactly right).
            blank: the blank's class index, for best-path decoding.
            decoder: replaces best-path decoding.
            name: the name it is reported under (default: ``what``).
        """

        takes_batch = True
        full_state_update = False
        is_differentiable = False
        higher_is_better = False

        def __init__(self, what: str = "cer", *, blank: int = 0, decoder: Callable[
                [torch.Tensor, torch.Tensor], list[list[int]]] | None = None,
                name: str | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if what not in RECOGNITION_METRIC_NAMES:
                raise ValueError(f"CTCErrorRate: what must be 'cer' or 'ser', got {what!r}")
            self.what = what
            self.blank = blank
            self.decoder = decoder
            self.name = name or what
            self.add_state("errors", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

        def update(self, log_probs: torch.Tensor, target: Any,
                   mask: torch.Tensor | None = None, *,
                   lengths: torch.Tensor | None = None) -> None:
            from rnnkit.models.ctc_decoding import ctc_greedy_decode

            if isinstance(log_probs, (tuple, list)):
                log_probs = log_probs[0]
            if lengths is None and mask is not None:
                if mask.shape != log_probs.shape[:2]:
                    raise ShapeError(f"CTCErrorRate: mask {tuple(mask.shape)} does not match "
                                     f"the (B, T) of log_probs {tuple(log_probs.shape)}")
                lengths = mask.sum(1)
            references = _target_sequences(target)
            if len(references) != log_probs.shape[0]:
                raise ShapeError(f"CTCErrorRate: {len(references)} targets for "
                                 f"{log_probs.shape[0]} rows of log_probs "
                                 f"{tuple(log_probs.shape)}")
            if self.decoder is None:
                decoded = ctc_greedy_decode(log_probs.detach(), lengths, blank=self.blank)
            else:
                decoded = self.decoder(log_probs.detach(), lengths)
            if self.what == "cer":
                errors, total = edit_distance_counts(decoded, references)
            else:
                hits, total = exact_match_counts(decoded, references)
                errors = total - hits
            self.errors += errors
            self.total += total

        def compute(self) -> torch.Tensor:
            errors, total = int(self.errors), int(self.total)
            if self.what == "cer":
                return torch.tensor(_rate(errors, total), dtype=torch.float64)
            return torch.tensor(errors / total if total else math.nan, dtype=torch.float64)

    CTCErrorRate.__module__ = __name__
    return CTCErrorRate
