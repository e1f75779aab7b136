"""Atomic file writes: nothing the user owns is half-written if a run dies mid-write.

A temporary file in the target's folder is written, flushed and fsynced, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows); on any error the temporary file is
removed and the previous file, if any, is untouched. The file gets the mode a plain ``open``
would give it (the previous file's, or 0o666 less the umask), not ``mkstemp``'s private 0o600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "file_mode"]


def file_mode(path: Path) -> int:
    """The mode ``path`` has, or the mode ``open(path, "w")`` would create it with."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], *,
                 binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    Text files are opened with ``newline=""`` (what the ``csv`` module wants). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, file_mode(path))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), binary=True)
