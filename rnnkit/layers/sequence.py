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
Keras' ``Bidirectional(return_sequences=False)``). Under a Keras ``mask`` with gaps it is
the last valid step (backwards: the first), and zeros for a sequence with no valid step.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.config import Configurable
from rnnkit.engine import dispatch
from rnnkit.engine.autocast import outside_autocast
from rnnkit.engine.plan import Plan
from rnnkit.layers.bidirectional import (
    Bidirectional,
    reads_backwards,
    reset_layer_states,
)
from rnnkit.layers.masking import (
    from_time_major,
    gather_steps,
    last_steps,
    last_valid_steps,
    map_state,
    normalise_with_mask,
)
from rnnkit.layers.recurrence import Recurrence
from rnnkit.layers.state import DriverOutput


class Sequence(Configurable, nn.Module):
    """Wrap a layer (or a cell) to return what Keras' recurrent layers return.

    Args:
        layer: a cell (wrapped in a batch-first :class:`~rnnkit.layers.Recurrence`), a
            ``Recurrence``, a drop-in (``rnnkit.LSTM`` ...), a
            :class:`~rnnkit.layers.Bidirectional`, or any module called as
            ``outputs, state = layer(inputs, state, lengths=lengths)``.
        return_sequences: return every step's output instead of only the last one.
        return_state: also return the final state.
        zero_output_for_mask: only when ``layer`` is a cell (see
            :class:`~rnnkit.layers.Recurrence`): False gives Keras' default outputs at
            masked steps (the last valid output) with ``return_sequences``.

    Call: ``seq(inputs, state=None, lengths=None, mask=None)``; ``mask (B, T)`` is the Keras
    alternative to ``lengths`` (batch-first whatever the layer's ``batch_first``), True at
    the steps to run. A mask that marks a prefix of each row runs as ``lengths``; one with
    gaps (``[T, T, F, T]``) holds the state at masked steps, as Keras does, on the loop
    path. :meth:`reset_states` is Keras' ``reset_state()``.

    Example:
        >>> import torch, rnnkit
        >>> seq = Sequence(rnnkit.LSTM(3, 4, batch_first=True, bidirectional=True),
        ...                return_state=True)
        >>> last, (h_n, c_n) = seq(torch.randn(2, 5, 3), lengths=torch.tensor([5, 3]))
        >>> last.shape, torch.equal(last, torch.cat([h_n[0], h_n[1]], dim=-1))
        (torch.Size([2, 8]), True)
    """

    def __init__(
        self, layer: nn.Module, return_sequences: bool = False, return_state: bool = False,
        zero_output_for_mask: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Sequence: layer must be an nn.Module, got {type(layer).__name__}")
        if hasattr(layer, "state_size") and not isinstance(layer, Recurrence):
            layer = Recurrence(layer, batch_first=True, zero_output_for_mask=zero_output_for_mask)
        self.layer = layer
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.batch_first = bool(getattr(layer, "batch_first", False))

    def reset_states(self, mask: Tensor | None = None) -> None:
        """Forget the wrapped layer's carried state (Keras' ``reset_state()``), or only for
        the sequences where ``mask`` (B,) is True."""
        reset_layer_states("Sequence", [self.layer], mask)

    @outside_autocast
    def forward(
        self,
        inputs: Tensor | PackedSequence,
        state: Any = None,
        lengths: Tensor | SequenceABC[int] | None = None,
        mask: Tensor | None = None,
    ) -> Any:
        padded, lengths, info, gaps = normalise_with_mask(
            "Sequence", inputs, self.batch_first, lengths, mask
        )
        time_steps, batch_size = padded.shape[:2]
        found_last = found_first = None
        if gaps is not None:
            final_steps, found_last = last_valid_steps(gaps)
            first_steps, found_first = last_valid_steps(gaps, reverse=True)
        else:
            final_steps = last_steps(lengths, time_steps, batch_size, padded.device)  # (B,)
            first_steps = last_steps(lengths, time_steps, batch_size, padded.device,
                                     backwards=True)

        def pick(outputs: Tensor, backwards: bool) -> Tensor:
            steps, found = (first_steps, found_first) if backwards else (final_steps, found_last)
            last = gather_steps(outputs, steps)  # (B, H)
            return last if found is None else torch.where(found[:, None], last, 0.0)

        layer = self.layer
        layer_batch_first = bool(getattr(layer, "batch_first", False))
        call_inputs = padded.transpose(0, 1) if layer_batch_first else padded
        if isinstance(layer, Bidirectional):
            # unmerged, so that each direction's own last step can be taken
            (out_f, out_b), final = layer.forward_directions(
                call_inputs, state, lengths=lengths, mask=None if gaps is None else gaps.T)
            if layer_batch_first:
                out_f, out_b = out_f.transpose(0, 1), out_b.transpose(0, 1)  # (T, B, H_out)
            if self.return_sequences:
                outputs = layer.merge(out_f, out_b)
            else:
                last = layer.merge(pick(out_f, False), pick(out_b, True))
        else:
            if gaps is None:
                outputs, final = layer(call_inputs, state, lengths=lengths)
            else:
                outputs, final = layer(call_inputs, state, mask=gaps.T)
            if layer_batch_first:
                outputs = map_state(lambda t: t.transpose(0, 1), outputs)  # (T, B, ...)
            if not self.return_sequences:
                backwards, processing_order = reads_backwards(layer)
                if processing_order:  # realign Keras' go_backwards outputs to time positions
                    outputs = map_state(lambda t: t.flip(0), outputs)
                last = map_state(lambda t: self._last(t, pick, backwards), outputs)
        if self.return_sequences:
            result = map_state(
                lambda t: from_time_major(t, self.batch_first, lengths, info), outputs
            )
        else:
            result = last
        return DriverOutput(result, final) if self.return_state else result

    def execution_plan(self, inputs: Tensor | PackedSequence,
                       lengths: Tensor | SequenceABC[int] | None = None,
                       mask: Tensor | None = None) -> Plan:
        """The wrapped layer's plan for ``self(inputs, lengths=lengths, mask=mask)`` (what
        ``explain`` prints), after the same input checks as the call."""
        padded, lengths, info, gaps = normalise_with_mask(
            "Sequence", inputs, self.batch_first, lengths, mask)
        plan = Plan(dispatch.module_line(self),
                    dispatch.describe_input(padded, lengths, info is not None, gaps),
                    "wrapper", "")
        layer_inputs = padded.transpose(0, 1) if getattr(self.layer, "batch_first", False) else (
            padded)
        plan.parts.append(("wrapped layer", dispatch.part_plan(
            self.layer, layer_inputs, lengths, None if gaps is None else gaps.T)))
        return dispatch.mask_plan_input(plan, mask, gaps)

    def _last(self, outputs: Tensor, pick, backwards: bool) -> Tensor:
        if getattr(self.layer, "bidirectional", False) is True:
            half = outputs.shape[-1] // 2
            return torch.cat([pick(outputs[..., :half], False), pick(outputs[..., half:], True)],
                             dim=-1)
        return pick(outputs, backwards)
