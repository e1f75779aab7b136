"""forecast_csv end to end on small generated CSVs: the files, the baselines, beating seasonal
naive, determinism, predict from the saved directory, and every bad-input error."""

import csv

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.errors import UsageError
from rnnkit.models.forecaster import Forecaster
from rnnkit.workflows.forecast import (
    ForecastInputError,
    forecast_csv,
    forecast_series,
    predict_csv,
)

FAST = dict(epochs=40, patience=15, hidden_size=16, sarima=False)


def monthly(n=84, seed=0, start="2000-01"):
    """Trend + a two-harmonic season + noise, monthly, with a fixed seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = (50 + 0.8 * t + 12 * np.sin(2 * np.pi * t / 12 + rng.uniform(0, 6))
         + 5 * np.cos(4 * np.pi * t / 12) + rng.normal(0, 2, n))
    return np.datetime64(start) + np.arange(n), y


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def monthly_csv(tmp_path):
    dates, y = monthly()
    return write_csv(tmp_path / "sales.csv", ["month", "sales"],
                     [[str(d), f"{v:.3f}"] for d, v in zip(dates, y, strict=True)])


def test_end_to_end_files_metrics_and_predict(monthly_csv, tmp_path):
    out = tmp_path / "run"
    result = forecast_csv(monthly_csv, target="sales", output=out, ensemble=2, **FAST)
    dates, y = monthly()
    H = 12
    # forecast.csv: the 12 months after the data, with the ensemble's spread
    rows = read_csv(out / "forecast.csv")
    assert [r["date"] for r in rows] == [str(d) for d in np.datetime64("2007-01") + np.arange(H)]
    forecast = np.array([float(r["forecast"]) for r in rows])
    np.testing.assert_allclose(forecast, result.forecast, rtol=1e-5)
    low, high = (np.array([float(r[k]) for r in rows]) for k in ("ensemble_min", "ensemble_max"))
    assert np.all(low <= forecast + 1e-6) and np.all(forecast <= high + 1e-6)
    # holdout.csv and metrics.csv: seasonal naive checked against NumPy by hand
    holdout = read_csv(out / "holdout.csv")
    assert [r["date"] for r in holdout] == [str(d) for d in dates[-H:]]
    np.testing.assert_allclose([float(r["actual"]) for r in holdout], y[-H:], atol=1e-3)
    np.testing.assert_allclose([float(r["seasonal_naive"]) for r in holdout], y[-2 * H:-H],
                               atol=1e-3)
    metrics = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    assert set(metrics) == {"rnnkit", "seasonal_naive", "persistence", "drift"}
    naive_rmse = np.sqrt(np.mean((y[-H:] - y[-2 * H:-H]) ** 2))
    assert float(metrics["seasonal_naive"]["rmse"]) == pytest.approx(naive_rmse, rel=1e-4)
    persistence_mae = np.mean(np.abs(y[-H:] - y[-H - 1]))
    assert float(metrics["persistence"]["mae"]) == pytest.approx(persistence_mae, rel=1e-4)
    # it learned the trend and the season
    assert result.metrics["rnnkit"]["rmse"] < result.metrics["seasonal_naive"]["rmse"]
    assert "rnnkit" in result.table() and "seasonal_naive" in result.table()
    # the plot is a PNG; no temporary files are left behind
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # the directory holds the model: rnnkit.load and predict_csv need nothing else
    model = rnnkit.load(out)
    assert isinstance(model, Forecaster) and model.ensemble_size == 2
    as_written = np.array([float(f"{v:.3f}") for v in y])
    np.testing.assert_allclose(model.forecast(as_written), result.forecast, rtol=1e-6)
    future, again, spread = predict_csv(out, monthly_csv, output=tmp_path / "p.csv")
    np.testing.assert_allclose(again, result.forecast, rtol=1e-6)
    assert spread.shape == (2, H)
    assert [r["date"] for r in read_csv(tmp_path / "p.csv")] == [str(d) for d in future]


@pytest.mark.parametrize("seed, strategy", [(1, "direct"), (2, "recursive")])
def test_beats_seasonal_naive_on_trend_and_season(seed, strategy):
    dates, y = monthly(n=96, seed=seed)
    series = rnnkit.data.timeseries.TimeSeries.from_array(y, dates=dates, columns=["y"])
    result = forecast_series(series, strategy=strategy, seed=seed, **FAST)
    assert result.metrics["rnnkit"]["rmse"] < result.metrics["seasonal_naive"]["rmse"]


def test_beats_seasonal_naive_on_airline():
    result = forecast_series(rnnkit.datasets.airline(), epochs=60, patience=20, sarima=False)
    assert result.metrics["rnnkit"]["rmse"] < result.metrics["seasonal_naive"]["rmse"]


def test_deterministic_with_a_seed(monthly_csv):
    a = forecast_csv(monthly_csv, "sales", output=None, seed=3, epochs=4, patience=4,
                     hidden_size=8, sarima=False)
    b = forecast_csv(monthly_csv, "sales", output=None, seed=3, epochs=4, patience=4,
                     hidden_size=8, sarima=False)
    np.testing.assert_array_equal(a.forecast, b.forecast)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_exogenous_and_calendar_on_daily_data(tmp_path):
    n = 70
    rng = np.random.default_rng(0)
    dates = np.datetime64("2021-03-01") + np.arange(n)
    promo = (rng.uniform(size=n) < 0.3).astype(float)
    weekday = (dates.astype(np.int64) + 3) % 7
    y = 20 + 0.1 * np.arange(n) + 3 * (weekday >= 5) + 4 * promo + rng.normal(0, 0.3, n)
    path = write_csv(tmp_path / "daily.csv", ["day", "visits", "promo"],
                     [[str(d), f"{v:.3f}", f"{p:.0f}"]
                      for d, v, p in zip(dates, y, promo, strict=True)])
    out = tmp_path / "run"
    result = forecast_csv(path, "visits", exogenous=["promo"], calendar=["day_of_week"],
                          output=out, epochs=10, patience=10, hidden_size=8, sarima=False)
    model = result.model
    assert (model.period, model.horizon, model.num_exogenous, model.covariate_width) == (
        7, 7, 1, 3)
    rows = read_csv(out / "forecast.csv")
    assert [r["date"] for r in rows] == [str(d) for d in dates[-1] + 1 + np.arange(7)]
    _, again, _ = predict_csv(out, path)
    np.testing.assert_allclose(again, result.forecast, rtol=1e-6)


def test_no_date_column_counts_steps(tmp_path):
    _, y = monthly(60)
    path = write_csv(tmp_path / "plain.csv", ["value"], [[f"{v:.3f}"] for v in y])
    result = forecast_csv(path, "value", output=tmp_path / "run", horizon=3, look_back=10,
                          epochs=3, patience=3, hidden_size=4, sarima=False)
    assert result.model.period == 1
    assert [r["step"] for r in read_csv(tmp_path / "run" / "forecast.csv")] == ["61", "62", "63"]


# ----------------------------------------------------------------------------- bad input
def _rows(n=40, start="2000-01"):
    dates, y = monthly(n, start=start)
    return [[str(d), f"{v:.3f}"] for d, v in zip(dates, y, strict=True)]


def _case(tmp_path, name):
    header = ["month", "sales"]
    rows = _rows()
    if name == "non_numeric":
        rows[6][1] = "n/a?"
    elif name == "gap":
        del rows[10:12]
    elif name == "repeat":
        rows[5][0] = rows[4][0]
    elif name == "too_few":
        rows = rows[:30]
    return write_csv(tmp_path / f"{name}.csv", header, rows)


@pytest.mark.parametrize("name, kwargs, message", [
    ("missing_file", {}, r"missing_file\.csv: no such file"),
    ("column", {"target": "sale"}, r"no target column 'sale' \(did you mean 'sales'\?\); "
                                   "columns: month, sales"),
    ("column", {"date_column": "date"}, r"no date column 'date'"),
    ("column", {"exogenous": ["price"]}, r"no exogenous column 'price'"),
    ("non_numeric", {}, r"non_numeric\.csv, line 8, column 'sales': 'n/a\?' is not a number"),
    ("gap", {}, r"gap\.csv, line 12: the dates jump from 2000-10 to 2001-01 .*--fill"),
    ("repeat", {}, r"repeat\.csv, line 7: the date 2000-05 repeats"),
    ("too_few", {}, r"30 rows are too few for look_back=24 \+ horizon=12"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, name, kwargs, message):
    path = tmp_path / "missing_file.csv" if name == "missing_file" else _case(tmp_path, name)
    kwargs = {"target": "sales", **kwargs}
    with pytest.raises(ForecastInputError, match=message) as info:
        forecast_csv(path, output=tmp_path / "out", **kwargs, **FAST)
    assert isinstance(info.value, UsageError)  # the CLI's exit-code-2 class
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_fill_mends_a_gap(tmp_path):
    path = _case(tmp_path, "gap")
    result = forecast_csv(path, "sales", fill="interpolate", output=None, look_back=24,
                          horizon=3, epochs=2, patience=2, hidden_size=4, sarima=False)
    assert len(result.forecast) == 3


def test_predict_refuses_a_directory_that_is_not_a_forecast_run(tmp_path, monthly_csv):
    with pytest.raises(ForecastInputError, match="not a forecast run directory"):
        predict_csv(tmp_path, monthly_csv)
