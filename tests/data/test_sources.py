"""MinibatchSource: sweeps, randomisation, sample budgets, truncated BPTT, Dataset view."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from rnnkit.data.batching import pad_collate
from rnnkit.data.ctf import CTFDeserializer, write_ctf
from rnnkit.data.sources import (
    INFINITELY_REPEAT,
    MinibatchData,
    MinibatchSource,
    StreamDef,
    StreamDefs,
)

DEFS = StreamDefs(features=StreamDef(field="x", shape=1),
                  label=StreamDef(field="y", shape=4, is_sparse=True))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """40 sequences of 1..9 steps; step t of sequence k holds the value k * 100 + t."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 10, size=40)
    seqs = [{"x": (k * 100 + np.arange(n, dtype=np.float32))[:, None], "y": [k % 4]}
            for k, n in enumerate(lengths)]
    path = tmp_path_factory.mktemp("src") / "d.ctf"
    write_ctf(path, seqs, sparse={"y": 4})
    return str(path), lengths


def _source(path, chunk=60, **kwargs):
    return MinibatchSource(CTFDeserializer(path, DEFS, chunk_size_in_bytes=chunk), **kwargs)


def _samples(mb):
    """The (sequence, step) pairs a minibatch carries, read back from the values."""
    x = mb["features"]
    vals = x.data[..., 0][x.mask]
    return [(int(v) // 100, int(v) % 100) for v in vals]


def _run(src, size):
    sweeps, current = [], []
    while mb := src.next_minibatch(size):
        current += _samples(mb)
        if mb.end_of_sweep:
            sweeps.append(current)
            current = []
    assert not current, "data after the last end_of_sweep"
    return sweeps


def test_every_sample_exactly_once_per_sweep_and_max_sweeps(data_file):
    path, lengths = data_file
    everything = sorted((k, t) for k, n in enumerate(lengths) for t in range(n))
    src = _source(path, max_sweeps=3, randomization_window_in_chunks=2, randomization_seed=5)
    assert src.deserializer.num_chunks > 4
    sweeps = _run(src, 25)
    assert len(sweeps) == 3
    for sweep in sweeps:
        assert sorted(sweep) == everything
    assert sweeps[0] != sweeps[1]  # each sweep is reshuffled
    assert src.total_num_samples == 3 * int(lengths.sum())
    assert not src.next_minibatch(25)  # stays exhausted


def test_minibatches_hold_whole_sequences_within_the_size(data_file):
    path, lengths = data_file
    src = _source(path, max_sweeps=1)
    seen = 0
    while mb := src.next_minibatch(12):
        x = mb["features"]
        # a minibatch exceeds the size only when a single sequence is longer than it
        assert x.num_samples <= 12 or x.num_sequences == 1
        for seq in x.as_sequences():
            k = int(seq[0, 0]) // 100
            assert len(seq) == lengths[k]  # whole sequences
            assert seq[:, 0].tolist() == [k * 100 + t for t in range(lengths[k])]
        assert mb["label"].lengths.tolist() == [1] * x.num_sequences
        seen += x.num_sequences
    assert seen == len(lengths)


def test_fixed_seed_gives_the_same_order(data_file):
    path, _ = data_file
    a = _run(_source(path, max_sweeps=2, randomization_seed=7), 20)
    b = _run(_source(path, max_sweeps=2, randomization_seed=7), 20)
    c = _run(_source(path, max_sweeps=2, randomization_seed=8), 20)
    assert a == b
    assert a != c


def test_no_randomization_keeps_file_order(data_file):
    path, lengths = data_file
    (sweep,) = _run(_source(path, randomize=False, max_sweeps=1), 30)
    assert sweep == [(k, t) for k, n in enumerate(lengths) for t in range(n)]


def test_randomization_stays_within_a_window_of_chunks(data_file):
    path, _ = data_file
    src = _source(path, max_sweeps=1, randomization_window_in_chunks=1)
    d = src.deserializer
    chunk_of = {}
    for c in range(d.num_chunks):
        chunk = d.get_chunk(c)
        for s in range(chunk.num_sequences):
            chunk_of[int(chunk.streams["features"].values[chunk.streams["features"]
                                                          .sample_offsets[s], 0]) // 100] = c
    (sweep,) = _run(src, 1)
    order = [k for k, t in sweep if t == 0]
    chunks = [chunk_of[k] for k in order]
    # with a window of one chunk, a chunk's sequences come out together
    runs = [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]
    assert sorted(runs) == list(range(d.num_chunks))


def test_max_samples(data_file):
    path, lengths = data_file
    src = _source(path, max_samples=50, randomize=False)
    total = 0
    while mb := src.next_minibatch(20):
        total += mb.num_samples
    assert 50 <= total < 50 + lengths.max()
    src = _source(path, max_samples=int(lengths.sum()) * 2, randomize=False)
    assert len(_run(src, 30)) == 2


def test_infinite_source_keeps_going(data_file):
    path, lengths = data_file
    src = _source(path)
    assert src.max_sweeps == INFINITELY_REPEAT
    for _ in range(20):
        assert src.next_minibatch(int(lengths.sum()))
    assert src.current_sweep >= 10


def test_truncation_windows_rebuild_the_sequences(data_file):
    path, lengths = data_file
    src = _source(path, max_sweeps=1, truncation_length=3, randomization_seed=3)
    rows: dict[int, list[int]] = {}
    open_seq: dict[int, int] = {}
    n_mb = 0
    while mb := src.next_minibatch(12):
        n_mb += 1
        x = mb["features"]
        assert x.num_sequences <= 4 and int(x.lengths.max()) <= 3
        for i in range(x.num_sequences):
            vals = x.data[i, : int(x.lengths[i]), 0].tolist()
            k, slot = int(vals[0]) // 100, int(x.slots[i])
            if x.sequence_start[i]:
                assert slot not in open_seq  # a slot is free before a new sequence starts
                rows[k] = []
                open_seq[slot] = k
                assert mb["label"].lengths[i] == 1  # the label is on the first step
            else:
                assert open_seq[slot] == k  # the slot continues its sequence
                assert mb["label"].lengths[i] == 0
            rows[k] += vals
            if len(rows[k]) == lengths[k]:
                del open_seq[slot]
    assert not open_seq and x.end_of_sweep
    assert {k: len(v) for k, v in rows.items()} == dict(enumerate(lengths.tolist()))
    for k, v in rows.items():
        assert v == [k * 100 + t for t in range(lengths[k])]
    assert n_mb >= int(lengths.sum()) // 12


def test_input_map_and_keys(data_file):
    path, _ = data_file
    src = _source(path, max_sweeps=1)
    mb = src.next_minibatch(10, input_map={"inp": src.streams.features})
    assert list(mb) == ["inp"] and mb["inp"] is mb["features"]
    with pytest.raises(KeyError, match=r"input_map\['inp'\] must be one of source.streams"):
        src.next_minibatch(10, input_map={"inp": "features"})
    mb = src.next_minibatch(10)
    assert mb[src.streams.label] is mb["label"]
    with pytest.raises(KeyError, match="no stream 'nope' in this minibatch"):
        mb["nope"]
    with pytest.raises(AttributeError, match="no stream named 'nope'; streams: features, label"):
        _ = src.streams.nope


def test_argument_errors(data_file):
    path, _ = data_file
    d = CTFDeserializer(path, DEFS)
    with pytest.raises(ValueError, match="max_sweeps must be >= 1, got 0"):
        MinibatchSource(d, max_sweeps=0)
    with pytest.raises(TypeError, match="truncation_length must be an int"):
        MinibatchSource(d, truncation_length=1.5)
    with pytest.raises(ValueError, match="MinibatchSource reads one deserializer, got 2"):
        MinibatchSource([d, d])
    with pytest.raises(TypeError, match="needs a deserializer such as CTFDeserializer"):
        MinibatchSource("file.ctf")
    with pytest.raises(ValueError, match="minibatch_size_in_samples must be >= 1"):
        MinibatchSource(d).next_minibatch(0)
    src = MinibatchSource(d, truncation_length=2)
    src.next_minibatch(4)
    with pytest.raises(ValueError, match="minibatch size changed from 4 to 6 samples"):
        src.next_minibatch(6)


def test_dataset_view_with_dataloader(data_file):
    path, lengths = data_file
    ds = CTFDeserializer(path, DEFS, chunk_size_in_bytes=100).to_dataset()
    assert len(ds) == len(lengths)
    assert ds.lengths.tolist() == lengths.tolist()
    item = ds[7]
    assert item["features"][:, 0].tolist() == [700 + t for t in range(lengths[7])]
    assert item["label"].tolist() == [[0, 0, 0, 1]]
    loader = DataLoader(ds, batch_size=8, collate_fn=pad_collate)
    batch = next(iter(loader))
    assert batch["features"].shape == (int(lengths[:8].max()), 8, 1)  # time-major (T, B, 1)
    assert batch["features_lengths"].tolist() == lengths[:8].tolist()
    with pytest.raises(IndexError, match="sequence index 40 out of range for 40 sequences"):
        ds[40]


def test_minibatch_data_padding():
    mbd = MinibatchData.from_dense([np.ones((2, 3)), np.full((1, 3), 2.0)], shape=3)
    assert mbd.data.shape == (2, 2, 3) and mbd.num_samples == 3 and mbd.num_sequences == 2
    assert torch.equal(mbd.data[1, 1], torch.zeros(3))
    with pytest.raises(TypeError, match="as_sparse\\(\\) needs a sparse stream"):
        mbd.as_sparse()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=25),
       size=st.integers(1, 15), chunk=st.integers(8, 300), window=st.integers(1, 3),
       truncation=st.sampled_from([0, 0, 2, 3]), seed=st.integers(0, 5))
def test_property_each_sweep_delivers_every_sample_once(tmp_path, lengths, size, chunk, window,
                                                        truncation, seed):
    path = tmp_path / "h.ctf"
    write_ctf(path, [{"x": (k * 100 + np.arange(n, dtype=np.float32))[:, None], "y": [k % 4]}
                     for k, n in enumerate(lengths)], sparse={"y": 4})
    src = _source(str(path), chunk=chunk, max_sweeps=2, randomization_window_in_chunks=window,
                  truncation_length=truncation, randomization_seed=seed)
    everything = sorted((k, t) for k, n in enumerate(lengths) for t in range(n))
    sweeps = _run(src, size)
    assert len(sweeps) == 2
    for sweep in sweeps:
        assert sorted(sweep) == everything
