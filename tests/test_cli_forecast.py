"""`rnnkit forecast / demo` and a forecast run through `predict` and `evaluate`, on small
generated monthly series, and the forecast's usage errors (exit status 2, one line, no
traceback)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tests.test_cli import assert_usage_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def monthly(rows: int = 60, start_year: int = 2015) -> list[tuple[str, float]]:
    """A monthly series with trend and yearly seasonality (and a little noise)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(rows):
        year, month = start_year + i // 12, i % 12 + 1
        value = 100 + 2 * i + 15 * np.sin(2 * np.pi * i / 12) + rng.normal(0, 1)
        out.append((f"{year}-{month:02d}", round(float(value), 2)))
    return out


def write_csv(path, rows, header=("month", "sales")) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def series_csv(tmp_path):
    path = tmp_path / "sales.csv"
    write_csv(path, monthly())
    return path


def test_forecast_writes_the_forecast_the_plot_and_the_model(series_csv, tmp_path):
    out = tmp_path / "out"
    result = run("forecast", series_csv, "--target", "sales", "--horizon", "6", "--epochs", "3",
                 "--output", out)
    assert result.exit_code == 0, result.output
    assert "seasonal_naive" in result.output and "RMSE" in result.output
    rows = list(csv.reader((out / "forecast.csv").open()))
    assert rows[0][:2] == ["date", "forecast"] and len(rows) == 7
    assert rows[1][0].startswith("2020-01")  # the month after the data's last (2019-12)
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the run directory forecasts from a newer CSV and reports its held-out metrics
    newer = tmp_path / "newer.csv"
    write_csv(newer, monthly(rows=36, start_year=2017))
    predicted = tmp_path / "next.csv"
    result = run("predict", out, newer, "-o", predicted)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(predicted.open()))
    assert len(rows) == 7 and rows[1][0].startswith("2020-01")
    result = run("evaluate", out)
    assert result.exit_code == 0 and "rmse" in result.output


def test_fill_interpolates_a_gap(tmp_path):
    rows = monthly()
    del rows[20]
    path = tmp_path / "gappy.csv"
    write_csv(path, rows)
    assert_usage_error(run("forecast", path, "--target", "sales"),
                       "gappy.csv", "line 22", "2016-08")
    result = run("forecast", path, "--target", "sales", "--fill", "interpolate",
                 "--horizon", "3", "--epochs", "1", "-o", tmp_path / "filled")
    assert result.exit_code == 0, result.output


def test_demo_runs_quickly_with_few_epochs(tmp_path):
    result = run("demo", "--epochs", "2", "--ensemble", "1", "--output", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "seasonal naive" in result.output and "Next:" in result.output
    assert (tmp_path / "demo" / "forecast.png").is_file()


@pytest.mark.parametrize("make, args, fragments", [
    (None, ["--target", "sales"], ["nope.csv: no such file"]),
    ("good", ["--target", "sale"], ["no target column 'sale'", "sales"]),
    ("good", ["--target", "sales", "--date-column", "when"], ["no date column 'when'"]),
    ("text", ["--target", "sales"], ["line 4", "'sales'"]),
    ("short", ["--target", "sales"], ["too few"]),
    ("gap", ["--target", "sales"], ["line 6"]),
    ("irregular", ["--target", "sales"], ["line 5"]),
    ("good", ["--target", "sales", "--fill", "zero"], ["--fill 'zero'"]),
    ("good", ["--target", "sales", "--horizon", "0"], ["--horizon"]),
])
def test_forecast_usage_errors(make, args, fragments, tmp_path):
    rows = monthly()
    path = tmp_path / "nope.csv"
    if make == "good":
        write_csv(path, rows)
    elif make == "text":
        rows[2] = (rows[2][0], "n/a")
        write_csv(path, rows)
    elif make == "short":
        write_csv(path, rows[:5])
    elif make == "gap":
        write_csv(path, rows[:4] + rows[6:])
    elif make == "irregular":  # a repeated date
        write_csv(path, rows[:4] + [rows[2]] + rows[4:])
    assert_usage_error(run("forecast", path, *args), *fragments)
