"""Build, cache and call the C++ fast path of the CTF reader (``ctf_parser.cpp``).

The parser is plain C ABI code (no Python or torch headers), compiled with the system C++
compiler in about a second on first use and loaded with :mod:`ctypes`, which releases the GIL
during the call. The shared library is cached in the same folder as rnnkit's compiled kernels,
keyed by a hash of the source, the compiler and the flags:
``$RNNKIT_EXTENSIONS_DIR`` or ``~/.cache/rnnkit/extensions``. The cache location is computed
here rather than imported from ``rnnkit.engine`` because ``rnnkit.data`` sits below the engine.

``RNNKIT_CTF_NATIVE=0`` turns the fast path off; without a compiler it is off as well, and
:func:`unavailable_reason` says why. The Python parser then does all the work (about ten times
slower), with the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

_SOURCE = Path(__file__).with_name("ctf_parser.cpp")
_FLAGS = ["-O2", "-std=c++17", "-shared", "-fPIC", "-fno-exceptions"]
#: how many distinct undeclared stream names one call reports (ctf_parser.cpp kMaxUndeclared)
MAX_UNDECLARED = 16

OK, ERROR, SHORT_SAMPLE, CAPACITY = 0, 1, 2, 3

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None


def _cache_root() -> Path:
    env = os.environ.get("RNNKIT_EXTENSIONS_DIR")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".cache" / "rnnkit" / "extensions"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    digest = hashlib.sha256()
    for part in (source, " ".join(_FLAGS).encode(), compiler.encode(),
                 "".join(version).encode(), platform.machine().encode()):
        digest.update(part)
        digest.update(b"\0")
    folder = _cache_root() / f"ctf_parser-{digest.hexdigest()[:16]}"
    target = folder / "ctf_parser.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: concurrent builders never see a partial file
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The loaded parser, or None when it is off or cannot be built (see unavailable_reason)."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if os.environ.get("RNNKIT_CTF_NATIVE", "1") == "0":
            _reason = "RNNKIT_CTF_NATIVE=0"
            return None
        compiler = _compiler()
        if compiler is None:
            _reason = "no C++ compiler found (set CXX or install g++)"
            return None
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except (OSError, RuntimeError) as e:
            _reason = f"building {_SOURCE.name} failed: {e}"
            return None
        fn = lib.rnnkit_ctf_parse
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p] + \
            [ctypes.c_void_p] * 11 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
        _lib = lib
        return _lib


def unavailable_reason() -> str | None:
    """Why the fast path is off (None when it is on)."""
    load()
    return _reason


def _addresses(arrays: list[np.ndarray]) -> np.ndarray:
    return np.array([a.ctypes.data for a in arrays], dtype=np.uintp)


def parse(lib: ctypes.CDLL, raw: bytes, specs: list[tuple[bytes, int, bool, np.dtype]]
          ) -> tuple[int, int, dict]:
    """Parse one chunk. ``specs``: per stream (field name, dim, is_sparse, dtype).

    Returns ``(code, line, result)``: code OK with ``result`` holding ``lengths``,
    ``first_lines``, per-stream ``streams`` (values, indices, nnz_offsets, seq_offsets) and
    ``undeclared`` (the names met, or None when more than MAX_UNDECLARED); otherwise the code
    and the 0-based line where the parser stopped.
    """
    size = len(raw)
    lines = raw.count(b"\n") + 1
    seq_cap = lines
    values, indices, nnz, seqs = [], [], [], []
    values_caps, samples_caps = [], []
    for _name, dim, sparse, dtype in specs:
        samples_cap = lines  # at most one sample per stream per line
        if sparse:
            cap = size // 4 + 1  # an entry "i:v" and a separator take 4 bytes at least
            indices.append(np.empty(cap, np.int64))
            offsets = np.empty(samples_cap + 1, np.int64)
            offsets[0] = 0
            nnz.append(offsets)
        else:
            cap = min(samples_cap * dim, size // 2 + 1)  # a value and a separator: 2 bytes
            indices.append(np.empty(0, np.int64))
            nnz.append(np.empty(0, np.int64))
        # np.empty pages that are never written stay virtual: no resident memory
        values.append(np.empty(cap, dtype))
        values_caps.append(cap)
        samples_caps.append(samples_cap)
        offsets = np.empty(seq_cap + 1, np.int64)
        offsets[0] = 0
        seqs.append(offsets)
    names = b"".join(s[0] for s in specs)
    name_offsets = np.cumsum([0] + [len(s[0]) for s in specs], dtype=np.int64)
    dims = np.array([s[1] for s in specs], dtype=np.int64)
    flags = np.array([(1 if s[2] else 0) | (2 if np.dtype(s[3]) == np.float64 else 0)
                      for s in specs], dtype=np.int64)
    lengths = np.empty(seq_cap, np.int64)
    first_lines = np.empty(seq_cap, np.int64)
    counts = np.zeros(1 + 2 * len(specs), np.int64)
    undeclared = np.zeros(2 * MAX_UNDECLARED + 2, np.int64)
    error_line = np.zeros(1, np.int64)
    value_ptrs, index_ptrs = _addresses(values), _addresses(indices)
    nnz_ptrs, seq_ptrs = _addresses(nnz), _addresses(seqs)
    caps = np.array(values_caps, dtype=np.int64)
    scaps = np.array(samples_caps, dtype=np.int64)
    code = lib.rnnkit_ctf_parse(
        raw, size, len(specs), names, name_offsets.ctypes.data, dims.ctypes.data,
        flags.ctypes.data, value_ptrs.ctypes.data, caps.ctypes.data, index_ptrs.ctypes.data,
        nnz_ptrs.ctypes.data, seq_ptrs.ctypes.data, scaps.ctypes.data, lengths.ctypes.data,
        first_lines.ctypes.data, seq_cap, counts.ctypes.data, undeclared.ctypes.data,
        error_line.ctypes.data)
    if code != OK:
        return int(code), int(error_line[0]), {}
    n_seq = int(counts[0])
    streams = []
    for i, (_name, dim, sparse, _dtype) in enumerate(specs):
        n_samples, n_values = int(counts[1 + 2 * i]), int(counts[2 + 2 * i])
        # copies: the oversized buffers are released when this function returns
        entry = {"seq_offsets": seqs[i][: n_seq + 1].copy()}
        if sparse:
            entry["values"] = values[i][:n_values].copy()
            entry["indices"] = indices[i][:n_values].copy()
            entry["nnz_offsets"] = nnz[i][: n_samples + 1].copy()
        else:
            entry["values"] = values[i][: n_samples * dim].copy().reshape(n_samples, dim)
        streams.append(entry)
    count = int(undeclared[2 * MAX_UNDECLARED])
    names_met = None if undeclared[2 * MAX_UNDECLARED + 1] else [
        raw[int(undeclared[2 * k]): int(undeclared[2 * k]) + int(undeclared[2 * k + 1])]
        for k in range(count)]
    return OK, 0, {"lengths": lengths[:n_seq].copy(), "first_lines": first_lines[:n_seq].copy(),
                   "streams": streams, "undeclared": names_met}
