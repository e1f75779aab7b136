"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest

from rnnkit.engine import compiled
from rnnkit.engine.compiled import _build


@pytest.fixture(scope="module")
def ext():
    """The compiled extension module; the test is skipped where the kernels cannot be built."""
    ok, reason = compiled.available()
    if not ok:
        pytest.skip(f"compiled kernels unavailable: {reason}")
    return _build.load()[0]
