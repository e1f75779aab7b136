"""The CNTK text format (CTF): a streaming reader, a writer and their errors.

Grammar (one line per time step)::

    line     = [sequence_id] (sample | comment)+
    sample   = "|" stream_name (value " ")*      dense: numbers;  sparse: index:value pairs
    comment  = "|#" ... up to the end of line or the next "|"

Consecutive lines with the same id form one sequence; a line without an id is a sequence of
its own. A line holds at most one sample per stream, in any order, and a stream may have fewer
samples than its sequence has lines (a label on the first line only)::

    0 |x 0.1 0.2 |y 0:1   |# the label of sequence 0, on its first line only
    0 |x 0.3 0.4
    1 |y 2:1 |x 0.5 0.6

The file is never loaded whole: it is cut into chunks of whole sequences (about
``chunk_size_in_bytes`` each, found lazily by seeking to each cut and reading on to the next
change of id) and one chunk is parsed at a time, so files larger than memory stream through a
:class:`~rnnkit.data.sources.MinibatchSource`.

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

import os
import re
import tempfile
import warnings
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

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
    "MinibatchSource",
    "StreamDef",
    "StreamDefs",
    "read_ctf",
    "write_ctf",
]

#: Default bytes per chunk: small enough that a randomisation window of 4 chunks stays in
#: a few tens of MB, large enough that per-chunk overhead does not show.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

_TOKEN = re.compile(r"\S+")
#: dense samples converted per np.loadtxt call: bounds the text held while parsing
_PIECES_PER_BATCH = 4096


class CTFFormatError(ValueError):
    """A malformed CTF file; names the file, the 1-based line and column."""

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        self.path, self.line, self.column = path, line, column
        super().__init__(f"{path}, line {line}, column {column}: {message}")


class _LineError(Exception):
    """Raised by the fast path; carries enough to compute the column on the slow path."""

    def __init__(self, message: str, part: int | None = None, token: int = 0,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.message, self.part, self.token, self.column = message, part, token, column


class _Fallback(Exception):
    """The fast path met something it cannot convert; the slow path decides."""


class _StreamBuilder:
    """Growing flat arrays for one stream of one chunk (array('f') keeps 4 bytes a value)."""

    __slots__ = ("dim", "sparse", "values", "indices", "nnz_offsets", "offsets", "count",
                 "last_line", "name", "pieces", "converted")

    def __init__(self, name: str, sdef: StreamDef) -> None:
        self.name = name
        self.dim = sdef.dim
        self.sparse = sdef.is_sparse
        self.values = array("f")
        self.indices = array("q")
        self.nnz_offsets = array("q", [0])
        self.offsets = array("q", [0])
        self.count = 0  # samples so far in this chunk
        self.last_line = -1
        self.pieces: list[str] = []  # fast path: the value text of each pending dense sample
        self.converted: list[np.ndarray] = []

    def flush_pieces(self) -> None:
        """Fast path: convert the pending dense samples in one C-level call."""
        if self.sparse or not self.pieces:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                # float64 then float32, exactly as float() followed by array('f') does
                values = np.loadtxt(self.pieces, dtype=np.float64, ndmin=2, comments=None)
        except (ValueError, UserWarning):
            raise _Fallback from None
        if values.shape != (len(self.pieces), self.dim):
            raise _Fallback
        self.pieces = []
        self.converted.append(values.astype(np.float32))

    def build(self) -> StreamChunk:
        offsets = np.frombuffer(self.offsets, dtype=np.int64).copy()
        if self.sparse:
            return StreamChunk(offsets, np.frombuffer(self.values, np.float32).copy(),
                               np.frombuffer(self.indices, np.int64).copy(),
                               np.frombuffer(self.nnz_offsets, np.int64).copy())
        if self.converted:
            values = (self.converted[0] if len(self.converted) == 1
                      else np.concatenate(self.converted))
            return StreamChunk(offsets, values)
        values = np.frombuffer(self.values, np.float32).copy().reshape(-1, self.dim)
        return StreamChunk(offsets, values)


def _split_id(line: str) -> tuple[str | None, int]:
    """``(sequence id or None, index of the first '|')``; index -1 if the line has none."""
    bar = line.find("|")
    if bar < 0:
        return None, -1
    sid = line[:bar].strip()
    return (sid or None), bar


class CTFDeserializer:
    """Reads a CTF file in chunks of whole sequences, as ``cntk.io.CTFDeserializer``.

    Args:
        path: the ``.ctf`` file.
        streams: :class:`StreamDefs` naming each stream, its file field, shape and sparsity.
        chunk_size_in_bytes: about how many bytes of text one chunk spans.

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
                 chunk_size_in_bytes: int = DEFAULT_CHUNK_SIZE) -> None:
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
        self.chunk_size = chunk_size_in_bytes
        self._by_field = {d.field: name for name, d in streams.items()}
        self._bounds: list[int] | None = None  # byte offsets: chunk c is [b[c], b[c+1])
        self._first_line: dict[int, int] = {}
        # duplicate-id check across chunks: a summary of each parsed chunk's ids
        self._id_summary: dict[int, tuple | None] = {}

    # -- chunk index --------------------------------------------------------------------------
    def _index(self) -> list[int]:
        if self._bounds is None:
            size = os.path.getsize(self.path)
            bounds = [0]
            with open(self.path, "rb") as f:
                while bounds[-1] < size:
                    target = bounds[-1] + self.chunk_size
                    cut = size if target >= size else self._boundary_after(f, target, size)
                    bounds.append(cut)
            self._bounds = bounds
        return self._bounds

    @staticmethod
    def _boundary_after(f: Any, target: int, size: int) -> int:
        """First line start at or after ``target`` where a new sequence begins."""
        f.seek(target - 1)
        if f.read(1) != b"\n":
            f.readline()  # finish the line that straddles the target
        unknown = object()
        prev: Any = unknown
        while True:
            pos = f.tell()
            line = f.readline()
            if not line:
                return size
            if not line.strip():
                continue  # blank lines belong to no sequence
            bar = line.find(b"|")
            sid = line[:bar].strip() if bar >= 0 else b""
            if not sid or (prev is not unknown and sid != prev):
                return pos
            prev = sid

    @property
    def num_chunks(self) -> int:
        return len(self._index()) - 1

    def _line_of_offset(self, c: int) -> int:
        """1-based line number of chunk ``c``'s first line (counted only when an error needs it)."""
        if c not in self._first_line:
            start = self._index()[c]
            newlines = 0
            with open(self.path, "rb") as f:
                remaining = start
                while remaining > 0:
                    block = f.read(min(remaining, 1 << 24))
                    if not block:
                        break
                    newlines += block.count(b"\n")
                    remaining -= len(block)
            self._first_line[c] = newlines + 1
        return self._first_line[c]

    # -- parsing --------------------------------------------------------------------------------
    def get_chunk(self, index: int) -> Chunk:
        """Parse chunk ``index`` (whole sequences) from the file."""
        bounds = self._index()
        if not 0 <= index < len(bounds) - 1:
            raise IndexError(f"chunk {index} out of range for {len(bounds) - 1} chunks")
        with open(self.path, "rb") as f:
            f.seek(bounds[index])
            raw = f.read(bounds[index + 1] - bounds[index])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start)
            col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            raise CTFFormatError(self.path, self._line_of_offset(index) + line, col,
                                 "the file is not valid UTF-8 text") from None
        del raw
        try:
            return self._parse(index, text, fast=True)
        except _Fallback:
            # a dense value the batched converter rejected: parse again value by value, which
            # either names the exact line and column or accepts what float() accepts
            return self._parse(index, text, fast=False)

    def _parse(self, index: int, text: str, fast: bool) -> Chunk:
        builders = {name: _StreamBuilder(name, d) for name, d in self.streams.items()}
        by_field = {d.field: builders[name] for name, d in self.streams.items()}
        lengths = array("q")
        first_lines = array("q")
        ids: list[str] = []
        id_lines: list[int] = []
        seen: dict[str, int] = {}  # id -> line of the sequence's first line, this chunk
        cur_id: str | None = None
        in_sequence = False
        seq_start_counts = {name: 0 for name in builders}
        seq_first_line = 0

        def close_sequence() -> None:
            n = 0
            for name, b in builders.items():
                n = max(n, b.count - seq_start_counts[name])
            if n == 0:
                return  # a line of comments only: no sequence
            for name, b in builders.items():
                b.offsets.append(b.count)
                seq_start_counts[name] = b.count
            lengths.append(n)
            first_lines.append(seq_first_line)

        # walk the lines with find() rather than split(): no list of every line in memory;
        # only '\n' ends a line (not splitlines()' other breaks), as in the chunk index
        pos, size, k = 0, len(text), -1
        while pos < size:
            end = text.find("\n", pos)
            if end < 0:
                end = size
            line = text[pos:end]
            pos = end + 1
            k += 1
            if not line or line.isspace():
                continue
            sid, bar = _split_id(line)
            if bar < 0:
                self._fail(index, k, line, _LineError(
                    "expected '|' followed by a stream name; a line is "
                    "[sequence_id] |stream values ...", column=len(line) - len(line.lstrip()) + 1))
            if sid is None or sid != cur_id or not in_sequence:
                if in_sequence:
                    close_sequence()
                if sid is not None:
                    if any(ch.isspace() for ch in sid):
                        self._fail(index, k, line, _LineError(
                            f"text before the first '|' must be one sequence id, got {sid!r}",
                            column=len(line) - len(line.lstrip()) + 1))
                    if sid in seen:
                        self._fail(index, k, line, _LineError(
                            f"sequence id {sid!r} repeats the id of the sequence starting at "
                            f"line {self._line_of_offset(index) + seen[sid]}; the lines of one "
                            "sequence must be adjacent",
                            column=len(line) - len(line.lstrip()) + 1))
                    seen[sid] = k
                    ids.append(sid)
                    id_lines.append(k)
                cur_id = sid
                in_sequence = True
                seq_first_line = k
            try:
                self._parse_samples(line[bar + 1:], by_field, k, fast)
            except _LineError as e:
                self._fail(index, k, line, e, bar)
        if in_sequence:
            close_sequence()
        if fast:
            for b in builders.values():
                b.flush_pieces()
        self._check_ids_across_chunks(index, ids, id_lines)
        return Chunk(
            index=index,
            lengths=np.frombuffer(lengths, dtype=np.int64).copy(),
            streams={name: b.build() for name, b in builders.items()},
            first_lines=np.frombuffer(first_lines, dtype=np.int64).copy(),
        )

    def _parse_samples(self, rest: str, by_field: dict[str, _StreamBuilder], k: int,
                       fast: bool) -> None:
        for p, part in enumerate(rest.split("|")):
            if part[:1] == "#":
                continue  # a comment runs to the next '|'
            head = part.split(None, 1)  # [stream name, values text]
            if not head:
                raise _LineError("'|' must be followed by a stream name or '#'", part=p, token=-1)
            name = head[0]
            b = by_field.get(name)
            if b is None:
                raise _LineError(f"unknown stream {name!r}; declared streams: "
                                 f"{', '.join(sorted(by_field))}", part=p)
            if b.last_line == k:
                raise _LineError(f"stream {name!r} appears twice on one line", part=p)
            b.last_line = k
            b.count += 1
            if not b.sparse and fast:
                # converted in one batch per chunk (np.loadtxt checks the count per sample)
                b.pieces.append(head[1] if len(head) > 1 else "")
                if len(b.pieces) >= _PIECES_PER_BATCH:
                    b.flush_pieces()
                continue
            toks = part.split()
            if b.sparse:
                for t in range(1, len(toks)):
                    idx, sep, val = toks[t].partition(":")
                    if not sep:
                        raise _LineError(f"sparse stream {name!r} expects index:value, got "
                                         f"{toks[t]!r}", part=p, token=t)
                    try:
                        i = int(idx)
                    except ValueError:
                        raise _LineError(f"sparse index {idx!r} of stream {name!r} is not an "
                                         "integer", part=p, token=t) from None
                    if not 0 <= i < b.dim:
                        raise _LineError(f"sparse index {i} of stream {name!r} is out of "
                                         f"range for dimension {b.dim}", part=p, token=t)
                    try:
                        v = float(val)
                    except ValueError:
                        raise _LineError(f"non-numeric value {val!r} in stream {name!r}",
                                         part=p, token=t) from None
                    b.indices.append(i)
                    b.values.append(v)
                b.nnz_offsets.append(len(b.indices))
            else:
                if len(toks) - 1 != b.dim:
                    raise _LineError(f"stream {name!r} expects {b.dim} values, got "
                                     f"{len(toks) - 1}", part=p)
                try:
                    b.values.extend([float(t) for t in toks[1:]])
                except ValueError:
                    bad = next(t for t in range(1, len(toks)) if not _is_float(toks[t]))
                    raise _LineError(f"non-numeric value {toks[bad]!r} in stream {name!r}",
                                     part=p, token=bad) from None

    def _fail(self, index: int, k: int, line: str, err: _LineError, bar: int = 0) -> None:
        """Turn a fast-path error into a CTFFormatError with file, line and column."""
        col = err.column
        if col is None:
            parts = line[bar + 1:].split("|")
            # 1-based column of the first character after the '|' that opens this part
            col = bar + 2 + sum(len(part) + 1 for part in parts[: err.part])
            tokens = list(_TOKEN.finditer(parts[err.part]))
            if err.token < 0 or err.token >= len(tokens):
                col -= 1  # point at the '|' itself
            else:
                col += tokens[err.token].start()
        raise CTFFormatError(self.path, self._line_of_offset(index) + k, col, err.message)

    def _check_ids_across_chunks(self, index: int, ids: list[str], lines: list[int]) -> None:
        """A sequence id in two chunks is a repeat that is not adjacent (cuts fall between ids).

        Each parsed chunk leaves a summary: for increasing integer ids (the usual layout) just
        their range, O(1) per chunk; otherwise the sorted hashes of its ids. A possible match
        is confirmed by re-reading the other chunk's ids, which also gives the error its line.
        """
        if index in self._id_summary:
            return
        if not ids:
            self._id_summary[index] = None
            return
        nums = _canonical_ints(ids)  # int per id, or None where an id is not a plain integer
        hashes = None
        for other, summary in self._id_summary.items():
            if summary is None:
                continue
            if summary[0] == "range":
                lo, hi = summary[1], summary[2]
                suspect = any(n is not None and lo <= n <= hi for n in nums)
            else:
                if hashes is None:
                    hashes = np.fromiter((hash(x) for x in ids), dtype=np.int64, count=len(ids))
                suspect = bool(np.isin(hashes, summary[1]).any())
            if suspect:
                self._confirm_repeat(index, ids, lines, other)
        ints = None if any(n is None for n in nums) else np.array(nums, dtype=np.int64)
        if ints is not None and bool(np.all(np.diff(ints) > 0)):
            self._id_summary[index] = ("range", int(ints[0]), int(ints[-1]))
        else:
            if hashes is None:
                hashes = np.fromiter((hash(x) for x in ids), dtype=np.int64, count=len(ids))
            self._id_summary[index] = ("hash", np.sort(hashes))

    def _confirm_repeat(self, index: int, ids: list[str], lines: list[int], other: int) -> None:
        other_ids = self._chunk_ids(other)
        for sid, line in zip(ids, lines, strict=True):
            if sid in other_ids:
                first, second = (other, other_ids[sid]), (index, line)
                if other > index:
                    first, second = second, first
                raise CTFFormatError(
                    self.path, self._line_of_offset(second[0]) + second[1], 1,
                    f"sequence id {sid!r} repeats the id of the sequence starting at line "
                    f"{self._line_of_offset(first[0]) + first[1]}; the lines of one sequence "
                    "must be adjacent")

    def _chunk_ids(self, c: int) -> dict[str, int]:
        """Re-read chunk ``c``: sequence id -> 0-based line (in the chunk) where it starts."""
        bounds = self._index()
        with open(self.path, "rb") as f:
            f.seek(bounds[c])
            text = f.read(bounds[c + 1] - bounds[c]).decode("utf-8", errors="replace")
        out: dict[str, int] = {}
        prev = None
        for k, line in enumerate(text.split("\n")):
            if not line or line.isspace():
                continue
            sid, bar = _split_id(line)
            if bar >= 0 and sid is not None and sid != prev:
                out.setdefault(sid, k)
            prev = sid if bar >= 0 else None
        return out

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


def _canonical_ints(ids: list[str]) -> list[int | None]:
    """Each id as an int if it is written as one canonically ("12", not "012" or "+12")."""
    out: list[int | None] = []
    for x in ids:
        try:
            n = int(x)
        except ValueError:
            out.append(None)
            continue
        out.append(n if str(n) == x and -(2**63) <= n < 2**63 else None)
    return out


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _densify(seq: dict[str, Any], streams: StreamDefs, chunk: Chunk, s: int
             ) -> dict[str, np.ndarray]:
    out = {}
    for name, value in seq.items():
        sdef = streams[name]
        if sdef.is_sparse:
            rows, cols, vals = value
            dense = np.zeros((chunk.streams[name].length(s), sdef.dim), np.float32)
            np.add.at(dense, (rows, cols), vals)
            out[name] = dense
        else:
            out[name] = np.array(value).reshape(-1, *sdef.sample_shape)
    return out


def read_ctf(path: str | os.PathLike, streams: StreamDefs | Mapping[str, StreamDef]
             ) -> list[dict[str, np.ndarray]]:
    """Read a whole (small) CTF file into a list of dicts stream name -> ``(T_s, *D)`` array.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "r.ctf")
        >>> write_ctf(path, [{"x": [[1.0], [2.0]]}])
        >>> read_ctf(path, StreamDefs(x=StreamDef(shape=1)))[0]["x"].ravel().tolist()
        [1.0, 2.0]
    """
    return list(CTFDeserializer(path, streams).iter_sequences())


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
        float_format: ``%`` format for values; ``%.9g`` round-trips float32 exactly.

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
