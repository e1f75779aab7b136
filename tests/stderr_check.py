"""A pytest plugin: a test that passes while BLAS or oneDNN complains on stderr (or stdout) fails.

MKL, OpenBLAS and reference BLAS report a bad argument (a leading dimension smaller than the
matrix, a negative size) by printing a line from C and returning without computing anything;
the caller gets whatever was in the output buffer. That is how issue 9's hidden-size-1 bug hid:
numbers off by 0.1-0.8, and only "Parameter 8 was incorrect on entry to SGEMM" on stderr.
pytest captures file descriptors 1 and 2 by default (``--capture=fd``), so these C-level
writes land in the report's captured output, where this hook looks for them (MKL's xerbla
writes to stdout, not stderr; OpenBLAS and oneDNN to stderr). With ``-s`` nothing is captured
and nothing is checked.

Loaded by ``tests/conftest.py``; ``tests/test_stderr_check.py`` proves it fires.
"""

from __future__ import annotations

import re

import pytest

#: What the numeric libraries print when they refuse or botch a call.
COMPLAINTS = re.compile(
    r"Parameter \d+ was incorrect on entry to"  # MKL xerbla
    r"|(?:Intel (?:one)?MKL|MKL) ERROR"  # MKL's other errors
    r"|\*\* On entry to \w+"  # OpenBLAS / reference BLAS xerbla
    r"|parameter number\s+\d+ had an illegal value"
    r"|OpenBLAS\s*:\s*Program (?:will terminate|is Terminated)"
    r"|BLAS\s*:\s*Program is Terminated"
    r"|could not create a primitive"  # oneDNN
    r"|(?:onednn|dnnl|mkldnn)_verbose[^\n]*\berror\b",
    re.IGNORECASE,
)


def complaints(text: str) -> list[str]:
    """The lines of ``text`` that are BLAS / oneDNN complaints."""
    return [line.strip() for line in text.splitlines() if COMPLAINTS.search(line)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.passed or hasattr(report, "wasxfail"):
        return
    # Only this phase's capture (a call report's sections also hold setup's), on both
    # streams: MKL's xerbla prints on stdout, OpenBLAS and oneDNN on stderr.
    titles = {f"Captured stderr {report.when}", f"Captured stdout {report.when}"}
    found = complaints("\n".join(text for name, text in report.sections if name in titles))
    if not found:
        return
    report.outcome = "failed"
    shown = "\n".join(f"    {line}" for line in found[:10])
    more = f"\n    ... and {len(found) - 10} more" if len(found) > 10 else ""
    report.longrepr = (
        f"{item.nodeid} passed its assertions, but a numeric library complained on stderr/stdout "
        f"during {report.when} (a BLAS/oneDNN call was rejected and its result is not to be "
        f"trusted; see tests/stderr_check.py):\n{shown}{more}"
    )
