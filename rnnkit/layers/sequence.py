"""Keras-style ``return_sequences`` / ``return_state`` on top of any rnnkit layer.

``Sequence(layer, return_sequences=False, return_state=False)`` answers what a Keras
``LSTM(units, return_sequences=..., return_state=...)`` returns:

================  ==============  =========================================
return_sequences  return_state    result
================  ==============  =========================================
False             False           ``last_output`` ``(B, H_out)``
True              False           ``outputs`` ``(B, T, H_out)`` (layer layout)
any               True            ``(result, final_state)``
================  ==============  =========================================

The last output is taken at each sequence's own last processed step: step
``lengths[b] - 1`` for a forward layer, step 0 for a backward one, and for bidirectional
layers the forward half at ``lengths[b] - 1`` merged with the backward half at step 0 (as
Keras' ``Bidirectional(return_sequences=False)``).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.config import Configurable
from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.masking import (
    check_lengths,
    from_time_major,
    gather_steps,
    lengths_to_mask,
    map_state,
    to_time_major,
)
from rnnkit.layers.recurrence import Recurrence


class Sequence(Configurable, nn.Module):
    """Wrap a layer (or a cell) to return what Keras' recurrent layers return.

    Args:
        layer: a cell (wrapped in a batch-first :class:`~rnnkit.layers.Recurrence`), a
            ``Recurrence``, a drop-in (``rnnkit.LSTM`` ...), a
            :class:`~rnnkit.layers.Bidirectional`, or any module called as
            ``outputs, state = layer(inputs, state, lengths=lengths)``.
        return_sequences: return every step's output instead of only the last one.
        return_state: also return the final state.

    Call: ``seq(inputs, state=None, lengths=None, mask=None)``; ``mask (B, T)`` is the Keras
    alternative to ``lengths``: True at valid steps, which must come first in each row.

    Example:
        >>> import torch, rnnkit
        >>> seq = Sequence(rnnkit.LSTM(3, 4, batch_first=True, bidirectional=True),
        ...                return_state=True)
        >>> last, (h_n, c_n) = seq(torch.randn(2, 5, 3), lengths=torch.tensor([5, 3]))
        >>> last.shape, torch.equal(last, torch.cat([h_n[0], h_n[1]], dim=-1))
        (torch.Size([2, 8]), True)
    """

    def __init__(
        self, layer: nn.Module, return_sequences: bool = False, return_state: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Sequence: layer must be an nn.Module, got {type(layer).__name__}")
        if hasattr(layer, "state_size") and not isinstance(layer, Recurrence):
            layer = Recurrence(layer, batch_first=True)
        self.layer = layer
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.batch_first = bool(getattr(layer, "batch_first", False))

    def forward(
        self,
        inputs: Tensor | PackedSequence,
        state: Any = None,
        lengths: Tensor | SequenceABC[int] | None = None,
        mask: Tensor | None = None,
    ) -> Any:
        if mask is not None:
            if lengths is not None:
                raise ValueError("Sequence: pass either lengths= or mask=, not both")
            lengths = self._mask_to_lengths(mask)
        padded, lengths, info = to_time_major(
            inputs, self.batch_first, lengths, name="Sequence input"
        )
        batch_size, time_steps = padded.shape[1], padded.shape[0]
        last_steps = (
            lengths - 1
            if lengths is not None
            else torch.full((batch_size,), time_steps - 1, device=padded.device)
        )
        first_steps = torch.zeros_like(last_steps)
        layer = self.layer
        if isinstance(layer, Bidirectional):
            out_f, out_b, final_f, final_b = layer.run(padded, state, lengths)
            final = (final_f, final_b)
            if self.return_sequences:
                outputs = layer.merge(out_f, out_b)
            else:
                last = layer.merge(
                    gather_steps(out_f, last_steps), gather_steps(out_b, first_steps)
                )
        else:
            layer_batch_first = bool(getattr(layer, "batch_first", False))
            call_inputs = padded.transpose(0, 1) if layer_batch_first else padded
            outputs, final = layer(call_inputs, state, lengths=lengths)
            if layer_batch_first:
                outputs = map_state(lambda t: t.transpose(0, 1), outputs)  # (T, B, ...)
            if not self.return_sequences:
                last = map_state(lambda t: self._last(t, last_steps, first_steps), outputs)
        if self.return_sequences:
            result = map_state(
                lambda t: from_time_major(t, self.batch_first, lengths, info), outputs
            )
        else:
            result = last
        return (result, final) if self.return_state else result

    def _last(self, outputs: Tensor, last_steps: Tensor, first_steps: Tensor) -> Tensor:
        layer = self.layer
        if getattr(layer, "bidirectional", False) is True:
            half = outputs.shape[-1] // 2
            return torch.cat(
                [
                    gather_steps(outputs[..., :half], last_steps),
                    gather_steps(outputs[..., half:], first_steps),
                ],
                dim=-1,
            )
        if getattr(layer, "go_backwards", False):
            return gather_steps(outputs, first_steps)
        return gather_steps(outputs, last_steps)

    @staticmethod
    def _mask_to_lengths(mask: Tensor) -> Tensor:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError("Sequence: mask must be a bool tensor of shape (batch, time)")
        lengths = mask.sum(dim=1)
        expected = lengths_to_mask(lengths, mask.shape[1], batch_first=True)
        if not torch.equal(expected, mask):
            raise ValueError(
                "Sequence: mask must mark a prefix of each row (valid steps first, then "
                "padding); masks with holes are not supported"
            )
        check_lengths(lengths, mask.shape[0], mask.shape[1])
        return lengths
