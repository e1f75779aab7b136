"""Keras' masking and state semantics in rnnkit: masks with gaps, zero_output_for_mask,
go_backwards in processing order, reset_states on the wrappers.

Oracles: ``torch.nn`` modules with copied weights run on each sequence with its masked
steps removed (a masked step must leave the state exactly as if it were not there), flipped
inputs for ``go_backwards``, and hand-written loops.
"""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.engine import dispatch, loop
from rnnkit.layers import Bidirectional, Fold, Recurrence, Sequence
from rnnkit.layers.masking import carry_last_valid, last_valid_steps, mask_to_lengths

GAPS = torch.tensor([
    [True, True, False, True, False, True],
    [False, True, True, False, True, False],
    [True, True, True, True, True, True],
])  # (B, T)


def torch_lstm_like(layer: rnnkit.LSTM) -> nn.LSTM:
    ref = nn.LSTM(layer.input_size, layer.hidden_size, num_layers=layer.num_layers,
                  bidirectional=layer.bidirectional, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    return ref


def per_sequence(ref: nn.Module, x: torch.Tensor, mask: torch.Tensor):
    """``ref`` on each sequence with its masked steps removed: (outputs list, h_n list)."""
    outputs, finals = [], []
    for b in range(x.shape[0]):
        out, (h, _) = ref(x[b : b + 1, mask[b]])
        outputs.append(out[0])
        finals.append(h[:, 0])
    return outputs, finals


# ----------------------------------------------------------------------------- the engine


def test_mask_to_lengths_prefix_and_gaps():
    lengths, gaps = mask_to_lengths(torch.tensor([[True, True, False], [True, False, False]]),
                                    2, 3)
    assert lengths.tolist() == [2, 1] and gaps is None
    lengths, gaps = mask_to_lengths(GAPS, 3, 6)
    assert lengths is None and torch.equal(gaps, GAPS.T)
    # A row with no valid step cannot be lengths (>= 1): it runs as a mask.
    lengths, gaps = mask_to_lengths(torch.tensor([[True, True], [False, False]]), 2, 2)
    assert lengths is None and gaps.shape == (2, 2)


@pytest.mark.parametrize("reverse", [False, True])
def test_loop_mask_holds_state_and_ignores_garbage(reverse):
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    x = torch.randn(6, 3, 3, requires_grad=True)  # (T, B, H_in)
    garbage = torch.where(GAPS.T[..., None], 0.0, float("nan"))
    out, h = loop.run_recurrence(cell, x + garbage, torch.zeros(3, 4), reverse=reverse,
                                 mask=GAPS.T)
    assert torch.isfinite(out).all()
    for b in range(3):
        steps = GAPS[b].nonzero().flatten().tolist()
        state, want = torch.zeros(1, 4), {}
        for t in reversed(steps) if reverse else steps:
            _, state = cell(x[t, b : b + 1], state)
            want[t] = state[0]
        torch.testing.assert_close(h[b], state[0])
        for t in range(6):
            torch.testing.assert_close(out[t, b], want.get(t, torch.zeros(4)))
    (gx,) = torch.autograd.grad(out.sum() + h.sum(), x)
    assert gx[~GAPS.T].eq(0).all() and gx[GAPS.T].ne(0).any()


def test_gaps_always_take_the_loop_and_say_why():
    cell = GRUCell(3, 4)
    x = torch.randn(6, 3, 3)
    assert dispatch.choose_path(cell, x, "auto", mask=GAPS.T) == ("loop", dispatch.MASK_REASON)
    with pytest.raises(RuntimeError, match="engine='compiled' cannot run .* mask with gaps"):
        dispatch.run_recurrence(cell, x, torch.zeros(3, 4), engine="compiled", mask=GAPS.T)
    text = rnnkit.explain(rnnkit.LSTM(3, 4, batch_first=True, bidirectional=True),
                          x.transpose(0, 1), mask=GAPS)
    assert "fused path not used: a mask with gaps" in text
    assert text.count("-> loop (a mask with gaps") == 2
    prefix = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 6])
    text = rnnkit.explain(rnnkit.LSTM(3, 4, batch_first=True), x.transpose(0, 1), mask=prefix)
    assert "path: fused" in text and "mask that marks a prefix" in text
    assert "a mask with gaps" in rnnkit.explain(Recurrence(cell), x, mask=GAPS)


# ----------------------------------------------------------------------------- drop-ins


@pytest.mark.parametrize("bidirectional", [False, True])
def test_drop_in_gap_mask_equals_torch_without_the_masked_steps(bidirectional):
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(3, 6, 3)
    out, (h_n, _) = layer(x, mask=GAPS)
    outputs, finals = per_sequence(torch_lstm_like(layer), x, GAPS)
    for b in range(3):
        torch.testing.assert_close(out[b, GAPS[b]], outputs[b])
        assert out[b, ~GAPS[b]].eq(0).all()
        torch.testing.assert_close(h_n[:, b], finals[b])


def test_drop_in_prefix_mask_is_lengths_and_keeps_the_fused_path():
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    prefix = torch.tensor([[True] * 5, [True, True, False, False, False]])
    got = layer(x, mask=prefix)
    want = layer(x, lengths=[5, 2])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    unbatched, _ = layer(x[1], mask=prefix[1])
    torch.testing.assert_close(unbatched, want[0][1])


def test_zero_output_for_mask_false_repeats_the_last_valid_output():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, batch_first=True, bidirectional=True, zero_output_for_mask=False)
    x = torch.randn(3, 6, 3)
    out, _ = layer(x, mask=GAPS)
    plain = rnnkit.LSTM(3, 4, batch_first=True, bidirectional=True)
    plain.load_state_dict(layer.state_dict())
    zeroed, _ = plain(x, mask=GAPS)
    # Row 0 = [T, T, F, T, F, T]: forward half repeats step 1 at step 2, step 3 at 4;
    # backward half (read from the end) repeats step 3 at step 2 and step 5 at step 4.
    torch.testing.assert_close(out[0, 2, :4], zeroed[0, 1, :4])
    torch.testing.assert_close(out[0, 4, :4], zeroed[0, 3, :4])
    torch.testing.assert_close(out[0, 2, 4:], zeroed[0, 3, 4:])
    torch.testing.assert_close(out[0, 4, 4:], zeroed[0, 5, 4:])
    # Row 1 starts masked: nothing valid processed yet, so zeros (forward half only).
    assert out[1, 0, :4].eq(0).all() and out[1, 0, 4:].ne(0).all()
    assert out[1, 5, :4].ne(0).all() and out[1, 5, 4:].eq(0).all()
    # With lengths too (the fused path): padding repeats each sequence's last output.
    single = rnnkit.GRU(3, 4, batch_first=True, zero_output_for_mask=False)
    out, h_n = single(x, lengths=[6, 2, 4])
    torch.testing.assert_close(out[1, 2:], h_n[0, 1].expand(4, 4))


def test_go_backwards_reads_the_padded_sequence_reversed_in_processing_order():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, num_layers=2, batch_first=True, go_backwards=True)
    assert "go_backwards=True" in repr(layer)
    ref = torch_lstm_like(layer)
    x = torch.randn(3, 6, 3)
    out, (h_n, _) = layer(x)
    want, (want_h, _) = ref(x.flip(1))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
    # lengths: Keras reverses the padded sequence, so the padding comes first (zeros there)
    # and each sequence's last valid step is read first.
    out, (h_n, _) = layer(x, lengths=[6, 2, 4])
    for b, length in enumerate([6, 2, 4]):
        want, (want_h, _) = ref(x[b : b + 1, :length].flip(1))
        torch.testing.assert_close(out[b, 6 - length :], want[0])
        assert out[b, : 6 - length].eq(0).all()
        torch.testing.assert_close(h_n[:, b], want_h[:, 0])
    # A mask with gaps: the same rule, on the loop path.
    out, (h_n, _) = layer(x, mask=GAPS)
    _, finals = per_sequence(ref, x.flip(1), GAPS.flip(1))
    for b in range(3):
        torch.testing.assert_close(h_n[:, b], finals[b])
    assert torch.equal(out[0].ne(0).all(-1), GAPS[0].flip(0))


# ----------------------------------------------------------------------------- drivers


def test_recurrence_and_fold_with_gaps_equal_the_compressed_sequences():
    torch.manual_seed(0)
    cell = LSTMCell(3, 4)
    x = torch.randn(3, 6, 3)
    for go_backwards in (False, True):
        layer = Recurrence(cell, batch_first=True, go_backwards=go_backwards)
        out, (h, c) = layer(x, mask=GAPS)
        last, (fold_h, _) = Fold(cell, batch_first=True, go_backwards=go_backwards)(
            x, mask=GAPS)
        for b in range(3):
            want, (want_h, want_c) = layer(x[b : b + 1, GAPS[b]])
            torch.testing.assert_close(out[b, GAPS[b]], want[0])
            assert out[b, ~GAPS[b]].eq(0).all()
            torch.testing.assert_close((h[b], c[b]), (want_h[0], want_c[0]))
            torch.testing.assert_close(last[b], want[0, 0 if go_backwards else -1])
            torch.testing.assert_close(fold_h[b], want_h[0])


def test_recurrence_output_order_processing_is_keras_go_backwards():
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    x = torch.randn(5, 2, 3)
    aligned, h = Recurrence(cell, go_backwards=True)(x, lengths=[5, 3])
    keras, keras_h = Recurrence(cell, go_backwards=True, output_order="processing")(
        x, lengths=[5, 3])
    torch.testing.assert_close(keras, aligned.flip(0))
    torch.testing.assert_close(keras_h, h)
    assert keras[:2, 1].eq(0).all()  # the padding of sequence 1 was "processed" first
    carried, _ = Recurrence(cell, go_backwards=True, output_order="processing",
                            zero_output_for_mask=False)(x, lengths=[5, 3])
    torch.testing.assert_close(carried, keras)  # nothing valid precedes the padding
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 3])
    with pytest.raises(ValueError, match="PackedSequence cannot hold"):
        Recurrence(cell, go_backwards=True, output_order="processing")(packed)
    with pytest.raises(ValueError, match="output_order must be one of"):
        Recurrence(cell, output_order="reversed")


def test_sequence_with_gaps_and_a_row_with_no_valid_step():
    torch.manual_seed(0)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    x = torch.randn(2, 3, 3)
    seq = Sequence(GRUCell(3, 4), return_state=True)
    last, h = seq(x, mask=mask)
    assert last[1].eq(0).all() and h[1].eq(0).all()  # nothing ran: initial state, no output
    torch.testing.assert_close(last[0], seq(x[:1, [0, 2]])[0][0])
    bi = Sequence(rnnkit.GRU(3, 4, batch_first=True, bidirectional=True))
    assert bi(x, mask=mask)[1].eq(0).all()


def test_carry_helpers():
    valid = GAPS.T  # (T, B)
    out = torch.arange(1.0, 19.0).view(6, 3, 1) * valid[..., None]
    carried = carry_last_valid(out, valid)
    assert carried[:, 1, 0].tolist() == [0.0, 5.0, 8.0, 8.0, 14.0, 14.0]
    back = carry_last_valid(out, valid, reverse=True)
    assert back[:, 1, 0].tolist() == [5.0, 5.0, 8.0, 14.0, 14.0, 0.0]
    steps, found = last_valid_steps(valid)
    assert steps.tolist() == [5, 4, 5] and found.all()
    steps, _ = last_valid_steps(valid, reverse=True)
    assert steps.tolist() == [0, 1, 0]


# ----------------------------------------------------------------------------- reset_states


def test_bidirectional_and_sequence_reset_states_per_sample():
    torch.manual_seed(0)
    bi = Bidirectional(rnnkit.GRU(3, 4, batch_first=True, stateful=True))
    seq = Sequence(bi)
    x = torch.randn(2, 5, 3)
    fresh = seq(x)
    carried = seq(x)
    assert not torch.allclose(fresh, carried)
    seq.reset_states(torch.tensor([True, False]))  # restart sequence 0 only
    again = seq(x)
    torch.testing.assert_close(again[0], fresh[0])
    assert not torch.allclose(again[1], carried[1])
    bi.reset_states()
    torch.testing.assert_close(seq(x), fresh)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2,\)"):
        bi.reset_states(torch.tensor([True]))
    with pytest.raises(TypeError, match="have no reset_states"):
        Sequence(nn.Identity()).reset_states()


# ----------------------------------------------------------------------------- bad input

LSTM = rnnkit.LSTM(3, 4, batch_first=True)
X = torch.randn(2, 5, 3)
MASK = torch.ones(2, 5, dtype=torch.bool)
PACKED = nn.utils.rnn.pack_padded_sequence(X, [5, 3], batch_first=True)

BAD_INPUT = [
    (lambda: LSTM(X, mask=MASK.long()), TypeError, ["mask must be a bool tensor", "mask.bool()"]),
    (lambda: LSTM(X, mask=MASK.T), ValueError, ["(batch, time) = (2, 5)", "got (5, 2)"]),
    (lambda: LSTM(X, lengths=[5, 5], mask=MASK), ValueError, ["either lengths= or mask="]),
    (lambda: LSTM(PACKED, mask=MASK), ValueError, ["PackedSequence"]),
    (lambda: rnnkit.LSTM(3, 4, go_backwards=True)(PACKED), ValueError,
     ["go_backwards=True", "PackedSequence"]),
    (lambda: rnnkit.LSTM(3, 4, bidirectional=True, go_backwards=True), ValueError,
     ["go_backwards=True", "bidirectional"]),
    (lambda: rnnkit.LSTM(3, 4, engine="fused", batch_first=True)(X, mask=GAPS[:2, :5]),
     ValueError, ["engine='fused'", "mask with gaps"]),
    (lambda: Recurrence(GRUCell(3, 4), batch_first=True)(X, mask=MASK[:, :4]), ValueError,
     ["Recurrence mask", "(2, 5)"]),
    (lambda: Bidirectional(GRUCell(3, 4))(X, lengths=[5, 5], mask=MASK), ValueError,
     ["Bidirectional", "either lengths= or mask="]),
    (lambda: Sequence(GRUCell(3, 4))(X, mask=[[1, 0]]), TypeError, ["Sequence mask", "bool"]),
    (lambda: loop.run_recurrence(GRUCell(3, 4), X, torch.zeros(5, 4), mask=MASK.T), ValueError,
     ["time-major (T, B) = (2, 5)", "got (5, 2)"]),
]


@pytest.mark.parametrize(("call", "error", "words"), BAD_INPUT)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
