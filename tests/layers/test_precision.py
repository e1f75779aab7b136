"""``precision="bf16"`` on the drop-ins and ``Recurrence``: the same as the
``rnnkit.engine.precision("bf16")`` context, within emulated bf16 rounding of float32.

Oracles: ``torch.nn`` modules in float32 with copied weights, the eager loop in float32, and
the context itself (the argument must give its bits).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnkit
from rnnkit.cells import GRUCell, IndRNNCell, LSTMCell, MinLSTMCell
from rnnkit.engine import explain, fused

#: bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 3.9e-3 per operation); a few
#: steps of a small recurrence stay within a few percent of float32.
BF16_ATOL = 3e-2


@pytest.fixture(autouse=True)
def _quiet_bf16_notice():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "rnnkit: precision='bf16'", RuntimeWarning)
        yield


@pytest.mark.parametrize(("kind", "options"), [
    ("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}),
])
def test_drop_in_argument_equals_the_context_and_float32_within_bf16(kind, options):
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(4, 8, **options)
    ours = getattr(rnnkit, kind)(4, 8, precision="bf16", **options)
    plain = getattr(rnnkit, kind)(4, 8, **options)
    ours.load_state_dict(reference.state_dict())
    plain.load_state_dict(reference.state_dict())
    x = torch.randn(7, 3, 4)
    lengths = torch.tensor([7, 4, 2])
    out, state = ours(x, lengths=lengths)
    with rnnkit.engine.precision("bf16"):
        context_out, context_state = plain(x, lengths=lengths)
    torch.testing.assert_close(out, context_out, rtol=0, atol=0)  # the context's bits
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(reference(packed)[0],
                                                         total_length=7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=BF16_ATOL)
    assert (out - expected).abs().max() > 0  # it did run in bf16


def _leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("make", [lambda: LSTMCell(4, 8), lambda: GRUCell(4, 8),
                                  lambda: MinLSTMCell(4, 8)], ids=["LSTM", "GRU", "MinLSTM"])
def test_recurrence_in_bf16_against_float32(make, reverse):
    torch.manual_seed(1)
    cell = make()
    ours = rnnkit.Recurrence(cell, go_backwards=reverse, precision="bf16")
    reference = rnnkit.Recurrence(cell, go_backwards=reverse, engine="loop")
    x = torch.randn(6, 3, 4, requires_grad=True)
    out, final = ours(x, lengths=[6, 3, 1])
    expected, expected_final = reference(x, lengths=[6, 3, 1])
    for a, b in zip([out, *_leaves(final)], [expected, *_leaves(expected_final)], strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=BF16_ATOL)
    # gradients reach the float32 parameters through the casts
    (grad,) = torch.autograd.grad(out.sum(), [cell.weight_ih])
    (expected_grad,) = torch.autograd.grad(expected.sum(), [cell.weight_ih])
    assert grad.dtype == torch.float32
    scale = float(expected_grad.abs().max())
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=5e-2 * scale)
    # the same as the context around a float32 Recurrence
    with torch.no_grad(), rnnkit.engine.precision("bf16"):
        context_out, _ = reference.__class__(cell, go_backwards=reverse)(x, lengths=[6, 3, 1])
    torch.testing.assert_close(out.detach(), context_out, rtol=0, atol=0)


def test_explain_names_the_precision_and_the_path_bf16_takes():
    x = torch.randn(5, 2, 4)
    text = explain(rnnkit.Recurrence(LSTMCell(4, 8), precision="bf16"), x)
    assert "precision: bf16" in text and "float32 on cpu" in text
    # the C++ kernels run the float32 cell with bf16 GEMMs (tests/engine/test_compiled_bf16.py)
    assert "LSTMCell -> compiled" in text and "precision bf16: bf16 GEMMs" in text
    # a cell whose kernel has no bf16 GEMMs is cast to bfloat16, which the kernels refuse
    text = explain(rnnkit.Recurrence(IndRNNCell(4, 8), precision="bf16"), x)
    assert "precision: bf16 (inputs, state and the cell's weights cast" in text
    assert "dtype torch.bfloat16 not supported" in text
    text = explain(rnnkit.LSTM(4, 8, precision="bf16"), x)
    assert "precision: bf16" in text
    assert "precision='bf16'" in repr(rnnkit.GRU(4, 8, precision="bf16"))


def test_the_emulation_warning_on_cpus_without_bf16(monkeypatch):
    monkeypatch.setattr(fused, "_bf16_notice_given", False)
    monkeypatch.setattr(fused, "_cpu_has_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rnnkit.Recurrence(GRUCell(4, 8), precision="bf16")(torch.randn(3, 2, 4))
        rnnkit.LSTM(4, 8, precision="bf16")(torch.randn(3, 2, 4))
    notices = [w for w in caught if "emulates bfloat16" in str(w.message)]
    assert len(notices) == 1 and notices[0].category is RuntimeWarning


@pytest.mark.parametrize("layer", [lambda p: rnnkit.LSTM(4, 8, precision=p),
                                   lambda p: rnnkit.Recurrence(GRUCell(4, 8), precision=p)],
                         ids=["LSTM", "Recurrence"])
def test_bad_precision_is_a_clear_error_and_config_keeps_it(layer):
    with pytest.raises(ValueError, match=r"precision must be 'fp32' or 'bf16' .*got 'fp16'"):
        layer("fp16")
    module = layer("bfloat16")
    assert module.precision == "bf16"
    twin = type(module).from_config(module.get_config())
    assert twin.precision == "bf16"
