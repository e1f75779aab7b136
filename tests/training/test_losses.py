"""Losses: masked sums and counts against torch.nn.functional on the unpadded sequences, one by
one (the oracle never sees padding, so it cannot share a masking bug with the code)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnkit.errors import ShapeError
from rnnkit.training.losses import resolve_loss
from tests.helpers import assert_doctests_pass

LENGTHS = [4, 1, 3]


def _mask(lengths, steps):
    return torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


@pytest.fixture
def padded():
    g = torch.Generator().manual_seed(0)
    b, t, c = len(LENGTHS), max(LENGTHS), 5
    logits = torch.randn(b, t, c, generator=g)
    ids = torch.randint(0, c, (b, t), generator=g)
    # garbage in the padding: a masked loss must not see it
    for i, n in enumerate(LENGTHS):
        logits[i, n:] = 1e4
        ids[i, n:] = 3
    return logits, ids, _mask(LENGTHS, t)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_sequence_cross_entropy_is_the_mean_over_real_steps(padded, smoothing):
    logits, ids, mask = padded
    loss = resolve_loss("sequence_cross_entropy", label_smoothing=smoothing)
    total, count = loss.sum_and_count(logits, ids, mask)
    oracle = sum(F.cross_entropy(logits[i, :n], ids[i, :n], reduction="sum",
                                 label_smoothing=smoothing) for i, n in enumerate(LENGTHS))
    assert count == sum(LENGTHS)
    torch.testing.assert_close(total, oracle)
    torch.testing.assert_close(loss(logits, ids, mask), oracle / sum(LENGTHS))


def test_cross_entropy_on_a_sequence_uses_each_rows_last_valid_step(padded):
    logits, _, mask = padded
    labels = torch.tensor([1, 4, 2])
    loss = resolve_loss("cross_entropy")
    last = torch.stack([logits[i, n - 1] for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(loss(logits, labels, mask), F.cross_entropy(last, labels))
    # without a mask: the last step
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits[:, -1], labels))
    out, target, m = loss.align(logits, labels, mask)
    assert out.shape == (3, 5) and m is None


def test_cross_entropy_plain_soft_targets_and_ignore_index():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 3, -100, 2, 1, -100])
    loss = resolve_loss("cross_entropy", label_smoothing=0.1)
    total, count = loss.sum_and_count(logits, labels)
    assert count == 4
    torch.testing.assert_close(total / count, F.cross_entropy(logits, labels,
                                                              label_smoothing=0.1))
    probs = torch.softmax(torch.randn(6, 4, generator=g), -1)
    torch.testing.assert_close(resolve_loss("cross_entropy")(logits, probs),
                               F.cross_entropy(logits, probs))


def test_cross_entropy_per_step_ids_count_like_the_sequence_loss(padded):
    logits, ids, mask = padded
    a = resolve_loss("cross_entropy").sum_and_count(logits, ids, mask)
    b = resolve_loss("sequence_cross_entropy").sum_and_count(logits, ids, mask)
    assert a[1] == b[1]
    torch.testing.assert_close(a[0], b[0])


def test_mse_masked_per_step_matches_unpadded_rows():
    g = torch.Generator().manual_seed(2)
    out = torch.randn(3, 4, 2, generator=g)
    target = torch.randn(3, 4, 2, generator=g)
    mask = _mask(LENGTHS, 4)
    for i, n in enumerate(LENGTHS):
        out[i, n:] = float("1e6")
    loss = resolve_loss("mse")
    total, count = loss.sum_and_count(out, target, mask)
    oracle = sum(F.mse_loss(out[i, :n], target[i, :n], reduction="sum")
                 for i, n in enumerate(LENGTHS))
    assert count == sum(LENGTHS) * 2
    torch.testing.assert_close(total, oracle)


def test_mse_sequence_against_per_sample_targets_and_column_vectors():
    g = torch.Generator().manual_seed(3)
    out = torch.randn(3, 4, 2, generator=g)
    target = torch.randn(3, 2, generator=g)
    mask = _mask(LENGTHS, 4)
    last = torch.stack([out[i, n - 1] for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(resolve_loss("mse")(out, target, mask), F.mse_loss(last, target))
    col, vec = torch.randn(5, 1, generator=g), torch.randn(5, generator=g)
    torch.testing.assert_close(resolve_loss("mse")(col, vec), F.mse_loss(col[:, 0], vec))
    torch.testing.assert_close(resolve_loss("mae")(col, vec), F.l1_loss(col[:, 0], vec))


def test_binary_cross_entropy_with_logits():
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(8, 3, generator=g), (torch.rand(8, 3, generator=g) > 0.5)
    torch.testing.assert_close(resolve_loss("bce")(logits, target),
                               F.binary_cross_entropy_with_logits(logits, target.float()))


def test_callable_loss_is_weighted_by_batch_size_and_may_take_the_mask():
    out, target = torch.randn(4, 3), torch.randn(4, 3)
    loss = resolve_loss(torch.nn.SmoothL1Loss())
    total, count = loss.sum_and_count(out, target)
    assert count == 4
    torch.testing.assert_close(total, F.smooth_l1_loss(out, target) * 4)
    seen = {}

    def masked(o, t, mask=None):
        seen["mask"] = mask
        return (o - t).abs().mean()

    mask = torch.ones(4, 3, dtype=torch.bool)
    resolve_loss(masked)(out, target, mask)
    assert seen["mask"] is mask
    with pytest.raises(TypeError, match="scalar"):
        resolve_loss(lambda o, t: o - t)(out, target)


@pytest.mark.parametrize("name, out, target", [
    ("mse", (4, 3), (4, 2)),
    ("mse", (4, 3), (5, 3)),
    ("mse", (2, 5, 3), (2, 4, 3)),
    ("cross_entropy", (4, 3), (4, 2, 7)),
    ("cross_entropy", (4,), (4,)),
    ("sequence_cross_entropy", (4, 3), (4,)),
])
def test_shapes_that_cannot_meet_name_both(name, out, target):
    dtype = torch.int64 if "entropy" in name else torch.float32
    with pytest.raises(ShapeError) as info:
        resolve_loss(name)(torch.randn(*out), torch.zeros(*target, dtype=dtype))
    message = str(info.value)
    assert str(out) in message and str(target) in message and name in message


def test_bad_class_ids_and_unknown_names():
    with pytest.raises(ValueError, match="class id 7 is outside"):
        resolve_loss("cross_entropy")(torch.randn(2, 3), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="unknown loss 'msee'.*mse"):
        resolve_loss("msee")
    with pytest.raises(ValueError, match="label_smoothing"):
        resolve_loss("mse", label_smoothing=0.1)
    with pytest.raises(TypeError):
        resolve_loss(3)


def test_doctests():
    assert_doctests_pass("rnnkit.training.losses")
