"""RecurrentCell.prepare_call, the argument check every cell's forward starts with; the
docstring examples of every cell module."""

import pytest
import torch
from torch import nn

from rnnkit.cells import (
    IndRNNCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    NASCell,
    RecurrentCell,
    UGRNNCell,
)
from rnnkit.layers import Recurrence
from tests.helpers import assert_doctests_pass

B, I = 3, 2


class ThreeStateCell(RecurrentCell):
    """A user cell with a three-part state, to exercise the general multi-state path."""

    state_names = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__()
        self.input_size, self.hidden_size = I, 4
        self.state_size = (4, 5, 6)
        self.output_size = 4
        self.weight = nn.Parameter(torch.zeros(4, I))

    def forward(self, x, state=None):
        a, b, c = self.prepare_call(x, state)
        return a, (a, b, c)


def test_none_gives_zeros_in_the_input_dtype_and_device():
    cell = ThreeStateCell().double()
    state = cell.prepare_call(torch.randn(B, I, dtype=torch.float64), None)
    assert [tuple(s.shape) for s in state] == [(B, 4), (B, 5), (B, 6)]
    assert all(s.dtype == torch.float64 and not s.any() for s in state)


def test_a_list_state_comes_back_as_the_same_tensors_in_a_tuple():
    cell = LSTMCell(I, 5)
    h, c = torch.randn(B, 5), torch.randn(B, 5)
    state = cell.prepare_call(torch.randn(B, I), [h, c])
    assert isinstance(state, tuple) and state[0] is h and state[1] is c


def test_errors_name_the_cell_and_the_part():
    cell = ThreeStateCell()
    x = torch.randn(B, I)
    good = (torch.zeros(B, 4), torch.zeros(B, 5), torch.zeros(B, 6))
    with pytest.raises(
        TypeError, match=r"ThreeStateCell: state must be a tuple of 3 \(a, b, c\), got Tensor$"
    ):
        cell(x, torch.zeros(B, 4))
    with pytest.raises(
        TypeError, match=r"state must be a tuple of 3 \(a, b, c\), got list of length 2$"
    ):
        cell(x, list(good[:2]))
    with pytest.raises(
        ValueError, match=r"ThreeStateCell: expected state b of shape \(3, 5\) .* got \(3, 4\)"
    ):
        cell(x, (good[0], torch.zeros(B, 4), good[2]))
    with pytest.raises(TypeError, match="ThreeStateCell: state c dtype torch.float64 does not"):
        cell(x, (*good[:2], good[2].double()))
    with pytest.raises(ValueError, match=r"ThreeStateCell: expected input of shape \(batch, 2\)"):
        cell(torch.randn(B, I + 1))
    with pytest.raises(TypeError, match="ThreeStateCell: input dtype torch.float64 does not match"):
        cell(x.double())


@pytest.mark.parametrize(
    "module", ["elman", "lstm", "gru", "ugrnn", "nas", "grouped_lstm", "indrnn", "minimal"]
)
def test_docstring_examples_run(module):
    assert_doctests_pass(f"rnnkit.cells.{module}")


@pytest.mark.parametrize(
    "build, new_name",
    [
        (lambda: NASCell(3, 4), "bias_hh"),
        (lambda: UGRNNCell(3, 4), "bias_ih"),
        (lambda: IndRNNCell(3, 4), "bias_ih"),
        (lambda: MinGRUCell(3, 4), "bias_ih"),
        (lambda: MinLSTMCell(3, 4), "bias_ih"),
    ],
)
def test_a_state_dict_with_the_old_single_bias_name_still_loads(build, new_name):
    """Issue 17: the single-bias cells' parameter "bias" is now bias_ih (bias_hh for NAS), so
    that ``cell.bias`` is the constructor's bool on every cell; old state_dicts still load,
    also nested inside a layer."""
    source = Recurrence(build())
    old = {key.replace(new_name, "bias"): value for key, value in source.state_dict().items()}
    assert "cell.bias" in old
    target = Recurrence(build())
    target.load_state_dict(old)  # strict: no missing or unexpected key
    assert torch.equal(getattr(target.cell, new_name), getattr(source.cell, new_name))
    assert target.cell.bias is True
