"""Every data form the trainer takes, turned into :class:`Batch` objects, resumably.

Symbols: ``B`` sequences in a batch, ``T`` the longest of them, ``F`` features per step.
Everything here is batch-major: inputs ``(B, T, F)`` or token ids ``(B, T)``, per-sample targets
``(B,)``/``(B, D)``, per-step targets ``(B, T)``/``(B, T, D)``, ``lengths (B,)`` int64.

Data forms (:func:`make_feed`):

* ``(x, y)`` tensors or arrays (``x`` may be a tuple of inputs; ``(x, y, lengths)`` for padded
  arrays): batches of ``batch_size``, shuffled by the trainer's seeded generator.
* a ``torch.utils.data.DataLoader`` yielding ``(x, y)``, ``(x, lengths, y)`` (what
  ``rnnkit.data.PadCollate(batch_first=True)`` gives; ``(x, y, lengths)`` is recognised too),
  dicts (``{"x", "y", "lengths"}``, or padded dicts ``{"x", "x_lengths", "y"}``), or
  :class:`Batch` objects. A ``RandomSampler`` (``shuffle=True``) draws its order from a
  generator the trainer seeds per pass (``seed + pass``; so do other samplers with a
  ``generator``); samplers with ``set_epoch``
  (``DistributedSampler``, ``BucketBatchSampler``) get the pass number. So a pass's order is
  known in advance and a resumed run skips the consumed batches by index, without loading them.
* a ``torch.utils.data.Dataset``: wrapped in a ``DataLoader`` of ``batch_size`` (padded with
  lengths when its items differ in length).
* a :class:`rnnkit.data.MinibatchSource`, bare (``batch_size`` counts samples) or as
  :class:`SourceBatches` with an ``input_map`` naming which streams are the model's inputs and
  which is the target. Its position is saved with ``get_checkpoint_state()``.
* a :class:`rnnkit.data.StatefulBatches` (language-model truncated BPTT): the trainer carries
  the model's state from one window to the next.

Example:
    >>> import torch
    >>> feed = make_feed((torch.randn(10, 4, 3), torch.randn(10, 1)), batch_size=4,
    ...                  shuffle=False, seed=0)
    >>> batch = feed.next_batch()
    >>> tuple(batch.inputs[0].shape), tuple(batch.target.shape), batch.size
    ((4, 4, 3), (4, 1), 4)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from rnnkit.data.batching import PadCollate
from rnnkit.data.sources import MinibatchData, MinibatchSource, StreamInformation
from rnnkit.data.text import StatefulBatches
from rnnkit.errors import ShapeError
from rnnkit.training.losses import IGNORE_INDEX

__all__ = ["Batch", "EmptyDataError", "Feed", "SourceBatches", "make_feed", "to_batch"]

_INPUT_KEYS = ("x", "input", "inputs", "features", "ids", "input_ids")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


class EmptyDataError(ValueError):
    """The data holds no batch at all."""


@dataclasses.dataclass
class Batch:
    """One batch as the trainer sees it.

    Attributes:
        inputs: the model's positional inputs, each ``(B, T, ...)`` (or ``(B, ...)``).
        target: per-sample ``(B,)``/``(B, D)`` or per-step ``(B, T)``/``(B, T, D)``; None to
            predict.
        lengths: ``(B,)`` int64 valid steps per row, or None when no row is padded.
        sequence_start: ``(B,)`` bool, the row starts its sequence (stateful data only: rows
            where it is False continue the state carried from the previous batch).
        size: ``B``.
        slots: ``(B,)`` int64, the carried-state row each row continues (stateful data only;
            ``arange(B)`` unless a ``MinibatchSource`` packs two pieces into one slot).
        num_samples: samples the batch counts for ``epoch_size`` and ``samples_seen``: ``B``,
            or a ``MinibatchSource``'s sample (time step) count, as CNTK counts.
    """

    inputs: tuple[Tensor, ...]
    target: Tensor | None
    lengths: Tensor | None
    sequence_start: Tensor | None
    size: int
    slots: Tensor | None = None
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if self.num_samples is None:
            self.num_samples = self.size

    def mask(self, steps: int) -> Tensor | None:
        """``(B, steps)`` bool, True at real steps; None without lengths."""
        if self.lengths is None:
            return None
        return torch.arange(steps).unsqueeze(0) < self.lengths.unsqueeze(1)  # (B, T)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Inputs and target on ``device``; floating inputs cast to ``dtype`` when given."""
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            return t.to(device, non_blocking=True)

        return dataclasses.replace(
            self, inputs=tuple(move(x) for x in self.inputs),
            target=None if self.target is None else self.target.to(device, non_blocking=True))


# ----------------------------------------------------------------------------- conversion
def _tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be a tensor or an array, got {type(value).__name__}: "
                        f"{error}") from None
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # numpy's default precision, not a choice
    if array.dtype == object:
        raise TypeError(f"{what} must be a rectangular array of numbers, got an object array "
                        "(ragged rows? pad them, e.g. with rnnkit.data.pad_sequences)")
    return torch.as_tensor(array)


def _looks_like_lengths(t: Any, batch: int, steps: int | None) -> bool:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != batch:
        return False
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        return False
    return int(t.min()) >= 1 and (steps is None or int(t.max()) <= steps)


def _check_lengths(lengths: Tensor, x: Tensor) -> Tensor:
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ShapeError(f"lengths must be a 1-D integer tensor (B,), got dtype {lengths.dtype} "
                         f"shape {tuple(lengths.shape)}")
    b = lengths.shape[0]
    if x.dim() < 2 or x.shape[0] != b:
        if x.dim() >= 2 and x.shape[1] == b:
            raise ShapeError(f"inputs of shape {tuple(x.shape)} with lengths for {b} sequences "
                             "look time-major (T, B, ...); the trainer is batch-major: use "
                             "rnnkit.data.PadCollate(batch_first=True)")
        raise ShapeError(f"lengths hold {b} sequences but the inputs have shape "
                         f"{tuple(x.shape)} (batch-major (B, T, ...) expected)")
    lengths = lengths.to("cpu", torch.int64)
    if b and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ShapeError(f"lengths must lie in [1, T={x.shape[1]}] for inputs of shape "
                         f"{tuple(x.shape)}, got min {int(lengths.min())}, max "
                         f"{int(lengths.max())}")
    return lengths


def _as_inputs(x: Any, what: str) -> tuple[Tensor, ...]:
    if isinstance(x, (tuple, list)) and x and not isinstance(x[0], (int, float)):
        return tuple(_tensor(v, f"{what}[{i}]") for i, v in enumerate(x))
    return (_tensor(x, what),)


def to_batch(item: Any, where: str = "batch") -> Batch:
    """Turn one collated batch (tuple, dict, tensor or :class:`Batch`) into a :class:`Batch`.

    ``where`` names the batch in error messages (e.g. "training batch 3").
    """
    if isinstance(item, Batch):
        return item
    lengths = target = None
    if isinstance(item, Mapping):
        keys = list(item)
        in_key = next((k for k in _INPUT_KEYS if k in item), None)
        if in_key is None:
            raise ValueError(f"{where}: a dict batch needs an input under one of "
                             f"{', '.join(_INPUT_KEYS)}; got keys {keys}")
        inputs = _as_inputs(item[in_key], f"{where}[{in_key!r}]")
        tg_key = next((k for k in _TARGET_KEYS if k in item), None)
        if tg_key is not None:
            target = _tensor(item[tg_key], f"{where}[{tg_key!r}]")
            tl = item.get(f"{tg_key}_lengths")
            # a padded dict pads per-sample targets too: (B, 1) rows of length 1
            if isinstance(tl, Tensor) and target.dim() >= 2 and target.shape[1] == 1 and \
                    bool((tl == 1).all()) and inputs[0].dim() >= 2 and inputs[0].shape[1] != 1:
                target = target[:, 0]
        for key in ("lengths", f"{in_key}_lengths"):
            if key in item:
                lengths = _tensor(item[key], f"{where}[{key!r}]")
                break
    elif isinstance(item, (tuple, list)):
        if not 1 <= len(item) <= 3:
            raise ValueError(f"{where}: a tuple batch is (x,), (x, y) or (x, lengths, y), "
                             f"got {len(item)} elements")
        inputs = _as_inputs(item[0], f"{where} inputs")
        rest = [None if v is None else _tensor(v, f"{where} element {i + 1}")
                for i, v in enumerate(item[1:])]
        if len(rest) == 1:
            target = rest[0]
        elif len(rest) == 2:
            x0 = inputs[0]
            b, steps = x0.shape[0] if x0.dim() else 0, x0.shape[1] if x0.dim() >= 2 else None
            def integer_vector(t: Tensor) -> bool:
                return t.dim() == 1 and not t.is_floating_point() and t.dtype != torch.bool

            if _looks_like_lengths(rest[0], b, steps):  # PadCollate's (x, lengths, y)
                lengths, target = rest
            elif _looks_like_lengths(rest[1], b, steps):  # (x, y, lengths)
                target, lengths = rest
            elif integer_vector(rest[0]):  # PadCollate's order; _check_lengths says what's wrong
                lengths, target = rest
            elif integer_vector(rest[1]):
                target, lengths = rest
            else:
                raise ShapeError(
                    f"{where}: a 3-tuple batch must be (x, lengths, y) as "
                    "PadCollate(batch_first=True) gives, with lengths (B,) integers in [1, T]; "
                    f"got shapes {tuple(x0.shape)}, "
                    f"{', '.join(str(tuple(r.shape)) for r in rest)}")
    else:
        inputs = _as_inputs(item, f"{where} inputs")
    x = inputs[0]
    if x.dim() == 0:
        raise ShapeError(f"{where}: the input is a scalar; a batch needs (B, ...)")
    b = x.shape[0]
    if lengths is not None:
        lengths = _check_lengths(lengths, x)
    for i, extra in enumerate(inputs[1:], start=1):
        if extra.dim() == 0 or extra.shape[0] != b:
            raise ShapeError(f"{where}: input {i} has shape {tuple(extra.shape)} but input 0 "
                             f"has batch size {b}")
    if target is not None and (target.dim() == 0 or target.shape[0] != b):
        hint = (" (time-major (T, B, ...) inputs? the trainer is batch-major)"
                if target.dim() and x.dim() >= 2 and x.shape[1] == target.shape[0] else "")
        raise ShapeError(f"{where}: inputs of shape {tuple(x.shape)} and targets of shape "
                         f"{tuple(target.shape)} hold different batch sizes{hint}")
    return Batch(inputs=inputs, target=target, lengths=lengths, sequence_start=None, size=b)


# ----------------------------------------------------------------------------- feeds
class Feed:
    """A resumable walk over passes of some data, one :class:`Batch` at a time.

    ``next_batch()`` returns the next batch of the current pass, or None once at the end of
    a pass (the following call starts the next pass). ``exhausted`` turns True when the data
    can give no more (a ``MinibatchSource`` past its ``max_sweeps``). ``state_dict()`` is the
    position (plain data), ``load_state_dict()`` restores it, so batches after a restore are
    those an uninterrupted walk would give.
    """

    #: the trainer carries the model's state from batch to batch
    stateful: bool = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.pass_index = 0
        self.batch_index = 0  # batches of the current pass already handed out
        self.exhausted = False
        self._iterator: Iterator[Batch] | None = None

    def _pass(self, pass_index: int, skip: int) -> Iterator[Batch]:
        raise NotImplementedError

    def num_batches(self) -> int | None:
        """Batches per pass, when known."""
        return None

    def next_batch(self) -> Batch | None:
        if self._iterator is None:
            self._iterator = self._pass(self.pass_index, self.batch_index)
        batch = next(self._iterator, None)
        if batch is None:
            if self.pass_index == 0 and self.batch_index == 0:
                raise EmptyDataError(f"the {self.describe()} holds no batches: nothing to "
                                     "train or evaluate on")
            self.pass_index += 1
            self.batch_index = 0
            self._iterator = None
            return None
        self.batch_index += 1
        return batch

    def describe(self) -> str:
        return "data"

    def state_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "batch": self.batch_index}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pass_index, self.batch_index = int(state["pass"]), int(state["batch"])
        self._iterator = None

    def restart(self) -> None:
        """Back to the start of pass 0 (evaluation reads the same data every time)."""
        self.load_state_dict({"pass": 0, "batch": 0})


def _pass_generator(seed: int, pass_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + pass_index)


class TensorFeed(Feed):
    """``(x, y)`` / ``(x, y, lengths)`` tensors or arrays, sliced in batches of ``batch_size``."""

    def __init__(self, data: tuple, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        super().__init__(seed)
        if not 1 <= len(data) <= 3:
            raise ValueError(f"tensor data is (x,), (x, y) or (x, y, lengths), got "
                             f"{len(data)} elements")
        self.inputs = _as_inputs(data[0], "x")
        self.target = _tensor(data[1], "y") if len(data) >= 2 and data[1] is not None else None
        self.lengths = _tensor(data[2], "lengths") if len(data) == 3 else None
        self.batch_size = _positive("batch_size", batch_size)
        self.shuffle = bool(shuffle)
        x = self.inputs[0]
        if x.dim() == 0:
            raise ShapeError("x is a scalar; tensor data needs (N, ...) samples")
        self.n = int(x.shape[0])
        if self.n == 0:
            raise EmptyDataError(f"x has no samples (shape {tuple(x.shape)}): nothing to train "
                                 "or evaluate on")
        probe = to_batch((self.inputs, *(() if self.target is None else (self.target,))),
                         "tensor data")  # checks batch sizes
        del probe
        if self.lengths is not None:
            self.lengths = _check_lengths(self.lengths, x)

    def describe(self) -> str:
        return "tensor data"

    def num_batches(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _pass(self, pass_index: int, skip: int) -> Iterator[Batch]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=_pass_generator(self.seed, pass_index))
        else:
            order = torch.arange(self.n)
        for start in range(skip * self.batch_size, self.n, self.batch_size):
            idx = order[start: start + self.batch_size]
            lengths = None if self.lengths is None else self.lengths[idx]
            inputs = tuple(x[idx] for x in self.inputs)
            # Trim to the batch's longest sequence, only with one input: the lengths are input
            # 0's, and a second input (an encoder-decoder's target_in) may have a time axis of
            # its own even when its padded length happens to be the same.
            trim = lengths is not None and len(inputs) == 1
            if trim:
                inputs = tuple(x[:, : int(lengths.max())] if x.dim() >= 2 else x
                               for x in inputs)
            target = None if self.target is None else self.target[idx]
            if trim and target is not None and target.dim() >= 2 and \
                    target.shape[1] == self.inputs[0].shape[1]:
                target = target[:, : int(lengths.max())]
            yield Batch(inputs, target, lengths, None, int(idx.numel()))


class _AutoCollate:
    """``default_collate``, or ``PadCollate(batch_first=True)`` when items differ in length."""

    def __init__(self) -> None:
        self.pad = PadCollate(batch_first=True)

    def __call__(self, items: Sequence[Any]) -> Any:
        try:
            return default_collate(items)
        except RuntimeError:
            return self.pad(items)


class LoaderFeed(Feed):
    """A ``DataLoader``: its pass ``p`` batches come from a rebuilt loader over precomputed
    index batches (``seed + p`` shuffles), so skipping consumed batches loads nothing."""

    def __init__(self, loader: DataLoader, seed: int = 0) -> None:
        super().__init__(seed)
        self.loader = loader
        self.iterable = isinstance(loader.dataset, IterableDataset)

    def describe(self) -> str:
        return f"DataLoader over {type(self.loader.dataset).__name__}"

    def num_batches(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _index_batches(self, pass_index: int) -> list[Any]:
        loader = self.loader
        samplers = [s for s in (loader.sampler, loader.batch_sampler,
                                getattr(loader.batch_sampler, "sampler", None)) if s is not None]
        for obj in samplers:
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(pass_index)
        # a sampler that draws from a generator (RandomSampler, SubsetRandomSampler,
        # WeightedRandomSampler) draws from this pass's: the order is the seed's, and never
        # takes a number from torch's global generator
        swapped = []
        for obj in samplers:
            if isinstance(getattr(obj, "generator", False), (torch.Generator, type(None))):
                swapped.append((obj, obj.generator))
                obj.generator = _pass_generator(self.seed, pass_index)
        try:
            if loader.batch_sampler is not None:
                return [list(b) for b in loader.batch_sampler]
            return list(loader.sampler)
        finally:
            for obj, generator in swapped:
                obj.generator = generator

    def _pass(self, pass_index: int, skip: int) -> Iterator[Batch]:
        loader = self.loader
        where = "training data"
        if self.iterable:  # no indices: skip by reading
            for i, item in enumerate(loader):
                if i >= skip:
                    yield to_batch(item, f"{where} batch {i + 1}")
            return
        batches = self._index_batches(pass_index)
        kwargs: dict[str, Any] = dict(
            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory, timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            # the workers' base seed comes from this generator, not from torch's global RNG,
            # so rebuilding the loader on resume does not shift the global random stream
            generator=_pass_generator(self.seed, pass_index))
        if loader.num_workers:
            kwargs.update(multiprocessing_context=loader.multiprocessing_context,
                          prefetch_factor=loader.prefetch_factor)
        if loader.batch_sampler is not None:
            rebuilt = DataLoader(loader.dataset, batch_sampler=batches[skip:], **kwargs)
        else:
            rebuilt = DataLoader(loader.dataset, sampler=batches[skip:], batch_size=None,
                                 **kwargs)
        for i, item in enumerate(rebuilt, start=skip):
            yield to_batch(item, f"{where} batch {i + 1}")


class SourceBatches:
    """A :class:`~rnnkit.data.MinibatchSource` with its minibatch size and input map.

    Args:
        source: the source (its ``max_sweeps``/``max_samples`` end training early when reached).
        minibatch_size: samples (time steps) per minibatch, as CNTK counts.
        input_map: model input name -> stream, in the model's argument order, plus the key
            ``"target"`` for the target stream (``source.streams.<name>`` or the stream's name).
            Default: a stream named ``target``, ``labels``, ``label`` or ``y`` is the target and
            every other stream an input, in declaration order.

    Inputs come as ``(B, T, *D)`` floats (sparse streams as one-hot rows) with the first input's
    ``lengths``; the target as class ids when its stream is sparse (padding = -100, ignored),
    as values otherwise, without its time axis when every sequence holds one target sample.

    Example (CNTK's ``model_inputs_to_streams``)::

        data = SourceBatches(source, minibatch_size=140, input_map={
            "features": source.streams.features, "target": source.streams.target})
        trainer.fit(data, epochs=10)
    """

    def __init__(self, source: MinibatchSource, minibatch_size: int,
                 input_map: Mapping[str, StreamInformation | str] | None = None) -> None:
        if not isinstance(source, MinibatchSource):
            raise TypeError(f"SourceBatches needs a MinibatchSource, got {type(source).__name__}")
        self.source = source
        self.minibatch_size = _positive("minibatch_size", minibatch_size)
        names = [s.name for s in source.streams]
        if input_map is None:
            target = next((n for n in ("target", "labels", "label", "y") if n in names), None)
            self.inputs = [n for n in names if n != target]
            self.target = target
        else:
            resolved = {}
            for key, stream in input_map.items():
                name = stream.name if isinstance(stream, StreamInformation) else stream
                if name not in names:
                    raise KeyError(f"input_map[{key!r}] = {stream!r} is not a stream of the "
                                   f"source; streams: {', '.join(names)}")
                resolved[key] = name
            self.target = resolved.pop("target", None)
            self.inputs = list(resolved.values())
        if not self.inputs:
            raise ValueError(f"no input stream left for the model: streams {names}, target "
                             f"{self.target!r}; give input_map")


class SourceFeed(Feed):
    """Minibatches of a :class:`SourceBatches`; a pass is a sweep (``end_of_sweep``)."""

    def __init__(self, data: SourceBatches) -> None:
        super().__init__(0)
        self.data = data
        self.source = data.source
        self.stateful = bool(self.source.truncation_length)
        self._initial = self.source.get_checkpoint_state()
        self._pass_ended = False  # the last minibatch closed a sweep

    def describe(self) -> str:
        return "MinibatchSource"

    def next_batch(self) -> Batch | None:
        if self._pass_ended:
            self._pass_ended = False
            self.pass_index += 1
            self.batch_index = 0
            return None
        if self.exhausted:
            return None
        mb = self.source.next_minibatch(self.data.minibatch_size)
        if not mb:
            self.exhausted = True
            if self.pass_index == 0 and self.batch_index == 0:
                raise EmptyDataError("the MinibatchSource gave no minibatch: nothing to train "
                                     "or evaluate on")
            return None
        self.batch_index += 1
        self._pass_ended = mb.end_of_sweep
        return self._convert(mb)

    def _convert(self, mb: Any) -> Batch:
        first: MinibatchData = mb[self.data.inputs[0]]
        inputs = tuple(mb[name].data for name in self.data.inputs)
        target = None
        if self.data.target is not None:
            t: MinibatchData = mb[self.data.target]
            if t.is_sparse:
                target = t.indices.masked_fill(~t.mask, IGNORE_INDEX)  # (B, T_y)
            else:
                target = t.data  # (B, T_y, *D)
            if t.max_length == 1 and first.max_length != 1:
                target = target[:, 0]  # one target per sequence: (B,) or (B, *D)
        lengths = first.lengths
        if bool((lengths == first.max_length).all()) and not self.stateful:
            lengths = None
        return Batch(inputs, target, lengths,
                     first.sequence_start if self.stateful else None, first.num_sequences,
                     slots=first.slots if self.stateful else None, num_samples=mb.num_samples)

    def state_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "batch": self.batch_index,
                "pass_ended": self._pass_ended, "exhausted": self.exhausted,
                "source": self.source.get_checkpoint_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pass_index, self.batch_index = int(state["pass"]), int(state["batch"])
        self._pass_ended = bool(state["pass_ended"])
        self.exhausted = bool(state["exhausted"])
        self.source.restore_from_checkpoint(state["source"])

    def restart(self) -> None:
        self.pass_index = self.batch_index = 0
        self._pass_ended = self.exhausted = False
        self.source.restore_from_checkpoint(self._initial)


class StatefulFeed(Feed):
    """:class:`~rnnkit.data.StatefulBatches` windows, state carried within a pass."""

    stateful = True

    def __init__(self, data: StatefulBatches) -> None:
        super().__init__(0)
        self.data = data

    def describe(self) -> str:
        return "StatefulBatches"

    def num_batches(self) -> int:
        return len(self.data)

    def _pass(self, pass_index: int, skip: int) -> Iterator[Batch]:
        self.data.set_epoch(pass_index)
        for i, (x, y) in enumerate(self.data):
            if i < skip:
                continue
            if not self.data.batch_first:
                x, y = x.t(), y.t()  # (L, B) -> (B, L)
            b = x.shape[0]
            start = torch.full((b,), i == 0, dtype=torch.bool)
            yield Batch((x,), y, None, start, b, slots=torch.arange(b))


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def make_feed(data: Any, *, batch_size: int | None = None, shuffle: bool = True,
              seed: int = 0) -> Feed:
    """The :class:`Feed` for any data form the trainer takes (see the module docstring).

    ``batch_size`` applies to tensors and datasets (default 32) and, in samples, to a bare
    ``MinibatchSource`` (required there); ``shuffle`` to tensors and datasets.
    """
    if isinstance(data, Feed):
        return data
    if isinstance(data, DataLoader):
        return LoaderFeed(data, seed)
    if isinstance(data, SourceBatches):
        return SourceFeed(data)
    if isinstance(data, MinibatchSource):
        if batch_size is None:
            raise ValueError("a bare MinibatchSource needs batch_size= (samples per minibatch), "
                             "or pass SourceBatches(source, minibatch_size, input_map)")
        return SourceFeed(SourceBatches(data, batch_size))
    if isinstance(data, StatefulBatches):
        return StatefulFeed(data)
    size = 32 if batch_size is None else _positive("batch_size", batch_size)
    if isinstance(data, Dataset):
        if isinstance(data, IterableDataset):
            loader = DataLoader(data, batch_size=size, collate_fn=_AutoCollate())
        else:
            loader = DataLoader(data, batch_size=size, shuffle=shuffle, collate_fn=_AutoCollate())
        return LoaderFeed(loader, seed)
    if isinstance(data, (Tensor, np.ndarray)):
        return TensorFeed((data,), size, shuffle, seed)
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 3:
        return TensorFeed(tuple(data), size, shuffle, seed)
    raise TypeError(
        f"cannot train or evaluate on a {type(data).__name__}: give (x, y) tensors or arrays, a "
        "torch DataLoader or Dataset, an rnnkit.data.MinibatchSource (with batch_size, or as "
        "SourceBatches) or rnnkit.data.StatefulBatches")
