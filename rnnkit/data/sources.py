"""Minibatch sources with CNTK semantics: sweeps, chunked randomisation, BPTT windows.

A *deserializer* (for example :class:`rnnkit.data.ctf.CTFDeserializer`) splits its data into
chunks of whole sequences and parses one chunk at a time; a :class:`MinibatchSource` walks
those chunks, randomises within a window of chunks (CNTK's *randomization window*) and packs
whole sequences into minibatches whose size counts **samples** (time steps), as CNTK does::

    source = MinibatchSource(CTFDeserializer("train.ctf", StreamDefs(
        features=StreamDef(field="x", shape=1),
        target=StreamDef(field="y", shape=1))), max_sweeps=1)
    while mb := source.next_minibatch(140):
        x = mb[source.streams.features]        # MinibatchData
        x.data                                  # (B, T, 1) padded tensor
        x.lengths                               # (B,) int64 valid steps per sequence

Symbols: ``B`` sequences in a minibatch, ``T`` the longest of them (per stream), ``D`` the
stream's sample shape (an int ``dim`` or a tuple).

Only one chunk window is held in memory at a time, so files larger than memory stream through.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

#: Repeat without end (``max_sweeps`` / ``max_samples``), as ``cntk.io.INFINITELY_REPEAT``.
INFINITELY_REPEAT: int = sys.maxsize

#: Default number of chunks one randomisation window spans.
DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS = 4


# ----------------------------------------------------------------------------- stream schema
@dataclass(frozen=True)
class StreamDef:
    """One input stream of a deserializer, as ``cntk.io.StreamDef``.

    Args:
        field: the stream's name in the file (``|x 1 2`` has field ``x``); ``None`` means the
            name the stream gets in :class:`StreamDefs`.
        shape: sample dimension (int) or sample shape (tuple) of a dense stream; for a sparse
            stream the vocabulary size (int).
        is_sparse: samples are written as ``index:value`` pairs and come out as one-hot/sparse
            rows of ``shape`` columns.
        dtype: ``"float32"`` (default) or ``"float64"``: the precision values are parsed into
            and delivered in (CNTK's ``precision="double"``).
        defines_mb_size: minibatch sizes, ``max_samples`` and sample counts count this
            stream's samples only (e.g. one label per sequence), as in CNTK. At most one stream
            of a source may set it.

    Example:
        >>> StreamDef(field="x", shape=3).dim
        3
    """

    field: str | None = None
    shape: int | tuple[int, ...] = 1
    is_sparse: bool = False
    dtype: str = "float32"
    defines_mb_size: bool = False

    def __post_init__(self) -> None:
        shape = self.shape
        if isinstance(shape, (list, tuple)):
            shape = tuple(shape)
            if not shape or any(
                isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                for s in shape
            ):
                raise ValueError(f"StreamDef shape must hold positive ints, got {self.shape!r}")
            shape = tuple(int(s) for s in shape)
        elif isinstance(shape, bool) or not isinstance(shape, (int, np.integer)) or shape < 1:
            raise ValueError(f"StreamDef shape must be a positive int, got {self.shape!r}")
        else:
            shape = int(shape)
        if self.is_sparse and isinstance(shape, tuple) and len(shape) != 1:
            raise ValueError(f"a sparse StreamDef needs an int shape (its dimension), got {shape}")
        if isinstance(shape, tuple) and len(shape) == 1:
            shape = shape[0]
        object.__setattr__(self, "shape", shape)
        dtype = _STREAM_DTYPES.get(str(self.dtype).replace("torch.", "").replace("numpy.", ""))
        if dtype is None:
            raise ValueError(f"StreamDef dtype must be 'float32' or 'float64', got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        if self.field is not None and (not self.field or any(c in self.field for c in "|# \t")):
            raise ValueError(f"StreamDef field must be a name without '|', '#' or spaces, "
                             f"got {self.field!r}")

    @property
    def dim(self) -> int:
        """Number of values in one sample (the product of ``shape``)."""
        return self.shape if isinstance(self.shape, int) else math.prod(self.shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.shape,) if isinstance(self.shape, int) else tuple(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


#: accepted spellings of a stream's dtype (str(np.float64) is "<class 'numpy.float64'>")
_STREAM_DTYPES = {"float32": "float32", "float64": "float64", "float": "float32",
                  "double": "float64", "<class 'float32'>": "float32",
                  "<class 'float64'>": "float64", "<class 'float'>": "float64"}


class StreamDefs(dict):
    """Named stream definitions, as ``cntk.io.StreamDefs(features=StreamDef(...), ...)``.

    A ``StreamDef`` whose ``field`` is ``None`` reads the file field of the same name.

    Example:
        >>> defs = StreamDefs(features=StreamDef(field="x", shape=2), labels=StreamDef(shape=3))
        >>> defs["labels"].field
        'labels'
    """

    def __init__(self, **streams: StreamDef) -> None:
        if not streams:
            raise ValueError("StreamDefs needs at least one stream, e.g. "
                             "StreamDefs(features=StreamDef(field='x', shape=1))")
        resolved = {}
        fields: dict[str, str] = {}
        for name, stream in streams.items():
            if not isinstance(stream, StreamDef):
                raise TypeError(f"stream {name!r} must be a StreamDef, got {type(stream).__name__}")
            if stream.field is None:
                stream = StreamDef(field=name, shape=stream.shape, is_sparse=stream.is_sparse,
                                   dtype=stream.dtype,
                                   defines_mb_size=stream.defines_mb_size)
            if stream.field in fields:
                raise ValueError(f"streams {fields[stream.field]!r} and {name!r} both read "
                                 f"field {stream.field!r}")
            fields[stream.field] = name
            resolved[name] = stream
        super().__init__(resolved)

    def __getattr__(self, name: str) -> StreamDef:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class StreamInformation:
    """What a :class:`MinibatchSource` delivers for one stream (``source.streams.<name>``)."""

    name: str
    field: str
    shape: int | tuple[int, ...]
    is_sparse: bool
    dtype: torch.dtype = torch.float32
    defines_mb_size: bool = False

    @property
    def dim(self) -> int:
        return self.shape if isinstance(self.shape, int) else math.prod(self.shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.shape,) if isinstance(self.shape, int) else tuple(self.shape)

    @property
    def m_name(self) -> str:
        """CNTK's spelling of ``name``."""
        return self.name

    @property
    def storage_format(self) -> str:
        """``"sparse"`` or ``"dense"``, as CNTK's ``StreamInformation.storage_format``."""
        return "sparse" if self.is_sparse else "dense"


class StreamInfos:
    """Attribute and item access to a source's streams: ``streams.features``, ``streams['x']``."""

    def __init__(self, infos: Mapping[str, StreamInformation]) -> None:
        self._infos = dict(infos)

    def __getattr__(self, name: str) -> StreamInformation:
        infos = self.__dict__.get("_infos", {})
        if name in infos:
            return infos[name]
        raise AttributeError(f"no stream named {name!r}; streams: {', '.join(infos)}")

    def __getitem__(self, name: str) -> StreamInformation:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"no stream named {name!r}; streams: {', '.join(self._infos)}") from None

    def __iter__(self) -> Iterator[StreamInformation]:
        return iter(self._infos.values())

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __repr__(self) -> str:
        return f"StreamInfos({', '.join(self._infos)})"


# ----------------------------------------------------------------------------- parsed chunks
@dataclass
class StreamChunk:
    """The samples of one stream for all sequences of a chunk, in flat arrays.

    Sequence ``s`` owns sample rows ``sample_offsets[s]:sample_offsets[s + 1]``. Dense streams
    keep ``values`` as ``(N, dim)``; sparse streams keep CSR arrays: sample ``n`` owns entries
    ``nnz_offsets[n]:nnz_offsets[n + 1]`` of ``indices``/``values``.
    """

    sample_offsets: np.ndarray  # (S + 1,) int64
    values: np.ndarray  # dense (N, dim); sparse (nnz,); the stream's dtype (float32/float64)
    indices: np.ndarray | None = None  # sparse (nnz,) int64
    nnz_offsets: np.ndarray | None = None  # sparse (N + 1,) int64

    def length(self, s: int) -> int:
        return int(self.sample_offsets[s + 1] - self.sample_offsets[s])


@dataclass
class Chunk:
    """Whole sequences parsed from one contiguous piece of a data source."""

    index: int
    lengths: np.ndarray  # (S,) int64 time steps of each sequence (longest stream)
    streams: dict[str, StreamChunk]
    # (S,) 0-based line of each sequence's first line, counted from the chunk's first line
    first_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # (S,) sequence id of each sequence (None where there is none); a MinibatchSource over
    # several deserializers joins their sequences by it (or by deserializer.sequence_keys())
    keys: list[str | None] | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.shape[0])

    def sequence(self, s: int) -> dict[str, np.ndarray | tuple[np.ndarray, ...]]:
        """Stream name -> ``(T_s, dim)`` dense array, or ``(rows, cols, values)`` if sparse."""
        out: dict[str, Any] = {}
        for name, st in self.streams.items():
            a, b = int(st.sample_offsets[s]), int(st.sample_offsets[s + 1])
            if st.indices is None:
                out[name] = st.values[a:b]
            else:
                lo, hi = int(st.nnz_offsets[a]), int(st.nnz_offsets[b])
                rows = np.repeat(np.arange(b - a), np.diff(st.nnz_offsets[a:b + 1]))
                out[name] = (rows, st.indices[lo:hi], st.values[lo:hi])
        return out


class Deserializer(Protocol):
    """What a :class:`MinibatchSource` needs from a data format."""

    streams: StreamDefs

    @property
    def num_chunks(self) -> int: ...

    def get_chunk(self, index: int) -> Chunk: ...


# ----------------------------------------------------------------------------- minibatch data
class MinibatchData:
    """One stream of one minibatch: padded tensors, lengths and mask, as ``cntk.io.MinibatchData``.

    Attributes:
        data: ``(B, T, *D)`` float tensor, zero past each sequence's length (sparse streams:
            dense one-hot/weighted rows, built on first access). ``asarray()`` is the same
            as a NumPy array, ``as_sequences()`` the unpadded rows.
        shape: ``(B, T, *D)``, the whole value's shape, as CNTK's ``MinibatchData.shape``
            (known without densifying a sparse stream); ``sample_shape`` is ``D``.
        lengths: ``(B,)`` int64, valid steps of each sequence in this stream.
        mask: ``(B, T)`` bool, True at valid steps.
        num_samples: valid steps summed over the minibatch (``lengths.sum()``).
        num_sequences: ``B``.
        end_of_sweep: this minibatch holds the last data of a sweep.
        is_sparse: the stream was declared sparse.
        sequence_start: ``(B,)`` bool, the row starts its sequence (always True without
            truncation) - reset the recurrent state where it is True.
        sequence_end: ``(B,)`` bool, the row ends its sequence (always True without
            truncation).
        slots: ``(B,)`` int64, the parallel row ("slot") of the stateful batch this row belongs
            to (truncated BPTT; ``arange(B)`` without truncation). With truncation a slot may
            hold the end of one sequence and the start of the next in one minibatch, as CNTK
            packs them; the rows of a slot come in time order.
        time_offsets: ``(B,)`` int64, the step within its slot's window where the row begins
            (0 without truncation).
        sweeps: ``(B,)`` int64, the sweep each row was drawn in (a minibatch may go on
            across the end of a sweep, as in CNTK).

    Example:
        >>> mbd = MinibatchData.from_dense([np.ones((2, 3)), np.ones((1, 3))], shape=3)
        >>> mbd.shape, mbd.lengths.tolist(), mbd.num_samples
        ((2, 2, 3), [2, 1], 3)
    """

    def __init__(
        self,
        lengths: np.ndarray,
        shape: int | tuple[int, ...],
        dense: np.ndarray | None = None,
        sparse: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
        end_of_sweep: bool = False,
        sequence_start: np.ndarray | None = None,
        slots: np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        sequence_end: np.ndarray | None = None,
        time_offsets: np.ndarray | None = None,
        sweeps: np.ndarray | None = None,
    ) -> None:
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))  # (B,)
        self.sample_shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._dim = math.prod(self.sample_shape)
        self.is_sparse = sparse is not None
        self._dense = dense
        self._sparse = sparse  # (batch, time, col, value) coordinate arrays
        self._tensor: torch.Tensor | None = None
        self.dtype = dtype
        self.end_of_sweep = bool(end_of_sweep)
        b = int(self.lengths.shape[0])
        self.sequence_start = (torch.ones(b, dtype=torch.bool) if sequence_start is None
                               else torch.as_tensor(sequence_start, dtype=torch.bool))
        self.sequence_end = (torch.ones(b, dtype=torch.bool) if sequence_end is None
                             else torch.as_tensor(sequence_end, dtype=torch.bool))
        self.slots = (torch.arange(b) if slots is None
                      else torch.as_tensor(np.asarray(slots, dtype=np.int64)))
        self.time_offsets = (torch.zeros(b, dtype=torch.int64) if time_offsets is None
                             else torch.as_tensor(np.asarray(time_offsets, dtype=np.int64)))
        self.sweeps = (torch.zeros(b, dtype=torch.int64) if sweeps is None
                       else torch.as_tensor(np.asarray(sweeps, dtype=np.int64)))

    @classmethod
    def from_dense(cls, sequences: Sequence[np.ndarray], shape: int | tuple[int, ...],
                   **kwargs: Any) -> MinibatchData:
        """Pad a list of ``(T_i, dim)`` arrays."""
        sample_shape = (shape,) if isinstance(shape, int) else tuple(shape)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        t = int(lengths.max()) if len(lengths) else 0
        padded = np.zeros((len(sequences), t, *sample_shape), dtype=np.float32)  # (B, T, *D)
        for i, seq in enumerate(sequences):
            padded[i, : len(seq)] = np.asarray(seq, dtype=np.float32).reshape(
                len(seq), *sample_shape)
        return cls(lengths, shape, dense=padded, **kwargs)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(B, T, *D)``: sequences, longest length, sample shape (CNTK's value shape)."""
        return (self.num_sequences, self.max_length, *self.sample_shape)

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.lengths.sum())

    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if self.num_sequences else 0

    @property
    def mask(self) -> torch.Tensor:
        steps = torch.arange(self.max_length)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)  # (B, T)

    @property
    def data(self) -> torch.Tensor:
        return self.as_tensor()

    def as_tensor(self) -> torch.Tensor:
        """The padded ``(B, T, *D)`` tensor (sparse streams densified)."""
        if self._tensor is None:
            if self._dense is not None:
                self._tensor = torch.from_numpy(self._dense).to(self.dtype)
            else:
                b, t, col, val = self._sparse
                dense = torch.zeros(self.num_sequences, self.max_length, self._dim,
                                    dtype=self.dtype)  # (B, T, dim)
                # index_put_ with accumulate sums duplicate indices, as a sparse tensor would
                dense.index_put_((torch.from_numpy(b), torch.from_numpy(t), torch.from_numpy(col)),
                                 torch.from_numpy(val).to(self.dtype), accumulate=True)
                self._tensor = dense
        return self._tensor

    def as_sparse(self) -> torch.Tensor:
        """A sparse COO ``(B, T, dim)`` tensor (sparse streams only)."""
        if not self.is_sparse:
            raise TypeError("as_sparse() needs a sparse stream; use as_tensor() for dense streams")
        b, t, col, val = self._sparse
        idx = torch.from_numpy(np.stack([b, t, col]))  # (3, nnz)
        return torch.sparse_coo_tensor(idx, torch.from_numpy(val).to(self.dtype),
                                       (self.num_sequences, self.max_length, self._dim),
                                       check_invariants=True).coalesce()

    @property
    def indices(self) -> torch.Tensor:
        """``(B, T)`` int64 column of each one-hot sample (sparse streams), -1 where padded.

        For a sample with several entries this is the column of its largest value.
        """
        if not self.is_sparse:
            raise TypeError("indices needs a sparse (one-hot) stream")
        out = torch.full((self.num_sequences, self.max_length), -1, dtype=torch.int64)  # (B, T)
        b, t, col, val = self._sparse
        if len(col):
            # stable sort by value so the largest entry of each sample is written last
            order = np.argsort(val, kind="stable")
            out[torch.from_numpy(b[order]), torch.from_numpy(t[order])] = torch.from_numpy(
                col[order])
        return out

    def asarray(self) -> np.ndarray:
        """The padded data as a NumPy array."""
        return self.as_tensor().numpy()

    def as_sequences(self, variable: Any = None) -> list[torch.Tensor]:
        """The unpadded sequences, a list of ``(T_i, *D)`` tensors (``variable`` is accepted
        for CNTK compatibility and ignored)."""
        data = self.as_tensor()
        return [data[i, : int(n)] for i, n in enumerate(self.lengths)]

    def __len__(self) -> int:
        """``num_sequences``, as CNTK's ``len(MinibatchData)``."""
        return self.num_sequences

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        return (f"MinibatchData({kind}, sequences={self.num_sequences}, "
                f"samples={self.num_samples}, shape={self.shape}, "
                f"end_of_sweep={self.end_of_sweep})")


class Minibatch(Mapping):
    """What :meth:`MinibatchSource.next_minibatch` returns: stream -> :class:`MinibatchData`.

    Keys are :class:`StreamInformation` objects (``mb[source.streams.features]``), or the keys
    of the ``input_map`` given to ``next_minibatch``; a stream's name works too
    (``mb["features"]``). An exhausted source returns an empty (falsy) minibatch.
    """

    def __init__(self, items: dict[Any, MinibatchData], names: dict[str, Any],
                 num_samples: int | None = None) -> None:
        self._items = items
        self._names = names
        self._num_samples = num_samples

    def __getitem__(self, key: Any) -> MinibatchData:
        if key in self._items:
            return self._items[key]
        if isinstance(key, str) and key in self._names:
            return self._items[self._names[key]]
        if isinstance(key, StreamInformation) and key.name in self._names:
            return self._items[self._names[key.name]]
        raise KeyError(f"no stream {key!r} in this minibatch; streams: {', '.join(self._names)}")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def num_samples(self) -> int:
        """Samples in the minibatch: the sum over sequences of their longest stream (of the
        stream that ``defines_mb_size``, if one does)."""
        if not self._items:
            return 0
        if self._num_samples is not None:
            return self._num_samples
        return int(torch.stack([d.lengths for d in self._items.values()]).amax(0).sum())

    @property
    def end_of_sweep(self) -> bool:
        return any(d.end_of_sweep for d in self._items.values())

    def __repr__(self) -> str:
        return f"Minibatch({', '.join(f'{k}: {v!r}' for k, v in self._names.items())})"


# ----------------------------------------------------------------------------- the source
#: ``max_samples=FULL_DATA_SWEEP``: one pass over the data, as ``cntk.io.FULL_DATA_SWEEP``.
FULL_DATA_SWEEP: int = sys.maxsize - 2

#: Version of the dict :meth:`MinibatchSource.get_checkpoint_state` returns.
_CHECKPOINT_VERSION = 1

# A unit of the walk: (chunk, sequence in chunk, frame or -1 for the whole sequence)
_Unit = tuple[Chunk, int, int]


@dataclass
class _Slot:
    """A row of the stateful batch in truncated-BPTT mode: one sequence and where it is."""

    chunk: Chunk | None = None
    seq: int = 0
    pos: int = 0
    sweep: int = 0  # the sweep the sequence was drawn in


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _gather(parts: list[tuple[StreamChunk, int]], sdef: StreamDef) -> StreamChunk:
    """A new StreamChunk holding sequence ``s`` of each ``(stream chunk, s)``, in order."""
    sparse, dim = sdef.is_sparse, sdef.dim
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    values, indices, nnz = [], [], [np.zeros(1, np.int64)]
    nnz_total = 0
    for i, (st, s) in enumerate(parts):
        a, b = int(st.sample_offsets[s]), int(st.sample_offsets[s + 1])
        offsets[i + 1] = offsets[i] + b - a
        if sparse:
            lo, hi = int(st.nnz_offsets[a]), int(st.nnz_offsets[b])
            indices.append(st.indices[lo:hi])
            values.append(st.values[lo:hi])
            nnz.append(st.nnz_offsets[a + 1:b + 1] - lo + nnz_total)
            nnz_total += hi - lo
        else:
            values.append(st.values[a:b])
    if sparse:
        return StreamChunk(offsets, _concat(values, sdef.np_dtype), _concat(indices, np.int64),
                           np.concatenate(nnz).astype(np.int64))
    dense = np.concatenate(values) if values else np.zeros((0, dim), sdef.np_dtype)
    return StreamChunk(offsets, dense)


class _JoinedDeserializer:
    """Several deserializers seen as one, their sequences joined by sequence id (key).

    The first deserializer is the primary: its chunks and its order of sequences drive the
    source, as in CNTK's composite reader. The others are indexed once (id -> chunk and
    position) and their sequences are copied next to the primary's. A primary sequence whose
    id another deserializer lacks is a bad sequence (see ``MinibatchSource(max_errors=)``).
    """

    def __init__(self, deserializers: Sequence[Deserializer], on_error: Any) -> None:
        self.parts = list(deserializers)
        self.path = getattr(self.parts[0], "path", "the first deserializer")
        owner: dict[str, int] = {}
        merged: dict[str, StreamDef] = {}
        for i, d in enumerate(self.parts):
            for name, sdef in d.streams.items():
                if name in owner:
                    raise ValueError(
                        f"stream {name!r} is declared by deserializers {owner[name]} and {i}; "
                        "each stream of a MinibatchSource needs its own name")
                owner[name] = i
                merged[name] = sdef
        self.streams = _MergedDefs(merged)  # two files may read fields of the same name
        self._on_error = on_error
        self._index: list[dict[str, tuple[int, int]] | None] = [None] * len(self.parts)
        self._cache: dict[tuple[int, int], Chunk] = {}

    @property
    def num_chunks(self) -> int:
        return self.parts[0].num_chunks

    def _keys_of(self, d: int, chunk: Chunk) -> list[str]:
        keys = chunk.keys
        if keys is None and hasattr(self.parts[d], "sequence_keys"):
            keys = self.parts[d].sequence_keys(chunk.index, chunk)
        name = getattr(self.parts[d], "path", f"deserializer {d}")
        if keys is None or any(k is None for k in keys):
            s = 0 if keys is None else next(i for i, k in enumerate(keys) if k is None)
            line = int(chunk.first_lines[s]) + 1 if len(chunk.first_lines) > s else s + 1
            raise ValueError(
                f"{name}: joining several deserializers needs a sequence id on every sequence "
                f"(chunk {chunk.index}, sequence at line {line} of the chunk has none)")
        return keys

    def _locate(self, d: int) -> dict[str, tuple[int, int]]:
        if self._index[d] is None:
            index: dict[str, tuple[int, int]] = {}
            for c in range(self.parts[d].num_chunks):
                for s, key in enumerate(self._keys_of(d, self.parts[d].get_chunk(c))):
                    index.setdefault(key, (c, s))
            self._index[d] = index
        return self._index[d]

    def _chunk(self, d: int, c: int) -> Chunk:
        chunk = self._cache.get((d, c))
        if chunk is None:
            if len(self._cache) >= 4 * len(self.parts):
                self._cache.pop(next(iter(self._cache)))
            chunk = self._cache[(d, c)] = self.parts[d].get_chunk(c)
        return chunk

    def get_chunk(self, index: int) -> Chunk:
        primary = self.parts[0].get_chunk(index)
        keys = self._keys_of(0, primary)
        found: list[list[tuple[Chunk, int]]] = []
        kept: list[int] = []
        for s, key in enumerate(keys):
            row = []
            for d in range(1, len(self.parts)):
                loc = self._locate(d).get(key)
                if loc is None:
                    self._on_error((index, s), f"sequence id {key!r} of "
                                   f"{self.path} is missing from "
                                   f"{getattr(self.parts[d], 'path', f'deserializer {d}')}")
                    break
                row.append((self._chunk(d, loc[0]), loc[1]))
            else:
                kept.append(s)
                found.append(row)
        streams: dict[str, StreamChunk] = {}
        for name, st in primary.streams.items():
            sdef = self.parts[0].streams[name]
            streams[name] = _gather([(st, s) for s in kept], sdef)
        for d in range(1, len(self.parts)):
            for name, sdef in self.parts[d].streams.items():
                streams[name] = _gather([(row[d - 1][0].streams[name], row[d - 1][1])
                                         for row in found], sdef)
        lengths = np.zeros(len(kept), dtype=np.int64)
        for st in streams.values():
            np.maximum(lengths, np.diff(st.sample_offsets), out=lengths)
        return Chunk(index=index, lengths=lengths, streams=streams,
                     first_lines=primary.first_lines[kept] if len(primary.first_lines) else
                     np.zeros(len(kept), np.int64),
                     keys=[keys[s] for s in kept])


class _MergedDefs(dict):
    """Stream definitions of several deserializers (two files may use the same field name)."""

    def __getattr__(self, name: str) -> StreamDef:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class MinibatchSource:
    """Minibatches of sequences from one or more deserializers, with CNTK 2.7's semantics.

    Args:
        deserializers: a deserializer (e.g. :class:`~rnnkit.data.ctf.CTFDeserializer`) or a
            list of them. Several deserializers are joined by sequence id, as CNTK composes a
            features file and a labels file: the first one's sequences drive the order.
        max_samples: samples (time steps) walked before the source is exhausted;
            ``FULL_DATA_SWEEP`` means one sweep. At most one sequence goes over.
        max_sweeps: passes over the data before the source is exhausted. Give ``max_samples``
            or ``max_sweeps``, not both.
        randomization_window_in_chunks: chunks per randomisation window; 0 means no
            randomisation (as in CNTK).
        randomization_window_in_samples: a window of about this many samples instead (whole
            chunks until the window holds at least this many); exclusive with
            ``randomization_window_in_chunks``.
        randomization_seed: sweep ``k`` is shuffled with seed ``randomization_seed + k`` (as
            CNTK does), so a fixed seed gives the same order every run.
        frame_mode: every sample (time step) is its own one-step sequence, randomised
            frame by frame; every stream needs one sample per step.
        truncation_length: when > 0, sequences are cut into windows of this many steps for
            truncated BPTT: a minibatch of ``n`` samples holds ``n // truncation_length``
            parallel rows (*slots*) of ``truncation_length`` steps each. A slot continues its
            sequence in the next minibatch, and when the sequence ends inside a window the
            slot goes on with the next sequence in the same window (CNTK's packing). See
            ``MinibatchData.slots``/``sequence_start``/``time_offsets``.
        randomize: False turns randomisation off, whatever the window.
        max_errors: bad sequences skipped (each with a warning) before an error is raised: a
            sequence id missing from one of several deserializers, or (frame mode) streams of
            different lengths. As in CNTK it also goes to the readers: a deserializer with a
            smaller ``max_errors`` (``CTFDeserializer``: malformed sequences) gets this one.

    Minibatch size counts samples: a sequence of ``T`` steps costs ``T`` samples (its longest
    stream, or the stream that ``defines_mb_size``); sequences are never split (except into
    truncation windows) and a sequence longer than the minibatch comes alone. A minibatch goes
    on across the end of a sweep, as CNTK's does (four 1-step sequences, ``next_minibatch(5)``
    gives 5, 5, 2 samples with ``max_sweeps=3``), and is flagged ``end_of_sweep`` when it holds
    the last data of a sweep.

    ``next_minibatch(n, num_data_partitions=N, partition_index=r)`` reads worker ``r``'s share
    for data-parallel training (CNTK's distributed reading): all workers walk the same order
    (same seed), worker ``r`` keeps the sequences at positions ``r, r + N, ...`` of the walk,
    and its minibatch holds about ``n / N`` samples, so every sample of a sweep goes to exactly
    one worker. ``get_checkpoint_state()`` / ``restore_from_checkpoint(state)`` save and
    resume the position mid-sweep (plain data: JSON or ``torch.save(weights_only=True)``).

    Example:
        >>> import tempfile, os, numpy as np
        >>> from rnnkit.data.ctf import CTFDeserializer, write_ctf
        >>> path = os.path.join(tempfile.mkdtemp(), "d.ctf")
        >>> write_ctf(path, [{"x": np.ones((3, 1)), "y": [[1.0]]} for _ in range(4)])
        >>> src = MinibatchSource(CTFDeserializer(path, StreamDefs(
        ...     x=StreamDef(shape=1), y=StreamDef(shape=1))), max_sweeps=1)
        >>> mb = src.next_minibatch(6)
        >>> mb[src.streams.x].shape, mb[src["y"]].shape
        ((2, 3, 1), (2, 1, 1))
    """

    def __init__(
        self,
        deserializers: Deserializer | Sequence[Deserializer],
        max_samples: int = INFINITELY_REPEAT,
        max_sweeps: int = INFINITELY_REPEAT,
        randomization_window_in_chunks: int = DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS,
        randomization_window_in_samples: int = 0,
        randomization_seed: int = 0,
        frame_mode: bool = False,
        truncation_length: int = 0,
        randomize: bool = True,
        max_errors: int = 0,
    ) -> None:
        parts = list(deserializers) if isinstance(deserializers, (list, tuple)) else [
            deserializers]
        if not parts:
            raise ValueError("MinibatchSource needs at least one deserializer")
        for d in parts:
            if not hasattr(d, "get_chunk") or not hasattr(d, "streams"):
                raise TypeError(f"MinibatchSource needs a deserializer such as CTFDeserializer, "
                                f"got {type(d).__name__}")
        self.max_errors = _check_count("max_errors", max_errors, 0)
        self._errors: set[Any] = set()
        for d in parts:
            # as CNTK passes its max_errors to the readers: a reader that can skip bad
            # sequences itself (CTFDeserializer) skips up to this many too
            if isinstance(getattr(d, "max_errors", None), int) and d.max_errors < self.max_errors:
                d.max_errors = self.max_errors
        self.deserializer = (parts[0] if len(parts) == 1
                             else _JoinedDeserializer(parts, self._bad_sequence))
        max_sweeps = _check_count("max_sweeps", max_sweeps, 1)
        max_samples = _check_count("max_samples", max_samples, 1)
        if max_samples == FULL_DATA_SWEEP:
            if max_sweeps != INFINITELY_REPEAT:
                raise ValueError("max_samples=FULL_DATA_SWEEP already means one sweep; "
                                 "leave max_sweeps out")
            max_samples, max_sweeps = INFINITELY_REPEAT, 1
        if max_samples != INFINITELY_REPEAT and max_sweeps != INFINITELY_REPEAT:
            raise ValueError(f"give max_samples ({max_samples}) or max_sweeps ({max_sweeps}), "
                             "not both (as in CNTK)")
        self.max_sweeps, self.max_samples = max_sweeps, max_samples
        chunks = _check_count("randomization_window_in_chunks",
                              randomization_window_in_chunks, 0)
        samples = _check_count("randomization_window_in_samples",
                               randomization_window_in_samples, 0)
        if samples and chunks not in (0, DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS):
            raise ValueError("randomization_window_in_chunks and randomization_window_in_samples "
                             "are exclusive; set one of them")
        self.window = 0 if samples else chunks
        self.window_in_samples = samples
        self.randomize = bool(randomize) and bool(self.window or self.window_in_samples)
        self.seed = _check_count("randomization_seed", randomization_seed, 0)
        self.frame_mode = bool(frame_mode)
        self.truncation_length = _check_count("truncation_length", truncation_length, 0)
        if self.frame_mode and self.truncation_length:
            raise ValueError("frame_mode and truncation_length exclude each other: frame mode "
                             "makes every sample a sequence of its own")
        defining = [n for n, d in self.deserializer.streams.items() if d.defines_mb_size]
        if len(defining) > 1:
            raise ValueError(f"only one stream may set defines_mb_size, got {defining}")
        self._defining = defining[0] if defining else None
        if self._defining and self.truncation_length:
            raise ValueError("defines_mb_size and truncation_length cannot be combined: "
                             "truncation windows count the steps of every stream")
        self.streams = StreamInfos({
            name: StreamInformation(name, d.field, d.shape, d.is_sparse, d.torch_dtype,
                                    defines_mb_size=d.defines_mb_size)
            for name, d in self.deserializer.streams.items()
        })
        # the walk: every worker walks the same order and keeps its share of it
        self._sweep = 0  # sweep of the next unit
        self._pos = 0  # units of this sweep already walked
        self._counter = 0  # units walked since the start (decides the partition)
        self._samples = 0  # samples walked
        self._sweep_samples = 0  # samples walked in this sweep
        self._walk_done = False  # max_sweeps / max_samples reached
        self._sweeps_passed = 0  # sweeps whose end the walk has passed
        self._sweeps_delivered = 0  # sweeps whose last data has been delivered
        self._order: Iterator[_Unit] | None = None
        self._peeked: _Unit | None = None
        self._slots: list[_Slot] = []

    # -- bad sequences ----------------------------------------------------------------------
    def _bad_sequence(self, key: Any, message: str) -> None:
        """Skip a bad sequence with a warning, or raise once more than max_errors were seen."""
        if key not in self._errors:
            self._errors.add(key)
            if len(self._errors) > self.max_errors:
                raise ValueError(f"{message} (bad sequences: {len(self._errors)}, "
                                 f"max_errors={self.max_errors})")
            warnings.warn(f"{message}; sequence skipped ({len(self._errors)} of at most "
                          f"{self.max_errors})", stacklevel=4)

    # -- order of units -------------------------------------------------------------------------
    def _chunk_units(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        """(sequence, frame) of each unit of a chunk; frame -1 means the whole sequence."""
        seqs = np.flatnonzero(chunk.lengths > 0)
        if not self.frame_mode:
            return seqs, np.full(len(seqs), -1, dtype=np.int64)
        good = []
        for s in seqs:
            counts = {name: st.length(int(s)) for name, st in chunk.streams.items()}
            if len(set(counts.values())) != 1:
                self._bad_sequence((chunk.index, int(s)), (
                    f"{getattr(self.deserializer, 'path', 'deserializer')}: frame_mode needs one "
                    f"sample per step in every stream; sequence {int(s)} of chunk {chunk.index} "
                    f"has {counts}"))
                continue
            good.append(int(s))
        good_arr = np.asarray(good, dtype=np.int64)
        lens = chunk.lengths[good_arr]
        return np.repeat(good_arr, lens), (np.arange(int(lens.sum())) -
                                          np.repeat(np.cumsum(lens) - lens, lens))

    def _units(self, sweep: int) -> Iterator[_Unit]:
        yielded = 0
        for unit in self._unit_order(sweep):
            yielded += 1
            yield unit
        if not yielded:
            raise ValueError(f"{getattr(self.deserializer, 'path', 'the deserializer')} "
                             "holds no sequences")

    def _unit_order(self, sweep: int) -> Iterator[_Unit]:
        n = self.deserializer.num_chunks
        if not self.randomize:
            for c in range(n):
                chunk = self.deserializer.get_chunk(c)
                seqs, frames = self._chunk_units(chunk)
                for s, t in zip(seqs.tolist(), frames.tolist(), strict=True):
                    yield chunk, s, t
            return
        rng = np.random.default_rng(self.seed + sweep)
        order = rng.permutation(n)
        window: list[Chunk] = []
        window_samples = 0
        for k, c in enumerate(order):
            chunk = self.deserializer.get_chunk(int(c))
            window.append(chunk)
            window_samples += int(chunk.lengths.sum())
            full = (len(window) >= self.window if self.window
                    else window_samples >= self.window_in_samples)
            if full or k == n - 1:
                units = [self._chunk_units(ch) for ch in window]
                owner = np.concatenate([np.full(len(u[0]), i) for i, u in enumerate(units)])
                seqs = np.concatenate([u[0] for u in units])
                frames = np.concatenate([u[1] for u in units])
                for j in rng.permutation(len(owner)).tolist():
                    yield window[owner[j]], int(seqs[j]), int(frames[j])
                window, window_samples = [], 0

    def _size(self, unit: _Unit) -> int:
        """Samples a unit costs in a minibatch."""
        chunk, s, t = unit
        if t >= 0:
            return 1
        if self._defining is not None:
            return chunk.streams[self._defining].length(s)
        return int(chunk.lengths[s])

    def _peek(self) -> _Unit:
        if self._peeked is None:
            if self._order is None:
                self._order = self._units(self._sweep)
            self._peeked = next(self._order, None)
        return self._peeked

    def _pop(self) -> tuple[_Unit, int]:
        """Walk one unit; returns it and the sweep it belongs to."""
        unit, sweep = self._peek(), self._sweep
        self._peeked = None
        n = self._size(unit)
        self._pos += 1
        self._counter += 1
        self._samples += n
        self._sweep_samples += n
        if self._peek() is None:  # the last unit of the sweep
            if self._sweep_samples == 0:
                raise ValueError(f"stream {self._defining!r} defines the minibatch size but "
                                 f"holds no samples in {getattr(self.deserializer, 'path', '')}")
            self._sweeps_passed += 1
            self._sweep += 1
            self._pos = self._sweep_samples = 0
            self._order = self._peeked = None
            if self._sweep >= self.max_sweeps:
                self._walk_done = True
        if self._samples >= self.max_samples:
            self._walk_done = True
        return unit, sweep

    # -- public API -----------------------------------------------------------------------------
    @property
    def current_sweep(self) -> int:
        """Index of the sweep the next sequence comes from."""
        return self._sweep

    @property
    def total_num_samples(self) -> int:
        """Samples walked so far (over all partitions: the position in the data)."""
        return self._samples

    @property
    def is_exhausted(self) -> bool:
        """``max_sweeps``/``max_samples`` reached and everything delivered."""
        return self._walk_done and all(s.chunk is None for s in self._slots)

    def stream_infos(self) -> list[StreamInformation]:
        return list(self.streams)

    def stream_info(self, name: str) -> StreamInformation:
        return self.streams[name]

    def __getitem__(self, name: str) -> StreamInformation:
        """``source["features"]``: the stream's :class:`StreamInformation` (as CNTK)."""
        return self.streams[name]

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def next_minibatch(self, minibatch_size_in_samples: int,
                       input_map: Mapping[Any, StreamInformation] | None = None,
                       device: Any = None, num_data_partitions: int = 1,
                       partition_index: int = 0) -> Minibatch:
        """The next minibatch of about ``minibatch_size_in_samples`` samples.

        Args:
            minibatch_size_in_samples: samples over all partitions; each of
                ``num_data_partitions`` workers gets about ``1/num_data_partitions`` of them.
            input_map: key -> ``source.streams.<name>``; the minibatch is keyed by these keys.
            device: accepted for CNTK compatibility; tensors are on the CPU (move them with
                ``.to(device)``).
            num_data_partitions, partition_index: this worker's share (data parallel).

        Returns a :class:`Minibatch` mapping each stream (or each key of ``input_map``) to its
        :class:`MinibatchData`; empty (falsy) once ``max_sweeps`` or ``max_samples`` is reached.
        """
        size = _check_count("minibatch_size_in_samples", minibatch_size_in_samples, 1)
        parts = _check_count("num_data_partitions", num_data_partitions, 1)
        rank = _check_count("partition_index", partition_index, 0)
        if rank >= parts:
            raise ValueError(f"partition_index must be < num_data_partitions ({parts}), "
                             f"got {rank}")
        if input_map is not None:
            for key, info in input_map.items():
                if not isinstance(info, StreamInformation) or info.name not in self.streams:
                    raise KeyError(f"input_map[{key!r}] must be one of source.streams "
                                   f"({', '.join(s.name for s in self.streams)}), got {info!r}")
        # this worker's share of the samples: the remainder goes to the first workers
        budget = max(1, size // parts + (1 if rank < size % parts else 0))
        if self.truncation_length:
            pieces = self._truncated_pieces(budget, parts, rank)
        else:
            pieces = self._whole_pieces(budget, parts, rank)
        end_of_sweep = False
        while (self._sweeps_delivered < self._sweeps_passed and not any(
                s.chunk is not None and s.sweep == self._sweeps_delivered for s in self._slots)):
            self._sweeps_delivered += 1
            end_of_sweep = True
        if not pieces:
            return Minibatch({}, {})
        datas = self._assemble(pieces)
        for d in datas.values():
            d.end_of_sweep = end_of_sweep
        if self._defining is not None:
            mb_samples = datas[self._defining].num_samples
        else:
            mb_samples = int(np.maximum.reduce([d.lengths.numpy() for d in datas.values()]).sum())
        if input_map is None:
            items = {self.streams[name]: d for name, d in datas.items()}
            names = {name: self.streams[name] for name in datas}
        else:
            items = {key: datas[info.name] for key, info in input_map.items()}
            names = {info.name: key for key, info in input_map.items()}
        return Minibatch(items, names, num_samples=mb_samples)

    def __iter__(self) -> Iterator[Minibatch]:
        raise TypeError("iterate with iter_minibatches(minibatch_size_in_samples)")

    def iter_minibatches(self, minibatch_size_in_samples: int, **kwargs: Any
                         ) -> Iterator[Minibatch]:
        """Yield minibatches until the source is exhausted (needs a finite ``max_sweeps`` or
        ``max_samples`` to end); ``kwargs`` go to :meth:`next_minibatch`."""
        while mb := self.next_minibatch(minibatch_size_in_samples, **kwargs):
            yield mb

    # -- packing --------------------------------------------------------------------------------
    # a piece: (chunk, sequence, first step, end step, slot, offset in its slot, sweep)
    def _whole_pieces(self, budget: int, parts: int, rank: int) -> list[tuple]:
        pieces: list[tuple] = []
        local = 0
        while not self._walk_done:
            unit = self._peek()
            n = self._size(unit)
            if pieces and self._samples + n > self.max_samples:
                break
            mine = self._counter % parts == rank
            if mine and pieces and local + n > budget:
                break
            _, sweep = self._pop()
            if mine:
                chunk, s, t = unit
                begin, end = (t, t + 1) if t >= 0 else (0, int(chunk.lengths[s]))
                pieces.append((chunk, s, begin, end, len(pieces), 0, sweep))
                local += n
                if local >= budget:
                    break
        return pieces

    def _next_local(self, parts: int, rank: int) -> tuple[_Unit, int] | None:
        while not self._walk_done:
            mine = self._counter % parts == rank
            unit, sweep = self._pop()
            if mine:
                return unit, sweep
        return None

    def _truncated_pieces(self, budget: int, parts: int, rank: int) -> list[tuple]:
        tl = self.truncation_length
        num_slots = max(1, budget // tl)
        if len(self._slots) != num_slots:
            if any(s.chunk is not None for s in self._slots):
                raise ValueError(
                    f"minibatch size changed from {len(self._slots) * tl} to {budget} samples in "
                    f"the middle of truncated sequences; with truncation_length={tl} keep "
                    "minibatch_size_in_samples fixed until the sweep ends")
            self._slots = [_Slot() for _ in range(num_slots)]
        pieces: list[tuple] = []
        for k, slot in enumerate(self._slots):
            used = 0
            while used < tl:
                if slot.chunk is None:
                    got = self._next_local(parts, rank)
                    if got is None:
                        break
                    (slot.chunk, slot.seq, _), slot.sweep = got
                    slot.pos = 0
                length = int(slot.chunk.lengths[slot.seq])
                take = min(tl - used, length - slot.pos)
                pieces.append((slot.chunk, slot.seq, slot.pos, slot.pos + take, k, used,
                               slot.sweep))
                used += take
                slot.pos += take
                if slot.pos >= length:
                    slot.chunk = None
        return pieces

    def _assemble(self, pieces: list[tuple]) -> dict[str, MinibatchData]:
        """Pad the steps ``[begin, end)`` of each piece, stream by stream.

        Vectorised per chunk: a minibatch draws from at most a window of chunks, so the Python
        work is per chunk and per stream, not per sequence.
        """
        groups: dict[int, tuple[Chunk, list[int]]] = {}
        for i, piece in enumerate(pieces):
            groups.setdefault(id(piece[0]), (piece[0], []))[1].append(i)
        spec = np.array([p[1:] for p in pieces], dtype=np.int64).reshape(-1, 6)
        num = len(pieces)
        full = np.array([int(p[0].lengths[p[1]]) for p in pieces], dtype=np.int64)
        starts, ends = spec[:, 1] == 0, spec[:, 2] >= full
        if self.frame_mode:
            starts = ends = np.ones(num, dtype=bool)
        meta = {"sequence_start": starts, "sequence_end": ends, "slots": spec[:, 3],
                "time_offsets": spec[:, 4], "sweeps": spec[:, 5]}
        out = {}
        for name, sdef in self.deserializer.streams.items():
            lengths = np.zeros(num, dtype=np.int64)  # (B,)
            chunk_rows = []  # per chunk: (stream chunk, batch rows, time rows, source rows)
            for chunk, members in groups.values():
                st = chunk.streams[name]
                rows = np.asarray(members)
                seq, begin, end = spec[rows, 0], spec[rows, 1], spec[rows, 2]
                first = st.sample_offsets[seq]
                n = st.sample_offsets[seq + 1] - first
                lo = first + np.minimum(begin, n)
                span = first + np.minimum(end, n) - lo
                lengths[rows] = span
                b_idx = np.repeat(rows, span)
                t_idx = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
                chunk_rows.append((st, b_idx, t_idx, np.repeat(lo, span) + t_idx))
            t = int(lengths.max()) if num else 0
            if not sdef.is_sparse:
                padded = np.zeros((num, t, sdef.dim), dtype=sdef.np_dtype)  # (B, T, dim)
                for st, b_idx, t_idx, src in chunk_rows:
                    padded[b_idx, t_idx] = st.values[src]
                padded = padded.reshape(num, t, *sdef.sample_shape)  # (B, T, *D)
                out[name] = MinibatchData(lengths, sdef.shape, dense=padded, dtype=sdef.torch_dtype,
                                          **meta)
            else:
                bs, ts, cols, vals = [], [], [], []
                for st, b_idx, t_idx, src in chunk_rows:
                    p = st.nnz_offsets[src]
                    counts = st.nnz_offsets[src + 1] - p  # entries of each sample
                    entry = np.repeat(p - (np.cumsum(counts) - counts), counts) + np.arange(
                        int(counts.sum()))
                    bs.append(np.repeat(b_idx, counts))
                    ts.append(np.repeat(t_idx, counts))
                    cols.append(st.indices[entry])
                    vals.append(st.values[entry])
                coo = (_concat(bs, np.int64), _concat(ts, np.int64), _concat(cols, np.int64),
                       _concat(vals, sdef.np_dtype))
                out[name] = MinibatchData(lengths, sdef.shape, sparse=coo, dtype=sdef.torch_dtype,
                                          **meta)
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {"num_chunks": int(self.deserializer.num_chunks), "randomize": self.randomize,
                "seed": self.seed, "window": self.window,
                "window_in_samples": self.window_in_samples, "frame_mode": self.frame_mode,
                "truncation_length": self.truncation_length,
                "streams": sorted(self.deserializer.streams)}

    def get_checkpoint_state(self) -> dict[str, Any]:
        """Where the source is, as plain data (ints, bools, strings, lists, dicts).

        ``restore_from_checkpoint(state)`` on a source built with the same arguments
        continues with exactly the minibatches this one would give next, randomised or not.
        Save it with ``json`` or ``torch.save`` (loads with ``weights_only=True``).
        """
        return {
            "version": _CHECKPOINT_VERSION,
            "config": self._fingerprint(),
            "sweep": self._sweep, "position": self._pos, "counter": self._counter,
            "samples": self._samples, "sweep_samples": self._sweep_samples,
            "walk_done": self._walk_done, "sweeps_passed": self._sweeps_passed,
            "sweeps_delivered": self._sweeps_delivered,
            "slots": [None if s.chunk is None else
                      {"chunk": int(s.chunk.index), "sequence": int(s.seq), "step": int(s.pos),
                       "sweep": int(s.sweep)} for s in self._slots],
            "errors": len(self._errors),
        }

    @property
    def current_position(self) -> dict[str, Any]:
        """CNTK's spelling: ``get_checkpoint_state()``; assigning restores it."""
        return self.get_checkpoint_state()

    @current_position.setter
    def current_position(self, state: Mapping[str, Any]) -> None:
        self.restore_from_checkpoint(state)

    def restore_from_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`get_checkpoint_state` dict (see there)."""
        if not isinstance(state, Mapping) or state.get("version") != _CHECKPOINT_VERSION:
            raise ValueError("not a MinibatchSource checkpoint state (version "
                             f"{_CHECKPOINT_VERSION}); got {type(state).__name__}")
        mine = self._fingerprint()
        saved = dict(state["config"])
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ValueError(f"checkpoint state was saved by a source with {key}="
                                 f"{saved.get(key)!r}; this source has {key}={value!r}")
        self._sweep, self._counter = int(state["sweep"]), int(state["counter"])
        self._samples, self._sweep_samples = int(state["samples"]), int(state["sweep_samples"])
        self._walk_done = bool(state["walk_done"])
        self._sweeps_passed = int(state["sweeps_passed"])
        self._sweeps_delivered = int(state["sweeps_delivered"])
        self._peeked = None
        self._order = None
        self._pos = 0
        position = int(state["position"])
        if position:
            self._order = self._units(self._sweep)
            for _ in range(position):
                if next(self._order, None) is None:
                    raise ValueError(f"checkpoint position {position} is past the end of "
                                     f"sweep {self._sweep}; was the data changed?")
            self._pos = position
        cache: dict[int, Chunk] = {}
        self._slots = []
        for slot in state["slots"]:
            if slot is None:
                self._slots.append(_Slot())
                continue
            c = int(slot["chunk"])
            if c not in cache:
                cache[c] = self.deserializer.get_chunk(c)
            self._slots.append(_Slot(cache[c], int(slot["sequence"]), int(slot["step"]),
                                     int(slot["sweep"])))


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


# ----------------------------------------------------------------------------- Dataset view
class SequenceDataset(torch.utils.data.Dataset):
    """A map-style ``torch.utils.data.Dataset`` over a deserializer's sequences.

    Item ``i`` is a dict stream name -> ``(T_s, *D)`` float tensor (sparse streams as dense
    one-hot rows). Parsed chunks are cached (``cache_chunks`` of them), so reading in order or
    with a :class:`~rnnkit.data.batching.BucketBatchSampler` is cheap; for files larger than
    memory prefer :class:`MinibatchSource`, which never jumps between chunks at random.
    Combine with :func:`rnnkit.data.batching.pad_collate` in a ``DataLoader``.
    """

    def __init__(self, deserializer: Deserializer, cache_chunks: int = 2) -> None:
        self.deserializer = deserializer
        self.cache_chunks = _check_count("cache_chunks", cache_chunks, 1)
        self._cache: dict[int, Chunk] = {}
        self._starts: np.ndarray | None = None
        self._lengths: np.ndarray | None = None

    def _index(self) -> np.ndarray:
        if self._starts is None:
            counts, lengths = [], []
            for c in range(self.deserializer.num_chunks):
                chunk = self._chunk(c)
                counts.append(chunk.num_sequences)
                lengths.append(chunk.lengths)
            self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            self._lengths = (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))
        return self._starts

    def _chunk(self, c: int) -> Chunk:
        chunk = self._cache.get(c)
        if chunk is None:
            chunk = self.deserializer.get_chunk(c)
            if len(self._cache) >= self.cache_chunks:
                self._cache.pop(next(iter(self._cache)))
            self._cache[c] = chunk
        return chunk

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` steps of every sequence (for :class:`BucketBatchSampler`)."""
        self._index()
        return self._lengths

    def __len__(self) -> int:
        return int(self._index()[-1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        starts = self._index()
        n = int(starts[-1])
        if not -n <= i < n:
            raise IndexError(f"sequence index {i} out of range for {n} sequences")
        i %= n
        c = int(np.searchsorted(starts, i, side="right") - 1)
        chunk = self._chunk(c)
        s = i - int(starts[c])
        out = {}
        for name, value in chunk.sequence(s).items():
            sdef = self.deserializer.streams[name]
            if sdef.is_sparse:
                rows, cols, vals = value
                t = chunk.streams[name].length(s)
                dense = torch.zeros(t, sdef.dim, dtype=sdef.torch_dtype)  # (T_s, dim)
                dense.index_put_((torch.from_numpy(rows), torch.from_numpy(cols)),
                                 torch.from_numpy(vals).to(sdef.torch_dtype), accumulate=True)
                out[name] = dense
            else:
                out[name] = torch.from_numpy(np.array(value)).reshape(-1, *sdef.sample_shape)
        return out
