"""Suite-wide settings.

Tests run single-threaded: on our 2-core machines intra-op threads (OpenMP in LayerNorm,
GEMMs) stall for milliseconds per call when the cores are busy, which made small gradchecks
30x slower. Timings belong to benchmarks/, never to tests.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
