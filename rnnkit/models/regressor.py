"""Many-to-one regression: a sequence in, ``D`` numbers out (a sensor trace's remaining
life, a series' next value).

Symbols: ``B`` batch, ``T`` time steps, ``F`` features per step, ``D`` outputs.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.models._common import SequenceModelBase, check_pooling, count_and_names, pool

__all__ = ["SequenceRegressor"]


class SequenceRegressor(Configurable, SequenceModelBase):
    """Recurrent backbone, one summary per sequence, a linear layer to ``D`` outputs.

    Args:
        input_size: ``F`` (or ``vocab_size`` / ``vocabulary`` for token ids).
        output_size: ``D``, numbers per sequence.
        output_names: optional names of the ``D`` outputs, kept in the config.
        hidden_size, cell, num_layers, bidirectional, dropout, pooling, cell_options,
            vocab_size, embedding_dim, vocabulary: as :class:`SequenceClassifier`.

    Call: ``y = model(x, lengths=None)``, ``(B, D)``.

    Example:
        >>> import torch
        >>> model = SequenceRegressor(3, 2, cell="gru", hidden_size=8, pooling="mean")
        >>> model(torch.randn(5, 7, 3), lengths=torch.tensor([7, 7, 3, 1, 2])).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        input_size: int | None = None,
        output_size: int = 1,
        *,
        output_names: list[str] | None = None,
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
        self.output_size, self.output_names = count_and_names(
            owner, "output_size", output_size, "output_names", output_names)
        self.pooling = check_pooling(owner, pooling)
        self._build(input_size=input_size, hidden_size=hidden_size, cell=cell,
                    num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                    cell_options=cell_options, vocab_size=vocab_size,
                    embedding_dim=embedding_dim, vocabulary=vocabulary)
        self.head = nn.Linear(self.backbone.output_size, self.output_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``x (B, T, F)`` (or ids ``(B, T)``) -> ``(B, D)``."""
        outputs, lengths = self._features(x, lengths)  # (B, T, H_out)
        summary = pool(outputs, lengths, self.pooling, self.backbone.bidirectional)  # (B, H_out)
        return self.head(summary)  # (B, D)
