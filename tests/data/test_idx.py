"""IDX reader: files the tests write, errors, real MNIST test files, Fashion-MNIST if installed."""

import gzip
import os
import struct

import numpy as np
import pytest

import rnnkit.datasets
from rnnkit.data.idx import (
    FASHION_MNIST_DIR,
    IDXFormatError,
    IDXSequenceDataset,
    find_idx_pair,
    read_idx,
    write_idx,
)

MNIST_TEST = "/work/shared/data/mnist-test"


def _raw_idx(code, dtype, a):
    """An IDX file built by hand from the spec, independent of write_idx."""
    return (bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
            + a.astype(dtype).tobytes())


@pytest.mark.parametrize("code, dtype", [(0x08, ">u1"), (0x09, ">i1"), (0x0B, ">i2"),
                                         (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
@pytest.mark.parametrize("gz", [False, True])
def test_reads_hand_built_files(tmp_path, code, dtype, gz):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4)
    if dtype == ">u1":
        a = np.abs(a)
    body = _raw_idx(code, dtype, a)
    path = tmp_path / "f-idx3"
    path.write_bytes(gzip.compress(body) if gz else body)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, a)


def test_write_read_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte.gz", a)
    assert (tmp_path / "x-idx3-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), a)
    with pytest.raises(TypeError, match="IDX holds uint8, int8, int16, int32, float32 or float64"):
        write_idx(tmp_path / "bad", np.zeros(3, np.int64))


@pytest.mark.parametrize("body, message", [
    (b"\x08\x03\x00\x00", r"bad magic number 0x08030000"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", r"bad magic number 0x00000701"),
    (b"\x00\x00", r"2 bytes is too short for the 4-byte IDX magic number"),
    (b"\x00\x00\x08\x00", r"corrupt header: 0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", r"corrupt header: 3 dimensions need 16 header bytes, "
                                           r"the file has 8"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", r"truncated: shape \(5,\) of uint8 needs 5 "
                                                  r"data bytes, the file has 2"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", r"corrupt header: shape \(1,\) of uint8 "
                                                  r"accounts for 1 data bytes, the file has 2"),
])
def test_corrupt_files_get_clear_errors(tmp_path, body, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(body)
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(info.value).startswith(str(path))


def test_truncated_gzip(tmp_path):
    good = gzip.compress(_raw_idx(0x08, ">u1", np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "t.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IDXFormatError, match="t.gz: the gzip stream is truncated or corrupt"):
        read_idx(path)


def test_images_as_sequences_of_rows(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    assert find_idx_pair(tmp_path, "train") == (str(tmp_path / "train-images-idx3-ubyte.gz"),
                                                str(tmp_path / "train-labels-idx1-ubyte"))
    ds = rnnkit.datasets.mnist(tmp_path, "train")
    x, y = ds[4]
    assert x.shape == (28, 28) and ds.steps == 28 and ds.features == 28 and int(y) == 4
    np.testing.assert_allclose(x.numpy(), images[4] / 255.0, rtol=1e-6)
    xc, _ = IDXSequenceDataset(images, labels, column_major=True)[4]
    np.testing.assert_allclose(xc.numpy(), images[4].T / 255.0, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="no test images IDX file in"):
        find_idx_pair(tmp_path, "test")
    with pytest.raises(ValueError, match=r"labels must be \(6,\) to match the images"):
        IDXSequenceDataset(images, labels[:5])


@pytest.mark.skipif(not os.path.isdir(MNIST_TEST), reason="shared MNIST test files absent")
def test_real_mnist_test_files():
    images = read_idx(os.path.join(MNIST_TEST, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(MNIST_TEST, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    # the well-known first test labels of MNIST
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # cross-check against parsing the gzip by hand
    with gzip.open(os.path.join(MNIST_TEST, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    assert struct.unpack(">4I", raw[:16]) == (2051, 10000, 28, 28)
    np.testing.assert_array_equal(images[-1].ravel(), np.frombuffer(raw[-784:], np.uint8))
    ds = rnnkit.datasets.mnist(MNIST_TEST, "test")
    assert len(ds) == 10000 and ds[0][0].shape == (28, 28) and float(ds[0][0].max()) <= 1.0


def test_fashion_mnist_when_installed():
    if not os.path.isdir(FASHION_MNIST_DIR):
        with pytest.raises(FileNotFoundError, match="install the Debian package "
                                                    "dataset-fashion-mnist"):
            rnnkit.datasets.fashion_mnist()
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    for split, n in (("train", 60000), ("test", 10000)):
        ds = rnnkit.datasets.fashion_mnist(split=split)
        assert len(ds) == n and ds[0][0].shape == (28, 28)
        assert set(ds.labels.unique().tolist()) == set(range(10))
