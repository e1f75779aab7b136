"""Time series: windows against a brute-force loop, scaler isolation, calendar features, airline."""

import csv

import numpy as np
import pytest
import torch

import rnnkit.datasets
from rnnkit.data.timeseries import (
    LogScaler,
    MinMaxScaler,
    ScalerChain,
    StandardScaler,
    TimeSeries,
    calendar_features,
    chronological_split,
    make_scaler,
    make_windows,
    prepare_windows,
)


@pytest.mark.parametrize("look_back, horizon, stride", [(1, 1, 1), (5, 3, 2), (12, 1, 7)])
def test_windows_line_up_with_the_source_by_index(look_back, horizon, stride):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((60, 3))
    x, y, t = make_windows(values, look_back, horizon, stride, target_columns=[2])
    expected_starts = []
    s = look_back
    while s + horizon <= len(values):  # brute force: every start that fits, stepping by stride
        expected_starts.append(s)
        s += stride
    assert t.tolist() == expected_starts
    for i, s in enumerate(t):
        np.testing.assert_array_equal(x[i], values[s - look_back:s])
        np.testing.assert_array_equal(y[i, :, 0], values[s:s + horizon, 2])


def test_window_errors():
    with pytest.raises(ValueError, match="no window fits: look_back=8 \\+ horizon=3"):
        make_windows(np.arange(10.0), 8, 3)
    with pytest.raises(ValueError, match="values must be 1-D \\(N,\\) or 2-D"):
        make_windows(np.zeros((2, 2, 2)), 1)
    with pytest.raises(IndexError, match="target column 3 out of range for 1 columns"):
        make_windows(np.arange(10.0), 2, target_columns=[3])
    with pytest.raises(ValueError, match="look_back must be >= 1, got 0"):
        make_windows(np.arange(10.0), 0)


def test_chronological_split():
    tr, va, te = chronological_split(10, 0.6, 0.2)
    assert (tr, va, te) == (slice(0, 6), slice(6, 8), slice(8, 10))
    with pytest.raises(ValueError, match="split fractions sum to 1.100 > 1"):
        chronological_split(10, 0.7, 0.2, 0.2)
    with pytest.raises(ValueError, match="leaves no training rows"):
        chronological_split(3, 0.2, 0.2)


@pytest.mark.parametrize("scaler", ["minmax", "standard", "log", "log+minmax"])
def test_no_test_value_influences_the_scaler(scaler):
    rng = np.random.default_rng(1)
    base = np.abs(rng.standard_normal((100, 2))) + 1.0
    changed = base.copy()
    changed[70:] *= 1000.0  # everything after the training rows
    a = prepare_windows(base, look_back=4, horizon=2, scaler=scaler)
    b = prepare_windows(changed, look_back=4, horizon=2, scaler=scaler)
    assert a.rows[0] == slice(0, 70)
    assert a.scaler.state_dict() == b.scaler.state_dict()
    torch.testing.assert_close(a.train.x, b.train.x, rtol=0, atol=0)
    torch.testing.assert_close(a.train.y, b.train.y, rtol=0, atol=0)
    # no training target lies outside the training rows
    assert int(a.train.target_rows.max()) + 2 <= 70
    assert int(a.val.target_rows.min()) >= 70 and int(a.test.target_rows.min()) >= 85


def test_scalers_match_numpy_on_training_rows_and_invert():
    v = np.random.default_rng(2).uniform(1, 5, size=(50, 3))
    s = MinMaxScaler((-1, 1)).fit(v[:30])
    np.testing.assert_allclose(s.transform(v[:30]).min(0), -1)
    np.testing.assert_allclose(s.transform(v[:30]).max(0), 1)
    s2 = StandardScaler().fit(v[:30])
    np.testing.assert_allclose(s2.transform(v[:30]).mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(s2.transform(v[:30]).std(0), 1)
    for scaler in (s, s2, LogScaler(offset=1.0).fit(v), ScalerChain([LogScaler(), s2]).fit(v)):
        np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(v)), v)
        t = torch.tensor(v, dtype=torch.float64)
        torch.testing.assert_close(scaler.inverse_transform(scaler.transform(t)), t)
        # a subset of columns (e.g. predictions of the target column)
        np.testing.assert_allclose(scaler.transform(v[:, 1:2], columns=[1]),
                                   scaler.transform(v)[:, 1:2])


def test_scaler_errors():
    with pytest.raises(RuntimeError, match="MinMaxScaler is not fitted"):
        MinMaxScaler().transform([[1.0]])
    with pytest.raises(ValueError, match="fitted on 2 columns, got an array with 1"):
        MinMaxScaler().fit(np.ones((3, 2))).transform(np.ones((3, 1)))
    with pytest.raises(ValueError, match="LogScaler needs values \\+ offset > 0"):
        LogScaler().fit([[0.0], [1.0]])
    with pytest.raises(ValueError, match="unknown scaler 'robust'"):
        make_scaler("robust")
    with pytest.raises(ValueError, match="feature_range must be \\(low, high\\)"):
        MinMaxScaler((1, 0))
    # a constant training column must not divide by zero
    s = MinMaxScaler().fit(np.ones((4, 1)))
    assert np.isfinite(s.transform([[2.0]])).all()


def test_calendar_features():
    f, names = calendar_features(["2024-01-01", "2024-01-02", "2024-01-07"],
                                 encoding="integer")
    assert names == ["month", "day_of_week"]
    assert f.tolist() == [[1, 0], [1, 1], [1, 6]]  # 2024-01-01 was a Monday
    f, names = calendar_features(["1949-01", "1949-04", "1949-07"])
    assert names == ["month_sin", "month_cos"]  # monthly data: no day of week
    np.testing.assert_allclose(f[:, 0], np.sin(2 * np.pi * np.array([0, 3, 6]) / 12))
    f, names = calendar_features(["1949-12"], features=["month"], encoding="onehot")
    assert f.tolist() == [[0] * 11 + [1]]
    with pytest.raises(ValueError, match=r"dates\[0\]: cannot parse 'Jan 1949' as a date"):
        calendar_features(["Jan 1949"])
    with pytest.raises(ValueError, match="unknown calendar feature 'week'"):
        calendar_features(["1949-01"], features=["week"])


def test_airline_matches_the_shared_csv():
    series = rnnkit.datasets.airline()
    assert len(series) == 144 and series.columns == ["Passengers"]
    assert str(series.dates[0]) == "1949-01" and str(series.dates[-1]) == "1960-12"
    assert np.all(np.diff(series.dates.astype("datetime64[M]").astype(int)) == 1)
    assert series.values[0, 0] == 112 and series.values[-1, 0] == 432
    try:
        with open("/work/shared/data/airline/airline.csv") as f:
            rows = list(csv.reader(f))[1:]
    except FileNotFoundError:
        pytest.skip("shared airline.csv not present")
    assert series.values[:, 0].tolist() == [float(r[1]) for r in rows]


def test_airline_windows_with_calendar():
    data = prepare_windows(rnnkit.datasets.airline(), look_back=12, horizon=1,
                           scaler="log+minmax", calendar=True)
    x, y = data.train[0]
    assert x.shape == (12, 3) and y.shape == (1, 1)
    assert data.input_columns == ["Passengers", "month_sin", "month_cos"]
    # window 0's target is row 12 (January 1950); undo the scaling to get passengers back
    assert int(data.train.target_rows[0]) == 12
    np.testing.assert_allclose(data.inverse_transform(y.double()).item(), 115.0, rtol=1e-6)
    # the month columns of the inputs are the calendar of rows 0..11
    np.testing.assert_allclose(x[:, 1].numpy(), np.sin(2 * np.pi * np.arange(12) / 12),
                               atol=1e-6)


def test_from_csv_and_dataframe(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("when,a,b\n2020-01-01,1,2\n2020-01-02,3,4\n")
    ts = TimeSeries.from_csv(path)
    assert ts.columns == ["a", "b"] and ts.values.tolist() == [[1, 2], [3, 4]]
    assert str(ts.dates[1]) == "2020-01-02"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match="bad.csv, line 2, column 'b': 'x' is not a number"):
        TimeSeries.from_csv(bad)
    with pytest.raises(ValueError, match="no date column 'day'"):
        TimeSeries.from_csv(path, date_column="day")
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"d": pd.to_datetime(["2020-01-01", "2020-02-01"]), "v": [1.0, 2.0]})
    ts = TimeSeries.from_dataframe(df)
    assert ts.columns == ["v"] and ts.dates is not None and len(ts) == 2
    back = ts.to_dataframe()
    assert list(back.columns) == ["date", "v"]
    assert rnnkit.datasets.airline(as_frame=True).shape == (144, 2)
