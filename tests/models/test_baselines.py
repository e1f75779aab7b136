"""Baselines and accuracy measures against values worked out by hand (Hyndman &
Athanasopoulos, FPP3 sections 5.2 and 5.8, give the definitions)."""

import contextlib
import math

import numpy as np
import pytest

from rnnkit.models import baselines as b

HISTORY = np.array([10.0, 12.0, 14.0, 11.0, 13.0, 15.0, 12.0])  # period 3


def test_naive_repeats_the_last_value():
    assert b.naive_forecast(HISTORY, 3).tolist() == [12.0, 12.0, 12.0]


def test_seasonal_naive_takes_the_last_value_of_the_same_season():
    # positions 7, 8, 9, 10, 11 take positions 4, 5, 6, 4, 5 (season = position mod 3)
    assert b.seasonal_naive_forecast(HISTORY, 5, 3).tolist() == [13.0, 15.0, 12.0, 13.0, 15.0]
    assert b.seasonal_naive_forecast(HISTORY, 2, 1).tolist() == [12.0, 12.0]


def test_drift_extends_the_line_through_first_and_last():
    # slope (12 - 10) / 6 = 1/3
    np.testing.assert_allclose(b.drift_forecast(HISTORY, 3), [12 + 1 / 3, 12 + 2 / 3, 13.0])


def test_metrics_by_hand():
    actual, forecast = [2.0, 4.0, 8.0], [3.0, 2.0, 8.0]
    # errors -1, 2, 0
    assert b.rmse(actual, forecast) == pytest.approx(math.sqrt(5 / 3))
    assert b.mae(actual, forecast) == pytest.approx(1.0)
    assert b.mape(actual, forecast) == pytest.approx(100 * (0.5 + 0.5 + 0) / 3)
    assert b.smape(actual, forecast) == pytest.approx(100 * (2 / 5 + 4 / 6 + 0) / 3)
    # in-sample seasonal naive (period 3) errors on HISTORY: |11-10|, |13-12|, |15-14|,
    # |12-11| -> mean 1; period 1: 2, 2, 3, 2, 2, 3 -> 14/6
    assert b.mase(actual, forecast, HISTORY, 3) == pytest.approx(1.0)
    assert b.mase(actual, forecast, HISTORY, 1) == pytest.approx(1.0 / (14 / 6))
    table = b.forecast_metrics(actual, forecast, HISTORY, 3)
    assert set(table) == {"rmse", "mae", "mape", "smape", "mase"}


def test_mape_is_nan_at_a_zero_and_smape_counts_zero_over_zero_as_zero():
    assert math.isnan(b.mape([0.0, 1.0], [1.0, 1.0]))
    assert b.smape([0.0, 2.0], [0.0, 1.0]) == pytest.approx(100 * (0 + 2 / 3) / 2)


@pytest.mark.parametrize("call, message", [
    (lambda: b.seasonal_naive_forecast([1.0, 2.0], 3, 12), "at least 12 values"),
    (lambda: b.naive_forecast([1.0, float("nan")], 1), r"history\[1\] is nan"),
    (lambda: b.naive_forecast([1.0], 0), "horizon must be a positive int"),
    (lambda: b.rmse([1.0, 2.0], [1.0]), "shape"),
    (lambda: b.drift_forecast([[1.0, 2.0]], 1), "1-D"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_sarima_matches_statsmodels_airline_model():
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    import rnnkit

    y = rnnkit.datasets.airline().values[:120, 0]
    ours = b.sarima_forecast(y, 6, 12)
    try:  # BLAS threads make statsmodels ~7x slower on busy cores
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = contextlib.nullcontext
    with threadpool_limits(1):
        fitted = SARIMAX(np.log(y), order=(0, 1, 1), seasonal_order=(0, 1, 1, 12)).fit(
            disp=False)
    np.testing.assert_allclose(ours, np.exp(fitted.forecast(6)), rtol=1e-6)
    # and it is a sensible forecast: within 10% of what happened
    actual = rnnkit.datasets.airline().values[120:126, 0]
    assert b.mape(actual, ours) < 10
