"""Bidirectional wrapper for any layer or cell (Keras ``Bidirectional``).

One copy of the layer reads each sequence forwards, a second copy reads it backwards from
its own last valid step (never from the padding), and their outputs are merged step by step:

.. math::

    \\overrightarrow{o}_t = \\overrightarrow{f}(x_1 \\dots x_t), \\qquad
    \\overleftarrow{o}_t = \\overleftarrow{f}(x_L \\dots x_t), \\qquad
    o_t = \\mathrm{merge}(\\overrightarrow{o}_t, \\overleftarrow{o}_t)

with ``merge`` one of concat, sum, mul, ave, or None (both returned).

Symbols: ``T`` time steps, ``B`` batch, ``H_out`` the wrapped layer's output features.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.config import Configurable
from rnnkit.layers.masking import from_time_major, map_state, reverse_padded, to_time_major
from rnnkit.layers.recurrence import Recurrence

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _reinitialise(module: nn.Module) -> None:
    """Give a copied layer fresh parameters, as Keras builds the backward layer anew."""
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()


def _is_cell(module: nn.Module) -> bool:
    return hasattr(module, "state_size") and not isinstance(module, Recurrence)


class Bidirectional(Configurable, nn.Module):
    """Run a layer forwards and a copy of it backwards, and merge their outputs.

    Args:
        layer: a cell (wrapped in :class:`~rnnkit.layers.Recurrence`), a ``Recurrence``, a
            unidirectional drop-in (``rnnkit.LSTM`` ...), or any module called as
            ``outputs, state = layer(inputs, state, lengths=lengths)``.
        merge_mode: ``"concat"`` (features ``2*H_out``), ``"sum"``, ``"mul"``, ``"ave"`` or
            None (return both output sequences).
        backward_layer: the layer for the backward direction; by default a copy of
            ``layer`` with freshly drawn parameters.
        batch_first: only when ``layer`` is a cell; otherwise the layer's own setting is used.

    Call: ``outputs, (state_forward, state_backward) = bi(inputs, state=None, lengths=None)``,
    ``state`` being None or such a pair. Under ``lengths`` both final states are right: the
    forward one at each sequence's last step, the backward one at step 0, having started
    at each sequence's own last valid step.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> bi = Bidirectional(GRUCell(3, 4), merge_mode="concat", batch_first=True)
        >>> out, (h_f, h_b) = bi(torch.randn(2, 5, 3), lengths=torch.tensor([5, 2]))
        >>> out.shape, torch.equal(out[1, 0, 4:], h_b[1]), torch.equal(out[1, 1, :4], h_f[1])
        (torch.Size([2, 5, 8]), True, True)
    """

    def __init__(
        self,
        layer: nn.Module,
        merge_mode: str | None = "concat",
        backward_layer: nn.Module | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if merge_mode not in MERGE_MODES:
            raise ValueError(
                f"Bidirectional: merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}"
            )
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Bidirectional: layer must be an nn.Module, got {type(layer)}")
        if getattr(layer, "bidirectional", False) is True:
            raise ValueError(
                "Bidirectional: the layer is already bidirectional (bidirectional=True)"
            )
        if getattr(layer, "go_backwards", False):
            raise ValueError("Bidirectional: pass the forward layer (go_backwards=False)")
        self.merge_mode = merge_mode
        if _is_cell(layer):
            layer = Recurrence(layer, batch_first=batch_first)
            if backward_layer is not None and _is_cell(backward_layer):
                backward_layer = Recurrence(backward_layer, batch_first=batch_first)
        if backward_layer is None:
            backward_layer = copy.deepcopy(layer)
            _reinitialise(backward_layer)
            if isinstance(backward_layer, Recurrence):
                backward_layer.go_backwards = True
        elif isinstance(backward_layer, Recurrence) and not backward_layer.go_backwards:
            backward_layer = copy.copy(backward_layer)
            backward_layer.go_backwards = True
        self.forward_layer = layer
        self.backward_layer = backward_layer
        self.batch_first = bool(getattr(layer, "batch_first", False))

    def _call(self, layer: nn.Module, inputs: Tensor, state: Any, lengths: Tensor | None):
        """Call ``layer`` on time-major ``inputs`` in its own layout; time-major outputs."""
        layer_batch_first = bool(getattr(layer, "batch_first", False))
        if layer_batch_first:
            inputs = inputs.transpose(0, 1)
        outputs, final = layer(inputs, state, lengths=lengths)
        if layer_batch_first:
            outputs = map_state(lambda t: t.transpose(0, 1), outputs)
        return outputs, final

    def run(
        self, inputs: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor, Any, Any]:
        """Time-major core: ``(out_forward, out_backward (T, B, H_out), final_f, final_b)``."""
        state_f, state_b = (None, None) if state is None else state
        out_f, final_f = self._call(self.forward_layer, inputs, state_f, lengths)
        backward = self.backward_layer
        if isinstance(backward, Recurrence) and backward.go_backwards:
            out_b, final_b = self._call(backward, inputs, state_b, lengths)
        else:
            # Reverse each sequence within its length, run forwards, reverse back.
            reversed_inputs = reverse_padded(inputs, lengths)  # (T, B, H_in)
            out_b, final_b = self._call(backward, reversed_inputs, state_b, lengths)
            out_b = map_state(lambda t: reverse_padded(t, lengths), out_b)
        return out_f, out_b, final_f, final_b

    def merge(self, out_f: Tensor, out_b: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Combine the two directions' outputs feature-wise according to ``merge_mode``."""
        if self.merge_mode == "concat":
            return torch.cat([out_f, out_b], dim=-1)
        if self.merge_mode == "sum":
            return out_f + out_b
        if self.merge_mode == "mul":
            return out_f * out_b
        if self.merge_mode == "ave":
            return (out_f + out_b) / 2
        return out_f, out_b

    def forward(
        self,
        inputs: Tensor | PackedSequence,
        state: Any = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Any, tuple[Any, Any]]:
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ValueError(
                "Bidirectional: state must be None or a pair (state_forward, state_backward)"
            )
        padded, lengths, info = to_time_major(
            inputs, self.batch_first, lengths, name="Bidirectional input"
        )
        out_f, out_b, final_f, final_b = self.run(padded, state, lengths)
        merged = self.merge(out_f, out_b)
        merged = map_state(lambda t: from_time_major(t, self.batch_first, lengths, info), merged)
        return merged, (final_f, final_b)
