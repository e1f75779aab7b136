"""benchmarks/first_call.py: a new process's first compiled call after set-up (issue 15).

Runs one fresh process and reports its times (printed, never asserted: speed lives in
benchmarks/); checks that the call ran on the compiled kernels. Skipped where the kernels
are not built (no toolchain, or the set-up step has not run): this test must not build.
"""

from __future__ import annotations

import pytest


def test_first_compiled_call_in_a_new_process(capsys):
    from benchmarks import first_call

    directory, built = first_call.cache_entry()
    if not built:
        pytest.skip(f"kernels not built in {directory} (python -m rnnkit.engine.compiled build)")
    assert first_call.main(["--runs", "1", "--hidden", "8", "--steps", "5", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "built before this run (set-up)" in out
    assert "path: compiled" in out, out
    with capsys.disabled():  # the figure, for whoever reads the test log
        print("\n" + out.strip().splitlines()[-1])
