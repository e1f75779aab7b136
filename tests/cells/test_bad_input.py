"""Bad input to the cells (issue 16): one row per case, each naming the exception type and the
words its message must contain. Add a row when you add a cell or an argument.

Every error names the cell (and the method, for ``initial_state``/``scan``), the argument and
the value; numbers are accepted in any real-number type (NumPy's too) and refused as bools.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from rnnkit.cells import (
    BidirectionalGridLSTMCell,
    ElmanCell,
    GridLSTMCell,
    GroupedLSTMCell,
    GRUCell,
    IndRNNCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    NASCell,
    UGRNNCell,
)
from rnnkit.layers import RecurrentDropoutCell, ZoneoutCell

B, I, H = 2, 3, 4

# name -> build(**kwargs) with valid sizes for that cell
CELLS: dict[str, Callable[..., torch.nn.Module]] = {
    "ElmanCell": lambda **kw: ElmanCell(I, H, **kw),
    "LSTMCell": lambda **kw: LSTMCell(I, H, **kw),
    "GRUCell": lambda **kw: GRUCell(I, H, **kw),
    "UGRNNCell": lambda **kw: UGRNNCell(I, H, **kw),
    "NASCell": lambda **kw: NASCell(I, H, **kw),
    "GroupedLSTMCell": lambda **kw: GroupedLSTMCell(4, H, groups=2, **kw),
    "IndRNNCell": lambda **kw: IndRNNCell(I, H, **kw),
    "MinGRUCell": lambda **kw: MinGRUCell(I, H, **kw),
    "MinLSTMCell": lambda **kw: MinLSTMCell(I, H, **kw),
    "GridLSTMCell": lambda **kw: GridLSTMCell(4, H, feature_size=2, **kw),
    "BidirectionalGridLSTMCell": lambda **kw: BidirectionalGridLSTMCell(4, H, feature_size=2,
                                                                        **kw),
}
CLASSES = {
    "ElmanCell": ElmanCell, "LSTMCell": LSTMCell, "GRUCell": GRUCell, "UGRNNCell": UGRNNCell,
    "NASCell": NASCell, "GroupedLSTMCell": GroupedLSTMCell, "IndRNNCell": IndRNNCell,
    "MinGRUCell": MinGRUCell, "MinLSTMCell": MinLSTMCell,
    "GridLSTMCell": GridLSTMCell, "BidirectionalGridLSTMCell": BidirectionalGridLSTMCell,
}

# (id, call, exception type, regex the message must match)
ROWS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # proj_size: NAS follows LSTMCell (and torch.nn.LSTM): 0 or smaller than hidden_size
    ("nas_proj_size_larger", lambda: NASCell(3, 4, proj_size=6), ValueError,
     r"NASCell: proj_size must be smaller than hidden_size, got proj_size=6 and hidden_size=4"),
    ("nas_proj_size_equal", lambda: NASCell(3, 4, proj_size=4), ValueError,
     r"NASCell: proj_size must be smaller than hidden_size"),
    ("nas_proj_size_negative", lambda: NASCell(3, 4, proj_size=-1), ValueError,
     r"NASCell: proj_size must be >= 0, got -1"),
    ("lstm_proj_size_larger", lambda: LSTMCell(3, 4, proj_size=6), ValueError,
     r"LSTMCell: proj_size must be smaller than hidden_size, got proj_size=6"),
    ("lstm_proj_size_float", lambda: LSTMCell(3, 4, proj_size=2.0), TypeError,
     r"LSTMCell: proj_size must be an int, got float"),
    # sizes: the error names the cell as well as the argument
    ("size_str", lambda: LSTMCell("3", 4), TypeError,
     r"LSTMCell: input_size must be an int, got str \('3'\)"),
    ("size_zero", lambda: GRUCell(3, 0), ValueError, r"GRUCell: hidden_size must be >= 1, got 0"),
    ("size_bool", lambda: ElmanCell(True, 4), TypeError,
     r"ElmanCell: input_size must be an int, got bool"),
    ("size_numpy_bool", lambda: ElmanCell(np.bool_(True), 4), TypeError,
     r"ElmanCell: input_size must be an int, got bool"),
    ("groups_float", lambda: GroupedLSTMCell(4, 4, groups=2.0), TypeError,
     r"GroupedLSTMCell: groups must be an int, got float"),
    ("groups_not_dividing", lambda: GroupedLSTMCell(4, 6, groups=4), ValueError,
     r"GroupedLSTMCell: hidden_size=6 is not divisible by groups=4"),
    # dtype / device: checked before torch creates a parameter
    ("dtype_str", lambda: GRUCell(3, 4, dtype="float32"), TypeError,
     r"GRUCell: dtype must be a torch.dtype such as torch.float32, got str \('float32'\)"),
    ("dtype_complex", lambda: ElmanCell(3, 4, dtype=torch.complex64), TypeError,
     r"ElmanCell: dtype must be a floating-point dtype .*got torch.complex64"),
    ("device_unknown", lambda: LSTMCell(3, 4, device="gpu0"), ValueError,
     r"LSTMCell: invalid device 'gpu0'"),
    # options
    ("forget_bias_nan", lambda: LSTMCell(3, 4, forget_bias=float("nan")), TypeError,
     r"LSTMCell: forget_bias must be a finite number or None, got nan"),
    ("forget_bias_str", lambda: UGRNNCell(3, 4, forget_bias="1"), TypeError,
     r"UGRNNCell: forget_bias must be a finite number, got '1'"),
    ("cell_clip_zero", lambda: LSTMCell(3, 4, cell_clip=0), ValueError,
     r"LSTMCell: cell_clip must be > 0, got 0"),
    ("cell_clip_bool", lambda: LSTMCell(3, 4, cell_clip=True), TypeError,
     r"LSTMCell: cell_clip must be a positive number or None, got True"),
    ("recurrent_max_abs_negative", lambda: IndRNNCell(3, 4, recurrent_max_abs=-1.0), ValueError,
     r"IndRNNCell: recurrent_max_abs must be > 0, got -1.0"),
    ("nonlinearity_unknown", lambda: IndRNNCell(3, 4, nonlinearity="sigmoid"), ValueError,
     r"IndRNNCell: nonlinearity must be one of 'relu', 'tanh', got 'sigmoid'"),
    ("init_unknown", lambda: ElmanCell(3, 4, init="xavier"), ValueError,
     r"ElmanCell: init must be one of 'default', 'irnn', got 'xavier'"),
    ("flag_int", lambda: GRUCell(3, 4, layer_norm=1), TypeError,
     r"GRUCell: layer_norm must be a bool, got int \(1\)"),
    # dropout / zoneout rates of the cell wrappers: real numbers in [0, 1), never bools
    ("dropout_rate_bool", lambda: RecurrentDropoutCell(GRUCell(3, 4), True), TypeError,
     r"recurrent_dropout must be a float in \[0, 1\), got bool"),
    ("dropout_rate_one", lambda: RecurrentDropoutCell(GRUCell(3, 4), np.float32(1.0)),
     ValueError, r"recurrent_dropout must be in \[0, 1\), got 1.0"),
    ("zoneout_rate_nan", lambda: ZoneoutCell(GRUCell(3, 4), float("nan")), ValueError,
     r"zoneout must be in \[0, 1\), got nan"),
    ("zoneout_rate_str", lambda: ZoneoutCell(LSTMCell(3, 4), (0.1, "0.2")), TypeError,
     r"zoneout must be a float in \[0, 1\), got str"),
    # calls
    ("initial_state_int_dtype", lambda: LSTMCell(3, 4).initial_state(B, dtype=torch.int64),
     TypeError, r"LSTMCell.initial_state: dtype must be a floating-point dtype .*torch.int64"),
    ("initial_state_bad_device", lambda: LSTMCell(3, 4).initial_state(B, device="gpu"),
     ValueError, r"LSTMCell.initial_state: invalid device 'gpu'"),
    ("initial_state_float_batch", lambda: GRUCell(3, 4).initial_state(2.0), TypeError,
     r"GRUCell.initial_state: batch_size must be an int, got float"),
    ("input_on_another_device", lambda: GRUCell(3, 4)(torch.randn(B, 3, device="meta")),
     ValueError, r"GRUCell: the input is on meta but the parameters are on cpu"),
    ("state_on_another_device",
     lambda: LSTMCell(3, 4)(torch.randn(B, 3), (torch.zeros(B, 4), torch.zeros(B, 4,
                                                                           device="meta"))),
     ValueError, r"LSTMCell: state c is on meta but the input is on cpu"),
    ("scan_h0_on_another_device",
     lambda: MinGRUCell(3, 4).scan(torch.randn(5, B, 3), torch.zeros(B, 4, device="meta")),
     ValueError, r"MinGRUCell: h0 is on meta but the input is on cpu"),
    ("scan_chunk_size_zero", lambda: MinLSTMCell(3, 4).scan(torch.randn(5, B, 3), chunk_size=0),
     ValueError, r"MinLSTMCell.scan: chunk_size must be >= 1, got 0"),
]
# every cell: an integer dtype (torch's own message would be "Only Tensors of floating point
# and complex dtype can require gradients") and a non-bool bias
for _name, _build in CELLS.items():
    ROWS.append((f"{_name}_int64_dtype", lambda b=_build: b(dtype=torch.int64), TypeError,
                 rf"{_name}: dtype must be a floating-point dtype \(float32, float64, float16, "
                 rf"bfloat16\), got torch.int64"))
    ROWS.append((f"{_name}_bias_int", lambda b=_build: b(bias=1), TypeError,
                 rf"{_name}: bias must be a bool, got int \(1\)"))


@pytest.mark.parametrize("call, error, words", [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input_gives_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()


# The other side of the same checks: any real number type is a number, any integral type a
# size (NumPy's included), numpy.bool_ a bool.
ACCEPTED = [
    ("dropout_rate_np_float32", lambda: RecurrentDropoutCell(GRUCell(3, 4), np.float32(0.2)).p,
     pytest.approx(0.2)),
    ("dropout_rate_np_float64", lambda: RecurrentDropoutCell(GRUCell(3, 4), np.float64(0.2)).p,
     0.2),
    ("zoneout_rates_np_float16", lambda: ZoneoutCell(LSTMCell(3, 4),
                                                     (np.float16(0.5), np.float32(0.25))).p,
     (0.5, 0.25)),
    ("forget_bias_np_float32", lambda: LSTMCell(3, 4, forget_bias=np.float32(0.5)).forget_bias,
     0.5),
    ("cell_clip_np_int", lambda: LSTMCell(3, 4, cell_clip=np.int32(3)).cell_clip, 3.0),
    ("recurrent_max_abs_np_float32",
     lambda: IndRNNCell(3, 4, recurrent_max_abs=np.float32(2.0)).recurrent_max_abs, 2.0),
    ("sizes_np_int64", lambda: tuple(NASCell(np.int64(3), np.int64(4),
                                             proj_size=np.int64(2)).weight_hh.shape), (32, 2)),
    ("groups_np_int", lambda: GroupedLSTMCell(4, 4, groups=np.int8(2)).groups, 2),
    ("bias_np_bool", lambda: UGRNNCell(3, 4, bias=np.bool_(False)).bias_ih, None),
    ("batch_size_np_int", lambda: GRUCell(3, 4).initial_state(np.int64(2)).shape,
     torch.Size([2, 4])),
]


@pytest.mark.parametrize("call, expected", [row[1:] for row in ACCEPTED],
                         ids=[row[0] for row in ACCEPTED])
def test_numpy_numbers_are_numbers(call, expected):
    value = call()
    assert value == expected
    assert type(value) is not np.float32  # stored as Python numbers


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell_refuses_an_integer_dtype_and_takes_bias_as_a_bool(name):
    """The convention of issue 17: ``bias: bool = True`` on every cell, ``cell.bias`` that bool."""
    import inspect

    parameter = inspect.signature(CLASSES[name]).parameters["bias"]
    assert parameter.default is True
    assert CELLS[name]().bias is True and CELLS[name](bias=False).bias is False
    names = {n for n, _ in CELLS[name](bias=False).named_parameters()}
    assert not any(n.startswith("bias") for n in names), names
