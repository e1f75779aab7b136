"""Pure step functions: ``x, state, weights -> output, new_state``. No module state.

Each function computes one time step of one cell family. Weight shapes and gate order are
documented per function; the core families use ``torch.nn``'s layout so that weights copied
from ``torch.nn.RNNCell/LSTMCell/GRUCell`` give the same results.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --- core cells: Elman, LSTM, GRU ---
#
# Symbols used in the shapes below:
#   B      batch size
#   H_in   input features
#   H      hidden size (the LSTM cell state c has H features)
#   P      LSTM projection size (proj_size); H_out = P when projecting, else H
#   G      number of gate slices: LSTM 4 (i, f, g, o), coupled LSTM 3 (f, g, o), GRU 3 (r, z, n)


class LayerNormParams(NamedTuple):
    """Parameters of one layer normalisation over the last dimension (``F.layer_norm``).

    ``weight`` and ``bias`` are ``(N,)`` or ``None`` (no affine part); ``eps`` as in
    ``torch.nn.LayerNorm``.
    """

    weight: Tensor | None
    bias: Tensor | None
    eps: float = 1e-5


def _layer_norm(x: Tensor, params: LayerNormParams) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), params.weight, params.bias, params.eps)


def _projection(
    x: Tensor, weight: Tensor, bias: Tensor | None, norm: LayerNormParams | None
) -> Tensor:
    """``W x + b``, or ``LN(W x) + b`` when ``norm`` is given (the bias stays un-normalised)."""
    if norm is None:
        return F.linear(x, weight, bias)
    out = _layer_norm(F.linear(x, weight), norm)
    return out if bias is None else out + bias


class ElmanWeights(NamedTuple):
    """Weights of one Elman step, in ``torch.nn.RNNCell``'s layout.

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(H, H_in)``      input to hidden
    ``weight_hh``    ``(H, H)``         hidden to hidden
    ``bias_ih``      ``(H,)``/None      added to ``W_ih x``
    ``bias_hh``      ``(H,)``/None      added to ``W_hh h``
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None


def elman_step(
    x: Tensor, h: Tensor, weights: ElmanWeights, nonlinearity: str = "tanh"
) -> tuple[Tensor, Tensor]:
    r"""One step of the Elman (simple) RNN, as ``torch.nn.RNNCell``.

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
        \qquad \phi \in \{\tanh, \mathrm{relu}\}

    Args:
        x: ``(B, H_in)`` input at this step.
        h: ``(B, H)`` previous hidden state.
        weights: :class:`ElmanWeights`.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``(output, new_state)``, both the new hidden state ``(B, H)``.
    """
    pre = F.linear(x, weights.weight_ih, weights.bias_ih) + F.linear(
        h, weights.weight_hh, weights.bias_hh
    )  # (B, H)
    if nonlinearity == "tanh":
        h_new = torch.tanh(pre)
    elif nonlinearity == "relu":
        h_new = torch.relu(pre)
    else:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return h_new, h_new


class LSTMWeights(NamedTuple):
    """Weights of one LSTM step. Without the optional fields: ``torch.nn.LSTMCell``'s layout.

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(G*H, H_in)``    input to gates; rows i, f, g, o (G=4) or,
                                        with coupled gates, f, g, o (G=3)
    ``weight_hh``    ``(G*H, H_out)``   recurrent input to gates, same row order
    ``bias_ih``      ``(G*H,)``/None    same row order
    ``bias_hh``      ``(G*H,)``/None    same row order
    ``weight_hr``    ``(P, H)``/None    projection of the output, as ``torch.nn.LSTM``
    ``weight_ci``    ``(H,)``/None      peephole c_{t-1} -> input gate (diagonal)
    ``weight_cf``    ``(H,)``/None      peephole c_{t-1} -> forget gate (diagonal)
    ``weight_co``    ``(H,)``/None      peephole c_t -> output gate (diagonal)
    ``ln_ih``        LayerNormParams    layer norm of ``W_ih x`` (G*H features)
    ``ln_hh``        LayerNormParams    layer norm of ``W_hh h`` (G*H features)
    ``ln_c``         LayerNormParams    layer norm of the new cell state (H features)
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    weight_hr: Tensor | None = None
    weight_ci: Tensor | None = None
    weight_cf: Tensor | None = None
    weight_co: Tensor | None = None
    ln_ih: LayerNormParams | None = None
    ln_hh: LayerNormParams | None = None
    ln_c: LayerNormParams | None = None


def lstm_step(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weights: LSTMWeights,
    *,
    coupled_gates: bool = False,
    cell_clip: float | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""One LSTM step; with no options set it equals ``torch.nn.LSTMCell``.

    .. math::
        \begin{aligned}
        a_t &= \mathrm{LN}_{ih}(W_{ih} x_t) + b_{ih} + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{hh}
              = [a^i; a^f; a^g; a^o] \\
        f_t &= \sigma(a^f + w_{cf} \odot c_{t-1}) \\
        i_t &= \sigma(a^i + w_{ci} \odot c_{t-1})
              \quad\text{or, with coupled gates,}\quad i_t = 1 - f_t \\
        g_t &= \tanh(a^g) \\
        c_t &= \mathrm{clip}\big(\mathrm{LN}_c(f_t \odot c_{t-1} + i_t \odot g_t),
              -c_{clip}, c_{clip}\big) \\
        o_t &= \sigma(a^o + w_{co} \odot c_t) \\
        h_t &= W_{hr} (o_t \odot \tanh(c_t))
        \end{aligned}

    Each optional piece is skipped when its weight is ``None`` (``LN`` is the identity,
    peephole terms vanish, no projection) or when ``cell_clip`` is ``None``. Layer norms
    follow PyTorch's benchmark ``LayerNormLSTMCell`` (``benchmarks/fastrnns/custom_lstms.py``)
    with the biases added after normalisation; ``LN_ih(W_ih x)`` does not depend on the
    state, so a driver may compute it for all time steps at once.

    Args:
        x: ``(B, H_in)``.
        state: ``(h, c)`` with ``h`` ``(B, H_out)`` and ``c`` ``(B, H)``.
        weights: :class:`LSTMWeights`.
        coupled_gates: the weights hold 3 gate slices (f, g, o) and ``i = 1 - f``.
        cell_clip: clip the new cell state to ``[-cell_clip, cell_clip]`` (TF ``LSTMCell``).

    Returns:
        ``(h_t, (h_t, c_t))``.
    """
    h, c = state  # (B, H_out), (B, H)
    gates = _projection(x, weights.weight_ih, weights.bias_ih, weights.ln_ih) + _projection(
        h, weights.weight_hh, weights.bias_hh, weights.ln_hh
    )  # (B, G*H)
    if coupled_gates:
        if weights.weight_ci is not None:
            raise ValueError("coupled gates have no input gate, so weight_ci must be None")
        f_pre, g_pre, o_pre = gates.chunk(3, 1)  # (B, H) each
    else:
        i_pre, f_pre, g_pre, o_pre = gates.chunk(4, 1)  # (B, H) each
    if weights.weight_cf is not None:
        f_pre = f_pre + weights.weight_cf * c
    forget = torch.sigmoid(f_pre)
    if coupled_gates:
        input_gate = 1.0 - forget
    else:
        if weights.weight_ci is not None:
            i_pre = i_pre + weights.weight_ci * c
        input_gate = torch.sigmoid(i_pre)
    c_new = forget * c + input_gate * torch.tanh(g_pre)  # (B, H)
    if weights.ln_c is not None:
        c_new = _layer_norm(c_new, weights.ln_c)
    if cell_clip is not None:
        c_new = c_new.clamp(-cell_clip, cell_clip)
    if weights.weight_co is not None:
        o_pre = o_pre + weights.weight_co * c_new
    h_new = torch.sigmoid(o_pre) * torch.tanh(c_new)  # (B, H)
    if weights.weight_hr is not None:
        h_new = F.linear(h_new, weights.weight_hr)  # (B, P)
    return h_new, (h_new, c_new)


class GRUWeights(NamedTuple):
    """Weights of one GRU step. Without layer norms: ``torch.nn.GRUCell``'s layout.

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(3H, H_in)``     input to gates, rows r, z, n
    ``weight_hh``    ``(3H, H)``        recurrent input to gates, rows r, z, n
    ``bias_ih``      ``(3H,)``/None     same row order
    ``bias_hh``      ``(3H,)``/None     same row order
    ``ln_ih``        LayerNormParams    layer norm of ``W_ih x`` (3H features)
    ``ln_hh``        LayerNormParams    layer norm of ``W_hh h`` (3H features) with
                                        ``reset_after``; else of ``W_h[rz] h`` (2H)
    ``ln_hn``        LayerNormParams    only without ``reset_after``: layer norm of
                                        ``W_hn (r * h)`` (H features)
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    ln_ih: LayerNormParams | None = None
    ln_hh: LayerNormParams | None = None
    ln_hn: LayerNormParams | None = None


def gru_step(
    x: Tensor, h: Tensor, weights: GRUWeights, *, reset_after: bool = True
) -> tuple[Tensor, Tensor]:
    r"""One GRU step; ``reset_after=True`` without layer norms equals ``torch.nn.GRUCell``.

    .. math::
        \begin{aligned}
        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
            && \text{reset\_after (PyTorch, cuDNN, Keras)} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
            && \text{reset before (Cho et al. 2014, CNTK, TF1)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{aligned}

    With layer norms every product ``W v`` above becomes ``LN(W v)`` before its bias is
    added: ``ln_ih`` normalises the 3H input projections together; with ``reset_after``
    ``ln_hh`` normalises the 3H recurrent projections together (before ``r`` multiplies
    the n slice); without it ``ln_hh`` normalises the 2H r/z projections and ``ln_hn``
    the H-wide ``W_hn (r * h)``, which cannot be computed before ``r`` is known.

    Args:
        x: ``(B, H_in)``.
        h: ``(B, H)``.
        weights: :class:`GRUWeights`.
        reset_after: where the reset gate applies (see above).

    Returns:
        ``(h_t, h_t)``.
    """
    gi = _projection(x, weights.weight_ih, weights.bias_ih, weights.ln_ih)  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, 1)  # (B, H) each
    if reset_after:
        gh = _projection(h, weights.weight_hh, weights.bias_hh, weights.ln_hh)  # (B, 3H)
        h_r, h_z, h_n = gh.chunk(3, 1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)  # (B, H)
    else:
        hidden = h.shape[1]
        bias_hh = weights.bias_hh
        w_rz, w_n = weights.weight_hh[: 2 * hidden], weights.weight_hh[2 * hidden :]
        b_rz = None if bias_hh is None else bias_hh[: 2 * hidden]
        b_n = None if bias_hh is None else bias_hh[2 * hidden :]
        h_r, h_z = _projection(h, w_rz, b_rz, weights.ln_hh).chunk(2, 1)  # (B, H) each
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        h_n = _projection(reset * h, w_n, b_n, weights.ln_hn)  # (B, H)
        candidate = torch.tanh(i_n + h_n)
    # (1 - z) n + z h, written as torch's GRUCell writes it so float32 results agree closely
    h_new = candidate + update * (h - candidate)  # (B, H)
    return h_new, h_new

# --- extra cells: UGRNN, NAS, grouped LSTM, IndRNN, minGRU, minLSTM ---

# --- the seed exercise API (rnn, init_rnn_state, lstm) ---
#
# The exact calling conventions of the RNN/LSTM programming exercise (seed 003), so code
# written for it runs unchanged. Note the layout: these take ``X @ W`` weights, i.e.
# W_xh is (num_inputs, num_hiddens), the transpose of torch.nn's (num_hiddens, num_inputs).
# The products are written with torch.matmul as in the exercise, so any broadcastable
# parameter shapes the exercise accepts (b_h as (H,) or (1, H), ...) work here too.

_RNN_PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
_LSTM_PARAM_NAMES = (
    "W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
    "W_xc", "W_hc", "b_c", "W_hq", "b_q",
)  # fmt: skip


def _unpack_params(function: str, params, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    try:
        params = tuple(params)
    except TypeError:
        raise TypeError(
            f"{function}: params must be a sequence of {len(names)} tensors "
            f"({', '.join(names)}), got {type(params).__name__}"
        ) from None
    if len(params) != len(names):
        raise ValueError(
            f"{function}: params must hold {len(names)} tensors ({', '.join(names)}), "
            f"got {len(params)}"
        )
    for name, value in zip(names, params, strict=True):
        if not isinstance(value, Tensor):
            raise TypeError(f"{function}: {name} must be a Tensor, got {type(value).__name__}")
    return params


def rnn(input: Tensor, state: Tensor, params) -> tuple[Tensor, Tensor]:
    r"""One step of a simple RNN with an output layer (the exercise's ``rnn``).

    .. math::
        H = \tanh(X W_{xh} + H_{prev} W_{hh} + b_h), \qquad Y = H W_{hq} + b_q

    Args:
        input: ``[batch_size, num_inputs]``.
        state: ``[batch_size, num_hiddens]``, the previous hidden state.
        params: ``(W_xh, W_hh, b_h, W_hq, b_q)`` with ``W_xh`` ``(num_inputs, num_hiddens)``,
            ``W_hh`` ``(num_hiddens, num_hiddens)``, ``b_h`` ``(num_hiddens,)``,
            ``W_hq`` ``(num_hiddens, num_outputs)``, ``b_q`` ``(num_outputs,)``.

    Returns:
        ``(Y, H)``: the output ``[batch_size, num_outputs]`` and the new state.

    Example:
        >>> import torch
        >>> from rnnkit.functional import rnn, init_rnn_state
        >>> params = [torch.randn(3, 4), torch.randn(4, 4), torch.zeros(4),
        ...           torch.randn(4, 2), torch.zeros(2)]
        >>> Y, H = rnn(torch.randn(5, 3), init_rnn_state(5, 4), params)
        >>> Y.shape, H.shape
        (torch.Size([5, 2]), torch.Size([5, 4]))
    """
    W_xh, W_hh, b_h, W_hq, b_q = _unpack_params("rnn", params, _RNN_PARAM_NAMES)
    H = torch.tanh(torch.matmul(input, W_xh) + torch.matmul(state, W_hh) + b_h)
    Y = torch.matmul(H, W_hq) + b_q
    return Y, H


def init_rnn_state(num_inputs: int, num_hiddens: int) -> Tensor:
    """The exercise's initial RNN state: float32 zeros of shape ``(num_inputs, num_hiddens)``.

    The exercise names the first argument ``num_inputs``, but it is used as the batch size
    (the state is ``[batch_size, num_hiddens]``); the signature is kept for compatibility.
    """
    for name, value in (("num_inputs", num_inputs), ("num_hiddens", num_hiddens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"init_rnn_state: {name} must be an int, got {type(value).__name__} ({value!r})"
            )
        if value < 0:
            raise ValueError(f"init_rnn_state: {name} must be >= 0, got {value}")
    return torch.zeros((num_inputs, num_hiddens), dtype=torch.float32)


def lstm(X: Tensor, state: tuple[Tensor, Tensor], params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""One LSTM step with an output layer (the exercise's ``lstm``).

    .. math::
        \begin{aligned}
        F &= \sigma(X W_{xf} + H W_{hf} + b_f) &
        I &= \sigma(X W_{xi} + H W_{hi} + b_i) \\
        \tilde C &= \tanh(X W_{xc} + H W_{hc} + b_c) &
        C &= F \odot C + I \odot \tilde C \\
        O &= \sigma(X W_{xo} + H W_{ho} + b_o) &
        H &= O \odot \tanh(C) \\
        Y &= H W_{hq} + b_q
        \end{aligned}

    Args:
        X: ``[batch_size, num_inputs]``.
        state: ``(H, C)``, each ``[batch_size, num_hiddens]``.
        params: the 14 tensors ``W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o,
            W_xc, W_hc, b_c, W_hq, b_q`` (``W_x*`` ``(num_inputs, num_hiddens)``, ``W_h*``
            ``(num_hiddens, num_hiddens)``, ``W_hq`` ``(num_hiddens, num_outputs)``).

    Returns:
        ``(Y, (H, C))``.
    """
    (W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q) = (
        _unpack_params("lstm", params, _LSTM_PARAM_NAMES)
    )
    try:
        H, C = state
    except (TypeError, ValueError):
        raise TypeError(
            f"lstm: state must be a pair (H, C) of tensors, got {type(state).__name__}"
        ) from None
    F_gate = torch.sigmoid(torch.matmul(X, W_xf) + torch.matmul(H, W_hf) + b_f)
    I_gate = torch.sigmoid(torch.matmul(X, W_xi) + torch.matmul(H, W_hi) + b_i)
    C_tilde = torch.tanh(torch.matmul(X, W_xc) + torch.matmul(H, W_hc) + b_c)
    C = F_gate * C + I_gate * C_tilde
    O_gate = torch.sigmoid(torch.matmul(X, W_xo) + torch.matmul(H, W_ho) + b_o)
    H = O_gate * C.tanh()
    Y = torch.matmul(H, W_hq) + b_q
    return Y, (H, C)
