"""Variable-length batches: a padding collate function and a length-bucketing batch sampler.

Symbols: ``B`` batch size, ``T`` the longest sequence in the batch, ``*F`` per-step features.

Layout: padded batches are time-major ``(T, B, *F)`` by default, like rnnkit's layers and
``torch.nn.utils.rnn.pad_sequence``; ``batch_first=True`` gives ``(B, T, *F)``.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> data = [torch.ones(n, 2) for n in (5, 2, 4, 3)]
    >>> sampler = BucketBatchSampler([len(x) for x in data], batch_size=2, shuffle=False)
    >>> [(tuple(x.shape), n.tolist()) for x, n in DataLoader(data, batch_sampler=sampler,
    ...                                                      collate_fn=pad_collate)]
    [((3, 2, 2), [2, 3]), ((5, 2, 2), [4, 5])]
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rnnkit.data._checks import int_arg

__all__ = ["BucketBatchSampler", "PadCollate", "pad_collate", "pad_sequences",
           "padding_fraction"]


def pad_sequences(sequences: Sequence[torch.Tensor], batch_first: bool = False,
                  padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``(T_i, *F)`` tensors to ``(T, B, *F)`` (``(B, T, *F)`` with ``batch_first``) and
    return ``lengths (B,)`` int64.

    The default layout is time-major, as in ``torch.nn.utils.rnn.pad_sequence`` and rnnkit's
    layers. Sequences of different dtypes are promoted to their common dtype (as
    ``torch.result_type`` does: int64 and float32 give float32), so no value is lost.
    """
    if not len(sequences):
        raise ValueError("cannot pad an empty batch")
    seqs = []
    for i, s in enumerate(sequences):
        try:
            seqs.append(torch.as_tensor(s))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"item {i} is not a tensor or a rectangular list of numbers "
                            f"({type(s).__name__}): {e}") from None
    for i, s in enumerate(seqs):
        if s.dim() == 0:
            raise ValueError(f"item {i} is a scalar; sequences need a time axis (T, ...)")
        if s.shape[1:] != seqs[0].shape[1:]:
            raise ValueError(f"item {i} has per-step shape {tuple(s.shape[1:])}, item 0 has "
                             f"{tuple(seqs[0].shape[1:])}; only the time axis may differ")
        if s.device != seqs[0].device:
            raise ValueError(f"item {i} is on {s.device}, item 0 on {seqs[0].device}; put the "
                             "batch on one device")
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in seqs))
    seqs = [s.to(dtype) for s in seqs]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)  # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=batch_first,
                                             padding_value=padding_value)  # (T, B, *F)
    return padded, lengths


class PadCollate:
    """``collate_fn`` for a ``DataLoader`` over variable-length sequences.

    Items may be:
      * a tensor ``(T_i, *F)`` -> ``(padded, lengths (B,))``;
      * a tuple ``(sequence, target, ...)`` -> ``(padded, lengths, target, ...)``: the first
        element is padded; the others are padded too if they are tensors with a time axis of
        the same length as the sequence (``pad_targets="auto"``, for tagging), else stacked;
      * a dict name -> tensor -> dict of padded tensors plus ``"<name>_lengths"`` entries.

    Every item of a batch must have the same structure (same keys, same tuple length); an
    item that differs is named by its index.

    Args:
        batch_first: padded tensors are ``(B, T, ...)`` if True, else ``(T, B, ...)`` (the
            default, as rnnkit's layers and ``torch.nn.utils.rnn.pad_sequence``).
        padding_value: fill for padded steps of the inputs.
        target_padding_value: fill for padded targets (e.g. -100, ignored by cross_entropy).
        pad_targets: "auto", True (pad every tensor element) or False (stack them).
    """

    def __init__(self, batch_first: bool = False, padding_value: float = 0.0,
                 target_padding_value: float = 0.0, pad_targets: bool | str = "auto") -> None:
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {type(batch_first).__name__}")
        self.batch_first = batch_first
        self.padding_value = padding_value
        self.target_padding_value = target_padding_value
        if pad_targets not in (True, False, "auto"):
            raise ValueError(f"pad_targets must be True, False or 'auto', got {pad_targets!r}")
        self.pad_targets = pad_targets

    def _pad(self, items: Sequence[Any], value: float, what: str) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
        try:
            return pad_sequences(items, self.batch_first, value)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{what}: {e}") from None

    def __call__(self, batch: Sequence[Any]) -> Any:
        if not len(batch):
            raise ValueError("cannot collate an empty batch")
        first = batch[0]
        if isinstance(first, Mapping):
            for i, b in enumerate(batch):
                if not isinstance(b, Mapping) or set(b) != set(first):
                    got = sorted(b) if isinstance(b, Mapping) else type(b).__name__
                    raise ValueError(f"sample {i} has keys {got}, sample 0 has {sorted(first)}; "
                                     "every sample needs the same keys")
            out: dict[str, torch.Tensor] = {}
            for key in first:
                out[key], out[f"{key}_lengths"] = self._pad(
                    [b[key] for b in batch], self.padding_value, f"key {key!r}")
            return out
        if isinstance(first, (tuple, list)):
            for i, b in enumerate(batch):
                if not isinstance(b, (tuple, list)) or len(b) != len(first):
                    got = (f"{len(b)} elements" if isinstance(b, (tuple, list))
                           else f"a {type(b).__name__}")
                    raise ValueError(f"sample {i} has {got}, sample 0 has {len(first)} "
                                     "elements; every sample needs the same structure")
            columns = list(zip(*batch, strict=True))
            padded, lengths = self._pad(columns[0], self.padding_value, "element 0")
            rest = []
            for k, col in enumerate(columns[1:], start=1):
                tensors = [torch.as_tensor(c) for c in col]
                pad = self.pad_targets
                if pad == "auto":
                    # equal lengths pad and stack alike, so matching the time axis is enough
                    pad = all(t.dim() >= 1 and len(t) == int(n)
                              for t, n in zip(tensors, lengths, strict=True))
                if pad:
                    rest.append(self._pad(tensors, self.target_padding_value, f"element {k}")[0])
                else:
                    for i, t in enumerate(tensors):
                        if t.shape != tensors[0].shape:
                            raise ValueError(
                                f"element {k} of sample {i} has shape {tuple(t.shape)}, sample "
                                f"0's has {tuple(tensors[0].shape)}; targets that are not "
                                "per-step must have one shape to be stacked")
                    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
                    rest.append(torch.stack([t.to(dtype) for t in tensors]))
            return (padded, lengths, *rest)
        return self._pad(batch, self.padding_value, "sequences")


#: The default collate: time-major ``(T, B, ...)`` like rnnkit's layers, zero padding.
pad_collate = PadCollate()


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded steps when ``batches`` (lists of indices) are padded to their longest."""
    lengths = np.asarray(lengths)
    total = sum(len(b) * int(lengths[list(b)].max()) for b in batches if len(b))
    return 1.0 - float(sum(int(lengths[list(b)].sum()) for b in batches)) / max(total, 1)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices with similar lengths: less padding, fewer wasted FLOPs.

    Each epoch shuffles the indices, cuts them into pools of ``batch_size * bucket_multiplier``,
    sorts each pool by length, cuts it into batches and shuffles the batches, so batches are
    uniform in length but still random. Pass it as ``DataLoader(..., batch_sampler=sampler)``.

    Args:
        lengths: length of every item.
        batch_size: items per batch.
        bucket_multiplier: batches per sorting pool (larger: less padding, less randomness).
        shuffle: False sorts the whole dataset by length, deterministic.
        drop_last: drop a final batch smaller than ``batch_size``.
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, bucket_multiplier: int = 50,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0) -> None:
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.detach().cpu().numpy()
        raw = np.asarray(lengths)
        if raw.ndim != 1 or not len(raw):
            raise ValueError("lengths must be a non-empty 1-D list of item lengths")
        if raw.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {raw.dtype} (a float length "
                            "would be truncated)")
        if raw.min() < 0:
            i = int(np.argmin(raw))
            raise ValueError(f"lengths must be >= 0, got lengths[{i}] = {int(raw[i])}")
        self.lengths = raw.astype(np.int64)
        self.batch_size = int_arg("batch_size", batch_size)
        self.bucket_multiplier = int_arg("bucket_multiplier", bucket_multiplier)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int_arg("seed", seed, minimum=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int_arg("epoch", epoch, minimum=0)

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            out = [order[i: i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        else:
            rng = np.random.default_rng(self.seed + self.epoch)
            perm = rng.permutation(n)
            pool = self.batch_size * self.bucket_multiplier
            out = []
            for start in range(0, n, pool):
                idx = perm[start: start + pool]
                idx = idx[np.argsort(self.lengths[idx], kind="stable")]
                out += [idx[i: i + self.batch_size].tolist()
                        for i in range(0, len(idx), self.batch_size)]
            rng.shuffle(out)
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        if self.drop_last:
            n = len(self.lengths)
            if not self.shuffle:
                return n // self.batch_size
            pool = self.batch_size * self.bucket_multiplier
            full, rest = divmod(n, pool)
            return full * self.bucket_multiplier + rest // self.batch_size
        if not self.shuffle:
            return -(-len(self.lengths) // self.batch_size)
        pool = self.batch_size * self.bucket_multiplier
        full, rest = divmod(len(self.lengths), pool)
        return full * self.bucket_multiplier + -(-rest // self.batch_size)
