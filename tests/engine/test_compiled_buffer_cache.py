"""The step-loop template's buffer cache (csrc/step_loop.h, BufferCache), used by NAS, LSTM
and GRU (StepLayout::reuse_buffers): training buffers reused across calls must never hold a stale
value and never be handed out while anything still references them.

Oracle: the cell's own loop, every sequence on its own (tests/engine/test_compiled_cells.py's
run_both), float64 to 1e-10. The cache's size threshold is lowered to one byte so that the
tests' small shapes go through it.
"""

from __future__ import annotations

import pytest
import torch

from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.engine import compiled
from tests.engine.test_compiled_cells import assert_close, make_cell, random_state, run_both


@pytest.fixture()
def ext():
    ok, reason = compiled.available()
    if not ok:
        pytest.skip(f"compiled kernels unavailable: {reason}")
    from rnnkit.engine.compiled import _build

    module, _ = _build.load()
    module.clear_buffer_cache()
    previous_min = module.set_buffer_cache_min_bytes(1)
    previous_limit = module.set_buffer_cache_limit(64 << 20)
    yield module
    module.set_buffer_cache_min_bytes(previous_min)
    module.set_buffer_cache_limit(previous_limit)
    module.clear_buffer_cache()


# (T, B, lengths, reverse): equal sizes back to back, so that a later call gets the buffers
# an earlier one wrote (full lengths, then padded ones: d xp's padded rows must be zero
# again), then smaller and larger shapes
CALLS = [
    (5, 4, None, False),
    (5, 4, [5, 2, 5, 3], True),
    (5, 4, [1, 4, 2, 5], False),
    (5, 4, None, True),
    (3, 4, [3, 1, 2, 3], False),
    (7, 3, [7, 2, 6], True),
    (1, 1, None, False),
    (5, 4, [5, 2, 5, 3], False),
]


# the families that take their buffers from the cache besides NAS, in their heaviest forms
# (the layer norms keep a separate d rec buffer; the projection a second GEMM's buffers)
TEMPLATE_CELLS = {
    "lstm_ln_peep_proj": lambda: LSTMCell(3, 5, layer_norm=True, peepholes=True, proj_size=4),
    "lstm_coupled_clip": lambda: LSTMCell(3, 5, coupled_gates=True, cell_clip=0.5),
    "gru": lambda: GRUCell(3, 5),
    "gru_reset_before_ln": lambda: GRUCell(3, 5, reset_after=False, layer_norm=True),
}


def _cell(name: str) -> torch.nn.Module:
    if name not in TEMPLATE_CELLS:
        return make_cell(name, torch.float64)
    torch.manual_seed(7)
    cell = TEMPLATE_CELLS[name]().double()
    with torch.no_grad():  # non-zero biases and norms, so their gradients matter
        for p in cell.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return cell


@pytest.mark.parametrize("name", ["nas", "nas_proj", *TEMPLATE_CELLS])
def test_reused_buffers_match_the_loop_across_shapes_and_lengths(ext, name):
    cell = _cell(name)
    for k, (steps, batch, lengths, reverse) in enumerate(CALLS):
        torch.manual_seed(10 + k)
        x = torch.randn(steps, batch, cell.input_size, dtype=torch.float64) * (1 + k)
        state = random_state(cell, batch, torch.float64)
        lens = None if lengths is None else torch.tensor(lengths)
        kernel, oracle = run_both(cell, x, state, lens, reverse, seed=k)
        assert_close(kernel, oracle, cell, rtol=1e-10, atol=1e-10)
    held, idle = ext.buffer_cache_bytes()
    assert held > 0 and idle == held  # every call's buffers went back to the cache
    # the same call again takes its buffers from the cache: nothing new is held
    run_both(cell, torch.randn(5, 4, cell.input_size, dtype=torch.float64),
             random_state(cell, 4, torch.float64), torch.tensor([5, 2, 5, 3]), False)
    assert ext.buffer_cache_bytes()[0] == held


def _train(cell, x, state, lengths):
    out, final = compiled.run_recurrence(cell, x, state, lengths=lengths, reverse=True)
    return (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos()).sum() + \
        sum(f.sum() for f in final)


def test_buffers_in_use_are_not_handed_out(ext):
    """Two graphs alive at once (their saved values both held), backward in the other order,
    and the first call's gradients kept while later calls run: each equals its own run on a
    cold cache."""
    cell = make_cell("nas", torch.float64)
    lengths = torch.tensor([5, 2, 5, 3])
    inputs = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        x = torch.randn(5, 4, cell.input_size, dtype=torch.float64, requires_grad=True)
        inputs.append((x, random_state(cell, 4, torch.float64)))

    def grads(loss, x):
        return torch.autograd.grad(loss, [x, *cell.parameters()])

    ext.set_buffer_cache_limit(0)  # cold: every buffer fresh
    expected = [grads(_train(cell, x, st, lengths), x) for x, st in inputs]
    ext.set_buffer_cache_limit(64 << 20)
    first = _train(cell, *inputs[0], lengths)
    second = _train(cell, *inputs[1], lengths)  # needs buffers while the first holds its own
    got_second = grads(second, inputs[1][0])
    got_first = grads(first, inputs[0][0])
    kept = [g.clone() for g in got_first]
    got_third = grads(_train(cell, *inputs[2], lengths), inputs[2][0])
    for got, want in ((got_first, expected[0]), (got_second, expected[1]),
                      (got_third, expected[2]), (kept, got_first)):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_limit_and_clear(ext):
    cell = make_cell("nas", torch.float64)
    x = torch.randn(5, 4, cell.input_size, dtype=torch.float64, requires_grad=True)
    _train(cell, x, None, None).backward()
    held, idle = ext.buffer_cache_bytes()
    assert held > 0 and idle == held
    compiled.clear_buffer_cache()
    assert ext.buffer_cache_bytes() == (0, 0)
    assert compiled.set_buffer_cache_limit(0) == 64 << 20
    _train(cell, x, None, None).backward()
    assert ext.buffer_cache_bytes() == (0, 0)  # off: nothing kept
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        compiled.set_buffer_cache_limit(-1)
    with pytest.raises(RuntimeError, match="need >= 1 byte"):
        ext.set_buffer_cache_min_bytes(0)
