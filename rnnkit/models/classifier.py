"""Many-to-one classification: a sequence in, one label out (the seed's images read row by
row, sentiment of a sentence, activity from a sensor trace).

Symbols: ``B`` batch, ``T`` time steps, ``F`` features per step, ``C`` classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.models._common import SequenceModelBase, check_pooling, count_and_names, pool

__all__ = ["SequenceClassifier"]


class SequenceClassifier(Configurable, SequenceModelBase):
    """Recurrent backbone, one summary per sequence, a linear layer to ``C`` class logits.

    .. math:: \\text{logits} = W\\,\\mathrm{pool}(\\mathrm{rnn}(x_1 \\dots x_L)) + b

    Args:
        input_size: ``F``, features per step of float inputs ``(B, T, F)``; or leave it out
            and give ``vocab_size`` / ``vocabulary`` for token ids ``(B, T)``.
        num_classes: ``C`` (or ``len(class_names)``).
        class_names: optional names, kept in the config (``predict_names``).
        hidden_size, cell, num_layers, bidirectional, cell_options: the recurrent stack (see
            :class:`~rnnkit.models.backbone.Backbone`).
        dropout: between stacked layers and on the recurrent outputs before the head.
        pooling: ``"last"`` (each sequence's last valid step; step 0 for the backward half),
            ``"mean"`` or ``"max"`` over the valid steps.
        vocab_size, embedding_dim, vocabulary: token inputs through an embedding
            (``embedding_dim`` defaults to the hidden size); a
            :class:`~rnnkit.data.Vocabulary` is kept in the config.

    Call: ``logits = model(x, lengths=None)``, ``(B, C)``; padding beyond ``lengths`` never
    changes them.

    Example:
        >>> import torch
        >>> model = SequenceClassifier(28, 10, hidden_size=32)     # MNIST read row by row
        >>> model(torch.randn(4, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        input_size: int | None = None,
        num_classes: int | None = None,
        *,
        class_names: list[str] | None = None,
        hidden_size: int | None = None,
        cell: str | nn.Module = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pooling: str = "last",
        cell_options: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        embedding_dim: int | None = None,
        vocabulary: Any = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_classes, self.class_names = count_and_names(
            owner, "num_classes", num_classes, "class_names", class_names)
        self.pooling = check_pooling(owner, pooling)
        self._build(input_size=input_size, hidden_size=hidden_size, cell=cell,
                    num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                    cell_options=cell_options, vocab_size=vocab_size,
                    embedding_dim=embedding_dim, vocabulary=vocabulary)
        self.head = nn.Linear(self.backbone.output_size, self.num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``x (B, T, F)`` (or ids ``(B, T)``) -> class logits ``(B, C)``."""
        outputs, lengths = self._features(x, lengths)  # (B, T, H_out)
        summary = pool(outputs, lengths, self.pooling, self.backbone.bidirectional)  # (B, H_out)
        return self.head(summary)  # (B, C)

    @torch.no_grad()
    def predict_proba(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, C)`` (softmax of the logits), without gradients."""
        return torch.softmax(self(x, lengths), dim=-1)

    @torch.no_grad()
    def predict(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The most likely class id per sequence, ``(B,)`` int64."""
        return self(x, lengths).argmax(dim=-1)

    def predict_names(self, x: Tensor, lengths: Tensor | None = None) -> list[str]:
        """The most likely class name per sequence (needs ``class_names``)."""
        if self.class_names is None:
            raise ValueError(f"{type(self).__name__}: the model has no class_names; use "
                             "predict() for class ids")
        return [self.class_names[i] for i in self.predict(x, lengths).tolist()]
