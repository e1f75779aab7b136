"""Forecasting baselines and accuracy measures: what a learned forecaster has to beat.

Symbols: ``N`` history length, ``H`` horizon, ``m`` seasonal period. Every forecaster here
takes the history ``y[0 : N]`` (1-D, the user's units) and returns ``y[N : N + H]``:

* :func:`naive_forecast` (persistence): :math:`\\hat y_{N+h} = y_{N-1}`.
* :func:`seasonal_naive_forecast`: :math:`\\hat y_{N+h} = y_{N+h-km}` with
  :math:`k = \\lfloor (h-1)/m \\rfloor + 1` (the last observed value of the same season).
* :func:`drift_forecast`: :math:`\\hat y_{N+h} = y_{N-1} + h\\,(y_{N-1} - y_0)/(N-1)`.
* :func:`sarima_forecast`: a seasonal ARIMA fitted by statsmodels (``pip install
  rnnkit[forecast]``), by default Box and Jenkins' "airline model"
  ARIMA(0,1,1)(0,1,1)_m on the log of a positive series.

These follow the definitions of Hyndman and Athanasopoulos, *Forecasting: Principles and
Practice* (3rd ed.), sections 5.2 (simple methods) and 5.8 (accuracy measures), which R's
``forecast`` package (``naive``, ``snaive``, ``rwf(drift=TRUE)``, ``accuracy``) implements.

Accuracy measures (``actual`` and ``forecast`` of the same shape):

* RMSE :math:`\\sqrt{\\mathrm{mean}(e^2)}`, MAE :math:`\\mathrm{mean}|e|` with
  :math:`e = y - \\hat y`;
* MAPE :math:`100\\,\\mathrm{mean}|e / y|` (percent; undefined where ``y == 0``);
* sMAPE :math:`100\\,\\mathrm{mean}(2|e| / (|y| + |\\hat y|))` (percent, Hyndman's form);
* MASE :math:`\\mathrm{mean}|e| / \\mathrm{mean}_{t \\ge m}|y_t - y_{t-m}|` scaled by the
  in-sample seasonal naive one-step error of the training history.

Example:
    >>> import numpy as np
    >>> history = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    >>> seasonal_naive_forecast(history, horizon=3, period=2).tolist()
    [5.0, 6.0, 5.0]
    >>> drift_forecast(history, horizon=2).tolist()
    [7.0, 8.0]
    >>> round(rmse([1.0, 2.0], [1.0, 4.0]), 6)
    1.414214
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "BASELINES",
    "drift_forecast",
    "forecast_metrics",
    "mae",
    "mape",
    "mase",
    "naive_forecast",
    "rmse",
    "sarima_available",
    "sarima_forecast",
    "seasonal_naive_forecast",
    "smape",
]


def _history(history: Any, minimum: int = 1) -> np.ndarray:
    try:
        y = np.asarray(history, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"history must be a 1-D array of numbers, got {type(history).__name__}"
                        ) from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"history must be 1-D (N,), got shape {y.shape}")
    if len(y) < minimum:
        raise ValueError(f"history needs at least {minimum} values, got {len(y)}")
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"history[{i}] is {y[i]}; baselines need finite values")
    return y


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def naive_forecast(history: Any, horizon: int) -> np.ndarray:
    """Persistence: every future value equals the last observed one. ``(H,)``."""
    y = _history(history)
    return np.full(_positive_int("horizon", horizon), y[-1])


def seasonal_naive_forecast(history: Any, horizon: int, period: int) -> np.ndarray:
    """Each future value equals the last observed value of the same season. ``(H,)``.

    Needs at least one full period of history.
    """
    horizon, period = _positive_int("horizon", horizon), _positive_int("period", period)
    y = _history(history, minimum=period)
    n = len(y)
    h = np.arange(1, horizon + 1)
    k = (h - 1) // period + 1
    return y[n - 1 + h - k * period]


def drift_forecast(history: Any, horizon: int) -> np.ndarray:
    """The line through the first and last observations, extended. ``(H,)``."""
    y = _history(history, minimum=2)
    h = np.arange(1, _positive_int("horizon", horizon) + 1)
    return y[-1] + h * (y[-1] - y[0]) / (len(y) - 1)


def sarima_available() -> bool:
    """Whether statsmodels can be imported (for :func:`sarima_forecast`)."""
    try:
        import statsmodels.tsa.statespace.sarimax  # noqa: F401
    except ImportError:
        return False
    return True


def sarima_forecast(history: Any, horizon: int, period: int,
                    order: tuple[int, int, int] = (0, 1, 1),
                    seasonal_order: tuple[int, int, int] = (0, 1, 1),
                    log: bool | str = "auto") -> np.ndarray:
    """Seasonal ARIMA ``order x seasonal_order _period`` by statsmodels' SARIMAX. ``(H,)``.

    The defaults are Box and Jenkins' airline model. ``log="auto"`` fits on the log of the
    series when every value is positive and returns the forecast in the original units
    (the median forecast, ``exp`` of the log forecast). ``period=1`` fits a plain ARIMA.
    """
    try:
        from statsmodels.tsa.statespace.sarimax import SARIMAX
    except ImportError as e:
        raise ImportError("sarima_forecast needs statsmodels: pip install rnnkit[forecast]"
                          ) from e
    horizon, period = _positive_int("horizon", horizon), _positive_int("period", period)
    y = _history(history, minimum=2 * period + 2 if period > 1 else 3)
    use_log = bool(np.all(y > 0)) if log == "auto" else bool(log)
    if use_log and not np.all(y > 0):
        raise ValueError("sarima_forecast(log=True) needs a positive series")
    data = np.log(y) if use_log else y
    seasonal = (*seasonal_order, period) if period > 1 else (0, 0, 0, 0)
    import contextlib
    import warnings

    try:  # statsmodels' small matrices run ~7x slower with BLAS threads on busy cores
        from threadpoolctl import threadpool_limits

        one_thread: Any = threadpool_limits(1)
    except ImportError:
        one_thread = contextlib.nullcontext()
    with one_thread, warnings.catch_warnings():
        # statsmodels warns about its starting values and convergence on short series; the
        # forecast is still the maximum-likelihood one it found
        warnings.simplefilter("ignore")
        model = SARIMAX(data, order=order, seasonal_order=seasonal)
        fitted = model.fit(disp=False)
        out = np.asarray(fitted.forecast(horizon), dtype=np.float64)
    return np.exp(out) if use_log else out


#: name -> ``f(history, horizon, period)`` for the baselines that need nothing installed
BASELINES: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "seasonal_naive": lambda y, h, m: seasonal_naive_forecast(y, h, m),
    "persistence": lambda y, h, m: naive_forecast(y, h),
    "drift": lambda y, h, m: drift_forecast(y, h),
}


# ----------------------------------------------------------------------------- metrics
def _pair(actual: Any, forecast: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if a.shape != f.shape:
        raise ValueError(f"actual has shape {a.shape} but forecast has shape {f.shape}")
    if a.size == 0:
        raise ValueError("accuracy measures need at least one value")
    return a, f


def rmse(actual: Any, forecast: Any) -> float:
    """Root mean squared error."""
    a, f = _pair(actual, forecast)
    return float(np.sqrt(np.mean((a - f) ** 2)))


def mae(actual: Any, forecast: Any) -> float:
    """Mean absolute error."""
    a, f = _pair(actual, forecast)
    return float(np.mean(np.abs(a - f)))


def mape(actual: Any, forecast: Any) -> float:
    """Mean absolute percentage error, in percent (NaN when an actual value is 0)."""
    a, f = _pair(actual, forecast)
    if np.any(a == 0):
        return float("nan")
    return float(100.0 * np.mean(np.abs((a - f) / a)))


def smape(actual: Any, forecast: Any) -> float:
    """Symmetric MAPE in percent, ``100 mean(2|e| / (|y| + |f|))`` (0/0 counts as 0)."""
    a, f = _pair(actual, forecast)
    denominator = np.abs(a) + np.abs(f)
    ratio = np.divide(2.0 * np.abs(a - f), denominator, out=np.zeros_like(a),
                      where=denominator > 0)
    return float(100.0 * np.mean(ratio))


def mase(actual: Any, forecast: Any, history: Any, period: int = 1) -> float:
    """Mean absolute scaled error: MAE over the in-sample MAE of the seasonal naive
    one-step forecast on ``history`` (``period=1``: the naive one). NaN when that is 0."""
    a, f = _pair(actual, forecast)
    period = _positive_int("period", period)
    y = _history(history, minimum=period + 1)
    scale = float(np.mean(np.abs(y[period:] - y[:-period])))
    if scale == 0:
        return float("nan")
    return float(np.mean(np.abs(a - f)) / scale)


def forecast_metrics(actual: Any, forecast: Any, history: Any, period: int = 1
                     ) -> dict[str, float]:
    """``{"rmse", "mae", "mape", "smape", "mase"}`` of one forecast."""
    return {"rmse": rmse(actual, forecast), "mae": mae(actual, forecast),
            "mape": mape(actual, forecast), "smape": smape(actual, forecast),
            "mase": mase(actual, forecast, history, period)}
