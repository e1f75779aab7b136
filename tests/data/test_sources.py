"""MinibatchSource: sweeps, randomisation, sample budgets, truncated BPTT, Dataset view."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from rnnkit.data.batching import pad_collate
from rnnkit.data.ctf import CTFDeserializer, CTFFormatError, CTFWarning, write_ctf
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


def _run(src, size, per_sweep=None, **kwargs):
    """The samples of each sweep, in delivery order; checks the end_of_sweep flags.

    A minibatch may go on across the end of a sweep (as in CNTK); ``MinibatchData.sweeps``
    says which sweep each row comes from. ``end_of_sweep`` must be set exactly on the
    minibatches that complete a sweep (``per_sweep`` samples, when given).
    """
    sweeps: dict[int, list] = {}
    complete = 0
    while mb := src.next_minibatch(size, **kwargs):
        x = mb["features"]
        for i, sweep in enumerate(x.sweeps.tolist()):
            assert sweep >= complete, "data of a sweep after its end_of_sweep"
            vals = x.data[i, : int(x.lengths[i]), 0].tolist()
            sweeps.setdefault(sweep, []).extend((int(v) // 100, int(v) % 100) for v in vals)
        if per_sweep is not None:
            done = complete
            while len(sweeps.get(done, ())) == per_sweep:
                done += 1
            assert (done > complete) == mb.end_of_sweep
            complete = done
    if per_sweep is not None:
        assert sorted(sweeps) == list(range(len(sweeps)))
    # a partition may get nothing of a sweep (fewer sequences than partitions)
    return [sweeps.get(k, []) for k in range(max(sweeps, default=-1) + 1)]


def test_every_sample_exactly_once_per_sweep_and_max_sweeps(data_file):
    path, lengths = data_file
    everything = sorted((k, t) for k, n in enumerate(lengths) for t in range(n))
    src = _source(path, max_sweeps=3, randomization_window_in_chunks=2, randomization_seed=5)
    assert src.deserializer.num_chunks > 4
    sweeps = _run(src, 25, per_sweep=int(lengths.sum()))
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
        # 4 slots of 3 steps; as in CNTK's packer a slot whose sequence ends inside its window
        # goes on with the next sequence, so a slot may hold several rows (time_offsets)
        assert set(x.slots.tolist()) <= {0, 1, 2, 3} and int(x.lengths.max()) <= 3
        for slot in range(4):
            rows_of_slot = (x.slots == slot).nonzero().flatten().tolist()
            offsets = [int(x.time_offsets[i]) for i in rows_of_slot]
            spans = [int(x.lengths[i]) for i in rows_of_slot]
            assert offsets == [sum(spans[:j]) for j in range(len(spans))] and sum(spans) <= 3
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
    # several deserializers are joined by sequence id (CNTK); their stream names must differ
    with pytest.raises(ValueError, match="stream 'features' is declared by deserializers 0 and 1"):
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
       truncation=st.sampled_from([0, 0, 2, 3]), seed=st.integers(0, 5),
       partitions=st.sampled_from([1, 1, 2, 3]))
def test_property_each_sweep_delivers_every_sample_once(tmp_path, lengths, size, chunk, window,
                                                        truncation, seed, partitions):
    """Every sample exactly once per sweep, over all partitions together (each partition is
    a separate source, as each worker of a data-parallel run has its own)."""
    path = tmp_path / "h.ctf"
    write_ctf(path, [{"x": (k * 100 + np.arange(n, dtype=np.float32))[:, None], "y": [k % 4]}
                     for k, n in enumerate(lengths)], sparse={"y": 4})
    everything = sorted((k, t) for k, n in enumerate(lengths) for t in range(n))
    seen: list[list] = [[], []]
    for rank in range(partitions):
        src = _source(str(path), chunk=chunk, max_sweeps=2, randomization_window_in_chunks=window,
                      truncation_length=truncation, randomization_seed=seed)
        per_sweep = sum(lengths) if partitions == 1 else None
        sweeps = _run(src, size, per_sweep=per_sweep, num_data_partitions=partitions,
                      partition_index=rank)
        for k, sweep in enumerate(sweeps):
            seen[k] += sweep
    for sweep in seen:
        assert sorted(sweep) == everything


def test_partitions_share_the_minibatch_size(data_file):
    path, lengths = data_file
    counts = []
    for rank in range(3):
        src = _source(path, max_sweeps=1, randomization_seed=2)
        sizes = [mb.num_samples for mb in src.iter_minibatches(
            30, num_data_partitions=3, partition_index=rank)]
        # 10 samples each (a longer sequence alone): the share of a 30-sample minibatch
        assert all(n <= 10 for n in sizes[:-1]) or max(lengths) > 10
        counts.append(sum(sizes))
    assert sum(counts) == int(lengths.sum())
    src = _source(path)
    with pytest.raises(ValueError, match=r"partition_index must be < num_data_partitions \(2\)"):
        src.next_minibatch(10, num_data_partitions=2, partition_index=2)


def test_frame_mode_makes_every_step_a_sequence(tmp_path):
    path = tmp_path / "f.ctf"
    write_ctf(path, [{"x": (k * 100 + np.arange(n, dtype=np.float32))[:, None],
                      "z": np.zeros((n, 2))} for k, n in enumerate([3, 1, 4, 2])])
    defs = StreamDefs(x=StreamDef(shape=1), z=StreamDef(shape=2))
    src = MinibatchSource(CTFDeserializer(path, defs), frame_mode=True, max_sweeps=2,
                          randomization_seed=4)
    sweeps: dict[int, list] = {}
    while mb := src.next_minibatch(4):
        x = mb["x"]
        assert x.shape[1] == 1 and x.num_sequences == x.num_samples <= 4
        for v, sweep in zip(x.data[:, 0, 0].tolist(), x.sweeps.tolist(), strict=True):
            sweeps.setdefault(sweep, []).append(int(v))
    expected = sorted(k * 100 + t for k, n in enumerate([3, 1, 4, 2]) for t in range(n))
    assert [sorted(v) for v in sweeps.values()] == [expected, expected]
    assert list(sweeps[0]) != sorted(sweeps[0])  # frames are shuffled across sequences
    # a label on the first step only cannot be split into frames
    path = tmp_path / "g.ctf"
    write_ctf(path, [{"x": np.ones((2, 1)), "y": [1]}, {"x": np.ones((1, 1)), "y": [0]}],
              sparse={"y": 2})
    d = CTFDeserializer(path, StreamDefs(x=StreamDef(shape=1), y=StreamDef(shape=2,
                                                                            is_sparse=True)))
    with pytest.raises(ValueError, match=r"frame_mode needs one sample per step in every "
                                         r"stream; sequence 0 of chunk 0 has \{'x': 2, 'y': 1\}"):
        MinibatchSource(d, frame_mode=True).next_minibatch(4)
    with pytest.warns(UserWarning, match="sequence skipped"):
        mb = MinibatchSource(d, frame_mode=True, max_errors=1, max_sweeps=1).next_minibatch(4)
    assert mb.num_samples == 1  # the good one-step sequence


def test_deserializers_joined_by_sequence_id(tmp_path):
    (tmp_path / "f.ctf").write_text("a |x 1\na |x 2\nb |x 3\nc |x 4\n")
    (tmp_path / "l.ctf").write_text("c |y 0:1\na |y 1:1\n")  # another order; b missing
    feats = CTFDeserializer(tmp_path / "f.ctf", StreamDefs(x=StreamDef(shape=1)))
    labels = CTFDeserializer(tmp_path / "l.ctf", StreamDefs(y=StreamDef(shape=2,
                                                                         is_sparse=True)))
    with pytest.raises(ValueError, match=r"sequence id 'b' of .*f.ctf is missing from "
                                         r".*l.ctf \(bad sequences: 1, max_errors=0\)"):
        MinibatchSource([feats, labels], randomize=False).next_minibatch(10)
    src = MinibatchSource([feats, labels], randomize=False, max_errors=1, max_sweeps=1)
    with pytest.warns(UserWarning, match="sequence id 'b'.*sequence skipped"):
        mb = src.next_minibatch(10)
    assert [s[:, 0].tolist() for s in mb["x"].as_sequences()] == [[1.0, 2.0], [4.0]]
    assert mb["y"].indices[:, 0].tolist() == [1, 0]
    (tmp_path / "n.ctf").write_text("|y 0:1\n")
    no_ids = CTFDeserializer(tmp_path / "n.ctf", StreamDefs(y=StreamDef(shape=2,
                                                                        is_sparse=True)))
    with pytest.raises(ValueError, match="n.ctf: joining several deserializers needs a "
                                         "sequence id on every sequence"):
        MinibatchSource([feats, no_ids]).next_minibatch(1)


def test_randomization_window_in_samples(data_file):
    path, lengths = data_file
    src = _source(path, max_sweeps=2, randomization_window_in_samples=40,
                  randomization_window_in_chunks=0)
    assert src.randomize and src.window == 0
    sweeps = _run(src, 9, per_sweep=int(lengths.sum()))
    everything = sorted((k, t) for k, n in enumerate(lengths) for t in range(n))
    assert [sorted(s) for s in sweeps] == [everything, everything]
    assert sweeps[0] != sweeps[1]
    plain = _run(_source(path, max_sweeps=1, randomization_window_in_chunks=0), 9)
    assert plain[0] == sorted(plain[0])  # window 0: no randomisation (CNTK)


def test_max_errors_goes_to_the_reader(tmp_path):
    # CNTK's MinibatchSource(max_errors=) is the readers' maxErrors: bad sequences are skipped
    path = tmp_path / "bad.ctf"
    path.write_text("0 |x 1\n1 |x one\n2 |x 3\n")
    with pytest.raises(CTFFormatError, match="line 2"):
        MinibatchSource(CTFDeserializer(path, StreamDefs(x=StreamDef())),
                        randomize=False).next_minibatch(10)
    src = MinibatchSource(CTFDeserializer(path, StreamDefs(x=StreamDef())), randomize=False,
                          max_errors=1, max_sweeps=1)
    with pytest.warns(CTFWarning, match="line 2"):
        mb = src.next_minibatch(10)
    assert [s[:, 0].tolist() for s in mb["x"].as_sequences()] == [[1.0], [3.0]]


def test_cntk_spellings(data_file):
    path, _ = data_file
    src = _source(path, max_sweeps=1, randomization_seed=1)
    info = src["label"]
    assert info is src.streams.label and info.m_name == "label"
    assert info.storage_format == "sparse" and src["features"].storage_format == "dense"
    position = src.current_position
    first = src.next_minibatch(10)["features"]
    assert len(first) == first.num_sequences
    src.current_position = position
    assert torch.equal(src.next_minibatch(10)["features"].data, first.data)
