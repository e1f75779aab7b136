"""The eager loop against torch.nn cells unrolled by hand and per-sequence runs."""

import pytest
import torch
from torch import nn

from rnnkit.engine.loop import map_state, run_recurrence
from tests.helpers import TorchLSTMCell


class CountingCell(nn.Module):
    """Adds each input to the state; counts its calls."""

    state_size = output_size = input_size = hidden_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, h):
        self.calls += 1
        h = h + x
        return 10 * h, h


def unrolled(cell: TorchLSTMCell, x: torch.Tensor, state, reverse: bool = False):
    outputs = [None] * x.shape[0]
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        state = cell.inner(x[t], state)
        outputs[t] = state[0]
    return torch.stack(outputs), state


@pytest.mark.parametrize("reverse", [False, True])
def test_loop_equals_hand_unrolled_torch_cell(reverse):
    torch.manual_seed(0)
    cell = TorchLSTMCell(3, 4)
    x = torch.randn(6, 2, 3)
    state = (torch.randn(2, 4), torch.randn(2, 4))
    out, (h, c) = run_recurrence(cell, x, state, reverse=reverse)
    want_out, (want_h, want_c) = unrolled(cell, x, state, reverse=reverse)
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(h, want_h, rtol=0, atol=0)
    torch.testing.assert_close(c, want_c, rtol=0, atol=0)


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_running_each_sequence_alone(reverse):
    torch.manual_seed(1)
    cell = TorchLSTMCell(3, 4)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(7, 3, 3)
    x[2:, 1] = float("nan")  # padding garbage must never leak into results
    state = (torch.randn(3, 4), torch.randn(3, 4))
    out, (h, c) = run_recurrence(cell, x, state, lengths=lengths, reverse=reverse)
    assert torch.isfinite(out).all()
    for b, length in enumerate(lengths.tolist()):
        alone_out, (alone_h, alone_c) = unrolled(
            cell, x[:length, b : b + 1], (state[0][b : b + 1], state[1][b : b + 1]), reverse
        )
        torch.testing.assert_close(out[:length, b], alone_out[:, 0], rtol=0, atol=1e-7)
        assert out[length:, b].eq(0).all()
        torch.testing.assert_close(h[b], alone_h[0], rtol=0, atol=1e-7)
        torch.testing.assert_close(c[b], alone_c[0], rtol=0, atol=1e-7)


def test_padding_beyond_the_longest_sequence_is_skipped_and_zero():
    cell = CountingCell()
    x = torch.ones(6, 2, 2)
    out, h = run_recurrence(cell, x, torch.zeros(2, 2), lengths=torch.tensor([3, 1]))
    assert cell.calls == 3
    assert out.shape == (6, 2, 2)
    assert out[3:].eq(0).all() and out[1:, 1].eq(0).all()
    torch.testing.assert_close(h, torch.tensor([[3.0, 3.0], [1.0, 1.0]]))


def test_gradients_with_lengths_match_per_sequence_autograd():
    torch.manual_seed(2)
    cell = TorchLSTMCell(2, 3).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3])
    state = (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    out, (h, c) = run_recurrence(cell, x, state, lengths=lengths, reverse=True)
    (out.sum() + h.square().sum() + c.sum()).backward()
    grad = x.grad.clone()
    assert grad[3:, 1].eq(0).all()
    for b, length in enumerate(lengths.tolist()):
        xb = x.detach()[:length, b : b + 1].clone().requires_grad_(True)
        o, (hb, cb) = unrolled(cell, xb, (state[0][:1], state[1][:1]), reverse=True)
        (o.sum() + hb.square().sum() + cb.sum()).backward()
        torch.testing.assert_close(grad[:length, b], xb.grad[:, 0])


def test_gradcheck_through_masked_loop():
    torch.manual_seed(3)
    cell = TorchLSTMCell(2, 2).double()
    lengths = torch.tensor([3, 1])

    def run(x, h0):
        out, (h, c) = run_recurrence(cell, x, (h0, torch.zeros_like(h0)), lengths=lengths)
        return out, h, c

    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, h0))


def test_map_state_handles_nested_tuples():
    state = (torch.ones(1), (torch.ones(2), torch.ones(3)))
    doubled = map_state(lambda t: 2 * t, state)
    assert doubled[1][1].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(TypeError, match="state must be a Tensor or a tuple"):
        map_state(lambda t: t, "oops")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"inputs must be \(T, B, H_in\), got \(4, 2\)"):
        run_recurrence(CountingCell(), torch.zeros(4, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"the sequence is empty \(T = 0 time steps\)"):
        run_recurrence(CountingCell(), torch.zeros(0, 2, 2), torch.zeros(2, 2))


def test_backward_graph_is_linear_in_time():
    # With unbind, the input gradient arrives through one node; indexing would create T
    # separate slice-backward nodes that each allocate a full-size zero gradient.
    cell = CountingCell()
    x = torch.randn(50, 2, 2, requires_grad=True)
    out, _ = run_recurrence(cell, x, torch.zeros(2, 2))
    nodes, stack, seen = 0, [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes += "Select" in type(node).__name__
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert nodes == 0
