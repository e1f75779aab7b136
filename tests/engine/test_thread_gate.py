"""The compiled kernels' thread gate (csrc/common.h ThreadGate; docs/engine-compiled.md,
"Steady under load"): its decisions from region timings, and that a closed gate changes
where the per-step work runs, never the numbers."""

from __future__ import annotations

import time

import pytest
import torch

from rnnkit.cells import ElmanCell, LSTMCell
from rnnkit.engine import compiled

WIN, LOSS = (10, 20), (30, 20)  # (wall ns, busy ns): threads paid / one thread was faster
WINDOW, PROBE, PROBE_LOST = 16, 8, 1  # ThreadGate::kWindow, kProbe, kProbeLost


@pytest.fixture
def ext(ext):
    """The extension (tests/engine/conftest.py), the gate back to its defaults afterwards."""
    yield ext
    compiled.set_thread_gate()  # defaults, reopened


def _state(ext):
    return ext.thread_gate()


def _close(ext, min_ns=10**12, max_ns=10**12):
    ext.set_thread_gate(True, min_ns, max_ns)
    for _ in range(WINDOW // 2):
        ext.thread_gate_report(*LOSS)
    assert _state(ext)["closed"] == 1


def test_an_idle_gate_stays_open_and_counts(ext):
    ext.set_thread_gate(True)
    before = _state(ext)
    for _ in range(3 * WINDOW):
        ext.thread_gate_report(*WIN)
    after = _state(ext)
    assert after["closed"] == 0 and after["regions"] - before["regions"] == 3 * WINDOW
    assert after["lost"] == before["lost"] and ext.thread_gate_open()


def test_it_closes_when_half_of_the_last_window_lost(ext):
    ext.set_thread_gate(True)
    # losses scattered among more wins than the window holds never close it
    for _ in range(4 * WINDOW):
        ext.thread_gate_report(*LOSS)
        ext.thread_gate_report(*WIN)
        ext.thread_gate_report(*WIN)
    assert _state(ext)["closed"] == 0
    for _ in range(WINDOW):  # a window of wins clears the history
        ext.thread_gate_report(*WIN)
    closings = _state(ext)["closings"]
    for k in range(WINDOW // 2):
        assert _state(ext)["closed"] == 0, k
        ext.thread_gate_report(*LOSS)
    state = _state(ext)
    assert state["closed"] == 1 and state["closings"] == closings + 1
    assert not ext.thread_gate_open()  # no probe due for a long while


def test_a_probe_that_wins_reopens_and_one_that_loses_doubles_the_interval(ext):
    _close(ext, min_ns=0, max_ns=0)
    # due at once: the next PROBE regions may use the threads, then none until the verdict
    assert all(ext.thread_gate_open() for _ in range(PROBE))
    assert not ext.thread_gate_open()
    for k in range(PROBE):
        ext.thread_gate_report(*(LOSS if k <= PROBE_LOST else WIN))  # PROBE_LOST + 1 lost
    assert _state(ext)["closed"] == 1
    assert all(ext.thread_gate_open() for _ in range(PROBE))
    for k in range(PROBE):
        ext.thread_gate_report(*(LOSS if k < PROBE_LOST else WIN))  # PROBE_LOST lost: a win
    assert _state(ext)["closed"] == 0 and ext.thread_gate_open()

    _close(ext, min_ns=1_000_000, max_ns=4_000_000)
    intervals = []
    for _ in range(4):
        time.sleep(0.005)  # past the longest interval
        assert all(ext.thread_gate_open() for _ in range(PROBE))
        for _ in range(PROBE):
            ext.thread_gate_report(*LOSS)
        intervals.append(_state(ext)["interval_ns"])
    assert intervals == [2_000_000, 4_000_000, 4_000_000, 4_000_000]
    assert not ext.thread_gate_open()  # the next probe is ~4 ms away


def test_a_disabled_gate_counts_but_never_closes(ext):
    ext.set_thread_gate(False)
    before = _state(ext)
    for _ in range(2 * WINDOW):
        ext.thread_gate_report(*LOSS)
    after = _state(ext)
    assert after["closed"] == 0 and after["lost"] - before["lost"] == 2 * WINDOW
    assert ext.thread_gate_open()


def test_switching_without_reset_keeps_the_state(ext):
    _close(ext)
    compiled.set_thread_gate(False, reset=False)
    assert _state(ext)["closed"] == 0 and ext.thread_gate_open()  # off: never closed
    compiled.set_thread_gate(True, probe_ms=(1e6, 1e6), reset=False)
    assert _state(ext)["closed"] == 1 and not ext.thread_gate_open()


def test_bad_probe_intervals_are_errors(ext):
    with pytest.raises(ValueError, match="probe_ms"):
        compiled.set_thread_gate(True, probe_ms=(5.0, 1.0))
    with pytest.raises(ValueError, match="probe_ms"):
        compiled.set_thread_gate(True, probe_ms=(-1.0, 1.0))


@pytest.mark.parametrize(("cell_cls", "hidden"), [(LSTMCell, 128), (ElmanCell, 256)])
def test_a_closed_gate_runs_on_one_thread_with_the_same_results(ext, cell_cls, hidden):
    # B=32 and these sizes: each step's recurrent GEMM is large enough to split on 2 threads.
    torch.manual_seed(0)
    cell = cell_cls(8, hidden, dtype=torch.float64)
    x = torch.randn(5, 32, 8, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 5, 1] * 8)
    previous = torch.get_num_threads()
    results, timed = [], []
    try:
        torch.set_num_threads(2)
        for closed in (False, True):
            if closed:
                _close(ext)
            else:
                ext.set_thread_gate(True)
            regions = _state(ext)["regions"]
            out, h = compiled.run_recurrence(cell, x, None, lengths, reverse=True)
            h = h[0] if isinstance(h, tuple) else h
            grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [x, cell.weight_hh])
            timed.append(_state(ext)["regions"] - regions)
            results.append((out, h, *grads))
    finally:
        torch.set_num_threads(previous)
    assert timed[0] > 0 and timed[1] == 0  # open: split and timed; closed: calling thread
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_gate_that_closes_soon_after_opening_keeps_a_longer_interval(ext):
    _close(ext, min_ns=1_000_000, max_ns=8_000_000)
    assert _state(ext)["interval_ns"] == 1_000_000
    time.sleep(0.002)
    assert all(ext.thread_gate_open() for _ in range(PROBE))
    for _ in range(PROBE):
        ext.thread_gate_report(*WIN)
    assert _state(ext)["closed"] == 0
    for _ in range(WINDOW // 2):  # closes again at once: flapping
        ext.thread_gate_report(*LOSS)
    assert _state(ext)["closed"] == 1 and _state(ext)["interval_ns"] == 2_000_000
    # a reset forgets it: the next closing starts at the shortest interval
    _close(ext, min_ns=1_000_000, max_ns=8_000_000)
    assert _state(ext)["interval_ns"] == 1_000_000
