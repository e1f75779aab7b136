"""The NumPy reference against finite differences, torch.nn autograd and rnnkit's cells.

Three independent oracles:
(a) central finite differences of the reference's own forward (float64, rel 1e-6);
(b) ``torch.nn.RNN/LSTM/GRU`` with copied weights and autograd (float64, 1e-10), or, for
    variants torch.nn lacks (peepholes, coupled gates, cell clip, layer norm, GRU
    reset_after=False), the equations written out in torch inside this file and
    differentiated by autograd;
(c) rnnkit's ElmanCell/LSTMCell/GRUCell run over time in a plain loop (float64, 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit import reference as ref
from tests.helpers import assert_doctests_pass

T, B, I, H, K, P = 4, 3, 3, 4, 5, 2
TOL = {"rtol": 1e-10, "atol": 1e-10}

# (cell, options, init_params kwargs); each is one variant the reference covers.
VARIANTS = {
    "elman_tanh": ("elman", {"nonlinearity": "tanh"}, {}),
    "elman_relu": ("elman", {"nonlinearity": "relu"}, {}),
    "elman_nobias": ("elman", {"nonlinearity": "tanh"}, {"bias": False}),
    "lstm": ("lstm", {}, {}),
    "lstm_nobias": ("lstm", {}, {"bias": False}),
    "lstm_proj": ("lstm", {}, {"proj_size": P}),
    "lstm_peepholes": ("lstm", {}, {"peepholes": True}),
    "lstm_coupled": ("lstm", {"coupled_gates": True}, {"coupled_gates": True}),
    "lstm_clip": ("lstm", {"cell_clip": 0.6}, {"peepholes": True}),
    "lstm_all": (
        "lstm",
        {"coupled_gates": True, "cell_clip": 0.6},
        {"coupled_gates": True, "peepholes": True, "proj_size": P},
    ),
    "lstm_ln": ("lstm", {}, {"layer_norm": True}),
    "lstm_ln_all": (
        "lstm",
        {"coupled_gates": True, "cell_clip": 0.6},
        {"layer_norm": True, "coupled_gates": True, "peepholes": True, "proj_size": P},
    ),
    "gru": ("gru", {"reset_after": True}, {}),
    "gru_reset_before": ("gru", {"reset_after": False}, {}),
    "gru_nobias": ("gru", {"reset_after": False}, {"bias": False}),
    "gru_ln": ("gru", {"reset_after": True}, {"layer_norm": True}),
    "gru_ln_reset_before": (
        "gru", {"reset_after": False}, {"layer_norm": True, "reset_after": False}
    ),
}


def make_problem(name: str, seed: int = 0):
    cell, options, init_kwargs = VARIANTS[name]
    rng = np.random.default_rng(seed)
    # scale 0.8: large enough that gates leave their linear regime, small enough for relu
    params = ref.init_params(cell, I, H, rng=rng, scale=0.8, **init_kwargs)
    out = init_kwargs.get("proj_size") or H
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, out)) * 0.5
    state0 = (h0, rng.standard_normal((B, H)) * 0.5) if cell == "lstm" else h0
    targets = rng.integers(0, K, size=(T, B))
    weight_out = rng.standard_normal((K, out))
    bias_out = rng.standard_normal(K)
    return cell, options, params, x, state0, targets, weight_out, bias_out


def numeric_gradient(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``array`` (in place)."""
    grad = np.zeros_like(array)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        plus = f()
        flat[k] = saved - eps
        minus = f()
        flat[k] = saved
        flat_grad[k] = (plus - minus) / (2 * eps)
    return grad


def assert_close_fd(analytic: np.ndarray, numeric: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=what)


# ---------------------------------------------------------------------------------------------
# (a) finite differences


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sequence_loss_gradients_match_finite_differences(name):
    cell, options, params, x, state0, targets, weight_out, bias_out = make_problem(name)

    def loss():
        return ref.sequence_loss_and_grads(
            cell, x, targets, params, weight_out, bias_out, state0, **options
        )[0]

    _, grads = ref.sequence_loss_and_grads(
        cell, x, targets, params, weight_out, bias_out, state0, **options
    )
    arrays = dict(params)
    arrays.update(weight_out=weight_out, bias_out=bias_out, x=x)
    if cell == "lstm":
        arrays.update(h0=state0[0], c0=state0[1])
    else:
        arrays["h0"] = state0
    assert set(grads) == set(arrays)
    for key, array in arrays.items():
        assert_close_fd(grads[key], numeric_gradient(loss, array), f"{name}: {key}")


@pytest.mark.parametrize("name", ["elman_tanh", "lstm_all", "gru_reset_before"])
def test_bare_recurrence_backward_matches_finite_differences(name):
    """``*_backward`` for an arbitrary loss sum(R * hs) (+ sum(Rc * c_T) for the LSTM)."""
    cell, options, params, x, state0, *_ = make_problem(name, seed=1)
    rng = np.random.default_rng(2)
    hs, cache = ref.sequence_forward(cell, x, params, state0, **options)
    weights = rng.standard_normal(hs.shape)
    weights_c = rng.standard_normal((B, H))
    kwargs = {"dc_last": weights_c} if cell == "lstm" else {}

    def loss():
        hs, cache = ref.sequence_forward(cell, x, params, state0, **options)
        value = (weights * hs).sum()
        if cell == "lstm":
            value += (weights_c * cache.cs[-1]).sum()
        return value

    grads = ref.sequence_backward(weights, cache, **kwargs)
    for key in ("weight_ih", "weight_hh", "x"):
        assert_close_fd(grads[key], numeric_gradient(loss, {**params, "x": x}[key]), key)
    h0 = state0[0] if cell == "lstm" else state0
    assert_close_fd(grads["h0"], numeric_gradient(loss, h0), "h0")
    if cell == "lstm":
        assert_close_fd(grads["c0"], numeric_gradient(loss, state0[1]), "c0")


# ---------------------------------------------------------------------------------------------
# (b) torch.nn modules and torch autograd


def to_torch(array: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64, requires_grad=grad)


def torch_loss(hs: torch.Tensor, targets, weight_out, bias_out) -> torch.Tensor:
    logits = F.linear(hs, weight_out, bias_out)  # (T, B, K)
    return F.cross_entropy(
        logits.reshape(-1, K), torch.as_tensor(targets).reshape(-1), reduction="sum"
    )


def compare_with_torch(name, run_torch):
    """Run the reference and ``run_torch(params_t, x_t, state0_t) -> hs`` on one problem."""
    cell, options, params, x, state0, targets, weight_out, bias_out = make_problem(name)
    loss, grads = ref.sequence_loss_and_grads(
        cell, x, targets, params, weight_out, bias_out, state0, **options
    )
    hs_ref, _ = ref.sequence_forward(cell, x, params, state0, **options)

    params_t = {k: to_torch(v) for k, v in params.items()}
    x_t = to_torch(x)
    state_t = tuple(to_torch(s) for s in state0) if cell == "lstm" else to_torch(state0)
    out_t = {"weight_out": to_torch(weight_out), "bias_out": to_torch(bias_out)}
    hs_t = run_torch(params_t, x_t, state_t)
    loss_t = torch_loss(hs_t, targets, out_t["weight_out"], out_t["bias_out"])
    loss_t.backward()

    np.testing.assert_allclose(hs_ref, hs_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(loss, loss_t.item(), **TOL)
    leaves = {**params_t, **out_t, "x": x_t}
    if cell == "lstm":
        leaves.update(h0=state_t[0], c0=state_t[1])
    else:
        leaves["h0"] = state_t
    assert set(grads) == set(leaves)
    for key, leaf in leaves.items():
        np.testing.assert_allclose(grads[key], leaf.grad.numpy(), err_msg=key, **TOL)


def load_module(module: torch.nn.Module, params_t: dict[str, torch.Tensor]) -> None:
    """Make the module's ``*_l0`` parameters the given leaf tensors (so grads land on them)."""
    for key, tensor in params_t.items():
        setattr(module, f"{key}_l0", torch.nn.Parameter(tensor))
        # nn.Parameter wraps a new leaf; keep the caller's tensor as the leaf that gets .grad
        params_t[key] = getattr(module, f"{key}_l0")
    module._init_flat_weights()


@pytest.mark.parametrize("name", ["elman_tanh", "elman_relu", "elman_nobias"])
def test_elman_matches_torch_rnn(name):
    nonlinearity = VARIANTS[name][1]["nonlinearity"]
    bias = VARIANTS[name][2].get("bias", True)

    def run(params_t, x_t, h0_t):
        rnn = torch.nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias).double()
        load_module(rnn, params_t)
        return rnn(x_t, h0_t[None])[0]

    compare_with_torch(name, run)


@pytest.mark.parametrize("name", ["lstm", "lstm_nobias", "lstm_proj"])
def test_lstm_matches_torch_lstm(name):
    init_kwargs = VARIANTS[name][2]

    def run(params_t, x_t, state_t):
        lstm = torch.nn.LSTM(
            I, H, bias=init_kwargs.get("bias", True), proj_size=init_kwargs.get("proj_size", 0)
        ).double()
        load_module(lstm, params_t)
        return lstm(x_t, (state_t[0][None], state_t[1][None]))[0]

    compare_with_torch(name, run)


@pytest.mark.parametrize("name", ["gru"])
def test_gru_matches_torch_gru(name):
    def run(params_t, x_t, h0_t):
        gru = torch.nn.GRU(I, H).double()
        load_module(gru, params_t)
        return gru(x_t, h0_t[None])[0]

    compare_with_torch(name, run)


def affine(params_t, v, weight, bias, norm):
    """``v W^T + b`` or, if the layer norm ``norm`` is in ``params_t``, ``LN(v W^T) + b``."""
    out = v @ weight.T
    if f"{norm}.weight" in params_t:
        out = F.layer_norm(
            out, (out.shape[-1],), params_t[f"{norm}.weight"], params_t[f"{norm}.bias"], 1e-5
        )
    return out if bias is None else out + bias


def torch_lstm_equations(params_t, x_t, state_t, coupled_gates=False, cell_clip=None):
    """The LSTM variants written directly from their equations, for torch autograd."""
    h, c = state_t
    zeros = torch.zeros(H, dtype=torch.float64)
    w_ci = params_t.get("weight_ci", zeros)
    w_cf = params_t.get("weight_cf", zeros)
    w_co = params_t.get("weight_co", zeros)
    outputs = []
    for x in x_t:
        gates = affine(
            params_t, x, params_t["weight_ih"], params_t.get("bias_ih"), "ln_ih"
        ) + affine(params_t, h, params_t["weight_hh"], params_t.get("bias_hh"), "ln_hh")
        if coupled_gates:
            a_f, a_g, a_o = gates.chunk(3, dim=1)
            f = torch.sigmoid(a_f + w_cf * c)
            i = 1 - f
        else:
            a_i, a_f, a_g, a_o = gates.chunk(4, dim=1)
            f = torch.sigmoid(a_f + w_cf * c)
            i = torch.sigmoid(a_i + w_ci * c)
        c = f * c + i * torch.tanh(a_g)
        if "ln_c.weight" in params_t:
            c = F.layer_norm(c, (H,), params_t["ln_c.weight"], params_t["ln_c.bias"], 1e-5)
        if cell_clip is not None:
            c = c.clamp(-cell_clip, cell_clip)
        h = torch.sigmoid(a_o + w_co * c) * torch.tanh(c)
        if "weight_hr" in params_t:
            h = h @ params_t["weight_hr"].T
        outputs.append(h)
    return torch.stack(outputs)


def torch_gru_equations(params_t, x_t, h, reset_after):
    """Both GRU forms (with optional layer norms) from their equations, for torch autograd."""
    w_hh = params_t["weight_hh"]
    b_hh = params_t.get("bias_hh", torch.zeros(3 * H, dtype=torch.float64))
    outputs = []
    for x in x_t:
        gi = affine(params_t, x, params_t["weight_ih"], params_t.get("bias_ih"), "ln_ih")
        a_r, a_z, a_n = gi.chunk(3, 1)
        if reset_after:
            h_r, h_z, h_n = affine(params_t, h, w_hh, b_hh, "ln_hh").chunk(3, 1)
            r = torch.sigmoid(a_r + h_r)
            z = torch.sigmoid(a_z + h_z)
            n = torch.tanh(a_n + r * h_n)
        else:
            h_r, h_z = affine(params_t, h, w_hh[: 2 * H], b_hh[: 2 * H], "ln_hh").chunk(2, 1)
            r = torch.sigmoid(a_r + h_r)
            z = torch.sigmoid(a_z + h_z)
            n = torch.tanh(a_n + affine(params_t, r * h, w_hh[2 * H :], b_hh[2 * H :], "ln_hn"))
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize(
    "name", ["lstm_peepholes", "lstm_coupled", "lstm_clip", "lstm_all", "lstm_ln", "lstm_ln_all"]
)
def test_lstm_variants_match_torch_autograd(name):
    options = VARIANTS[name][1]
    compare_with_torch(name, lambda p, x, s: torch_lstm_equations(p, x, s, **options))


def test_cell_clip_is_active_in_the_clip_variants():
    """The clip tests mean something only if some cell states do hit the clip."""
    for name in ("lstm_clip", "lstm_all", "lstm_ln_all"):
        cell, options, params, x, state0, *_ = make_problem(name)
        _, cache = ref.sequence_forward(cell, x, params, state0, **options)
        pre = np.stack([s["c_pre"] for s in cache.steps])
        assert (np.abs(pre) > options["cell_clip"]).mean() > 0.1


@pytest.mark.parametrize(
    "name", ["gru", "gru_reset_before", "gru_nobias", "gru_ln", "gru_ln_reset_before"]
)
def test_gru_variants_match_torch_autograd(name):
    reset_after = VARIANTS[name][1]["reset_after"]
    compare_with_torch(name, lambda p, x, h: torch_gru_equations(p, x, h, reset_after))


def test_layer_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(7)
    v, weight, bias = rng.standard_normal((3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    dy = rng.standard_normal((3, 6))

    def loss():
        return (dy * ref.layer_norm_forward(v, weight, bias)[0]).sum()

    dv, d_weight, d_bias = ref.layer_norm_backward(dy, ref.layer_norm_forward(v, weight, bias)[1])
    assert_close_fd(dv, numeric_gradient(loss, v), "v")
    assert_close_fd(d_weight, numeric_gradient(loss, weight), "weight")
    assert_close_fd(d_bias, numeric_gradient(loss, bias), "bias")


def test_zero_initial_state_is_the_default():
    cell, options, params, x, state0, *_ = make_problem("lstm")
    hs_none, _ = ref.lstm_forward(x, None, params)
    hs_zero, _ = ref.lstm_forward(x, (np.zeros((B, H)), np.zeros((B, H))), params)
    np.testing.assert_array_equal(hs_none, hs_zero)


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_problem():
    _, _, params, x, *_ = make_problem("gru")
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        ref.sequence_forward("transformer", x, params)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        ref.elman_forward(x, None, ref.init_params("elman", I, H), nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"x must have 3 dimensions, got shape \(3, 3\)"):
        ref.gru_forward(x[0], None, params)
    with pytest.raises(ValueError, match="input has 5 features"):
        ref.gru_forward(np.zeros((T, B, 5)), None, params)
    with pytest.raises(ValueError, match=r"h0 must have shape \(3, 4\), got \(2, 4\)"):
        ref.gru_forward(x, np.zeros((2, H)), params)
    ln_params = ref.init_params("gru", I, H, layer_norm=True)
    del ln_params["ln_hh.weight"]
    with pytest.raises(KeyError, match=r"layer norm parameters are incomplete.*ln_hh.weight"):
        ref.gru_forward(x, None, ln_params)
    ln_params = ref.init_params("gru", I, H, layer_norm=True, reset_after=True)
    ln_params.update({"ln_hn.weight": np.ones(H), "ln_hn.bias": np.zeros(H)})
    with pytest.raises(ValueError, match=r"gru: ln_hh.weight must be \(8,\), got \(12,\)"):
        ref.gru_forward(x, None, ln_params, reset_after=False)
    with pytest.raises(KeyError, match="missing 'weight_hh'"):
        ref.gru_forward(x, None, {"weight_ih": params["weight_ih"]})
    with pytest.raises(ValueError, match=r"weight_ih must be \(4\*H, I\)"):
        ref.lstm_forward(x, None, {**params, "weight_ih": np.zeros((7, I))})
    with pytest.raises(ValueError, match="weight_ci must be absent"):
        ref.lstm_forward(x, None, {**ref.init_params("lstm", I, H, coupled_gates=True),
                                   "weight_ci": np.zeros(H)}, coupled_gates=True)
    with pytest.raises(ValueError, match="cell_clip must be > 0 or None, got -1"):
        ref.lstm_forward(x, None, ref.init_params("lstm", I, H), cell_clip=-1)
    with pytest.raises(ValueError, match="weight_hh must have 12 rows"):
        ref.gru_forward(x, None, {**params, "weight_hh": np.zeros((8, H))})
    with pytest.raises(ValueError, match=r"bias_ih must be \(12,\)"):
        ref.gru_forward(x, None, {**params, "bias_ih": np.zeros(3)})
    lstm_params = ref.init_params("lstm", I, H, proj_size=P)
    with pytest.raises(ValueError, match=r"weight_hh must be \(16, 2\)"):
        ref.lstm_forward(x, None, {**lstm_params, "weight_hh": np.zeros((16, H))})
    hs, cache = ref.gru_forward(x, None, params)
    with pytest.raises(ValueError, match=r"dhs must have the shape of the outputs \(4, 3, 4\)"):
        ref.gru_backward(np.ones((T, B, 1)), cache)
    _, lstm_cache = ref.lstm_forward(x, None, ref.init_params("lstm", I, H))
    with pytest.raises(ValueError, match=r"dc_last must have shape \(3, 4\), got \(4,\)"):
        ref.lstm_backward(np.zeros((T, B, H)), lstm_cache, dc_last=np.zeros(H))
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 3\)"):
        ref.softmax_cross_entropy(hs, np.zeros((T,), dtype=int), np.zeros((K, H)), None)
    with pytest.raises(ValueError, match=r"weight_out must be \(K, 4\)"):
        ref.softmax_cross_entropy(hs, np.zeros((T, B), dtype=int), np.zeros((K, 3)), None)
    with pytest.raises(ValueError, match=r"class ids in \[0, 5\)"):
        ref.softmax_cross_entropy(hs, np.full((T, B), 5), np.zeros((K, H)), None)


# ---------------------------------------------------------------------------------------------
# (c) rnnkit's cells, run over time in a plain loop


def rnnkit_cell_runner(make_cell):
    """``run_torch`` for :func:`compare_with_torch` that drives an rnnkit cell step by step."""

    def run(params_t, x_t, state_t):
        cell = make_cell().double()
        expected = {name for name, _ in cell.named_parameters()}
        assert expected == set(params_t), f"parameter names differ: {expected ^ set(params_t)}"
        for key, tensor in params_t.items():
            *path, leaf = key.split(".")  # "ln_ih.weight" lives on the submodule ln_ih
            owner = cell.get_submodule(".".join(path))
            setattr(owner, leaf, torch.nn.Parameter(tensor))
            params_t[key] = getattr(owner, leaf)
        outputs, state = [], state_t
        for x in x_t:
            out, state = cell(x, state)
            outputs.append(out)
        return torch.stack(outputs)  # (T, B, H_out)

    return run


@pytest.mark.parametrize("name", ["elman_tanh", "elman_relu", "elman_nobias"])
def test_reference_matches_rnnkit_elman_cell(name):
    from rnnkit.cells import ElmanCell

    nonlinearity = VARIANTS[name][1]["nonlinearity"]
    bias = VARIANTS[name][2].get("bias", True)
    compare_with_torch(
        name, rnnkit_cell_runner(lambda: ElmanCell(I, H, nonlinearity=nonlinearity, bias=bias))
    )


@pytest.mark.parametrize(
    "name",
    ["lstm", "lstm_nobias", "lstm_proj", "lstm_peepholes", "lstm_coupled", "lstm_clip",
     "lstm_all", "lstm_ln", "lstm_ln_all"],
)
def test_reference_matches_rnnkit_lstm_cell(name):
    from rnnkit.cells import LSTMCell

    options, init_kwargs = VARIANTS[name][1], VARIANTS[name][2]

    def make():
        return LSTMCell(
            I,
            H,
            bias=init_kwargs.get("bias", True),
            peepholes=init_kwargs.get("peepholes", False),
            coupled_gates=options.get("coupled_gates", False),
            proj_size=init_kwargs.get("proj_size", 0),
            cell_clip=options.get("cell_clip"),
            layer_norm=init_kwargs.get("layer_norm", False),
        )

    compare_with_torch(name, rnnkit_cell_runner(make))


@pytest.mark.parametrize(
    "name", ["gru", "gru_reset_before", "gru_nobias", "gru_ln", "gru_ln_reset_before"]
)
def test_reference_matches_rnnkit_gru_cell(name):
    from rnnkit.cells import GRUCell

    reset_after = VARIANTS[name][1]["reset_after"]
    bias = VARIANTS[name][2].get("bias", True)
    layer_norm = VARIANTS[name][2].get("layer_norm", False)
    compare_with_torch(
        name,
        rnnkit_cell_runner(
            lambda: GRUCell(I, H, bias=bias, reset_after=reset_after, layer_norm=layer_norm)
        ),
    )


def test_docstring_examples_run():
    assert_doctests_pass("rnnkit.reference")
