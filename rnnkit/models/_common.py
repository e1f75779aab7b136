"""What the task models share: input checks, the token embedding, the vocabulary in the
config, and many-to-one pooling over valid steps.

Symbols: ``B`` batch, ``T`` time steps, ``F`` input features, ``V`` vocabulary size, ``E``
embedding size, ``H_out`` the backbone's output features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.config import _INIT_ARGUMENTS
from rnnkit.data.text import Vocabulary
from rnnkit.engine.lengths import check_lengths, check_steps
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.layers.masking import gather_steps, lengths_to_mask
from rnnkit.summaries import SummaryMixin

POOLINGS = ("last", "mean", "max")


def record_argument(module: nn.Module, key: str, value: Any) -> None:
    """Replace what the config will hold for constructor argument ``key`` (e.g. a
    :class:`Vocabulary` written as its JSON dict)."""
    arguments = module.__dict__.get(_INIT_ARGUMENTS)
    if arguments is not None:
        arguments[key] = value


def as_vocabulary(owner: str, vocabulary: Any) -> Vocabulary | None:
    """A :class:`Vocabulary`, or the dict ``Vocabulary.to_dict()`` wrote (configs hold it)."""
    if vocabulary is None or isinstance(vocabulary, Vocabulary):
        return vocabulary
    if isinstance(vocabulary, dict):
        if vocabulary.get("format") != "rnnkit.Vocabulary":
            raise ValueError(f"{owner}: vocabulary dict is not an rnnkit vocabulary (no "
                             "'format': 'rnnkit.Vocabulary'); pass Vocabulary.to_dict()")
        missing = [k for k in ("tokens", "level", "lower", "specials") if k not in vocabulary]
        if missing:
            raise ValueError(f"{owner}: vocabulary dict lacks {missing}")
        return Vocabulary(vocabulary["tokens"], level=vocabulary["level"],
                          lower=vocabulary["lower"], specials=vocabulary["specials"])
    raise TypeError(f"{owner}: vocabulary must be an rnnkit.data.Vocabulary or its to_dict(), "
                    f"got {type(vocabulary).__name__}")


def check_names(owner: str, what: str, names: Any, count: int | None) -> list[str] | None:
    """Class or tag names: a list of distinct strings, as many as ``count`` when given."""
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{owner}: {what} must be a list of str, got {names!r}")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: {what} has duplicates: {names}")
    if count is not None and len(names) != count:
        raise ValueError(f"{owner}: {len(names)} {what} for {count} outputs")
    return names


def count_and_names(owner: str, what: str, count: Any, names_what: str, names: Any
                    ) -> tuple[int, list[str] | None]:
    """How many outputs (``what``: classes, tags, values) and their names; the count comes from
    the names when it is not given."""
    if count is None:
        if names is None:
            raise ValueError(f"{owner}: give {what} or {names_what}")
        count = len(names)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {count!r}")
    return count, check_names(owner, names_what, names, count)


def parameter_dtype(module: nn.Module) -> torch.dtype:
    first = next(module.parameters(), None)
    return first.dtype if first is not None else torch.get_default_dtype()


class InputEncoder(nn.Module):
    """Features ``(B, T, F)`` as they are, or token ids ``(B, T)`` through an embedding."""

    def __init__(self, owner: str, input_size: int | None, vocab_size: int | None,
                 embedding_dim: int | None, vocabulary: Vocabulary | None,
                 default_embedding: int) -> None:
        super().__init__()
        self.owner = owner
        if vocabulary is not None:
            if vocab_size is not None and vocab_size != len(vocabulary):
                raise ValueError(f"{owner}: vocab_size={vocab_size} but the vocabulary holds "
                                 f"{len(vocabulary)} tokens; leave vocab_size out")
            vocab_size = len(vocabulary)
        if (input_size is None) == (vocab_size is None):
            raise ValueError(
                f"{owner}: give input_size (features per step, inputs (B, T, F) float) or "
                "vocab_size / vocabulary (token ids (B, T) int64), exactly one of them"
            )
        self.vocabulary = vocabulary
        if vocab_size is not None:
            _positive(owner, "vocab_size", vocab_size)
            embedding_dim = default_embedding if embedding_dim is None else embedding_dim
            _positive(owner, "embedding_dim", embedding_dim)
            padding = vocabulary.pad_id if vocabulary is not None else None
            self.embedding: nn.Embedding | None = nn.Embedding(vocab_size, embedding_dim,
                                                               padding_idx=padding)
            self.vocab_size: int | None = vocab_size
            self.features = embedding_dim
        else:
            if embedding_dim is not None:
                raise ValueError(f"{owner}: embedding_dim needs token inputs (vocab_size or "
                                 "vocabulary); float features go in as they are")
            _positive(owner, "input_size", input_size)
            self.embedding = None
            self.vocab_size = None
            self.features = int(input_size)  # type: ignore[arg-type]

    def check(self, x: Any, lengths: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Validate ``x`` and ``lengths``; ``lengths`` comes back int64 ``(B,)`` or None."""
        owner = self.owner
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
        if self.embedding is not None:
            if x.dim() != 2:
                raise ShapeError(
                    f"{owner}: x must be token ids (B, T), got shape {tuple(x.shape)}"
                    + (" (a single sequence? add a batch axis: x.unsqueeze(0))"
                       if x.dim() == 1 else "")
                )
            if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
                raise DTypeError(f"{owner}: token ids must be integers (int64), got {x.dtype}")
            if x.numel() and not torch.compiler.is_exporting():  # values unknown to export
                low, high = int(x.min()), int(x.max())
                if low < 0 or high >= self.vocab_size:  # type: ignore[operator]
                    bad = low if low < 0 else high
                    raise ValueError(f"{owner}: token id {bad} is outside the vocabulary "
                                     f"[0, {self.vocab_size})")
            x = x.long()
        else:
            if x.dim() != 3:
                hint = ""
                if x.dim() == 2 and self.features == 1:
                    hint = " (one feature per step? add it: x.unsqueeze(-1))"
                elif x.dim() == 2:
                    hint = " (a single sequence? add a batch axis: x.unsqueeze(0))"
                raise ShapeError(f"{owner}: x must be (B, T, F) with F = {self.features}, got "
                                 f"shape {tuple(x.shape)}{hint}")
            if x.shape[-1] != self.features:
                raise ShapeError(f"{owner}: x has {x.shape[-1]} features per step but the "
                                 f"model was built with input_size={self.features}")
            if not x.is_floating_point():
                raise DTypeError(
                    f"{owner}: x must be floating point, got {x.dtype} (token ids need a "
                    "model built with vocab_size or vocabulary)"
                )
            if x.dtype != dtype:
                raise DTypeError(f"{owner}: x is {x.dtype} but the model's parameters are "
                                 f"{dtype}; convert one of them (x.to({dtype}) or "
                                 f"model.to({x.dtype}))")
        batch, steps = x.shape[0], x.shape[1]
        check_steps(steps, f"{owner}: x")
        if lengths is not None:
            try:
                lengths = check_lengths(lengths, batch, steps, x.device)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{owner}: {error}") from None
        return x, lengths

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is None:
            return x  # (B, T, F)
        return self.embedding(x)  # (B, T, E)


def _positive(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_pooling(owner: str, pooling: Any) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"{owner}: pooling must be one of {', '.join(POOLINGS)}, got "
                         f"{pooling!r}")
    return pooling


def pool(outputs: Tensor, lengths: Tensor | None, pooling: str, bidirectional: bool) -> Tensor:
    """``outputs (B, T, H_out)`` -> ``(B, H_out)`` over each sequence's valid steps.

    ``"last"``: the step each direction processes last, ``lengths - 1`` forwards and step 0
    backwards (the halves of a bidirectional output, as Keras' ``Bidirectional``);
    ``"mean"``/``"max"``: over the valid steps only.
    """
    batch, steps = outputs.shape[:2]
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.int64, device=outputs.device)
    lengths = lengths.to(outputs.device)
    if pooling == "last":
        last = gather_steps(outputs.transpose(0, 1), lengths - 1)  # (B, H_out)
        if bidirectional:
            half = outputs.shape[-1] // 2
            last = torch.cat([last[:, :half], outputs[:, 0, half:]], dim=-1)  # (B, H_out)
        return last
    valid = lengths_to_mask(lengths, steps, batch_first=True).unsqueeze(-1)  # (B, T, 1)
    if pooling == "mean":
        total = (outputs * valid).sum(dim=1)  # (B, H_out)
        return total / lengths.unsqueeze(-1).to(outputs.dtype)
    return outputs.masked_fill(~valid, float("-inf")).amax(dim=1)  # (B, H_out)


class SequenceModelBase(SummaryMixin, nn.Module):
    """Input encoder + :class:`~rnnkit.models.backbone.Backbone` + dropout, shared by the
    classifier, regressor and tagger; subclasses add their head."""

    def example_input(self, batch_size: int = 2, steps: int = 8) -> Tensor:
        """A batch for :meth:`summary`: random features ``(B, T, F)`` or token ids ``(B, T)``."""
        device = next(self.parameters()).device
        if self.encoder.embedding is not None:
            return torch.randint(0, self.encoder.vocab_size, (batch_size, steps),  # type: ignore[arg-type]
                                 device=device)
        return torch.randn(batch_size, steps, self.encoder.features, device=device,
                           dtype=parameter_dtype(self))

    def _build(
        self, *, input_size: int | None, hidden_size: int | None, cell: Any, num_layers: int,
        bidirectional: bool, dropout: float, cell_options: dict[str, Any] | None,
        vocab_size: int | None, embedding_dim: int | None, vocabulary: Any,
    ) -> None:
        from rnnkit.models.backbone import Backbone

        owner = type(self).__name__
        vocab = as_vocabulary(owner, vocabulary)
        if vocab is not None:
            record_argument(self, "vocabulary", vocab.to_dict())
        self.encoder = InputEncoder(owner, input_size, vocab_size, embedding_dim, vocab,
                                    default_embedding=hidden_size or 64)
        self.backbone = Backbone(self.encoder.features, hidden_size, cell, num_layers,
                                 bidirectional, dropout, cell_options)
        self.drop = nn.Dropout(self.backbone.dropout)

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The :class:`~rnnkit.data.Vocabulary` the model was built with, if any."""
        return self.encoder.vocabulary

    def _features(self, x: Any, lengths: Any) -> tuple[Tensor, Tensor | None]:
        """Checked inputs through the encoder, backbone and dropout: ``(B, T, H_out)``."""
        x, lengths = self.encoder.check(x, lengths, parameter_dtype(self))
        outputs, _ = self.backbone(self.encoder(x), lengths=lengths)  # (B, T, H_out)
        return self.drop(outputs), lengths
