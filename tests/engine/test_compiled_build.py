"""Kernels built at set-up: ``python -m rnnkit.engine.compiled build``, the on-demand build's
one stderr line, the cache keyed by CPU capability, and loading a built extension without
ninja."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rnnkit.engine.compiled import __main__ as command
from rnnkit.engine.compiled import _build

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "rnnkit.engine.compiled", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)


def test_build_without_a_toolchain_says_so_and_succeeds():
    """A machine without the kernels still sets up: rnnkit runs those cells on the loop."""
    result = _run("build", RNNKIT_DISABLE_COMPILED="1")
    assert result.returncode == 0, result.stderr
    assert "compiled kernels not built: compiled kernels disabled by RNNKIT_DISABLE_COMPILED" \
        in result.stdout and "eager loop" in result.stdout


def test_where_names_the_cache_and_the_capability(tmp_path):
    result = _run("where", RNNKIT_EXTENSIONS_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(tmp_path)) and "builds for" in result.stdout


def test_a_failed_build_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(_build, "load", lambda announce=True: (None, "building the C++ "
                                                                     "extension failed (x)"))
    assert command.main(["build"]) == 1
    assert "building the compiled kernels failed" in capsys.readouterr().err


def test_the_cache_is_keyed_by_cpu_capability(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_EXTENSIONS_DIR", str(tmp_path))
    directories = {_build.build_dir(c) for c in ("AVX512", "AVX2", "DEFAULT")}
    assert len(directories) == 3
    assert all(d.parent == tmp_path for d in directories)
    assert [d.name.split("-")[1] for d in map(_build.build_dir, ("AVX512", "AVX2"))] == [
        "avx512", "avx2"]


def test_an_on_demand_build_says_so_once_on_stderr(tmp_path, monkeypatch, capsys):
    """cpp_extension.load stands in for the compiler; the line comes before it runs, and a
    cached library is imported without it (and without the line)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("RNNKIT_EXTENSIONS_DIR", str(tmp_path))
    calls = []

    def fake_load(name, build_directory, **kwargs):
        calls.append(capsys.readouterr().err)  # what stderr said before the build ran
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    module = _build._build("AVX2", announce=True)
    assert module.rnnkit_build_dir == str(_build.build_dir("AVX2"))
    (before,) = calls
    assert before.count("\n") == 1 and "rnnkit: building the compiled kernels for this CPU " \
        "(AVX2)" in before and "python -m rnnkit.engine.compiled build" in before
    _build._build("AVX2", announce=False)
    assert capsys.readouterr().err == ""


def test_a_built_library_is_imported_directly(compiled_kernels):
    if not compiled_kernels[0]:
        pytest.skip(compiled_kernels[1])
    module, _ = _build.load()
    directory = Path(module.rnnkit_build_dir)
    name = f"rnnkit_compiled_{module.rnnkit_capability.lower()}"
    again = _build._import_built(name, directory)
    assert again is not None and hasattr(again, "__file__")
    assert Path(again.__file__).parent == directory


def test_a_missing_or_locked_library_is_left_to_the_build(tmp_path):
    assert _build._import_built("rnnkit_compiled_avx2", tmp_path) is None
    (tmp_path / "rnnkit_compiled_avx2.so").write_bytes(b"not a library")
    assert _build._import_built("rnnkit_compiled_avx2", tmp_path) is None  # does not import
    (tmp_path / "lock").write_text("")
    assert _build._import_built("rnnkit_compiled_avx2", tmp_path) is None
