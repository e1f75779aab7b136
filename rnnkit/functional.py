"""Pure step functions: ``x, state, weights -> output, new_state``. No module state.

Each function computes one time step of one cell family. Weight shapes and gate order are
documented per function; the core families use ``torch.nn``'s layout so that weights copied
from ``torch.nn.RNNCell/LSTMCell/GRUCell`` give the same results.
"""

from __future__ import annotations

from collections.abc import Callable
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
    ``torch.nn.LayerNorm``. ``module``, when given, is called instead (``module(x)``): a
    cell's norm that is not a plain ``torch.nn.LayerNorm`` (a subclass or another norm put in
    its place) or that carries hooks, which must run as written.
    """

    weight: Tensor | None
    bias: Tensor | None
    eps: float = 1e-5
    module: Callable[[Tensor], Tensor] | None = None


def _layer_norm(x: Tensor, params: LayerNormParams) -> Tensor:
    if params.module is not None:
        return params.module(x)
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
#
# Same symbols as above, plus:
#   T      sequence length (the minGRU/minLSTM scans take a whole sequence)
#   N      number of groups of the grouped LSTM; H_in/N and H/N features per group


class UGRNNWeights(NamedTuple):
    """Weights of one UGRNN step (rows: update gate ``g``, then candidate ``c``).

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(2H, H_in)``     input to [g; c] (TF ``kernel[:H_in].T``)
    ``weight_hh``    ``(2H, H)``        state to [g; c] (TF ``kernel[H_in:].T``)
    ``bias``         ``(2H,)``/None     one bias, as TF's single ``_Linear``
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias: Tensor | None = None


def ugrnn_step(
    x: Tensor, h: Tensor, weights: UGRNNWeights, *, forget_bias: float = 1.0
) -> tuple[Tensor, Tensor]:
    r"""One step of the Update Gate RNN (Collins, Sohl-Dickstein & Sussillo 2017).

    .. math::
        \begin{aligned}
        [a^g; a^c] &= W_{ih} x_t + W_{hh} h_{t-1} + b \\
        g_t &= \sigma(a^g + b_f), \qquad c_t = \tanh(a^c) \\
        h_t &= g_t \odot h_{t-1} + (1 - g_t) \odot c_t
        \end{aligned}

    ``forget_bias`` (:math:`b_f`) is a constant added in every step, exactly as TF1
    ``tf.contrib.rnn.UGRNNCell``, so weights exported from TF give TF's result.

    Args:
        x: ``(B, H_in)``; h: ``(B, H)``; weights: :class:`UGRNNWeights`.

    Returns:
        ``(h_t, h_t)``.
    """
    pre = F.linear(x, weights.weight_ih, weights.bias) + F.linear(h, weights.weight_hh)  # (B, 2H)
    g_pre, c_pre = pre.chunk(2, 1)  # (B, H) each
    gate = torch.sigmoid(g_pre + forget_bias)
    h_new = gate * h + (1.0 - gate) * torch.tanh(c_pre)  # (B, H)
    return h_new, h_new


class NASWeights(NamedTuple):
    """Weights of one NAS cell step (8 branches of H rows each, in TF's order).

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(8H, H_in)``     TF ``kernel`` transposed
    ``weight_hh``    ``(8H, H_out)``    TF ``recurrent_kernel`` transposed
    ``bias``         ``(8H,)``/None     TF ``bias`` (added to the recurrent branches)
    ``weight_hr``    ``(P, H)``/None    TF ``projection_weights`` transposed
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias: Tensor | None = None
    weight_hr: Tensor | None = None


def nas_step(
    x: Tensor, state: tuple[Tensor, Tensor], weights: NASWeights
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""One step of the NAS cell (Zoph & Le 2017), exactly as TF1 ``contrib.rnn.NASCell``.

    With :math:`u^k = W^k_{ih} x_t` and :math:`v^k = W^k_{hh} h_{t-1} + b^k` for the
    branches :math:`k = 0..7`:

    .. math::
        \begin{aligned}
        l_0 &= \sigma(u^0 + v^0) & l_1 &= \mathrm{relu}(u^1 + v^1) &
        l_2 &= \sigma(u^2 + v^2) & l_3 &= \mathrm{relu}(u^3 \odot v^3) \\
        l_4 &= \tanh(u^4 + v^4) & l_5 &= \sigma(u^5 + v^5) &
        l_6 &= \tanh(u^6 + v^6) & l_7 &= \sigma(u^7 + v^7) \\
        m_0 &= \tanh\big(\tanh(l_0 \odot l_1) + c_{t-1}\big) & m_1 &= \tanh(l_2 + l_3) &
        m_2 &= \tanh(l_4 \odot l_5) & m_3 &= \sigma(l_6 + l_7) \\
        c_t &= m_0 \odot m_1 & & &
        h_t &= W_{hr} \tanh\big(c_t \odot \tanh(m_2 + m_3)\big)
        \end{aligned}

    (branch 3 multiplies the input and recurrent terms; :math:`W_{hr}` is the identity
    without projection). TF orders the state ``(c, m)``; rnnkit uses ``(h, c)`` as for
    the LSTM.

    Args:
        x: ``(B, H_in)``; state: ``(h (B, H_out), c (B, H))``; weights: :class:`NASWeights`.

    Returns:
        ``(h_t, (h_t, c_t))``.
    """
    h, c = state
    u = F.linear(x, weights.weight_ih).chunk(8, 1)  # 8 x (B, H)
    v = F.linear(h, weights.weight_hh, weights.bias).chunk(8, 1)  # 8 x (B, H)
    sigmoid, relu, tanh = torch.sigmoid, torch.relu, torch.tanh
    l0 = sigmoid(u[0] + v[0])
    l1 = relu(u[1] + v[1])
    l2 = sigmoid(u[2] + v[2])
    l3 = relu(u[3] * v[3])
    l4 = tanh(u[4] + v[4])
    l5 = sigmoid(u[5] + v[5])
    l6 = tanh(u[6] + v[6])
    l7 = sigmoid(u[7] + v[7])
    m0 = tanh(tanh(l0 * l1) + c)  # the cell state enters here
    m1 = tanh(l2 + l3)
    m2 = tanh(l4 * l5)
    m3 = sigmoid(l6 + l7)
    c_new = m0 * m1  # (B, H)
    h_new = tanh(c_new * tanh(m2 + m3))  # (B, H)
    if weights.weight_hr is not None:
        h_new = F.linear(h_new, weights.weight_hr)  # (B, P)
    return h_new, (h_new, c_new)


class GroupedLSTMWeights(NamedTuple):
    """Weights of one grouped-LSTM step: group ``k`` is a ``torch.nn.LSTMCell``.

    ``weight_ih[k]`` etc. are exactly the ``weight_ih`` etc. of an ``LSTMCell(H_in/N, H/N)``
    (gate rows i, f, g, o within each group).

    ===============  ======================  =========================================
    field            shape                   meaning
    ===============  ======================  =========================================
    ``weight_ih``    ``(N, 4H/N, H_in/N)``   per-group input to gates
    ``weight_hh``    ``(N, 4H/N, H/N)``      per-group state to gates
    ``bias_ih``      ``(N, 4H/N)``/None      per-group bias
    ``bias_hh``      ``(N, 4H/N)``/None      per-group bias
    ===============  ======================  =========================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None


def grouped_lstm_step(
    x: Tensor, state: tuple[Tensor, Tensor], weights: GroupedLSTMWeights
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""One step of the grouped LSTM, GLSTM (Kuchaiev & Ginsburg 2017).

    The input and the state are cut into :math:`N` equal slices; slice :math:`k` runs its
    own LSTM (equations of :func:`lstm_step`), and the slices are concatenated again:

    .. math::
        (h^k_t, c^k_t) = \mathrm{LSTM}_k(x^k_t, (h^k_{t-1}, c^k_{t-1})), \qquad
        h_t = [h^1_t; \dots; h^N_t]

    which is an LSTM whose :math:`W_{ih}`, :math:`W_{hh}` are block diagonal (per gate),
    with :math:`N` times fewer weights and multiply-adds.

    Args:
        x: ``(B, H_in)``; state: ``(h, c)`` each ``(B, H)``;
        weights: :class:`GroupedLSTMWeights`.

    Returns:
        ``(h_t, (h_t, c_t))``.
    """
    h, c = state
    groups = weights.weight_ih.shape[0]
    batch = x.shape[0]
    x_g = x.reshape(batch, groups, -1).transpose(0, 1)  # (N, B, H_in/N)
    h_g = h.reshape(batch, groups, -1).transpose(0, 1)  # (N, B, H/N)
    gates = torch.bmm(x_g, weights.weight_ih.transpose(1, 2)) + torch.bmm(
        h_g, weights.weight_hh.transpose(1, 2)
    )  # (N, B, 4H/N)
    if weights.bias_ih is not None:
        gates = gates + weights.bias_ih.unsqueeze(1)
    if weights.bias_hh is not None:
        gates = gates + weights.bias_hh.unsqueeze(1)
    i_pre, f_pre, g_pre, o_pre = gates.chunk(4, 2)  # (N, B, H/N) each
    c_g = c.reshape(batch, groups, -1).transpose(0, 1)  # (N, B, H/N)
    c_new = torch.sigmoid(f_pre) * c_g + torch.sigmoid(i_pre) * torch.tanh(g_pre)
    h_new = torch.sigmoid(o_pre) * torch.tanh(c_new)  # (N, B, H/N)
    h_new = h_new.transpose(0, 1).reshape(batch, -1)  # (B, H)
    c_new = c_new.transpose(0, 1).reshape(batch, -1)  # (B, H)
    return h_new, (h_new, c_new)


class IndRNNWeights(NamedTuple):
    """Weights of one IndRNN step.

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(H, H_in)``      input to hidden
    ``weight_hh``    ``(H,)``           recurrent weights, one per unit (diagonal)
    ``bias``         ``(H,)``/None      bias
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias: Tensor | None = None


def indrnn_step(
    x: Tensor,
    h: Tensor,
    weights: IndRNNWeights,
    *,
    nonlinearity: str = "relu",
    recurrent_max_abs: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One step of the independently recurrent network, IndRNN (Li et al. 2018).

    .. math::
        h_t = \phi\big(W_{ih} x_t + u \odot h_{t-1} + b\big), \qquad
        u = \mathrm{clip}(w_{hh}, -u_{max}, u_{max})

    Each unit sees only its own past (``u`` is a vector). With ``recurrent_max_abs``
    (:math:`u_{max}`) the recurrent weights are clipped in the forward pass (gradient zero
    where they are clipped), as TF's ``IndRNNCell``.

    Args:
        x: ``(B, H_in)``; h: ``(B, H)``; weights: :class:`IndRNNWeights`;
        nonlinearity: ``"relu"`` or ``"tanh"``.

    Returns:
        ``(h_t, h_t)``.
    """
    recurrent = weights.weight_hh  # (H,)
    if recurrent_max_abs is not None:
        recurrent = recurrent.clamp(-recurrent_max_abs, recurrent_max_abs)
    pre = F.linear(x, weights.weight_ih, weights.bias) + recurrent * h  # (B, H)
    if nonlinearity == "relu":
        h_new = torch.relu(pre)
    elif nonlinearity == "tanh":
        h_new = torch.tanh(pre)
    else:
        raise ValueError(f"nonlinearity must be 'relu' or 'tanh', got {nonlinearity!r}")
    return h_new, h_new


class MinRNNWeights(NamedTuple):
    """Weights of a minGRU (rows z, h̃: ``G = 2``) or minLSTM (rows f, i, h̃: ``G = 3``).

    ===============  =================  ==============================================
    field            shape              meaning
    ===============  =================  ==============================================
    ``weight_ih``    ``(G*H, H_in)``    input to gates and candidate (no recurrent
                                        weights: the gates see only the input)
    ``bias``         ``(G*H,)``/None    bias
    ===============  =================  ==============================================
    """

    weight_ih: Tensor
    bias: Tensor | None = None


def min_rnn_g(x: Tensor) -> Tensor:
    r""":math:`g(x) = x + \tfrac12` for :math:`x \ge 0`, else :math:`\sigma(x)`: positive,
    continuous, so the candidate state has a logarithm (Feng et al. 2024, appendix B)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def min_rnn_log_g(x: Tensor) -> Tensor:
    r""":math:`\log g(x)`, computed without forming :math:`g` (no underflow for :math:`x \ll 0`)."""
    # logsigmoid rather than -softplus(-x): F.softplus turns linear past its threshold (20),
    # an error of exp(-20) ~ 2e-9 that float64 comparisons would see
    return torch.where(x >= 0, torch.log(torch.relu(x) + 0.5), F.logsigmoid(x))


def min_gru_step(x: Tensor, h: Tensor, weights: MinRNNWeights) -> tuple[Tensor, Tensor]:
    r"""One minGRU step (Feng et al. 2024, "Were RNNs All We Needed?").

    .. math::
        z_t = \sigma(W_z x_t + b_z), \quad \tilde h_t = g(W_h x_t + b_h), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    The gate and the candidate depend on :math:`x_t` only, so a whole sequence can also be
    computed by :func:`min_gru_scan` in parallel over time.

    Returns:
        ``(h_t, h_t)``.
    """
    z_pre, h_pre = F.linear(x, weights.weight_ih, weights.bias).chunk(2, 1)  # (B, H) each
    z = torch.sigmoid(z_pre)
    h_new = (1.0 - z) * h + z * min_rnn_g(h_pre)  # (B, H)
    return h_new, h_new


def min_lstm_step(x: Tensor, h: Tensor, weights: MinRNNWeights) -> tuple[Tensor, Tensor]:
    r"""One minLSTM step (Feng et al. 2024), with the time-independent gate normalisation.

    .. math::
        f_t = \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i), \quad
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \quad
        h_t = f'_t \odot h_{t-1} + i'_t \odot g(W_h x_t + b_h)

    Returns:
        ``(h_t, h_t)``.
    """
    f_pre, i_pre, h_pre = F.linear(x, weights.weight_ih, weights.bias).chunk(3, 1)
    forget, inp = torch.sigmoid(f_pre), torch.sigmoid(i_pre)  # (B, H) each
    total = forget + inp
    h_new = (forget / total) * h + (inp / total) * min_rnn_g(h_pre)  # (B, H)
    return h_new, h_new


def _log_space_scan(
    log_coeffs: Tensor, log_values: Tensor, h0: Tensor, chunk_size: int | None = 128
) -> Tensor:
    r"""Solve :math:`h_t = a_t h_{t-1} + v_t` for all t at once, from :math:`\log a_t`,
    :math:`\log v_t` (both ``(T, B, H)``) and ``h0`` ``(B, H)`` of any sign.

    With :math:`A_t = \prod_{k \le t} a_k` the solution is
    :math:`h_t = A_t h_0 + A_t \sum_{k \le t} v_k / A_k`; the sum is formed in log space by
    ``logcumsumexp`` (Heinsen 2023; Feng et al. 2024, appendix B). The paper puts
    :math:`\log h_0` inside that sum, which needs :math:`h_0 > 0`; keeping the
    :math:`A_t h_0` term apart gives the same value for any :math:`h_0`, including zeros.

    :math:`\log A_t` grows linearly in :math:`t`, and so does its absolute rounding error:
    over thousands of float32 steps that becomes a relative error of ~1e-4 in :math:`h`.
    ``chunk_size`` bounds it: the scan restarts every ``chunk_size`` steps from the last
    state of the previous chunk (``T / chunk_size`` sequential rounds, each parallel).
    ``None`` scans the whole sequence in one piece, as the paper does.
    """
    steps = log_coeffs.shape[0]
    if steps == 0:  # an empty sequence has no states (torch.cat of nothing would fail)
        return log_values.new_zeros(log_values.shape)
    if chunk_size is None or chunk_size >= steps:
        chunk_size = max(steps, 1)
    outputs = []
    for start in range(0, steps, chunk_size):
        log_a = log_coeffs[start : start + chunk_size]  # (C, B, H)
        log_v = log_values[start : start + chunk_size]
        log_a_star = torch.cumsum(log_a, dim=0)  # (C, B, H): log A_t within the chunk
        log_sum = torch.logcumsumexp(log_v - log_a_star, dim=0)  # (C, B, H)
        chunk = torch.exp(log_a_star) * h0 + torch.exp(log_a_star + log_sum)  # (C, B, H)
        outputs.append(chunk)
        h0 = chunk[-1]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # (T, B, H)


def min_gru_scan(
    x: Tensor, h0: Tensor, weights: MinRNNWeights, *, chunk_size: int | None = 128
) -> Tensor:
    r"""minGRU over a whole sequence by a parallel scan in log space.

    Equals running :func:`min_gru_step` over time: :math:`\log(1 - z_t) =
    \log\sigma(-k_t)`, :math:`\log z_t = \log\sigma(k_t)` for the gate
    pre-activation :math:`k_t`, then :func:`_log_space_scan` with coefficients
    :math:`1 - z_t` and values :math:`z_t \tilde h_t`.

    Args:
        x: ``(T, B, H_in)``; h0: ``(B, H)``; weights: :class:`MinRNNWeights`;
        chunk_size: steps per parallel chunk (see :func:`_log_space_scan`), ``None``: all.

    Returns:
        ``hs (T, B, H)``, the state after every step.
    """
    k, h_pre = F.linear(x, weights.weight_ih, weights.bias).chunk(2, 2)  # (T, B, H) each
    log_coeffs = F.logsigmoid(-k)  # log(1 - z)
    log_values = F.logsigmoid(k) + min_rnn_log_g(h_pre)  # log(z * h~)
    return _log_space_scan(log_coeffs, log_values, h0, chunk_size)


def min_lstm_scan(
    x: Tensor, h0: Tensor, weights: MinRNNWeights, *, chunk_size: int | None = 128
) -> Tensor:
    r"""minLSTM over a whole sequence by a parallel scan in log space.

    With :math:`d_t = \log i_t - \log f_t = \log\sigma(k^i_t) - \log\sigma(k^f_t)`:
    :math:`\log f'_t = \log\sigma(-d_t)` and :math:`\log i'_t = \log\sigma(d_t)` (the
    paper's :math:`-\mathrm{softplus}(\pm d_t)`).

    Args:
        x: ``(T, B, H_in)``; h0: ``(B, H)``; weights: :class:`MinRNNWeights`;
        chunk_size: steps per parallel chunk (see :func:`_log_space_scan`), ``None``: all.

    Returns:
        ``hs (T, B, H)``.
    """
    f_pre, i_pre, h_pre = F.linear(x, weights.weight_ih, weights.bias).chunk(3, 2)
    diff = F.logsigmoid(i_pre) - F.logsigmoid(f_pre)  # (T, B, H): log(i / f)
    log_coeffs = F.logsigmoid(-diff)  # log f' = log(f / (f + i))
    log_values = F.logsigmoid(diff) + min_rnn_log_g(h_pre)  # log(i' * h~)
    return _log_space_scan(log_coeffs, log_values, h0, chunk_size)

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
    # a Tensor with 2 rows would also unpack, into garbage, so insist on a real pair
    if not (
        isinstance(state, (tuple, list))
        and len(state) == 2
        and all(isinstance(s, Tensor) for s in state)
    ):
        raise TypeError(
            f"lstm: state must be a pair (H, C) of tensors, got {type(state).__name__}"
        )
    H, C = state
    F_gate = torch.sigmoid(torch.matmul(X, W_xf) + torch.matmul(H, W_hf) + b_f)
    I_gate = torch.sigmoid(torch.matmul(X, W_xi) + torch.matmul(H, W_hi) + b_i)
    C_tilde = torch.tanh(torch.matmul(X, W_xc) + torch.matmul(H, W_hc) + b_c)
    C = F_gate * C + I_gate * C_tilde
    O_gate = torch.sigmoid(torch.matmul(X, W_xo) + torch.matmul(H, W_ho) + b_o)
    H = O_gate * C.tanh()
    Y = torch.matmul(H, W_hq) + b_q
    return Y, (H, C)
