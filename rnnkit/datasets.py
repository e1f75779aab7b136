"""Built-in and locally generated data sets (never downloaded).

* :func:`airline` - monthly international airline passengers 1949-1960 (Box & Jenkins),
  144 values, shipped inside the package.
* :func:`mnist1d` - MNIST-1D, generated locally by the ``mnist1d`` package
  (``pip install rnnkit[data]``).
* :func:`fashion_mnist` / :func:`mnist` - IDX files found on disk (Debian's
  ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``).

Example:
    >>> series = airline()
    >>> len(series), str(series.dates[0]), float(series.values[0, 0])
    (144, '1949-01', 112.0)
"""

from __future__ import annotations

import os
import random
from importlib import resources
from typing import Any

import numpy as np

from rnnkit.data.idx import FASHION_MNIST_DIR, IDXSequenceDataset
from rnnkit.data.timeseries import TimeSeries

__all__ = ["airline", "fashion_mnist", "mnist", "mnist1d"]


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


def mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
            **overrides: Any) -> dict[str, np.ndarray]:
    """MNIST-1D generated locally with the ``mnist1d`` package (never downloaded).

    Returns a dict with ``x (N_train, 40)``, ``y (N_train,)``, ``x_test``, ``y_test``
    (float32 / int64) and ``t`` (the 40 sample positions). Read ``x`` as 40 steps of one
    feature: ``x[..., None]``. ``overrides`` set other generator arguments
    (``final_seq_length``, ``iid_noise_scale``, ``shuffle_seq``, ...).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("rnnkit.datasets.mnist1d needs the mnist1d package: "
                          "pip install rnnkit[data]") from e
    args = get_dataset_args()
    unknown = [k for k in overrides if not hasattr(args, k)]
    if unknown:
        raise TypeError(f"unknown mnist1d argument {unknown[0]!r}")
    args.num_samples, args.train_split, args.seed = int(num_samples), float(train_split), int(seed)
    for k, v in overrides.items():
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
            "y_test": data["y_test"].astype(np.int64), "t": np.asarray(data["t"])}


def fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                  **kwargs: Any) -> IDXSequenceDataset:
    """Fashion-MNIST as sequences of rows (28 steps x 28 features) from IDX files in ``root``
    (default: ``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``)."""
    root = FASHION_MNIST_DIR if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Fashion-MNIST not found at {root}: install the Debian package "
                                "dataset-fashion-mnist or pass root= a folder with the IDX files")
    return IDXSequenceDataset.from_dir(root, split, **kwargs)


def mnist(root: str | os.PathLike, split: str = "train", **kwargs: Any) -> IDXSequenceDataset:
    """MNIST as sequences of rows from the IDX files in ``root`` (never downloaded)."""
    return IDXSequenceDataset.from_dir(root, split, **kwargs)
