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

    Example:
        >>> StreamDef(field="x", shape=3).dim
        3
    """

    field: str | None = None
    shape: int | tuple[int, ...] = 1
    is_sparse: bool = False
    dtype: str = "float32"

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
                                   dtype=stream.dtype)
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

    @property
    def dim(self) -> int:
        return self.shape if isinstance(self.shape, int) else math.prod(self.shape)


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
            dense one-hot/weighted rows, built on first access).
        lengths: ``(B,)`` int64, valid steps of each sequence in this stream.
        mask: ``(B, T)`` bool, True at valid steps.
        num_samples: valid steps summed over the minibatch (``lengths.sum()``).
        num_sequences: ``B``.
        end_of_sweep: this minibatch holds the last data of a sweep.
        sequence_start: ``(B,)`` bool, the window starts its sequence (truncated BPTT; always
            True without truncation) - reset the recurrent state where it is True.
        slots: ``(B,)`` int64 row of the stateful batch each window continues (truncated BPTT;
            ``arange(B)`` without truncation).

    Example:
        >>> mbd = MinibatchData.from_dense([np.ones((2, 3)), np.ones((1, 3))], shape=3)
        >>> tuple(mbd.data.shape), mbd.lengths.tolist(), mbd.num_samples
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
    ) -> None:
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))  # (B,)
        self.shape = shape
        self.is_sparse = sparse is not None
        self._dense = dense
        self._sparse = sparse  # (batch, time, col, value) coordinate arrays
        self._tensor: torch.Tensor | None = None
        self.dtype = dtype
        self.end_of_sweep = bool(end_of_sweep)
        b = int(self.lengths.shape[0])
        self.sequence_start = (torch.ones(b, dtype=torch.bool) if sequence_start is None
                               else torch.as_tensor(sequence_start, dtype=torch.bool))
        self.slots = (torch.arange(b) if slots is None
                      else torch.as_tensor(np.asarray(slots, dtype=np.int64)))

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
                dense = torch.zeros(self.num_sequences, self.max_length, self.shape,
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
                                       (self.num_sequences, self.max_length, self.shape),
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

    def as_sequences(self) -> list[torch.Tensor]:
        """The unpadded sequences, a list of ``(T_i, *D)`` tensors."""
        data = self.as_tensor()
        return [data[i, : int(n)] for i, n in enumerate(self.lengths)]

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

    def __init__(self, items: dict[Any, MinibatchData], names: dict[str, Any]) -> None:
        self._items = items
        self._names = names

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
        """Samples in the minibatch: the sum over sequences of their longest stream."""
        if not self._items:
            return 0
        return int(torch.stack([d.lengths for d in self._items.values()]).amax(0).sum())

    @property
    def end_of_sweep(self) -> bool:
        return any(d.end_of_sweep for d in self._items.values())

    def __repr__(self) -> str:
        return f"Minibatch({', '.join(f'{k}: {v!r}' for k, v in self._names.items())})"


# ----------------------------------------------------------------------------- the source
@dataclass
class _Slot:
    """A row of the stateful batch in truncated-BPTT mode: one sequence and where it is."""

    chunk: Chunk | None = None
    seq: int = 0
    pos: int = 0


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class MinibatchSource:
    """Minibatches of whole sequences from one deserializer, with CNTK's semantics.

    Args:
        deserializers: a deserializer (e.g. :class:`~rnnkit.data.ctf.CTFDeserializer`), or a
            list holding one.
        randomize: shuffle the order of sequences each sweep. Chunks are visited in a random
            order and sequences are shuffled within a window of ``randomization_window_in_chunks``
            chunks, so only that window is ever in memory.
        randomization_window_in_chunks: chunks per randomisation window.
        max_sweeps: passes over the data before the source is exhausted.
        max_samples: samples (time steps) delivered before the source is exhausted; the last
            minibatch is cut to whole sequences that fit, so at most one sequence goes over.
        randomization_seed: seeds the order; sweep ``k`` uses ``(seed, k)``, so a fixed seed
            gives the same order every run.
        truncation_length: when > 0, sequences are cut into windows of this many steps for
            truncated BPTT. A minibatch of ``n`` samples then holds ``n // truncation_length``
            rows (*slots*); each slot continues its sequence in the next minibatch, and a new
            sequence starts in a slot when the previous one ends
            (``MinibatchData.sequence_start``/``slots``).

    Minibatch size counts samples: a sequence of ``T`` steps costs ``T`` samples (its longest
    stream), sequences are never split (except into truncation windows), and a sequence longer
    than the minibatch size comes alone. A minibatch never spans two sweeps.

    Example:
        >>> import tempfile, os, numpy as np
        >>> from rnnkit.data.ctf import CTFDeserializer, write_ctf
        >>> path = os.path.join(tempfile.mkdtemp(), "d.ctf")
        >>> write_ctf(path, [{"x": np.ones((3, 1)), "y": [[1.0]]} for _ in range(4)])
        >>> src = MinibatchSource(CTFDeserializer(path, StreamDefs(
        ...     x=StreamDef(shape=1), y=StreamDef(shape=1))), max_sweeps=1)
        >>> mb = src.next_minibatch(6)
        >>> mb[src.streams.x].data.shape, mb[src.streams.y].data.shape
        (torch.Size([2, 3, 1]), torch.Size([2, 1, 1]))
    """

    def __init__(
        self,
        deserializers: Deserializer | Sequence[Deserializer],
        randomize: bool = True,
        randomization_window_in_chunks: int = DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS,
        max_sweeps: int = INFINITELY_REPEAT,
        max_samples: int = INFINITELY_REPEAT,
        randomization_seed: int = 0,
        truncation_length: int = 0,
    ) -> None:
        if isinstance(deserializers, (list, tuple)):
            if len(deserializers) != 1:
                raise ValueError(
                    f"MinibatchSource reads one deserializer, got {len(deserializers)}; declare "
                    "all streams of a file in one StreamDefs")
            deserializers = deserializers[0]
        if not hasattr(deserializers, "get_chunk") or not hasattr(deserializers, "streams"):
            raise TypeError(f"MinibatchSource needs a deserializer such as CTFDeserializer, got "
                            f"{type(deserializers).__name__}")
        self.deserializer = deserializers
        self.randomize = bool(randomize)
        self.window = _check_count("randomization_window_in_chunks",
                                   randomization_window_in_chunks, 1)
        self.max_sweeps = _check_count("max_sweeps", max_sweeps, 1)
        self.max_samples = _check_count("max_samples", max_samples, 1)
        self.seed = _check_count("randomization_seed", randomization_seed, 0)
        self.truncation_length = _check_count("truncation_length", truncation_length, 0)
        self.streams = StreamInfos({
            name: StreamInformation(name, d.field, d.shape, d.is_sparse, d.torch_dtype)
            for name, d in self.deserializer.streams.items()
        })
        self._sweep = 0  # index of the sweep in progress
        self._samples = 0  # samples delivered so far
        self._order: Iterator[tuple[Chunk, int]] | None = None
        self._peeked: tuple[Chunk, int] | None = None
        self._sweep_exhausted = False
        self._finished = False
        self._slots: list[_Slot] = []

    # -- order of sequences -------------------------------------------------------------------
    def _sweep_order(self, sweep: int) -> Iterator[tuple[Chunk, int]]:
        yielded = 0
        for item in self._chunk_order(sweep):
            if item[0].lengths[item[1]] > 0:
                yielded += 1
                yield item
        if not yielded:
            raise ValueError(f"{getattr(self.deserializer, 'path', 'the deserializer')} "
                             "holds no sequences")

    def _chunk_order(self, sweep: int) -> Iterator[tuple[Chunk, int]]:
        n = self.deserializer.num_chunks
        if not self.randomize:
            for c in range(n):
                chunk = self.deserializer.get_chunk(c)
                for s in range(chunk.num_sequences):
                    yield chunk, s
            return
        rng = np.random.default_rng([self.seed, sweep])
        order = rng.permutation(n)
        for start in range(0, n, self.window):
            chunks = [self.deserializer.get_chunk(int(c)) for c in order[start:start + self.window]]
            owner = np.concatenate([np.full(c.num_sequences, i) for i, c in enumerate(chunks)])
            local = np.concatenate([np.arange(c.num_sequences) for c in chunks])
            for k in rng.permutation(len(owner)):
                yield chunks[owner[k]], int(local[k])
            del chunks

    def _next_sequence(self) -> tuple[Chunk, int] | None:
        """The next sequence of the current sweep, or None at its end."""
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        if self._sweep_exhausted:
            return None
        if self._order is None:
            self._order = self._sweep_order(self._sweep)
        item = next(self._order, None)
        if item is None:
            self._sweep_exhausted = True
            self._order = None
        return item

    def _sweep_has_more(self) -> bool:
        if self._peeked is None:
            self._peeked = self._next_sequence()
        return self._peeked is not None

    def _end_sweep(self) -> None:
        self._sweep += 1
        self._sweep_exhausted = False
        self._order = None
        if self._sweep >= self.max_sweeps:
            self._finished = True

    # -- public API -----------------------------------------------------------------------------
    @property
    def current_sweep(self) -> int:
        """Index of the sweep the next minibatch comes from."""
        return self._sweep

    @property
    def total_num_samples(self) -> int:
        """Samples delivered so far."""
        return self._samples

    def stream_infos(self) -> list[StreamInformation]:
        return list(self.streams)

    def stream_info(self, name: str) -> StreamInformation:
        return self.streams[name]

    def next_minibatch(self, minibatch_size_in_samples: int,
                       input_map: Mapping[Any, StreamInformation] | None = None) -> Minibatch:
        """The next minibatch of about ``minibatch_size_in_samples`` samples.

        Returns a :class:`Minibatch` mapping each stream (or each key of ``input_map``) to its
        :class:`MinibatchData`; empty once ``max_sweeps`` or ``max_samples`` is reached.
        """
        size = _check_count("minibatch_size_in_samples", minibatch_size_in_samples, 1)
        if input_map is not None:
            for key, info in input_map.items():
                if not isinstance(info, StreamInformation) or info.name not in self.streams:
                    raise KeyError(f"input_map[{key!r}] must be one of source.streams "
                                   f"({', '.join(s.name for s in self.streams)}), got {info!r}")
        if self._finished or self._samples >= self.max_samples:
            self._finished = True
            return Minibatch({}, {})
        budget = min(size, self.max_samples - self._samples)
        parts = None
        # a sweep that ended exactly at the previous minibatch yields nothing: take the next
        for _ in range(2):
            if self.truncation_length:
                parts = self._truncated_minibatch(size, budget)
            else:
                parts = self._whole_minibatch(budget)
            if parts is not None or self._finished:
                break
        if parts is None:
            return Minibatch({}, {})
        datas, end_of_sweep = parts
        mb_samples = int(np.maximum.reduce([d.lengths.numpy() for d in datas.values()]).sum())
        self._samples += mb_samples
        for d in datas.values():
            d.end_of_sweep = end_of_sweep
        if input_map is None:
            items = {self.streams[name]: d for name, d in datas.items()}
            names = {name: self.streams[name] for name in datas}
        else:
            items = {key: datas[info.name] for key, info in input_map.items()}
            names = {info.name: key for key, info in input_map.items()}
        return Minibatch(items, names)

    def __iter__(self) -> Iterator[Minibatch]:
        raise TypeError("iterate with iter_minibatches(minibatch_size_in_samples)")

    def iter_minibatches(self, minibatch_size_in_samples: int) -> Iterator[Minibatch]:
        """Yield minibatches until the source is exhausted (needs a finite ``max_sweeps`` or
        ``max_samples`` to end)."""
        while mb := self.next_minibatch(minibatch_size_in_samples):
            yield mb

    # -- packing --------------------------------------------------------------------------------
    def _whole_minibatch(self, budget: int) -> tuple[dict[str, MinibatchData], bool] | None:
        picked: list[tuple[Chunk, int]] = []
        total = 0
        while True:
            item = self._next_sequence()
            if item is None:
                break
            length = int(item[0].lengths[item[1]])
            if picked and total + length > budget:
                self._peeked = item
                break
            picked.append(item)
            total += length
            if total >= budget:
                break
        end_of_sweep = not self._sweep_has_more()
        if end_of_sweep:
            self._end_sweep()
        if not picked:
            return None
        windows = [(chunk, s, 0, int(chunk.lengths[s])) for chunk, s in picked]
        return self._assemble(windows, None, None), end_of_sweep

    def _truncated_minibatch(self, size: int,
                             budget: int) -> tuple[dict[str, MinibatchData], bool] | None:
        tl = self.truncation_length
        num_slots = max(1, size // tl)
        if len(self._slots) != num_slots:
            if any(s.chunk is not None for s in self._slots):
                raise ValueError(
                    f"minibatch size changed from {len(self._slots) * tl} to {size} samples in "
                    f"the middle of truncated sequences; with truncation_length={tl} keep "
                    "minibatch_size_in_samples fixed until the sweep ends")
            self._slots = [_Slot() for _ in range(num_slots)]
        windows, starts, slot_ids = [], [], []
        total = 0
        for k, slot in enumerate(self._slots):
            if slot.chunk is None:
                item = self._next_sequence()
                if item is None:
                    continue
                slot.chunk, slot.seq, slot.pos = item[0], item[1], 0
            length = int(slot.chunk.lengths[slot.seq])
            stop = min(slot.pos + tl, length)
            if windows and total + stop - slot.pos > budget:
                break
            windows.append((slot.chunk, slot.seq, slot.pos, stop))
            starts.append(slot.pos == 0)
            slot_ids.append(k)
            total += stop - slot.pos
            slot.pos = stop
            if stop >= length:
                slot.chunk = None
        if not windows:
            self._end_sweep()
            return None
        end_of_sweep = (all(s.chunk is None for s in self._slots)
                        and not self._sweep_has_more())
        if end_of_sweep:
            self._end_sweep()
        return self._assemble(windows, np.array(starts), np.array(slot_ids)), end_of_sweep

    def _assemble(self, windows: list[tuple[Chunk, int, int, int]], starts: np.ndarray | None,
                  slots: np.ndarray | None) -> dict[str, MinibatchData]:
        """Pad the steps ``[begin, end)`` of each picked sequence, stream by stream.

        Vectorised per chunk: a minibatch draws from at most a window of chunks, so the Python
        work is per chunk and per stream, not per sequence.
        """
        groups: dict[int, tuple[Chunk, list[int]]] = {}
        for i, (chunk, *_rest) in enumerate(windows):
            groups.setdefault(id(chunk), (chunk, []))[1].append(i)
        spec = np.array([(s, b, e) for _, s, b, e in windows], dtype=np.int64).reshape(-1, 3)
        num = len(windows)
        out = {}
        for name, sdef in self.deserializer.streams.items():
            lengths = np.zeros(num, dtype=np.int64)  # (B,)
            pieces = []  # per chunk: (stream chunk, batch rows, time rows, source rows)
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
                pieces.append((st, b_idx, t_idx, np.repeat(lo, span) + t_idx))
            t = int(lengths.max()) if num else 0
            if not sdef.is_sparse:
                padded = np.zeros((num, t, sdef.dim), dtype=sdef.np_dtype)  # (B, T, dim)
                for st, b_idx, t_idx, src in pieces:
                    padded[b_idx, t_idx] = st.values[src]
                padded = padded.reshape(num, t, *sdef.sample_shape)  # (B, T, *D)
                out[name] = MinibatchData(lengths, sdef.shape, dense=padded,
                                          sequence_start=starts, slots=slots,
                                          dtype=sdef.torch_dtype)
            else:
                bs, ts, cols, vals = [], [], [], []
                for st, b_idx, t_idx, src in pieces:
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
                out[name] = MinibatchData(lengths, sdef.shape, sparse=coo,
                                          sequence_start=starts, slots=slots,
                                          dtype=sdef.torch_dtype)
        return out


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
