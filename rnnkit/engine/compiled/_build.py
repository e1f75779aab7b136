"""Build and load the C++ extension of :mod:`rnnkit.engine.compiled` on first use.

The sources in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` into a cache
directory keyed by everything that changes the binary: the torch and Python versions, the
source texts and the compiler flags. The flags depend on the CPU that builds them
(AVX-512 / AVX2+FMA / baseline, as ``torch.backends.cpu.get_cpu_capability()`` reports), so
a cache shared between machines never hands an AVX-512 binary to a CPU without it.
``-march=native`` is deliberately not used for the same reason.

Cache directory: ``$RNNKIT_EXTENSIONS_DIR`` or ``~/.cache/rnnkit/extensions``.
``RNNKIT_DISABLE_COMPILED=1`` turns the extension off (the engine then falls back).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

_CSRC = Path(__file__).with_name("csrc")
# Every C++ file in csrc/: a cell family's kernel registers itself with the step-loop
# template (RNNKIT_REGISTER_FAMILY), so adding one needs no edit here or in bindings.cpp.
_SOURCES = tuple(sorted(p.name for p in _CSRC.glob("*.cpp")))
_HEADERS = tuple(sorted(p.name for p in _CSRC.glob("*.h")))

# Flag sets tried in order; the first that builds wins. CPU_CAPABILITY names the inline
# namespace of ATen's vector classes: a name of our own keeps our instantiations apart
# from torch's (no ODR clash), CPU_CAPABILITY_<X> selects the implementation.
_COMMON_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_CAPABILITY_FLAGS = {
    "AVX512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx2",
        "-mfma",
        "-DCPU_CAPABILITY=rnnkit_avx512",
        "-DCPU_CAPABILITY_AVX512",
    ],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=rnnkit_avx2", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": ["-DCPU_CAPABILITY=rnnkit_default"],
}

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None


def cache_root() -> Path:
    """Where built extensions are kept."""
    env = os.environ.get("RNNKIT_EXTENSIONS_DIR")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".cache" / "rnnkit" / "extensions"


def capabilities() -> list[str]:
    """Flag sets to try on this CPU, best first."""
    try:
        best = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch: be conservative
        best = "DEFAULT"
    order = ["AVX512", "AVX2", "DEFAULT"]
    if best not in order:
        return ["DEFAULT"]
    return order[order.index(best) :]


def _key(flags: list[str]) -> str:
    digest = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        digest.update(name.encode())
        digest.update((_CSRC / name).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    digest.update(str(sysconfig.get_platform()).encode())
    return digest.hexdigest()[:16]


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _ensure_ninja_on_path() -> None:
    # pip installs ninja next to the interpreter, which is not on PATH when a venv's
    # python is run without activating the venv.
    if shutil.which("ninja"):
        return
    bindir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bindir, "ninja")):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


# A build takes minutes; a lock file much older than that was left by a process that died
# mid-build (Ctrl-C, OOM), and cpp_extension would wait for it forever.
_STALE_LOCK_SECONDS = 30 * 60


def _remove_stale_lock(build_dir: Path) -> None:
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            lock.unlink()
    except FileNotFoundError:
        pass


def _stage_sources(build_dir: Path) -> Path:
    """Copy the sources into the build directory and return that copy's folder.

    ninja records each source by its path: building one cache entry from two checkouts of
    the same sources (two worktrees, a venv and a clone) rewrote build.ninja with the other
    path and recompiled everything (minutes) at every switch. The entry is keyed by the
    sources' contents, so a copy inside it is the same for every checkout; it is written once
    (atomically), so its timestamps do not trigger rebuilds either.
    """
    staged = build_dir / "src"
    staged.mkdir(exist_ok=True)
    for name in _SOURCES + _HEADERS:
        target = staged / name
        data = (_CSRC / name).read_bytes()
        if target.exists() and target.read_bytes() == data:
            continue
        tmp = staged / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return staged


def build_dir(capability: str) -> Path:
    """The cache entry for ``capability`` on this torch, Python and source text."""
    key = _key(_COMMON_FLAGS + _CAPABILITY_FLAGS[capability])
    return cache_root() / f"{torch.__version__}-{capability.lower()}-{key}"


def _announce_build(capability: str, directory: Path) -> None:
    """One line on stderr while an on-demand build runs (it takes minutes)."""
    print(f"rnnkit: building the compiled kernels for this CPU ({capability}) into "
          f"{directory}: once, a few minutes (set-up does it ahead: python -m "
          f"rnnkit.engine.compiled build)", file=sys.stderr, flush=True)


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """The extension already built in ``directory``, imported without asking ninja.

    The directory's key covers everything that changes the binary (sources, flags, torch,
    Python), so a finished ``.so`` there is the right one: importing it directly takes
    milliseconds where ``cpp_extension.load`` spends about a second starting ninja to
    confirm it. A build in progress (its ``lock`` file) or a library that does not import
    (a build killed while linking) goes the slow way, which waits for or redoes the build.
    """
    library = directory / f"{name}.so"
    if not library.exists() or (directory / "lock").exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    module.rnnkit_build_dir = str(directory)
    return module


def _build(capability: str, announce: bool = False) -> ModuleType:
    flags = _COMMON_FLAGS + _CAPABILITY_FLAGS[capability]
    directory = build_dir(capability)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(directory)
    name = f"rnnkit_compiled_{capability.lower()}"
    built = _import_built(name, directory)
    if built is not None:
        return built
    if announce and not (directory / f"{name}.so").exists():
        _announce_build(capability, directory)
    from torch.utils import cpp_extension  # a second to import: only when building

    sources = _stage_sources(directory)
    # cpp_extension.load serialises concurrent builds of one directory with a file lock,
    # so several pytest workers or processes may call this at once.
    module = cpp_extension.load(
        # The name stays fixed so that a rebuild after a source change recompiles only the
        # changed files when a previous build directory is reused; the key is in the path.
        name=name,
        sources=[str(sources / name) for name in _SOURCES],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )
    module.rnnkit_build_dir = str(directory)
    return module


def load(announce: bool = True) -> tuple[ModuleType | None, str | None]:
    """Return ``(module, None)`` or ``(None, reason)``; builds at most once per process.

    A build that is not in the cache yet says so on stderr while it runs (``announce``;
    ``python -m rnnkit.engine.compiled build`` prints its own line instead)."""
    global _module, _error
    with _lock:
        if _module is not None or _error is not None:
            return _module, _error
        if os.environ.get("RNNKIT_DISABLE_COMPILED", "") not in ("", "0"):
            _error = "compiled kernels disabled by RNNKIT_DISABLE_COMPILED"
            return None, _error
        if _compiler() is None:
            _error = "no C++ compiler found (set CXX or install g++ to enable compiled kernels)"
            return None, _error
        _ensure_ninja_on_path()
        if not shutil.which("ninja"):
            _error = "ninja not found (pip install ninja to enable compiled kernels)"
            return None, _error
        failures = []
        for capability in capabilities():
            try:
                _module = _build(capability, announce and not failures)
                _module.rnnkit_capability = capability
                return _module, None
            except Exception as exc:  # a failed build must not break the caller
                lines = str(exc).strip().splitlines()
                errors = [line.strip() for line in lines if "error" in line.lower()]
                detail = (errors or lines or [type(exc).__name__])[:3]
                failures.append(f"{capability}: " + " | ".join(detail))
        _error = "building the C++ extension failed (" + "; ".join(failures) + ")"
        return None, _error
