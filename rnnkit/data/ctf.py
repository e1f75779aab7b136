"""The CNTK text format (CTF): a streaming reader, a writer and their errors.

Grammar (one line per time step), as CNTK 2.7's ``CNTKTextFormatReader`` reads it::

    line     = [sequence_id] (sample | comment)+
    sample   = "|" stream_name (value " ")*      dense: numbers;  sparse: index:value pairs
    comment  = "|#" ... up to the end of line or the next "|"

A sequence is a line with an id and the lines after it that repeat that id or carry none; a
new id starts the next sequence (an id may come back later: that is a new sequence, as when
files are concatenated). Before the first id of a file, each line is a sequence of its own.
A line holds at most one sample per stream, in any order, and a stream may have fewer
samples than its sequence has lines (a label on the first line only)::

    0 |x 0.1 0.2 |y 0:1   |# the label of sequence 0, on its first line only
    |x 0.3 0.4            |# no id: still sequence 0
    1 |y 2:1 |x 0.5 0.6

Streams in the file that are not declared are skipped (one warning per name); a dense sample
with fewer values than its dimension is zero-filled with a warning (``strict=True`` makes it
an error); a UTF-8 byte-order mark is skipped. Values are parsed in each stream's ``dtype``
(``StreamDef(dtype="float64")`` reads 1.42057e+44 exactly; in a float32 stream it is an error
naming the value, never a silent inf).

The file is never loaded whole: it is cut into chunks of whole sequences (about
``chunk_size_in_bytes`` each, found lazily by seeking to each cut and reading on to the next
change of id) and one chunk is parsed at a time, so files larger than memory stream through a
:class:`~rnnkit.data.sources.MinibatchSource`. A chunk is parsed by a small C++ parser
(``ctf_parser.cpp``, built on first use) when a compiler is available; any chunk it does not
accept as clean is parsed again in Python, which names file, line and column.

Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.ctf")
    >>> write_ctf(path, [{"x": np.arange(6.0).reshape(3, 2), "y": [1]}], sparse={"y": 3})
    >>> print(open(path).read(), end="")
    0 |x 0 1 |y 1:1
    0 |x 2 3
    0 |x 4 5
    >>> d = CTFDeserializer(path, StreamDefs(x=StreamDef(shape=2), y=StreamDef(shape=3,
    ...                                      is_sparse=True)))
    >>> d.get_chunk(0).lengths.tolist()
    [3]
"""

from __future__ import annotations

import bisect
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit._files import file_mode
from rnnkit.data import _ctf_native
from rnnkit.data.sources import (
    INFINITELY_REPEAT,
    Chunk,
    MinibatchSource,
    SequenceDataset,
    StreamChunk,
    StreamDef,
    StreamDefs,
)

__all__ = [
    "INFINITELY_REPEAT",
    "CTFDeserializer",
    "CTFFormatError",
    "CTFWarning",
    "MinibatchSource",
    "StreamDef",
    "StreamDefs",
    "read_ctf",
    "write_ctf",
]

#: Default bytes per chunk: small enough that a randomisation window of 4 chunks stays in
#: a few tens of MB, large enough that per-chunk overhead does not show.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
#: the separators of the format: the ASCII blanks bytes.split() splits on ('\n' ends a line)
_BLANKS = b" \t\r\v\f"
_TOKEN = re.compile(rb"[^ \t\r\v\f]+")
#: numbers as CNTK writes them, plus the inf/nan spellings write_ctf may produce; the C++
#: parser accepts exactly these (parse_number in ctf_parser.cpp)
_NUM = rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))"
_NUMBER = re.compile(_NUM + rb"\Z")
#: a whole dense / sparse value list that is well formed (checked in one call; the values
#: are then converted without per-token checks)
_DENSE_VALUES = re.compile(rb"(?:[ \t\r\v\f]+" + _NUM + rb")*[ \t\r\v\f]*")
_SPARSE_VALUES = re.compile(rb"(?:[ \t\r\v\f]+\d+:" + _NUM + rb")*[ \t\r\v\f]*")
_NAME = re.compile(rb"[^ \t\r\v\f|]+")
_DIGITS = re.compile(rb"\d+\Z")
_NEGATIVE = re.compile(rb"-\d+\Z")
_STREAM_NAME = re.compile(rb"\|([^ \t\r\v\f|#][^ \t\r\v\f|]*)")
#: the smallest double that rounds to inf as float32 (FLT_MAX plus half an ulp)
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
#: bytes scanned per step when looking for the first sequence id of a file
_SCAN_BLOCK = 4 * 1024 * 1024


class CTFFormatError(ValueError):
    """A malformed CTF file; names the file, the 1-based line and column."""

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        self.path, self.line, self.column = path, line, column
        super().__init__(f"{path}, line {line}, column {column}: {message}")


class CTFWarning(UserWarning):
    """Input the reader accepts but you may not have meant (the message names file and line)."""


class _LineError(Exception):
    """A malformed line, with the 0-based byte offset in the line where the problem starts."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.message, self.at = message, at


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


class _Sequence:
    """The samples of the sequence being read (Python parser), kept until it is complete so
    that a bad sequence can be dropped whole."""

    __slots__ = ("first_line", "bad", "samples")

    def __init__(self, first_line: int, names: Iterable[str]) -> None:
        self.first_line = first_line
        self.bad = False
        self.samples: dict[str, list] = {name: [] for name in names}


class CTFDeserializer:
    """Reads a CTF file in chunks of whole sequences, as ``cntk.io.CTFDeserializer``.

    Args:
        path: the ``.ctf`` file.
        streams: :class:`StreamDefs` naming each stream, its file field, shape, sparsity and
            dtype (``"float32"`` or ``"float64"``).
        chunk_size_in_bytes: about how many bytes of text one chunk spans.
        max_errors: how many bad sequences to skip (each with a :class:`CTFWarning` naming
            file, line and problem) before a :class:`CTFFormatError`; CNTK's ``maxErrors``.
            The default 0 raises at the first malformed line.
        strict: a dense sample with fewer values than its dimension is an error instead of
            being zero-filled with a warning.
        parser: ``"auto"`` (the C++ parser when it builds, else Python), ``"native"`` (the C++
            parser or an error) or ``"python"``. All give the same results.

    The chunk index is built lazily (on first use of ``num_chunks``/``get_chunk``) by seeking,
    so opening even a huge file is instant. Every error names the file, line and column.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "t.ctf")
        >>> _ = open(path, "w").write("0 |x 1 2 |y 0:1\\n0 |x 3 4\\n1 |x 5 6 |y 1:1\\n")
        >>> d = CTFDeserializer(path, StreamDefs(x=StreamDef(shape=2),
        ...                                      y=StreamDef(shape=2, is_sparse=True)))
        >>> chunk = d.get_chunk(0)
        >>> chunk.lengths.tolist(), chunk.streams["y"].sample_offsets.tolist()
        ([2, 1], [0, 1, 2])
    """

    def __init__(self, path: str | os.PathLike, streams: StreamDefs | Mapping[str, StreamDef],
                 chunk_size_in_bytes: int = DEFAULT_CHUNK_SIZE, max_errors: int = 0,
                 strict: bool = False, parser: str = "auto") -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"CTF file not found: {self.path}")
        if not isinstance(streams, StreamDefs):
            streams = StreamDefs(**dict(streams))
        self.streams = streams
        if isinstance(chunk_size_in_bytes, bool) or not isinstance(chunk_size_in_bytes, int) \
                or chunk_size_in_bytes < 1:
            raise ValueError(f"chunk_size_in_bytes must be a positive int, "
                             f"got {chunk_size_in_bytes!r}")
        if isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0:
            raise ValueError(f"max_errors must be an int >= 0, got {max_errors!r}")
        if parser not in ("auto", "native", "python"):
            raise ValueError(f"parser must be 'auto', 'native' or 'python', got {parser!r}")
        if parser == "native" and _ctf_native.load() is None:
            raise RuntimeError("the C++ CTF parser is unavailable: "
                               f"{_ctf_native.unavailable_reason()}")
        self.chunk_size = chunk_size_in_bytes
        self.max_errors = max_errors
        self.strict = bool(strict)
        self.parser = parser
        self._fields = {d.field.encode("utf-8"): name for name, d in streams.items()}
        self._specs = [(d.field.encode("utf-8"), d.dim, d.is_sparse, d.np_dtype)
                       for d in streams.values()]
        self._bounds: list[int] | None = None  # byte offsets: chunk c is [b[c], b[c+1])
        # line numbers of known byte offsets (sorted), to count newlines from the nearest one
        self._line_offsets: list[int] = [0]
        self._line_numbers: list[int] = [1]
        self._first_id: int | None = None  # offset of the first line with a sequence id
        self._id_scanned = 0  # the search for it has covered [0, _id_scanned)
        self._bad: dict[int, int] = {}  # chunk -> bad sequences it holds (once parsed)
        self._warned_streams: set[bytes] = set()

    # -- chunk index --------------------------------------------------------------------------
    def _index(self) -> list[int]:
        if self._bounds is None:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                start = len(_BOM) if f.read(len(_BOM)) == _BOM else 0
                bounds = [start]
                self._id_scanned = max(self._id_scanned, start)
                while bounds[-1] < size:
                    target = bounds[-1] + self.chunk_size
                    cut = size if target >= size else self._boundary_after(f, target, size)
                    bounds.append(cut)
            self._bounds = bounds
        return self._bounds

    def _boundary_after(self, f: Any, target: int, size: int) -> int:
        """First line start at or after ``target`` where a new sequence certainly begins."""
        f.seek(target - 1)
        if f.read(1) != b"\n":
            f.readline()  # finish the line that straddles the target
        if not self._id_before(f, f.tell()):
            # no id so far: each line is a sequence; cut at the next line with a sample
            while True:
                pos = f.tell()
                line = f.readline()
                if not line:
                    return size
                if b"|" in line:
                    return pos
        # after the first id, lines without one continue the current sequence: cut where an
        # id differs from the id before it (the first id met may continue an earlier sequence)
        prev = None
        while True:
            pos = f.tell()
            line = f.readline()
            if not line:
                return size
            bar = line.find(b"|")
            if bar < 0:
                continue  # blank (or malformed) lines belong to the sequence around them
            sid = line[:bar].strip()
            if not sid:
                continue
            if prev is not None and sid != prev:
                return pos
            prev = sid

    def _id_before(self, f: Any, pos: int) -> bool:
        """Whether a line with a sequence id starts before byte ``pos`` (scanned lazily, once)."""
        here = f.tell()
        try:
            while self._first_id is None and self._id_scanned < pos:
                f.seek(self._id_scanned)
                block = f.read(_SCAN_BLOCK)
                if not block:
                    self._id_scanned = pos
                    break
                block += f.readline()  # whole lines only
                codes = np.frombuffer(block, dtype=np.uint8)
                starts = np.concatenate([[0], np.flatnonzero(codes == 10) + 1])
                starts = starts[starts < len(block)]
                first = codes[starts]
                # lines that start with '|' or end at once have no id; check the others
                for s in starts[(first != ord("|")) & (first != 10)].tolist():
                    end = block.find(b"\n", s)
                    line = block[s:] if end < 0 else block[s:end]
                    bar = line.find(b"|")
                    if bar >= 0 and line[:bar].strip():
                        self._first_id = self._id_scanned + s
                        break
                self._id_scanned += len(block)
        finally:
            f.seek(here)
        return self._first_id is not None and self._first_id < pos

    @property
    def num_chunks(self) -> int:
        return len(self._index()) - 1

    def _line_of(self, offset: int) -> int:
        """1-based line number of the byte at ``offset`` (counted only when a message needs it)."""
        k = bisect.bisect_right(self._line_offsets, offset) - 1
        known, line = self._line_offsets[k], self._line_numbers[k]
        with open(self.path, "rb") as f:
            f.seek(known)
            remaining = offset - known
            while remaining > 0:
                block = f.read(min(remaining, 1 << 24))
                if not block:
                    break
                line += block.count(b"\n")
                remaining -= len(block)
        if offset != known:
            self._line_offsets.insert(k + 1, offset)
            self._line_numbers.insert(k + 1, line)
        return line

    # -- parsing --------------------------------------------------------------------------------
    def get_chunk(self, index: int) -> Chunk:
        """Parse chunk ``index`` (whole sequences) from the file."""
        bounds = self._index()
        if not 0 <= index < len(bounds) - 1:
            raise IndexError(f"chunk {index} out of range for {len(bounds) - 1} chunks")
        with open(self.path, "rb") as f:
            f.seek(bounds[index])
            raw = f.read(bounds[index + 1] - bounds[index])
        lib = None if self.parser == "python" else _ctf_native.load()
        if lib is None and self.parser == "auto":
            _warn_python_fallback()
        if lib is not None:
            code, _line, result = _ctf_native.parse(lib, raw, self._specs)
            if code == _ctf_native.OK:
                self._warn_undeclared(index, raw, result["undeclared"])
                self._bad.setdefault(index, 0)
                return self._native_chunk(index, result)
        # malformed or unusual (short samples): the Python parser names file, line and column
        return self._parse_python(index, raw)

    def _native_chunk(self, index: int, result: dict) -> Chunk:
        streams = {}
        for (name, sdef), entry in zip(self.streams.items(), result["streams"], strict=True):
            if sdef.is_sparse:
                streams[name] = StreamChunk(entry["seq_offsets"], entry["values"],
                                            entry["indices"], entry["nnz_offsets"])
            else:
                streams[name] = StreamChunk(entry["seq_offsets"], entry["values"])
        return Chunk(index=index, lengths=result["lengths"], streams=streams,
                     first_lines=result["first_lines"])

    def sequence_keys(self, index: int, chunk: Chunk | None = None) -> list[str | None]:
        """The id of each sequence of chunk ``index`` (None where a sequence has none), in
        the chunk's order; a MinibatchSource over several deserializers joins them by it."""
        chunk = self.get_chunk(index) if chunk is None else chunk
        bounds = self._index()
        with open(self.path, "rb") as f:
            f.seek(bounds[index])
            lines = f.read(bounds[index + 1] - bounds[index]).split(b"\n")
        keys: list[str | None] = []
        for k in chunk.first_lines.tolist():
            bar = lines[k].find(b"|")
            sid = lines[k][:bar].strip() if bar >= 0 else b""
            keys.append(_text(sid) if sid else None)
        return keys

    def _warn_undeclared(self, index: int, raw: bytes, names: list[bytes] | None) -> None:
        """One CTFWarning per stream name in the file that StreamDefs does not declare."""
        if names is None:  # more distinct names than the C++ parser reports: find them all
            names = list(dict.fromkeys(m.group(1) for m in _STREAM_NAME.finditer(raw)))
        for name in names:
            if name in self._fields or name in self._warned_streams:
                continue
            self._warned_streams.add(name)
            at = raw.find(b"|" + name)
            line = self._line_of(self._index()[index] + max(at, 0))
            declared = ", ".join(sorted(_text(f) for f in self._fields))
            warnings.warn(f"{self.path}, line {line}: stream {_text(name)!r} is not declared "
                          f"(declared fields: {declared}); its samples are skipped",
                          CTFWarning, stacklevel=4)

    def _parse_python(self, index: int, raw: bytes) -> Chunk:
        """The reference parser: every rule of the format, with errors, warnings, max_errors."""
        first_time = index not in self._bad
        names = list(self.streams)
        chunk_values: dict[str, list] = {name: [] for name in names}
        seq_offsets: dict[str, list[int]] = {name: [0] for name in names}
        totals = dict.fromkeys(names, 0)
        lengths: list[int] = []
        first_lines: list[int] = []
        undeclared: dict[bytes, None] = {}
        short: dict[str, list[int]] = {}  # stream -> [count, first line]
        bad = 0
        kind, cur_id = 0, b""  # kind: 0 no sequence, 1 began with an id, 2 began without
        seq: _Sequence | None = None

        def close() -> None:
            if seq is None or seq.bad:
                return
            n = max(len(s) for s in seq.samples.values())
            if n == 0:
                return  # comments only: no sequence
            for name in names:
                chunk_values[name].extend(seq.samples[name])
                totals[name] += len(seq.samples[name])
                seq_offsets[name].append(totals[name])
            lengths.append(n)
            first_lines.append(seq.first_line)

        def flush_warnings() -> None:
            """The chunk's warnings so far: short dense samples, undeclared streams."""
            if first_time:
                base = self._index()[index]
                for field, (count, k) in short.items():
                    line = self._line_of(base) + k
                    dim = self.streams[self._fields[field.encode("utf-8")]].dim
                    warnings.warn(f"{self.path}, line {line}: stream {field!r} has fewer "
                                  f"values than its dimension {dim}; zero-filled ({count} "
                                  f"such sample(s) from line {line} on; strict=True makes "
                                  "this an error)", CTFWarning, stacklevel=4)
            short.clear()
            self._warn_undeclared(index, raw, list(undeclared))

        def fail(k: int, at: int, message: str) -> None:
            nonlocal bad
            bad += 1
            before = sum(v for c, v in self._bad.items() if c != index)
            line = self._line_of(self._index()[index]) + k
            if before + bad > self.max_errors:
                if self.max_errors:
                    message += (f" ({before + bad} bad sequences, more than "
                                f"max_errors={self.max_errors})")
                flush_warnings()  # what was read before the error is reported too
                raise CTFFormatError(self.path, line, at + 1, message)
            if first_time:
                warnings.warn(f"{self.path}, line {line}, column {at + 1}: {message}; skipping "
                              f"the sequence ({before + bad} of at most max_errors="
                              f"{self.max_errors})", CTFWarning, stacklevel=4)
            seq.bad = True

        for k, line in enumerate(raw.split(b"\n")):
            indent = len(line) - len(line.lstrip())
            if indent == len(line):
                continue  # blank
            bar = line.find(b"|")
            if bar < 0:
                if seq is None or kind == 0:
                    close()
                    kind, seq = 2, _Sequence(k, names)
                if not seq.bad:
                    fail(k, indent, "expected '|' followed by a stream name; a line is "
                                    "[sequence_id] |stream values ...")
                continue
            sid = line[:bar].strip()
            starts = not (kind == 1 and sid == cur_id) if sid else kind != 1
            if starts:
                close()
                kind, cur_id, seq = (1 if sid else 2), sid, _Sequence(k, names)
            if seq.bad:
                continue  # the rest of a skipped sequence
            if sid and len(sid.split()) > 1:
                fail(k, indent, f"text before the first '|' must be one sequence id, got "
                                f"{_text(sid)!r}")
                continue
            try:
                self._line_samples(line, bar, k, seq, undeclared, short)
            except _LineError as e:
                fail(k, e.at, e.message)
        close()
        self._bad[index] = bad
        flush_warnings()
        streams = {}
        for name, sdef in self.streams.items():
            offsets = np.array(seq_offsets[name], dtype=np.int64)
            dtype = sdef.np_dtype
            if sdef.is_sparse:
                samples = chunk_values[name]
                counts = np.array([len(i) for i, _ in samples], dtype=np.int64)
                nnz = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                idx = np.fromiter((i for s, _ in samples for i in s), np.int64, int(nnz[-1]))
                val = np.fromiter((v for _, s in samples for v in s), np.float64, int(nnz[-1]))
                streams[name] = StreamChunk(offsets, val.astype(dtype), idx, nnz)
            else:
                rows = chunk_values[name]
                values = (np.array(rows, dtype=np.float64).astype(dtype) if rows
                          else np.zeros((0, sdef.dim), dtype))
                streams[name] = StreamChunk(offsets, values.reshape(len(rows), sdef.dim))
        return Chunk(index=index, lengths=np.array(lengths, dtype=np.int64), streams=streams,
                     first_lines=np.array(first_lines, dtype=np.int64))

    def _line_samples(self, line: bytes, bar: int, k: int, seq: _Sequence,
                      undeclared: dict[bytes, None], short: dict[str, list[int]]) -> None:
        """Add the samples of one line to ``seq``; a _LineError names what is wrong where."""
        seen: set[str] = set()
        pos = bar  # the '|' that opens the part
        end = len(line)
        while pos < end:
            nxt = line.find(b"|", pos + 1)
            stop = end if nxt < 0 else nxt
            head = pos + 1
            if head < end and line[head:head + 1] == b"#":
                pos = stop  # a comment runs to the next '|'
                continue
            if head >= end or line[head] in _BLANKS or head == stop:
                raise _LineError("'|' must be followed directly by a stream name or '#'", pos)
            name_end = _NAME.match(line, head, stop).end()
            name_raw = line[head:name_end]
            name = self._fields.get(name_raw)
            pos = stop
            if name is None:
                undeclared.setdefault(name_raw, None)
                continue
            if name in seen:
                raise _LineError(f"stream {_text(name_raw)!r} appears twice on one line", head)
            seen.add(name)
            sdef = self.streams[name]
            sample = self._fast_sample(line, name_end, stop, sdef)
            if sample is not None and (sdef.is_sparse or len(sample) == sdef.dim):
                seq.samples[name].append(sample)
                continue
            # something to report, or a short dense sample: token by token
            field = _text(name_raw)
            tokens = list(_TOKEN.finditer(line, head, stop))
            if sdef.is_sparse:
                indices, values = [], []
                for m in tokens[1:]:
                    idx, sep, val = m.group().partition(b":")
                    if not sep:
                        raise _LineError(f"sparse stream {field!r} expects index:value, got "
                                         f"{_text(m.group())!r}", m.start())
                    if _DIGITS.match(idx):
                        i = int(idx)
                        if i >= sdef.dim:
                            raise _LineError(f"sparse index {i} of stream {field!r} is out of "
                                             f"range for dimension {sdef.dim}", m.start())
                    elif _NEGATIVE.match(idx):
                        raise _LineError(f"sparse index {_text(idx)} of stream {field!r} is out "
                                         f"of range for dimension {sdef.dim}", m.start())
                    else:
                        raise _LineError(f"sparse index {_text(idx)!r} of stream {field!r} is "
                                         "not an integer", m.start())
                    indices.append(i)
                    values.append(self._number(val, field, sdef.dtype, m.start() + len(idx) + 1))
                seq.samples[name].append((indices, values))
            else:
                if len(tokens) - 1 > sdef.dim:
                    raise _LineError(f"stream {field!r} expects {sdef.dim} values, got "
                                     f"{len(tokens) - 1}", head)
                row = [self._number(m.group(), field, sdef.dtype, m.start()) for m in tokens[1:]]
                if len(row) < sdef.dim:
                    if self.strict:
                        raise _LineError(f"stream {field!r} expects {sdef.dim} values, got "
                                         f"{len(row)} (strict=True)", head)
                    entry = short.setdefault(field, [0, k])
                    entry[0] += 1
                    row.extend([0.0] * (sdef.dim - len(row)))
                seq.samples[name].append(row)

    @staticmethod
    def _fast_sample(line: bytes, start: int, stop: int, sdef: StreamDef) -> Any:
        """The values of a well-formed sample in one pass, or None (then the slow path
        finds and names the problem). Dense: a list of floats; sparse: (indices, values)."""
        if sdef.is_sparse:
            if not _SPARSE_VALUES.fullmatch(line, start, stop):
                return None
            pairs = [t.split(b":") for t in line[start:stop].split()]
            indices = [int(i) for i, _ in pairs]
            if indices and max(indices) >= sdef.dim:
                return None
            values = [float(v) for _, v in pairs]
            sample: Any = (indices, values)
        else:
            if not _DENSE_VALUES.fullmatch(line, start, stop):
                return None
            values = sample = [float(v) for v in line[start:stop].split()]
            if len(values) > sdef.dim:
                return None
        # inf, nan or a value beyond float32: let _number decide (NaN fails both tests)
        limit = _FLOAT32_OVERFLOW
        if values and not (-limit < min(values) and max(values) < limit):
            return None
        return sample

    @staticmethod
    def _number(token: bytes, name: str, dtype: str, at: int) -> float:
        if not _NUMBER.match(token):
            raise _LineError(f"non-numeric value {_text(token)!r} in stream {name!r}", at)
        value = float(token)
        if math.isinf(value) and not token.lstrip(b"+-")[:1].isalpha():
            raise _LineError(f"value {_text(token)!r} in stream {name!r} overflows float64",
                             at)
        if dtype == "float32" and abs(value) >= _FLOAT32_OVERFLOW and not math.isinf(value):
            raise _LineError(f"value {_text(token)!r} in stream {name!r} overflows float32 "
                             "(declare the stream with StreamDef(dtype='float64') to read it)",
                             at)
        return value

    # -- views ------------------------------------------------------------------------------------
    def iter_sequences(self) -> Iterable[dict[str, np.ndarray]]:
        """Every sequence in file order, as dict stream name -> ``(T_s, *D)`` array (sparse
        streams as dense one-hot rows)."""
        for c in range(self.num_chunks):
            chunk = self.get_chunk(c)
            for s in range(chunk.num_sequences):
                yield _densify(chunk.sequence(s), self.streams, chunk, s)

    def to_dataset(self, cache_chunks: int = 2) -> SequenceDataset:
        """A map-style ``torch.utils.data.Dataset`` of the sequences (see SequenceDataset)."""
        return SequenceDataset(self, cache_chunks=cache_chunks)

    def __repr__(self) -> str:
        return f"CTFDeserializer({self.path!r}, streams={list(self.streams)})"


_fallback_warned = False


def _warn_python_fallback() -> None:
    """Say once per process why the C++ parser is not used (unless it was turned off)."""
    global _fallback_warned
    reason = _ctf_native.unavailable_reason()
    if _fallback_warned or reason is None or reason.startswith("RNNKIT_CTF_NATIVE=0"):
        return
    _fallback_warned = True
    warnings.warn(f"the C++ CTF parser is unavailable ({reason}); CTF files are parsed in "
                  "Python, with the same results, about 30x slower", CTFWarning, stacklevel=4)


def _densify(seq: dict[str, Any], streams: StreamDefs, chunk: Chunk, s: int
             ) -> dict[str, np.ndarray]:
    out = {}
    for name, value in seq.items():
        sdef = streams[name]
        if sdef.is_sparse:
            rows, cols, vals = value
            dense = np.zeros((chunk.streams[name].length(s), sdef.dim), sdef.np_dtype)
            np.add.at(dense, (rows, cols), vals)
            out[name] = dense
        else:
            out[name] = np.array(value).reshape(-1, *sdef.sample_shape)
    return out


def read_ctf(path: str | os.PathLike, streams: StreamDefs | Mapping[str, StreamDef],
             **options: Any) -> list[dict[str, np.ndarray]]:
    """Read a whole (small) CTF file into a list of dicts stream name -> ``(T_s, *D)`` array.

    ``options`` go to :class:`CTFDeserializer` (``max_errors``, ``strict``, ``parser``).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "r.ctf")
        >>> write_ctf(path, [{"x": [[1.0], [2.0]]}])
        >>> read_ctf(path, StreamDefs(x=StreamDef(shape=1)))[0]["x"].ravel().tolist()
        [1.0, 2.0]
    """
    return list(CTFDeserializer(path, streams, **options).iter_sequences())


def _format_sparse(row: np.ndarray, fmt: str) -> str:
    nz = np.flatnonzero(row)
    return " ".join(f"{i}:{fmt % row[i]}" for i in nz)


def write_ctf(path: str | os.PathLike, sequences: Iterable[Mapping[str, Any]],
              sparse: Mapping[str, int] | None = None, ids: Iterable[Any] | None = None,
              float_format: str = "%.9g") -> None:
    """Write sequences as a CTF file, atomically (a temporary file, then ``os.replace``).

    Args:
        path: the file to write.
        sequences: each a mapping stream name -> samples. Dense samples are an array
            ``(T_s, dim)`` (or ``(T_s,)`` for dim 1, or ``(T_s, *shape)``, flattened).
            A sparse stream (named in ``sparse``) takes either a 1-D sequence of int class
            indices (one-hot, written ``i:1``) or a dense ``(T_s, dim)`` array whose non-zeros
            are written as ``index:value``.
        sparse: sparse stream name -> dimension (indices are checked against it).
        ids: a sequence id per sequence; default ``0, 1, 2, ...``.
        float_format: ``%`` format for values; ``%.9g`` round-trips float32 exactly, use
            ``%.17g`` for float64 streams.

    Example:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "w.ctf")
        >>> write_ctf(path, [{"x": np.zeros((2, 2)), "y": [3]}], sparse={"y": 5})
        >>> open(path).read().splitlines()
        ['0 |x 0 0 |y 3:1', '0 |x 0 0']
    """
    path = os.fspath(path)
    sparse = dict(sparse or {})
    id_iter = iter(ids) if ids is not None else None
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ctf", dir=directory)
    try:
        os.chmod(tmp, file_mode(Path(path)))  # what open() would give it, not mkstemp's 0o600
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for n, seq in enumerate(sequences):
                if not isinstance(seq, Mapping):
                    raise TypeError(f"sequence {n} must be a mapping stream name -> samples, "
                                    f"got {type(seq).__name__}")
                if id_iter is not None:
                    try:
                        sid = str(next(id_iter))
                    except StopIteration:
                        raise ValueError(f"ids ran out at sequence {n}") from None
                    if not sid or any(c.isspace() or c == "|" for c in sid):
                        raise ValueError(f"sequence id {sid!r} must be non-empty, without "
                                         "spaces or '|'")
                else:
                    sid = str(n)
                columns = []
                for name, samples in seq.items():
                    if not name or any(c.isspace() or c in "|#" for c in name):
                        raise ValueError(f"stream name {name!r} must be non-empty, without "
                                         "spaces, '|' or '#'")
                    columns.append((name, _format_stream(name, samples, sparse.get(name),
                                                         float_format, n)))
                steps = max((len(c) for _, c in columns), default=0)
                for t in range(steps):
                    fields = [f"|{name} {col[t]}" if col[t] else f"|{name}"
                              for name, col in columns if t < len(col)]
                    out.write(f"{sid} {' '.join(fields)}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _format_stream(name: str, samples: Any, sparse_dim: int | None, fmt: str, n: int
                   ) -> list[str]:
    if sparse_dim is None:
        a = np.asarray(samples, dtype=np.float64)
        if a.ndim == 0:
            raise ValueError(f"sequence {n}, stream {name!r}: samples need a time axis, "
                             f"got a scalar")
        if len(a) == 0:
            return []
        a = a.reshape(len(a), -1)  # (T_s, dim)
        return [" ".join(fmt % v for v in row) for row in a]
    a = np.asarray(samples)
    if a.ndim == 1:
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"sequence {n}, sparse stream {name!r}: a 1-D sample list must hold "
                            f"int class indices, got dtype {a.dtype}")
        if len(a) and (a.min() < 0 or a.max() >= sparse_dim):
            raise ValueError(f"sequence {n}, sparse stream {name!r}: index out of range for "
                             f"dimension {sparse_dim}")
        return [f"{int(i)}:1" for i in a]
    if len(a) == 0:
        return []
    a = a.reshape(len(a), -1).astype(np.float64)
    if a.shape[1] != sparse_dim:
        raise ValueError(f"sequence {n}, sparse stream {name!r}: rows have {a.shape[1]} columns, "
                         f"the stream's dimension is {sparse_dim}")
    return [_format_sparse(row, fmt) for row in a]
