"""CNTK 2.7's own MinibatchSource tests, ported to rnnkit.data.MinibatchSource.

Sources (Microsoft CNTK, MIT licence, https://github.com/microsoft/CNTK):
- bindings/python/cntk/io/tests/io_tests.py (MBDATA_* inputs and the expected numbers)
- bindings/python/cntk/train/tests/distributed_test.py (test_distributed_mb_source*)
- Tests/UnitTests/V2LibraryTests/MinibatchSourceTest.cpp (end-of-sweep flag, warm start)

The numbers asserted are CNTK's. Cases not ported: image, Base64 image, CBF and HTK
deserializers, transforms and ``sequence_to_cntk_text_format`` (not part of rnnkit's source);
``MinibatchSourceConfig``/``to_dictionary`` (rnnkit has no config dictionary: the rules those
tests check - window 0 turns randomisation off, exclusive arguments - are ported as argument
checks); ``UserMinibatchSource`` and training sessions (the native-source half of
test_usermbsource is ported; training is rnnkit.training's). Where rnnkit deliberately differs
a comment says so (CNTK's ``Value.mask`` with 2 = sequence start is rnnkit's bool ``mask`` and
``sequence_start``; randomised distributed reading splits sequences, not chunks).
"""

import json
import random

import numpy as np
import pytest
import torch

from rnnkit.data.ctf import CTFDeserializer
from rnnkit.data.sources import (
    DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS,
    FULL_DATA_SWEEP,
    INFINITELY_REPEAT,
    Chunk,
    MinibatchSource,
    StreamChunk,
    StreamDef,
    StreamDefs,
)

MBDATA_DENSE_1 = r'''0  |S0 0   |S1 0
0   |S0 1   |S1 1
0   |S0 2
0   |S0 3   |S1 3
1   |S0 4
1   |S0 5   |S1 1
1   |S0 6   |S1 2
'''

MBDATA_DENSE_2 = r'''0  |S0 0   |S1 0
0   |S0 1   |S1 1
0   |S0 2
0   |S0 3   |S1 3
0   |S0 4
0   |S0 5   |S1 1
0   |S0 6   |S1 2
'''

MBDATA_SPARSE = r'''0	|x 560:1	|y 1 0 0 0 0
0	|x 0:1
0	|x 0:1
1	|x 560:1	|y 0 1 0 0 0
1	|x 0:1
1	|x 0:1
1	|x 424:1
'''

MBDATA_SPARSE1 = r'''0	|x 560:1
0	|x 0:1
0	|x 0:1
1	|x 560:1
1	|x 0:1
1	|x 0:1
1	|x 424:1
'''

MBDATA_SPARSE2 = r'''0	|y 1 0 0 0 0
1	|y 0 1 0 0 0
'''


def _write_data(tmp_path, data, filename="mbdata.txt"):
    path = tmp_path / filename
    path.write_text(data)
    return str(path)


def create_ctf_deserializer(tmp_path):
    path = _write_data(tmp_path, "|S0 1\n|S0 2\n|S0 3\n|S0 4", "mbtest.txt")
    return CTFDeserializer(path, StreamDefs(features=StreamDef(field="S0", shape=1)))


# ----------------------------------------------------------------------------- io_tests.py
def test_text_format(tmp_path):
    tmpfile = _write_data(tmp_path, MBDATA_SPARSE)
    input_dim, num_output_classes = 1000, 5
    mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="x", shape=input_dim, is_sparse=True),
        labels=StreamDef(field="y", shape=num_output_classes, is_sparse=False))),
        randomize=False)
    features_si = mb_source.stream_info("features")
    labels_si = mb_source.stream_info("labels")

    mb = mb_source.next_minibatch(7)
    features = mb[features_si]
    # 2 samples, max seq len 4, 1000 dim
    assert features.shape == (2, 4, input_dim)
    assert features.end_of_sweep
    assert features.num_sequences == 2
    assert features.num_samples == 7
    assert features.is_sparse

    labels = mb[labels_si]
    # 2 samples, max seq len 1, 5 dim
    assert labels.shape == (2, 1, num_output_classes)
    assert labels.end_of_sweep
    assert labels.num_sequences == 2
    assert labels.num_samples == 2
    assert not labels.is_sparse
    np.testing.assert_allclose(labels.asarray(), [[[1., 0., 0., 0., 0.]],
                                                  [[0., 1., 0., 0., 0.]]])

    mb = mb_source.next_minibatch(1)
    features, labels = mb[features_si], mb[labels_si]
    assert not features.end_of_sweep
    assert not labels.end_of_sweep
    assert features.num_samples < 7
    assert labels.num_samples == 1


def test_minibatch_source_config_rules(tmp_path):
    # the rules of test_minibatch_source_config_{randomization,sweeps_and_samples,
    # other_properties}, as constructor arguments
    ctf = create_ctf_deserializer(tmp_path)
    assert MinibatchSource(ctf).randomize
    assert MinibatchSource(ctf).window == DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS
    assert not MinibatchSource(ctf, randomization_window_in_chunks=0).randomize
    assert not MinibatchSource(ctf, randomize=False).randomize
    src = MinibatchSource(ctf, randomization_window_in_chunks=10)
    assert src.randomize and src.window == 10
    with pytest.raises(ValueError, match="exclusive"):
        MinibatchSource(ctf, randomization_window_in_chunks=10,
                        randomization_window_in_samples=100)
    src = MinibatchSource(ctf, randomization_window_in_chunks=0,
                          randomization_window_in_samples=100)
    assert src.randomize and src.window_in_samples == 100
    with pytest.raises(ValueError, match="not both"):
        MinibatchSource(ctf, max_samples=100, max_sweeps=3)
    src = MinibatchSource(ctf, max_sweeps=3, max_samples=INFINITELY_REPEAT)
    assert src.max_sweeps == 3
    with pytest.raises(ValueError, match="frame_mode and truncation_length"):
        MinibatchSource(ctf, frame_mode=True, truncation_length=123)
    assert MinibatchSource(ctf, truncation_length=123).truncation_length == 123


def test_full_sweep_minibatch(tmp_path):
    tmpfile = _write_data(tmp_path, MBDATA_DENSE_1)
    mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="S0", shape=1),
        labels=StreamDef(field="S1", shape=1))),
        randomization_window_in_chunks=0, max_sweeps=1)
    features_si = mb_source.stream_info("features")
    labels_si = mb_source.stream_info("labels")

    mb = mb_source.next_minibatch(1000)
    assert mb[features_si].num_sequences == 2
    assert mb[labels_si].num_sequences == 2

    features = mb[features_si]
    assert features.end_of_sweep
    assert len(features.as_sequences()) == 2
    for res, exp in zip(features.as_sequences(), [[[0], [1], [2], [3]], [[4], [5], [6]]],
                        strict=True):
        np.testing.assert_allclose(res, exp)
    # CNTK: features.data.mask == [[2, 1, 1, 1], [2, 1, 1, 0]] (2 = start of a sequence);
    # rnnkit gives the validity mask and the sequence starts separately
    assert features.mask.int().tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert features.sequence_start.tolist() == [True, True]

    labels = mb[labels_si]
    assert labels.end_of_sweep
    assert len(labels.as_sequences()) == 2
    for res, exp in zip(labels.as_sequences(), [[[0], [1], [3]], [[1], [2]]], strict=True):
        np.testing.assert_allclose(res, exp)
    assert labels.mask.int().tolist() == [[1, 1, 1], [1, 1, 0]]


def test_max_samples(tmp_path):
    mb_source = MinibatchSource(create_ctf_deserializer(tmp_path), max_samples=1)
    input_map = {"features": mb_source["features"]}
    mb = mb_source.next_minibatch(10, input_map)
    assert "features" in mb
    assert mb["features"].num_samples == 1
    assert not mb["features"].end_of_sweep
    mb = mb_source.next_minibatch(10, input_map)
    assert not mb


def test_max_sweeps(tmp_path):
    # set max sweeps to 3 (12 samples altogether); a minibatch goes on across a sweep's end
    mb_source = MinibatchSource(create_ctf_deserializer(tmp_path), max_sweeps=3)
    input_map = {"features": mb_source["features"]}
    for _ in range(2):
        mb = mb_source.next_minibatch(5, input_map)
        assert "features" in mb
        assert mb["features"].num_samples == 5
        assert mb["features"].end_of_sweep
    mb = mb_source.next_minibatch(5, input_map)
    assert "features" in mb
    assert mb["features"].num_samples == 2
    assert mb["features"].end_of_sweep
    mb = mb_source.next_minibatch(1, input_map)
    assert not mb


def test_max_samples_over_several_sweeps(tmp_path):
    mb_source = MinibatchSource(create_ctf_deserializer(tmp_path), max_samples=11)
    input_map = {"features": mb_source["features"]}
    for _ in range(2):
        mb = mb_source.next_minibatch(5, input_map)
        assert "features" in mb
        assert mb["features"].num_samples == 5
        assert mb["features"].end_of_sweep
    mb = mb_source.next_minibatch(5, input_map)
    assert "features" in mb
    assert mb["features"].num_samples == 1
    assert not mb["features"].end_of_sweep
    mb = mb_source.next_minibatch(1, input_map)
    assert not mb


def test_one_sweep(tmp_path):
    ctf = create_ctf_deserializer(tmp_path)
    sources = [MinibatchSource(ctf, max_sweeps=1),
               MinibatchSource(ctf, max_samples=FULL_DATA_SWEEP),
               MinibatchSource(ctf, max_sweeps=1, max_samples=INFINITELY_REPEAT),
               MinibatchSource(ctf, max_samples=FULL_DATA_SWEEP, max_sweeps=INFINITELY_REPEAT)]
    for source in sources:
        input_map = {"features": source["features"]}
        mb = source.next_minibatch(100, input_map)
        assert "features" in mb
        assert mb["features"].num_samples == 4
        assert mb["features"].end_of_sweep
        mb = source.next_minibatch(100, input_map)
        assert not mb


def test_random_seed(tmp_path):
    ctf = create_ctf_deserializer(tmp_path)
    sources = [MinibatchSource(ctf),
               MinibatchSource(ctf, randomization_seed=123),
               MinibatchSource(ctf, randomization_seed=0),
               MinibatchSource(ctf, randomization_seed=1)]
    data = []
    for source in sources:
        input_map = {"features": source["features"]}
        mb = source.next_minibatch(100, input_map)
        data.append(mb["features"].asarray())
    assert not (data[0] == data[1]).all()
    assert (data[0] == data[2]).all()
    # after the first sweep (= 4 samples), the first reader is seeded
    # with 1, and should produce results identical to the last reader.
    assert (data[0][4:] == data[3][:-4]).all()


def test_large_minibatch(tmp_path):
    tmpfile = _write_data(tmp_path, MBDATA_DENSE_2)
    mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="S0", shape=1),
        labels=StreamDef(field="S1", shape=1))),
        randomization_window_in_chunks=0)
    features_si = mb_source.stream_info("features")
    labels_si = mb_source.stream_info("labels")
    mb = mb_source.next_minibatch(1000)
    features, labels = mb[features_si], mb[labels_si]
    # the minibatch spans many sweeps
    assert features.end_of_sweep
    assert labels.end_of_sweep
    assert features.num_samples == 1000 - 1000 % 7
    assert labels.num_samples == 5 * (1000 // 7)
    assert mb[features_si].num_sequences == (1000 // 7)
    assert mb[labels_si].num_sequences == (1000 // 7)


def test_usermbsource_native_side(tmp_path):
    # test_usermbsource compares a UserMinibatchSource with the native source; these are the
    # native source's numbers (the user source's asserted equal to them in CNTK)
    tmpfile = _write_data(tmp_path, MBDATA_SPARSE)
    n_mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="x", shape=1000, is_sparse=True),
        labels=StreamDef(field="y", shape=5, is_sparse=False))), randomize=False)
    n_features_si, n_labels_si = n_mb_source["features"], n_mb_source["labels"]

    n_mb = n_mb_source.next_minibatch(2)
    n_features, n_labels = n_mb[n_features_si], n_mb[n_labels_si]
    assert n_features.shape == (1, 3, 1000)
    assert not n_features.end_of_sweep
    assert n_features.num_sequences == 1 and n_features.num_samples == 3
    assert n_features.is_sparse
    assert n_labels.shape == (1, 1, 5)
    assert n_labels.end_of_sweep is False
    assert n_labels.is_sparse is False
    np.testing.assert_allclose(n_labels.asarray(), [[[1, 0, 0, 0, 0]]])

    n_mb = n_mb_source.next_minibatch(10)
    n_features, n_labels = n_mb[n_features_si], n_mb[n_labels_si]
    np.testing.assert_allclose(n_labels.asarray(), [[[0, 1, 0, 0, 0]], [[1, 0, 0, 0, 0]]])
    assert n_features.end_of_sweep is n_labels.end_of_sweep is True
    assert n_features.num_samples == 7
    assert n_features.num_sequences == 2


def test_minibatch_defined_by_labels(tmp_path):
    input_dim, num_output_classes = 1000, 5

    def assert_data(mb_source):
        features_si = mb_source.stream_info("features")
        labels_si = mb_source.stream_info("labels")
        mb = mb_source.next_minibatch(2)
        features = mb[features_si]
        # 2 samples, max seq len 4, 1000 dim
        assert features.shape == (2, 4, input_dim)
        assert features.end_of_sweep
        assert features.num_sequences == 2
        assert features.num_samples == 7
        assert features.is_sparse
        labels = mb[labels_si]
        # 2 samples, max seq len 1, 5 dim
        assert labels.shape == (2, 1, num_output_classes)
        assert labels.end_of_sweep
        assert labels.num_sequences == 2
        assert labels.num_samples == 2
        assert not labels.is_sparse
        np.testing.assert_allclose(labels.asarray(), [[[1., 0., 0., 0., 0.]],
                                                      [[0., 1., 0., 0., 0.]]])
        mb = mb_source.next_minibatch(3)
        features, labels = mb[features_si], mb[labels_si]
        assert features.num_samples == 10
        assert labels.num_samples == 3

    tmpfile = _write_data(tmp_path, MBDATA_SPARSE)
    mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="x", shape=input_dim, is_sparse=True),
        labels=StreamDef(field="y", shape=num_output_classes, is_sparse=False,
                         defines_mb_size=True))), randomize=False)
    assert_data(mb_source)

    tmpfile1 = _write_data(tmp_path, MBDATA_SPARSE1, "1")
    tmpfile2 = _write_data(tmp_path, MBDATA_SPARSE2, "2")
    combined_mb_source = MinibatchSource([
        CTFDeserializer(tmpfile1, StreamDefs(
            features=StreamDef(field="x", shape=input_dim, is_sparse=True))),
        CTFDeserializer(tmpfile2, StreamDefs(
            labels=StreamDef(field="y", shape=num_output_classes, is_sparse=False,
                             defines_mb_size=True)))], randomize=False)
    assert_data(combined_mb_source)


def test_prefetch_with_unpacking(tmp_path):
    data = r'''0  |S0 1 1 1 1   |S1 1000
1   |S0 2 2 2 2  |S1 100
2   |S0 3 3 3 3  |S1 100
3   |S0 1 1 1 1  |S1 10
4   |S0 2 2 2 2  |S1 1
5   |S0 3 3 3 3  |S1 2000
6   |S0 1 1 1 1  |S1 200
7   |S0 2 2 2 2  |S1 200
8   |S0 3 3 3 3  |S1 20
9   |S0 1 1 1 1  |S1 2
'''
    tmpfile = _write_data(tmp_path, data)
    mb_source = MinibatchSource(CTFDeserializer(tmpfile, StreamDefs(
        features=StreamDef(field="S0", shape=4, is_sparse=False),
        labels=StreamDef(field="S1", shape=1, is_sparse=False))),
        randomize=False, max_samples=FULL_DATA_SWEEP)
    input_map = {"S0": mb_source.streams.features, "S1": mb_source.streams.labels}
    sizes = []
    while mb := mb_source.next_minibatch(3, input_map=input_map):
        actual_size = mb["S0"].shape[0]
        sizes.append(actual_size)
        expected = np.array([[[1, 1, 1, 1]], [[2, 2, 2, 2]], [[3, 3, 3, 3]]], dtype=np.float32)
        assert (mb["S0"].asarray() == expected[0:actual_size]).all()
    assert sizes == [3, 3, 3, 1]


class GenDeserializer:
    """io_tests.py's GenDeserializer (a UserDeserializer) as an rnnkit deserializer: every
    sample of chunk ``c`` holds the value ``c``; x is dense (2, 3), y sparse of dimension 3."""

    def __init__(self, num_chunks, num_sequences, max_sequence_len=1):
        self.streams = StreamDefs(x=StreamDef(shape=(2, 3)),
                                  y=StreamDef(shape=3, is_sparse=True))
        self.num_chunks = num_chunks
        self._num_sequences = num_sequences
        self._max_len = max_sequence_len

    def get_chunk(self, chunk_id):
        lengths = np.random.default_rng(chunk_id).integers(
            1, self._max_len + 1, size=self._num_sequences).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        n = int(offsets[-1])
        x = StreamChunk(offsets, np.full((n, 6), chunk_id, dtype=np.float32))
        y = StreamChunk(offsets, np.full(3 * n, chunk_id, dtype=np.float32),
                        np.tile(np.arange(3), n).astype(np.int64),
                        (np.arange(n + 1) * 3).astype(np.int64))
        return Chunk(index=chunk_id, lengths=lengths, streams={"x": x, "y": y})


def _run_with_checkpoints(minibatch_source, num_chunks, frame_values):
    """io_tests.py's run_minibatch_source: every 10th minibatch, save the state, read three
    minibatches, restore - the counts must come out as if nothing had been read."""
    x_values = np.zeros(num_chunks, dtype=np.int32)
    y_values = np.zeros(num_chunks, dtype=np.int32)
    mb_count = 0
    while True:
        if mb_count % 10 == 1:  # perform checkpointing
            checkpoint_state = minibatch_source.get_checkpoint_state()
            for _ in range(3):
                minibatch_source.next_minibatch(20)
            minibatch_source.restore_from_checkpoint(checkpoint_state)
            mb_count += 1
            continue
        mb = minibatch_source.next_minibatch(20)
        mb_count += 1
        if not mb:
            break
        if frame_values:  # sample mode: every sample counts
            for sequence in mb[minibatch_source.streams.x].asarray():
                for sample in sequence:
                    x_values[int(sample[0][0])] += 1
            for sequence in mb[minibatch_source.streams.y].asarray():
                for sample in sequence:
                    y_values[int(sample[0])] += 1
        else:  # sequence mode: every sequence counts
            for sequence in mb[minibatch_source.streams.x].asarray():
                x_values[int(sequence[0][0][0])] += 1
            for sequence in mb[minibatch_source.streams.y].as_sequences():
                y_values[int(sequence[0][0])] += 1
    return x_values, y_values


def test_user_deserializer_sample_mode():
    for num_sequences, sweeps in ((100, 2), (1, 3)):  # big chunks, then chunks of 1
        d = GenDeserializer(num_chunks=20, num_sequences=num_sequences)
        for randomize in (False, True):
            mbs = MinibatchSource([d], randomize=randomize, max_sweeps=sweeps,
                                  randomization_window_in_chunks=5)
            x, y = _run_with_checkpoints(mbs, 20, frame_values=True)
            assert (x == num_sequences * sweeps).all() and (y == num_sequences * sweeps).all()


def test_user_deserializer_sequence_mode():
    for num_sequences, sweeps in ((100, 2), (1, 3)):
        d = GenDeserializer(num_chunks=15, num_sequences=num_sequences, max_sequence_len=10)
        for randomize in (False, True):
            mbs = MinibatchSource([d], randomize=randomize, max_sweeps=sweeps,
                                  randomization_window_in_chunks=5)
            x, y = _run_with_checkpoints(mbs, 15, frame_values=False)
            assert (x == num_sequences * sweeps).all() and (y == num_sequences * sweeps).all()


# ---------------------------------------------------------------------- distributed_test.py
DISTRIBUTED_CTF = '''\
0\t|S0 3:1 |# <s>\t|S1 3:1 |# <s>
0\t|S0 4:1 |# A\t|S1 32:1 |# ~AH
0\t|S0 5:1 |# B\t|S1 36:1 |# ~B
0\t|S0 4:1 |# A\t|S1 31:1 |# ~AE
0\t|S0 7:1 |# D\t|S1 38:1 |# ~D
0\t|S0 12:1 |# I\t|S1 47:1 |# ~IY
0\t|S0 1:1 |# </s>\t|S1 1:1 |# </s>
2\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
2\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
2\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
3\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
3\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
3\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
3\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
4\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
5\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
5\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
6\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
6\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
7\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
8\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
8\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
9\t|S0 60:1 |# <s>\t|S1 3:1 |# <s>
9\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
10\t|S0 61:1 |# A\t|S1 32:1 |# ~AH
'''


def _distributed_source(ctf_file, **kwargs):
    return MinibatchSource(CTFDeserializer(ctf_file, StreamDefs(
        features=StreamDef(field="S0", shape=69, is_sparse=True),
        labels=StreamDef(field="S1", shape=69, is_sparse=True))), **kwargs)


def test_distributed_mb_source(tmp_path):
    ctf_file = _write_data(tmp_path, DISTRIBUTED_CTF, "2seqtest.txt")
    # No randomization; a bit more than a sweep
    mb0 = _distributed_source(ctf_file, randomize=False, max_samples=36)
    mb1 = _distributed_source(ctf_file, randomize=False, max_samples=36)
    input_map = {"input": mb0.streams.features, "label": mb0.streams.labels}

    def read(source, rank):
        return source.next_minibatch(minibatch_size_in_samples=10, input_map=input_map,
                                     num_data_partitions=2, partition_index=rank)

    # two workers: the minibatch_size_in_samples is split in 2, 5 samples per worker
    assert read(mb0, 0)["input"].num_samples == 7  # Sequence 0
    assert read(mb0, 0)["input"].num_samples == 4  # Sequence 3
    assert read(mb0, 0)["input"].num_samples == 5  # Sequences 5, 7, 9
    assert read(mb0, 0)["input"].num_samples == 7  # Sequence 0
    assert read(mb0, 0)["input"].num_samples == 4  # Sequence 3
    assert len(read(mb0, 0)) == 0  # No data

    assert read(mb1, 1)["input"].num_samples == 4  # Sequences 2, 4
    assert read(mb1, 1)["input"].num_samples == 5  # Sequences 6, 8, 10
    assert read(mb1, 1)["input"].num_samples == 3  # Sequences 2
    assert len(read(mb1, 1)) == 0  # No data

    # Randomization. CNTK splits a randomised sweep by chunk, so with this one-chunk file
    # worker 1 gets no data at all and worker 0 gets 5, 4, 4, 5, 7 samples (CNTK's RNG).
    # rnnkit deliberately splits the randomised order by sequence, as it splits the plain
    # one: with chunks of 4 MiB most data sets are one chunk, and a worker without data would
    # stall data-parallel training. Both workers see the same order (same seed), and every
    # sequence goes to exactly one of them.
    mb3 = _distributed_source(ctf_file, max_sweeps=1)
    mb4 = _distributed_source(ctf_file, max_sweeps=1)
    seen = []
    for source, rank in ((mb3, 0), (mb4, 1)):
        while data := read(source, rank):
            assert data["input"].num_samples <= 5 or data["input"].num_sequences == 1
            seen += [int(row[0]) for row in data["input"].indices.tolist()]
    # the first step of every sequence, once: 3 (seq 0) and 60 (seqs 2-9), 61 (seq 10)
    assert sorted(seen) == [3] + [60] * 8 + [61]


def test_distributed_mb_source_again(tmp_path):
    ctf_data = '''0  |S0 1   |S1 1
0   |S0 2   |S1 2
0   |S0 3
1   |S0 4
1   |S0 5   |S1 3
1   |S0 6   |S1 4
'''
    ctf_file = _write_data(tmp_path, ctf_data, "2seqtest.txt")
    ctf = CTFDeserializer(ctf_file, StreamDefs(features=StreamDef(field="S0", shape=1),
                                               labels=StreamDef(field="S1", shape=1)))
    rng = random.Random(1234)
    mb_sources = []
    for randomize in [True, False]:
        mb_sources.append(MinibatchSource(ctf, randomize=randomize))
        mb_sources.append(MinibatchSource(ctf, randomize=randomize,
                                          max_sweeps=rng.randint(1, 10)))
        mb_sources.append(MinibatchSource(ctf, randomize=randomize,
                                          max_samples=rng.randint(1, 30)))
    for i in range(20):
        for source in mb_sources:
            data = source.next_minibatch(minibatch_size_in_samples=5, num_data_partitions=2,
                                         partition_index=i % 2)
            features = source.streams["features"]
            assert len(data) == 0 or data[features].num_samples == 3


# ------------------------------------------------------------------ MinibatchSourceTest.cpp
def _one_step_file(tmp_path, name, lines, labels=False):
    """One-step sequences of 2 features (and 2 labels), as CNTK's SimpleData*_cntk_text.txt."""
    rng = np.random.default_rng(lines)
    path = tmp_path / name
    with open(path, "w") as f:
        for k in range(lines):
            a, b = rng.random(2)
            f.write(f"|features {a:.6f} {b:.6f}" + (f" |labels {k % 2} {1 - k % 2}"
                                                    if labels else "") + "\n")
    return str(path)


@pytest.mark.parametrize("randomize", [False, True])
def test_end_of_sweep_flag_is_set_correctly(tmp_path, randomize):
    sweep_size = 603
    ctf_input = _one_step_file(tmp_path, "SimpleDataTest_cntk_text.txt", sweep_size)
    d = CTFDeserializer(ctf_input, StreamDefs(features=StreamDef(shape=2)))
    for max_samples, mb_size in ((FULL_DATA_SWEEP, 603), (FULL_DATA_SWEEP, 1000),
                                 (FULL_DATA_SWEEP, 100), (100, 30), (2000, 500), (2412, 301)):
        src = MinibatchSource(d, max_samples=max_samples, randomize=randomize)
        max_samples = sweep_size if max_samples == FULL_DATA_SWEEP else max_samples
        sample_count = 0
        while sample_count < max_samples:
            mb = src.next_minibatch(mb_size)
            assert len(mb) == 1
            data = mb[src.streams.features]
            n = data.num_samples
            expected_end_of_sweep = (sample_count + n) % sweep_size == 0
            expected_end_of_sweep |= (sample_count // sweep_size
                                      < (sample_count + n) // sweep_size)
            expected_num_samples = min(mb_size, max_samples - sample_count)
            assert data.end_of_sweep == expected_end_of_sweep
            assert n == expected_num_samples
            assert data.num_sequences == expected_num_samples
            sample_count += mb_size
        assert not src.next_minibatch(mb_size)


# CNTK runs warm starts 0, 100 and 128 for each case; one each here keeps the suite fast
@pytest.mark.parametrize("warm_start_samples, randomize, chunk_size, expect_no_data", [
    (100, False, 1024, False),  # NoRandomizedMinibatchSourceWarmStart
    (0, False, 32 << 20, False),  # NoRandomizedMinibatchSourceWithSingleChunk
    (128, True, 1024, False),  # RandomizedMinibatchSourceWithSmallChunks
    (128, True, 32 << 20, True),  # RandomizedMinibatchSourceWithNoData
])
def test_minibatch_source_warm_start(tmp_path, warm_start_samples, randomize, chunk_size,
                                     expect_no_data):
    """Two workers read alone for ``warm_start_samples``, then as two partitions."""
    minibatch_size, samples_in_sweep = 64, 10000
    path = _one_step_file(tmp_path, "SimpleDataTrain_cntk_text.txt", 1000, labels=True)

    def source():
        return MinibatchSource(CTFDeserializer(path, StreamDefs(
            features=StreamDef(shape=2), labels=StreamDef(shape=2)),
            chunk_size_in_bytes=chunk_size), max_samples=samples_in_sweep, randomize=randomize)

    source1, source2 = source(), source()
    features = source1.streams.features
    total = 0
    while True:
        if total < warm_start_samples:
            mb1 = source1.next_minibatch(minibatch_size, num_data_partitions=1, partition_index=0)
            mb2 = source2.next_minibatch(minibatch_size, num_data_partitions=1, partition_index=0)
            # reads are deterministic: both read the same
            assert mb1[features].num_samples == mb2[features].num_samples
            assert torch.equal(mb1[features].data, mb2[features].data)
            total += mb1[features].num_samples
            continue
        mb1 = source1.next_minibatch(minibatch_size, num_data_partitions=2, partition_index=0)
        mb2 = source2.next_minibatch(minibatch_size, num_data_partitions=2, partition_index=1)
        if not mb1 and not mb2:
            break
        n1 = mb1[features].num_samples if mb1 else 0
        n2 = mb2[features].num_samples if mb2 else 0
        total += n1 + n2
        # CNTK (expect_no_data): its randomised reading splits by chunk, so with one chunk
        # worker 1 reads nothing. rnnkit splits by sequence: both read half (see
        # test_distributed_mb_source); the checks CNTK makes on worker 0 hold either way.
        if expect_no_data:
            assert n1 == minibatch_size // 2 or total == samples_in_sweep
        else:
            assert (n1 + n2 == minibatch_size or n1 == minibatch_size // 2
                    or n2 == minibatch_size // 2 or total == samples_in_sweep)
        assert n2 == n1 or total == samples_in_sweep  # rnnkit: an even split
    assert total == samples_in_sweep


# ----------------------------------------------------------------------------- issue 9's cases
def test_truncated_bptt_packs_like_cntk(tmp_path):
    # four 5-step sequences, truncation_length=4, minibatch of 8 samples: CNTK 8, 8, 4
    lines = "".join(f"{k} |x {k}{t}\n" for k in range(4) for t in range(5))
    path = _write_data(tmp_path, lines)
    src = MinibatchSource(CTFDeserializer(path, StreamDefs(x=StreamDef(shape=1))),
                          randomize=False, max_sweeps=1, truncation_length=4)
    sizes, rows = [], []
    while mb := src.next_minibatch(8):
        x = mb["x"]
        sizes.append(x.num_samples)
        rows.append([(int(s), [int(v) for v in seq[:, 0]])
                     for s, seq in zip(x.slots, x.as_sequences(), strict=True)])
    assert sizes == [8, 8, 4]
    # slot 0: sequence 0, then its last step and sequence 2 in one window
    assert rows == [[(0, [0, 1, 2, 3]), (1, [10, 11, 12, 13])],
                    [(0, [4]), (0, [20, 21, 22]), (1, [14]), (1, [30, 31, 32])],
                    [(0, [23, 24]), (1, [33, 34])]]


def test_checkpoint_state_is_plain_data_and_resumes_mid_sweep(tmp_path):
    lines = "".join(f"{k} |x {k}.{t}\n" for k in range(30) for t in range(1 + k % 4))
    path = _write_data(tmp_path, lines)
    defs = StreamDefs(x=StreamDef(shape=1))

    def source(**kw):
        return MinibatchSource(CTFDeserializer(path, defs, chunk_size_in_bytes=40),
                               max_sweeps=3, randomization_window_in_chunks=2,
                               randomization_seed=9, **kw)

    for kw in ({}, {"truncation_length": 2}, {"frame_mode": True}):
        reference = [mb["x"].data.tolist() for mb in source(**kw).iter_minibatches(7)]
        for stop in (1, 5, 11, len(reference) - 1):
            first = source(**kw)
            for _ in range(stop):
                first.next_minibatch(7)
            state = first.get_checkpoint_state()
            torch.save(state, tmp_path / "state.pt")
            state = torch.load(tmp_path / "state.pt", weights_only=True)
            state = json.loads(json.dumps(state))
            resumed = source(**kw)
            resumed.restore_from_checkpoint(state)
            rest = [mb["x"].data.tolist() for mb in resumed.iter_minibatches(7)]
            assert rest == reference[stop:], (kw, stop)
    other = MinibatchSource(CTFDeserializer(path, defs, chunk_size_in_bytes=40),
                            randomization_seed=10)
    with pytest.raises(ValueError, match="saved by a source with seed=9; this source has seed=10"):
        other.restore_from_checkpoint(source().get_checkpoint_state())
