"""Keras' test cells and weight layouts, for the tests ported from Keras 3.

The two toy cells are ports of ``OneStateRNNCell`` and ``TwoStatesRNNCell`` in Keras 3's
``keras/src/layers/rnn/rnn_test.py`` (Apache-2.0, https://github.com/keras-team/keras):
every weight is 1, so their outputs are small integers that Keras' tests pin down.

``load_keras_*`` put weights given in Keras' layout into rnnkit's drop-ins, mapping the gate
orders: Keras' LSTM kernel columns are ``i, f, c, o`` (torch rows ``i, f, g, o``: the same
order, transposed); Keras' GRU columns are ``z, r, h`` (torch rows ``r, z, n``) and its
``reset_after`` bias is ``(2, 3H)``, row 0 the input bias and row 1 the recurrent bias.
Keras has one bias per gate where torch has two, so it goes into ``bias_ih`` and
``bias_hh`` is zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

import rnnkit


class OneStateCell(nn.Module):
    """Keras' ``OneStateRNNCell``: ``out = x @ 1 + h @ 1``; the state is the output."""

    def __init__(self, input_size: int, units: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, units
        self.state_size = self.output_size = units
        self.kernel = nn.Parameter(torch.ones(input_size, units))
        self.recurrent_kernel = nn.Parameter(torch.ones(units, units))

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out = x @ self.kernel + h @ self.recurrent_kernel  # (B, units)
        return out, out


class TwoStatesCell(nn.Module):
    """Keras' ``TwoStatesRNNCell``: two states, output their sum.

    Kept exactly as Keras wrote it, including that both recurrent products read the first
    state (``prev_2 = states[0]``): the expected numbers depend on it.
    """

    def __init__(self, input_size: int, units: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, units
        self.state_size = (units, units)
        self.output_size = units
        self.kernel = nn.Parameter(torch.ones(input_size, units))
        self.recurrent_kernel_1 = nn.Parameter(torch.ones(units, units))
        self.recurrent_kernel_2 = nn.Parameter(torch.ones(units, units))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]):
        prev_1 = prev_2 = state[0]
        h = x @ self.kernel
        out_1 = h + prev_1 @ self.recurrent_kernel_1
        out_2 = h + prev_2 @ self.recurrent_kernel_2
        return out_1 + out_2, (out_1, out_2)


def keras_sequence(shape: tuple[int, ...]) -> Tensor:
    """``np.arange(prod(shape)).reshape(shape).astype("float32")``, Keras' test input."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    with torch.no_grad():
        getattr(module, name).copy_(value)


def load_keras_lstm(module: nn.Module, kernel: Tensor, recurrent: Tensor,
                    bias: Tensor | None, suffix: str = "_l0") -> None:
    """Keras LSTM weights ``kernel (H_in, 4H)``, ``recurrent (H, 4H)``, ``bias (4H,)``
    (columns ``i, f, c, o``) into a torch-layout LSTM (rows ``i, f, g, o``)."""
    _set(module, "weight_ih" + suffix, kernel.T)
    _set(module, "weight_hh" + suffix, recurrent.T)
    if bias is not None:
        _set(module, "bias_ih" + suffix, bias)
        _set(module, "bias_hh" + suffix, torch.zeros_like(bias))


def _gru_rows(columns: Tensor) -> Tensor:
    """Keras GRU gate blocks ``z, r, h`` (last dim) -> torch's ``r, z, n``."""
    z, r, h = columns.chunk(3, dim=-1)
    return torch.cat([r, z, h], dim=-1)


def load_keras_gru(module: nn.Module, kernel: Tensor, recurrent: Tensor,
                   bias: Tensor | None, suffix: str = "_l0") -> None:
    """Keras GRU weights ``kernel (H_in, 3H)``, ``recurrent (H, 3H)`` (columns ``z, r, h``)
    and ``bias`` ``(2, 3H)`` (reset_after: input row, recurrent row) or ``(3H,)`` (reset
    before) into a torch-layout GRU (rows ``r, z, n``)."""
    _set(module, "weight_ih" + suffix, _gru_rows(kernel).T)
    _set(module, "weight_hh" + suffix, _gru_rows(recurrent).T)
    if bias is not None:
        if bias.dim() == 2:
            input_bias, recurrent_bias = _gru_rows(bias[0]), _gru_rows(bias[1])
        else:
            input_bias, recurrent_bias = _gru_rows(bias), torch.zeros_like(bias)
        _set(module, "bias_ih" + suffix, input_bias)
        _set(module, "bias_hh" + suffix, recurrent_bias)


def load_keras_simple_rnn(module: nn.Module, kernel: Tensor, recurrent: Tensor,
                          bias: Tensor | None, suffix: str = "_l0") -> None:
    """Keras SimpleRNN weights ``kernel (H_in, H)``, ``recurrent (H, H)``, ``bias (H,)``."""
    _set(module, "weight_ih" + suffix, kernel.T)
    _set(module, "weight_hh" + suffix, recurrent.T)
    if bias is not None:
        _set(module, "bias_ih" + suffix, bias)
        _set(module, "bias_hh" + suffix, torch.zeros_like(bias))


def constant_lstm(input_size: int, units: int, *, kernel: float = 0.01,
                  recurrent: float = 0.02, bias: float = 0.03, unit_forget_bias: bool = True,
                  use_bias: bool = True, suffixes: tuple[str, ...] = ("_l0",),
                  **options) -> rnnkit.LSTM:
    """``keras.layers.LSTM(units, kernel_initializer=Constant(kernel), ...)`` as an
    ``rnnkit.LSTM`` (batch-first). ``unit_forget_bias`` (Keras' default) makes the
    forget-gate bias 1 whatever the bias initializer says."""
    module = rnnkit.LSTM(input_size, units, batch_first=True, bias=use_bias, **options)
    keras_bias = None
    if use_bias:
        keras_bias = torch.full((4 * units,), bias)
        if unit_forget_bias:
            keras_bias[units:2 * units] = 1.0
    for suffix in suffixes:
        load_keras_lstm(module, torch.full((input_size, 4 * units), kernel),
                        torch.full((units, 4 * units), recurrent), keras_bias, suffix)
    return module


def constant_gru(input_size: int, units: int, *, kernel: float = 0.01,
                 recurrent: float = 0.02, bias: float = 0.03, reset_after: bool = True,
                 use_bias: bool = True, suffixes: tuple[str, ...] = ("_l0",),
                 **options) -> rnnkit.GRU:
    """``keras.layers.GRU(units, ...Constant initializers)`` as an ``rnnkit.GRU``."""
    module = rnnkit.GRU(input_size, units, batch_first=True, bias=use_bias,
                        reset_after=reset_after, **options)
    keras_bias = None
    if use_bias:
        keras_bias = torch.full((2, 3 * units) if reset_after else (3 * units,), bias)
    for suffix in suffixes:
        load_keras_gru(module, torch.full((input_size, 3 * units), kernel),
                       torch.full((units, 3 * units), recurrent), keras_bias, suffix)
    return module


def constant_simple_rnn(input_size: int, units: int, *, kernel: float = 0.01,
                        recurrent: float = 0.02, bias: float = 0.03,
                        suffixes: tuple[str, ...] = ("_l0",), **options) -> rnnkit.RNN:
    """``keras.layers.SimpleRNN(units, ...Constant initializers)`` as an ``rnnkit.RNN``."""
    module = rnnkit.RNN(input_size, units, batch_first=True, **options)
    for suffix in suffixes:
        load_keras_simple_rnn(module, torch.full((input_size, units), kernel),
                              torch.full((units, units), recurrent),
                              torch.full((units,), bias), suffix)
    return module
