"""LSTMCell against torch.nn.LSTMCell / nn.LSTM, a hand-written formula, and finite differences."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit import functional as RF
from rnnkit.cells import LSTMCell
from tests.helpers import gradcheck_cell, layer_norm_by_hand, randomise, sigmoid

B, I, H, P = 3, 4, 5, 2


# ----------------------------------------------------------------------------- helpers


def lstm_by_hand(cell: LSTMCell, x, h, c):
    """The LSTM equations written out gate by gate, independently of rnnkit.functional."""
    n = cell.hidden_size
    gate_names = "fgo" if cell.coupled_gates else "ifgo"
    from_x = x @ cell.weight_ih.T
    from_h = h @ cell.weight_hh.T
    if cell.layer_norm:
        from_x = layer_norm_by_hand(from_x, cell.ln_ih)
        from_h = layer_norm_by_hand(from_h, cell.ln_hh)
    if cell.bias:
        from_x = from_x + cell.bias_ih
        from_h = from_h + cell.bias_hh
    a = {
        g: from_x[:, k * n : (k + 1) * n] + from_h[:, k * n : (k + 1) * n]
        for k, g in enumerate(gate_names)
    }
    if cell.peepholes:
        f = sigmoid(a["f"] + cell.weight_cf * c)
    else:
        f = sigmoid(a["f"])
    if cell.coupled_gates:
        i = 1.0 - f
    elif cell.peepholes:
        i = sigmoid(a["i"] + cell.weight_ci * c)
    else:
        i = sigmoid(a["i"])
    g = torch.tanh(a["g"])
    c_new = f * c + i * g
    if cell.layer_norm:
        c_new = layer_norm_by_hand(c_new, cell.ln_c)
    if cell.cell_clip is not None:
        clip = cell.cell_clip
        c_new = torch.where(c_new > clip, torch.full_like(c_new, clip), c_new)
        c_new = torch.where(c_new < -clip, torch.full_like(c_new, -clip), c_new)
    if cell.peepholes:
        o = sigmoid(a["o"] + cell.weight_co * c_new)
    else:
        o = sigmoid(a["o"])
    h_new = o * torch.tanh(c_new)
    if cell.proj_size:
        h_new = h_new @ cell.weight_hr.T
    return h_new, c_new


class BenchmarkLayerNormLSTMCell(nn.Module):
    """PyTorch's benchmarks/fastrnns/custom_lstms.py LayerNormLSTMCell (jit removed)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size))
        self.layernorm_i = nn.LayerNorm(4 * hidden_size)
        self.layernorm_h = nn.LayerNorm(4 * hidden_size)
        self.layernorm_c = nn.LayerNorm(hidden_size)

    def forward(self, input, state):
        hx, cx = state
        igates = self.layernorm_i(torch.mm(input, self.weight_ih.t()))
        hgates = self.layernorm_h(torch.mm(hx, self.weight_hh.t()))
        gates = igates + hgates
        ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
        ingate = torch.sigmoid(ingate)
        forgetgate = torch.sigmoid(forgetgate)
        cellgate = torch.tanh(cellgate)
        outgate = torch.sigmoid(outgate)
        cy = self.layernorm_c((forgetgate * cx) + (ingate * cellgate))
        hy = outgate * torch.tanh(cy)
        return hy, (hy, cy)


OPTIONS = {
    "plain": {},
    "no_bias": {"bias": False},
    "peepholes": {"peepholes": True},
    "coupled": {"coupled_gates": True},
    "coupled_peepholes": {"coupled_gates": True, "peepholes": True},
    "proj": {"proj_size": P},
    "cell_clip": {"cell_clip": 0.4},
    "layer_norm": {"layer_norm": True},
    "layer_norm_no_bias": {"layer_norm": True, "bias": False},
    "everything": {
        "peepholes": True,
        "coupled_gates": True,
        "proj_size": P,
        "cell_clip": 0.4,
        "layer_norm": True,
    },
    "everything_uncoupled": {
        "peepholes": True,
        "proj_size": P,
        "cell_clip": 0.4,
        "layer_norm": True,
    },
}


def make_inputs(cell: LSTMCell, dtype=torch.float64, scale=1.0):
    x = torch.randn(B, cell.input_size, dtype=dtype)
    h = torch.randn(B, cell.output_size, dtype=dtype) * scale
    c = torch.randn(B, cell.hidden_size, dtype=dtype) * scale
    return x, h, c


# ----------------------------------------------------------------------------- torch parity


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_lstmcell_outputs_and_gradients(bias):
    torch.manual_seed(0)
    ref = nn.LSTMCell(I, H, bias=bias)
    cell = LSTMCell(I, H, bias=bias)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, requires_grad=True)
    h = torch.randn(B, H, requires_grad=True)
    c = torch.randn(B, H, requires_grad=True)
    out, (h1, c1) = cell(x, (h, c))
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(out, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)

    w_h, w_c = torch.randn(B, H), torch.randn(B, H)
    mine = torch.autograd.grad((h1 * w_h).sum() + (c1 * w_c).sum(), [x, h, c, *cell.parameters()])
    theirs = torch.autograd.grad((h2 * w_h).sum() + (c2 * w_c).sum(), [x, h, c, *ref.parameters()])
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_parameter_names_and_shapes_match_torch():
    ref = nn.LSTMCell(I, H)
    cell = LSTMCell(I, H)
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    # strict loading both ways
    cell.load_state_dict(ref.state_dict())
    ref.load_state_dict(cell.state_dict())


def test_loaded_state_dict_ignores_forget_bias():
    torch.manual_seed(1)
    ref = nn.LSTMCell(I, H)
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    for forget_bias in (None, 0.0, 1.0, 5.0):
        cell = LSTMCell(I, H, forget_bias=forget_bias)
        cell.load_state_dict(ref.state_dict())
        h1, c1 = cell(x, (h, c))[1]
        h2, c2 = ref(x, (h, c))
        torch.testing.assert_close(h1, h2, atol=1e-6, rtol=0)
        torch.testing.assert_close(c1, c2, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_proj_size_matches_torch_lstm_one_step(bias):
    torch.manual_seed(2)
    ref = nn.LSTM(I, H, num_layers=1, bias=bias, proj_size=P)
    cell = LSTMCell(I, H, bias=bias, proj_size=P)
    cell.load_state_dict({name[: -len("_l0")]: t for name, t in ref.state_dict().items()})
    x = torch.randn(B, I, requires_grad=True)
    h = torch.randn(B, P, requires_grad=True)
    c = torch.randn(B, H, requires_grad=True)
    out, (h1, c1) = cell(x, (h, c))
    y, (h2, c2) = ref(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    assert out.shape == (B, P) and c1.shape == (B, H)
    torch.testing.assert_close(out, y[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(h1, h2[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2[0], atol=1e-5, rtol=0)
    w_h, w_c = torch.randn(B, P), torch.randn(B, H)
    mine = torch.autograd.grad((h1 * w_h).sum() + (c1 * w_c).sum(), [x, h, c, *cell.parameters()])
    theirs = torch.autograd.grad(
        (h2[0] * w_h).sum() + (c2[0] * w_c).sum(), [x, h, c, *ref.parameters()]
    )
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_layer_norm_matches_pytorch_benchmark_cell():
    torch.manual_seed(3)
    ref = randomise(BenchmarkLayerNormLSTMCell(I, H))
    cell = LSTMCell(I, H, bias=False, layer_norm=True)
    renamed = {"layernorm_i": "ln_ih", "layernorm_h": "ln_hh", "layernorm_c": "ln_c"}
    state = {}
    for name, tensor in ref.state_dict().items():
        prefix, _, rest = name.partition(".")
        state[f"{renamed.get(prefix, prefix)}{'.' if rest else ''}{rest}"] = tensor
    cell.load_state_dict(state)
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    out, (h1, c1) = cell(x, (h, c))
    _, (h2, c2) = ref(x, (h, c))
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- option semantics


@pytest.mark.parametrize("name", list(OPTIONS))
def test_options_match_hand_written_equations(name):
    torch.manual_seed(4)
    cell = randomise(LSTMCell(I, H, dtype=torch.float64, **OPTIONS[name]))
    x, h, c = make_inputs(cell)
    out, (h1, c1) = cell(x, (h, c))
    h2, c2 = lstm_by_hand(cell, x, h, c)
    torch.testing.assert_close(out, h2, atol=1e-12, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-12, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-12, rtol=0)
    if cell.cell_clip is not None:
        # the test means something only if the clip is active for some entries and not all
        clipped = c1.abs() == cell.cell_clip
        assert clipped.any() and not clipped.all()


def test_peepholes_change_the_result_and_use_the_right_cell_state():
    torch.manual_seed(5)
    cell = randomise(LSTMCell(I, H, peepholes=True, dtype=torch.float64))
    x, h, c = make_inputs(cell)
    with torch.no_grad():
        # zero peepholes: the cell is an ordinary LSTM with the same remaining weights
        plain = LSTMCell(I, H, dtype=torch.float64)
        plain.load_state_dict(
            {k: v for k, v in cell.state_dict().items() if not k.startswith("weight_c")}
        )
        saved = {n: getattr(cell, n).clone() for n in ("weight_ci", "weight_cf", "weight_co")}
        for n in saved:
            getattr(cell, n).zero_()
        torch.testing.assert_close(cell(x, (h, c))[1], plain(x, (h, c))[1], atol=1e-12, rtol=0)
        for n, value in saved.items():
            getattr(cell, n).copy_(value)
        # only the output gate peephole: c_{t-1} is irrelevant to it, so with the cell state
        # c_t unchanged the output must use c_t: o = sigmoid(a_o + w_co * c_t)
        cell.weight_ci.zero_()
        cell.weight_cf.zero_()
        out, (_, c_new) = cell(x, (h, c))
        a = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        o = torch.sigmoid(a[:, 3 * H :] + cell.weight_co * c_new)
        torch.testing.assert_close(out, o * torch.tanh(c_new), atol=1e-12, rtol=0)


def test_coupled_gates_layout_has_three_gate_slices():
    cell = LSTMCell(I, H, coupled_gates=True, peepholes=True)
    assert cell.weight_ih.shape == (3 * H, I)
    assert cell.weight_hh.shape == (3 * H, H)
    assert cell.bias_ih.shape == (3 * H,) and cell.bias_hh.shape == (3 * H,)
    assert cell.weight_ci is None and cell.weight_cf.shape == (H,) and cell.weight_co.shape == (H,)
    names = {n for n, _ in cell.named_parameters()}
    assert names == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_cf", "weight_co"}


def test_coupled_input_gate_is_one_minus_forget_gate():
    torch.manual_seed(6)
    cell = randomise(LSTMCell(I, H, coupled_gates=True, dtype=torch.float64))
    x, h, c = make_inputs(cell)
    _, (_, c_new) = cell(x, (h, c))
    a = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    f = torch.sigmoid(a[:, :H])
    g = torch.tanh(a[:, H : 2 * H])
    torch.testing.assert_close(c_new, f * c + (1 - f) * g, atol=1e-12, rtol=0)


def test_optional_parameter_shapes_and_names():
    cell = LSTMCell(I, H, peepholes=True, proj_size=P, layer_norm=True)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {
        "weight_ih": (4 * H, I),
        "weight_hh": (4 * H, P),
        "bias_ih": (4 * H,),
        "bias_hh": (4 * H,),
        "weight_hr": (P, H),
        "weight_ci": (H,),
        "weight_cf": (H,),
        "weight_co": (H,),
        "ln_ih.weight": (4 * H,),
        "ln_ih.bias": (4 * H,),
        "ln_hh.weight": (4 * H,),
        "ln_hh.bias": (4 * H,),
        "ln_c.weight": (H,),
        "ln_c.bias": (H,),
    }
    assert cell.state_size == (P, H) and cell.output_size == P
    h, c = cell.initial_state(2)
    assert h.shape == (2, P) and c.shape == (2, H)


def test_cell_clip_bounds_the_cell_state():
    torch.manual_seed(7)
    cell = randomise(LSTMCell(I, H, cell_clip=0.25), scale=3.0)
    x, h, c = make_inputs(cell, dtype=torch.float32, scale=3.0)
    _, (_, c_new) = cell(x, (h, c))
    assert c_new.abs().max() <= 0.25
    assert (c_new.abs() == 0.25).any()


# ----------------------------------------------------------------------------- initialisation


def test_forget_bias_none_is_torch_default_init():
    torch.manual_seed(8)
    ref = nn.LSTMCell(I, H)
    torch.manual_seed(8)
    cell = LSTMCell(I, H, forget_bias=None)
    for a, b in zip(cell.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, -2.5, 3])
@pytest.mark.parametrize("coupled", [False, True])
def test_forget_bias_sets_the_initial_total_forget_bias(forget_bias, coupled):
    torch.manual_seed(9)
    default = LSTMCell(I, H, forget_bias=None, coupled_gates=coupled)
    torch.manual_seed(9)
    cell = LSTMCell(I, H, forget_bias=forget_bias, coupled_gates=coupled)
    forget = slice(0, H) if coupled else slice(H, 2 * H)
    total = cell.bias_ih + cell.bias_hh
    assert torch.equal(total[forget], torch.full((H,), float(forget_bias)))
    assert torch.equal(cell.bias_ih[forget], torch.full((H,), float(forget_bias)))
    assert torch.equal(cell.bias_hh[forget], torch.zeros(H))
    keep = torch.ones(cell.bias_ih.shape[0], dtype=torch.bool)
    keep[forget] = False
    # everything else is exactly torch's uniform draw
    assert torch.equal(cell.bias_ih[keep], default.bias_ih[keep])
    assert torch.equal(cell.bias_hh[keep], default.bias_hh[keep])
    assert torch.equal(cell.weight_ih, default.weight_ih)
    # reset_parameters re-applies it
    with torch.no_grad():
        cell.bias_ih.zero_()
    cell.reset_parameters()
    assert torch.equal((cell.bias_ih + cell.bias_hh)[forget], torch.full((H,), float(forget_bias)))


def test_default_init_ranges():
    cell = LSTMCell(I, H, peepholes=True, proj_size=P, layer_norm=True, forget_bias=None)
    bound = 1 / math.sqrt(H)
    for name, param in cell.named_parameters():
        if name.startswith("ln_"):
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.equal(param, torch.full_like(param, expected)), name
        else:
            assert param.abs().max() <= bound, name
            assert param.std() > 0, name


def test_bias_false_has_no_bias_and_ignores_forget_bias():
    cell = LSTMCell(I, H, bias=False, forget_bias=2.0)
    assert cell.bias_ih is None and cell.bias_hh is None
    assert {n for n, _ in cell.named_parameters()} == {"weight_ih", "weight_hh"}


# ----------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradcheck(name):
    torch.manual_seed(10)
    cell = randomise(LSTMCell(3, 4, dtype=torch.float64, **OPTIONS[name]))
    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, cell.output_size, dtype=torch.float64)
    c = torch.randn(2, 4, dtype=torch.float64)
    if cell.cell_clip is not None:
        # finite differences need every cell-state entry away from the clip's kink
        _, (_, c_new) = cell(x, (h, c))
        raw = LSTMCell(3, 4, dtype=torch.float64, **{**OPTIONS[name], "cell_clip": None})
        raw.load_state_dict(cell.state_dict())
        _, (_, c_raw) = raw(x, (h, c))
        assert (c_raw.abs() - cell.cell_clip).abs().min() > 1e-3
        assert (c_new.abs() == cell.cell_clip).any()
    gradcheck_cell(cell, x, (h, c))


# ----------------------------------------------------------------------------- contract and errors


def test_state_none_means_zeros_and_contract_attributes():
    torch.manual_seed(11)
    cell = LSTMCell(I, H)
    x = torch.randn(B, I)
    out, (h1, c1) = cell(x)
    out2, (h2, c2) = cell(x, cell.initial_state(B))
    assert torch.equal(h1, h2) and torch.equal(c1, c2) and torch.equal(out, h1)
    assert cell.state_size == (H, H) and cell.output_size == H
    assert cell.input_size == I and cell.hidden_size == H
    h0, c0 = cell.initial_state(2, dtype=torch.float64)
    assert h0.dtype == torch.float64 and not h0.any() and not c0.any()


def test_float64_cell():
    cell = LSTMCell(I, H, dtype=torch.float64)
    out, _ = cell(torch.randn(B, I, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_repr_names_options():
    text = repr(LSTMCell(I, H, peepholes=True, proj_size=P, forget_bias=None))
    assert "peepholes=True" in text and "proj_size=2" in text and "forget_bias=None" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": 0}, ValueError, "input_size must be >= 1, got 0"),
        ({"hidden_size": -3}, ValueError, "hidden_size must be >= 1, got -3"),
        ({"hidden_size": 2.0}, TypeError, "hidden_size must be an int"),
        ({"proj_size": -1}, ValueError, "proj_size must be >= 0, got -1"),
        ({"proj_size": H}, ValueError, "proj_size must be smaller than hidden_size, got "
         f"proj_size={H} and hidden_size={H}"),
        ({"proj_size": H + 2}, ValueError, "proj_size must be smaller than hidden_size"),
        ({"cell_clip": -1.0}, ValueError, r"cell_clip must be > 0, got -1.0"),
        ({"cell_clip": 0}, ValueError, r"cell_clip must be > 0, got 0"),
        ({"cell_clip": "3"}, TypeError, "cell_clip must be a positive number or None, got '3'"),
        ({"forget_bias": "1"}, TypeError, "forget_bias must be a finite number or None"),
        ({"forget_bias": float("nan")}, TypeError, "forget_bias must be a finite number"),
        ({"forget_bias": True}, TypeError, "forget_bias must be a finite number"),
        ({"peepholes": 1}, TypeError, r"peepholes must be a bool, got int \(1\)"),
        ({"coupled_gates": "yes"}, TypeError, "coupled_gates must be a bool"),
        ({"layer_norm": None}, TypeError, "layer_norm must be a bool"),
        ({"bias": 0}, TypeError, "bias must be a bool"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(error, match=match):
        LSTMCell(**args)


def test_bad_call_arguments():
    cell = LSTMCell(I, H, proj_size=P)
    x = torch.randn(B, I)
    h, c = torch.zeros(B, P), torch.zeros(B, H)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 4\), got \(3, 5\)"):
        cell(torch.randn(B, I + 1), (h, c))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 4\), got \(4,\)"):
        cell(torch.randn(I), (h, c))
    with pytest.raises(TypeError, match="input must be floating point, got dtype torch.int64"):
        cell(torch.ones(B, I, dtype=torch.long), (h, c))
    with pytest.raises(TypeError, match="input must be a Tensor, got list"):
        cell([[0.0] * I], (h, c))
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match the parameter"):
        cell(x.double(), (h.double(), c.double()))
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\), got Tensor"):
        cell(x, h)
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\), got tuple of length 3"):
        cell(x, (h, c, c))
    with pytest.raises(ValueError, match=r"expected state h of shape \(3, 2\) .* got \(3, 5\)"):
        cell(x, (torch.zeros(B, H), c))
    with pytest.raises(ValueError, match=r"expected state c of shape \(3, 5\) .* got \(2, 5\)"):
        cell(x, (h, torch.zeros(2, H)))
    with pytest.raises(TypeError, match="state c must be a Tensor, got NoneType"):
        cell(x, (h, None))
    with pytest.raises(TypeError, match="state h dtype torch.float64 does not match input dtype"):
        cell(x, (h.double(), c))


def test_functional_rejects_input_peephole_with_coupled_gates():
    w = RF.LSTMWeights(
        torch.randn(3 * H, I), torch.randn(3 * H, H), weight_ci=torch.randn(H)
    )
    with pytest.raises(ValueError, match="coupled gates have no input gate"):
        RF.lstm_step(torch.randn(B, I), (torch.zeros(B, H), torch.zeros(B, H)), w,
                     coupled_gates=True)


def test_every_option_combination_runs_and_backpropagates():
    # a cheap smoke sweep over all 2^5 combinations; semantics are checked above
    for peep, coupled, proj, clip, ln in itertools.product([False, True], repeat=5):
        cell = LSTMCell(
            3, 4, peepholes=peep, coupled_gates=coupled, proj_size=2 if proj else 0,
            cell_clip=1.0 if clip else None, layer_norm=ln,
        )
        out, (h, c) = cell(torch.randn(2, 3), cell.initial_state(2))
        (out.sum() + c.sum()).backward()
        assert all(p.grad is not None for p in cell.parameters())


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 4),
    input_size=st.integers(1, 5),
    hidden_size=st.integers(2, 6),
    data=st.data(),
)
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_random_sizes_match_torch_lstm(batch, input_size, hidden_size, data):
    proj = data.draw(st.integers(0, hidden_size - 1), label="proj_size")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    ref = nn.LSTM(input_size, hidden_size, proj_size=proj)
    cell = LSTMCell(input_size, hidden_size, proj_size=proj)
    cell.load_state_dict({name[: -len("_l0")]: t for name, t in ref.state_dict().items()})
    x = torch.randn(batch, input_size)
    h, c = torch.randn(batch, cell.output_size), torch.randn(batch, hidden_size)
    out, (h1, c1) = cell(x, (h, c))
    y, (h2, c2) = ref(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    torch.testing.assert_close(out, y[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2[0], atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cells_on_cuda_match_torch_cells_on_cuda():
    from rnnkit.cells import ElmanCell, GRUCell

    torch.manual_seed(12)
    x, h, c = (torch.randn(B, I, device="cuda"), torch.randn(B, H, device="cuda"),
               torch.randn(B, H, device="cuda"))  # fmt: skip
    for mine, ref in (
        (ElmanCell(I, H, device="cuda"), nn.RNNCell(I, H, device="cuda")),
        (GRUCell(I, H, device="cuda"), nn.GRUCell(I, H, device="cuda")),
    ):
        mine.load_state_dict(ref.state_dict())
        torch.testing.assert_close(mine(x, h)[0], ref(x, h), atol=1e-5, rtol=0)
    cell, ref = LSTMCell(I, H, device="cuda"), nn.LSTMCell(I, H, device="cuda")
    cell.load_state_dict(ref.state_dict())
    h1, c1 = cell(x, (h, c))[1]
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=0)
    # every option runs on the device and stays there
    full = LSTMCell(I, H, peepholes=True, proj_size=P, cell_clip=1.0, layer_norm=True,
                    device="cuda")  # fmt: skip
    out, (hp, cp) = full(x)
    assert out.device.type == "cuda" and out.shape == (B, P) and cp.shape == (B, H)
