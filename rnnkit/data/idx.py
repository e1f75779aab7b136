"""IDX files (MNIST, Fashion-MNIST): a checked reader and images as sequences of rows.

An IDX file is a 4-byte magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 dimensions,
then the values in C order, big-endian. Files may be gzip-compressed (detected by content).

An image of ``R x C`` pixels is read by a recurrent network as ``R`` steps of ``C`` features
(``[28 steps, 28 features]`` for MNIST)::

    ds = IDXSequenceDataset("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    x, label = ds[0]                  # x (28, 28) float32 in [0, 1]

Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a-idx3-ubyte")
    >>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    >>> read_idx(path).shape
    (2, 3, 4)
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from rnnkit._files import atomic_write_bytes
from rnnkit.data.labeled import LabeledSequences, _as_numpy, _class_indices

__all__ = [
    "FASHION_MNIST_DIR",
    "IDXFormatError",
    "IDXSequenceDataset",
    "find_idx_pair",
    "read_idx",
    "write_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# type code -> big-endian dtype (the IDX spec's six types)
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}


class IDXFormatError(ValueError):
    """A file that is not a valid IDX file; the message names the file and the problem."""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise IDXFormatError(f"{path}: the gzip stream is truncated or corrupt ({e})"
                                 ) from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a native-endian NumPy array of its shape.

    Raises:
        IDXFormatError: wrong magic number, unknown type code, a header shorter than its
            dimensions, a data section shorter (truncated) or longer than the dimensions say.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IDXFormatError(f"{path}: {len(raw)} bytes is too short for the 4-byte IDX magic "
                             "number (file truncated?)")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _TYPES:
        raise IDXFormatError(
            f"{path}: bad magic number 0x{raw[:4].hex()}; an IDX file starts with 00 00, a type "
            f"code ({', '.join(f'{k:02x}' for k in _TYPES)}) and the number of dimensions")
    if ndim == 0:
        raise IDXFormatError(f"{path}: corrupt header: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: corrupt header: {ndim} dimensions need {header} header "
                             f"bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_TYPES[code])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: 4 x 65536 must not wrap to 0
    have = len(raw) - header
    if have < expected:
        raise IDXFormatError(f"{path}: truncated: shape {shape} of {dtype.name} needs "
                             f"{expected} data bytes, the file has {have}")
    if have > expected:
        raise IDXFormatError(f"{path}: corrupt header: shape {shape} of {dtype.name} accounts for "
                             f"{expected} data bytes, the file has {have} ({have - expected} "
                             "extra)")
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX, atomically; gzip when ``compress`` or the name ends in ``.gz``."""
    path = os.fspath(path)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    native = a.dtype.newbyteorder("=")
    if native not in _CODES:
        raise TypeError(f"IDX holds uint8, int8, int16, int32, float32 or float64, got {a.dtype}")
    if a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {a.ndim}")
    body = (bytes([0, 0, _CODES[native], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            + np.ascontiguousarray(a, dtype=_TYPES[_CODES[native]]).tobytes())
    if compress or (compress is None and path.endswith(".gz")):
        body = gzip.compress(body, mtime=0)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    atomic_write_bytes(path, body)


def find_idx_pair(root: str | os.PathLike, split: str = "train") -> tuple[str, str]:
    """Paths of ``(images, labels)`` for ``split`` ("train" or "test") under ``root``.

    Accepts the usual names, gzipped or not: ``train-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte[.gz]``, also with ``.`` instead of ``-`` before ``idx``.
    """
    root = os.fspath(root)
    prefixes = {"train": ["train"], "test": ["t10k", "test"]}.get(split)
    if prefixes is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = []
    for kind, idx in (("images", "idx3"), ("labels", "idx1")):
        candidates = [f"{p}-{kind}{sep}{idx}-ubyte{ext}" for p in prefixes for sep in "-."
                      for ext in (".gz", "")]
        hit = next((os.path.join(root, c) for c in candidates
                    if os.path.isfile(os.path.join(root, c))), None)
        if hit is None:
            raise FileNotFoundError(f"no {split} {kind} IDX file in {root} (looked for "
                                    f"{candidates[0]} and similar names)")
        found.append(hit)
    return found[0], found[1]


def _array_or_file(name: str, value: object) -> np.ndarray:
    """An array from an IDX path, a NumPy array, a tensor or a list; else a TypeError."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return read_idx(value)
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        return _as_numpy(name, value)
    raise TypeError(f"{name} must be an IDX file path, a NumPy array, a tensor or a list, got "
                    f"{type(value).__name__}")


class IDXSequenceDataset(LabeledSequences):
    """Images as sequences of rows: item ``i`` is ``(x (R, C) float32, label int64)``.

    A :class:`~rnnkit.data.labeled.LabeledSequences` (``.x (N, R, C)``, ``.y (N,)``; also
    ``.images`` / ``.labels``).

    Args:
        images: an IDX file of shape ``(N, R, C)`` (or an array or tensor).
        labels: an IDX file of shape ``(N,)`` (or an array, tensor or list), or None for
            images only.
        normalize: divide by 255 so pixels are in ``[0, 1]`` (uint8 images).
        column_major: read columns as steps instead (``x = image.T``).

    Example:
        >>> ds = IDXSequenceDataset(np.zeros((2, 28, 28), np.uint8), np.array([3, 4]))
        >>> x, y = ds[1]
        >>> tuple(x.shape), int(y)
        ((28, 28), 4)
    """

    def __init__(self, images: str | os.PathLike | np.ndarray | torch.Tensor,
                 labels: str | os.PathLike | np.ndarray | torch.Tensor | Sequence[int] | None
                 = None, normalize: bool = True, column_major: bool = False) -> None:
        imgs = _array_or_file("images", images)
        if imgs.ndim != 3:
            raise ValueError(f"images must be (N, rows, cols), got shape {imgs.shape}")
        lab = None
        if labels is not None:
            lab = _array_or_file("labels", labels)
            if lab.ndim != 1 or len(lab) != len(imgs):
                raise ValueError(f"labels must be ({len(imgs)},) to match the images, got shape "
                                 f"{lab.shape}")
            lab = _class_indices(lab, "labels")
        super().__init__(imgs, lab)
        if normalize and imgs.dtype == np.uint8:
            self.x /= 255.0
        if column_major:
            self.x = self.x.transpose(1, 2).contiguous()  # (N, C, R)

    @classmethod
    def from_dir(cls, root: str | os.PathLike, split: str = "train",
                 **kwargs: bool) -> IDXSequenceDataset:
        """Find ``split``'s images and labels under ``root`` (see :func:`find_idx_pair`)."""
        images, labels = find_idx_pair(root, split)
        return cls(images, labels, **kwargs)

    @property
    def images(self) -> torch.Tensor:
        """``(N, R, C)`` float32 (the same tensor as ``x``)."""
        return self.x

    @property
    def labels(self) -> torch.Tensor | None:
        """``(N,)`` int64 (the same tensor as ``y``)."""
        return self.y
