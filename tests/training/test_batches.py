"""Every data form becomes the same Batch: checked against the data it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from rnnkit.data import (
    BucketBatchSampler,
    CTFDeserializer,
    MinibatchSource,
    PadCollate,
    StatefulBatches,
    StreamDef,
    StreamDefs,
    write_ctf,
)
from rnnkit.errors import ShapeError
from rnnkit.training.batches import EmptyDataError, SourceBatches, make_feed, to_batch
from tests.helpers import assert_doctests_pass


def _drain(feed):
    out = []
    while (b := feed.next_batch()) is not None:
        out.append(b)
    return out


def test_tensors_in_order_and_shuffled_by_the_seed():
    x = torch.arange(10.0).view(10, 1, 1).expand(10, 3, 1)
    y = torch.arange(10)
    plain = _drain(make_feed((x, y), batch_size=4, shuffle=False))
    assert [b.size for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([b.target for b in plain]), y)
    shuffled = _drain(make_feed((x, y), batch_size=4, shuffle=True, seed=5))
    order = torch.cat([b.target for b in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and not torch.equal(order, y)
    # inputs stay with their targets
    for b in shuffled:
        assert torch.equal(b.inputs[0][:, 0, 0].long(), b.target)
    # the order is the seed's, and the next pass draws another
    feed = make_feed((x, y), batch_size=4, shuffle=True, seed=5)
    assert torch.equal(torch.cat([b.target for b in _drain(feed)]), order)
    assert not torch.equal(torch.cat([b.target for b in _drain(feed)]), order)


def test_numpy_float64_arrays_become_float32_and_lengths_trim():
    x = np.random.default_rng(0).normal(size=(4, 6, 2))
    lengths = np.array([6, 2, 3, 1])
    (batch,) = _drain(make_feed((x, np.zeros(4), lengths), batch_size=8, shuffle=False))
    assert batch.inputs[0].dtype == torch.float32 and batch.lengths.tolist() == [6, 2, 3, 1]
    (second,) = _drain(make_feed((x[1:3], np.zeros(2), lengths[1:3]), batch_size=8,
                                 shuffle=False))
    assert second.inputs[0].shape == (2, 3, 2)  # trimmed to the batch's longest


def test_pad_collate_batches_carry_lengths_and_mask():
    seqs = [(torch.randn(n, 2), torch.tensor(n % 2)) for n in (5, 2, 4)]
    loader = DataLoader(seqs, batch_size=3, collate_fn=PadCollate(batch_first=True))
    (batch,) = _drain(make_feed(loader))
    assert batch.inputs[0].shape == (3, 5, 2)
    assert batch.lengths.tolist() == [5, 2, 4]
    assert batch.target.tolist() == [1, 0, 0]
    assert batch.mask(5).sum(1).tolist() == [5, 2, 4]
    # the same tuple in the other order
    again = to_batch((batch.inputs[0], batch.target, batch.lengths))
    assert again.lengths.tolist() == [5, 2, 4] and again.target.tolist() == [1, 0, 0]


def test_time_major_batches_are_refused_with_the_fix():
    seqs = [(torch.randn(n, 2), torch.tensor(0)) for n in (5, 2, 4)]
    loader = DataLoader(seqs, batch_size=3, collate_fn=PadCollate())  # time-major default
    with pytest.raises(ShapeError, match="time-major.*batch_first=True"):
        make_feed(loader).next_batch()


def test_dict_batches_plain_and_padded():
    b = to_batch({"x": torch.randn(2, 3, 1), "y": torch.tensor([1, 0]),
                  "lengths": torch.tensor([3, 2]), "id": torch.tensor([7, 8])})
    assert b.lengths.tolist() == [3, 2] and b.target.tolist() == [1, 0]
    items = [{"features": torch.randn(n, 2), "labels": torch.tensor([n])} for n in (3, 1)]
    padded = PadCollate(batch_first=True)(items)
    b = to_batch(padded)
    assert b.lengths.tolist() == [3, 1] and b.target.tolist() == [3, 1]
    with pytest.raises(ValueError, match="keys \\['a'\\]"):
        to_batch({"a": torch.zeros(2)})


def test_dataset_of_unequal_lengths_is_padded():
    class Ragged(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((i + 1, 2), float(i)), torch.tensor(i)

    batches = _drain(make_feed(Ragged(), batch_size=2, shuffle=False))
    # the last batch holds one sequence: nothing to pad
    assert [b.lengths.tolist() for b in batches[:2]] == [[1, 2], [3, 4]]
    assert batches[2].lengths is None and batches[2].inputs[0].shape == (1, 5, 2)
    assert [b.target.tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_dataloader_shuffle_comes_from_the_seed_and_resumes_by_index():
    ds = TensorDataset(torch.arange(20.0).view(20, 1, 1), torch.arange(20))
    loader = DataLoader(ds, batch_size=3, shuffle=True)
    first = [b.target.tolist() for b in _drain(make_feed(loader, seed=3))]
    assert first == [b.target.tolist() for b in _drain(make_feed(loader, seed=3))]
    assert first != [b.target.tolist() for b in _drain(make_feed(loader, seed=4))]
    # resume in the middle of the second pass
    feed = make_feed(loader, seed=3)
    _drain(feed)
    for _ in range(2):
        feed.next_batch()
    state = feed.state_dict()
    rest = [b.target.tolist() for b in _drain(feed)]
    resumed = make_feed(loader, seed=3)
    resumed.load_state_dict(state)
    assert [b.target.tolist() for b in _drain(resumed)] == rest


def test_bucket_sampler_gets_the_pass_number():
    lengths = [3, 1, 4, 1, 5, 9, 2, 6]
    sampler = BucketBatchSampler(lengths, batch_size=2, bucket_multiplier=2, seed=0)
    ds = [(torch.zeros(n, 1), torch.tensor(i)) for i, n in enumerate(lengths)]
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=PadCollate(batch_first=True))
    feed = make_feed(loader)
    p0 = [b.target.tolist() for b in _drain(feed)]
    p1 = [b.target.tolist() for b in _drain(feed)]
    sampler.set_epoch(0)
    assert p0 == sampler.batches()
    sampler.set_epoch(1)
    assert p1 == sampler.batches()


@pytest.fixture
def ctf_source(tmp_path):
    path = tmp_path / "d.ctf"
    rng = np.random.default_rng(0)
    seqs = [{"features": rng.normal(size=(n, 2)), "labels": [n % 3]}
            for n in (3, 5, 2, 4, 1, 6)]
    write_ctf(path, seqs, sparse={"labels": 3})
    streams = StreamDefs(features=StreamDef(shape=2), labels=StreamDef(shape=3, is_sparse=True))
    return lambda **kw: MinibatchSource(CTFDeserializer(path, streams), **kw), seqs


def test_minibatch_source_inputs_lengths_and_sparse_targets(ctf_source):
    make, seqs = ctf_source
    source = make(randomize=False, max_sweeps=1)
    feed = make_feed(SourceBatches(source, minibatch_size=8, input_map={
        "x": source.streams.features, "target": source.streams.labels}))
    batches = _drain(feed)
    assert feed.exhausted or feed.next_batch() is None
    got = [(n, int(t)) for b in batches for n, t in zip(
        b.lengths.tolist() if b.lengths is not None else [b.inputs[0].shape[1]] * b.size,
        b.target, strict=True)]
    assert got == [(len(s["features"]), s["labels"][0]) for s in seqs]
    first = batches[0]
    torch.testing.assert_close(first.inputs[0][0, :3].double(),
                               torch.from_numpy(seqs[0]["features"]), rtol=1e-6, atol=1e-6)
    assert sum(b.num_samples for b in batches) == sum(len(s["features"]) for s in seqs)


def test_bare_source_needs_a_size_and_infers_the_target(ctf_source):
    make, _ = ctf_source
    with pytest.raises(ValueError, match="batch_size"):
        make_feed(make(max_sweeps=1))
    batch = make_feed(make(max_sweeps=1, randomize=False), batch_size=8).next_batch()
    assert batch.target.dtype == torch.int64 and batch.target.dim() == 1


def test_source_truncation_gives_slots_and_sequence_starts(ctf_source):
    make, _ = ctf_source
    feed = make_feed(make(max_sweeps=1, randomize=False, truncation_length=2), batch_size=4)
    assert feed.stateful
    batch = feed.next_batch()
    assert batch.slots is not None and batch.sequence_start.all()
    later = feed.next_batch()
    assert not later.sequence_start.all()  # the 5-step sequence goes on


def test_stateful_batches_are_batch_major_and_start_each_pass():
    data = StatefulBatches(list(range(41)), batch_size=2, bptt=4)
    feed = make_feed(data)
    batches = _drain(feed)
    assert batches[0].inputs[0].shape == (2, 4) and batches[0].sequence_start.all()
    assert not batches[1].sequence_start.any()
    assert torch.equal(batches[0].target[:, :-1], batches[0].inputs[0][:, 1:])
    assert torch.equal(batches[1].inputs[0][:, 0], batches[0].target[:, -1])


def test_empty_and_unusable_data_are_one_line_errors(tmp_path):
    with pytest.raises(EmptyDataError, match="no samples"):
        make_feed((torch.zeros(0, 3, 1), torch.zeros(0)))
    with pytest.raises(EmptyDataError, match="holds no batches"):
        make_feed(DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2)).next_batch()
    with pytest.raises(TypeError, match="cannot train or evaluate on a str"):
        make_feed("data.csv")
    with pytest.raises(ShapeError, match="different batch sizes"):
        make_feed((torch.zeros(4, 3, 1), torch.zeros(3)))
    with pytest.raises(ShapeError, match="lengths must lie in"):
        to_batch((torch.zeros(2, 3, 1), torch.tensor([1, 7]), torch.zeros(2)))


def test_doctests():
    assert_doctests_pass("rnnkit.training.batches")
