"""CTF reader semantics as CNTK 2.7's CNTKTextFormatReader has them (issue 9, item 2).

Each case is checked with both parsers (the C++ fast path and the Python reference parser),
so the two cannot drift apart.
"""

import warnings

import numpy as np
import pytest
import torch

from rnnkit.data import _ctf_native
from rnnkit.data.ctf import CTFDeserializer, CTFFormatError, CTFWarning, read_ctf
from rnnkit.data.sources import MinibatchSource, StreamDef, StreamDefs

A = StreamDefs(A=StreamDef(shape=1))
PARSERS = ["python"] + (["native"] if _ctf_native.load() is not None else [])


def _write(tmp_path, data, name="d.ctf"):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _values(seqs, stream="A"):
    return [s[stream].ravel().tolist() for s in seqs]


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


# ------------------------------------------------------------------ sequences and their ids
@pytest.mark.parametrize("chunk", [1 << 20, 1])
def test_a_line_without_id_continues_a_sequence_that_began_with_one(tmp_path, parser, chunk):
    path = _write(tmp_path, "6 |A 6.0\n|A 7.0\n |A 8.0\n7 |A 1\n7 |A 2\n|A 3\n")
    d = CTFDeserializer(path, A, chunk_size_in_bytes=chunk, parser=parser)
    assert _values(d.iter_sequences()) == [[6, 7, 8], [1, 2, 3]]


@pytest.mark.parametrize("chunk", [1 << 20, 1])
def test_lines_before_the_first_id_are_sequences_of_their_own(tmp_path, parser, chunk):
    path = _write(tmp_path, "|A 1\n|A 2\n5 |A 3\n|A 4\n")
    d = CTFDeserializer(path, A, chunk_size_in_bytes=chunk, parser=parser)
    assert _values(d.iter_sequences()) == [[1], [2], [3, 4]]


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_an_id_that_comes_back_starts_a_new_sequence(tmp_path, parser, chunk):
    # two concatenated files that both number their sequences from 0
    path = _write(tmp_path, "0 |A 1\n0 |A 2\n1 |A 3\n0 |A 4\n|A 5\n1 |A 6\n")
    d = CTFDeserializer(path, A, chunk_size_in_bytes=chunk, parser=parser)
    assert _values(d.iter_sequences()) == [[1, 2], [3], [4, 5], [6]]


def test_chunk_cuts_never_split_a_sequence_continued_without_ids(tmp_path, parser):
    rng = np.random.default_rng(0)
    lines, expected = [], []
    for s in range(40):
        n = int(rng.integers(1, 6))
        values = list(range(s * 10, s * 10 + n))
        expected.append([float(v) for v in values])
        lines.append(f"{s % 7} |A {values[0]}")  # ids repeat later: new sequences
        lines += [f"|A {v}" if rng.random() < 0.5 else f"{s % 7} |A {v}" for v in values[1:]]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    for chunk in (1, 13, 50, 1 << 20):
        d = CTFDeserializer(path, A, chunk_size_in_bytes=chunk, parser=parser)
        assert _values(d.iter_sequences()) == expected, chunk


def test_files_without_ids_are_cut_into_chunks_without_scanning_for_ids(tmp_path, parser):
    path = _write(tmp_path, "".join(f"|A {i}\n" for i in range(100)))
    d = CTFDeserializer(path, A, chunk_size_in_bytes=30, parser=parser)
    assert d.num_chunks > 10
    assert _values(d.iter_sequences()) == [[float(i)] for i in range(100)]


# ------------------------------------------------------------------ streams
def test_undeclared_streams_are_skipped_with_one_warning_per_name(tmp_path, parser):
    path = _write(tmp_path, "0 |A 1 |C 5 |B 2:1\n0 |C 6 |A 2\n1 |D 1 |A 3\n1 |C 7\n")
    with pytest.warns(CTFWarning) as record:
        seqs = read_ctf(path, A, parser=parser)
    assert _values(seqs) == [[1, 2], [3]]
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 3  # B, C and D, once each
    assert messages[0].endswith("line 1: stream 'B' is not declared (declared fields: A); "
                                "its samples are skipped")
    assert "line 1: stream 'C'" in messages[1] and "line 3: stream 'D'" in messages[2]


def test_many_undeclared_streams_are_all_named(tmp_path, parser):
    names = [f"s{i}" for i in range(_ctf_native.MAX_UNDECLARED + 4)]
    path = _write(tmp_path, "0 |A 1 " + " ".join(f"|{n} 1" for n in names) + "\n")
    with pytest.warns(CTFWarning) as record:
        assert _values(read_ctf(path, A, parser=parser)) == [[1]]
    assert len(record) == len(names)


def test_short_dense_sample_is_zero_filled_with_a_warning(tmp_path, parser):
    defs = StreamDefs(A=StreamDef(shape=3))
    path = _write(tmp_path, "0 |A 1 2 3\n0 |A 4\n1 |A\n")
    with pytest.warns(CTFWarning, match=r"d.ctf, line 2: stream 'A' has fewer values than its "
                                        r"dimension 3; zero-filled \(2 such sample"):
        seqs = read_ctf(path, defs, parser=parser)
    assert [s["A"].tolist() for s in seqs] == [[[1, 2, 3], [4, 0, 0]], [[0, 0, 0]]]
    with pytest.raises(CTFFormatError, match=r"line 2, column 4: stream 'A' expects 3 values, "
                                             r"got 1 \(strict=True\)"):
        read_ctf(path, defs, parser=parser, strict=True)


def test_byte_order_mark_is_skipped(tmp_path, parser):
    path = _write(tmp_path, b"\xef\xbb\xbf0 |A 1\n0 |A 2\n1 |A 3\n")
    for chunk in (1, 1 << 20):
        d = CTFDeserializer(path, A, chunk_size_in_bytes=chunk, parser=parser)
        assert _values(d.iter_sequences()) == [[1, 2], [3]]
    bad = _write(tmp_path, b"\xef\xbb\xbf0 |A x\n", name="bad.ctf")
    with pytest.raises(CTFFormatError, match=r"line 1, column 6: non-numeric value 'x'"):
        read_ctf(bad, A, parser=parser)


# ------------------------------------------------------------------ precision
def test_float64_streams_read_values_beyond_float32_exactly(tmp_path, parser):
    text = "16|F0 1.31753 -3.74118 1.42057e+044\n16|F0 -12159.6 -0.0019527 16.3644\n"
    path = _write(tmp_path, text)
    f64 = StreamDefs(F0=StreamDef(shape=3, dtype="float64"))
    (seq,) = read_ctf(path, f64, parser=parser)
    assert seq["F0"].dtype == np.float64
    assert seq["F0"][0, 2] == 1.42057e44 and seq["F0"][1, 0] == -12159.6
    f32 = StreamDefs(F0=StreamDef(shape=3))
    with pytest.raises(CTFFormatError, match=r"d.ctf, line 1, column 24: value '1.42057e\+044' "
                                             r"in stream 'F0' overflows float32"):
        read_ctf(path, f32, parser=parser)
    src = MinibatchSource(CTFDeserializer(path, f64, parser=parser), randomize=False,
                          max_sweeps=1)
    data = src.next_minibatch(10)["F0"]
    assert data.data.dtype == torch.float64
    assert float(data.data[0, 0, 2]) == 1.42057e44
    assert src.streams.F0.dtype == data.data.dtype


def test_float32_values_are_rounded_as_float64_then_float32(tmp_path, parser):
    tokens = ["0.1", "1e-45", "3.4028234e38", "-0", "16777217", ".5", "5.", "+2E+2", "1e-400",
              "123456789012345678901234567890", "0.30000000000000000000000001", "inf", "-Inf",
              "nan"]
    path = _write(tmp_path, "0 |A " + " ".join(tokens) + "\n")
    for dtype in ("float32", "float64"):
        defs = StreamDefs(A=StreamDef(shape=len(tokens), dtype=dtype))
        got = read_ctf(path, defs, parser=parser)[0]["A"][0]
        want = np.array([float(t) for t in tokens]).astype(dtype)
        np.testing.assert_array_equal(got, want)
        assert np.signbit(got[3])


# ------------------------------------------------------------------ max_errors
BAD = "0 |A 1\n1 |A x\n|A 2\n2 |A 3\n3 |A 4 5\n4 |A 6\n"


def test_max_errors_skips_bad_sequences_with_warnings_then_raises(tmp_path, parser):
    path = _write(tmp_path, BAD)
    with pytest.raises(CTFFormatError, match=r"line 2, column 6: non-numeric value 'x'"):
        read_ctf(path, A, parser=parser)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        seqs = read_ctf(path, A, parser=parser, max_errors=2)
    assert _values(seqs) == [[1], [3], [6]]  # sequence 1 (two lines) and 3 are dropped whole
    messages = [str(w.message) for w in record if w.category is CTFWarning]
    assert len(messages) == 2
    assert messages[0].endswith("d.ctf, line 2, column 6: non-numeric value 'x' in stream 'A'; "
                                "skipping the sequence (1 of at most max_errors=2)")
    assert "line 5, column 4: stream 'A' expects 1 values, got 2" in messages[1]
    with pytest.raises(CTFFormatError, match=r"line 5, column 4: stream 'A' expects 1 values, "
                                             r"got 2 \(2 bad sequences, more than "
                                             r"max_errors=1\)"), pytest.warns(CTFWarning):
        read_ctf(path, A, parser=parser, max_errors=1)


def test_max_errors_counts_each_bad_sequence_once_across_sweeps_and_chunks(tmp_path, parser):
    path = _write(tmp_path, BAD)
    d = CTFDeserializer(path, A, chunk_size_in_bytes=1, max_errors=2, parser=parser)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        src = MinibatchSource(d, max_sweeps=3, randomization_seed=3)
        total = sum(mb.num_samples for mb in src.iter_minibatches(2))
    assert total == 3 * 3
    assert len([w for w in record if w.category is CTFWarning]) == 2  # warned once each


def test_without_the_cpp_parser_python_reads_the_same_and_says_why_once(tmp_path,
                                                                         monkeypatch):
    import rnnkit.data.ctf as ctf

    path = _write(tmp_path, "0 |A 1\n|A 2\n1 |A 3\n")
    monkeypatch.setattr(_ctf_native, "_lib", None)
    monkeypatch.setattr(_ctf_native, "_reason", "no C++ compiler found (set CXX or install g++)")
    monkeypatch.setattr(ctf, "_fallback_warned", False)
    with pytest.warns(CTFWarning, match=r"the C\+\+ CTF parser is unavailable \(no C\+\+ "
                                        r"compiler found"):
        assert _values(read_ctf(path, A)) == [[1, 2], [3]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _values(read_ctf(path, A)) == [[1, 2], [3]]  # said once
    with pytest.raises(RuntimeError, match=r"the C\+\+ CTF parser is unavailable: no C\+\+"):
        CTFDeserializer(path, A, parser="native")
