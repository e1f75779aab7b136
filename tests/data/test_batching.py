"""Padding collate and length-bucketing sampler, alone and inside a DataLoader."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rnnkit.data.batching import (
    BucketBatchSampler,
    PadCollate,
    pad_collate,
    padding_fraction,
)


def test_pad_collate_tensors_tuples_and_dicts():
    seqs = [torch.randn(n, 3) for n in (4, 1, 3)]
    x, lengths = pad_collate(seqs)  # time-major by default, like the layers
    assert x.shape == (4, 3, 3) and lengths.tolist() == [4, 1, 3]
    for i, s in enumerate(seqs):  # oracle: copy each sequence by hand into zeros
        expected = torch.zeros(4, 3)
        expected[: len(s)] = s
        assert torch.equal(x[:, i], expected)
    xb, _ = PadCollate(batch_first=True)(seqs)
    assert torch.equal(xb, x.transpose(0, 1))
    x, lengths, y = pad_collate([(s, torch.tensor(k)) for k, s in enumerate(seqs)])
    assert y.tolist() == [0, 1, 2]
    tags = [torch.arange(len(s)) for s in seqs]
    x, lengths, t = PadCollate(target_padding_value=-100)(list(zip(seqs, tags, strict=True)))
    assert t.t().tolist() == [[0, 1, 2, 3], [0, -100, -100, -100], [0, 1, 2, -100]]
    out = pad_collate([{"a": s, "b": s[:1]} for s in seqs])
    assert out["a"].shape == (4, 3, 3) and out["b_lengths"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r"item 1 has per-step shape \(2,\), item 0 has \(3,\)"):
        pad_collate([torch.zeros(2, 3), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="item 0 is a scalar"):
        pad_collate([torch.tensor(1.0)])


def test_bucket_sampler_covers_every_item_once_and_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    sampler = BucketBatchSampler(lengths, batch_size=16, bucket_multiplier=20, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    perm = rng.permutation(1000)
    random_batches = [perm[i:i + 16].tolist() for i in range(0, 1000, 16)]
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, random_batches)
    # same seed and epoch: same batches; a new epoch: a new order
    assert list(BucketBatchSampler(lengths, 16, 20, seed=3)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sorted_batches = list(BucketBatchSampler(lengths, 16, shuffle=False))
    assert padding_fraction(lengths, sorted_batches) <= padding_fraction(lengths, batches)
    dropped = BucketBatchSampler(lengths, 16, 20, drop_last=True)
    assert all(len(b) == 16 for b in dropped) and len(list(dropped)) == len(dropped)


def test_with_dataloader():
    data = [(torch.full((n, 2), float(n)), n % 3) for n in range(1, 41)]
    sampler = BucketBatchSampler([len(x) for x, _ in data], batch_size=8, bucket_multiplier=5)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=PadCollate(batch_first=True))
    seen = 0
    for x, lengths, y in loader:
        assert x.shape[0] == lengths.shape[0] == y.shape[0]
        assert int(lengths.max()) == x.shape[1]
        for i, n in enumerate(lengths.tolist()):
            assert torch.all(x[i, :n] == n) and torch.all(x[i, n:] == 0)
            assert int(y[i]) == n % 3
        seen += len(lengths)
    assert seen == 40


def test_sampler_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BucketBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="lengths must be a non-empty 1-D list"):
        BucketBatchSampler([], 2)
    with pytest.raises(ValueError, match="pad_targets must be True, False or 'auto'"):
        PadCollate(pad_targets="yes")
