"""Labelled sequences of one length: the one type every rnnkit dataset of samples returns.

Symbols: ``N`` samples, ``T`` steps, ``F`` features per step.

Item ``i`` is ``(x (T, F) float32, y int64)`` (just ``x`` when there are no labels). A
``DataLoader`` with its default collate stacks items batch-major: ``x (B, T, F)``, ``y (B,)``;
give the layer ``batch_first=True`` (rnnkit's layers default to time-major, like torch).

Example:
    >>> import torch
    >>> ds = LabeledSequences(torch.zeros(4, 10, 3), torch.tensor([0, 1, 2, 1]))
    >>> x, y = ds[1]
    >>> tuple(x.shape), int(y), ds.steps, ds.features, ds.num_classes
    ((10, 3), 1, 10, 3, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["LabeledSequences"]


def _class_indices(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """int64 class indices; float labels must be whole numbers (NaN would cast to -2**63)."""
    if labels.dtype.kind in "iu":
        out = labels.astype(np.int64)
    elif labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} must be whole class indices, got {name}[{i}] = "
                             f"{labels[i]}")
        out = labels.astype(np.int64)
    else:
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if len(out) and out.min() < 0:
        i = int(np.argmin(out))
        raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {out[i]}")
    return out


def _as_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as e:
            raise ValueError(f"{name} must be a rectangular array: {e}") from None
    raise TypeError(f"{name} must be a NumPy array, a tensor or a list, got "
                    f"{type(value).__name__}")


class LabeledSequences(torch.utils.data.Dataset):
    """``N`` sequences ``x (N, T, F)`` with class labels ``y (N,)`` (or None).

    Args:
        x: ``(N, T, F)`` numbers (array, tensor or list); stored as float32.
        y: ``(N,)`` class indices (ints, or floats that are whole numbers), or None.
    """

    def __init__(self, x: Any, y: Any = None) -> None:
        xs = _as_numpy("x", x)
        if xs.dtype.kind not in "biuf":
            raise TypeError(f"x must hold numbers, got dtype {xs.dtype}")
        if xs.ndim != 3:
            raise ValueError(f"x must be (N, T, F), got shape {xs.shape}")
        self.x = torch.as_tensor(np.ascontiguousarray(xs)).to(torch.float32)  # (N, T, F)
        self.y: torch.Tensor | None = None
        if y is not None:
            ys = _as_numpy("y", y)
            if ys.ndim != 1 or len(ys) != len(xs):
                raise ValueError(f"y must be ({len(xs)},) to match x, got shape {ys.shape}")
            self.y = torch.from_numpy(_class_indices(ys, "y"))  # (N,)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if self.y is None:
            return self.x[i]
        return self.x[i], self.y[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All samples at once: ``x (N, T, F)``, ``y (N,)``."""
        return self.x, self.y

    @property
    def steps(self) -> int:
        return int(self.x.shape[1])

    @property
    def features(self) -> int:
        return int(self.x.shape[2])

    @property
    def num_classes(self) -> int:
        """``max(y) + 1`` (0 without labels)."""
        return 0 if self.y is None or not len(self.y) else int(self.y.max()) + 1
