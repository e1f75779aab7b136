"""Suite-wide settings.

A test that passes while MKL, OpenBLAS or oneDNN complains on stderr fails: see
tests/stderr_check.py (the hook below is imported from there).

Tests run single-threaded: on our 2-core machines intra-op threads (OpenMP in LayerNorm,
GEMMs) stall for milliseconds per call when the cores are busy, which made small gradchecks
30x slower. Timings belong to benchmarks/, never to tests.
"""

import pytest
import torch

from tests.stderr_check import pytest_runtest_makereport  # noqa: F401  (a pytest hook)


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def compiled_kernels():
    """rnnkit's C++ kernels, built once for the whole session (about 80-120 s on a fresh
    machine, then loaded from ~/.cache/rnnkit/extensions): the build shows up here, in the
    session's setup, rather than inside whichever test first reaches them. Yields
    ``compiled.available()``: ``(True, description)`` or ``(False, why)``; the tests that
    need the kernels skip on False."""
    from rnnkit.engine import compiled

    return compiled.available()
