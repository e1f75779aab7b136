"""Forecaster: shapes, units, exact inversion of scaling and differencing (against NumPy),
covariates, ensembles, defaults from the dates' frequency, config round trip."""

import json

import numpy as np
import pytest
import torch

from rnnkit.config import deserialize, serialize
from rnnkit.data.timeseries import calendar_features
from rnnkit.models.forecaster import Forecaster, default_settings, future_dates, seasonal_period


def _series(n=72, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)


def _numpy_differences(y, log, period, seasonal, first):
    """The oracle: NumPy's own log and np.diff-style differences."""
    w = np.log(y) if log else y.copy()
    if seasonal:
        w = w[period:] - w[:-period]
    if first:
        w = np.diff(w)
    return w


@pytest.mark.parametrize("strategy", ["recursive", "direct"])
def test_shapes(strategy):
    y = _series()
    model = Forecaster(24, 5, strategy=strategy, period=12, seasonal_difference=True,
                       hidden_size=8, ensemble=2, seed=0).adapt(y[:48])
    x = torch.as_tensor(np.stack([y[:24], y[10:34], y[30:54]]))  # (3, 24)
    assert model(x).shape == (3, 5)
    assert model(x.unsqueeze(-1)).shape == (3, 5, 1)
    assert model.forward_members(x).shape == (2, 3, 5)
    assert model.forecast(y).shape == (5,)
    assert model.forecast(y, members=True).shape == (2, 5)
    segments = torch.as_tensor(np.stack([y[:model.segment_length]] * 4))
    loss = model.training_loss(segments)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("log, seasonal, first, scaler", [
    (False, False, False, "standard"), (True, True, False, "standard"),
    (False, True, True, "minmax"), (True, False, True, None), (True, True, True, "standard"),
])
def test_scaling_and_differencing_invert_exactly(log, seasonal, first, scaler):
    y = _series(60)
    L, H, m = 30, 8, 12
    model = Forecaster(L, H, period=m, seasonal_difference=seasonal, difference=first, log=log,
                       scaler=scaler, hidden_size=4, dtype=torch.float64).adapt(y[:40])
    # the fitted scaler is NumPy's statistics of the NumPy-differenced training part
    d = _numpy_differences(y[:40], log, m, seasonal, first)
    if scaler == "standard":
        np.testing.assert_allclose(model.target_loc.numpy(), [d.mean()], rtol=1e-12)
        np.testing.assert_allclose(model.target_scale.numpy(), [d.std()], rtol=1e-12)
    elif scaler == "minmax":
        np.testing.assert_allclose(model.target_loc.numpy(), [d.min()], rtol=1e-12)
        np.testing.assert_allclose(model.target_scale.numpy(), [d.max() - d.min()], rtol=1e-12)
    segment = torch.as_tensor(y[None, 10:10 + L + H])
    z = model._scale(model._differences(model._pre(segment)))
    expected_z = _numpy_differences(y[10:10 + L + H], log, m, seasonal, first)
    expected_z = (expected_z - model.target_loc.numpy()) / model.target_scale.numpy()
    np.testing.assert_allclose(z[0].numpy(), expected_z, rtol=1e-10, atol=1e-12)
    back = model._integrate(segment[:, :L], z[:, -H:])
    np.testing.assert_allclose(back[0].numpy(), y[10 + L:10 + L + H], rtol=1e-12)


def test_outputs_are_in_the_users_units():
    """With the head at zero the network predicts z = 0, i.e. the mean seasonal change of the
    training part: the forecast must be last season's value plus that mean, in passengers."""
    y = _series(60) * 7
    model = Forecaster(24, 6, strategy="direct", period=12, seasonal_difference=True,
                       hidden_size=4, dtype=torch.float64).adapt(y[:48])
    for member in model.members:
        torch.nn.init.zeros_(member["head"].weight)
        torch.nn.init.zeros_(member["head"].bias)
    mean_change = np.mean(y[12:48] - y[:36])
    expected = y[36 - 12:36 - 12 + 6] + mean_change  # window y[12:36], future rows 36..41
    np.testing.assert_allclose(model(torch.as_tensor(y[None, 12:36]))[0].detach(), expected,
                               rtol=1e-12)


def test_recursive_feeds_its_prediction_back():
    """The recursive forecast equals a hand-run loop over the member's rnn and head."""
    y = _series(60)
    model = Forecaster(24, 4, strategy="recursive", period=12, seasonal_difference=True,
                       hidden_size=6, seed=3, dtype=torch.float64).adapt(y[:48])
    window = torch.as_tensor(y[None, 30:54])
    member = model.members[0]
    z = model._scale(model._differences(model._pre(window)))  # (1, 12)
    out, state = member["rnn"](z.unsqueeze(-1))
    steps = [member["head"](out[:, -1])]
    for _ in range(3):
        out, state = member["rnn"](steps[-1].unsqueeze(1), state=state)
        steps.append(member["head"](out[:, -1]))
    # undo the scaling and the seasonal difference by hand: y[t] = y[t - 12] + change
    change = (torch.cat(steps, 1) * model.target_scale + model.target_loc)[0].detach().numpy()
    expected = y[54 - 12:54 - 12 + 4] + change
    np.testing.assert_allclose(model(window)[0].detach().numpy(), expected, rtol=1e-12)


def test_covariates_reach_the_step_they_belong_to():
    y = _series(60)
    dates = np.datetime64("2001-01") + np.arange(60)
    exog = np.random.default_rng(1).normal(size=(60, 2))
    L, H = 24, 4
    model = Forecaster(L, H, strategy="recursive", period=12, seasonal_difference=True,
                       num_exogenous=2, calendar=["month"], hidden_size=6, seed=0,
                       dtype=torch.float64).adapt(y[:48], exog[:48])
    cov = model.covariates(dates, exog)  # (60, 2 + 2)
    assert cov.shape == (60, 4)
    np.testing.assert_array_equal(cov[:, 2:], calendar_features(dates, ["month"])[0])
    np.testing.assert_allclose(model.exogenous_loc.numpy(), exog[:48].mean(0), rtol=1e-12)
    x = torch.as_tensor(y[None, 20:20 + L])
    c = torch.as_tensor(cov[None, 20:20 + L + H])
    base = model(x, c)[0].detach()
    # the covariates of future step 2 (row L + 2) change steps 2 and 3 only
    changed = c.clone()
    changed[0, L + 2, :2] += 5.0
    after = model(x, changed)[0].detach()
    assert torch.equal(after[:2], base[:2]) and not torch.allclose(after[2:], base[2:])
    # rows that differencing consumed (the first 12 + 1) are never read
    changed = c.clone()
    changed[0, :13] += 5.0
    assert torch.equal(model(x, changed)[0].detach(), base)
    # the NumPy convenience builds the same covariates from dates and exogenous values
    via_numpy = model.forecast(y[:20 + L], dates=dates[:20 + L], exogenous=exog[:20 + L],
                               future_exogenous=exog[20 + L:20 + L + H])
    np.testing.assert_allclose(via_numpy, base.numpy(), rtol=1e-12)


def test_direct_uses_future_covariates():
    y = _series(60)
    model = Forecaster(24, 3, strategy="direct", period=12, seasonal_difference=True,
                       num_exogenous=1, hidden_size=4, seed=0).adapt(y[:48], y[:48] * 0.1)
    x = torch.as_tensor(y[None, :24])
    c = torch.zeros(1, 27, 1)
    c2 = c.clone()
    c2[0, 25] = 3.0
    assert not torch.allclose(model(x, c), model(x, c2))


def test_ensemble_is_the_mean_of_its_seeded_members():
    y = _series(60)
    common = dict(strategy="direct", period=12, seasonal_difference=True, hidden_size=5,
                  dtype=torch.float64)
    ensemble = Forecaster(24, 4, ensemble=3, seed=10, **common).adapt(y[:48])
    singles = [Forecaster(24, 4, seed=10 + i, **common).adapt(y[:48]) for i in range(3)]
    x = torch.as_tensor(y[None, 30:54])
    expected = torch.stack([s(x) for s in singles]).mean(0)
    torch.testing.assert_close(ensemble(x), expected, rtol=1e-12, atol=1e-12)
    members = ensemble.forward_members(x)
    assert not torch.allclose(members[0], members[1])  # different seeds, different nets


@pytest.mark.parametrize("dates, period, freq", [
    (["1949-01", "1949-02", "1949-03"], 12, "1M"),
    (["2000-01-01", "2000-04-01", "2000-07-01"], 4, "3M"),
    (["2020-03-01", "2020-03-02", "2020-03-03"], 7, "1D"),
    (["2020-03-02", "2020-03-09", "2020-03-16"], 52, "7D"),
    (["2020-03-01T00", "2020-03-01T01", "2020-03-01T02"], 24, "1h"),
    (["2001", "2002", "2003"], 1, "12M"),
])
def test_defaults_from_frequency(dates, period, freq):
    assert seasonal_period(dates) == (period, freq)
    settings = default_settings(dates, n=500)
    assert settings["period"] == period
    assert settings["look_back"] >= 2 * period
    assert settings["horizon"] == max(period, 1)
    assert settings["seasonal_difference"] == (period > 1)
    # a model built from them accepts its look_back
    model = Forecaster(**{k: v for k, v in settings.items()}, hidden_size=2)
    assert model.look_back - model.consumed >= 1


def test_future_dates_step_by_freq():
    assert [str(d) for d in future_dates("1960-11", 3, "1M")] == ["1960-12", "1961-01",
                                                                 "1961-02"]
    assert [str(d) for d in future_dates(np.datetime64("2020-02-28"), 2, "1D")] == [
        "2020-02-29", "2020-03-01"]


def test_for_series_reads_the_dates_and_sign():
    import rnnkit

    model = Forecaster.for_series(rnnkit.datasets.airline(), hidden_size=4)
    assert (model.period, model.look_back, model.horizon, model.log, model.freq) == (
        12, 24, 12, True, "1M")


def test_config_round_trip_keeps_scalers_and_outputs():
    y = _series(60)
    model = Forecaster(24, 4, strategy="recursive", period=12, seasonal_difference=True,
                       difference=True, log=True, num_exogenous=1, calendar=["month"],
                       ensemble=2, hidden_size=5, seed=1, freq="1M").adapt(y[:48], y[:48])
    blob = json.loads(json.dumps(serialize(model)))
    twin = deserialize(blob)
    assert twin.get_config() == model.get_config()
    twin.load_state_dict(model.state_dict())
    assert bool(twin.fitted)
    x = torch.as_tensor(y[None, 24:48])
    c = torch.as_tensor(model.covariates(np.datetime64("2001-01") + np.arange(28),
                                         y[24:52])[None])
    torch.testing.assert_close(twin(x, c), model(x, c))


@pytest.mark.parametrize("build, call, error, message", [
    (lambda: Forecaster(12, 3, period=12, seasonal_difference=True), None, ValueError,
     "look_back >= 13"),
    (lambda: Forecaster(12, 3, strategy="multi"), None, ValueError, "recursive' or 'direct"),
    (lambda: Forecaster(12, 0), None, ValueError, "horizon must be an int >= 1"),
    (lambda: Forecaster(12, 2, hidden_size=2), lambda m: m(torch.ones(1, 12)), RuntimeError,
     "adapt"),
    (lambda: Forecaster(12, 2, hidden_size=2).adapt(np.arange(1.0, 30)),
     lambda m: m(torch.ones(2, 11)), ValueError, r"\(B, 12\)"),
    (lambda: Forecaster(12, 2, hidden_size=2, log=True).adapt(np.arange(1.0, 30)),
     lambda m: m(-torch.ones(1, 12)), ValueError, "positive"),
    (lambda: Forecaster(12, 2, hidden_size=2, num_exogenous=1).adapt(np.arange(1.0, 30),
                                                                      np.ones(29)),
     lambda m: m(torch.ones(1, 12)), ValueError, r"covariates \(B, 14, 1\)"),
])
def test_bad_use_is_named(build, call, error, message):
    with pytest.raises(error, match=message):
        model = build()
        call(model)


@pytest.mark.parametrize("name", ["rnnkit.models.forecaster", "rnnkit.models.baselines"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("cell", ["gru", "indrnn", "min_gru"])
def test_any_backbone_cell(cell):
    y = _series(60)
    model = Forecaster(24, 3, strategy="recursive", period=12, seasonal_difference=True,
                       cell=cell, hidden_size=4, seed=0).adapt(y[:48])
    assert model(torch.as_tensor(y[None, 24:48])).shape == (1, 3)
    blob = json.loads(json.dumps(serialize(model)))
    twin = deserialize(blob)
    twin.load_state_dict(model.state_dict())
    x = torch.as_tensor(y[None, 20:44])
    torch.testing.assert_close(twin(x), model(x))


def test_a_cell_instance_is_copied_for_each_member():
    from rnnkit.cells import IndRNNCell

    y = _series(60)
    cell = IndRNNCell(1, 5)
    model = Forecaster(24, 2, period=12, seasonal_difference=True, cell=cell, ensemble=2,
                       seed=0).adapt(y[:48])
    first, second = (m["rnn"] for m in model.members)
    assert any(p is q for p in first.parameters() for q in cell.parameters())
    assert not any(p is q for p in first.parameters() for q in second.parameters())
    twin = deserialize(json.loads(json.dumps(serialize(model))))
    twin.load_state_dict(model.state_dict())
    x = torch.as_tensor(y[None, 20:44])
    torch.testing.assert_close(twin(x), model(x))
