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
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.config import Configurable
from rnnkit.engine import dispatch
from rnnkit.engine.autocast import outside_autocast
from rnnkit.engine.plan import Plan
from rnnkit.layers.masking import (
    from_time_major,
    map_state,
    normalise_with_mask,
    reverse_padded,
)
from rnnkit.layers.recurrence import Recurrence
from rnnkit.layers.state import DriverOutput

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _reinitialise(module: nn.Module) -> None:
    """Give a copied layer fresh parameters, as Keras builds the backward layer anew."""
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()


def _is_cell(module: nn.Module) -> bool:
    return hasattr(module, "state_size") and not isinstance(module, Recurrence)


def reads_backwards(layer: nn.Module) -> tuple[bool, bool]:
    """``(backwards, processing_order)`` for a layer: whether it reads each sequence from
    its end, and whether it then returns its outputs reversed in time (Keras'
    ``go_backwards``: a ``Recurrence`` with ``output_order="processing"`` or a drop-in with
    ``go_backwards=True``) rather than at their original positions."""
    if isinstance(layer, Recurrence):
        return layer.go_backwards, layer.processing_order
    backwards = getattr(layer, "go_backwards", False) is True
    return backwards, backwards


def reset_layer_states(owner: str, layers: Sequence[nn.Module], mask: Tensor | None) -> None:
    """Call ``reset_states(mask)`` on every layer that carries state."""
    found = False
    for layer in layers:
        reset = getattr(layer, "reset_states", None)
        if callable(reset):
            reset(mask)
            found = True
    if not found:
        names = ", ".join(type(layer).__name__ for layer in layers)
        raise TypeError(f"{owner}.reset_states: the wrapped layer(s) ({names}) have no "
                        "reset_states(); only stateful-capable rnnkit layers carry state")


def _check_recurrent(role: str, module: nn.Module) -> None:
    """A cell, or a layer called as ``layer(inputs, state, lengths=...)``."""
    if _is_cell(module) or isinstance(module, Recurrence):
        return
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # no signature to read: trust the caller
        return
    if "lengths" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    raise TypeError(
        f"Bidirectional: {role} {type(module).__name__} is neither a cell (no state_size) nor "
        f"a recurrent layer called as layer(inputs, state, lengths=...); wrap a cell, a "
        f"Recurrence or a drop-in such as rnnkit.LSTM"
    )


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
        zero_output_for_mask: only when ``layer`` is a cell (see
            :class:`~rnnkit.layers.Recurrence`); False gives Keras' outputs at masked steps.

    Call: ``outputs, (state_forward, state_backward) = bi(inputs, state=None, lengths=None,
    mask=None)``, ``state`` being None or such a pair. Under ``lengths`` both final states
    are right: the forward one at each sequence's last step, the backward one at step 0,
    having started at each sequence's own last valid step. ``mask`` is Keras' bool ``(B, T)``
    and may have gaps (both directions skip the masked steps). A backward layer that returns
    its outputs in processing order (Keras' ``go_backwards``) is realigned, as Keras' own
    ``Bidirectional`` does. :meth:`reset_states` resets both directions.

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
        zero_output_for_mask: bool = True,
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
        for role, module in (("layer", layer), ("backward_layer", backward_layer)):
            if module is not None:
                _check_recurrent(role, module)
        if _is_cell(layer):
            layer = Recurrence(layer, batch_first=batch_first,
                               zero_output_for_mask=zero_output_for_mask)
            if backward_layer is not None and _is_cell(backward_layer):
                backward_layer = Recurrence(backward_layer, batch_first=batch_first,
                                            zero_output_for_mask=zero_output_for_mask)
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

    def reset_states(self, mask: Tensor | None = None) -> None:
        """Forget both directions' carried states (stateful layers; Keras' ``reset_state()``),
        or only for the sequences where ``mask`` (B,) is True."""
        reset_layer_states("Bidirectional", [self.forward_layer, self.backward_layer], mask)

    def _call(self, layer: nn.Module, inputs: Tensor, state: Any, lengths: Tensor | None,
              mask: Tensor | None = None):
        """Call ``layer`` on time-major ``inputs`` in its own layout; time-major outputs.

        ``mask`` is time-major ``(T, B)``; the layer gets it in Keras' ``(B, T)``.
        """
        layer_batch_first = bool(getattr(layer, "batch_first", False))
        if layer_batch_first:
            inputs = inputs.transpose(0, 1)
        if mask is None:
            outputs, final = layer(inputs, state, lengths=lengths)
        else:
            outputs, final = layer(inputs, state, mask=mask.T)
        if layer_batch_first:
            outputs = map_state(lambda t: t.transpose(0, 1), outputs)
        return outputs, final

    def _run(
        self, inputs: Tensor, state: Any, lengths: Tensor | None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Any, Any]:
        """Time-major core: ``(out_forward, out_backward (T, B, H_out), final_f, final_b)``.

        ``mask`` is a time-major ``(T, B)`` mask with gaps (exclusive with ``lengths``).
        """
        state_f, state_b = (None, None) if state is None else state
        out_f, final_f = self._call(self.forward_layer, inputs, state_f, lengths, mask)
        backward = self.backward_layer
        backwards, processing_order = reads_backwards(backward)
        if backwards:
            out_b, final_b = self._call(backward, inputs, state_b, lengths, mask)
            if processing_order:  # Keras' go_backwards form: realign to time positions
                out_b = map_state(lambda t: t.flip(0), out_b)
        elif mask is not None:
            # Reverse the whole padded sequence and its mask (masked steps hold the state,
            # so they need no special place), run forwards, reverse back.
            out_b, final_b = self._call(backward, inputs.flip(0), state_b, None, mask.flip(0))
            out_b = map_state(lambda t: t.flip(0), out_b)
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
        if self.merge_mode is not None and out_f.shape[-1] != out_b.shape[-1]:
            raise ValueError(
                f"Bidirectional: merge_mode={self.merge_mode!r} combines the two directions "
                f"element by element and needs outputs of the same size, got "
                f"{out_f.shape[-1]} (forward) and {out_b.shape[-1]} (backward)"
            )
        if self.merge_mode == "sum":
            return out_f + out_b
        if self.merge_mode == "mul":
            return out_f * out_b
        if self.merge_mode == "ave":
            return (out_f + out_b) / 2
        return out_f, out_b

    def execution_plan(self, inputs: Tensor | PackedSequence,
                       lengths: Tensor | Sequence[int] | None = None,
                       mask: Tensor | None = None) -> Plan:
        """The plans of both directions' layers for ``self(inputs, lengths=lengths,
        mask=mask)`` (what ``explain`` prints), after the same input checks as the call."""
        padded, lengths, info, gaps = normalise_with_mask(
            "Bidirectional", inputs, self.batch_first, lengths, mask)
        plan = Plan(dispatch.module_line(self),
                    dispatch.describe_input(padded, lengths, info is not None, gaps),
                    "wrapper", "")
        for label, layer in (("forward layer", self.forward_layer),
                             ("backward layer", self.backward_layer)):
            layer_inputs = padded.transpose(0, 1) if getattr(layer, "batch_first", False) else (
                padded)
            plan.parts.append((label, dispatch.part_plan(
                layer, layer_inputs, lengths, None if gaps is None else gaps.T)))
        return dispatch.mask_plan_input(plan, mask, gaps)

    @outside_autocast
    def forward(
        self,
        inputs: Tensor | PackedSequence,
        state: Any = None,
        lengths: Tensor | Sequence[int] | None = None,
        mask: Tensor | None = None,
    ) -> DriverOutput:
        out_f, out_b, final, lengths, info = self._directions(inputs, state, lengths, mask)
        merged = map_state(lambda t: from_time_major(t, self.batch_first, lengths, info),
                           self.merge(out_f, out_b))
        return DriverOutput(merged, final)

    @outside_autocast
    def forward_directions(self, inputs: Any, state: Any = None, lengths: Any = None,
                           mask: Any = None) -> DriverOutput:
        """The call without the merge: ``((out_forward, out_backward), (state_forward,
        state_backward))``, each output in the layer's layout (what ``merge_mode=None``
        returns)."""
        out_f, out_b, final, lengths, info = self._directions(inputs, state, lengths, mask)
        out_f, out_b = (map_state(lambda t: from_time_major(t, self.batch_first, lengths, info),
                                  out) for out in (out_f, out_b))
        return DriverOutput((out_f, out_b), final)

    def _directions(self, inputs: Any, state: Any, lengths: Any, mask: Any) -> tuple[Any, ...]:
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ValueError(
                "Bidirectional: state must be None or a pair (state_forward, state_backward)"
            )
        padded, lengths, info, gaps = normalise_with_mask(
            "Bidirectional", inputs, self.batch_first, lengths, mask
        )
        out_f, out_b, final_f, final_b = self._run(padded, state, lengths, gaps)
        return out_f, out_b, (final_f, final_b), lengths, info

