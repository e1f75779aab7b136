"""rnnkit.datasets: the shipped airline series and locally generated MNIST-1D."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import rnnkit.datasets
from rnnkit.data import LabeledSequences, write_idx


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
    train = rnnkit.datasets.mnist1d(num_samples=200, seed=1)
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    test = rnnkit.datasets.mnist1d("test", num_samples=200, seed=1)
    assert isinstance(train, LabeledSequences) and isinstance(test, LabeledSequences)
    assert len(train) == 160 and len(test) == 40
    x, y = train[0]
    assert x.shape == (40, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(train.y.unique().tolist()) <= set(range(10))
    # oracle: the mnist1d package itself, called directly with the same arguments
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 200, 0.8, 1
    raw = make_dataset(args)
    np.testing.assert_array_equal(train.x[:, :, 0].numpy(), raw["x"].astype(np.float32))
    np.testing.assert_array_equal(test.y.numpy(), raw["y_test"])
    train.x.zero_()  # the process-wide cache must not see a caller's edit
    again = rnnkit.datasets.mnist1d(split="train", num_samples=200, seed=1)
    np.testing.assert_array_equal(again.x[:, :, 0].numpy(), raw["x"].astype(np.float32))
    with pytest.raises(TypeError, match="unknown mnist1d argument 'colour'"):
        rnnkit.datasets.mnist1d(num_samples=20, colour=1)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        rnnkit.datasets.mnist1d("val")


def _idx_folder(tmp_path, n=3):
    images = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images.astype(np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    return tmp_path


def test_every_sample_dataset_returns_labeled_sequences_with_root_then_split(tmp_path):
    root = _idx_folder(tmp_path)
    for ds in (rnnkit.datasets.mnist(root, "test"), rnnkit.datasets.mnist(root, split="test"),
               rnnkit.datasets.fashion_mnist(root, "test"),
               rnnkit.datasets.fashion_mnist(root=root, split="test")):
        assert isinstance(ds, LabeledSequences) and len(ds) == 3
        x, y = ds[2]
        assert x.shape == (28, 28) and x.dtype == torch.float32 and int(y) == 2
        xb, yb = next(iter(DataLoader(ds, batch_size=3)))  # default collate: batch-major
        assert xb.shape == (3, 28, 28) and yb.tolist() == [0, 1, 2]
    # the old order fashion_mnist(split, root) still works, with a warning
    with pytest.warns(FutureWarning, match=r"fashion_mnist\(root, split\)"):
        old = rnnkit.datasets.fashion_mnist("test", root)
    assert torch.equal(old.x, rnnkit.datasets.fashion_mnist(root, "test").x)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        rnnkit.datasets.mnist(root, "val")


@pytest.mark.parametrize("module", ["rnnkit.data.timeseries", "rnnkit.data.text",
                                    "rnnkit.data.idx", "rnnkit.data.batching",
                                    "rnnkit.data.labeled", "rnnkit.data._checks",
                                    "rnnkit.datasets"])
def test_module_examples_run(module):
    from tests.helpers import assert_doctests_pass

    assert_doctests_pass(module)
