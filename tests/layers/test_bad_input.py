"""Bad input to the layers (issue 16): one row per case, each naming the exception type and the
words its message must contain. Add a row when you add a layer or an argument.

The drop-ins' rows (issue 9 items 4.3 and 4.4) name the class ``torch.nn`` raises for the same
input, so code written for ``torch.nn`` keeps catching it; the message is rnnkit's, with
torch's phrase inside (see :mod:`rnnkit.errors`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.errors import DeviceError, DTypeError, ShapeError

x = torch.randn(5, 2, 3)  # (T, B, H_in)

# (id, call, exception type, regex the message must match)
ROWS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # --- drop-in constructors: torch.nn.RNNBase's checks and phrases (issue 9 item 4.4)
    ("LSTM batch_first str", lambda: rnnkit.LSTM(3, 5, batch_first="False"), TypeError,
     "LSTM: batch_first should be of type bool, got: str"),
    ("GRU batch_first int", lambda: rnnkit.GRU(3, 5, batch_first=1), TypeError,
     "GRU: batch_first should be of type bool, got: int"),
    ("RNN bias int", lambda: rnnkit.RNN(3, 5, bias=0), TypeError,
     "RNN: bias should be of type bool, got: int"),
    ("LSTM bias str", lambda: rnnkit.LSTM(3, 5, bias="True"), TypeError,
     "bias should be of type bool, got: str"),
    ("GRU bidirectional str", lambda: rnnkit.GRU(3, 5, bidirectional="yes"), TypeError,
     "GRU: bidirectional should be of type bool, got: str"),
    ("LSTM input_size float", lambda: rnnkit.LSTM(3.0, 5), TypeError,
     "LSTM: input_size should be of type int, got: float"),
    ("RNN input_size str", lambda: rnnkit.RNN("10", 5), TypeError,
     "input_size should be of type int, got: str"),
    ("LSTM input_size bool", lambda: rnnkit.LSTM(True, 5), TypeError,
     "input_size should be of type int, got: bool"),
    ("GRU hidden_size float", lambda: rnnkit.GRU(3, 5.0), TypeError,
     "GRU: hidden_size should be of type int, got: float"),
    ("LSTM num_layers float", lambda: rnnkit.LSTM(3, 5, 2.0), TypeError,
     "LSTM: num_layers should be of type int, got: float"),
    ("LSTM proj_size float", lambda: rnnkit.LSTM(3, 5, proj_size=2.0), TypeError,
     "LSTM: proj_size should be of type int, got: float"),
    ("LSTM input_size 0", lambda: rnnkit.LSTM(0, 5), ValueError,
     "input_size must be greater than zero"),
    ("GRU num_layers 0", lambda: rnnkit.GRU(3, 5, 0), ValueError,
     "num_layers must be greater than zero"),
    ("LSTM proj_size negative", lambda: rnnkit.LSTM(3, 5, proj_size=-1), ValueError,
     "proj_size should be a positive integer or zero to disable projections"),
    ("LSTM proj_size = hidden", lambda: rnnkit.LSTM(3, 5, proj_size=5), ValueError,
     "proj_size has to be smaller than hidden_size"),
    ("GRU proj_size", lambda: rnnkit.GRU(3, 5, proj_size=2), ValueError,
     "proj_size argument is only supported for LSTM, not RNN or GRU"),
    ("RNN proj_size 0", lambda: rnnkit.RNN(3, 5, proj_size=0), ValueError,
     "proj_size argument is only supported for LSTM, not RNN or GRU"),
    ("LSTM dropout str", lambda: rnnkit.LSTM(3, 5, 2, dropout="0.5"), ValueError,
     r"dropout should be a number in range \[0, 1\]"),
    # --- drop-in forward: torch.nn's exception classes (issue 9 item 4.3)
    ("GRU h_0 shape", lambda: rnnkit.GRU(3, 4)(x, torch.zeros(1, 2, 5)), RuntimeError,
     r"GRU: expected h_0 of shape .* = \(1, 2, 4\), got \(1, 2, 5\) "
     r"\(Expected hidden size \(1, 2, 4\), got \[1, 2, 5\]\)"),
    ("LSTM c_0 shape",
     lambda: rnnkit.LSTM(3, 4)(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 3))),
     RuntimeError, r"expected c_0 .* \(Expected hidden\[1\] size \(1, 2, 4\), got \[1, 2, 3\]\)"),
    ("RNN batch mismatch", lambda: rnnkit.RNN(3, 4)(x, torch.zeros(1, 7, 4)), RuntimeError,
     r"Expected hidden size \(1, 2, 4\), got \[1, 7, 4\]"),
    ("LSTM input size", lambda: rnnkit.LSTM(7, 4)(x), RuntimeError,
     r"LSTM: input.size\(-1\) must be equal to input_size. Expected 7, got 3"),
    ("GRU zero steps", lambda: rnnkit.GRU(3, 4)(torch.randn(0, 2, 3)), RuntimeError,
     "GRU input: the sequence is empty .*Expected sequence length to be larger than 0 in RNN"),
    ("LSTM 4-D input", lambda: rnnkit.LSTM(3, 4)(torch.randn(5, 2, 1, 3)), ValueError,
     "expected input to be 2-D .* or 3-D"),
    ("GRU 2-D h_0 for batched input", lambda: rnnkit.GRU(3, 4)(x, torch.zeros(2, 4)),
     RuntimeError, "for batched 3-D input, hx should also be 3-D"),
    ("LSTM float64 fed float32", lambda: rnnkit.LSTM(3, 4).double()(x), ValueError,
     r"LSTM: RNN input dtype \(torch.float32\) does not match weight dtype \(torch.float64\)"
     r". Convert input: input.to\(torch.float64\), or convert model: model.to\(torch.float32\)"),
    ("GRU float32 fed float64", lambda: rnnkit.GRU(3, 4)(x.double()), ValueError,
     r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("RNN int input", lambda: rnnkit.RNN(3, 4)(x.long()), ValueError,
     "input must be floating point, got dtype torch.int64"),
    ("GRU h_0 dtype", lambda: rnnkit.GRU(3, 4)(x, torch.zeros(1, 2, 4, dtype=torch.float64)),
     RuntimeError, "GRU: h_0 dtype torch.float64 does not match input dtype torch.float32"),
    ("LSTM h_0 device",
     lambda: rnnkit.LSTM(3, 4)(x, (torch.zeros(1, 2, 4, device="meta"), torch.zeros(1, 2, 4))),
     RuntimeError, "h_0 is on meta but the input is on cpu"),
    # --- cells and Recurrence: the same classes for the same checks
    ("GRUCell input size", lambda: GRUCell(3, 4)(torch.randn(2, 7)), RuntimeError,
     r"GRUCell: expected input of shape \(batch, 3\), got \(2, 7\)"),
    ("LSTMCell state shape",
     lambda: LSTMCell(3, 4)(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(3, 4))),
     RuntimeError, r"LSTMCell: expected state c of shape \(2, 4\)"),
    ("GRUCell dtype", lambda: GRUCell(3, 4)(torch.randn(2, 3, dtype=torch.float64)),
     ValueError, "GRUCell: input dtype torch.float64 does not match the parameter dtype"),
    ("Recurrence input size", lambda: rnnkit.Recurrence(GRUCell(7, 4))(x), RuntimeError,
     "Recurrence: the cell expects 7 input features, got input with 3"),
    # (engine="loop": the compiled path's own entry check belongs to issue 9 item 1's owner)
    ("Recurrence state shape",
     lambda: rnnkit.Recurrence(GRUCell(3, 4), engine="loop")(x, torch.zeros(3, 4)),
     RuntimeError,
     r"Recurrence: GRUCell state must be \(2, 4\) \(batch, state_size\), got \(3, 4\)"),
]


class _Cell(nn.Module):
    """A user's cell over torch's GRUCell; ``state_size`` and the returned state can lie."""

    def __init__(self, state_size=4, returned=4) -> None:
        super().__init__()
        self.inner = nn.GRUCell(3, 4)
        self.input_size, self.hidden_size, self.output_size = 3, 4, 4
        self.state_size = state_size
        self.returned = returned

    def forward(self, x, h):
        h = self.inner(x, h)
        grown = torch.cat([h, h.new_zeros(h.shape[0], self.returned - 4)], dim=-1)
        return torch.tanh(x.sum(-1, keepdim=True) + h), grown


# --- drivers (issue 16): lengths, cells that break their contract, states, Bidirectional
ROWS += [
    ("lengths list of floats", lambda: rnnkit.Recurrence(GRUCell(3, 4))(x, lengths=[5, 2.9]),
     TypeError, r"lengths must hold integers, got lengths\[1\] = 2.9"),
    ("Fold with T = 0", lambda: rnnkit.Fold(GRUCell(3, 4))(torch.randn(0, 2, 3)),
     ValueError, r"Fold input: the sequence is empty \(T = 0 time steps\)"),
    ("unbatched input with two lengths", lambda: rnnkit.LSTM(3, 4)(x[:, 0], lengths=[3, 2]),
     ValueError, r"unbatched \(T, H_in\), one sequence, so lengths must be a single length"),
    ("state_size lies", lambda: rnnkit.Recurrence(_Cell(state_size=5), engine="loop")(x),
     RuntimeError, r"_Cell failed on the first step, called with x \(2, 3\) and a state of "
                   r"shape \(2, 5\) \(state_size=5\)"),
    ("state_size=(5, 5) on a single-state cell",
     lambda: rnnkit.Recurrence(_Cell(state_size=(5, 5)), engine="loop")(x),
     AttributeError, r"_Cell failed on the first step.*state_size=\(5, 5\)"),
    ("forward returns a wrong-size state", lambda: rnnkit.Recurrence(_Cell(returned=6))(x),
     ValueError, r"_Cell returned a state of shape \(2, 6\) from a state of shape \(2, 4\)"),
    ("UnfoldFrom cell returns a wrong-size state", lambda: rnnkit.layers.UnfoldFrom(
        _Cell(returned=6), head=nn.Linear(4, 3), max_length=3)(torch.randn(2, 3)),
     ValueError, r"_Cell returned a state of shape \(2, 6\)"),
    ("learnable initial state of the wrong size", lambda: rnnkit.Recurrence(
        GRUCell(3, 4), learnable_initial_state=True, initial_state=torch.zeros(5)),
     ValueError, r"initial_state must be \(4,\) or \(batch, 4\) for GRUCell"),
    ("state on the meta device (loop path)", lambda: rnnkit.Recurrence(
        LSTMCell(3, 4), engine="loop")(x, (torch.zeros(2, 4, device="meta"), torch.zeros(2, 4))),
     ValueError, r"LSTMCell state h is on the meta device but the input is on cpu"),
    ("reset_states mask of the wrong size before the first call",
     lambda: _stateful_after_reset(torch.ones(5, dtype=torch.bool)),
     ValueError, r"the mask given before this call has 5 entries but the batch has 2"),
    ("Bidirectional sum of sizes 4 and 6", lambda: rnnkit.Bidirectional(
        GRUCell(3, 4), merge_mode="sum", backward_layer=GRUCell(3, 6))(x),
     ValueError, r"merge_mode='sum' .* got 4 \(forward\) and 6 \(backward\)"),
    ("Bidirectional of a Linear", lambda: rnnkit.Bidirectional(nn.Linear(3, 4)),
     TypeError, r"Bidirectional: layer Linear is neither a cell \(no state_size\) nor a "
                r"recurrent layer"),
]


def _stateful_after_reset(mask):
    gru = rnnkit.GRU(3, 4, stateful=True)
    gru.reset_states(mask)
    return gru(x)


@pytest.mark.parametrize(("call", "error", "match"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (ShapeError, (ValueError, RuntimeError)),
        (DTypeError, (TypeError, ValueError, RuntimeError)),
        (DeviceError, (ValueError, RuntimeError)),
    ],
)
def test_error_classes_are_both_rnnkits_and_torchs(error, bases):
    # rnnkit's own class (ValueError for shapes, TypeError for dtypes) and torch.nn's.
    assert all(issubclass(error, base) for base in bases)


def test_drop_in_errors_are_rnnkit_error_classes():
    with pytest.raises(ShapeError):
        rnnkit.GRU(3, 4)(x, torch.zeros(1, 2, 5))
    with pytest.raises(DTypeError):
        rnnkit.LSTM(3, 4).double()(x)
    with pytest.raises(DeviceError):
        rnnkit.GRU(3, 4)(x, torch.zeros(1, 2, 4, device="meta"))
