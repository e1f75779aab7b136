"""CTF reader and writer: round trips, the CNTK example shapes, malformed lines."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data.ctf import CTFDeserializer, CTFFormatError, read_ctf, write_ctf
from rnnkit.data.sources import MinibatchSource, StreamDef, StreamDefs

DEFS = StreamDefs(features=StreamDef(field="x", shape=2),
                  labels=StreamDef(field="y", shape=3, is_sparse=True))


def _write(tmp_path, text, name="d.ctf", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return str(path)


def _all_sequences(path, defs=DEFS, chunk=1 << 20):
    return list(CTFDeserializer(path, defs, chunk_size_in_bytes=chunk).iter_sequences())


# ----------------------------------------------------------------------------- the format
CNTK_EXAMPLE = """\
|# a file in the style of the CNTK tutorial
0 |x 0.1 0.2 |y 0:1 |# the label on the first line only
0 |x 0.3 0.4
0 |# comments may stand between samples |x 0.5 0.6
1 |y 2:1 |x 1.5 2.5
1 |x 3.5 4.5

2\t|x -1 1e-3\t|y 1:0.5 2:0.25
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_cntk_example_shapes(tmp_path, newline):
    path = _write(tmp_path, CNTK_EXAMPLE, newline=newline)
    src = MinibatchSource(CTFDeserializer(path, DEFS), randomize=False, max_sweeps=1)
    mb = src.next_minibatch(100)
    x, y = mb[src.streams.features], mb[src.streams.labels]
    assert x.data.shape == (3, 3, 2) and x.lengths.tolist() == [3, 2, 1]
    assert y.data.shape == (3, 1, 3) and y.lengths.tolist() == [1, 1, 1]
    np.testing.assert_array_equal(x.data[0].numpy(), np.float32([[.1, .2], [.3, .4], [.5, .6]]))
    np.testing.assert_array_equal(x.data[1].numpy(), np.float32([[1.5, 2.5], [3.5, 4.5], [0, 0]]))
    np.testing.assert_array_equal(x.data[2, 0].numpy(), np.float32([-1, 1e-3]))
    np.testing.assert_array_equal(y.data[:, 0].numpy(), [[1, 0, 0], [0, 0, 1], [0, .5, .25]])
    assert y.indices[:, 0].tolist() == [0, 2, 1]
    assert x.mask.tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    assert mb.num_samples == 6 and x.num_samples == 6 and y.num_samples == 3
    assert x.end_of_sweep and not src.next_minibatch(100)
    dense = y.as_sparse().to_dense()
    assert dense.equal(y.data)


def test_lines_without_ids_are_sequences_of_their_own(tmp_path):
    path = _write(tmp_path, "|x 1 2 |y 0:1\n|x 3 4\n|y 1:1 |x 5 6\n")
    seqs = _all_sequences(path)
    assert [s["features"].shape for s in seqs] == [(1, 2), (1, 2), (1, 2)]
    assert [s["labels"].shape[0] for s in seqs] == [1, 0, 1]


def test_shaped_dense_stream(tmp_path):
    path = _write(tmp_path, "0 |img 1 2 3 4 5 6\n0 |img 6 5 4 3 2 1\n")
    defs = StreamDefs(img=StreamDef(shape=(2, 3)))
    src = MinibatchSource(CTFDeserializer(path, defs), randomize=False, max_sweeps=1)
    data = src.next_minibatch(10)["img"].data
    assert data.shape == (1, 2, 2, 3)
    assert data[0, 1].flatten().tolist() == [6, 5, 4, 3, 2, 1]


# ----------------------------------------------------------------------------- round trips
def test_round_trip_dense_and_sparse(tmp_path):
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(20):
        t = int(rng.integers(1, 7))
        seqs.append({"x": rng.standard_normal((t, 2)).astype(np.float32),
                     "y": rng.integers(0, 3, size=int(rng.integers(0, 3)))})
    path = str(tmp_path / "rt.ctf")
    write_ctf(path, seqs, sparse={"y": 3})
    for chunk in (1 << 20, 64, 1):  # one chunk, several, one sequence per chunk
        back = _all_sequences(path, chunk=chunk)
        assert len(back) == len(seqs)
        for a, b in zip(seqs, back, strict=True):
            np.testing.assert_array_equal(b["features"], a["x"])
            np.testing.assert_array_equal(b["labels"], np.eye(3, dtype=np.float32)[a["y"]])


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a.ctf"
    write_ctf(path, [{"x": [[1.0, 2.0]]}])
    before = path.read_text()
    with pytest.raises(ValueError, match="index out of range for dimension 3"):
        write_ctf(path, [{"x": [[1.0, 2.0]]}, {"y": [7]}], sparse={"y": 3})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["a.ctf"]


def test_writer_errors(tmp_path):
    with pytest.raises(TypeError, match="sequence 0 must be a mapping"):
        write_ctf(tmp_path / "e.ctf", [[1, 2]])
    with pytest.raises(ValueError, match="stream name 'a b'"):
        write_ctf(tmp_path / "e.ctf", [{"a b": [[1.0]]}])
    with pytest.raises(ValueError, match="rows have 2 columns, the stream's dimension is 3"):
        write_ctf(tmp_path / "e.ctf", [{"y": np.ones((1, 2))}], sparse={"y": 3})
    with pytest.raises(ValueError, match="samples need a time axis"):
        write_ctf(tmp_path / "e.ctf", [{"x": 1.0}])
    with pytest.raises(ValueError, match="ids ran out at sequence 1"):
        write_ctf(tmp_path / "e.ctf", [{"x": [[1.0]]}] * 2, ids=["a"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(
        st.tuples(
            st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=3),
                     min_size=0, max_size=5),
            st.lists(st.integers(0, 4), min_size=0, max_size=4),
        ).filter(lambda s: len(s[0]) or len(s[1])),
        min_size=1, max_size=12),
    chunk=st.integers(1, 400),
    ids=st.booleans(),
)
def test_property_random_sequences_round_trip(tmp_path, data, chunk, ids):
    seqs = [{"a": np.float32(x).reshape(-1, 3), "b": np.array(y, dtype=np.int64)}
            for x, y in data]
    path = tmp_path / "p.ctf"
    defs = StreamDefs(a=StreamDef(shape=3), b=StreamDef(shape=5, is_sparse=True))
    write_ctf(path, seqs, sparse={"b": 5}, ids=[f"s{i}" for i in range(len(seqs))])
    if not ids:
        # without ids every line is its own sequence: compare line by line
        text = "".join(line.split(" ", 1)[1] + "\n" for line in path.read_text().splitlines())
        path.write_text(text)
        seqs = [{"a": s["a"][t:t + 1], "b": s["b"][t:t + 1]} for s in seqs
                for t in range(max(len(s["a"]), len(s["b"])))]
    back = list(CTFDeserializer(path, defs, chunk_size_in_bytes=chunk).iter_sequences())
    assert len(back) == len(seqs)
    for a, b in zip(seqs, back, strict=True):
        np.testing.assert_array_equal(b["a"], a["a"])
        np.testing.assert_array_equal(b["b"], np.eye(5, dtype=np.float32)[a["b"]])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text, message", [
    ("0 |x 1 2 3\n", r"line 1, column 4: stream 'x' expects 2 values, got 3"),
    ("0 |x 1 abc\n", r"line 1, column 8: non-numeric value 'abc' in stream 'x'"),
    ("0 |x 1 2 |y 3:1\n", r"line 1, column 13: sparse index 3 of stream 'y' is out of range "
                          r"for dimension 3"),
    ("0 |y -1:1\n", r"column 6: sparse index -1 of stream 'y' is out of range"),
    ("0 |y 1:z\n", r"line 1, column 8: non-numeric value 'z' in stream 'y'"),
    ("0 |y a:1\n", r"line 1, column 6: sparse index 'a' of stream 'y' is not an integer"),
    ("0 |y 1\n", r"line 1, column 6: sparse stream 'y' expects index:value, got '1'"),
    ("0 |x 1 2 |x 1 2\n", r"line 1, column 11: stream 'x' appears twice on one line"),
    ("0 |x 1 2 |\n", r"line 1, column 10: '\|' must be followed directly by a stream name"),
    ("0 | x 1 2\n", r"line 1, column 3: '\|' must be followed directly by a stream name"),
    ("0 |x 1 2 ||y 1:1\n", r"line 1, column 10: '\|' must be followed directly"),
    ("1 2 3\n", r"line 1, column 1: expected '\|' followed by a stream name"),
    ("a b |x 1 2\n", r"line 1, column 1: text before the first '\|' must be one sequence id"),
    ("0 |x 1 2f\n", r"line 1, column 8: non-numeric value '2f' in stream 'x'"),
    ("0 |x 1 2,0\n", r"line 1, column 8: non-numeric value '2,0' in stream 'x'"),
    ("0 |x 1 1e39\n", r"line 1, column 8: value '1e39' in stream 'x' overflows float32 "
                      r"\(declare the stream with StreamDef\(dtype='float64'\)"),
    ("0 |x 1 -4e38\n", r"line 1, column 8: value '-4e38' in stream 'x' overflows float32"),
    ("0 |y 1:1e39\n", r"line 1, column 8: value '1e39' in stream 'y' overflows float32"),
    ("0 |x 1 1e400\n", r"line 1, column 8: value '1e400' in stream 'x' overflows float64"),
])
@pytest.mark.parametrize("parser", ["auto", "python"])
def test_malformed_lines_name_file_line_and_column(tmp_path, text, message, parser):
    path = _write(tmp_path, text, name="bad.ctf")
    with pytest.raises(CTFFormatError, match=message) as info:
        read_ctf(path, DEFS, parser=parser)
    assert str(info.value).startswith(f"{path}, line ")


def test_errors_count_lines_across_chunks_and_crlf(tmp_path):
    good = "".join(f"{i} |x 1 2\r\n" for i in range(50))
    path = _write(tmp_path, good + "50 |x 1 2q\r\n")
    d = CTFDeserializer(path, DEFS, chunk_size_in_bytes=40)
    assert d.num_chunks > 5
    with pytest.raises(CTFFormatError, match=r"line 51, column 9: non-numeric value '2q'"):
        list(d.iter_sequences())
    # the line count of a later chunk is right whatever order chunks are read in
    d = CTFDeserializer(path, DEFS, chunk_size_in_bytes=40)
    with pytest.raises(CTFFormatError, match=r"line 51, column 9"):
        for c in reversed(range(d.num_chunks)):
            d.get_chunk(c)


def test_bytes_that_are_not_utf8_are_a_bad_value_not_a_crash(tmp_path):
    path = tmp_path / "u.ctf"
    path.write_bytes(b"0 |x 1 2\n0 |x 1 \xff\n")
    with pytest.raises(CTFFormatError, match=r"line 2, column 8: non-numeric value '\\\\xff'"):
        read_ctf(path, DEFS)
    # in a comment or an id they are just bytes
    path.write_bytes(b"\xfe |x 1 2 |# caf\xe9\n")
    assert read_ctf(path, DEFS)[0]["features"].tolist() == [[1, 2]]


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="CTF file not found: .*missing.ctf"):
        CTFDeserializer(tmp_path / "missing.ctf", DEFS)
    path = _write(tmp_path, "0 |x 1 2\n")
    with pytest.raises(ValueError, match="chunk_size_in_bytes must be a positive int"):
        CTFDeserializer(path, DEFS, chunk_size_in_bytes=0)
    with pytest.raises(ValueError, match="max_errors must be an int >= 0, got -1"):
        CTFDeserializer(path, DEFS, max_errors=-1)
    with pytest.raises(ValueError, match="parser must be 'auto', 'native' or 'python'"):
        CTFDeserializer(path, DEFS, parser="c")
    with pytest.raises(ValueError, match="StreamDef shape must be a positive int, got 0"):
        StreamDef(shape=0)
    with pytest.raises(ValueError, match="a sparse StreamDef needs an int shape"):
        StreamDef(shape=(2, 3), is_sparse=True)
    with pytest.raises(ValueError, match="StreamDef dtype must be 'float32' or 'float64'"):
        StreamDef(shape=2, dtype="int8")
    with pytest.raises(ValueError, match="both read field 'x'"):
        StreamDefs(a=StreamDef(field="x"), b=StreamDef(field="x"))
    with pytest.raises(ValueError, match="StreamDefs needs at least one stream"):
        StreamDefs()
    with pytest.raises(IndexError, match="chunk 5 out of range for 1 chunks"):
        CTFDeserializer(path, DEFS).get_chunk(5)


def test_interleaved_integer_ranges_are_not_repeats(tmp_path):
    body = "".join(f"{i} |x 1 2\n" for i in range(0, 60, 2))
    body += "".join(f"{i} |x 1 2\n" for i in range(1, 60, 2))
    path = _write(tmp_path, body)
    d = CTFDeserializer(path, DEFS, chunk_size_in_bytes=len(body) // 2 - 5)
    assert d.num_chunks >= 2
    assert len(list(d.iter_sequences())) == 60
