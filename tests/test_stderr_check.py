"""The stderr check (tests/stderr_check.py) turns a passing test into a failure when BLAS or
oneDNN complains on stderr from C. Proved on a throw-away test file run by a child pytest with
the plugin loaded and pytest's default fd capture."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.stderr_check import complaints

ROOT = Path(__file__).resolve().parent.parent

# Real lines as the libraries print them (MKL's xerbla, reference/OpenBLAS xerbla, oneDNN).
MKL = "Intel oneMKL ERROR: Parameter 8 was incorrect on entry to SGEMM ."
OPENBLAS = " ** On entry to SGEMM  parameter number  8 had an illegal value"
ONEDNN = "onednn_verbose,v1,primitive,create:dispatch,error,could not create a primitive"
DNNL = "dnnl_verbose,error,cpu,matmul,invalid arguments"

CHILD_TESTS = f'''
import ctypes, os, sys

def test_mkl_line_from_fd_2():
    os.write(2, b"{MKL}\\n")

def test_openblas_line_from_fd_2():
    os.write(2, b"{OPENBLAS}\\n")

def test_onednn_line_from_fd_2():
    os.write(2, b"{ONEDNN}\\n")

def test_dnnl_line_from_c_stdio():
    libc = ctypes.CDLL(None)
    libc.dprintf(2, b"%s\\n", b"{DNNL}")

def test_harmless_stderr_passes():
    os.write(2, b"a warning that is not a BLAS complaint\\n")
    print("onednn_verbose,info,cpu,runtime:OpenMP", file=sys.stderr)

def test_failing_test_keeps_its_own_failure():
    os.write(2, b"{MKL}\\n")
    assert 1 == 2
'''


def run_child(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_child.py").write_text(textwrap.dedent(source))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "tests.stderr_check", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
         *args, str(tmp_path / "test_child.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_complaints_on_stderr_fail_a_passing_test(tmp_path):
    result = run_child(tmp_path, CHILD_TESTS)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "5 failed, 1 passed" in text, text
    for name in ("mkl_line", "openblas_line", "onednn_line", "dnnl_line_from_c_stdio"):
        assert f"FAILED test_child.py::test_{name}" in text, text
    assert "a numeric library complained on stderr/stdout" in text
    assert "Parameter 8 was incorrect on entry to SGEMM" in text
    assert "assert 1 == 2" in text  # a real failure is reported as itself


def test_real_mkl_complaint_is_caught(tmp_path):
    # The very call of issue 9: sgemm with a leading dimension (parameter 8) smaller than the
    # matrix, through the BLAS torch links. MKL prints its complaint from C (on stdout) and
    # computes nothing.
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        has_sgemm = hasattr(ctypes.CDLL(str(lib)), "sgemm_")
    except OSError:
        has_sgemm = False
    if not has_sgemm:
        pytest.skip("torch links no Fortran sgemm_ here")
    source = f'''
    import ctypes
    import torch

    def test_bad_leading_dimension():
        f = ctypes.CDLL({str(lib)!r}).sgemm_
        n = ctypes.c_char(b"N")
        i = lambda v: ctypes.byref(ctypes.c_int(v))
        one, zero = ctypes.c_float(1), ctypes.c_float(0)
        a, b, c = torch.ones(3, 3), torch.ones(3, 3), torch.zeros(3, 3)
        p = lambda t: ctypes.c_void_p(t.data_ptr())
        # M=N=K=3, lda=1 (< M: parameter 8), ldb=3, ldc=3
        f(ctypes.byref(n), ctypes.byref(n), i(3), i(3), i(3), ctypes.byref(one), p(a), i(1),
          p(b), i(3), ctypes.byref(zero), p(c), i(3))
        assert c.abs().sum() == 0  # the product was skipped: only stderr says so
    '''
    result = run_child(tmp_path, source)
    text = result.stdout + result.stderr
    assert result.returncode == 1 and "1 failed" in text, text
    assert "Parameter 8 was incorrect on entry to SGEMM" in text, text


def test_complaint_patterns():
    assert complaints(f"ok\n{MKL}\n{OPENBLAS}\n{ONEDNN}\n{DNNL}\n") == [
        MKL, OPENBLAS.strip(), ONEDNN, DNNL]
    assert complaints("onednn_verbose,info,oneDNN v3.5\nUserWarning: something\n") == []
