"""Truncated backpropagation through time: time chunks and the state carried between them.

``Trainer(tbptt=k)`` cuts each batch's time axis into chunks of ``k`` steps
(:func:`split_time`) and makes one optimizer update per chunk; a :class:`StateCarrier` keeps
the model's final state of each chunk, **detached**, and hands it to the next chunk, so no
gradient crosses a cut while the forward pass still sees the whole history (Williams & Peng's
TBPTT(k, k), as PyTorch's word_language_model example does with ``repackage_hidden``).

Stateful data carries the state across batches too: ``rnnkit.data.StatefulBatches`` windows
(row ``b`` of one window continues row ``b`` of the previous one) and
``MinibatchSource(truncation_length=...)`` slots. A row whose ``sequence_start`` is True starts
from the model's initial state: when every row starts, the model gets no ``state=`` at all;
otherwise the rows that start get zeros.

State layout: a state is a Tensor or a nested tuple/list/dict of Tensors (``(h, c)`` for an
LSTM). The batch axis of each tensor is found from ``B``: axis 1 of a 3-D tensor such as torch's
``h_n (L*D, B, H)``, otherwise the first axis of size ``B``.

Example:
    >>> import torch
    >>> from rnnkit.training.batches import Batch
    >>> batch = Batch((torch.randn(2, 5, 3),), torch.randn(2, 5, 1), None, None, 2)
    >>> [tuple(c.inputs[0].shape) for c in split_time(batch, 2)]
    [(2, 2, 3), (2, 2, 3), (2, 1, 3)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.errors import ShapeError
from rnnkit.training.batches import Batch

__all__ = ["StateCarrier", "detach_state", "map_state", "split_time"]


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested state, keeping its structure."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(map_state(fn, s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if state is None:
        return None
    raise TypeError(f"a recurrent state must be a Tensor or nested tuples/lists/dicts of "
                    f"Tensors, got {type(state).__name__}")


def detach_state(state: Any) -> Any:
    """The same state cut from the graph (``repackage_hidden``)."""
    return map_state(lambda t: t.detach(), state)


def flatten_state(state: Any) -> list[Tensor]:
    out: list[Tensor] = []
    map_state(lambda t: out.append(t) or t, state)
    return out


def unflatten_state(template: Any, tensors: list[Tensor]) -> Any:
    it = iter(tensors)
    return map_state(lambda _: next(it), template)


def batch_axis(t: Tensor, rows: int) -> int:
    """The axis of ``t`` that holds the batch of ``rows`` rows (see the module docstring)."""
    if t.dim() == 3 and t.shape[1] == rows:
        return 1
    for axis, size in enumerate(t.shape):
        if size == rows:
            return axis
    raise ShapeError(f"cannot find the batch axis (size {rows}) of a state tensor of shape "
                     f"{tuple(t.shape)}")


def split_time(batch: Batch, k: int) -> list[Batch]:
    """Chunks of ``k`` steps of a batch-major batch (the last chunk may be shorter).

    Per-step targets are cut alike; per-sample targets cannot be (``ValueError``). A chunk's
    lengths are each row's valid steps inside it; a row with none gets length 1 for the model
    (rnnkit's drivers need ``lengths >= 1``) while its mask stays empty, so its padding never
    counts in the loss. The first chunk keeps the batch's ``sequence_start`` (None: every row
    starts); the others continue every row.
    """
    x = batch.inputs[0]
    if x.dim() < 2:
        raise ShapeError(f"tbptt needs inputs with a time axis (B, T, ...), got shape "
                         f"{tuple(x.shape)}")
    steps = x.shape[1]
    target = batch.target
    if target is not None and (target.dim() < 2 or target.shape[1] != steps):
        raise ValueError(f"tbptt={k} cuts the time axis, so it needs per-step targets (B, T, ...) "
                         f"with T={steps}; got targets of shape {tuple(target.shape)} for inputs "
                         f"of shape {tuple(x.shape)}")
    if k >= steps:
        return [batch]
    chunks = []
    for begin in range(0, steps, k):
        end = min(begin + k, steps)
        lengths = None
        if batch.lengths is not None:
            lengths = (batch.lengths - begin).clamp(0, end - begin)  # (B,) valid steps here
        inputs = tuple(t[:, begin:end] if t.dim() >= 2 and t.shape[1] == steps else t
                       for t in batch.inputs)
        chunk = dataclasses.replace(
            batch, inputs=inputs,
            target=None if target is None else target[:, begin:end],
            lengths=lengths,
            sequence_start=(batch.sequence_start if begin == 0
                            else torch.zeros(batch.size, dtype=torch.bool)))
        chunks.append(_ChunkBatch.wrap(chunk))
    return chunks


@dataclasses.dataclass
class _ChunkBatch(Batch):
    """A chunk whose rows may hold zero valid steps: the model sees >= 1, the mask 0."""

    valid: Tensor | None = None

    @classmethod
    def wrap(cls, chunk: Batch) -> Batch:
        if chunk.lengths is None or bool((chunk.lengths >= 1).all()):
            return chunk
        fields = {f.name: getattr(chunk, f.name) for f in dataclasses.fields(Batch)}
        fields["lengths"] = chunk.lengths.clamp(min=1)
        return cls(**fields, valid=chunk.lengths)

    def mask(self, steps: int) -> Tensor | None:
        valid = self.valid if self.valid is not None else self.lengths
        return torch.arange(steps).unsqueeze(0) < valid.unsqueeze(1)  # (B, T)


class StateCarrier:
    """The detached state carried between updates, one row per slot.

    ``state_for(batch)`` gives the state the batch's rows start from (None when every row
    starts a sequence or nothing is carried yet); ``update(batch, state)`` keeps the rows of
    the model's new state, detached, for the next batch: for each slot, its last row.
    """

    def __init__(self) -> None:
        self.state: Any = None  # nested tensors, batch axis = slots
        self.axes: list[int] = []

    def reset(self) -> None:
        self.state = None
        self.axes = []

    @staticmethod
    def _rows(batch: Batch) -> tuple[Tensor, Tensor]:
        slots = batch.slots if batch.slots is not None else torch.arange(batch.size)
        # no sequence_start: a batch of independent sequences, every row starts
        starts = (batch.sequence_start if batch.sequence_start is not None
                  else torch.ones(batch.size, dtype=torch.bool))
        return slots.to(torch.int64), starts.to(torch.bool)

    def state_for(self, batch: Batch) -> Any:
        slots, starts = self._rows(batch)
        if self.state is None or bool(starts.all()):
            return None
        tensors = flatten_state(self.state)
        if len(self.axes) != len(tensors):
            raise ShapeError("the carried state changed structure")
        num_slots = tensors[0].shape[self.axes[0]]
        if int(slots.max()) >= num_slots:
            raise ShapeError(f"a batch row continues slot {int(slots.max())} but the carried "
                             f"state has {num_slots} rows; keep the batch size fixed while "
                             "the state is carried")
        out = []
        for t, axis in zip(tensors, self.axes, strict=True):
            rows = t.index_select(axis, slots.to(t.device))  # batch axis: B
            keep = (~starts).to(t.device, t.dtype).view(
                *[-1 if a == axis else 1 for a in range(t.dim())])
            out.append(rows * keep)
        return unflatten_state(self.state, out)

    def update(self, batch: Batch, state: Any) -> None:
        if state is None:
            raise TypeError("the model returned no state to carry: with tbptt or stateful "
                            "data it must return (output, state)")
        slots, _ = self._rows(batch)
        tensors = flatten_state(detach_state(state))
        b = batch.size
        axes = [batch_axis(t, b) for t in tensors]
        # each slot's last row (rows of a slot come in time order)
        last: dict[int, int] = {}
        for row, slot in enumerate(slots.tolist()):
            last[slot] = row
        slot_ids = torch.tensor(list(last.keys()), dtype=torch.int64)
        row_ids = torch.tensor(list(last.values()), dtype=torch.int64)
        num_slots = int(slots.max()) + 1
        if self.state is not None:
            old = flatten_state(self.state)
            num_slots = max(num_slots, old[0].shape[self.axes[0]])
        new = []
        for i, (t, axis) in enumerate(zip(tensors, axes, strict=True)):
            shape = list(t.shape)
            shape[axis] = num_slots
            if self.state is not None and tuple(old[i].shape) == tuple(shape):
                base = old[i].clone()
            else:
                base = t.new_zeros(shape)
            base.index_copy_(axis, slot_ids.to(t.device), t.index_select(axis,
                                                                         row_ids.to(t.device)))
            new.append(base)
        self.state = unflatten_state(state, new)
        self.axes = axes

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the tensors (structure is rebuilt from the model)."""
        if self.state is None:
            return {"tensors": None, "axes": []}
        return {"tensors": [t.cpu() for t in flatten_state(self.state)],
                "structure": _structure(self.state), "axes": list(self.axes)}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device | None = None) -> None:
        if saved.get("tensors") is None:
            self.reset()
            return
        tensors = [t.to(device) if device is not None else t for t in saved["tensors"]]
        self.state = _rebuild(saved["structure"], iter(tensors))
        self.axes = list(saved["axes"])


def _structure(state: Any) -> Any:
    """A weights_only-safe description of a nested state (lists, dicts, the string 'T')."""
    if isinstance(state, Tensor):
        return "T"
    if isinstance(state, (tuple, list)):
        return {"seq": [_structure(s) for s in state], "tuple": isinstance(state, tuple)}
    if isinstance(state, dict):
        return {"dict": {k: _structure(v) for k, v in state.items()}}
    raise TypeError(f"cannot save a state of type {type(state).__name__}")


def _rebuild(structure: Any, tensors: Any) -> Any:
    if structure == "T":
        return next(tensors)
    if "seq" in structure:
        items = [_rebuild(s, tensors) for s in structure["seq"]]
        return tuple(items) if structure["tuple"] else items
    return {k: _rebuild(v, tensors) for k, v in structure["dict"].items()}
