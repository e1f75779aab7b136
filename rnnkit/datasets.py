"""Built-in and locally generated data sets (never downloaded).

One convention for all of them: the data sets of labelled samples take ``root`` (where the files
are, for those read from disk) then ``split`` (``"train"`` or ``"test"``; pass both by keyword if
you like) and return a :class:`~rnnkit.data.labeled.LabeledSequences`, a torch ``Dataset`` whose
item is ``(x (T, F) float32, y int64)``; a ``DataLoader`` stacks them batch-major
``(B, T, F)``. The one series, :func:`airline`, is a :class:`~rnnkit.data.timeseries.TimeSeries`:
a single series has no samples until you choose the window, which
:func:`~rnnkit.data.timeseries.prepare_windows` does (its splits are Datasets of ``(x, y)``).

* :func:`airline` - monthly international airline passengers 1949-1960 (Box & Jenkins),
  144 values, shipped inside the package.
* :func:`mnist1d` - MNIST-1D, generated locally by the ``mnist1d`` package
  (``pip install rnnkit[data]``): 40 steps of 1 feature.
* :func:`fashion_mnist` / :func:`mnist` - IDX files found on disk (Debian's
  ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``): 28 steps
  (rows) of 28 features.

Example:
    >>> series = airline()
    >>> len(series), str(series.dates[0]), float(series.values[0, 0])
    (144, '1949-01', 112.0)
"""

from __future__ import annotations

import functools
import os
import random
import warnings
from importlib import resources
from typing import Any

import numpy as np

from rnnkit.data.idx import FASHION_MNIST_DIR, IDXSequenceDataset
from rnnkit.data.labeled import LabeledSequences
from rnnkit.data.timeseries import TimeSeries

__all__ = ["airline", "fashion_mnist", "mnist", "mnist1d"]

_SPLITS = ("train", "test")


def _check_split(split: Any) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def airline(as_frame: bool = False) -> Any:
    """The airline passengers series: 144 monthly totals (thousands), January 1949 to
    December 1960, as a :class:`~rnnkit.data.timeseries.TimeSeries` with ``datetime64[M]``
    dates (or a pandas DataFrame with ``as_frame=True``)."""
    with resources.as_file(resources.files("rnnkit.data") / "airline.csv") as path:
        series = TimeSeries.from_csv(path, date_column="Date", value_columns=["Passengers"],
                                     name="airline")
    if len(series) != 144:
        raise RuntimeError(f"the shipped airline.csv has {len(series)} rows, expected 144; the "
                           "package data is damaged, reinstall rnnkit")
    return series.to_dataframe() if as_frame else series


def mnist1d(split: str = "train", *, num_samples: int = 5000, train_split: float = 0.8,
            seed: int = 42, **overrides: Any) -> LabeledSequences:
    """MNIST-1D generated locally with the ``mnist1d`` package (never downloaded).

    Returns ``split``'s samples as :class:`~rnnkit.data.labeled.LabeledSequences`: item
    ``(x (40, 1) float32, y int64)``. The two splits come from one generated set of
    ``num_samples`` (``train_split`` of them for training), so the same arguments give
    disjoint train and test parts; the set is generated once per process for given arguments.
    ``overrides`` set other generator arguments (``final_seq_length``, ``iid_noise_scale``,
    ``shuffle_seq``, ...).
    """
    _check_split(split)
    key = (int(num_samples), float(train_split), int(seed), tuple(sorted(overrides.items())))
    try:
        data = _mnist1d_cached(*key)
    except TypeError as e:  # an unhashable override (a list): generate without the cache
        if "unhashable" not in str(e):
            raise
        data = _mnist1d_arrays(*key)
    suffix = "" if split == "train" else "_test"
    # copies: the cached arrays must not change when a caller edits the dataset in place
    return LabeledSequences(data["x" + suffix][:, :, None].copy(), data["y" + suffix].copy())


def _mnist1d_arrays(num_samples: int, train_split: float, seed: int,
                    overrides: tuple[tuple[str, Any], ...]) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("rnnkit.datasets.mnist1d needs the mnist1d package: "
                          "pip install rnnkit[data]") from e
    args = get_dataset_args()
    unknown = [k for k, _ in overrides if not hasattr(args, k)]
    if unknown:
        raise TypeError(f"unknown mnist1d argument {unknown[0]!r}")
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    for k, v in overrides:
        setattr(args, k, v)
    # the generator reseeds the global `random` and `np.random` states: restore the caller's
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32),
            "y_test": data["y_test"].astype(np.int64)}


_mnist1d_cached = functools.lru_cache(maxsize=4)(_mnist1d_arrays)


def fashion_mnist(root: str | os.PathLike | None = None, split: str = "train",
                  **kwargs: Any) -> IDXSequenceDataset:
    """Fashion-MNIST as sequences of rows (28 steps x 28 features) from IDX files in ``root``
    (default: ``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``).

    The arguments are ``(root, split)`` like :func:`mnist`; the old order
    ``fashion_mnist("test")`` / ``fashion_mnist("test", root)`` still works with a
    ``FutureWarning``.
    """
    if root in _SPLITS and (split == "train" or split not in _SPLITS):
        warnings.warn("fashion_mnist(split, root) is the old argument order; call "
                      "fashion_mnist(root, split) or pass split= by keyword",
                      FutureWarning, stacklevel=2)
        root, split = (None if split == "train" else split), root
    _check_split(split)
    root = FASHION_MNIST_DIR if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Fashion-MNIST not found at {root}: install the Debian package "
                                "dataset-fashion-mnist or pass root= a folder with the IDX files")
    return IDXSequenceDataset.from_dir(root, split, **kwargs)


def mnist(root: str | os.PathLike, split: str = "train", **kwargs: Any) -> IDXSequenceDataset:
    """MNIST as sequences of rows (28 steps x 28 features) from the IDX files in ``root``
    (never downloaded)."""
    _check_split(split)
    return IDXSequenceDataset.from_dir(root, split, **kwargs)
