"""Many-to-many tagging: one label per step (part-of-speech tags, per-frame activity,
named entities).

Symbols: ``B`` batch, ``T`` time steps, ``F`` features per step, ``C`` tags.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.layers.masking import lengths_to_mask
from rnnkit.models._common import SequenceModelBase, count_and_names

__all__ = ["SequenceTagger"]


class SequenceTagger(Configurable, SequenceModelBase):
    """Recurrent backbone (bidirectional is the usual choice) and a linear layer at every
    step to ``C`` tag logits.

    Args:
        input_size: ``F`` (or ``vocab_size`` / ``vocabulary`` for token ids).
        num_tags: ``C`` (or ``len(tag_names)``).
        tag_names: optional names, kept in the config (``predict_names``).
        hidden_size, cell, num_layers, bidirectional, dropout, cell_options, vocab_size,
            embedding_dim, vocabulary: as :class:`~rnnkit.models.SequenceClassifier`.

    Call: ``logits = model(x, lengths=None)``, ``(B, T, C)``; the logits at padded steps
    (``t >= lengths[b]``) are zero and those at valid steps never depend on the padding.

    Example:
        >>> import torch
        >>> model = SequenceTagger(vocab_size=100, num_tags=5, bidirectional=True)
        >>> ids = torch.randint(2, 100, (3, 9))
        >>> model(ids, lengths=torch.tensor([9, 4, 6])).shape
        torch.Size([3, 9, 5])
    """

    def __init__(
        self,
        input_size: int | None = None,
        num_tags: int | None = None,
        *,
        tag_names: list[str] | None = None,
        hidden_size: int | None = None,
        cell: str | nn.Module = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        cell_options: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        embedding_dim: int | None = None,
        vocabulary: Any = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_tags, self.tag_names = count_and_names(owner, "num_tags", num_tags,
                                                        "tag_names", tag_names)
        self._build(input_size=input_size, hidden_size=hidden_size, cell=cell,
                    num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                    cell_options=cell_options, vocab_size=vocab_size,
                    embedding_dim=embedding_dim, vocabulary=vocabulary)
        self.head = nn.Linear(self.backbone.output_size, self.num_tags)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``x (B, T, F)`` (or ids ``(B, T)``) -> tag logits ``(B, T, C)``."""
        outputs, lengths = self._features(x, lengths)  # (B, T, H_out)
        logits = self.head(outputs)  # (B, T, C)
        if lengths is not None:
            valid = lengths_to_mask(lengths.to(logits.device), logits.shape[1],
                                    batch_first=True)  # (B, T)
            logits = logits * valid.unsqueeze(-1).to(logits.dtype)
        return logits

    @torch.no_grad()
    def predict(self, x: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
        """The most likely tag id at each valid step, one list per sequence."""
        tags = self(x, lengths).argmax(dim=-1)  # (B, T)
        steps = [tags.shape[1]] * tags.shape[0] if lengths is None else lengths.tolist()
        return [row[:n] for row, n in zip(tags.tolist(), steps, strict=True)]

    def predict_names(self, x: Tensor, lengths: Tensor | None = None) -> list[list[str]]:
        """The most likely tag name at each valid step (needs ``tag_names``)."""
        if self.tag_names is None:
            raise ValueError(f"{type(self).__name__}: the model has no tag_names; use "
                             "predict() for tag ids")
        return [[self.tag_names[i] for i in row] for row in self.predict(x, lengths)]
