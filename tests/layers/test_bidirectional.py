"""Bidirectional and Sequence against torch.nn bidirectional modules."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cells import GRUCell
from rnnkit.layers import Bidirectional, Recurrence, Sequence


class UserGRUCell(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.GRUCell(3, 4)
        self.input_size, self.hidden_size, self.state_size, self.output_size = 3, 4, 4, 4

    def forward(self, x, h):
        h = self.inner(x, h)
        return h, h


def torch_bigru(forward_state: dict, backward_state: dict, batch_first: bool) -> nn.GRU:
    gru = nn.GRU(3, 4, bidirectional=True, batch_first=batch_first)
    state = {k + "_l0": v for k, v in forward_state.items()}
    state.update({k + "_l0_reverse": v for k, v in backward_state.items()})
    gru.load_state_dict(state)
    return gru


@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_cell_equals_torch_with_lengths(batch_first):
    torch.manual_seed(0)
    bi = Bidirectional(UserGRUCell(), batch_first=batch_first)
    forward_cell, backward_cell = bi.forward_layer.cell, bi.backward_layer.cell
    assert not torch.equal(forward_cell.inner.weight_ih, backward_cell.inner.weight_ih)
    gru = torch_bigru(forward_cell.inner.state_dict(), backward_cell.inner.state_dict(),
                      batch_first)
    x = torch.randn(3, 6, 3) if batch_first else torch.randn(6, 3, 3)
    lengths = torch.tensor([6, 2, 4])
    out, (h_f, h_b) = bi(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    want_packed, h_n = gru(packed)
    want, _ = pad_packed_sequence(want_packed, batch_first=batch_first, total_length=6)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_f, h_n[0])
    torch.testing.assert_close(h_b, h_n[1])
    # PackedSequence in, PackedSequence out.
    out_packed, _ = bi(packed)
    torch.testing.assert_close(out_packed.data, want_packed.data)


def test_bidirectional_dropin_equals_torch_bidirectional():
    torch.manual_seed(0)
    bi = Bidirectional(rnnkit.LSTM(3, 4, batch_first=True))
    theirs = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    state = dict(bi.forward_layer.state_dict())
    state.update({k + "_reverse": v for k, v in bi.backward_layer.state_dict().items()})
    theirs.load_state_dict(state)
    x = torch.randn(2, 5, 3)
    lengths = torch.tensor([3, 5])
    out, ((h_f, c_f), (h_b, c_b)) = bi(x, lengths=lengths)
    want, (h_n, c_n) = theirs(pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False))
    want, _ = pad_packed_sequence(want, batch_first=True, total_length=5)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.cat([h_f, h_b]), h_n)
    torch.testing.assert_close(torch.cat([c_f, c_b]), c_n)


def test_merge_modes():
    torch.manual_seed(0)
    bi = Bidirectional(GRUCell(3, 4), merge_mode=None)
    x = torch.randn(5, 2, 3)
    (out_f, out_b), _ = bi(x)
    for mode, want in (("sum", out_f + out_b), ("mul", out_f * out_b),
                       ("ave", (out_f + out_b) / 2), ("concat", torch.cat([out_f, out_b], -1))):
        bi.merge_mode = mode
        torch.testing.assert_close(bi(x)[0], want)


def test_explicit_backward_layer_and_initial_states():
    torch.manual_seed(0)
    forward, backward = UserGRUCell(), UserGRUCell()
    bi = Bidirectional(forward, backward_layer=backward)
    assert bi.backward_layer.cell is backward and bi.backward_layer.go_backwards
    x = torch.randn(4, 2, 3)
    h0 = torch.randn(2, 2, 4)
    gru = torch_bigru(forward.inner.state_dict(), backward.inner.state_dict(), False)
    out, _ = bi(x, (h0[0], h0[1]))
    torch.testing.assert_close(out, gru(x, h0)[0])


def test_bidirectional_errors():
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        Bidirectional(GRUCell(3, 4), merge_mode="max")
    with pytest.raises(ValueError, match="already bidirectional"):
        Bidirectional(rnnkit.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="pass the forward layer"):
        Bidirectional(Recurrence(GRUCell(3, 4), go_backwards=True))
    with pytest.raises(ValueError, match="state must be None or a pair"):
        Bidirectional(GRUCell(3, 4))(torch.randn(3, 2, 3), torch.zeros(2, 4))


def test_sequence_last_output_of_bidirectional_lstm_is_keras_like():
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    theirs.load_state_dict(lstm.state_dict())
    x = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 2])
    last, (h_n, _) = Sequence(lstm, return_state=True)(x, lengths=lengths)
    _, (want_h, _) = theirs(pack_padded_sequence(x, lengths, batch_first=True,
                                                 enforce_sorted=False))
    torch.testing.assert_close(last, torch.cat([want_h[-2], want_h[-1]], dim=-1))
    outputs = Sequence(lstm, return_sequences=True)(x, lengths=lengths)
    assert outputs.shape == (2, 5, 8)


def test_sequence_over_cell_recurrence_and_bidirectional():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    seq = Sequence(GRUCell(3, 4))
    last = seq(x, mask=mask)
    full, h = Recurrence(seq.layer.cell, batch_first=True)(x, lengths=[3, 2])
    torch.testing.assert_close(last, h)
    backwards = Sequence(Recurrence(GRUCell(3, 4), go_backwards=True), return_state=True)
    last, h = backwards(x.transpose(0, 1), lengths=[3, 2])
    torch.testing.assert_close(last, h)
    bi = Bidirectional(GRUCell(3, 4), merge_mode="sum", batch_first=True)
    last, (h_f, h_b) = Sequence(bi, return_state=True)(x, lengths=[3, 2])
    torch.testing.assert_close(last, h_f + h_b)
    # A mask with gaps holds the state at masked steps (Keras): the same as dropping them.
    gaps = torch.tensor([[True, False, True, False], [True, True, False, False]])
    torch.testing.assert_close(seq(x, mask=gaps)[0], seq(x[:1, [0, 2]])[0])
    with pytest.raises(ValueError, match="either lengths= or mask=, not both"):
        seq(x, lengths=[3, 2], mask=mask)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        seq(x, mask=mask.long())
    with pytest.raises(ValueError, match=r"shape \(batch, time\) = \(2, 4\)"):
        seq(x, mask=mask.T)
