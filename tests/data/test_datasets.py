"""rnnkit.datasets: the shipped airline series and locally generated MNIST-1D."""

import numpy as np
import pytest

import rnnkit.datasets


def test_airline_is_shipped_inside_the_package():
    from importlib import resources

    assert (resources.files("rnnkit.data") / "airline.csv").is_file()
    series = rnnkit.datasets.airline()
    assert series.values.shape == (144, 1) and series.name == "airline"
    # Box & Jenkins: the yearly totals grow every year
    yearly = series.values[:, 0].reshape(12, 12).sum(1)
    assert np.all(np.diff(yearly) > 0)


def test_mnist1d_generated_locally():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    data = rnnkit.datasets.mnist1d(num_samples=200, seed=1)
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert data["x"].shape == (160, 40) and data["x_test"].shape == (40, 40)
    assert data["y"].dtype == np.int64 and set(np.unique(data["y"])) <= set(range(10))
    again = rnnkit.datasets.mnist1d(num_samples=200, seed=1)
    np.testing.assert_array_equal(data["x"], again["x"])  # generated, deterministic
    with pytest.raises(TypeError, match="unknown mnist1d argument 'colour'"):
        rnnkit.datasets.mnist1d(num_samples=20, colour=1)
