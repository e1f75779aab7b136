"""The compiled Elman kernel's loop for small hidden sizes (csrc/elman.cpp, H <= 32 on one
thread) and its register-tiled GEMM (csrc/small_gemm.h), against independent oracles:
torch.mm, torch.nn.RNN with copied weights (lengths, both directions, gradients),
gradcheck, and the step-loop template on the same call (H > 32, or threads that the
template's GEMM would use)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engine.compiled._functions import CellRecurrence, KernelCall

# ----------------------------------------------------------------------------- small GEMM

ODD = (1, 3, 17, 33)


def _strided(rows: int, cols: int, pad: int, dtype, generator) -> torch.Tensor:
    """A (rows, cols) view with contiguous rows and a row stride of cols + pad."""
    return torch.randn(rows, cols + pad, dtype=dtype, generator=generator)[:, :cols]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_gemm_equals_mm_on_odd_shapes(ext, dtype):
    g = torch.Generator().manual_seed(0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for M, N, K in itertools.product(ODD, ODD, ODD):
        for pad in (0, 5):
            a = _strided(M, K, pad, dtype, g)
            b = _strided(K, N, pad, dtype, g)
            c = _strided(M, N, pad, dtype, g)
            expected = a @ b
            c.fill_(float("nan"))  # beta = 0 never reads C
            ext.small_gemm(a, b, c, 0.0)
            torch.testing.assert_close(c, expected, **tol, msg=f"M={M} N={N} K={K} pad={pad}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_gemm_accumulates_and_reads_a_transposed_operand(ext, dtype):
    g = torch.Generator().manual_seed(1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for M, N, K in [(1, 1, 1), (3, 17, 33), (33, 3, 17), (17, 33, 3), (16, 16, 100)]:
        a = _strided(K, M, 3, dtype, g).t()  # (M, K) with row stride 1, column stride M + 3
        b = _strided(K, N, 2, dtype, g)
        c = _strided(M, N, 4, dtype, g)
        for beta in (1.0, 0.5):
            expected = a @ b + beta * c
            ext.small_gemm(a, b, c, beta)
            torch.testing.assert_close(c, expected, **tol, msg=f"M={M} N={N} K={K} b={beta}")


def test_small_gemm_writes_only_its_own_columns(ext):
    g = torch.Generator().manual_seed(2)
    buffer = torch.randn(17, 40, generator=g)
    before = buffer.clone()
    a, b = torch.randn(17, 5, generator=g), torch.randn(5, 33, generator=g)
    ext.small_gemm(a, b, buffer[:, 2:35], 0.0)
    torch.testing.assert_close(buffer[:, 2:35], a @ b, rtol=1e-5, atol=1e-5)
    assert torch.equal(buffer[:, :2], before[:, :2]) and torch.equal(buffer[:, 35:], before[:, 35:])


def test_small_gemm_refuses_bad_operands(ext):
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        ext.small_gemm(a, b, torch.empty(3, 4), 0.0)
    with pytest.raises(RuntimeError, match="rows must be contiguous"):
        ext.small_gemm(a, torch.randn(5, 4).t(), torch.empty(3, 5), 0.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        ext.small_gemm(a.double(), b, torch.empty(3, 5), 0.0)


# ----------------------------------------------------------------------------- Elman vs nn.RNN


def _pair(H_in, H, relu, bidirectional, dtype):
    torch.manual_seed(0)
    kwargs = dict(nonlinearity="relu" if relu else "tanh", bidirectional=bidirectional,
                  dtype=dtype)
    theirs = nn.RNN(H_in, H, **kwargs)
    ours = rnnkit.RNN(H_in, H, engine="compiled", **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _run(module, x, h0, lengths):
    """Outputs (T, B, D*H) zero at padded steps, h_n, and every gradient of a weighted loss."""
    xi = x.clone().requires_grad_(True)
    hi = h0.clone().requires_grad_(True)
    if lengths is not None and isinstance(module, nn.RNN) and not isinstance(module, rnnkit.RNN):
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        out, h_n = module(packed, hi)
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    elif lengths is not None:
        out, h_n = module(xi, hi, lengths=lengths)
    else:
        out, h_n = module(xi, hi)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=x.dtype).view_as(out)
    loss = (out * weights).sum() + (h_n * h_n).sum()
    grads = torch.autograd.grad(loss, [xi, hi, *module.parameters()])
    return [out, h_n, *grads]


CASES = [  # (T, B, H_in, H): T=1, batch 1, hidden 1, the shape, the threshold
    (1, 1, 1, 1), (1, 4, 3, 16), (5, 1, 2, 3), (7, 5, 4, 1), (6, 3, 5, 17), (4, 6, 3, 32),
    (28, 100, 28, 16), (5, 3, 2, 33),
]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T,B,H_in,H", CASES)
@pytest.mark.parametrize("ragged", [False, True])
def test_small_elman_equals_torch_rnn_float64(ext, T, B, H_in, H, relu, bidirectional, ragged):
    theirs, ours = _pair(H_in, H, relu, bidirectional, torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, H_in, dtype=torch.float64, generator=g)
    h0 = torch.randn(2 if bidirectional else 1, B, H, dtype=torch.float64, generator=g)
    lengths = None
    if ragged:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
    for a, b in zip(_run(theirs, x, h0, lengths), _run(ours, x, h0, lengths), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("T,B,H_in,H", [(28, 100, 28, 16), (9, 7, 5, 3), (3, 2, 4, 32)])
def test_small_elman_equals_torch_rnn_float32(ext, T, B, H_in, H, relu):
    theirs, ours = _pair(H_in, H, relu, True, torch.float32)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, H_in, generator=g)
    h0 = torch.randn(2, B, H, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    for a, b in zip(_run(theirs, x, h0, lengths), _run(ours, x, h0, lengths), strict=True):
        scale = max(1.0, float(a.detach().abs().max()))
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_small_elman_gradcheck(ext, relu, reverse):
    """The kernel's own gradients (d xp, d h0, d W_hh) by finite differences, with lengths."""
    torch.manual_seed(5)
    T, B, H = 4, 3, 5
    xp = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, dtype=torch.float64) * 0.4).requires_grad_(True)
    lengths = torch.tensor([4, 2, 3])
    call = KernelCall(family="elman", names=("weight_hh",), flags=(("relu", relu),),
                      numbers=(), reverse=reverse, output_size=H, step=None)
    assert torch.autograd.gradcheck(
        lambda xp, h0, w: CellRecurrence.apply(ext, call, lengths, xp, h0, w), (xp, h0, w))


def test_small_and_template_loops_agree_on_the_same_call(ext):
    """The template runs when the step product reaches 2 MFLOP on several threads: the same
    call on 1 and 2 threads takes the two loops."""
    torch.manual_seed(6)
    T, B, H = 3, 1000, 32
    tensors = {"xp": torch.randn(T, B, H, dtype=torch.float64),
               "state": torch.randn(B, H, dtype=torch.float64),
               "weight_hh": torch.randn(H, H, dtype=torch.float64) * 0.2,
               "lengths": torch.randint(1, T + 1, (B,))}
    flags = {"relu": False, "reverse": True, "training": True}
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, final, states, saved = ext.forward("elman", tensors, {}, flags)
            grads = ext.backward(
                "elman", {"weight_hh": tensors["weight_hh"], "lengths": tensors["lengths"],
                          "states": states, "saved": saved, "grad_out": torch.ones_like(out),
                          "grad_state": torch.ones_like(final)},
                {"steps": float(T)}, {"relu": False, "reverse": True})
            results.append([out, final, states, grads["xp"], grads["state"],
                            grads["weight_hh"]])
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_linear_and_its_gradients_equal_torch(ext, dtype):
    """The projection of a narrow layer (ProjectedRecurrence) on strided operands: x W^T + b,
    d W = d^T x and the bias's column sum against torch."""
    g = torch.Generator().manual_seed(7)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for M, N, K in [(1, 1, 1), (3, 17, 33), (33, 3, 17), (2800, 16, 28), (0, 4, 3)]:
        x = torch.randn(K + 2, M, dtype=dtype, generator=g)[:K].t()  # (M, K), column-major
        flat = torch.randn(N * K + 2 * N, dtype=dtype, generator=g)
        w = flat[: N * K].view(N, K)
        bias = flat[N * K:][::2]  # strided
        torch.testing.assert_close(ext.small_linear(x, w, bias), x @ w.t() + bias, **tol)
        torch.testing.assert_close(ext.small_linear(x, w, w.new_empty(0)), x @ w.t(), **tol)
        d = torch.randn(M, N, dtype=dtype, generator=g)
        dw, db = ext.small_linear_grads(x, d, True, True)
        # sums over M rows: against float64, to a tolerance relative to the sum of |terms|
        wide = d.double().t() @ x.double()
        scale = float((d.double().abs().t() @ x.double().abs()).max()) if M else 1.0
        bound = (1e-6 if dtype == torch.float32 else 1e-14) * scale
        torch.testing.assert_close(dw.double(), wide, rtol=0, atol=bound)
        torch.testing.assert_close(db.double(), d.double().sum(0), rtol=0, atol=bound)
        assert ext.small_linear_grads(x, d, False, True)[0] is None
        assert ext.small_linear_grads(x, d, True, False)[1] is None
    with pytest.raises(RuntimeError, match=r"x \(\.\.\., K\) and weight \(N, K\)"):
        ext.small_linear(torch.randn(3, 4, dtype=dtype), torch.randn(2, 5, dtype=dtype),
                         torch.empty(0, dtype=dtype))


@pytest.mark.parametrize("H", [1, 5, 16])
def test_small_backward_reads_strided_and_expanded_output_gradients(ext, H):
    """A sum loss hands the kernel an expanded (all strides 0) output gradient, a batch-first
    caller a transposed one: the same gradients as from their contiguous copies."""
    torch.manual_seed(8)
    T, B = 4, 3
    tensors = {"xp": torch.randn(T, B, H, dtype=torch.float64),
               "state": torch.randn(B, H, dtype=torch.float64),
               "weight_hh": torch.randn(H, H, dtype=torch.float64) * 0.3,
               "lengths": torch.tensor([4, 2, 3])}
    out, final, states, saved = ext.forward("elman", tensors, {},
                                            {"relu": True, "reverse": False, "training": True})
    expanded = torch.ones(1, 1, 1, dtype=torch.float64).expand(T, B, H)
    per_row = torch.randn(T, B, 1, dtype=torch.float64).expand(T, B, H)
    transposed = torch.randn(B, T, H, dtype=torch.float64).transpose(0, 1)
    strided = torch.randn(T, B, H, 2, dtype=torch.float64)[..., 0]  # stride(2) == 2
    for grad in (expanded, per_row, transposed, strided):
        results = []
        for given in (grad, grad.contiguous()):
            grads = ext.backward(
                "elman", {"weight_hh": tensors["weight_hh"], "lengths": tensors["lengths"],
                          "states": states, "saved": saved, "grad_out": given},
                {"steps": float(T)}, {"relu": True, "reverse": False})
            results.append([grads["xp"], grads["state"], grads["weight_hh"]])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_linear_reads_a_batch_first_view_where_it_lies(ext, dtype):
    """(T, B, K) inputs with any strides (a batch-first caller's transposed view, a strided
    feature axis) give what their time-major contiguous copy gives, forward and backward."""
    g = torch.Generator().manual_seed(9)
    for T, B, K, N in [(28, 100, 28, 16), (3, 300, 5, 7), (1, 1, 1, 1), (4, 0, 3, 2)]:
        w = torch.randn(N, K, dtype=dtype, generator=g)
        bias = torch.randn(N, dtype=dtype, generator=g)
        batch_first = torch.randn(B, T, K, dtype=dtype, generator=g)
        wide = torch.randn(T, B, 2 * K, dtype=dtype, generator=g)
        for x in (batch_first.transpose(0, 1), wide[..., ::2]):
            copy = x.contiguous()
            assert torch.equal(ext.small_linear(x, w, bias), ext.small_linear(copy, w, bias))
            torch.testing.assert_close(ext.small_linear(x, w, bias), copy @ w.t() + bias,
                                       rtol=1e-5, atol=1e-5)
            d = torch.randn(T * B, N, dtype=dtype, generator=g)
            dw, db = ext.small_linear_grads(x, d, True, True)
            flat = copy.view(T * B, K).double()
            scale = float((d.double().abs().t() @ flat.abs()).max()) if T * B else 1.0
            bound = (1e-6 if dtype == torch.float32 else 1e-14) * scale
            torch.testing.assert_close(dw.double(), d.double().t() @ flat, rtol=0, atol=bound)
            torch.testing.assert_close(db.double(), d.double().sum(0), rtol=0, atol=bound)
    with pytest.raises(RuntimeError, match=r"grad \(M, N\)"):
        ext.small_linear_grads(torch.randn(2, 3, 4, dtype=dtype), torch.randn(5, 2, dtype=dtype),
                               True, True)


def test_batch_first_drop_in_equals_torch_rnn(ext):
    torch.manual_seed(10)
    theirs = nn.RNN(28, 16, nonlinearity="relu", batch_first=True)
    ours = rnnkit.RNN(28, 16, nonlinearity="relu", batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(100, 28, 28)
    for _ in range(2):  # the second call runs the remembered call
        results = []
        for module in (theirs, ours):
            xi = x.clone().requires_grad_(True)
            out, h_n = module(xi)
            loss = (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum() + h_n.sum()
            results.append([out, h_n, *torch.autograd.grad(loss, [xi, *module.parameters()])])
        for a, b in zip(*results, strict=True):
            scale = max(1.0, float(a.detach().abs().max()))
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * scale)


# ------------------------------------------------- the projection inside the steps (fused)


@pytest.fixture
def fused_calls(ext, monkeypatch):
    """Whether each ProjectedRecurrence call ran ext.elman_projected_forward."""
    from rnnkit.engine.compiled import _functions

    seen: list[bool] = []
    original = _functions._projected_elman

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result is not None)
        return result

    monkeypatch.setattr(_functions, "_projected_elman", spy)
    return seen


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("T,B,H_in,H", [(28, 100, 28, 16), (3, 2, 33, 32), (1, 1, 1, 1)])
def test_fused_projection_equals_torch_rnn_float32(ext, fused_calls, T, B, H_in, H, relu,
                                                   batch_first):
    """Every row running all T steps (no lengths, or lengths all T): one C++ pass per step
    for x W_ih^T + h W_hh^T, against nn.RNN with copied weights, both directions, float32."""
    theirs, ours = _pair(H_in, H, relu, True, torch.float32)
    theirs.batch_first = ours.batch_first = batch_first
    g = torch.Generator().manual_seed(8)
    shape = (B, T, H_in) if batch_first else (T, B, H_in)
    x = torch.randn(*shape, generator=g)
    h0 = torch.randn(2, B, H, generator=g)
    full = torch.full((B,), T)
    expected = _run(theirs, x, h0, None)
    for lengths in (None, full):
        fused_calls.clear()
        got = _run(ours, x, h0, lengths)
        assert fused_calls == [True, True]
        for a, b in zip(expected, got, strict=True):
            scale = max(1.0, float(a.detach().abs().max()))
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * scale)


def test_fused_projection_declines_what_it_does_not_cover(ext):
    """Rows shorter than T, a hidden size past the small path, or several threads on a
    product worth them: [] (the caller projects first, then runs the recurrence)."""
    T, B, I, H = 4, 3, 2, 5
    x, w_ih, w_hh = torch.randn(T, B, I), torch.randn(H, I), torch.randn(H, H)
    h0, none = torch.zeros(B, H), torch.empty(0)
    flags = dict(relu=False, reverse=False, training=True)
    assert ext.elman_projected_forward(x, w_ih, none, none, w_hh, h0, torch.tensor([4, 2, 4]),
                                       **flags) == []
    assert len(ext.elman_projected_forward(x, w_ih, none, none, w_hh, h0,
                                           torch.tensor([4, 4, 4]), **flags)) == 3
    wide = torch.randn(33, 33)
    assert ext.elman_projected_forward(x, torch.randn(33, I), none, none, wide,
                                       torch.zeros(B, 33), none, **flags) == []
    with pytest.raises(RuntimeError, match="weight_ih has shape"):
        ext.elman_projected_forward(x, torch.randn(H, I + 1), none, none, w_hh, h0, none,
                                    **flags)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_projection_gradcheck(ext, relu, reverse):
    """Every gradient of the fused node (x, W_ih, both biases, h0, W_hh) by finite
    differences, through ProjectedRecurrence as the drop-ins call it; x read as a
    batch-first view."""
    from rnnkit.engine.compiled._functions import ProjectedRecurrence

    torch.manual_seed(6)
    T, B, I, H = 3, 4, 3, 5
    dd = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, T, I, **dd)
    w = (torch.randn(H, I, dtype=torch.float64) * 0.5).requires_grad_(True)
    b1, b2, h0 = torch.randn(H, **dd), torch.randn(H, **dd), torch.randn(B, H, **dd)
    w_hh = (torch.randn(H, H, dtype=torch.float64) * 0.4).requires_grad_(True)
    call = KernelCall(family="elman", names=("weight_hh",), flags=(("relu", relu),),
                      numbers=(), reverse=reverse, output_size=H, step=None)
    lengths = torch.empty(0, dtype=torch.int64)

    def node(x, w, b1, b2, h0, w_hh):
        return ProjectedRecurrence.apply(ext, call, lengths, x.transpose(0, 1), w, b1, b2, h0,
                                         w_hh)

    assert torch.autograd.gradcheck(node, (x, w, b1, b2, h0, w_hh))


@pytest.mark.parametrize("uses", ["outputs", "final state", "both"])
def test_fused_projection_with_frozen_parameters_and_one_gradient(ext, fused_calls, uses):
    """Keras's SimpleRNN as issue 13 row 2 trains it (the second bias frozen, x without
    gradient): only the asked-for gradients, each equal to nn.RNN's; a loss on the outputs
    alone, on h_n alone (the kernel receives no output gradient), or on both."""
    theirs, ours = _pair(6, 4, True, False, torch.float64)
    for module in (theirs, ours):
        module.bias_hh_l0.requires_grad_(False)
    x = torch.randn(5, 3, 6, dtype=torch.float64)

    def loss(module):
        out, h_n = module(x)
        parts = {"outputs": (out * out).sum(), "final state": h_n.sum() * 2}
        return sum(parts.values()) if uses == "both" else parts[uses]

    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    expected = torch.autograd.grad(loss(theirs), params(theirs))
    fused_calls.clear()
    got = torch.autograd.grad(loss(ours), params(ours))
    assert fused_calls == [True]
    assert ours.bias_hh_l0.grad is None
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T,B,H_in,H", [(6, 3, 5, 4), (1, 1, 1, 1), (2, 3, 4, 32)])
def test_remembered_call_runs_the_cpp_node_and_its_gradients_of_gradients(
        ext, T, B, H_in, H, relu, bidirectional):
    """The second plain call of a drop-in (remembered) builds the C++ autograd node
    (csrc/elman_node.cpp), not the Python Function; gradients, gradients of gradients
    (create_graph=True calls back into Python) and a vmapped jacobian equal nn.RNN's, and a
    second backward through a freed graph is refused as torch refuses it."""
    theirs, ours = _pair(H_in, H, relu, bidirectional, torch.float64)
    x = torch.randn(T, B, H_in, dtype=torch.float64, requires_grad=True)
    ours(x)  # the first call decides and remembers
    out, h_n = ours(x)
    nodes = [out.grad_fn] if not bidirectional else [f for f, _ in out.grad_fn.next_functions]
    assert all("ElmanProjected" in node.name() for node in nodes)  # the C++ node
    out_ref, h_ref = theirs(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    params, params_ref = list(ours.parameters()), list(theirs.parameters())
    g = torch.autograd.grad(out.sin().sum() + h_n.sum(), [x, *params], create_graph=True)
    g_ref = torch.autograd.grad(out_ref.sin().sum() + h_ref.sum(), [x, *params_ref],
                                create_graph=True)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    gg = torch.autograd.grad(g[0].pow(2).sum(), params)
    gg_ref = torch.autograd.grad(g_ref[0].pow(2).sum(), params_ref)
    for a, b in zip(gg, gg_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: ours(v)[0], x, vectorize=True)
    jac_ref = torch.autograd.functional.jacobian(lambda v: theirs(v)[0], x, vectorize=True)
    torch.testing.assert_close(jac, jac_ref, rtol=1e-10, atol=1e-10)
    out, _ = ours(x)
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


@pytest.mark.parametrize("bias", [True, False])
def test_remembered_call_compares_no_tensor_and_handles_absent_biases(ext, monkeypatch, bias):
    """The remembered call's Python is on every update's clock (issue 13 row 2): a
    ``None in [tensors]`` test there ran ``Tensor.__eq__`` twice per call (~70 us, a 15% loss
    at B=100 H=16). It compares by identity; without biases it passes empty ones to the C++
    node and still equals nn.RNN."""
    torch.manual_seed(0)
    theirs = nn.RNN(5, 4, nonlinearity="relu", bias=bias)
    ours = rnnkit.RNN(5, 4, nonlinearity="relu", bias=bias, engine="compiled")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 3, 5, requires_grad=True)
    ours(x)  # the first call decides and remembers
    compared = []
    original = torch.Tensor.__eq__
    monkeypatch.setattr(torch.Tensor, "__eq__",
                        lambda self, other: compared.append(other) or original(self, other))
    out, h_n = ours(x)
    monkeypatch.undo()
    assert compared == []
    assert "ElmanProjected" in out.grad_fn.name()
    out_ref, h_ref = theirs(x)
    torch.testing.assert_close(out, out_ref)
    g = torch.autograd.grad(out.sum() + h_n.sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad(out_ref.sum() + h_ref.sum(), [x, *theirs.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b)
