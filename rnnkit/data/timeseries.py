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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rnnkit.data._checks import int_arg

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
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise _not_numeric(values, name) from None
    if a.ndim == 1:
        a = a[:, None]  # (N, 1)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, F), got shape {a.shape}")
    return a


def _not_numeric(values: ArrayLike, name: str) -> Exception:
    """The error for an array NumPy cannot read as float64: name the first element that fails."""
    try:
        raw = np.asarray(values, dtype=object)
    except ValueError as e:  # ragged nested lists
        return ValueError(f"{name} must be a rectangular (N,) or (N, F) array of numbers: {e}")
    for index in np.ndindex(raw.shape):
        item = raw[index]
        if isinstance(item, (list, tuple, np.ndarray)):
            return ValueError(f"{name} must be a rectangular (N,) or (N, F) array of numbers; "
                              f"its rows have different lengths (row {index[0]} has {len(item)})")
        try:
            float(item)
        except (TypeError, ValueError):
            where = ", ".join(str(i) for i in index)
            return TypeError(f"{name}[{where}] is {item!r} ({type(item).__name__}); {name} must "
                             "hold numbers")
    return TypeError(f"{name} must hold numbers, got {type(values).__name__}")


def _check_finite(a: np.ndarray, name: str, rows: Any = None, columns: Any = None) -> None:
    """Raise naming the first NaN/inf: ``rows(i)`` / ``columns[j]`` label it (default indices)."""
    bad = ~np.isfinite(a)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        row = rows(i) if rows is not None else f"row {i}"
        column = repr(columns[j]) if columns is not None else str(j)
        raise ValueError(f"{name} holds {a[i, j]} at {row}, column {column}: fill or drop missing "
                         "values first (e.g. TimeSeries.from_csv(..., fill='interpolate'))")


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"split fraction {name} must be a number, got {type(value).__name__} "
                        f"({value!r})")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"split fraction {name}={value} must be in [0, 1]")
    return float(value)


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
    look_back = int_arg("look_back", look_back)
    horizon = int_arg("horizon", horizon)
    stride = int_arg("stride", stride)
    feats = vals if inputs is None else _as_2d(inputs, "inputs")
    if len(feats) != n:
        raise ValueError(f"inputs has {len(feats)} rows but values has {n}")
    _check_finite(vals, "values")
    if inputs is not None:
        _check_finite(feats, "inputs")
    cols = _column_list(target_columns, vals.shape[1], "target column") \
        if target_columns is not None else list(range(vals.shape[1]))
    lo = look_back if first_target is None else max(look_back, int_arg(
        "first_target", first_target, minimum=0))
    hi = n if last_target is None else min(n, int_arg("last_target", last_target, minimum=0))
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


def _column_list(columns: Any, width: int, what: str) -> list[int]:
    """``columns`` as a list of ints in ``[-width, width)``, else an error naming the column."""
    if isinstance(columns, (str, bytes)) or not hasattr(columns, "__iter__"):
        raise TypeError(f"{what}s must be a list of ints, got {type(columns).__name__} "
                        f"({columns!r})")
    out = []
    for c in columns:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"{what} {c!r} must be an int, got {type(c).__name__}")
        if not -width <= c < width:
            raise IndexError(f"{what} {c} out of range for {width} columns")
        out.append(int(c))
    return out


def chronological_split(n: int, train: float = 0.7, val: float = 0.15,
                        test: float | None = None, *extra: float) -> tuple[slice, slice, slice]:
    """Row slices ``(train, val, test)`` in time order; ``test`` defaults to the rest.

    Fractions of ``n`` are rounded down for train and val; the test part takes every remaining
    row, so no row is left out. Given explicitly, the three fractions must sum to 1.

    Example:
        >>> chronological_split(144, 0.7, 0.15)
        (slice(0, 100, None), slice(100, 121, None), slice(121, 144, None))
    """
    if extra:
        raise TypeError(f"chronological_split takes 2 or 3 fractions (train, val[, test]), got "
                        f"{3 + len(extra)}: {(train, val, test, *extra)}")
    n = int_arg("n", n)
    train, val = _fraction("train", train), _fraction("val", val)
    if test is None:
        test = 1.0 - train - val
        if test < -1e-9:
            raise ValueError(f"split fractions sum to {train + val:.3f} > 1")
        test = max(test, 0.0)
    else:
        test = _fraction("test", test)
        total = train + val + test
        if total > 1.0 + 1e-9:
            raise ValueError(f"split fractions sum to {total:.3f} > 1")
        if total < 1.0 - 1e-9:
            raise ValueError(
                f"split fractions sum to {total:.3f} < 1: the newest "
                f"{n - int(n * train) - int(n * val) - int(n * test)} of {n} rows would belong "
                "to no split; make them sum to 1 or leave test out (it then takes the rest)")
    n_train = int(n * train)
    n_val = int(n * val)
    if n_train < 1:
        raise ValueError(f"train fraction {train} of {n} rows leaves no training rows")
    return (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))


# ----------------------------------------------------------------------------- scalers
def _numbers(values: ArrayLike) -> Any:
    """A tensor as is, anything else as a float64 array (with a clear error if it is not)."""
    if isinstance(values, torch.Tensor):
        if values.dim() == 0:
            raise ValueError("a scaler needs (..., F) values, got a 0-d tensor")
        return values
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise _not_numeric(values, "values") from None
    if a.ndim == 0:
        raise ValueError(f"a scaler needs (..., F) values, got the scalar {values!r}")
    return a


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
        if columns is not None:
            columns = _column_list(columns, len(getattr(self, self._param_names[0])),
                                   f"{type(self).__name__} column")
        out = {}
        for n in self._param_names:
            p = getattr(self, n)
            if columns is not None:
                p = p[columns]
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
        x = _numbers(values)
        return self._forward(x, self._params(x, columns))

    def inverse_transform(self, values: ArrayLike, columns: Sequence[int] | None = None) -> Any:
        y = _numbers(values)
        return self._inverse(y, self._params(y, columns))

    def fit_transform(self, values: ArrayLike) -> Any:
        return self.fit(values).transform(values)

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__,
                **{n: np.asarray(getattr(self, n)).tolist() for n in self._param_names}}


def _check_fit_values(v: np.ndarray, scaler: str) -> None:
    bad = ~np.isfinite(v)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"{scaler}.fit got NaN or inf values: {v[i, j]} at row {i}, column {j}")


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
        if not isinstance(feature_range, (tuple, list)) or len(feature_range) != 2:
            raise ValueError(f"feature_range must be a pair (low, high), got {feature_range!r}")
        lo, hi = feature_range
        for bound in (lo, hi):
            if isinstance(bound, bool) or not isinstance(bound, (int, float, np.integer,
                                                                 np.floating)):
                raise TypeError(f"feature_range must hold two numbers, got {feature_range!r}")
        if not hi > lo:
            raise ValueError(f"feature_range must be (low, high) with low < high, "
                             f"got {feature_range}")
        self.feature_range = (float(lo), float(hi))
        self.data_min: np.ndarray | None = None
        self.data_range: np.ndarray | None = None

    def fit(self, values: ArrayLike) -> MinMaxScaler:
        v = _as_2d(values)
        _check_fit_values(v, "MinMaxScaler")
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
        _check_fit_values(v, "StandardScaler")
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
        if isinstance(offset, bool) or not isinstance(offset, (int, float, np.integer,
                                                               np.floating)):
            raise TypeError(f"offset must be a number, got {type(offset).__name__} ({offset!r})")
        if not np.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset}")
        self.offset = float(offset)
        self.offset_: np.ndarray | None = None

    def fit(self, values: ArrayLike) -> LogScaler:
        v = _as_2d(values)
        _check_fit_values(v, "LogScaler")
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
    if not isinstance(spec, (list, tuple)):
        raise TypeError(f"scaler must be a name ({', '.join(_SCALERS)}), a Scaler, a list of "
                        f"those or None, got {type(spec).__name__} ({spec!r})")
    return ScalerChain([make_scaler(s) for s in spec])


# ----------------------------------------------------------------------------- calendar
def _parse_dates(dates: ArrayLike, rows: Any = None) -> np.ndarray:
    """``(N,)`` ``datetime64`` from ISO strings or datetimes; ``rows(i)`` names row ``i``."""
    if hasattr(dates, "to_numpy"):  # pandas Series / Index
        dates = dates.to_numpy()
    a = np.asarray(dates)
    if a.ndim != 1:
        raise ValueError(f"dates must be 1-D (N,), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.datetime64):
        return a
    out = []
    for i, d in enumerate(a):
        try:
            out.append(np.datetime64(str(d).strip()))
        except ValueError:
            where = rows(i) if rows is not None else f"dates[{i}]"
            raise ValueError(f"{where}: cannot parse {str(d)!r} as a date; use ISO format "
                             "(1949-01, 1949-01-31, 1949-01-31T12:00)") from None
    return np.array(out)


def _looks_like_a_date(field: str) -> bool:
    """An ISO date, not a number (``np.datetime64("112")`` would be the year 112)."""
    field = field.strip()
    try:
        float(field)
        return False
    except ValueError:
        pass
    try:
        return not np.isnat(np.datetime64(field))
    except ValueError:
        return False


def _check_date_order(dates: np.ndarray, rows: Any = None) -> None:
    """Dates must be present and strictly increasing; name the first row that is not."""
    label = rows if rows is not None else (lambda i: f"row {i}")
    missing = np.flatnonzero(np.isnat(dates))
    if len(missing):
        raise ValueError(f"{label(int(missing[0]))}: the date is missing")
    if len(dates) > 1:
        bad = np.flatnonzero(dates[1:] <= dates[:-1])
        if len(bad):
            i = int(bad[0]) + 1
            if dates[i] == dates[i - 1]:
                raise ValueError(f"{label(i)}: the date {dates[i]} repeats the date of "
                                 f"{label(i - 1)}; each date must appear once")
            raise ValueError(f"{label(i)}: the date {dates[i]} comes before {dates[i - 1]} on "
                             f"{label(i - 1)}; dates must increase (sort the rows first)")


#: CSV fields read as a missing value (compared lower-case)
_MISSING = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "#n/a"})
_UNITS = ("Y", "M", "D", "h", "m", "s", "ms", "us", "ns")
_FREQ = re.compile(r"^\s*(\d*)\s*(Y|M|W|D|h|m|s|ms|us|ns)\s*$")


def _natural_step(dates: np.ndarray, freq: Any) -> np.timedelta64 | None:
    """The series' step: ``freq`` (``"1D"``, ``"7D"``, ``"1M"``, a timedelta64) or, for
    ``"auto"``, the most common spacing in the coarsest unit that holds every date exactly
    (so month starts are months, not 28-31 days)."""
    if freq is None:
        return None
    if isinstance(freq, np.timedelta64):
        return freq
    if freq != "auto":
        match = _FREQ.match(str(freq)) if isinstance(freq, str) else None
        if match is None:
            raise ValueError(f"freq must be 'auto', None, a timedelta64 or a string such as "
                             f"'1D', '7D', '1M', '1h'; got {freq!r}")
        count, unit = int(match.group(1) or 1), match.group(2)
        if count < 1:
            raise ValueError(f"freq must be a positive step, got {freq!r}")
        return np.timedelta64(7 * count, "D") if unit == "W" else np.timedelta64(count, unit)
    if len(dates) < 2:
        return None
    for unit in _UNITS:
        coarse = dates.astype(f"datetime64[{unit}]")
        if (coarse.astype(dates.dtype) == dates).all():
            break
    steps = np.diff(coarse)
    values, counts = np.unique(steps, return_counts=True)
    return values[int(np.argmax(counts))]


def _fill_gaps_and_missing(values: np.ndarray, dates: np.ndarray | None, fill: Any, freq: Any,
                           rows: Any, columns: Sequence[str]
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Refuse (``fill=None``) or fill missing values (NaN, inf) and date gaps.

    A gap is a step between consecutive dates larger than the series' step (see
    :func:`_natural_step`); filling inserts the missing dates. ``fill``: ``"ffill"`` repeats the
    last value, ``"interpolate"`` interpolates linearly in time (the ends take the nearest value),
    a number fills with that number.
    """
    if fill is not None and fill not in ("ffill", "interpolate"):
        if isinstance(fill, bool) or not isinstance(fill, (int, float, np.integer, np.floating)):
            raise ValueError(f"fill must be None, 'ffill', 'interpolate' or a number, got {fill!r}")
    step = _natural_step(dates, freq) if dates is not None else None
    gap_rows = np.zeros(0, dtype=np.int64)
    if step is not None and len(dates) > 1:
        unit = np.datetime_data(step.dtype)[0]
        if unit in ("Y", "M"):  # calendar steps: compare in that unit (months are not days)
            coarse = dates.astype(f"datetime64[{unit}]")
            if not (coarse.astype(dates.dtype) == dates).all():
                raise ValueError(f"freq={freq!r}: a step of {step} needs dates at the start of "
                                 "each period; pass a step in days or freq=None")
            dates = coarse
        try:
            gap_rows = np.flatnonzero(np.diff(dates) > step) + 1  # rows that land after a gap
        except TypeError:
            raise ValueError(f"freq={freq!r} does not fit dates of unit "
                             f"{np.datetime_data(dates.dtype)[0]}") from None
    bad = ~np.isfinite(values)
    if fill is None:
        first_missing = int(np.argwhere(bad)[0][0]) if bad.any() else len(values)
        first_gap = int(gap_rows[0]) if len(gap_rows) else len(values)
        hint = "pass fill='ffill', 'interpolate' or a number"
        if first_missing < first_gap:
            j = int(np.argwhere(bad[first_missing])[0][0])
            raise ValueError(f"{rows(first_missing)}, column {columns[j]!r}: missing or "
                             f"non-finite value ({values[first_missing, j]}); {hint}")
        if first_gap < len(values):
            i = first_gap
            raise ValueError(f"{rows(i)}: the dates jump from {dates[i - 1]} to {dates[i]} (the "
                             f"series' step is {step}); {hint} to fill the gap, or freq=None "
                             "if the dates are irregular on purpose")
        return values, dates
    if len(gap_rows):
        new_dates = [dates[:1]]
        new_values = [values[:1]]
        after_gap = set(gap_rows.tolist())
        for i in range(1, len(dates)):
            if i in after_gap:
                inserted = np.arange(dates[i - 1] + step, dates[i], step).astype(dates.dtype)
                new_dates.append(inserted)
                new_values.append(np.full((len(inserted), values.shape[1]), np.nan))
            new_dates.append(dates[i:i + 1])
            new_values.append(values[i:i + 1])
        dates, values = np.concatenate(new_dates), np.concatenate(new_values)
    values = values.copy()
    bad = ~np.isfinite(values)
    if not bad.any():
        return values, dates
    if fill == "ffill":
        if bad[0].any():
            j = int(np.argwhere(bad[0])[0][0])
            raise ValueError(f"{rows(0)}, column {columns[j]!r}: the first value is missing, "
                             "so fill='ffill' has nothing to carry forward; use 'interpolate'")
        for i in range(1, len(values)):
            values[i] = np.where(bad[i], values[i - 1], values[i])
    elif fill == "interpolate":
        # positions in the dates' own unit: monthly data interpolates by months, not days
        x = (dates.astype(np.int64).astype(np.float64) if dates is not None
             else np.arange(len(values), dtype=np.float64))
        for j in range(values.shape[1]):
            good = ~bad[:, j]
            if not good.any():
                raise ValueError(f"column {columns[j]!r} has no value to interpolate from")
            values[bad[:, j], j] = np.interp(x[bad[:, j]], x[good], values[good, j])
    else:
        values[bad] = float(fill)
    return values, dates


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
    if isinstance(features, str):
        features = [features]
    d = _parse_dates(dates)
    if np.isnat(d).any():
        raise ValueError(f"dates[{int(np.flatnonzero(np.isnat(d))[0])}] is missing (NaT)")
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
        _check_finite(self.values, "the series", columns=self.columns)
        if self.dates is not None:
            self.dates = _parse_dates(self.dates)
            if len(self.dates) != len(self.values):
                raise ValueError(f"{len(self.dates)} dates for {len(self.values)} rows")
            _check_date_order(self.dates)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def _checked(cls, values: np.ndarray, columns: list[str], dates: ArrayLike | None,
                 name: str, fill: Any, freq: Any, rows: Any) -> TimeSeries:
        """Check dates (present, increasing, no repeats), then refuse or fill missing values
        and gaps as ``fill`` says; ``rows(i)`` names row ``i`` in errors."""
        if len(columns) != values.shape[1]:
            raise ValueError(f"{len(columns)} column names for {values.shape[1]} columns")
        if dates is not None:
            dates = _parse_dates(dates, rows)
            if len(dates) != len(values):
                raise ValueError(f"{len(dates)} dates for {len(values)} rows")
            _check_date_order(dates, rows)
        values, dates = _fill_gaps_and_missing(values, dates, fill, freq, rows, columns)
        return cls(values, columns, dates, name)

    @classmethod
    def from_array(cls, values: ArrayLike, dates: ArrayLike | None = None,
                   columns: Sequence[str] | None = None, name: str = "", fill: Any = None,
                   freq: Any = "auto") -> TimeSeries:
        """A series from an ``(N,)`` or ``(N, F)`` array; ``fill`` and ``freq`` as in
        :meth:`from_csv`."""
        v = _as_2d(values)
        cols = list(columns) if columns is not None else (
            ["value"] if v.shape[1] == 1 else [f"x{i}" for i in range(v.shape[1])])
        return cls._checked(v, cols, dates, name, fill, freq, lambda i: f"row {i}")

    @classmethod
    def from_csv(cls, path: str | os.PathLike, date_column: str | None = "auto",
                 value_columns: Sequence[str] | None = None, name: str = "",
                 fill: str | float | None = None, freq: Any = "auto") -> TimeSeries:
        """Read a CSV with a header row (no pandas needed).

        ``date_column="auto"`` takes the first column if its first value parses as a date;
        ``None`` means no dates. ``value_columns`` defaults to every other column.

        Dates must increase strictly: a repeated or out-of-order date is an error naming both
        lines. A missing value (an empty field, ``NaN``, ``NA``, ``null``, ``inf``) or a gap in
        the dates (a step larger than the series' usual step, see ``freq``) is an error naming
        the line, unless ``fill`` says how to fill it: ``"ffill"`` (repeat the last value),
        ``"interpolate"`` (linear in time) or a number; gaps then get their missing dates.
        ``freq`` is the step: ``"auto"`` (the most common one), a string such as ``"1D"``,
        ``"7D"``, ``"1M"``, or None for irregular dates (no gap check).
        """
        path = os.fspath(path)
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows, line_numbers = [], []
            for r in reader:
                rows.append(r)
                line_numbers.append(reader.line_num)
        if len(rows) < 2:
            raise ValueError(f"{path}: needs a header row and at least one data row")
        header = [h.strip() for h in rows[0]]
        kept = [i for i in range(1, len(rows)) if any(field.strip() for field in rows[i])]
        body = [rows[i] for i in kept]
        lines = [line_numbers[i] for i in kept]
        if not body:
            raise ValueError(f"{path}: needs a header row and at least one data row")

        def where(i: int) -> str:
            return f"{path}, line {lines[i]}"

        for i, r in enumerate(body):
            if len(r) != len(header):
                raise ValueError(f"{where(i)}: {len(r)} fields, header has {len(header)}")
        if date_column == "auto":
            date_column = header[0] if _looks_like_a_date(body[0][0]) else None
        if date_column is not None and date_column not in header:
            raise ValueError(f"{path}: no date column {date_column!r}; columns: {header}")
        if isinstance(value_columns, str):
            value_columns = [value_columns]
        if value_columns is None:
            value_columns = [h for h in header if h != date_column]
        missing = [c for c in value_columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}; columns: {header}")
        idx = [header.index(c) for c in value_columns]
        values = np.empty((len(body), len(idx)))
        for i, r in enumerate(body):
            for j, k in enumerate(idx):
                field = r[k].strip()
                if field.lower() in _MISSING:
                    values[i, j] = np.nan  # refused or filled below, as `fill` says
                    continue
                try:
                    values[i, j] = float(field)
                except ValueError:
                    raise ValueError(f"{where(i)}, column {value_columns[j]!r}: "
                                     f"{r[k]!r} is not a number") from None
        dates = None
        if date_column is not None:
            k = header.index(date_column)
            dates = [r[k] for r in body]
        return cls._checked(values, list(value_columns), dates,
                            name or os.path.splitext(os.path.basename(path))[0], fill, freq, where)

    @classmethod
    def from_dataframe(cls, df: Any, date_column: str | None = "auto",
                       value_columns: Sequence[str] | None = None, name: str = "",
                       fill: str | float | None = None, freq: Any = "auto") -> TimeSeries:
        """From a pandas DataFrame: dates from ``date_column``, or from a DatetimeIndex;
        ``fill`` and ``freq`` as in :meth:`from_csv` (errors name the row position)."""
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
        if isinstance(value_columns, str):
            value_columns = [value_columns]
        if value_columns is None:
            value_columns = [c for c in cols if c != date_column]
        missing = [c for c in value_columns if c not in cols]
        if missing:
            raise ValueError(f"no column {missing[0]!r}; columns: {cols}")
        try:
            values = df[list(value_columns)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"value columns {list(value_columns)} must be numeric: {e}") from None
        return cls._checked(values, list(value_columns), dates, name, fill, freq,
                            lambda i: f"row {i}")

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
    look_back = int_arg("look_back", look_back)
    horizon = int_arg("horizon", horizon)
    stride = int_arg("stride", stride)
    if isinstance(splits, (str, bytes)) or not hasattr(splits, "__len__") \
            or len(splits) not in (2, 3):
        raise ValueError(f"splits must be (train, val) or (train, val, test) fractions, got "
                         f"{splits!r}")
    ts = series if isinstance(series, TimeSeries) else TimeSeries.from_array(series)
    _check_finite(ts.values, "the series", columns=ts.columns)  # values may have been edited
    n = len(ts)
    rows = chronological_split(n, *splits)
    scaler = make_scaler(scaler)
    values = ts.values
    if scaler is not None:
        scaler.fit(values[rows[0]])
        values = np.asarray(scaler.transform(values))
    inputs, input_columns = values, list(ts.columns)
    if calendar:
        chosen = None if calendar is True else [calendar] if isinstance(calendar, str) \
            else list(calendar)
        feats, names = ts.calendar_features(chosen, calendar_encoding)
        inputs = np.concatenate([values, feats], axis=1)  # (N, F + C)
        input_columns += names
    targets = list(range(values.shape[1])) if target_columns is None else _column_list(
        target_columns, values.shape[1], "target column")

    def windows(part: slice) -> WindowDataset | None:
        first = part.start if context else part.start + look_back
        if part.start == 0:
            first = look_back
        if part.stop - horizon + 1 <= max(first, look_back):
            return None  # no window's targets fit inside this part
        x, y, t = make_windows(values, look_back, horizon, stride, targets, inputs,
                               first_target=first, last_target=part.stop)
        return WindowDataset(x, y, t)

    train = windows(rows[0])
    if train is None:
        raise ValueError(f"the training part ({rows[0].stop} rows) is too short for "
                         f"look_back={look_back} + horizon={horizon}")
    return WindowedSplits(train, windows(rows[1]), windows(rows[2]), scaler, ts, rows,
                          input_columns, targets)
