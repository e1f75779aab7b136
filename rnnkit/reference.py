r"""NumPy reference: forward pass and hand-written backpropagation through time (BPTT).

This module is the test oracle of rnnkit. It is plain float64 NumPy, written to be read: every
forward function stores what its backward needs in a cache, and every backward function walks
time from the last step to the first, applying the chain rule one operation at a time. Nothing
here imports torch.

Symbols
-------
======  =====================================================================
T       sequence length
B       batch size
I       input size (``H_in``)
H       hidden size
P       output size of an LSTM with projection (``proj_size``), otherwise ``H``
G       number of gate blocks: 1 (Elman), 4 (LSTM; 3 with coupled gates), 3 (GRU)
K       number of classes of the softmax output layer
======  =====================================================================

Weight layout
-------------
Parameters are passed as a dict with ``torch.nn``'s names and shapes, so that they copy
straight from a ``torch.nn.RNNCell/LSTMCell/GRUCell`` (or an rnnkit cell)::

    params = {k: v.detach().double().numpy() for k, v in cell.named_parameters()}

=================  ===========  =====================================================
name               shape        meaning
=================  ===========  =====================================================
``weight_ih``      (G*H, I)     input-to-hidden weights, gate blocks stacked on rows
``weight_hh``      (G*H, P)     hidden-to-hidden weights
``bias_ih``        (G*H,)       optional (absent or ``None``: no bias)
``bias_hh``        (G*H,)       optional
``weight_hr``      (P, H)       LSTM projection (``torch.nn.LSTM(proj_size=P)``)
``weight_ci``      (H,)         LSTM peephole weights for the input, forget and output
``weight_cf``      (H,)         gates (diagonal, as in Gers & Schmidhuber 2000 and
``weight_co``      (H,)         TensorFlow's ``use_peepholes``)
``ln_ih.weight``   (G*H,)       layer norm of ``x W_ih^T`` (and ``ln_ih.bias``)
``ln_hh.weight``   (G*H,)       layer norm of ``h W_hh^T`` (GRU without reset_after:
                                (2H,), the r, z rows only)
``ln_c.weight``    (H,)         LSTM: layer norm of the new cell state
``ln_hn.weight``   (H,)         GRU without reset_after: layer norm of ``(r h) W_hn^T``
=================  ===========  =====================================================

The layer-norm names are those of ``named_parameters()`` of the rnnkit cells with
``layer_norm=True``; each has a ``.bias`` next to its ``.weight``.

Gate order is torch's: LSTM ``i, f, g, o`` (``f, g, o`` with coupled gates, as
:class:`rnnkit.cells.LSTMCell`); GRU ``r, z, n``. Row vectors are used throughout
(``x_t`` is ``(B, I)``), so a matrix product with a torch weight is ``x_t @ W.T``.

Back-propagation through time
-----------------------------
Following the classic derivation (softmax cross-entropy on every step, loss summed over
time; seed document 002), write the Elman network in column-vector notation (the code
below uses rows, so ``U x_t`` there reads ``x_t @ U.T``) as

.. math::

    s_t = \tanh(U x_t + W s_{t-1} + b), \qquad o_t = \mathrm{softmax}(V s_t + c), \qquad
    L = \sum_t L_t = -\sum_t \log o_t[y_t]

with ``U = weight_ih``, ``W = weight_hh``. Because ``U, W, V`` are shared by all steps, their
gradients are *sums over time* of per-step contributions. The only quantity that couples steps
is the gradient flowing into the hidden state:

.. math::

    \frac{\partial L}{\partial o^{pre}_t} = o_t - \mathrm{onehot}(y_t), \qquad
    \delta_t \equiv \frac{\partial L}{\partial s_t}
      = \underbrace{V^\top (o_t - \mathrm{onehot}(y_t))}_{\text{from } L_t}
      + \underbrace{W^\top \big(\delta_{t+1} \odot (1 - s_{t+1}^2)\big)}_{\text{from } s_{t+1}}

and then

.. math::

    \frac{\partial L}{\partial V} = \sum_t (o_t - \mathrm{onehot}(y_t))\, s_t^\top, \quad
    \frac{\partial L}{\partial U} = \sum_t (\delta_t \odot (1 - s_t^2))\, x_t^\top, \quad
    \frac{\partial L}{\partial W} = \sum_t (\delta_t \odot (1 - s_t^2))\, s_{t-1}^\top.

Every backward function below has this shape: ``dhs[t]`` is the part of
:math:`\partial L / \partial h_t` that comes from the loss at step ``t`` (the first brace);
the loop adds the part that comes back from step ``t + 1`` (the second brace), pushes the sum
through one step's operations, and accumulates the weight gradients. LSTM and GRU only have
more operations inside a step; the time structure is the same. ``dh_next`` (and for the LSTM
``dc_next``) is :math:`\partial L / \partial h_t` through the future; after the loop it is
the gradient with respect to the initial state.

Two levels of API:

* the bare recurrence: ``*_forward(x, state0, params) -> (hs, cache)`` and
  ``*_backward(dhs, cache) -> grads`` for any loss whose gradient w.r.t. every ``h_t`` you
  can supply;
* :func:`sequence_loss_and_grads`: the softmax cross-entropy output layer on every step, the
  summed loss and every gradient in one call.

Example::

    >>> import numpy as np
    >>> from rnnkit import reference as ref
    >>> rng = np.random.default_rng(0)
    >>> T, B, I, H, K = 5, 2, 3, 4, 6
    >>> params = ref.init_params("gru", I, H, rng=rng)
    >>> x = rng.standard_normal((T, B, I))
    >>> y = rng.integers(0, K, size=(T, B))
    >>> V, c = rng.standard_normal((K, H)), np.zeros(K)
    >>> loss, grads = ref.sequence_loss_and_grads("gru", x, y, params, V, c)
    >>> sorted(grads)[:4]
    ['bias_hh', 'bias_ih', 'bias_out', 'h0']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = Mapping[str, np.ndarray | None]

__all__ = [
    "sigmoid",
    "softmax",
    "init_params",
    "elman_forward",
    "elman_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "sequence_forward",
    "sequence_backward",
    "sequence_loss_and_grads",
]

GATES = {"elman": 1, "rnn": 1, "lstm": 4, "gru": 3}


# ----------------------------------------------------------------------------------------------
# small helpers


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function, computed without overflow for large negative inputs."""
    out = np.empty_like(a)
    positive = a >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-a[positive]))
    exp_a = np.exp(a[~positive])
    out[~positive] = exp_a / (1.0 + exp_a)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (shifted by the maximum for stability)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _as_float64(name: str, array: Any, ndim: int) -> np.ndarray:
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {out.shape}")
    return out


def _get(params: Params, name: str) -> np.ndarray | None:
    value = params.get(name)
    return None if value is None else np.asarray(value, dtype=np.float64)


def _check_params(
    kind: str, x: np.ndarray, params: Params, gates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """Return (weight_ih, weight_hh, bias_ih, bias_hh, H) after checking their shapes."""
    for name in ("weight_ih", "weight_hh"):
        if _get(params, name) is None:
            raise KeyError(f"{kind}: params is missing {name!r}")
    w_ih = _get(params, "weight_ih")
    w_hh = _get(params, "weight_hh")
    if w_ih.ndim != 2 or w_ih.shape[0] % gates:
        raise ValueError(
            f"{kind}: weight_ih must be ({gates}*H, I), got shape {w_ih.shape}"
        )
    hidden = w_ih.shape[0] // gates
    if w_ih.shape[1] != x.shape[2]:
        raise ValueError(
            f"{kind}: weight_ih is {w_ih.shape} but the input has {x.shape[2]} features "
            f"(x shape {x.shape})"
        )
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * hidden:
        raise ValueError(
            f"{kind}: weight_hh must have {gates * hidden} rows, got shape {w_hh.shape}"
        )
    b_ih = _get(params, "bias_ih")
    b_hh = _get(params, "bias_hh")
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and b.shape != (gates * hidden,):
            raise ValueError(f"{kind}: {name} must be ({gates * hidden},), got {b.shape}")
    return w_ih, w_hh, b_ih, b_hh, hidden


def _initial(name: str, value: Any, batch: int, size: int) -> np.ndarray:
    if value is None:
        return np.zeros((batch, size))
    out = np.asarray(value, dtype=np.float64)
    if out.shape != (batch, size):
        raise ValueError(f"{name} must have shape ({batch}, {size}), got {out.shape}")
    return out


def _check_dhs(dhs: Any, cache: Cache) -> np.ndarray:
    """``dhs`` must match the outputs exactly: broadcasting would silently give wrong grads."""
    dhs = np.asarray(dhs, dtype=np.float64)
    expected = (len(cache.steps), *cache.steps[0]["h"].shape)
    if dhs.shape != expected:
        raise ValueError(f"dhs must have the shape of the outputs {expected}, got {dhs.shape}")
    return dhs


def _bias_or_zero(b: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size) if b is None else b


def _weight_grads(
    params: Params, d_w_ih: np.ndarray, d_w_hh: np.ndarray, d_b_ih: np.ndarray,
    d_b_hh: np.ndarray,
) -> dict[str, np.ndarray]:
    grads = {"weight_ih": d_w_ih, "weight_hh": d_w_hh}
    if params.get("bias_ih") is not None:
        grads["bias_ih"] = d_b_ih
    if params.get("bias_hh") is not None:
        grads["bias_hh"] = d_b_hh
    return grads


def init_params(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    proj_size: int = 0,
    peepholes: bool = False,
    coupled_gates: bool = False,
    layer_norm: bool = False,
    reset_after: bool = True,
    rng: np.random.Generator | None = None,
    scale: float | None = None,
) -> dict[str, np.ndarray]:
    """Random parameters in torch's layout, uniform in ``[-scale, scale]``.

    ``scale`` defaults to ``1 / sqrt(hidden_size)`` (torch's default initialisation).
    Layer-norm weights are drawn around 1 (``1 + U(-scale, scale)``) so that tests see
    every term; ``reset_after`` chooses the GRU's layer norms (``ln_hn`` only without it).
    """
    kind = _cell_kind(cell)
    rng = np.random.default_rng() if rng is None else rng
    scale = 1.0 / np.sqrt(hidden_size) if scale is None else scale
    gates = 3 if (kind == "lstm" and coupled_gates) else GATES[kind]
    recurrent = proj_size if (kind == "lstm" and proj_size) else hidden_size

    def u(*shape: int) -> np.ndarray:
        return rng.uniform(-scale, scale, size=shape)

    params = {
        "weight_ih": u(gates * hidden_size, input_size),
        "weight_hh": u(gates * hidden_size, recurrent),
    }
    if bias:
        params["bias_ih"] = u(gates * hidden_size)
        params["bias_hh"] = u(gates * hidden_size)
    if kind == "lstm" and proj_size:
        params["weight_hr"] = u(proj_size, hidden_size)
    if layer_norm and kind != "elman":
        sizes = {"ln_ih": gates * hidden_size, "ln_hh": gates * hidden_size}
        if kind == "lstm":
            sizes["ln_c"] = hidden_size
        elif not reset_after:
            sizes.update(ln_hh=2 * hidden_size, ln_hn=hidden_size)
        for name, size in sizes.items():
            params[f"{name}.weight"] = 1.0 + u(size)
            params[f"{name}.bias"] = u(size)
    if kind == "lstm" and peepholes:
        for name in ("weight_cf", "weight_co") if coupled_gates else (
            "weight_ci", "weight_cf", "weight_co"
        ):
            params[name] = u(hidden_size)
    return params


def _cell_kind(cell: str) -> str:
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(GATES)}")
    return "elman" if cell == "rnn" else cell


@dataclass
class Cache:
    """What a forward pass keeps for its backward pass.

    ``x`` is the input ``(T, B, I)``, ``params`` the weights, ``options`` the cell options,
    ``steps`` one dict of intermediate arrays per time step (named as in the equations).
    """

    kind: str
    x: np.ndarray
    params: Params
    options: dict[str, Any]
    steps: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def hs(self) -> np.ndarray:
        """All outputs ``(T, B, P)``."""
        return np.stack([s["h"] for s in self.steps])

    @property
    def cs(self) -> np.ndarray:
        """LSTM cell states ``(T, B, H)``."""
        return np.stack([s["c"] for s in self.steps])


# ----------------------------------------------------------------------------------------------
# Elman


def elman_forward(
    x: np.ndarray, h0: np.ndarray | None, params: Params, nonlinearity: str = "tanh"
) -> tuple[np.ndarray, Cache]:
    r"""Elman recurrence over a whole sequence.

    .. math::

        a_t = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh}, \qquad
        h_t = \phi(a_t), \quad \phi \in \{\tanh, \mathrm{relu}\}

    Args:
        x: ``(T, B, I)`` inputs.
        h0: ``(B, H)`` initial state, or ``None`` for zeros.
        params: ``weight_ih (H, I)``, ``weight_hh (H, H)``, optional ``bias_ih``, ``bias_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``hs (T, B, H)`` and the cache for :func:`elman_backward`.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    x = _as_float64("x", x, 3)
    w_ih, w_hh, b_ih, b_hh, hidden = _check_params("elman", x, params, 1)
    batch = x.shape[1]
    bias = _bias_or_zero(b_ih, hidden) + _bias_or_zero(b_hh, hidden)
    h = _initial("h0", h0, batch, hidden)
    cache = Cache("elman", x, params, {"nonlinearity": nonlinearity})
    for x_t in x:
        a = x_t @ w_ih.T + h @ w_hh.T + bias  # (B, H)
        h_new = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)
        cache.steps.append({"h_prev": h, "a": a, "h": h_new})
        h = h_new
    return cache.hs, cache


def elman_backward(dhs: np.ndarray, cache: Cache) -> dict[str, np.ndarray]:
    r"""BPTT for :func:`elman_forward`.

    With :math:`\delta_t = \partial L/\partial h_t` (``dhs[t]`` plus what flows back from
    step ``t+1``) and :math:`g_t = \delta_t \odot \phi'(a_t)`:

    .. math::

        \frac{\partial L}{\partial W_{ih}} = \sum_t g_t^\top x_t, \quad
        \frac{\partial L}{\partial W_{hh}} = \sum_t g_t^\top h_{t-1}, \quad
        \frac{\partial L}{\partial b} = \sum_t \mathbf{1}^\top g_t, \quad
        \frac{\partial L}{\partial x_t} = g_t W_{ih}, \quad
        \frac{\partial L}{\partial h_{t-1}} \mathrel{+}= g_t W_{hh}

    where :math:`\phi'(a) = 1 - \tanh^2(a)` or :math:`[a > 0]`.

    Returns:
        dict with the gradient of every parameter (same names), ``x`` and ``h0``.
    """
    w_ih = _get(cache.params, "weight_ih")
    w_hh = _get(cache.params, "weight_hh")
    dhs = _check_dhs(dhs, cache)
    d_w_ih, d_w_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    d_b = np.zeros(w_ih.shape[0])
    dx = np.zeros_like(cache.x)
    dh_next = np.zeros_like(cache.steps[0]["h_prev"])
    for t in reversed(range(len(cache.steps))):
        s = cache.steps[t]
        dh = dhs[t] + dh_next  # delta_t: from the loss at t and from step t+1
        if cache.options["nonlinearity"] == "tanh":
            da = dh * (1.0 - s["h"] ** 2)
        else:
            da = dh * (s["a"] > 0)
        d_w_ih += da.T @ cache.x[t]
        d_w_hh += da.T @ s["h_prev"]
        d_b += da.sum(axis=0)
        dx[t] = da @ w_ih
        dh_next = da @ w_hh
    grads = _weight_grads(cache.params, d_w_ih, d_w_hh, d_b, d_b.copy())
    grads["x"] = dx
    grads["h0"] = dh_next
    return grads


# ----------------------------------------------------------------------------------------------
# layer normalisation (used by the LSTM and GRU with layer_norm)


def layer_norm_forward(
    v: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    r"""Layer normalisation over the last axis, as ``torch.nn.LayerNorm``.

    .. math::
        \mu = \mathrm{mean}(v), \quad \sigma^2 = \mathrm{mean}((v - \mu)^2), \quad
        \hat v = \frac{v - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad y = \gamma \odot \hat v + \beta

    Returns:
        ``y`` and the cache ``(v_hat, 1/sqrt(var + eps), gamma)`` for
        :func:`layer_norm_backward`.
    """
    mean = v.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(((v - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    v_hat = (v - mean) * inv_std
    return weight * v_hat + bias, (v_hat, inv_std, weight)


def layer_norm_backward(
    dy: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of :func:`layer_norm_forward`.

    With :math:`g = \delta y \odot \gamma` (the gradient w.r.t. :math:`\hat v`), the mean and
    the variance both depend on every feature, which gives

    .. math::
        \delta v = \frac{1}{\sqrt{\sigma^2 + \epsilon}}
            \big(g - \mathrm{mean}(g) - \hat v \odot \mathrm{mean}(g \odot \hat v)\big), \quad
        \delta\gamma = \sum_b \delta y \odot \hat v, \quad \delta\beta = \sum_b \delta y.

    Returns:
        ``(dv, d_weight, d_bias)``.
    """
    v_hat, inv_std, weight = cache
    g = dy * weight
    dv = inv_std * (
        g - g.mean(axis=-1, keepdims=True) - v_hat * (g * v_hat).mean(axis=-1, keepdims=True)
    )
    return dv, (dy * v_hat).sum(axis=0), dy.sum(axis=0)


def _norms(params: Params, sizes: dict[str, int], kind: str) -> dict[str, Any] | None:
    """The layer norms ``sizes`` (name -> features) as ``{name: (weight, bias)}``, or
    ``None`` if absent.

    Parameter names are those of ``named_parameters()`` of an rnnkit cell with
    ``layer_norm=True``: ``ln_ih.weight``, ``ln_ih.bias``, ...
    """
    present = [n for n in sizes if params.get(f"{n}.weight") is not None]
    if not present:
        return None
    if len(present) != len(sizes):
        missing = [f"{n}.weight" for n in sizes if n not in present]
        raise KeyError(f"{kind}: layer norm parameters are incomplete, missing {missing}")
    norms = {}
    for name, size in sizes.items():
        weight = _get(params, f"{name}.weight")
        bias = _get(params, f"{name}.bias")
        bias = np.zeros_like(weight) if bias is None else bias
        for part, value in (("weight", weight), ("bias", bias)):
            if value.shape != (size,):
                raise ValueError(f"{kind}: {name}.{part} must be ({size},), got {value.shape}")
        norms[name] = (weight, bias)
    return norms


def _affine(
    v: np.ndarray, weight: np.ndarray, norm: tuple[np.ndarray, np.ndarray] | None, eps: float
) -> tuple[np.ndarray, Any]:
    """``v W^T``, or ``LN(v W^T)`` when ``norm`` is given (biases are added by the caller)."""
    out = v @ weight.T
    if norm is None:
        return out, None
    return layer_norm_forward(out, norm[0], norm[1], eps)


def _affine_backward(
    d_out: np.ndarray, ln_cache: Any, name: str, d_norms: dict[str, np.ndarray]
) -> np.ndarray:
    """Undo :func:`_affine`'s normalisation: the gradient w.r.t. ``v W^T``."""
    if ln_cache is None:
        return d_out
    d_pre, d_weight, d_bias = layer_norm_backward(d_out, ln_cache)
    d_norms[f"{name}.weight"] += d_weight
    d_norms[f"{name}.bias"] += d_bias
    return d_pre


def _norm_grads(norms: dict[str, Any] | None) -> dict[str, np.ndarray]:
    if norms is None:
        return {}
    grads = {}
    for name, (weight, _) in norms.items():
        grads[f"{name}.weight"] = np.zeros_like(weight)
        grads[f"{name}.bias"] = np.zeros_like(weight)
    return grads


def _keep_present(grads: dict[str, np.ndarray], params: Params) -> dict[str, np.ndarray]:
    """Drop gradients of layer-norm biases the caller did not pass (``bias=False`` norms)."""
    return {k: v for k, v in grads.items() if not k.endswith(".bias") or k in params}


# ----------------------------------------------------------------------------------------------
# LSTM


def lstm_forward(
    x: np.ndarray,
    state0: tuple[np.ndarray | None, np.ndarray | None] | None,
    params: Params,
    coupled_gates: bool = False,
    cell_clip: float | None = None,
    layer_norm_eps: float = 1e-5,
) -> tuple[np.ndarray, Cache]:
    r"""LSTM recurrence over a whole sequence (gate order ``i, f, g, o``).

    .. math::

        \begin{aligned}
        [\hat i, \hat f, \hat g, \hat o] &= \mathrm{LN}_{ih}(x_t W_{ih}^\top) + b_{ih}
            + \mathrm{LN}_{hh}(h_{t-1} W_{hh}^\top) + b_{hh} \\
        i_t &= \sigma(\hat i + w_{ci} \odot c_{t-1}), \quad
        f_t = \sigma(\hat f + w_{cf} \odot c_{t-1}), \quad g_t = \tanh(\hat g) \\
        c_t &= \mathrm{clip}\big(\mathrm{LN}_c(f_t \odot c_{t-1} + i_t \odot g_t),
            -c_{clip}, c_{clip}\big) \\
        o_t &= \sigma(\hat o + w_{co} \odot c_t), \quad
        m_t = o_t \odot \tanh(c_t), \quad h_t = m_t W_{hr}^\top
        \end{aligned}

    Every optional piece is the identity (or zero) unless switched on. The peephole terms
    (:math:`w_{c\cdot}`) are present when ``params`` holds ``weight_ci/weight_cf/weight_co``;
    the projection :math:`W_{hr}` when it holds ``weight_hr`` (otherwise :math:`h_t = m_t`);
    the layer norms when it holds ``ln_ih.weight``, ``ln_hh.weight``, ``ln_c.weight`` (and
    their ``.bias``), as PyTorch's benchmark ``LayerNormLSTMCell`` and
    :class:`rnnkit.cells.LSTMCell` with ``layer_norm=True``. With ``coupled_gates=True``
    the input gate is tied to the forget gate, :math:`i_t = 1 - f_t` (Greff et al. 2017,
    "LSTM: A Search Space Odyssey"), and the weights hold three gate blocks ``f, g, o`` (no
    ``weight_ci``). ``cell_clip`` clips the cell state (TensorFlow's
    ``LSTMCell(cell_clip=...)``).

    Args:
        x: ``(T, B, I)``.
        state0: ``(h0 (B, P), c0 (B, H))``; ``None`` (or ``None`` entries) for zeros.
        params: see the module docstring.
        layer_norm_eps: the layer norms' :math:`\epsilon` (``torch.nn.LayerNorm``'s 1e-5).

    Returns:
        ``hs (T, B, P)`` and the cache (``cache.cs`` holds the cell states).
    """
    x = _as_float64("x", x, 3)
    gates_count = 3 if coupled_gates else 4
    w_ih, w_hh, b_ih, b_hh, hidden = _check_params("lstm", x, params, gates_count)
    if coupled_gates and params.get("weight_ci") is not None:
        raise ValueError("lstm: coupled gates have no input gate, so weight_ci must be absent")
    if cell_clip is not None and not cell_clip > 0:
        raise ValueError(f"lstm: cell_clip must be > 0 or None, got {cell_clip}")
    w_hr = _get(params, "weight_hr")
    out_size = hidden if w_hr is None else w_hr.shape[0]
    if w_hr is not None and w_hr.shape != (out_size, hidden):
        raise ValueError(f"lstm: weight_hr must be (P, {hidden}), got {w_hr.shape}")
    if w_hh.shape[1] != out_size:
        raise ValueError(
            f"lstm: weight_hh must be ({gates_count * hidden}, {out_size}), got {w_hh.shape}"
        )
    rows = gates_count * hidden
    norms = _norms(params, {"ln_ih": rows, "ln_hh": rows, "ln_c": hidden}, "lstm") or {}
    peep = {name: _get(params, name) for name in ("weight_ci", "weight_cf", "weight_co")}
    peep = {k: (np.zeros(hidden) if v is None else v) for k, v in peep.items()}
    batch = x.shape[1]
    h0, c0 = (None, None) if state0 is None else state0
    h = _initial("h0", h0, batch, out_size)
    c = _initial("c0", c0, batch, hidden)
    bias = _bias_or_zero(b_ih, rows) + _bias_or_zero(b_hh, rows)
    eps = layer_norm_eps
    options = {"coupled_gates": coupled_gates, "cell_clip": cell_clip, "norms": norms}
    cache = Cache("lstm", x, params, options)
    for x_t in x:
        pre_ih, ln_ih = _affine(x_t, w_ih, norms.get("ln_ih"), eps)  # (B, G*H)
        pre_hh, ln_hh = _affine(h, w_hh, norms.get("ln_hh"), eps)  # (B, G*H)
        gates = pre_ih + pre_hh + bias  # (B, G*H)
        if coupled_gates:
            a_f, a_g, a_o = np.split(gates, 3, axis=1)
            f = sigmoid(a_f + peep["weight_cf"] * c)
            i = 1.0 - f
        else:
            a_i, a_f, a_g, a_o = np.split(gates, 4, axis=1)
            f = sigmoid(a_f + peep["weight_cf"] * c)
            i = sigmoid(a_i + peep["weight_ci"] * c)
        g = np.tanh(a_g)
        c_sum = f * c + i * g  # (B, H)
        ln_c = None
        c_pre = c_sum
        if "ln_c" in norms:
            c_pre, ln_c = layer_norm_forward(c_sum, *norms["ln_c"], eps)
        c_new = c_pre if cell_clip is None else np.clip(c_pre, -cell_clip, cell_clip)
        o = sigmoid(a_o + peep["weight_co"] * c_new)
        tanh_c = np.tanh(c_new)
        m = o * tanh_c  # (B, H)
        h_new = m if w_hr is None else m @ w_hr.T  # (B, P)
        cache.steps.append(
            {"h_prev": h, "c_prev": c, "i": i, "f": f, "g": g, "o": o, "c_pre": c_pre,
             "c": c_new, "tanh_c": tanh_c, "m": m, "h": h_new,
             "ln_ih": ln_ih, "ln_hh": ln_hh, "ln_c": ln_c}
        )
        h, c = h_new, c_new
    return cache.hs, cache


def lstm_backward(
    dhs: np.ndarray, cache: Cache, dc_last: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    r"""BPTT for :func:`lstm_forward`.

    Two quantities flow backwards in time: :math:`\partial L/\partial h_t` and
    :math:`\partial L/\partial c_t`. Inside a step, in reverse order of the forward pass:

    .. math::

        \begin{aligned}
        \delta m &= \delta h \, W_{hr}, \qquad \partial W_{hr} \mathrel{+}= \delta h^\top m \\
        \delta \hat o &= \delta m \odot \tanh(c_t) \odot o (1 - o) \\
        \delta c_t &= \delta c_{\text{next}} + \delta m \odot o \odot (1 - \tanh^2 c_t)
                     + \delta \hat o \odot w_{co} \\
        \delta \tilde c_t &= \mathrm{LN}_c^\top\big(\delta c_t \odot
            [\,|\mathrm{LN}_c(\tilde c_t)| \le c_{clip}\,]\big)
            \quad (\tilde c_t = f_t \odot c_{t-1} + i_t \odot g_t) \\
        \delta \hat f &= \delta \tilde c_t \odot c_{t-1} \odot f (1 - f), \quad
        \delta \hat i = \delta \tilde c_t \odot g \odot i (1 - i), \quad
        \delta \hat g = \delta \tilde c_t \odot i \odot (1 - g^2) \\
        \delta c_{t-1} &= \delta \tilde c_t \odot f + \delta \hat i \odot w_{ci}
                          + \delta \hat f \odot w_{cf}
        \end{aligned}

    (:math:`\mathrm{LN}^\top` is :func:`layer_norm_backward`.) With coupled gates
    (:math:`i = 1 - f`) the forget gate also receives :math:`-\delta \tilde c_t \odot g` and
    there is no :math:`\hat i`. The pre-activations
    :math:`\delta a = [\delta \hat i, \delta \hat f, \delta \hat g, \delta \hat o]` then
    give the weight gradients as in the Elman case, after passing back through
    :math:`\mathrm{LN}_{ih}` and :math:`\mathrm{LN}_{hh}` when present.

    Args:
        dhs: ``(T, B, P)`` gradient of the loss w.r.t. each output ``h_t``.
        cache: from :func:`lstm_forward`.
        dc_last: optional ``(B, H)`` gradient w.r.t. the final cell state ``c_T``.

    Returns:
        gradients of every parameter, ``x``, ``h0`` and ``c0``.
    """
    params = cache.params
    coupled = cache.options["coupled_gates"]
    cell_clip = cache.options["cell_clip"]
    norms = cache.options["norms"]
    w_ih, w_hh = _get(params, "weight_ih"), _get(params, "weight_hh")
    w_hr = _get(params, "weight_hr")
    hidden = w_ih.shape[0] // (3 if coupled else 4)
    peep = {n: _get(params, n) for n in ("weight_ci", "weight_cf", "weight_co")}
    w_ci, w_cf, w_co = (np.zeros(hidden) if v is None else v for v in peep.values())
    dhs = _check_dhs(dhs, cache)

    d_w_ih, d_w_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    d_b = np.zeros(w_ih.shape[0])
    d_w_hr = None if w_hr is None else np.zeros_like(w_hr)
    d_peep = {n: np.zeros(hidden) for n in peep}
    d_norms = _norm_grads(norms or None)
    dx = np.zeros_like(cache.x)
    dh_next = np.zeros_like(cache.steps[0]["h_prev"])
    dc_next = np.zeros_like(cache.steps[0]["c_prev"])
    if dc_last is not None:
        dc_last = np.asarray(dc_last, dtype=np.float64)
        if dc_last.shape != dc_next.shape:
            raise ValueError(f"dc_last must have shape {dc_next.shape}, got {dc_last.shape}")
        dc_next = dc_last.copy()
    for t in reversed(range(len(cache.steps))):
        s = cache.steps[t]
        i, f, g, o = s["i"], s["f"], s["g"], s["o"]
        dh = dhs[t] + dh_next  # (B, P)
        if w_hr is None:
            dm = dh
        else:
            d_w_hr += dh.T @ s["m"]
            dm = dh @ w_hr  # (B, H)
        da_o = dm * s["tanh_c"] * o * (1.0 - o)
        dc = dc_next + dm * o * (1.0 - s["tanh_c"] ** 2) + da_o * w_co
        d_peep["weight_co"] += (da_o * s["c"]).sum(axis=0)
        if cell_clip is not None:  # the clip passes the gradient only where it did not clip
            dc = dc * (np.abs(s["c_pre"]) <= cell_clip)
        dc = _affine_backward(dc, s["ln_c"], "ln_c", d_norms)  # now w.r.t. f c_prev + i g
        if coupled:
            df = dc * (s["c_prev"] - g)  # c = f c_prev + (1 - f) g
            da_i = np.zeros_like(dc)
        else:
            df = dc * s["c_prev"]
            da_i = dc * g * i * (1.0 - i)
        da_f = df * f * (1.0 - f)
        da_g = dc * i * (1.0 - g**2)
        d_peep["weight_ci"] += (da_i * s["c_prev"]).sum(axis=0)
        d_peep["weight_cf"] += (da_f * s["c_prev"]).sum(axis=0)
        dc_next = dc * f + da_i * w_ci + da_f * w_cf

        blocks = [da_f, da_g, da_o] if coupled else [da_i, da_f, da_g, da_o]
        da = np.concatenate(blocks, axis=1)  # (B, G*H)
        d_b += da.sum(axis=0)
        d_pre_ih = _affine_backward(da, s["ln_ih"], "ln_ih", d_norms)
        d_pre_hh = _affine_backward(da, s["ln_hh"], "ln_hh", d_norms)
        d_w_ih += d_pre_ih.T @ cache.x[t]
        d_w_hh += d_pre_hh.T @ s["h_prev"]
        dx[t] = d_pre_ih @ w_ih
        dh_next = d_pre_hh @ w_hh
    grads = _weight_grads(params, d_w_ih, d_w_hh, d_b, d_b.copy())
    if w_hr is not None:
        grads["weight_hr"] = d_w_hr
    for name, value in peep.items():
        if value is not None:
            grads[name] = d_peep[name]
    grads.update(_keep_present(d_norms, params))
    grads["x"] = dx
    grads["h0"] = dh_next
    grads["c0"] = dc_next
    return grads


# ----------------------------------------------------------------------------------------------
# GRU


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    params: Params,
    reset_after: bool = True,
    layer_norm_eps: float = 1e-5,
) -> tuple[np.ndarray, Cache]:
    r"""GRU recurrence over a whole sequence (gate order ``r, z, n``).

    .. math::

        \begin{aligned}
        r_t &= \sigma(x_t W_{ir}^\top + b_{ir} + h_{t-1} W_{hr}^\top + b_{hr}) \\
        z_t &= \sigma(x_t W_{iz}^\top + b_{iz} + h_{t-1} W_{hz}^\top + b_{hz}) \\
        n_t &= \tanh\big(x_t W_{in}^\top + b_{in} + r_t \odot (h_{t-1} W_{hn}^\top + b_{hn})\big)
            && \text{reset\_after=True (torch, cuDNN, Keras default)} \\
        n_t &= \tanh\big(x_t W_{in}^\top + b_{in} + (r_t \odot h_{t-1}) W_{hn}^\top + b_{hn}\big)
            && \text{reset\_after=False (Cho et al. 2014, CNTK, TF1)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{aligned}

    With layer norms (``params`` holds ``ln_ih.*``, ``ln_hh.*`` and, without
    ``reset_after``, ``ln_hn.*``, as :class:`rnnkit.cells.GRUCell` with
    ``layer_norm=True``) each product :math:`v W^\top` becomes :math:`\mathrm{LN}(v W^\top)`
    before its bias is added: ``ln_ih`` over the 3H input products, ``ln_hh`` over the 3H
    recurrent products (``reset_after``) or over the 2H r, z products, and ``ln_hn`` over
    :math:`(r_t \odot h_{t-1}) W_{hn}^\top`.

    Returns:
        ``hs (T, B, H)`` and the cache for :func:`gru_backward`.
    """
    x = _as_float64("x", x, 3)
    w_ih, w_hh, b_ih, b_hh, hidden = _check_params("gru", x, params, 3)
    if w_hh.shape[1] != hidden:
        raise ValueError(f"gru: weight_hh must be ({3 * hidden}, {hidden}), got {w_hh.shape}")
    if reset_after:
        sizes = {"ln_ih": 3 * hidden, "ln_hh": 3 * hidden}
    else:
        sizes = {"ln_ih": 3 * hidden, "ln_hh": 2 * hidden, "ln_hn": hidden}
    norms = _norms(params, sizes, "gru") or {}
    eps = layer_norm_eps
    b_ih = _bias_or_zero(b_ih, 3 * hidden)
    b_hh = _bias_or_zero(b_hh, 3 * hidden)
    h = _initial("h0", h0, x.shape[1], hidden)
    cache = Cache("gru", x, params, {"reset_after": reset_after, "norms": norms})
    w_hh_rz, w_hn = w_hh[: 2 * hidden], w_hh[2 * hidden :]
    for x_t in x:
        pre_ih, ln_ih = _affine(x_t, w_ih, norms.get("ln_ih"), eps)
        gi = pre_ih + b_ih  # (B, 3H)
        ln_hn = None
        if reset_after:
            pre_hh, ln_hh = _affine(h, w_hh, norms.get("ln_hh"), eps)
            gh = pre_hh + b_hh  # (B, 3H)
            gh_rz, gh_n = gh[:, : 2 * hidden], gh[:, 2 * hidden :]
        else:
            pre_rz, ln_hh = _affine(h, w_hh_rz, norms.get("ln_hh"), eps)
            gh_rz = pre_rz + b_hh[: 2 * hidden]  # (B, 2H)
        r = sigmoid(gi[:, :hidden] + gh_rz[:, :hidden])
        z = sigmoid(gi[:, hidden : 2 * hidden] + gh_rz[:, hidden:])
        if reset_after:
            n = np.tanh(gi[:, 2 * hidden :] + r * gh_n)
        else:
            pre_n, ln_hn = _affine(r * h, w_hn, norms.get("ln_hn"), eps)
            gh_n = pre_n + b_hh[2 * hidden :]  # (B, H)
            n = np.tanh(gi[:, 2 * hidden :] + gh_n)
        h_new = (1.0 - z) * n + z * h
        cache.steps.append(
            {"h_prev": h, "r": r, "z": z, "n": n, "gh_n": gh_n, "h": h_new,
             "ln_ih": ln_ih, "ln_hh": ln_hh, "ln_hn": ln_hn}
        )
        h = h_new
    return cache.hs, cache


def gru_backward(dhs: np.ndarray, cache: Cache) -> dict[str, np.ndarray]:
    r"""BPTT for :func:`gru_forward`.

    Inside a step, with :math:`\delta h` the total gradient w.r.t. :math:`h_t`:

    .. math::

        \begin{aligned}
        \delta n &= \delta h \odot (1 - z), \quad
        \delta \hat z = \delta h \odot (h_{t-1} - n) \odot z(1-z), \quad
        \delta \hat n = \delta n \odot (1 - n^2) \\
        \text{reset\_after:}\ \ \delta \hat r &= \delta \hat n \odot (h_{t-1} W_{hn}^\top
            + b_{hn}) \odot r(1-r), \quad
            \delta(h_{t-1} W_{hn}^\top + b_{hn}) = \delta \hat n \odot r \\
        \text{reset\_before:}\ \ \delta(r \odot h_{t-1}) &= \delta \hat n\, W_{hn}, \quad
            \delta \hat r = \delta(r \odot h_{t-1}) \odot h_{t-1} \odot r(1-r) \\
        \delta h_{t-1} &= \delta h \odot z + (\text{the paths through } W_{hh})
        \end{aligned}

    With layer norms, each gradient w.r.t. a normalised product passes through
    :func:`layer_norm_backward` before it reaches the weights and the inputs.

    Returns:
        gradients of every parameter, ``x`` and ``h0``.
    """
    params = cache.params
    reset_after = cache.options["reset_after"]
    norms = cache.options["norms"]
    w_ih, w_hh = _get(params, "weight_ih"), _get(params, "weight_hh")
    hidden = w_ih.shape[0] // 3
    w_hh_rz, w_hn = w_hh[: 2 * hidden], w_hh[2 * hidden :]
    dhs = _check_dhs(dhs, cache)
    d_w_ih, d_w_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    d_b_ih, d_b_hh = np.zeros(3 * hidden), np.zeros(3 * hidden)
    d_norms = _norm_grads(norms or None)
    dx = np.zeros_like(cache.x)
    dh_next = np.zeros_like(cache.steps[0]["h_prev"])
    for t in reversed(range(len(cache.steps))):
        s = cache.steps[t]
        r, z, n, h_prev = s["r"], s["z"], s["n"], s["h_prev"]
        dh = dhs[t] + dh_next
        dh_prev = dh * z
        da_n = dh * (1.0 - z) * (1.0 - n**2)  # (B, H)
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        if reset_after:
            da_r = da_n * s["gh_n"] * r * (1.0 - r)
            d_gh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # w.r.t. LN(h W_hh^T) + b
            d_b_hh += d_gh.sum(axis=0)
            d_pre = _affine_backward(d_gh, s["ln_hh"], "ln_hh", d_norms)
            d_w_hh += d_pre.T @ h_prev
            dh_prev += d_pre @ w_hh
        else:
            d_b_hh[2 * hidden :] += da_n.sum(axis=0)
            d_pre_n = _affine_backward(da_n, s["ln_hn"], "ln_hn", d_norms)
            d_w_hh[2 * hidden :] += d_pre_n.T @ (r * h_prev)
            d_rh = d_pre_n @ w_hn  # gradient w.r.t. r * h_prev
            da_r = d_rh * h_prev * r * (1.0 - r)
            dh_prev += d_rh * r
            d_gh_rz = np.concatenate([da_r, da_z], axis=1)  # (B, 2H)
            d_b_hh[: 2 * hidden] += d_gh_rz.sum(axis=0)
            d_pre_rz = _affine_backward(d_gh_rz, s["ln_hh"], "ln_hh", d_norms)
            d_w_hh[: 2 * hidden] += d_pre_rz.T @ h_prev
            dh_prev += d_pre_rz @ w_hh_rz

        d_gi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
        d_b_ih += d_gi.sum(axis=0)
        d_pre_ih = _affine_backward(d_gi, s["ln_ih"], "ln_ih", d_norms)
        d_w_ih += d_pre_ih.T @ cache.x[t]
        dx[t] = d_pre_ih @ w_ih
        dh_next = dh_prev
    grads = _weight_grads(params, d_w_ih, d_w_hh, d_b_ih, d_b_hh)
    grads.update(_keep_present(d_norms, params))
    grads["x"] = dx
    grads["h0"] = dh_next
    return grads


# ----------------------------------------------------------------------------------------------
# softmax cross-entropy output layer and the whole-sequence loss


def softmax_cross_entropy(
    hs: np.ndarray, targets: np.ndarray, weight_out: np.ndarray, bias_out: np.ndarray | None
) -> tuple[float, np.ndarray]:
    r"""Loss :math:`L = -\sum_{t,b} \log \mathrm{softmax}(h_t V^\top + c)[y_{t,b}]`.

    Args:
        hs: ``(T, B, P)`` hidden outputs.
        targets: ``(T, B)`` integer class ids in ``[0, K)``.
        weight_out: ``V (K, P)`` (as ``torch.nn.Linear(P, K).weight``).
        bias_out: ``c (K,)`` or ``None``.

    Returns:
        the loss (summed over time and batch, as ``F.cross_entropy(reduction="sum")``) and
        the probabilities ``(T, B, K)``.
    """
    targets = np.asarray(targets)
    weight_out = np.asarray(weight_out, dtype=np.float64)
    if targets.shape != hs.shape[:2]:
        raise ValueError(f"targets must have shape {hs.shape[:2]}, got {targets.shape}")
    if weight_out.ndim != 2 or weight_out.shape[1] != hs.shape[2]:
        raise ValueError(f"weight_out must be (K, {hs.shape[2]}), got {weight_out.shape}")
    classes = weight_out.shape[0]
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(f"targets must be class ids in [0, {classes}), got "
                         f"min {targets.min()} max {targets.max()}")
    logits = hs @ weight_out.T  # (T, B, K)
    if bias_out is not None:
        logits = logits + np.asarray(bias_out, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None].astype(np.int64), axis=-1)
    return float(-picked.sum()), np.exp(log_probs)


def softmax_cross_entropy_backward(
    hs: np.ndarray, targets: np.ndarray, probs: np.ndarray, weight_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of :func:`softmax_cross_entropy`.

    The softmax-plus-cross-entropy derivative is :math:`\partial L_t/\partial z_t =
    o_t - \mathrm{onehot}(y_t)` for logits :math:`z_t`; hence

    .. math::

        \frac{\partial L}{\partial V} = \sum_t (o_t - \mathrm{onehot}(y_t))^\top h_t, \quad
        \frac{\partial L}{\partial c} = \sum_t (o_t - \mathrm{onehot}(y_t)), \quad
        \frac{\partial L_t}{\partial h_t} = (o_t - \mathrm{onehot}(y_t)) V.

    Returns:
        ``(dhs (T, B, P), d_weight_out (K, P), d_bias_out (K,))``.
    """
    targets = np.asarray(targets)
    d_logits = probs.copy()  # (T, B, K)
    t_index, b_index = np.indices(targets.shape)
    d_logits[t_index, b_index, targets] -= 1.0  # o_t - onehot(y_t)
    flat_d = d_logits.reshape(-1, d_logits.shape[-1])
    flat_h = hs.reshape(-1, hs.shape[-1])
    return d_logits @ np.asarray(weight_out), flat_d.T @ flat_h, flat_d.sum(axis=0)


def sequence_forward(
    cell: str,
    x: np.ndarray,
    params: Params,
    state0: Any = None,
    **options: Any,
) -> tuple[np.ndarray, Cache]:
    """Dispatch to :func:`elman_forward`, :func:`lstm_forward` or :func:`gru_forward`.

    ``options``: ``nonlinearity`` (Elman), ``coupled_gates`` and ``cell_clip`` (LSTM),
    ``reset_after`` (GRU), ``layer_norm_eps`` (LSTM, GRU).
    ``state0`` is ``h0`` (Elman, GRU) or ``(h0, c0)`` (LSTM).
    """
    kind = _cell_kind(cell)
    forward = {"elman": elman_forward, "lstm": lstm_forward, "gru": gru_forward}[kind]
    return forward(x, state0, params, **options)


def sequence_backward(
    dhs: np.ndarray, cache: Cache, **kwargs: Any
) -> dict[str, np.ndarray]:
    """Dispatch to the backward function that matches ``cache``."""
    backward = {"elman": elman_backward, "lstm": lstm_backward, "gru": gru_backward}
    return backward[cache.kind](dhs, cache, **kwargs)


def sequence_loss_and_grads(
    cell: str,
    x: np.ndarray,
    targets: np.ndarray,
    params: Params,
    weight_out: np.ndarray,
    bias_out: np.ndarray | None = None,
    state0: Any = None,
    **options: Any,
) -> tuple[float, dict[str, np.ndarray]]:
    r"""Whole-sequence softmax cross-entropy loss and every gradient, by BPTT.

    The model is the one of the classic derivation: a recurrent cell, then on every step a
    softmax output layer :math:`o_t = \mathrm{softmax}(V h_t + c)`, and the loss
    :math:`L = \sum_t -\log o_t[y_t]` (also summed over the batch).

    Args:
        cell: ``"elman"`` (alias ``"rnn"``), ``"lstm"`` or ``"gru"``.
        x: ``(T, B, I)``.
        targets: ``(T, B)`` class ids.
        params: cell parameters in torch's layout.
        weight_out: ``V (K, P)``; ``bias_out``: ``c (K,)`` or ``None``.
        state0: initial state (see :func:`sequence_forward`), ``None`` for zeros.
        options: cell options (``nonlinearity``, ``coupled_gates``, ``cell_clip``,
            ``reset_after``, ``layer_norm_eps``).

    Returns:
        ``(loss, grads)``: ``grads`` holds the cell parameters' gradients under their own
        names, ``weight_out``, ``bias_out`` (if given), ``x``, ``h0`` (and ``c0`` for LSTM).
    """
    hs, cache = sequence_forward(cell, x, params, state0, **options)
    loss, probs = softmax_cross_entropy(hs, targets, weight_out, bias_out)
    dhs, d_weight_out, d_bias_out = softmax_cross_entropy_backward(
        hs, targets, probs, weight_out
    )
    grads = sequence_backward(dhs, cache)
    grads["weight_out"] = d_weight_out
    if bias_out is not None:
        grads["bias_out"] = d_bias_out
    return loss, grads
