"""Time series: windows, chronological splits, scalers fitted on training data, calendar features.

Symbols: ``N`` observations, ``F`` value columns, ``L`` = ``look_back``, ``H`` = ``horizon``,
``C`` calendar columns.

A window whose first target is at row ``t`` holds inputs ``values[t - L : t]`` and targets
``values[t : t + H]``; ``stride`` steps ``t``. Splits are chronological and decided by the
*target* rows, so no validation or test value is ever a training target, and the scaler is fitted
on the training rows only (``values[:n_train]``)::

    series = rnnkit.datasets.airline()
    data = prepare_windows(series, look_back=12, horizon=1, scaler="log+minmax")
    x, y = data.train[0]              # (12, 1), (1, 1)
    prediction = data.scaler.inverse_transform(model(x))   # back in passengers

Example:
    >>> import numpy as np
    >>> x, y, t = make_windows(np.arange(10.0), look_back=3, horizon=2, stride=2)
    >>> x.shape, y.shape, t.tolist()
    ((3, 3, 1), (3, 2, 1), [3, 5, 7])
    >>> x[0].ravel().tolist(), y[0].ravel().tolist()
    ([0.0, 1.0, 2.0], [3.0, 4.0])
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "LogScaler",
    "MinMaxScaler",
    "Scaler",
    "ScalerChain",
    "StandardScaler",
    "TimeSeries",
    "WindowDataset",
    "WindowedSplits",
    "calendar_features",
    "chronological_split",
    "make_scaler",
    "make_windows",
    "prepare_windows",
]

ArrayLike = Any


def _as_2d(values: ArrayLike, name: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]  # (N, 1)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, F), got shape {a.shape}")
    return a


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------- windows
def make_windows(
    values: ArrayLike,
    look_back: int,
    horizon: int = 1,
    stride: int = 1,
    target_columns: Sequence[int] | None = None,
    inputs: ArrayLike | None = None,
    first_target: int | None = None,
    last_target: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows of ``look_back`` inputs and ``horizon`` targets.

    Args:
        values: ``(N,)`` or ``(N, F)`` series.
        look_back: ``L`` input steps per window.
        horizon: ``H`` target steps per window (the steps right after the inputs).
        stride: steps between the first targets of consecutive windows.
        target_columns: columns of ``values`` to predict (default: all).
        inputs: ``(N, F_in)`` input features if they differ from ``values`` (e.g. values with
            calendar columns appended); default ``values``.
        first_target, last_target: only windows whose targets all lie in rows
            ``[first_target, last_target)`` (default ``[L, N)``); inputs may reach back before
            ``first_target`` (they are the known past).

    Returns:
        ``x (W, L, F_in)``, ``y (W, H, len(target_columns))`` and ``t (W,)``, the row of each
        window's first target: ``y[i] == values[t[i] : t[i] + H]`` and
        ``x[i] == inputs[t[i] - L : t[i]]``.
    """
    vals = _as_2d(values)
    n = len(vals)
    look_back = _positive_int("look_back", look_back)
    horizon = _positive_int("horizon", horizon)
    stride = _positive_int("stride", stride)
    feats = vals if inputs is None else _as_2d(inputs, "inputs")
    if len(feats) != n:
        raise ValueError(f"inputs has {len(feats)} rows but values has {n}")
    cols = list(range(vals.shape[1])) if target_columns is None else list(target_columns)
    for c in cols:
        if not -vals.shape[1] <= c < vals.shape[1]:
            raise IndexError(f"target column {c} out of range for {vals.shape[1]} columns")
    lo = look_back if first_target is None else max(look_back, int(first_target))
    hi = n if last_target is None else min(n, int(last_target))
    starts = np.arange(lo, hi - horizon + 1, stride, dtype=np.int64)  # (W,)
    if len(starts) == 0:
        raise ValueError(
            f"no window fits: look_back={look_back} + horizon={horizon} needs targets in rows "
            f"[{lo}, {hi}) of a series of {n} rows")
    x_idx = starts[:, None] + np.arange(-look_back, 0)[None, :]  # (W, L)
    y_idx = starts[:, None] + np.arange(horizon)[None, :]  # (W, H)
    x = feats[x_idx]  # (W, L, F_in)
    y = vals[:, cols][y_idx]  # (W, H, F_t)
    return x, y, starts


def chronological_split(n: int, train: float = 0.7, val: float = 0.15,
                        test: float | None = None) -> tuple[slice, slice, slice]:
    """Row slices ``(train, val, test)`` in time order; ``test`` defaults to the rest.

    Fractions of ``n`` are rounded down for train and val.

    Example:
        >>> chronological_split(144, 0.7, 0.15)
        (slice(0, 100, None), slice(100, 121, None), slice(121, 144, None))
    """
    n = _positive_int("n", n)
    test = 1.0 - train - val if test is None else test
    for name, f in (("train", train), ("val", val), ("test", test)):
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"split fraction {name}={f} must be in [0, 1]")
    if train + val + test > 1.0 + 1e-9:
        raise ValueError(f"split fractions sum to {train + val + test:.3f} > 1")
    n_train = int(n * train)
    n_val = int(n * val)
    n_test = n - n_train - n_val if abs(train + val + test - 1.0) < 1e-9 else int(n * test)
    if n_train < 1:
        raise ValueError(f"train fraction {train} of {n} rows leaves no training rows")
    return (slice(0, n_train), slice(n_train, n_train + n_val),
            slice(n_train + n_val, n_train + n_val + n_test))


# ----------------------------------------------------------------------------- scalers
class Scaler:
    """Base class: per-column transform fitted on training data, inverted on predictions.

    Works on NumPy arrays and torch tensors whose last axis is the feature axis. Use
    ``columns`` in :meth:`transform`/:meth:`inverse_transform` when the array holds only some
    of the fitted columns (e.g. predictions of the target column).
    """

    def fit(self, values: ArrayLike) -> Scaler:
        raise NotImplementedError

    def _forward(self, x: Any, p: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _inverse(self, y: Any, p: dict[str, Any]) -> Any:
        raise NotImplementedError

    _param_names: tuple[str, ...] = ()

    @property
    def fitted(self) -> bool:
        return all(getattr(self, n, None) is not None for n in self._param_names)

    def _params(self, like: Any, columns: Sequence[int] | None) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() on the training "
                               "part first")
        out = {}
        for n in self._param_names:
            p = getattr(self, n)
            if columns is not None:
                p = p[list(columns)]
            if isinstance(like, torch.Tensor):
                p = torch.as_tensor(p, dtype=like.dtype if like.is_floating_point()
                                    else torch.float32, device=like.device)
            out[n] = p
        width = len(getattr(self, self._param_names[0])) if columns is None else len(columns)
        if like.shape[-1] != width:
            raise ValueError(f"{type(self).__name__} was fitted on {width} columns, got an array "
                             f"with {like.shape[-1]} on its last axis (pass columns=...)")
        return out

    def transform(self, values: ArrayLike, columns: Sequence[int] | None = None) -> Any:
        x = values if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
        return self._forward(x, self._params(x, columns))

    def inverse_transform(self, values: ArrayLike, columns: Sequence[int] | None = None) -> Any:
        y = values if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
        return self._inverse(y, self._params(y, columns))

    def fit_transform(self, values: ArrayLike) -> Any:
        return self.fit(values).transform(values)

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__,
                **{n: np.asarray(getattr(self, n)).tolist() for n in self._param_names}}


class MinMaxScaler(Scaler):
    r"""Scale each column to ``feature_range``: :math:`y = a + (x - \min)(b - a)/(\max - \min)`.

    A constant column maps to ``a``.

    Example:
        >>> s = MinMaxScaler().fit([[1.0], [3.0]])
        >>> s.transform([[2.0]]).tolist(), s.inverse_transform([[1.0]]).tolist()
        ([[0.5]], [[3.0]])
    """

    _param_names = ("data_min", "data_range")

    def __init__(self, feature_range: tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = feature_range
        if not hi > lo:
            raise ValueError(f"feature_range must be (low, high) with low < high, "
                             f"got {feature_range}")
        self.feature_range = (float(lo), float(hi))
        self.data_min: np.ndarray | None = None
        self.data_range: np.ndarray | None = None

    def fit(self, values: ArrayLike) -> MinMaxScaler:
        v = _as_2d(values)
        if not np.isfinite(v).all():
            raise ValueError("MinMaxScaler.fit got NaN or inf values")
        self.data_min = v.min(0)
        rng = v.max(0) - self.data_min
        self.data_range = np.where(rng > 0, rng, 1.0)  # constant columns: avoid 0/0
        return self

    def _forward(self, x: Any, p: dict[str, Any]) -> Any:
        lo, hi = self.feature_range
        return lo + (x - p["data_min"]) / p["data_range"] * (hi - lo)

    def _inverse(self, y: Any, p: dict[str, Any]) -> Any:
        lo, hi = self.feature_range
        return (y - lo) / (hi - lo) * p["data_range"] + p["data_min"]


class StandardScaler(Scaler):
    r"""Zero mean, unit variance per column: :math:`y = (x - \mu) / \sigma` (population std).

    Example:
        >>> s = StandardScaler().fit([[1.0], [3.0]])
        >>> s.transform([[3.0]]).tolist()
        [[1.0]]
    """

    _param_names = ("mean", "scale")

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, values: ArrayLike) -> StandardScaler:
        v = _as_2d(values)
        if not np.isfinite(v).all():
            raise ValueError("StandardScaler.fit got NaN or inf values")
        self.mean = v.mean(0)
        std = v.std(0)
        self.scale = np.where(std > 0, std, 1.0)
        return self

    def _forward(self, x: Any, p: dict[str, Any]) -> Any:
        return (x - p["mean"]) / p["scale"]

    def _inverse(self, y: Any, p: dict[str, Any]) -> Any:
        return y * p["scale"] + p["mean"]


class LogScaler(Scaler):
    r"""Natural log with an offset: :math:`y = \log(x + c)`; stabilises growing variance.

    Example:
        >>> s = LogScaler().fit([[1.0], [100.0]])
        >>> round(float(s.inverse_transform(s.transform([[50.0]]))[0, 0]), 6)
        50.0
    """

    _param_names = ("offset_",)

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = float(offset)
        self.offset_: np.ndarray | None = None

    def fit(self, values: ArrayLike) -> LogScaler:
        v = _as_2d(values)
        if (v + self.offset <= 0).any():
            raise ValueError(f"LogScaler needs values + offset > 0; the training data has a "
                             f"minimum of {v.min()} with offset={self.offset}")
        self.offset_ = np.full(v.shape[1], self.offset)
        return self

    def _forward(self, x: Any, p: dict[str, Any]) -> Any:
        shifted = x + p["offset_"]
        if bool((shifted <= 0).any()):
            raise ValueError("LogScaler.transform got values <= -offset; log is undefined there")
        return torch.log(shifted) if isinstance(x, torch.Tensor) else np.log(shifted)

    def _inverse(self, y: Any, p: dict[str, Any]) -> Any:
        return (torch.exp(y) if isinstance(y, torch.Tensor) else np.exp(y)) - p["offset_"]


class ScalerChain(Scaler):
    """Scalers applied in order (fitted in order on the training data), inverted in reverse.

    Example:
        >>> s = ScalerChain([LogScaler(), MinMaxScaler()]).fit([[1.0], [np.e ** 2]])
        >>> s.transform([[np.e]]).round(6).tolist()
        [[0.5]]
    """

    def __init__(self, scalers: Sequence[Scaler]) -> None:
        if not scalers:
            raise ValueError("ScalerChain needs at least one scaler")
        self.scalers = list(scalers)

    @property
    def fitted(self) -> bool:
        return all(s.fitted for s in self.scalers)

    def fit(self, values: ArrayLike) -> ScalerChain:
        v = _as_2d(values)
        for s in self.scalers:
            v = s.fit(v).transform(v)
        return self

    def transform(self, values: ArrayLike, columns: Sequence[int] | None = None) -> Any:
        for s in self.scalers:
            values = s.transform(values, columns)
        return values

    def inverse_transform(self, values: ArrayLike, columns: Sequence[int] | None = None) -> Any:
        for s in reversed(self.scalers):
            values = s.inverse_transform(values, columns)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"type": "ScalerChain", "scalers": [s.state_dict() for s in self.scalers]}


_SCALERS = {"minmax": MinMaxScaler, "standard": StandardScaler, "log": LogScaler}


def make_scaler(spec: str | Scaler | Sequence[Any] | None) -> Scaler | None:
    """A scaler from a name (``"minmax"``, ``"standard"``, ``"log"``, ``"log+minmax"``), an
    instance, a list of those, or ``None``."""
    if spec is None or isinstance(spec, Scaler):
        return spec
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split("+")]
        unknown = [s for s in names if s not in _SCALERS]
        if unknown:
            raise ValueError(f"unknown scaler {unknown[0]!r}; choose from "
                             f"{', '.join(_SCALERS)} or combine with '+' (e.g. 'log+minmax')")
        scalers = [_SCALERS[s]() for s in names]
        return scalers[0] if len(scalers) == 1 else ScalerChain(scalers)
    return ScalerChain([make_scaler(s) for s in spec])


# ----------------------------------------------------------------------------- calendar
def _parse_dates(dates: ArrayLike) -> np.ndarray:
    if hasattr(dates, "to_numpy"):  # pandas Series / Index
        dates = dates.to_numpy()
    a = np.asarray(dates)
    if np.issubdtype(a.dtype, np.datetime64):
        return a
    try:
        return np.array([np.datetime64(str(d).strip()) for d in a])
    except ValueError as e:
        raise ValueError(f"cannot parse dates such as {str(a[0])!r}: {e}; use ISO format "
                         "(1949-01, 1949-01-31, 1949-01-31T12:00)") from None


def calendar_features(dates: ArrayLike, features: Sequence[str] | None = None,
                      encoding: str = "cyclic") -> tuple[np.ndarray, list[str]]:
    r"""Calendar columns from dates: ``month`` (1-12) and ``day_of_week`` (Monday = 0).

    Args:
        dates: ISO strings or ``datetime64`` values.
        features: which to make; default ``month``, plus ``day_of_week`` when the series is
            finer than monthly (median spacing under 28 days).
        encoding: ``"cyclic"`` gives :math:`\sin(2\pi k/P), \cos(2\pi k/P)` pairs, so December
            sits next to January; ``"onehot"`` gives P indicator columns; ``"integer"`` the raw
            number.

    Returns:
        ``(N, C)`` float array and the column names.

    Example:
        >>> f, names = calendar_features(["1949-01", "1949-02"], encoding="integer")
        >>> f.ravel().tolist(), names
        ([1.0, 2.0], ['month'])
    """
    d = _parse_dates(dates)
    if features is None:
        features = ["month"]
        if len(d) > 1:
            step = np.median(np.diff(d.astype("datetime64[s]").astype(np.int64)))
            if step < 28 * 86400:
                features.append("day_of_week")
    periods = {"month": 12, "day_of_week": 7}
    cols, names = [], []
    for feat in features:
        if feat == "month":
            k = d.astype("datetime64[M]").astype(np.int64) % 12  # 0 = January
        elif feat == "day_of_week":
            k = (d.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was Thursday
        else:
            raise ValueError(f"unknown calendar feature {feat!r}; choose month or day_of_week")
        period = periods[feat]
        if encoding == "cyclic":
            angle = 2 * np.pi * k / period
            cols += [np.sin(angle), np.cos(angle)]
            names += [f"{feat}_sin", f"{feat}_cos"]
        elif encoding == "onehot":
            cols += [(k == j).astype(np.float64) for j in range(period)]
            names += [f"{feat}_{j}" for j in range(period)]
        elif encoding == "integer":
            cols.append((k + (1 if feat == "month" else 0)).astype(np.float64))
            names.append(feat)
        else:
            raise ValueError(f"unknown encoding {encoding!r}; choose cyclic, onehot or integer")
    return np.stack(cols, axis=1), names


# ----------------------------------------------------------------------------- the series
@dataclass
class TimeSeries:
    """A univariate or multivariate series with optional dates.

    Attributes:
        values: ``(N, F)`` float64.
        columns: the F column names.
        dates: ``(N,)`` ``datetime64`` or None.

    Example:
        >>> ts = TimeSeries.from_array([1.0, 2.0, 3.0], dates=["2000-01", "2000-02", "2000-03"])
        >>> len(ts), ts.columns, str(ts.dates[-1])
        (3, ['value'], '2000-03')
    """

    values: np.ndarray
    columns: list[str]
    dates: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.values = _as_2d(self.values)
        if len(self.columns) != self.values.shape[1]:
            raise ValueError(f"{len(self.columns)} column names for {self.values.shape[1]} "
                             "columns")
        if self.dates is not None:
            self.dates = _parse_dates(self.dates)
            if len(self.dates) != len(self.values):
                raise ValueError(f"{len(self.dates)} dates for {len(self.values)} rows")

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def from_array(cls, values: ArrayLike, dates: ArrayLike | None = None,
                   columns: Sequence[str] | None = None, name: str = "") -> TimeSeries:
        v = _as_2d(values)
        cols = list(columns) if columns is not None else (
            ["value"] if v.shape[1] == 1 else [f"x{i}" for i in range(v.shape[1])])
        return cls(v, cols, dates, name)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, date_column: str | None = "auto",
                 value_columns: Sequence[str] | None = None, name: str = "") -> TimeSeries:
        """Read a CSV with a header row (no pandas needed).

        ``date_column="auto"`` takes the first column if its first value parses as a date;
        ``None`` means no dates. ``value_columns`` defaults to every other column.
        """
        path = os.fspath(path)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2:
            raise ValueError(f"{path}: needs a header row and at least one data row")
        header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if any(r)]
        for i, r in enumerate(body):
            if len(r) != len(header):
                raise ValueError(f"{path}, line {i + 2}: {len(r)} fields, header has "
                                 f"{len(header)}")
        if date_column == "auto":
            date_column = None
            try:
                np.datetime64(body[0][0].strip())
                date_column = header[0]
            except ValueError:
                pass
        if date_column is not None and date_column not in header:
            raise ValueError(f"{path}: no date column {date_column!r}; columns: {header}")
        if value_columns is None:
            value_columns = [h for h in header if h != date_column]
        missing = [c for c in value_columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}; columns: {header}")
        idx = [header.index(c) for c in value_columns]
        values = np.empty((len(body), len(idx)))
        for i, r in enumerate(body):
            for j, k in enumerate(idx):
                try:
                    values[i, j] = float(r[k])
                except ValueError:
                    raise ValueError(f"{path}, line {i + 2}, column {value_columns[j]!r}: "
                                     f"{r[k]!r} is not a number") from None
        dates = None
        if date_column is not None:
            k = header.index(date_column)
            dates = _parse_dates([r[k] for r in body])
        return cls(values, list(value_columns), dates,
                   name or os.path.splitext(os.path.basename(path))[0])

    @classmethod
    def from_dataframe(cls, df: Any, date_column: str | None = "auto",
                       value_columns: Sequence[str] | None = None, name: str = "") -> TimeSeries:
        """From a pandas DataFrame: dates from ``date_column``, or from a DatetimeIndex."""
        if not hasattr(df, "columns") or not hasattr(df, "to_numpy"):
            raise TypeError(f"from_dataframe needs a pandas DataFrame, got {type(df).__name__}")
        cols = [str(c) for c in df.columns]
        dates = None
        if date_column == "auto":
            date_column = None
            if np.issubdtype(np.asarray(df.index).dtype, np.datetime64):
                dates = np.asarray(df.index)
            else:
                for c in df.columns:
                    if np.issubdtype(np.asarray(df[c]).dtype, np.datetime64):
                        date_column = str(c)
                        break
        if date_column is not None:
            if date_column not in cols:
                raise ValueError(f"no date column {date_column!r}; columns: {cols}")
            dates = np.asarray(df[date_column])
        if value_columns is None:
            value_columns = [c for c in cols if c != date_column]
        missing = [c for c in value_columns if c not in cols]
        if missing:
            raise ValueError(f"no column {missing[0]!r}; columns: {cols}")
        try:
            values = df[list(value_columns)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"value columns {list(value_columns)} must be numeric: {e}") from None
        return cls(values, list(value_columns), dates, name)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame (needs ``pip install rnnkit[data]``)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("TimeSeries.to_dataframe needs pandas: pip install rnnkit[data]"
                              ) from e
        df = pd.DataFrame(self.values, columns=self.columns)
        if self.dates is not None:
            df.insert(0, "date", self.dates)
        return df

    def calendar_features(self, features: Sequence[str] | None = None,
                          encoding: str = "cyclic") -> tuple[np.ndarray, list[str]]:
        if self.dates is None:
            raise ValueError("this series has no dates, so no calendar features")
        return calendar_features(self.dates, features, encoding)


# ----------------------------------------------------------------------------- datasets
class WindowDataset(torch.utils.data.Dataset):
    """``(x (L, F_in), y (H, F_t))`` float32 windows; ``target_rows[i]`` is the source row of
    window ``i``'s first target."""

    def __init__(self, x: np.ndarray, y: np.ndarray, target_rows: np.ndarray) -> None:
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)  # (W, L, F_in)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.float32)  # (W, H, F_t)
        self.target_rows = torch.as_tensor(np.asarray(target_rows), dtype=torch.int64)  # (W,)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All windows at once: ``x (W, L, F_in)``, ``y (W, H, F_t)``."""
        return self.x, self.y


@dataclass
class WindowedSplits:
    """What :func:`prepare_windows` returns."""

    train: WindowDataset
    val: WindowDataset | None
    test: WindowDataset | None
    scaler: Scaler | None
    series: TimeSeries
    rows: tuple[slice, slice, slice]
    input_columns: list[str]
    target_columns: list[int]

    def inverse_transform(self, y: ArrayLike) -> Any:
        """Targets or predictions ``(..., F_t)`` back to the original units."""
        if self.scaler is None:
            return y
        return self.scaler.inverse_transform(y, columns=self.target_columns)


def prepare_windows(
    series: TimeSeries | ArrayLike,
    look_back: int,
    horizon: int = 1,
    stride: int = 1,
    splits: tuple[float, float] | tuple[float, float, float] = (0.7, 0.15, 0.15),
    scaler: str | Scaler | None = "minmax",
    target_columns: Sequence[int] | None = None,
    calendar: bool | Sequence[str] = False,
    calendar_encoding: str = "cyclic",
    context: bool = True,
) -> WindowedSplits:
    """Chronological train/val/test windows with a scaler fitted on the training rows only.

    Args:
        series: a :class:`TimeSeries` or an array ``(N,)``/``(N, F)``.
        splits: ``(train, val)`` or ``(train, val, test)`` fractions of the rows, in time order.
        scaler: name, instance or None; fitted on ``values[:n_train]`` only, then applied to
            every row.
        target_columns: value columns to predict (default all).
        calendar: append calendar features (True, or a list such as ``["month"]``) to the
            inputs; needs dates.
        context: validation/test windows may take inputs from the rows before their split
            (the known past); False keeps inputs inside the split too.
    """
    ts = series if isinstance(series, TimeSeries) else TimeSeries.from_array(series)
    n = len(ts)
    rows = chronological_split(n, *splits)
    scaler = make_scaler(scaler)
    values = ts.values
    if scaler is not None:
        scaler.fit(values[rows[0]])
        values = np.asarray(scaler.transform(values))
    inputs, input_columns = values, list(ts.columns)
    if calendar:
        feats, names = ts.calendar_features(None if calendar is True else list(calendar),
                                            calendar_encoding)
        inputs = np.concatenate([values, feats], axis=1)  # (N, F + C)
        input_columns += names
    targets = list(range(values.shape[1])) if target_columns is None else list(target_columns)

    def windows(part: slice) -> WindowDataset | None:
        if part.stop - part.start < horizon:
            return None
        first = part.start if context else part.start + look_back
        if part.start == 0:
            first = look_back
        try:
            x, y, t = make_windows(values, look_back, horizon, stride, targets, inputs,
                                   first_target=first, last_target=part.stop)
        except ValueError:
            return None
        return WindowDataset(x, y, t)

    train = windows(rows[0])
    if train is None:
        raise ValueError(f"the training part ({rows[0].stop} rows) is too short for "
                         f"look_back={look_back} + horizon={horizon}")
    return WindowedSplits(train, windows(rows[1]), windows(rows[2]), scaler, ts, rows,
                          input_columns, targets)
