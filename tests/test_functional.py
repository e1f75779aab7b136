"""The core step functions used directly, without rnnkit modules, against torch.nn."""

import pytest
import torch
from torch import nn

from rnnkit import functional as RF

B, I, H, T = 3, 4, 5, 6


def torch_weights(module: nn.Module, suffix: str = "") -> dict:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return {n: getattr(module, n + suffix, None) for n in names}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_step_unrolled_matches_torch_rnn(nonlinearity):
    torch.manual_seed(0)
    ref = nn.RNN(I, H, nonlinearity=nonlinearity)
    w = RF.ElmanWeights(**torch_weights(ref, "_l0"))
    xs = torch.randn(T, B, I)
    h = torch.randn(B, H)
    outputs = []
    state = h
    for x in xs.unbind(0):
        out, state = RF.elman_step(x, state, w, nonlinearity)
        outputs.append(out)
    expected, h_n = ref(xs, h.unsqueeze(0))
    torch.testing.assert_close(torch.stack(outputs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(state, h_n[0], atol=1e-5, rtol=0)


def test_lstm_step_unrolled_matches_torch_lstm_and_gradients():
    torch.manual_seed(1)
    ref = nn.LSTM(I, H)
    w = RF.LSTMWeights(**torch_weights(ref, "_l0"))
    xs = torch.randn(T, B, I, requires_grad=True)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    state, outputs = (h0, c0), []
    for x in xs.unbind(0):
        out, state = RF.lstm_step(x, state, w)
        outputs.append(out)
    mine = torch.stack(outputs)  # (T, B, H)
    expected, (h_n, c_n) = ref(xs, (h0.unsqueeze(0), c0.unsqueeze(0)))
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[0], h_n[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(state[1], c_n[0], atol=1e-5, rtol=0)
    g = torch.randn(T, B, H)
    grads_mine = torch.autograd.grad((mine * g).sum(), [xs, *w[:4]])
    grads_ref = torch.autograd.grad((expected * g).sum(), [xs, *w[:4]])
    for a, b in zip(grads_mine, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_gru_step_unrolled_matches_torch_gru():
    torch.manual_seed(2)
    ref = nn.GRU(I, H)
    w = RF.GRUWeights(**torch_weights(ref, "_l0"))
    xs = torch.randn(T, B, I)
    h0 = torch.randn(B, H)
    state, outputs = h0, []
    for x in xs.unbind(0):
        out, state = RF.gru_step(x, state, w)
        outputs.append(out)
    expected, h_n = ref(xs, h0.unsqueeze(0))
    torch.testing.assert_close(torch.stack(outputs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(state, h_n[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_steps_without_bias_match_torch_cells(bias):
    torch.manual_seed(3)
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    rnn, lstm, gru = nn.RNNCell(I, H, bias=bias), nn.LSTMCell(I, H, bias=bias), nn.GRUCell(
        I, H, bias=bias
    )
    out, _ = RF.elman_step(x, h, RF.ElmanWeights(**torch_weights(rnn)))
    torch.testing.assert_close(out, rnn(x, h), atol=1e-5, rtol=0)
    out, (h1, c1) = RF.lstm_step(x, (h, c), RF.LSTMWeights(**torch_weights(lstm)))
    h2, c2 = lstm(x, (h, c))
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)
    out, _ = RF.gru_step(x, h, RF.GRUWeights(**torch_weights(gru)))
    torch.testing.assert_close(out, gru(x, h), atol=1e-5, rtol=0)


def test_layer_norm_params_without_affine_part():
    torch.manual_seed(4)
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    plain = RF.LayerNormParams(None, None)
    out, (h1, c1) = RF.lstm_step(
        x, (h, c), RF.LSTMWeights(w_ih, w_hh, ln_ih=plain, ln_hh=plain, ln_c=plain)
    )
    ln4, ln1 = nn.LayerNorm(4 * H, elementwise_affine=False), nn.LayerNorm(
        H, elementwise_affine=False
    )
    i, f, g, o = (ln4(x @ w_ih.T) + ln4(h @ w_hh.T)).chunk(4, 1)
    c2 = ln1(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)
    torch.testing.assert_close(h1, torch.sigmoid(o) * torch.tanh(c2), atol=1e-5, rtol=0)
    assert RF.LayerNormParams(None, None).eps == 1e-5


def test_step_functions_are_pure_and_vmap_over_weight_sets():
    # an ensemble of 3 LSTMs evaluated at once: the step function has no hidden state
    torch.manual_seed(5)
    cells = [nn.LSTMCell(I, H) for _ in range(3)]
    stacked = RF.LSTMWeights(
        *(torch.stack([getattr(cell, n).detach() for cell in cells]) for n in
          ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    )
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)

    def run(w_ih, w_hh, b_ih, b_hh):
        return RF.lstm_step(x, (h, c), RF.LSTMWeights(w_ih, w_hh, b_ih, b_hh))[0]

    batched = torch.func.vmap(run)(*stacked[:4])  # (3, B, H)
    for k, cell in enumerate(cells):
        torch.testing.assert_close(batched[k], cell(x, (h, c))[0], atol=1e-5, rtol=0)


def test_weights_tuples_field_order_and_defaults():
    assert RF.ElmanWeights._fields == ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    assert RF.LSTMWeights._fields == (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr",
        "weight_ci", "weight_cf", "weight_co", "ln_ih", "ln_hh", "ln_c",
    )  # fmt: skip
    assert RF.GRUWeights._fields == (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih", "ln_hh", "ln_hn",
    )  # fmt: skip
    w = RF.LSTMWeights(torch.zeros(4, 1), torch.zeros(4, 1))
    assert all(getattr(w, f) is None for f in w._fields[2:])


def test_elman_step_rejects_unknown_nonlinearity():
    w = RF.ElmanWeights(torch.zeros(H, I), torch.zeros(H, H))
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        RF.elman_step(torch.zeros(B, I), torch.zeros(B, H), w, "gelu")
