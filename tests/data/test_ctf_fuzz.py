"""Fuzzing the CTF reader (issue 9, item 2.12): arbitrary bytes and mutated valid files give
data or a CTFFormatError naming file and line, never another exception; the C++ fast path and
the Python parser agree on every input, value for value and message for message."""

import re
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data import _ctf_native
from rnnkit.data.ctf import CTFDeserializer, CTFFormatError, write_ctf
from rnnkit.data.sources import StreamDef, StreamDefs

DEFS = StreamDefs(x=StreamDef(shape=3), y=StreamDef(shape=5, is_sparse=True),
                  z=StreamDef(shape=2, dtype="float64"))
NATIVE = _ctf_native.load() is not None
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
#: bytes that mean something in the format, so mutations hit the parser's branches
ALPHABET = b"|#: \t\r\n.-+eE0123456789xyzw\xef\xbb\xbf"


def _read(path, parser, chunk, max_errors, strict):
    """('ok', sequences, warnings) or ('error', message, warnings); each sequence is its
    length, the line it starts on and its samples per stream (so the result does not depend
    on where the chunks were cut)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d = CTFDeserializer(path, DEFS, chunk_size_in_bytes=chunk, max_errors=max_errors,
                            strict=strict, parser=parser)
        try:
            out = []
            for c in range(d.num_chunks):
                chunk_data = d.get_chunk(c)
                first = d._line_of(d._index()[c])
                for s in range(chunk_data.num_sequences):
                    samples = {}
                    for name, value in chunk_data.sequence(s).items():
                        if isinstance(value, tuple):
                            samples[name] = tuple(v.tobytes() for v in value)
                        else:
                            samples[name] = (value.dtype.str, value.tobytes())
                    out.append((int(chunk_data.lengths[s]),
                                first + int(chunk_data.first_lines[s]), samples))
            result = ("ok", out)
        except CTFFormatError as e:
            result = ("error", str(e))
    return (*result, sorted(str(w.message) for w in record))


def _check(path, data, chunk, max_errors, strict):
    kind, value, warned = _read(path, "python", chunk, max_errors, strict)
    lines = data.count(b"\n") + 1
    if kind == "error":
        m = re.match(re.escape(str(path)) + r", line (\d+), column (\d+): ", value)
        assert m, value
        assert 1 <= int(m.group(1)) <= lines
    for message in warned:
        assert message.startswith(f"{path}, line "), message
    if NATIVE:
        assert _read(path, "native", chunk, max_errors, strict) == (kind, value, warned)
    # chunk cuts never split a sequence: one chunk for the whole file reads the same (the
    # warnings may differ: short samples are summed up per chunk)
    assert _read(path, "python", 1 << 30, max_errors, strict)[:2] == (kind, value)


@FUZZ
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64),
       max_errors=st.integers(0, 3), strict=st.booleans())
def test_arbitrary_bytes(tmp_path, data, chunk, max_errors, strict):
    path = tmp_path / "fuzz.ctf"
    path.write_bytes(data)
    _check(path, data, chunk, max_errors, strict)


@st.composite
def mutated_files(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sequences = []
    for _ in range(int(rng.integers(1, 6))):
        t = int(rng.integers(1, 4))
        sequences.append({"x": rng.standard_normal((t, 3)), "y": rng.integers(0, 5, t),
                          "z": rng.standard_normal((int(rng.integers(0, t + 1)), 2)) * 1e40})
    edits = draw(st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                                     st.floats(0, 1), st.sampled_from(list(ALPHABET))),
                          max_size=6))
    return sequences, edits, draw(st.booleans())


@FUZZ
@given(case=mutated_files(), chunk=st.integers(1, 200), max_errors=st.integers(0, 3),
       strict=st.booleans())
def test_mutated_valid_files(tmp_path, case, chunk, max_errors, strict):
    sequences, edits, drop_ids = case
    path = tmp_path / "mutated.ctf"
    write_ctf(path, sequences, sparse={"y": 5})
    data = bytearray(path.read_bytes())
    if drop_ids:  # the continuation lines of each sequence without their id
        lines = data.split(b"\n")
        data = bytearray(b"\n".join(line if k == 0 or line[:1] != lines[k - 1][:1]
                                    else line[line.find(b"|"):]
                                    for k, line in enumerate(lines)))
    for op, where, byte in edits:
        at = int(where * len(data))
        if op == "insert":
            data[at:at] = bytes([byte])
        elif data and at < len(data):
            data[at:at + 1] = b"" if op == "delete" else bytes([byte])
    path.write_bytes(bytes(data))
    _check(path, bytes(data), chunk, max_errors, strict)
