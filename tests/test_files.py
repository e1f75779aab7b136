"""rnnkit._files.atomic_write: the file lands whole, and with the mode a plain open() gives it
(mkstemp's temporary file is private, 0o600, which a user's results and checkpoints must not
inherit)."""

import os
import stat

import pytest

from benchmarks import harness
from rnnkit._files import atomic_write, atomic_write_bytes
from rnnkit.data import Vocabulary, write_ctf
from rnnkit.data.idx import write_idx


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_mode_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        with open(tmp_path / "b.bin", "wb") as f:  # the oracle: what open() creates
            f.write(b"abc")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "c.bin", b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.bin") == 0o644
    assert mode(tmp_path / "c.bin") == 0o600


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write("new\n"))
    assert path.read_text() == "new\n" and mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("kept")

    def fail(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "kept" and os.listdir(tmp_path) == ["kept.txt"]


def test_data_writers_use_it(tmp_path):
    import numpy as np

    old = os.umask(0o022)
    try:
        write_idx(str(tmp_path / "x-idx1-ubyte"), np.arange(3, dtype=np.uint8))
        Vocabulary.build("abc").save(tmp_path / "vocab.json")
        write_ctf(tmp_path / "a.ctf", [{"x": np.zeros((2, 2))}])
        harness.write_atomic(tmp_path / "bench.md", "ratio \u2264 1\n")  # not ASCII
    finally:
        os.umask(old)
    assert mode(tmp_path / "x-idx1-ubyte") == mode(tmp_path / "vocab.json") == 0o644
    assert mode(tmp_path / "a.ctf") == mode(tmp_path / "bench.md") == 0o644
    assert (tmp_path / "bench.md").read_text(encoding="utf-8") == "ratio \u2264 1\n"


def test_onnx_export_gets_the_mode_open_would_give(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    import rnnkit
    from rnnkit.export import export_onnx

    old = os.umask(0o022)
    try:
        path = export_onnx(rnnkit.GRU(3, 4, batch_first=True), tmp_path / "m.onnx",
                           torch.randn(2, 5, 3), dynamic_time=False)
    finally:
        os.umask(old)
    assert mode(path) == 0o644
    os.chmod(path, 0o640)  # re-exported over: the file keeps its mode
    export_onnx(rnnkit.GRU(3, 4, batch_first=True), path, torch.randn(2, 5, 3),
                dynamic_time=False)
    assert mode(path) == 0o640
