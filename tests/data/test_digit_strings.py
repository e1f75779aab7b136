"""Digit-string images: assembly read back independently, splits, padding, errors, MNIST files."""

import numpy as np
import pytest
import torch

from rnnkit.data.digit_strings import (
    DIGIT_WORDS,
    MNIST_ENV,
    DigitPool,
    DigitStrings,
    collate_digit_strings,
    elastic_displacement,
    find_mnist_dir,
    load_mnist_digits,
    split_digit_pool,
    warp_digit,
    warp_digits,
)
from rnnkit.data.idx import write_idx
from tests.helpers import assert_doctests_pass

MNIST_TEST = "/work/shared/data/mnist-test"


def fake_pool(n=60, height=28, width=28, seed=0):
    """Random digit images with every pixel in 1..255, so no column of a digit is blank."""
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (n, height, width), dtype=np.uint8)
    return images, np.arange(n) % 10


def read_back(image, pool_images):
    """Which pool images an assembled string shows, left to right, and its gaps: found by
    scanning for blank columns (gaps are 0, digits never are), independently of the builder."""
    pixels = np.rint(image.numpy() * 255).astype(np.int64)
    lit = (pixels != 0).any(axis=0)
    width = pool_images.shape[2]
    flat = pool_images.reshape(len(pool_images), -1).astype(np.int64)
    found, gaps, column, gap = [], [], 0, 0
    while column < len(lit):
        if not lit[column]:
            gap += 1
            column += 1
            continue
        block = pixels[:, column:column + width].reshape(-1)
        matches = np.flatnonzero((flat == block).all(axis=1))
        assert len(matches) >= 1, f"columns {column}.. show no pool image"
        found.append(int(matches[0]))
        gaps.append(gap)
        gap, column = 0, column + width
    gaps.append(gap)
    return found, gaps


def test_strings_show_pool_digits_with_gaps_in_range():
    images, labels = fake_pool()
    strings = DigitStrings((images, labels), count=40, min_digits=2, max_digits=5, max_gap=4,
                           seed=3)
    seen_lengths, seen_gaps = set(), set()
    for i in range(len(strings)):
        item = strings[i]
        assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 28
        assert item["width"] == item["image"].shape[1]
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        found, gaps = read_back(item["image"], images)
        assert labels[found].tolist() == item["digits"].tolist()
        assert item["text"] == "".join(str(d) for d in labels[found])
        assert item["digits"].dtype == torch.int64 and 2 <= len(found) <= 5
        # a zero gap between digits merges with nothing: the scan counts each gap exactly
        assert len(gaps) == len(found) + 1 and all(0 <= g <= 4 for g in gaps)
        assert item["width"] == 28 * len(found) + sum(gaps) <= strings.max_width
        seen_lengths.add(len(found))
        seen_gaps.update(gaps)
    assert seen_lengths == {2, 3, 4, 5} and seen_gaps == {0, 1, 2, 3, 4}
    assert strings.widths.tolist() == [strings[i]["width"] for i in range(len(strings))]


def test_same_seed_same_strings_other_seed_other_strings():
    pool = fake_pool()
    a, b = DigitStrings(pool, count=5, seed=1), DigitStrings(pool, count=5, seed=1)
    c = DigitStrings(pool, count=5, seed=2)
    for i in range(5):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["text"] == b[i]["text"]
        assert a.digits(i).tolist() == a[i]["digits"].tolist()
    assert [a[i]["text"] for i in range(5)] != [c[i]["text"] for i in range(5)]
    assert a[-1]["text"] == a[4]["text"]


def test_split_is_disjoint_per_class_and_seeded():
    images, labels = fake_pool(n=100)
    train, test = split_digit_pool(images, labels, held_out=0.3, seed=5)
    assert isinstance(train, DigitPool)
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    assert sorted(train.index.tolist() + test.index.tolist()) == list(range(100))
    assert len(test.labels) == 30 and set(test.labels.tolist()) == set(range(10))
    assert set(train.labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(train.images, images[train.index])
    np.testing.assert_array_equal(test.labels, labels[test.index])
    again, _ = split_digit_pool(images, labels, held_out=0.3, seed=5)
    other, _ = split_digit_pool(images, labels, held_out=0.3, seed=6)
    assert again.index.tolist() == train.index.tolist() != other.index.tolist()


def test_held_out_strings_use_only_held_out_digits():
    images, labels = fake_pool(n=100)
    train, test = split_digit_pool(images, labels, held_out=0.2, seed=0)
    strings = DigitStrings(test, count=20, seed=0)
    used = set()
    for i in range(len(strings)):
        found, _ = read_back(strings[i]["image"], images)  # rows of the full array
        used.update(found)
    assert used <= set(test.index.tolist()) and used.isdisjoint(train.index.tolist())


def test_collate_pads_images_with_zeros_and_digits_with_minus_one():
    strings = DigitStrings(fake_pool(), count=6, min_digits=1, max_digits=6, seed=4)
    items = [strings[i] for i in range(6)]
    batch = collate_digit_strings(items)
    widths = [item["width"] for item in items]
    lengths = [len(item["digits"]) for item in items]
    assert batch["images"].shape == (6, 28, max(widths))
    assert batch["widths"].tolist() == widths and batch["widths"].dtype == torch.int64
    assert batch["digit_lengths"].tolist() == lengths
    assert batch["digits"].shape == (6, max(lengths))
    for row, item in enumerate(items):
        assert torch.equal(batch["images"][row, :, :widths[row]], item["image"])
        assert not batch["images"][row, :, widths[row]:].any()
        assert batch["digits"][row, :lengths[row]].tolist() == item["digits"].tolist()
        assert (batch["digits"][row, lengths[row]:] == -1).all()
    loader = torch.utils.data.DataLoader(strings, batch_size=4, collate_fn=collate_digit_strings)
    assert [len(b["widths"]) for b in loader] == [4, 2]


def test_digit_words():
    assert len(DIGIT_WORDS) == 10 and DIGIT_WORDS[0] == "zero" and DIGIT_WORDS[9] == "nine"
    assert " ".join(DIGIT_WORDS[d] for d in (3, 1, 4, 7)) == "three one four seven"


def test_other_digit_sizes():
    strings = DigitStrings(fake_pool(n=20, height=5, width=3), count=3, max_gap=0, seed=0)
    item = strings[0]
    assert item["image"].shape == (5, 3 * len(item["digits"]))
    assert strings.height == 5 and strings.max_width == 21


def test_bad_arguments_are_clear_errors():
    images, labels = fake_pool(n=20)
    with pytest.raises(ValueError, match="held_out must be a fraction"):
        split_digit_pool(images, labels, held_out=1.0)
    with pytest.raises(ValueError, match="held_out must be a fraction"):
        split_digit_pool(images, labels, held_out=0)
    with pytest.raises(ValueError, match=r"labels must be digits 0-9, got labels\[3\] = 12"):
        split_digit_pool(images, np.where(np.arange(20) == 3, 12, labels))
    with pytest.raises(ValueError, match=r"labels must be \(20,\)"):
        split_digit_pool(images, labels[:5])
    with pytest.raises(TypeError, match="images must be uint8"):
        DigitStrings((images.astype(np.float32), labels), count=2)
    with pytest.raises(ValueError, match=r"images must be \(N, height, width\)"):
        DigitStrings((images[0], labels), count=2)
    with pytest.raises(ValueError, match=r"max_digits \(2\) must be >= min_digits \(3\)"):
        DigitStrings((images, labels), count=2, max_digits=2)
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        DigitStrings((images, labels), count=2, max_gap=-1)
    with pytest.raises(TypeError, match="count must be an int"):
        DigitStrings((images, labels), count=2.0)
    with pytest.raises(ValueError, match="pool holds no digit images"):
        DigitStrings((images[:0], labels[:0]), count=2)
    with pytest.raises(TypeError, match="pool must be a DigitPool"):
        DigitStrings(images, count=2)
    strings = DigitStrings((images, labels), count=2)
    with pytest.raises(IndexError, match="index 2 out of range for 2 strings"):
        strings[2]
    with pytest.raises(ValueError, match="empty batch"):
        collate_digit_strings([])
    tall = DigitStrings(fake_pool(n=10, height=5), count=1)
    with pytest.raises(ValueError, match=r"same height, got \[5, 28\]"):
        collate_digit_strings([strings[0], tall[0]])


def test_missing_folder_says_where_to_put_the_files(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz") as err:
        load_mnist_digits(missing)
    assert str(missing) in str(err.value) and MNIST_ENV in str(err.value)
    monkeypatch.setenv(MNIST_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=r"from \$RNNKIT_MNIST"):
        load_mnist_digits()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no test images IDX file"):
        load_mnist_digits(tmp_path / "empty")


def test_loads_idx_files_from_the_environment_folder(tmp_path, monkeypatch):
    images, labels = fake_pool(n=7)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    monkeypatch.setenv(MNIST_ENV, str(tmp_path))
    assert find_mnist_dir() == tmp_path
    got_images, got_labels = load_mnist_digits()
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:, :5])
    with pytest.raises(ValueError, match=r"expected uint8 images \(N, 28, 28\)"):
        load_mnist_digits(tmp_path)


def test_real_mnist_test_digits():
    import os
    if not os.path.isfile(os.path.join(MNIST_TEST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("MNIST test files not present")
    images, labels = load_mnist_digits(MNIST_TEST)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    # the MNIST test set's published class counts (LeCun's page: 980 zeros ... 1009 nines)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                            1009]


def test_doctests():
    assert_doctests_pass("rnnkit.data.digit_strings")


def test_jitter_moves_each_digit_up_or_down_within_range():
    images, labels = fake_pool(n=30)
    plain = DigitStrings((images, labels), count=12, seed=5)
    moved = DigitStrings((images, labels), count=12, seed=5, jitter=2)
    seen = set()
    for i in range(12):
        a, b = plain[i], moved[i]
        assert a["text"] == b["text"] and a["width"] == b["width"]  # same draw otherwise
        found, gaps = read_back(a["image"], images)
        pixels = np.rint(b["image"].numpy() * 255).astype(np.int64)
        column = 0
        for pick, gap in zip(found, gaps, strict=False):
            column += gap
            block = pixels[:, column:column + 28]
            digit = images[pick].astype(np.int64)
            shifts = [s for s in range(-2, 3)
                      if np.array_equal(block, np.roll(digit, s, axis=0) * _kept_rows(s))]
            assert len(shifts) == 1, f"string {i}: a digit moved by none of -2..2"
            seen.add(shifts[0])
            column += 28
    assert seen == {-2, -1, 0, 1, 2}
    with pytest.raises(ValueError, match="jitter must be >= 0"):
        DigitStrings((images, labels), count=2, jitter=-1)
    with pytest.raises(ValueError, match=r"jitter \(28\) must be smaller than the digits' height"):
        DigitStrings((images, labels), count=2, jitter=28)


def _kept_rows(shift):
    """(28, 1) 0/1: the rows a digit moved by ``shift`` still covers (rolled-in rows are blank)."""
    rows = np.ones((28, 1), dtype=np.int64)
    if shift > 0:
        rows[:shift] = 0
    elif shift < 0:
        rows[shift:] = 0
    return rows


def _scipy_affine(digit, rotate, scale, shear, shift):
    """The same map through scipy.ndimage (the oracle): ``affine_transform`` reads the input at
    ``matrix @ (row, col) + offset`` for each output pixel, so it takes the inverse map."""
    ndimage = pytest.importorskip("scipy.ndimage")
    theta, phi = np.deg2rad(rotate), np.deg2rad(shear)
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    forward_xy = rotation @ np.array([[1.0, np.tan(phi)], [0.0, 1.0]]) * scale
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    matrix = swap @ np.linalg.inv(forward_xy) @ swap
    centre = (np.array(digit.shape, dtype=np.float64) - 1.0) / 2.0  # (row, col)
    offset = centre - matrix @ (centre + np.array([0.0, shift]))
    return ndimage.affine_transform(digit.astype(np.float64), matrix, offset=offset, order=1,
                                    mode="grid-constant", cval=0.0)


@pytest.mark.parametrize("params", [(10.0, 1.1, 5.0, 1.5), (-7.0, 0.9, -12.0, -2.3),
                                    (0.0, 1.0, 0.0, 3.0), (25.0, 0.75, 20.0, 0.4),
                                    (0.0, 1.2, 0.0, 0.0)])
def test_warp_digit_equals_scipy_affine_transform(params):
    images, _ = fake_pool(n=3, height=28, width=24)  # not square: rows and columns differ
    for digit in images:
        np.testing.assert_allclose(warp_digit(digit, *params), _scipy_affine(digit, *params),
                                   atol=1e-3)


def test_warp_digits_is_warp_digit_per_digit_and_identity_is_exact():
    images, _ = fake_pool(n=4)
    params = np.array([[5.0, 1.05, -3.0, 0.5], [0.0, 1.0, 0.0, 0.0], [-9.0, 0.92, 8.0, -1.2],
                       [0.0, 1.0, 0.0, 2.0]])
    stacked = warp_digits(images, params)
    for digit, row, got in zip(images, params, stacked, strict=True):
        np.testing.assert_allclose(got, warp_digit(digit, *row), atol=1e-4)
    assert np.array_equal(stacked[1], images[1].astype(np.float32))  # identity: unchanged
    # a whole-pixel move: columns moved right by 2, the first two blank, the last two lost
    assert np.allclose(stacked[3][:, 2:], images[3][:, :-2]) and not stacked[3][:, :2].any()


def test_affine_augmentation_warps_each_digit_and_keeps_every_other_draw():
    images, labels = fake_pool(n=30)
    plain = DigitStrings((images, labels), count=12, seed=5, jitter=1)
    off = DigitStrings((images, labels), count=12, seed=5, jitter=1, rotate=0.0, scale=0,
                       shear=0.0, shift=0.0)
    warped = DigitStrings((images, labels), count=12, seed=5, jitter=1, rotate=10.0,
                          scale=0.1, shear=8.0, shift=2.0)
    drawn = []
    for i in range(12):
        a, b, c = plain[i], off[i], warped[i]
        assert torch.equal(a["image"], b["image"])  # options at 0: the strings as before
        assert a["text"] == c["text"] and a["width"] == c["width"]  # same digits and gaps
        # the same string without jitter or warps, to read its digits and gaps back
        unmoved = DigitStrings((images, labels), count=12, seed=5)[i]
        assert unmoved["text"] == a["text"]
        found, gaps = read_back(unmoved["image"], images)
        column = 0
        for j, (pick, gap) in enumerate(zip(found, gaps, strict=False)):
            column += gap
            rotate, scale, shear, shift = warped._affine[i][j]
            drawn.append((rotate, scale, shear, shift))
            expected = _scipy_affine(images[pick], rotate, scale, shear, shift)
            block = c["image"].numpy()[:, column:column + 28] * 255.0
            moves = [s for s in (-1, 0, 1) if np.allclose(
                block, np.roll(expected, s, axis=0) * _kept_rows(s), atol=1e-2)]
            assert moves, f"string {i} digit {j}: not the drawn affine map of pool image {pick}"
            column += 28
    drawn = np.array(drawn)
    limits = np.array([10.0, 0.1, 8.0, 2.0])
    centre = np.array([0.0, 1.0, 0.0, 0.0])
    assert (np.abs(drawn - centre) <= limits).all()
    assert (np.abs(drawn - centre).max(axis=0) > 0.5 * limits).all()  # the ranges are used
    for name, value in (("rotate", -1.0), ("scale", 1.0), ("shear", 90.0), ("shift", 28.0),
                        ("rotate", True), ("shift", "2")):
        with pytest.raises(ValueError, match=f"{name} must be a number in"):
            DigitStrings((images, labels), count=2, **{name: value})


@pytest.mark.parametrize("sigma, shape", [(4.0, (3, 2, 28, 28)), (1.3, (2, 9, 7)),
                                          (6.0, (1, 5, 12))])
def test_elastic_displacement_equals_scipy_gaussian_filter(sigma, shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, shape)
    expected = ndimage.gaussian_filter(noise, (0,) * (len(shape) - 2) + (sigma, sigma),
                                       mode="constant", cval=0.0)
    np.testing.assert_allclose(elastic_displacement(noise, sigma), expected, atol=1e-12)


def test_warp_digits_with_a_displacement_equals_scipy_map_coordinates():
    ndimage = pytest.importorskip("scipy.ndimage")
    images, _ = fake_pool(n=2, height=28, width=24)
    rng = np.random.default_rng(1)
    displacement = rng.uniform(-3.0, 3.0, (2, 2, 28, 24))  # (L, (dx, dy), H, D)
    identity = np.tile([0.0, 1.0, 0.0, 0.0], (2, 1))
    got = warp_digits(images, identity, displacement)
    rows, cols = np.mgrid[0:28, 0:24]
    for digit, (dx, dy), out in zip(images, displacement, got, strict=True):
        expected = ndimage.map_coordinates(digit.astype(np.float64), [rows + dy, cols + dx],
                                           order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out, expected, atol=1e-3)
    # with an affine map too: the affine map's source point, moved by the field
    params = np.array([[10.0, 1.1, 5.0, 1.5], [-7.0, 0.9, -12.0, -2.3]])
    zero = warp_digits(images, params, np.zeros((2, 2, 28, 24)))
    np.testing.assert_array_equal(zero, warp_digits(images, params))
    with pytest.raises(ValueError, match=r"displacement must be \(L, 2, H, D\)"):
        warp_digits(images, identity, displacement[:, :, :, :20])


def test_elastic_augmentation_distorts_each_digit_reproducibly_and_keeps_every_other_draw():
    images, labels = fake_pool(n=30)
    options = dict(count=10, seed=3, jitter=1, rotate=5.0, shift=1.0)
    plain = DigitStrings((images, labels), **options)
    off = DigitStrings((images, labels), elastic=0.0, **options)
    bent = DigitStrings((images, labels), elastic=34.0, elastic_sigma=4.0, **options)
    again = DigitStrings((images, labels), elastic=34.0, elastic_sigma=4.0, **options)
    for i in range(10):
        a, b, c = plain[i], off[i], bent[i]
        assert torch.equal(a["image"], b["image"])  # elastic 0: the strings as before
        assert a["text"] == c["text"] and a["width"] == c["width"]  # same digits and gaps
        assert torch.equal(c["image"], again[i]["image"])  # fixed by the seed
        assert not torch.equal(a["image"], c["image"])
        assert float(c["image"].min()) >= 0.0 and float(c["image"].max()) <= 1.0
    # the displacement of one digit: smoothed noise, a few pixels at Simard's settings
    field = 34.0 * elastic_displacement(
        np.random.default_rng(7).uniform(-1.0, 1.0, (2, 28, 28)), 4.0)
    assert 0.5 < float(np.abs(field).mean()) < 3.0
    for name, value in (("elastic", -1.0), ("elastic_sigma", -2.0), ("elastic", "3")):
        with pytest.raises(ValueError, match=f"{name} must be a number in"):
            DigitStrings((images, labels), count=2, **{name: value})
    with pytest.raises(ValueError, match="elastic_sigma must be positive"):
        DigitStrings((images, labels), count=2, elastic=10.0, elastic_sigma=0.0)
