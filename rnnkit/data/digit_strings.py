"""Digit-string images: real MNIST digits placed side by side with random gaps.

The data of rnnkit's sequence-recognition examples (CTC in ``docs/recognition.md``, image
captioning): a string of ``L`` digits (3 to 7 by default) is one image ``(28, W)`` made of
``L`` MNIST test digits ``(28, 28)`` laid left to right, with a random blank gap of ``0 ..
max_gap`` columns before each digit and after the last one, so
``W = 28 L + sum(gaps)`` varies from string to string. A recurrent network reads the image
column by column: ``W`` steps of 28 features (``image.T``).

Symbols: ``N`` digits in a pool, ``H x D`` pixels per digit (28 x 28 for MNIST), ``L`` digits
in a string, ``W`` its width in columns, ``B`` strings in a batch.

* :func:`load_mnist_digits` reads the 10,000 MNIST test digits (``t10k-*-ubyte.gz``) from
  ``$RNNKIT_MNIST`` or ``../shared/data/mnist-test`` next to the repository.
* :func:`split_digit_pool` splits them into two pools of disjoint digit *instances* (per class,
  so every class is in both): strings drawn from the held-out pool contain only digit images
  the training strings never showed.
* :class:`DigitStrings` draws ``count`` strings from a pool, reproducibly (the same pool,
  settings and ``seed`` give the same strings; images are built on demand, not stored).
* :func:`collate_digit_strings` pads a batch of them; ``DIGIT_WORDS`` spells the digits.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)  # a fake pool
    >>> labels = np.arange(50) % 10
    >>> train_pool, test_pool = split_digit_pool(images, labels, held_out=0.2, seed=0)
    >>> len(train_pool.labels), len(test_pool.labels)
    (40, 10)
    >>> strings = DigitStrings(train_pool, count=8, seed=1)
    >>> item = strings[0]
    >>> item["image"].shape[0], item["width"] == item["image"].shape[1], len(item["text"])
    (28, True, 5)
    >>> batch = collate_digit_strings([strings[0], strings[1]])
    >>> sorted(batch), tuple(batch["digits"].shape)
    (['digit_lengths', 'digits', 'images', 'widths'], (2, 5))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rnnkit.data._checks import int_arg
from rnnkit.data.idx import find_idx_pair, read_idx
from rnnkit.data.labeled import _as_numpy, _class_indices

__all__ = [
    "DIGIT_WORDS",
    "MNIST_ENV",
    "DigitPool",
    "DigitStrings",
    "collate_digit_strings",
    "elastic_displacement",
    "find_mnist_dir",
    "load_mnist_digits",
    "split_digit_pool",
    "warp_digit",
    "warp_digits",
]

#: the captions' words, by digit: ``[DIGIT_WORDS[d] for d in (3, 1, 4)]`` -> three one four
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                "eight", "nine")
#: the environment variable naming the folder with the MNIST test files
MNIST_ENV = "RNNKIT_MNIST"
_SHARED = ("shared", "data", "mnist-test")  # ../shared/data/mnist-test seen from a repository
_TEST_FILES = "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"


class DigitPool(NamedTuple):
    """Digit images to draw strings from: ``images`` uint8 ``(N, H, D)``, ``labels`` int64 ``(N,)``
    with values 0-9; ``index`` int64 ``(N,)``, each image's row in the array it came from."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray


def find_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder with the MNIST test files: ``root``, else ``$RNNKIT_MNIST``, else the first
    ``shared/data/mnist-test`` found beside this package's repository or a folder above it.

    Raises:
        FileNotFoundError: the folder does not exist; the message says where to put the files.
    """
    if root is not None:
        candidates = [Path(root)]
    elif os.environ.get(MNIST_ENV):
        candidates = [Path(os.environ[MNIST_ENV])]
    else:
        here = Path(__file__).resolve().parents[2]  # the folder holding the rnnkit package
        candidates = [folder.joinpath(*_SHARED) for folder in (here, *here.parents)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if root is not None or os.environ.get(MNIST_ENV):
        where = f"{candidates[0]} (from {'root' if root is not None else '$' + MNIST_ENV})"
    else:
        where = f"{candidates[1]}, the repository's ../shared/data/mnist-test"
    raise FileNotFoundError(
        f"no MNIST folder at {where}: put {_TEST_FILES} (the MNIST test set) in a folder and "
        f"pass it as root= or set ${MNIST_ENV} to it")


def load_mnist_digits(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test digits: ``(images uint8 (N, 28, 28), labels int64 (N,))``, N = 10,000.

    Args:
        root: the folder with ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``;
            None looks in ``$RNNKIT_MNIST``, then ``../shared/data/mnist-test`` (see
            :func:`find_mnist_dir`).

    Raises:
        FileNotFoundError: no such folder, or the files are not in it.
        ValueError: the files do not hold matching ``(N, 28, 28)`` uint8 images and 0-9 labels.
    """
    folder = find_mnist_dir(root)
    images_path, labels_path = find_idx_pair(folder, "test")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, 28, 28), got "
                         f"{images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{labels_path}: expected ({len(images)},) labels to match "
                         f"{images_path}, got shape {labels.shape}")
    labels = _class_indices(labels, f"{labels_path} labels")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0-9, got {labels.max()}")
    return images, labels


def _checked_pool(images: Any, labels: Any, index: Any = None) -> DigitPool:
    imgs = _as_numpy("images", images)
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, height, width) digit images, got shape "
                         f"{imgs.shape}")
    if imgs.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0-255, as MNIST), got {imgs.dtype}")
    labs = _as_numpy("labels", labels)
    if labs.shape != (len(imgs),):
        raise ValueError(f"labels must be ({len(imgs)},) to match the images, got shape "
                         f"{labs.shape}")
    labs = _class_indices(labs, "labels")
    if len(labs) and labs.max() > 9:
        i = int(np.argmax(labs))
        raise ValueError(f"labels must be digits 0-9, got labels[{i}] = {labs[i]}")
    idx = np.arange(len(imgs), dtype=np.int64) if index is None else np.asarray(index, np.int64)
    return DigitPool(imgs, labs, idx)


def split_digit_pool(images: Any, labels: Any, *, held_out: float = 0.2,
                     seed: int = 0) -> tuple[DigitPool, DigitPool]:
    """Split digit images into ``(train_pool, test_pool)`` with no image in both.

    Each class is split on its own (``round(held_out * n_class)`` of its images, at least one
    when the class has two or more), so both pools hold every digit; which images go where is
    a seeded permutation. ``pool.index`` says which rows of ``images`` each pool took.

    Raises:
        ValueError: ``held_out`` not strictly between 0 and 1, shapes that do not match,
            labels outside 0-9.
    """
    pool = _checked_pool(images, labels)
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not (
            0.0 < held_out < 1.0):
        raise ValueError(f"held_out must be a fraction strictly between 0 and 1, got "
                         f"{held_out!r}")
    rng = np.random.default_rng(int_arg("seed", seed, minimum=0))
    test_rows = []
    for digit in range(10):
        rows = np.flatnonzero(pool.labels == digit)
        if len(rows) == 0:
            continue
        take = int(round(held_out * len(rows)))
        take = min(max(take, 1), len(rows) - 1) if len(rows) >= 2 else 0
        test_rows.append(rng.permutation(rows)[:take])
    in_test = np.zeros(len(pool.labels), dtype=bool)
    if test_rows:
        in_test[np.concatenate(test_rows)] = True
    train, test = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    return (DigitPool(pool.images[train], pool.labels[train], train),
            DigitPool(pool.images[test], pool.labels[test], test))


class DigitStrings(torch.utils.data.Dataset):
    """``count`` digit strings drawn from ``pool``; a ``torch.utils.data.Dataset``.

    String ``i`` has ``L`` digits, ``L`` uniform in ``min_digits .. max_digits``, each an image
    drawn uniformly (with replacement) from ``pool``, with ``L + 1`` gaps uniform in ``0 ..
    max_gap`` columns (before each digit and after the last). Everything is drawn once at
    construction from ``seed``; the images are assembled on demand.

    Item ``i`` is a dict: ``"image"`` float32 ``(H, W)`` in ``[0, 1]`` (pixels / 255, gaps 0),
    ``"width"`` ``W`` (int), ``"digits"`` int64 ``(L,)`` (0-9), ``"text"`` the digits as a
    string (``"3147"``).

    Args:
        pool: a :class:`DigitPool` (from :func:`split_digit_pool`) or an ``(images, labels)``
            pair: uint8 ``(N, H, D)`` and 0-9 ``(N,)``.
        count: how many strings.
        min_digits, max_digits: the range of string lengths (inclusive).
        max_gap: the widest gap in columns (0: digits touch).
        seed: the draw's seed.
        jitter: augmentation: each digit moves up or down by a uniform ``-jitter .. jitter``
            pixels (rows pushed out are lost, rows let in are blank); 0 (default): none.
        rotate, scale, shear, shift: augmentation, a random affine map of each digit in its
            own ``H x D`` box about the box's centre (as torchvision's ``RandomAffine``), drawn
            per digit: rotation by a uniform ``-rotate .. rotate`` degrees, scaling by a
            uniform ``1 - scale .. 1 + scale``, horizontal shear by a uniform ``-shear ..
            shear`` degrees and a horizontal move by a uniform ``-shift .. shift`` pixels
            (a real number: sub-pixel moves too), sampled bilinearly, blank outside the
            digit (see :func:`warp_digit`); applied before ``jitter``. All 0 (default): none,
            and every other draw of the string is the same as without them.
        elastic, elastic_sigma: augmentation, an elastic distortion of each digit (Simard et
            al. 2003, who used ``elastic=34, elastic_sigma=4`` on MNIST): every pixel reads
            the digit ``elastic`` times a displacement field away, the field uniform noise in
            ``-1 .. 1`` per pixel and direction smoothed by a Gaussian of ``elastic_sigma``
            pixels (:func:`elastic_displacement`); with the affine map, each output pixel reads
            the affine map's source point moved by the field. 0 (default): none, and every
            other draw is the same as without it.
    """

    def __init__(self, pool: DigitPool | tuple[Any, Any], *, count: int, min_digits: int = 3,
                 max_digits: int = 7, max_gap: int = 8, seed: int = 0, jitter: int = 0,
                 rotate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
                 shift: float = 0.0, elastic: float = 0.0, elastic_sigma: float = 4.0) -> None:
        if isinstance(pool, DigitPool):
            pool = _checked_pool(pool.images, pool.labels, pool.index)
        elif isinstance(pool, (tuple, list)) and len(pool) == 2:
            pool = _checked_pool(*pool)
        else:
            raise TypeError(f"pool must be a DigitPool or an (images, labels) pair, got "
                            f"{type(pool).__name__}")
        if len(pool.labels) == 0:
            raise ValueError("pool holds no digit images")
        self.pool = pool
        self.count = int_arg("count", count, minimum=0)
        self.min_digits = int_arg("min_digits", min_digits)
        self.max_digits = int_arg("max_digits", max_digits)
        if self.max_digits < self.min_digits:
            raise ValueError(f"max_digits ({max_digits}) must be >= min_digits ({min_digits})")
        self.max_gap = int_arg("max_gap", max_gap, minimum=0)
        self.seed = int_arg("seed", seed, minimum=0)
        rng = np.random.default_rng(self.seed)
        sizes = rng.integers(self.min_digits, self.max_digits + 1, size=self.count)
        # one flat draw per quantity, cut into strings: the draw is vectorised and fixed by seed
        picks = rng.integers(0, len(pool.labels), size=int(sizes.sum()))
        gaps = rng.integers(0, self.max_gap + 1, size=int((sizes + 1).sum()))
        self._picks = np.split(picks, np.cumsum(sizes)[:-1]) if self.count else []
        self._gaps = np.split(gaps, np.cumsum(sizes + 1)[:-1]) if self.count else []
        self.jitter = int_arg("jitter", jitter, minimum=0)
        if self.jitter >= self.pool.images.shape[1]:
            raise ValueError(f"jitter ({jitter}) must be smaller than the digits' height "
                             f"({self.pool.images.shape[1]})")
        # drawn last, and only when asked for, so jitter=0 leaves every other draw as it was
        shifts = rng.integers(-self.jitter, self.jitter + 1, size=int(sizes.sum())) \
            if self.jitter else np.zeros(int(sizes.sum()), dtype=np.int64)
        self._shifts = np.split(shifts, np.cumsum(sizes)[:-1]) if self.count else []
        self.rotate = _limit("rotate", rotate, below=90.0)
        self.scale = _limit("scale", scale, below=1.0)
        self.shear = _limit("shear", shear, below=90.0)
        self.shift = _limit("shift", shift, below=float(self.pool.images.shape[2]))
        # drawn after the jitter, only when asked for (the other draws stay as they were):
        # per digit (angle, scale factor, shear angle, horizontal move)
        self._affine: list[np.ndarray] | None = None
        if self.rotate or self.scale or self.shear or self.shift:
            n = int(sizes.sum())
            params = np.stack([rng.uniform(-self.rotate, self.rotate, n),
                               rng.uniform(1.0 - self.scale, 1.0 + self.scale, n),
                               rng.uniform(-self.shear, self.shear, n),
                               rng.uniform(-self.shift, self.shift, n)], axis=1)  # (n, 4)
            self._affine = np.split(params, np.cumsum(sizes)[:-1]) if self.count else []
        self.elastic = _limit("elastic", elastic, below=1000.0)
        self.elastic_sigma = _limit("elastic_sigma", elastic_sigma, below=100.0)
        if not self.elastic_sigma:
            raise ValueError("elastic_sigma must be positive (the Gaussian's width in pixels), "
                             "got 0")
        # drawn after the affine parameters, only when asked for: a seed per digit, from
        # which its noise field is drawn when the string is built (fields are not stored)
        self._elastic_seeds: list[np.ndarray] | None = None
        if self.elastic:
            seeds = rng.integers(0, 2**63 - 1, size=int(sizes.sum()))
            self._elastic_seeds = np.split(seeds, np.cumsum(sizes)[:-1]) if self.count else []

    @property
    def height(self) -> int:
        """``H``, the digits' (and the strings') height in pixels."""
        return int(self.pool.images.shape[1])

    @property
    def max_width(self) -> int:
        """The widest string these settings can draw: ``D max_digits + max_gap (max_digits+1)``."""
        return int(self.pool.images.shape[2] * self.max_digits
                   + self.max_gap * (self.max_digits + 1))

    @property
    def widths(self) -> np.ndarray:
        """Every string's width ``W``, int64 ``(count,)``, without building the images (for
        length bucketing: ``BucketBatchSampler(strings.widths, batch_size)``)."""
        digit_width = int(self.pool.images.shape[2])
        return np.array([digit_width * len(picks) + int(gaps.sum())
                         for picks, gaps in zip(self._picks, self._gaps, strict=True)],
                        dtype=np.int64)

    def __len__(self) -> int:
        return self.count

    def digits(self, i: int) -> np.ndarray:
        """String ``i``'s digits, int64 ``(L,)``, without building its image."""
        return self.pool.labels[self._picks[self._index(i)]]

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"DigitStrings index must be an int, got {type(i).__name__}")
        if not -self.count <= i < self.count:
            raise IndexError(f"DigitStrings index {i} out of range for {self.count} strings")
        return int(i) % self.count

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        picks, gaps, shifts = self._picks[i], self._gaps[i], self._shifts[i]
        height, digit_width = self.pool.images.shape[1:]
        width = int(digit_width * len(picks) + gaps.sum())
        image = np.zeros((height, width), dtype=np.float32)  # (H, W)
        column = 0
        warped = None
        if self._affine is not None or self._elastic_seeds is not None:
            params = self._affine[i] if self._affine is not None else \
                np.tile([0.0, 1.0, 0.0, 0.0], (len(picks), 1))  # (L, 4), the identity
            displacement = None
            if self._elastic_seeds is not None:
                noise = np.stack([np.random.default_rng(int(seed)).uniform(
                    -1.0, 1.0, (2, height, digit_width)) for seed in self._elastic_seeds[i]])
                displacement = self.elastic * elastic_displacement(noise, self.elastic_sigma)
            warped = warp_digits(self.pool.images[picks], params, displacement)  # (L, H, D)
        for j, (pick, gap, shift) in enumerate(zip(picks, gaps[:-1], shifts, strict=True)):
            column += int(gap)
            digit = self.pool.images[pick] if warped is None else warped[j]
            top, bottom = max(int(shift), 0), height + min(int(shift), 0)  # rows it lands on
            image[top:bottom, column:column + digit_width] = \
                digit[top - int(shift):bottom - int(shift)]
            column += digit_width
        image /= 255.0
        digits = self.pool.labels[picks]
        return {"image": torch.from_numpy(image), "width": width,
                "digits": torch.from_numpy(digits.astype(np.int64)),
                "text": "".join(str(int(d)) for d in digits)}


def _limit(name: str, value: Any, *, below: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 <= value < below):
        raise ValueError(f"{name} must be a number in [0, {below:g}), got {value!r}")
    return float(value)


def warp_digit(digit: np.ndarray, rotate: float = 0.0, scale: float = 1.0, shear: float = 0.0,
               shift: float = 0.0) -> np.ndarray:
    """One digit image ``(H, D)`` mapped by an affine transform about its centre, float32.

    The map takes a point ``p`` (``(x, y)``: column, row) of the digit to ``R(rotate) Sh(shear)
    scale (p - c) + c + (shift, 0)``, ``c`` the box's centre ``((D - 1) / 2, (H - 1) / 2)``,
    ``R`` a rotation by ``rotate`` degrees (counter-clockwise as seen, rows pointing down), ``Sh``
    a horizontal shear ``x += tan(shear) y``. Each output pixel reads the input at the inverse
    map's point, bilinearly interpolated, with 0 outside the digit (as
    ``scipy.ndimage.affine_transform(..., order=1, mode="grid-constant")``). Identity
    parameters return the digit unchanged.
    """
    return warp_digits(np.asarray(digit)[None],
                       np.array([[rotate, scale, shear, shift]], dtype=np.float64))[0]


def elastic_displacement(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``noise (..., H, D)`` smoothed by a Gaussian of standard deviation ``sigma`` pixels
    along the last two axes, zero outside the box: float64, the same shape. Equal to
    ``scipy.ndimage.gaussian_filter(noise, (0, ..., sigma, sigma), mode="constant")`` (its
    kernel cut at 4 sigma), written as two small matrix products."""
    noise = np.asarray(noise, dtype=np.float64)
    height, width = noise.shape[-2:]
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()

    def band(n: int) -> np.ndarray:  # (n, n): row i holds the taps centred on i
        offsets = np.arange(n)[None, :] - np.arange(n)[:, None]  # j - i
        inside = np.abs(offsets) <= radius
        return np.where(inside, taps[np.clip(offsets + radius, 0, 2 * radius)], 0.0)

    return band(height) @ noise @ band(width).T


def warp_digits(digits: np.ndarray, params: np.ndarray,
                displacement: np.ndarray | None = None) -> np.ndarray:
    """:func:`warp_digit` for a stack: ``digits (L, H, D)``, ``params (L, 4)`` rows of
    ``(rotate, scale, shear, shift)`` -> float32 ``(L, H, D)``, in one vectorised pass.
    ``displacement (L, 2, H, D)``, optional: ``(dx, dy)`` in pixels per output pixel, added
    to the point each one reads (an elastic distortion)."""
    count, height, width = digits.shape
    theta, phi = np.deg2rad(params[:, 0]), np.deg2rad(params[:, 2])  # (L,)
    cos, sin, tan, scale = np.cos(theta), np.sin(theta), np.tan(phi), params[:, 1]
    # forward = scale * [[cos, sin], [-sin, cos]] @ [[1, tan], [0, 1]] (y down: counter-clockwise)
    a, b = scale * cos, scale * (cos * tan + sin)
    c, d = -scale * sin, scale * (cos - sin * tan)
    det = a * d - b * c  # (L,) = scale**2, never 0 (scale > 0)
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    px = (xs.ravel() - cx)[None, :] - params[:, 3:4]  # (L, H*D): output point - centre - move
    py = np.broadcast_to((ys.ravel() - cy)[None, :], px.shape)
    src_x = (d[:, None] * px - b[:, None] * py) / det[:, None] + cx  # the inverse map
    src_y = (-c[:, None] * px + a[:, None] * py) / det[:, None] + cy
    if displacement is not None:
        if displacement.shape != (count, 2, height, width):
            raise ValueError(f"warp_digits: displacement must be (L, 2, H, D) = ({count}, 2, "
                             f"{height}, {width}), got {tuple(displacement.shape)}")
        src_x = src_x + displacement[:, 0].reshape(count, -1)
        src_y = src_y + displacement[:, 1].reshape(count, -1)
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    fx, fy = (src_x - x0).astype(np.float32), (src_y - y0).astype(np.float32)
    # a ring of zeros around each digit: every clipped index outside it reads 0
    padded = np.zeros((count, height + 2, width + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = digits
    flat = padded.reshape(count, -1)
    rows = np.arange(count)[:, None]
    out = np.zeros(px.shape, dtype=np.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        yi = np.clip(y0 + dy + 1, 0, height + 1)
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = np.clip(x0 + dx + 1, 0, width + 1)
            out += wx * wy * flat[rows, yi * (width + 2) + xi]
    return out.reshape(count, height, width)


def collate_digit_strings(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of :class:`DigitStrings` items into one batch.

    Returns ``{"images": (B, H, W_max) float32`` zero-padded on the right, ``"widths": (B,)``
    int64, ``"digits": (B, L_max)`` int64 padded with -1, ``"digit_lengths": (B,)`` int64``}``.
    A recurrent model reads ``images.transpose(1, 2)``: ``(B, W_max, H)``, ``widths`` steps each.

    Raises:
        ValueError: an empty batch, or images of different heights.
    """
    if len(items) == 0:
        raise ValueError("collate_digit_strings got an empty batch")
    heights = {int(item["image"].shape[0]) for item in items}
    if len(heights) != 1:
        raise ValueError(f"every image in a batch must have the same height, got "
                         f"{sorted(heights)}")
    widths = torch.tensor([int(item["image"].shape[1]) for item in items], dtype=torch.int64)
    lengths = torch.tensor([len(item["digits"]) for item in items], dtype=torch.int64)
    images = torch.zeros(len(items), heights.pop(), int(widths.max()))  # (B, H, W_max)
    digits = torch.full((len(items), int(lengths.max())), -1, dtype=torch.int64)  # (B, L_max)
    for row, item in enumerate(items):
        images[row, :, :widths[row]] = torch.as_tensor(item["image"], dtype=torch.float32)
        digits[row, :lengths[row]] = torch.as_tensor(item["digits"], dtype=torch.int64)
    return {"images": images, "widths": widths, "digits": digits, "digit_lengths": lengths}
