"""``precision="bf16"`` on the compiled kernels: bf16 GEMM operands, float32 everything else.

Oracle: the recurrence written here from the cells' equations (``rnnkit.functional``'s
docstrings), in float32 torch ops, with exactly the operands the kernels round to bfloat16
rounded the same way (round to nearest even; the weights of every GEMM, the inputs of the
projection, the state before each recurrent product) and everything else in float32, run
one sequence at a time (lengths, reverse by flipping that sequence). Gradients: autograd
through the oracle with the rounding taken as the identity (straight-through), which is the
gradient the kernels' float32 BPTT computes.

Tolerances come from bf16's 8-bit mantissa, not float32's: the kernel and the oracle sum
in different orders (float32 rounding, ~1e-7), so a state value that lies that close to a
bf16 rounding boundary rounds the other way in one of them, a change of one bf16 unit
(2^-8 relative) in one GEMM operand. Each comparison allows a few such units of the
tensor's scale, and a second check shows the rounding is really there: on average the
kernel is many times closer to the oracle than to the same recurrence without rounding.
Both bf16 GEMMs are tested on every CPU: MKL's ``cblas_gemm_bf16bf16f32`` (native on
AVX512-bf16/AMX, MKL's own emulation elsewhere) and rnnkit's emulation; rnnkit's AMX kernel
(the per-step products on tiles, ``csrc/amx.h``) where the CPU has AMX-BF16.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnkit
from rnnkit.cells import ElmanCell, GRUCell, IndRNNCell, LSTMCell, NASCell, UGRNNCell
from rnnkit.engine import compiled, explain
from rnnkit.engine.compiled import _build

pytestmark = pytest.mark.skipif(not compiled.available()[0],
                                reason=f"compiled kernels unavailable: "
                                       f"{compiled.available()[1]}")

#: One bf16 unit (2^-8, the spacing of bf16 values just below 1, relative).
BF16_UNIT = 2.0 ** -8


@pytest.fixture(autouse=True)
def _quiet_bf16_notice():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "rnnkit: precision='bf16'", RuntimeWarning)
        yield


@pytest.fixture(params=["emulated", "mkl", "amx"])
def gemm(request):
    """Each test runs with every bf16 GEMM (MKL's only where torch exports it, AMX only on a
    CPU with AMX-BF16)."""
    ext, _ = _build.load()
    if request.param in ("mkl", "amx") and not ext.has_mkl_bf16_gemm():
        pytest.skip("this torch does not export MKL's cblas_gemm_bf16bf16f32")
    if request.param == "amx" and not ext.has_amx():
        pytest.skip("this CPU has no AMX-BF16 (or Linux did not grant its tile state)")
    previous = ext.set_bf16_gemm(request.param)
    yield request.param
    ext.set_bf16_gemm(previous)


def _st(t: torch.Tensor, rounding: bool) -> torch.Tensor:
    """``t`` rounded to bfloat16 (nearest even) in value, identity in gradient."""
    if not rounding:
        return t
    return t + (t.to(torch.bfloat16).to(t.dtype) - t).detach()


# ----------------------------------------------------------------------------- oracle steps
# Each takes the projected input xp (B, X) and the state, and `r` (the rounding, or the
# identity for the float32 twin); GEMM operands pass through r, nothing else does.

def _lstm_step(cell, xp, state, r):
    h, c = state  # (B, H_out), (B, H)
    gates = xp + r(h) @ r(cell.weight_hh).t()  # (B, 4H)
    a_i, a_f, a_g, a_o = gates.chunk(4, 1)
    if cell.peepholes:
        a_i = a_i + cell.weight_ci * c
        a_f = a_f + cell.weight_cf * c
    c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
    if cell.peepholes:
        a_o = a_o + cell.weight_co * c
    m = torch.sigmoid(a_o) * torch.tanh(c)  # (B, H)
    h = r(m) @ r(cell.weight_hr).t() if cell.proj_size else m
    return h, (h, c)


def _gru_step(cell, xp, h, r):
    H = cell.hidden_size
    i_r, i_z, i_n = xp.chunk(3, 1)
    if cell.reset_after:
        gh = r(h) @ r(cell.weight_hh).t() + cell.bias_hh  # (B, 3H)
        h_r, h_z, h_n = gh.chunk(3, 1)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
    else:
        w_rz, w_n = cell.weight_hh[:2 * H], cell.weight_hh[2 * H:]
        h_r, h_z = (r(h) @ r(w_rz).t() + cell.bias_hh[:2 * H]).chunk(2, 1)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + r(reset * h) @ r(w_n).t() + cell.bias_hh[2 * H:])
    h = (1 - update) * candidate + update * h
    return h, h


def _elman_step(cell, xp, h, r):
    pre = xp + r(h) @ r(cell.weight_hh).t()
    h = torch.relu(pre) if cell.nonlinearity == "relu" else torch.tanh(pre)
    return h, h


def _ugrnn_step(cell, xp, h, r):
    g_pre, c_pre = (xp + r(h) @ r(cell.weight_hh).t()).chunk(2, 1)
    gate = torch.sigmoid(g_pre + cell.forget_bias)
    h = gate * h + (1 - gate) * torch.tanh(c_pre)
    return h, h


def _nas_step(cell, xp, state, r):
    h, c = state
    u = xp.chunk(8, 1)
    v = (r(h) @ r(cell.weight_hh).t() + cell.bias_hh).chunk(8, 1)
    sigmoid, relu, tanh = torch.sigmoid, torch.relu, torch.tanh
    l0, l1, l2 = sigmoid(u[0] + v[0]), relu(u[1] + v[1]), sigmoid(u[2] + v[2])
    l3, l4, l5 = relu(u[3] * v[3]), tanh(u[4] + v[4]), sigmoid(u[5] + v[5])
    l6, l7 = tanh(u[6] + v[6]), sigmoid(u[7] + v[7])
    m0, m1 = tanh(tanh(l0 * l1) + c), tanh(l2 + l3)
    m2, m3 = tanh(l4 * l5), sigmoid(l6 + l7)
    c = m0 * m1
    h = tanh(c * tanh(m2 + m3))
    if cell.proj_size:
        h = r(h) @ r(cell.weight_hr).t()
    return h, (h, c)


def _projection(cell, x, r):
    """The hoisted input projection: the GEMM on rounded operands, biases in float32."""
    xp = r(x) @ r(cell.weight_ih).t()  # (T, B, X)
    if isinstance(cell, GRUCell):
        return xp + cell.bias_ih
    if isinstance(cell, UGRNNCell):
        return xp + cell.bias_ih
    if isinstance(cell, NASCell):
        return xp  # u: no bias (b enters the recurrent branches)
    return xp + cell.bias_ih + cell.bias_hh  # LSTM, Elman: both biases before the loop


_STEPS = {LSTMCell: _lstm_step, GRUCell: _gru_step, ElmanCell: _elman_step,
          UGRNNCell: _ugrnn_step, NASCell: _nas_step}


def oracle(cell, x, state, lengths, reverse, rounding=True):
    """(outputs (T, B, H_out), final state) of the bf16 recurrence, one sequence at a time."""
    r = lambda t: _st(t, rounding)  # noqa: E731
    step = _STEPS[type(cell)]
    T, B, _ = x.shape
    xp = _projection(cell, x, r)
    outs = []
    finals = []
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        s = tuple(part[b:b + 1] for part in state) if isinstance(state, tuple) else state[b:b + 1]
        rows = []
        order = range(n - 1, -1, -1) if reverse else range(n)
        for t in order:
            y, s = step(cell, xp[t, b:b + 1], s, r)
            rows.append((t, y))
        out = x.new_zeros(T, 1, cell.output_size)
        for t, y in rows:
            out = out.index_put((torch.tensor([t]),), y[None])
        outs.append(out)
        finals.append(s)
    output = torch.cat(outs, 1)
    if isinstance(state, tuple):
        final = tuple(torch.cat([f[i] for f in finals], 0) for i in range(len(state)))
    else:
        final = torch.cat(finals, 0)
    return output, final


def _leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def _initial(cell, B, generator):
    sizes = cell.state_size if isinstance(cell.state_size, tuple) else (cell.state_size,)
    parts = tuple((0.5 * torch.randn(B, s, generator=generator)).requires_grad_() for s in sizes)
    return parts if len(parts) > 1 else parts[0]


CELLS = {
    "lstm": lambda i, h: LSTMCell(i, h),
    "lstm-peepholes-proj": lambda i, h: LSTMCell(i, h, peepholes=True,
                                                 proj_size=max(1, h // 2)),
    "gru": lambda i, h: GRUCell(i, h),
    "gru-reset-before": lambda i, h: GRUCell(i, h, reset_after=False),
    "elman-tanh": lambda i, h: ElmanCell(i, h),
    "elman-relu": lambda i, h: ElmanCell(i, h, nonlinearity="relu"),
    "ugrnn": lambda i, h: UGRNNCell(i, h),
    "nas": lambda i, h: NASCell(i, h),
    "nas-proj": lambda i, h: NASCell(i, h, proj_size=max(1, h // 2)),
}


def _close(actual, oracle_value, twin, units=4.0):
    """Within `units` bf16 units of the scale, and (on average) much closer to the bf16
    oracle than to the float32 twin (when the rounding moved the twin at all)."""
    actual, oracle_value, twin = actual.detach(), oracle_value.detach(), twin.detach()
    scale = max(1.0, float(oracle_value.abs().max()))
    torch.testing.assert_close(actual, oracle_value, rtol=0, atol=units * BF16_UNIT * scale)
    rounding_effect = float((twin - oracle_value).abs().mean())
    if rounding_effect > 1e-6 * scale:
        assert float((actual - oracle_value).abs().mean()) < 0.2 * rounding_effect


def _check(name, H_in, H, T, lengths, reverse, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cell = CELLS[name](H_in, H)
    B = 3 if lengths is None else len(lengths)
    x = torch.randn(T, B, H_in, generator=generator, requires_grad=True)
    state = _initial(cell, B, generator)
    lengths_t = None if lengths is None else torch.tensor(lengths)
    out, final = compiled.run_recurrence(cell, x, state, lengths=lengths_t, reverse=reverse,
                                         precision="bf16")
    assert out.dtype == torch.float32
    want_out, want_final = oracle(cell, x, state, lengths_t, reverse)
    twin_out, twin_final = oracle(cell, x, state, lengths_t, reverse, rounding=False)
    _close(out, want_out, twin_out)
    for a, b, c in zip(_leaves(final), _leaves(want_final), _leaves(twin_final), strict=True):
        _close(a, b, c)
    if lengths is not None:  # padded steps exactly zero
        for b_, n in enumerate(lengths):
            assert not out[n:, b_].any()
    # gradients: float32 against the rounded forward operands (straight-through)
    probe = torch.randn(out.shape, generator=generator)
    probes = [torch.randn(p.shape, generator=generator) for p in _leaves(final)]
    params = [p for p in cell.parameters()]
    wrt = [x, *_leaves(state), *params]

    def loss(o, f):
        return (o * probe).sum() + sum((a * p).sum() for a, p in zip(_leaves(f), probes,
                                                                       strict=True))

    grads = torch.autograd.grad(loss(out, final), wrt, allow_unused=True)
    want = torch.autograd.grad(loss(want_out, want_final), wrt, allow_unused=True)
    twin = torch.autograd.grad(loss(twin_out, twin_final), wrt, allow_unused=True)
    for g, w, t in zip(grads, want, twin, strict=True):
        if w is None:
            assert g is None or not g.any()
            continue
        assert g is not None and g.dtype == torch.float32
        _close(g, w, t, units=8.0)
    # inference (nothing saved) gives the training forward's bits
    with torch.no_grad():
        out_inf, final_inf = compiled.run_recurrence(cell, x, state, lengths=lengths_t,
                                                     reverse=reverse, precision="bf16")
    torch.testing.assert_close(out_inf, out.detach(), rtol=0, atol=0)
    for a, b in zip(_leaves(final_inf), _leaves(final), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [7, 4, 1, 7]], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CELLS))
def test_bf16_kernels_equal_the_rounded_float32_recurrence(name, lengths, reverse, gemm):
    _check(name, 5, 6, 7, lengths, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CELLS))
def test_bf16_tiny_shapes_hidden_batch_and_steps_of_one(name, reverse, gemm):
    hidden = 2 if name.endswith("-proj") else 1  # proj_size 1 < hidden_size 2
    _check(name, 1, hidden, 1, [1], reverse)  # H_in = H (or H_out) = B = T = 1
    _check(name, 1, hidden, 3, [3], reverse, seed=1)


def test_bf16_wider_shapes_cross_the_threaded_gemm(gemm):
    """A step GEMM above the threading threshold (column slices on 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check("lstm", 16, 128, 3, [3, 2, 3, 1], False)
    finally:
        torch.set_num_threads(threads)


def test_bf16_is_not_float32_and_float32_is_untouched():
    torch.manual_seed(3)
    cell = GRUCell(4, 8)
    x = torch.randn(6, 2, 4)
    with torch.no_grad():
        fp32, _ = compiled.run_recurrence(cell, x, None)
        bf16, _ = compiled.run_recurrence(cell, x, None, precision="bf16")
        loop, _ = rnnkit.engine.dispatch.run_recurrence(cell, x, cell.initial_state(2),
                                                        engine="loop")
    torch.testing.assert_close(fp32, loop, rtol=1e-5, atol=1e-6)
    assert float((bf16 - fp32).abs().max()) > 1e-5  # it did round
    assert float((bf16 - fp32).abs().max()) < 3e-2


def test_bf16_refusals_are_clear_errors():
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"in bf16: bf16 GEMMs need float32 parameters, "
                                         r"GRUCell's are torch.float64"):
        compiled.run_recurrence(GRUCell(4, 8).double(), x, None, precision="bf16")
    with pytest.raises(ValueError, match=r"IndRNNCell's compiled kernel has no bf16 GEMMs"):
        compiled.run_recurrence(IndRNNCell(4, 8), x.float(), None, precision="bf16")
    with pytest.raises(ValueError, match=r"precision must be 'fp32' or 'bf16', got 'fp16'"):
        compiled.run_recurrence(GRUCell(4, 8), x.float(), None, precision="fp16")


def test_bf16_double_backward_is_refused_with_the_reason():
    cell = ElmanCell(3, 4)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = compiled.run_recurrence(cell, x, None, precision="bf16")
    with pytest.raises(RuntimeError, match=r"gradients of gradients .* not available for the "
                                           r"bf16 GEMMs; run this call with precision='fp32'"):
        torch.autograd.grad(out.sum(), [x], create_graph=True)
    # first-order gradients of the same call are fine
    out, _ = compiled.run_recurrence(cell, x, None, precision="bf16")
    (g,) = torch.autograd.grad(out.sum(), [x])
    assert g.shape == x.shape and g.abs().sum() > 0


def test_bf16_gemm_modes_are_named_and_checked():
    ext, _ = _build.load()
    assert ext.bf16_gemm() in ("amx", "mkl", "emulated")
    with pytest.raises(RuntimeError, match=r"must be 'amx', 'mkl' or 'emulated', got 'avx'"):
        ext.set_bf16_gemm("avx")
    previous = ext.set_bf16_gemm("emulated")
    ext.set_bf16_gemm(previous)
    # the default: AMX where usable, else MKL's GEMM where the CPU has bf16 arithmetic
    if ext.has_amx() and ext.has_mkl_bf16_gemm():
        assert previous == "amx"
    elif not ext.cpu_has_native_bf16():
        assert previous == "emulated"
    if not ext.has_amx():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ext.set_bf16_gemm("amx")


@pytest.mark.skipif(not _build.load()[0] or not _build.load()[0].has_amx(),
                    reason="this CPU has no AMX-BF16 (or Linux did not grant its tile state)")
def test_amx_gemm_is_the_float32_product_of_rounded_operands():
    """The tiles against exact products of the rounded operands: sizes off every tile edge
    (1, 15, 17, 33 rows; K not a multiple of 32; N not of 16), beta 0 and 1, the weight
    row-major, transposed and strided (the three ways the packing reads it), and NaN-free
    output where K's padding meets it."""
    ext, _ = _build.load()
    gen = torch.Generator().manual_seed(3)
    for M, K, N in [(1, 1, 1), (3, 5, 7), (15, 31, 17), (16, 32, 16), (17, 33, 33),
                    (33, 70, 65), (64, 256, 96), (2, 0, 5)]:
        weights = {"row-major": torch.randn(K, N, generator=gen),
                   "transposed": torch.randn(N, K, generator=gen).t(),
                   "strided": torch.randn(K, 2 * N, generator=gen)[:, ::2]}
        for layout, w in weights.items():
            for beta in (0.0, 1.0):
                a = torch.randn(M, K, generator=gen)
                c0 = torch.full((M, N), float("nan")) if beta == 0 else torch.randn(M, N)
                got = ext.amx_gemm(a, w, c0.clone(), beta)
                want = a.bfloat16().double() @ w.bfloat16().double()
                if beta:
                    want = want + c0.double()
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5,
                                           msg=f"M={M} K={K} N={N} {layout} beta={beta}")


@pytest.mark.parametrize("gemm_mode", ["emulated", "mkl", "amx"])
def test_bf16_linear_is_the_float32_product_of_rounded_operands(gemm_mode):
    ext, _ = _build.load()
    if gemm_mode in ("mkl", "amx") and not ext.has_mkl_bf16_gemm():
        pytest.skip("no MKL bf16 GEMM")
    if gemm_mode == "amx" and not ext.has_amx():
        pytest.skip("no AMX-BF16")
    previous = ext.set_bf16_gemm(gemm_mode)
    try:
        for M, K, N in [(1, 1, 1), (7, 5, 3), (33, 64, 96)]:
            x, w = torch.randn(M, K), torch.randn(N, K)
            got = ext.bf16_linear(x, w)
            want = x.bfloat16().double() @ w.bfloat16().double().t()  # exact products
            torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    finally:
        ext.set_bf16_gemm(previous)


# ----------------------------------------------------------------------------- the drivers

def test_recurrence_precision_bf16_runs_the_compiled_kernels_in_float32_state():
    torch.manual_seed(4)
    cell = LSTMCell(4, 8, peepholes=True)
    layer = rnnkit.Recurrence(cell, precision="bf16", go_backwards=True)
    x = torch.randn(6, 3, 4)
    text = explain(layer, x)
    assert "LSTMCell -> compiled" in text and "precision bf16: bf16 GEMMs" in text
    assert "precision: bf16 GEMMs on the compiled kernels" in text
    if not _build.load()[0].cpu_has_native_bf16():
        assert "emulated on this CPU (no AVX512-bf16/AMX)" in text
    lengths = torch.tensor([6, 2, 4])
    out, (h, c) = layer(x, lengths=lengths)
    state = (torch.zeros(3, 8), torch.zeros(3, 8))
    want, (want_h, want_c) = oracle(cell, x, state, lengths, True)
    assert out.dtype == h.dtype == torch.float32
    scale = float(want.detach().abs().max())
    for a, b in [(out, want), (h, want_h), (c, want_c)]:
        torch.testing.assert_close(a, b, rtol=0, atol=4 * BF16_UNIT * max(1.0, scale))
    # the context gives the argument's bits
    with rnnkit.engine.precision("bf16"):
        again, _ = rnnkit.Recurrence(cell, go_backwards=True)(x, lengths=lengths)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_recurrence_bf16_on_a_cell_without_bf16_kernels_casts_the_cell_as_before():
    layer = rnnkit.Recurrence(IndRNNCell(4, 8), precision="bf16")
    text = explain(layer, torch.randn(5, 2, 4))
    assert "precision: bf16 (inputs, state and the cell's weights cast to bfloat16" in text


def test_drop_in_layer_path_runs_bf16_gemms_and_says_so():
    torch.manual_seed(5)
    lstm = rnnkit.LSTM(4, 8, num_layers=2, bidirectional=True, peepholes=True,
                       precision="bf16")
    plain = rnnkit.LSTM(4, 8, num_layers=2, bidirectional=True, peepholes=True)
    plain.load_state_dict(lstm.state_dict())
    x = torch.randn(5, 2, 4)
    text = explain(lstm, x)
    assert "precision: bf16 GEMMs on the compiled kernels for every layer" in text
    assert text.count("precision bf16: bf16 GEMMs") == 4
    out, _ = lstm(x)
    ref, _ = plain(x)
    assert out.dtype == torch.float32
    assert 0 < float((out - ref).detach().abs().max()) < 3e-2
    # each layer and direction equals the bf16 kernel run on its cell
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())


def test_drop_in_layer_path_float64_keeps_its_dtype_and_says_why():
    lstm = rnnkit.LSTM(4, 8, peepholes=True, precision="bf16").double()
    text = explain(lstm, torch.randn(5, 2, 4, dtype=torch.float64))
    assert "no bf16 GEMMs for this cell (bf16 GEMMs need float32 parameters" in text
    assert "the compiled kernels run 0 of 1 cell(s) with bf16 GEMMs" in text


def test_emulated_bf16_gemms_warn_once_per_process(monkeypatch):
    from rnnkit.engine import fused

    ext, _ = _build.load()
    monkeypatch.setattr(fused, "_bf16_notice_given", False)
    monkeypatch.setattr(fused, "_cpu_has_bf16", lambda: False)
    previous = ext.set_bf16_gemm("emulated")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                compiled.run_recurrence(ElmanCell(3, 4), torch.randn(2, 2, 3), None,
                                        precision="bf16")
    finally:
        ext.set_bf16_gemm(previous)
    notices = [w for w in caught if "compiled kernels emulate their bf16 GEMMs" in str(w.message)]
    assert len(notices) == 1 and notices[0].category is RuntimeWarning


def test_bf16_state_rounding_is_round_to_nearest_even_bit_for_bit(gemm):
    """With one input and one unit the GEMMs are single exact products, so the kernel's
    output is the rounded state itself: it must equal torch's bfloat16 conversion (round to
    nearest even) bit for bit, ties included."""
    cell = ElmanCell(1, 1, nonlinearity="relu")
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
        cell.weight_hh.fill_(1.0)
    generator = torch.Generator().manual_seed(7)
    random = torch.rand(2000, generator=generator) * 4
    exact = random.to(torch.bfloat16).to(torch.float32)
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 8)  # bf16 spacing
    ties = torch.cat([exact + ulp / 2, exact - ulp / 4, exact + 3 * ulp / 4])  # exact in fp32
    h0 = torch.cat([random, ties]).abs()[:, None]  # (B, 1)
    with torch.no_grad():
        out, _ = compiled.run_recurrence(cell, torch.zeros(1, h0.shape[0], 1), h0,
                                         precision="bf16")
    want = h0.to(torch.bfloat16).to(torch.float32)
    assert torch.equal(out[0], want)
