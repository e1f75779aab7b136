"""The seed exercise's API (rnn, init_rnn_state, lstm): the exercise's own code is the oracle,
and the results agree with ElmanCell/LSTMCell holding the same (transposed) weights."""

import pytest
import torch
from torch import nn

from rnnkit.cells import ElmanCell, LSTMCell
from rnnkit.functional import init_rnn_state, lstm, rnn

num_inputs, num_hiddens, num_outputs, batch_size, T = 4, 6, 3, 2, 5


# --- the exercise's solution code, verbatim (seeds/003), as an independent oracle ---------


def exercise_rnn(input, state, params):
    W_xh, W_hh, b_h, W_hq, b_q = params
    H = state
    H = torch.matmul(input, W_xh) + torch.matmul(H, W_hh) + b_h
    H = torch.tanh(H)
    Y = torch.matmul(H, W_hq) + b_q
    return Y, H


def exercise_init_rnn_state(num_inputs, num_hiddens):
    init_state = torch.zeros((num_inputs, num_hiddens), dtype=torch.float32)
    return init_state


def exercise_lstm(X, state, params):
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q = params
    (H, C) = state
    F = torch.matmul(X, W_xf) + torch.matmul(H, W_hf) + b_f
    F = torch.sigmoid(F)
    I = torch.sigmoid(torch.matmul(X, W_xi) + torch.matmul(H, W_hi) + b_i)
    C_tilde = torch.tanh(torch.matmul(X, W_xc) + torch.matmul(H, W_hc) + b_c)
    C = F * C + I * C_tilde
    O = torch.sigmoid(torch.matmul(X, W_xo) + torch.matmul(H, W_ho) + b_o)
    H = O * C.tanh()
    Y = torch.matmul(H, W_hq) + b_q
    return Y, (H, C)


# --- helpers ------------------------------------------------------------------------------


def normal(*shape):
    return torch.randn(*shape) * 0.5


def rnn_params():
    return [
        normal(num_inputs, num_hiddens),
        normal(num_hiddens, num_hiddens),
        torch.zeros(num_hiddens),
        normal(num_hiddens, num_outputs),
        torch.zeros(num_outputs),
    ]


def lstm_params():
    def three():
        return normal(num_inputs, num_hiddens), normal(num_hiddens, num_hiddens), normal(
            num_hiddens
        )

    W_xi, W_hi, b_i = three()
    W_xf, W_hf, b_f = three()
    W_xo, W_ho, b_o = three()
    W_xc, W_hc, b_c = three()
    W_hq, b_q = normal(num_hiddens, num_outputs), normal(num_outputs)
    return [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q]


# --- tests --------------------------------------------------------------------------------


def test_init_rnn_state_is_the_exercises():
    state = init_rnn_state(batch_size, num_hiddens)
    assert state.dtype == torch.float32
    assert state.shape == (batch_size, num_hiddens)
    assert torch.equal(state, exercise_init_rnn_state(batch_size, num_hiddens))
    assert init_rnn_state(0, 3).shape == (0, 3)


def test_rnn_equals_the_exercise_code_over_a_sequence():
    torch.manual_seed(0)
    params = rnn_params()
    inputs = torch.randn(T, batch_size, num_inputs)
    state = init_rnn_state(batch_size, num_hiddens)
    ref_state = exercise_init_rnn_state(batch_size, num_hiddens)
    for X in inputs:
        Y, state = rnn(X, state, params)
        Y_ref, ref_state = exercise_rnn(X, ref_state, params)
        assert torch.equal(Y, Y_ref) and torch.equal(state, ref_state)
    assert Y.shape == (batch_size, num_outputs)


def test_lstm_equals_the_exercise_code_over_a_sequence():
    torch.manual_seed(1)
    params = lstm_params()
    inputs = torch.randn(T, batch_size, num_inputs)
    state = (init_rnn_state(batch_size, num_hiddens), init_rnn_state(batch_size, num_hiddens))
    ref_state = state
    for X in inputs:
        Y, state = lstm(X, state, params)
        Y_ref, ref_state = exercise_lstm(X, ref_state, params)
        assert torch.equal(Y, Y_ref)
        assert torch.equal(state[0], ref_state[0]) and torch.equal(state[1], ref_state[1])


def test_rnn_agrees_with_elman_cell_and_a_linear_output_layer():
    torch.manual_seed(2)
    cell = ElmanCell(num_inputs, num_hiddens)
    head = nn.Linear(num_hiddens, num_outputs)
    # the exercise multiplies X @ W, torch.nn stores W transposed; one bias b_h = b_ih + b_hh
    W_xh = cell.weight_ih.detach().T.clone().requires_grad_()
    W_hh = cell.weight_hh.detach().T.clone().requires_grad_()
    b_h = (cell.bias_ih + cell.bias_hh).detach().clone().requires_grad_()
    W_hq = head.weight.detach().T.clone().requires_grad_()
    b_q = head.bias.detach().clone().requires_grad_()
    params = (W_xh, W_hh, b_h, W_hq, b_q)

    inputs = torch.randn(T, batch_size, num_inputs)
    state = init_rnn_state(batch_size, num_hiddens)
    h = cell.initial_state(batch_size)
    loss_ex = loss_cell = 0.0
    for X in inputs:
        Y, state = rnn(X, state, params)
        out, h = cell(X, h)
        Y_cell = head(out)
        torch.testing.assert_close(state, h, atol=1e-5, rtol=0)
        torch.testing.assert_close(Y, Y_cell, atol=1e-5, rtol=0)
        loss_ex = loss_ex + (Y**2).sum()
        loss_cell = loss_cell + (Y_cell**2).sum()
    loss_ex.backward()
    loss_cell.backward()
    torch.testing.assert_close(W_xh.grad, cell.weight_ih.grad.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(W_hh.grad, cell.weight_hh.grad.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(b_h.grad, cell.bias_ih.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(b_h.grad, cell.bias_hh.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(W_hq.grad, head.weight.grad.T, atol=1e-5, rtol=0)


def test_lstm_agrees_with_lstm_cell():
    torch.manual_seed(3)
    cell = LSTMCell(num_inputs, num_hiddens)
    head = nn.Linear(num_hiddens, num_outputs)
    n = num_hiddens

    def gate(k):  # torch.nn's gate order is i, f, g, o
        rows = slice(k * n, (k + 1) * n)
        return (
            cell.weight_ih[rows].detach().T,
            cell.weight_hh[rows].detach().T,
            (cell.bias_ih[rows] + cell.bias_hh[rows]).detach(),
        )

    W_xi, W_hi, b_i = gate(0)
    W_xf, W_hf, b_f = gate(1)
    W_xc, W_hc, b_c = gate(2)
    W_xo, W_ho, b_o = gate(3)
    params = [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c,
              head.weight.detach().T, head.bias.detach()]  # fmt: skip
    inputs = torch.randn(T, batch_size, num_inputs)
    state = (torch.randn(batch_size, n), torch.randn(batch_size, n))
    cell_state = state
    with torch.no_grad():
        for X in inputs:
            Y, state = lstm(X, state, params)
            out, cell_state = cell(X, cell_state)
            torch.testing.assert_close(state[0], cell_state[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(state[1], cell_state[1], atol=1e-5, rtol=0)
            torch.testing.assert_close(Y, head(out), atol=1e-5, rtol=0)


def test_broadcastable_bias_shapes_work_as_in_the_exercise():
    torch.manual_seed(4)
    params = rnn_params()
    params_2d = [params[0], params[1], params[2].reshape(1, -1), params[3],
                 params[4].reshape(1, -1)]  # fmt: skip
    X = torch.randn(batch_size, num_inputs)
    state = init_rnn_state(batch_size, num_hiddens)
    assert torch.equal(rnn(X, state, params)[0], rnn(X, state, params_2d)[0])


def test_bad_arguments():
    X = torch.randn(batch_size, num_inputs)
    state = init_rnn_state(batch_size, num_hiddens)
    with pytest.raises(ValueError, match=r"rnn: params must hold 5 tensors \(W_xh, W_hh, b_h, "
                       r"W_hq, b_q\), got 4"):
        rnn(X, state, rnn_params()[:4])
    with pytest.raises(TypeError, match="rnn: b_q must be a Tensor, got float"):
        rnn(X, state, [*rnn_params()[:4], 0.0])
    with pytest.raises(TypeError, match="rnn: params must be a sequence of 5 tensors"):
        rnn(X, state, 3)
    with pytest.raises(ValueError, match="lstm: params must hold 14 tensors .* got 13"):
        lstm(X, (state, state), lstm_params()[:13])
    with pytest.raises(TypeError, match=r"lstm: state must be a pair \(H, C\) of tensors"):
        lstm(X, state[:, :1], lstm_params())
    with pytest.raises(TypeError, match="init_rnn_state: num_hiddens must be an int, got float"):
        init_rnn_state(2, 3.0)
    with pytest.raises(ValueError, match="init_rnn_state: num_inputs must be >= 0, got -1"):
        init_rnn_state(-1, 3)
