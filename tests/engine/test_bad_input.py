"""Bad input to the engine (issue 16): each row is a call, the exception it must raise and the
words its message must contain. Add a row when the engine gains an argument or a check.

The compiled kernels read parameters and states through raw pointers, so every entry checks
every parameter's shape, dtype, device and layout against the cell's sizes, and the state's
device, before touching memory (a 1-element ``weight_cf`` was read as if it had H elements).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.engine import compiled
from rnnkit.layers.recurrence import Recurrence

pytestmark = pytest.mark.skipif(
    not compiled.available()[0], reason=f"compiled kernels unavailable: {compiled.available()[1]}"
)


def x(features: int = 3) -> torch.Tensor:
    return torch.randn(4, 2, features)  # (T, B, H_in)


def with_parameter(cell, name: str, value: torch.Tensor):
    owner, _, leaf = name.rpartition(".")
    module = cell.get_submodule(owner) if owner else cell
    module._parameters[leaf] = value  # as a user's `cell.weight.data = ...` or a bad binding
    return cell


def compiled_run(cell, *args, **kwargs) -> Callable[[], object]:
    return lambda: Recurrence(cell, engine="compiled")(*args, **kwargs)


ROWS = [
    # (id, call, exception, words in the message)
    ("peephole of size 1 (issue 16)",
     compiled_run(with_parameter(LSTMCell(3, 64, peepholes=True), "weight_cf",
                                 torch.randn(1)), x()),
     ValueError, ["LSTMCell.weight_cf", "shape (1,)", "expected (64,)"]),
    ("lstm weight_hh rows",
     compiled_run(with_parameter(LSTMCell(3, 4), "weight_hh", torch.randn(12, 4)), x()),
     ValueError, ["LSTMCell.weight_hh", "(12, 4)", "expected (16, 4)"]),
    ("lstm weight_hr with proj_size",
     compiled_run(with_parameter(LSTMCell(3, 4, proj_size=2), "weight_hr",
                                 torch.randn(2, 3)), x()),
     ValueError, ["LSTMCell.weight_hr", "(2, 3)", "expected (2, 4)", "proj_size=2"]),
    ("lstm layer-norm gain",
     compiled_run(with_parameter(LSTMCell(3, 4, layer_norm=True), "ln_c.weight",
                                 torch.randn(3)), x()),
     ValueError, ["LSTMCell.ln_c.weight", "(3,)", "expected (4,)"]),
    ("gru bias_hh",
     compiled_run(with_parameter(GRUCell(3, 4), "bias_hh", torch.randn(4)), x()),
     ValueError, ["GRUCell.bias_hh", "(4,)", "expected (12,)"]),
    ("gru reset-before ln_hn",
     compiled_run(with_parameter(GRUCell(3, 4, reset_after=False, layer_norm=True),
                                 "ln_hn.bias", torch.randn(12)), x()),
     ValueError, ["GRUCell.ln_hn.bias", "(12,)", "expected (4,)"]),
    ("elman weight_hh transposed shape",
     compiled_run(with_parameter(ElmanCell(3, 4), "weight_hh", torch.randn(4, 5)), x()),
     ValueError, ["ElmanCell.weight_hh", "(4, 5)", "expected (4, 4)"]),
    ("elman weight_ih columns",
     compiled_run(with_parameter(ElmanCell(3, 4), "weight_ih", torch.randn(4, 2)), x()),
     ValueError, ["ElmanCell.weight_ih", "(4, 2)", "expected (4, 3)"]),
    ("sparse weight",
     compiled_run(with_parameter(GRUCell(3, 4), "weight_hh",
                                 torch.randn(12, 4).to_sparse()), x()),
     ValueError, ["GRUCell.weight_hh", "dense", "sparse"]),
    ("parameters of mixed dtypes",
     compiled_run(with_parameter(ElmanCell(3, 4), "bias_hh", torch.randn(4).double()), x()),
     RuntimeError, ["engine='compiled'", "mix dtypes"]),
    ("state on the meta device",
     compiled_run(GRUCell(3, 4), x(), torch.zeros(2, 4, device="meta")),
     ValueError, ["GRUCell state", "meta device", "move the state"]),
    ("lstm cell state on the meta device",
     compiled_run(LSTMCell(3, 4), x(), (torch.zeros(2, 4), torch.zeros(2, 4, device="meta"))),
     ValueError, ["LSTMCell state c", "meta device"]),
    ("sparse state",
     compiled_run(ElmanCell(3, 4), x(), torch.zeros(2, 4).to_sparse()),
     ValueError, ["ElmanCell state", "dense"]),
    ("state of the wrong size",
     compiled_run(ElmanCell(3, 4), x(), torch.zeros(2, 5)),
     ValueError, ["ElmanCell state must be (2, 4)", "(2, 5)"]),
    ("inputs on the meta device",
     compiled_run(ElmanCell(3, 4), torch.zeros(4, 2, 3, device="meta")),
     (TypeError, RuntimeError), ["meta"]),
]


@pytest.mark.parametrize(("call", "error", "words"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_the_peephole_row_no_longer_runs_silently():
    # Issue 16's reproduction: with a 1-element weight_cf the kernel read w_cf[j] for every
    # j < H (past the buffer) and differed from the loop by 0.14.
    cell = LSTMCell(3, 64, peepholes=True)
    cell.weight_cf.data = torch.randn(1)
    with pytest.raises(ValueError, match="weight_cf has shape"):
        Recurrence(cell, engine="compiled")(x())
