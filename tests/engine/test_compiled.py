"""Compiled recurrences (rnnkit.engine.compiled) against the cells run step by step.

Oracle: each sequence run on its own through the rnnkit cell's forward in a plain Python
loop (so lengths and reverse are handled by brute force), compared on outputs, final
states and the gradients of a random linear loss with respect to the inputs, the initial
state and every parameter. float64 to 1e-10, float32 to 1e-5; gradcheck in float64.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit.cells.elman import ElmanCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.ugrnn import UGRNNCell
from rnnkit.engine import compiled
from rnnkit.engine.compiled import _build


@pytest.fixture(scope="module", autouse=True)
def extension():
    # The first call compiles the extension (minutes, once per cache); later calls are free.
    ok, reason = compiled.available()
    if not ok:
        pytest.skip(f"compiled kernels unavailable: {reason}")
    return reason


T, B, I, H = 5, 3, 4, 11  # H = 11: one full float32/float64 vector plus a tail

LSTM_OPTIONS = {
    "plain": {},
    "nobias": {"bias": False},
    "peepholes": {"peepholes": True},
    "coupled": {"coupled_gates": True},
    "coupled_peepholes": {"coupled_gates": True, "peepholes": True},
    "proj": {"proj_size": 4},
    "clip": {"cell_clip": 0.3},
    "layer_norm": {"layer_norm": True},
    "everything": {"peepholes": True, "proj_size": 5, "cell_clip": 0.5, "layer_norm": True},
    "coupled_everything": {
        "coupled_gates": True,
        "peepholes": True,
        "proj_size": 3,
        "cell_clip": 0.4,
        "layer_norm": True,
    },
}
GRU_OPTIONS = {
    "reset_after": {},
    "reset_before": {"reset_after": False},
    "reset_after_nobias": {"bias": False},
    "reset_before_nobias": {"reset_after": False, "bias": False},
    "reset_after_layer_norm": {"layer_norm": True},
    "reset_before_layer_norm": {"reset_after": False, "layer_norm": True},
    "reset_before_layer_norm_nobias": {"reset_after": False, "layer_norm": True, "bias": False},
}
ELMAN_OPTIONS = {
    "tanh": {},
    "relu": {"nonlinearity": "relu"},
    "tanh_nobias": {"bias": False},
}
UGRNN_OPTIONS = {
    "plain": {},
    "nobias": {"bias": False},
    "forget_bias_0": {"forget_bias": 0.0},
}
CELLS = {"lstm": LSTMCell, "gru": GRUCell, "elman": ElmanCell, "ugrnn": UGRNNCell}


def make_cell(family: str, options: dict, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls = CELLS[family]
    cell = cls(I, H, dtype=dtype, **options)
    with torch.no_grad():
        # Make layer norms and biases non-trivial so their gradients are exercised.
        for name, p in cell.named_parameters():
            if "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return cell


def random_state(cell, batch: int, dtype: torch.dtype):
    if isinstance(cell.state_size, tuple):
        return tuple(torch.randn(batch, n, dtype=dtype) * 0.5 for n in cell.state_size)
    return torch.randn(batch, cell.state_size, dtype=dtype) * 0.5


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def loop_oracle(cell, x, state, lengths, reverse):
    """Every sequence on its own, step by step through cell.forward."""
    steps, batch, _ = x.shape
    zero = x.new_zeros(cell.output_size)
    rows = [[zero] * batch for _ in range(steps)]
    finals = []
    for b in range(batch):
        n = steps if lengths is None else int(lengths[b])
        st = tuple(s[b : b + 1] for s in as_tuple(state))
        st = st if len(st) > 1 else st[0]
        order = range(n - 1, -1, -1) if reverse else range(n)
        for t in order:
            y, st = cell(x[t, b : b + 1], st)
            rows[t][b] = y[0]
        finals.append(as_tuple(st))
    out = torch.stack([torch.stack(r) for r in rows])  # (T, B, H_out)
    final = tuple(torch.cat([f[k] for f in finals]) for k in range(len(finals[0])))
    return out, final


def run_both(cell, dtype, lengths, reverse, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    state = tuple(s.requires_grad_() for s in as_tuple(random_state(cell, B, dtype)))
    w_out = torch.randn(T, B, cell.output_size, dtype=dtype)
    w_state = [torch.randn_like(s) for s in state]
    leaves = [x, *state, *cell.parameters()]
    results = []
    for runner in (compiled.run_recurrence, loop_oracle):
        st = state if len(state) > 1 else state[0]
        out, final = runner(cell, x, st, lengths, reverse)
        final = as_tuple(final)
        loss = (out * w_out).sum() + sum((f * w).sum() for f, w in zip(final, w_state, strict=True))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((out.detach(), [f.detach() for f in final], grads))
    return results, [n for n, _ in cell.named_parameters()]


def assert_match(results, names, tol):
    (out, final, grads), (out_ref, final_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=tol, atol=tol)
    for f, f_ref in zip(final, final_ref, strict=True):
        torch.testing.assert_close(f, f_ref, rtol=tol, atol=tol)
    labels = ["inputs"] + [f"state[{k}]" for k in range(len(final))] + names
    for label, g, g_ref in zip(labels, grads, grads_ref, strict=True):
        assert g is not None and g_ref is not None, label
        torch.testing.assert_close(
            g, g_ref, rtol=tol, atol=tol, msg=lambda m, label=label: f"{label}: {m}"
        )


CASES = (
    [("lstm", k, v) for k, v in LSTM_OPTIONS.items()]
    + [("gru", k, v) for k, v in GRU_OPTIONS.items()]
    + [("elman", k, v) for k, v in ELMAN_OPTIONS.items()]
    + [("ugrnn", k, v) for k, v in UGRNN_OPTIONS.items()]
)
CASE_IDS = [f"{f}-{n}" for f, n, _ in CASES]
LENGTHS = {"full": None, "ragged": torch.tensor([5, 2, 4]), "with_zero": torch.tensor([3, 0, 5])}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize(("family", "name", "options"), CASES, ids=CASE_IDS)
def test_matches_cell_loop_float64(family, name, options, lengths, reverse):
    cell = make_cell(family, options, torch.float64)
    results, names = run_both(cell, torch.float64, LENGTHS[lengths], reverse)
    assert_match(results, names, 1e-10)


def run_float32_and_truth(cell32, lengths, reverse, seed=1):
    """The compiled float32 run and the float64 cell loop on the same (rounded) data."""
    cell64 = copy.deepcopy(cell32).double()
    torch.manual_seed(seed)
    x = torch.randn(T, B, I)
    state = as_tuple(random_state(cell32, B, torch.float32))
    w_out = torch.randn(T, B, cell32.output_size).double()
    w_state = [torch.randn_like(s).double() for s in state]
    results = []
    for cell, runner, dtype in (
        (cell32, compiled.run_recurrence, torch.float32),
        (cell64, loop_oracle, torch.float64),
    ):
        xs = x.to(dtype).requires_grad_()
        st = tuple(s.to(dtype).requires_grad_() for s in state)
        out, final = runner(cell, xs, st if len(st) > 1 else st[0], lengths, reverse)
        final = as_tuple(final)
        loss = (out.double() * w_out).sum() + sum(
            (f.double() * w).sum() for f, w in zip(final, w_state, strict=True)
        )
        grads = torch.autograd.grad(loss, [xs, *st, *cell.parameters()])
        results.append(
            (
                out.detach().double(),
                [f.detach().double() for f in final],
                [g.double() for g in grads],
            )
        )
    return results


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(("family", "name", "options"), CASES, ids=CASE_IDS)
def test_float32_matches_float64_cell_loop(family, name, options, reverse):
    # float32 against the float64 truth (the float32 cell loop itself is off by more than
    # 1e-5 where layer norm and clipping amplify rounding): 1e-5 relative to each
    # tensor's scale.
    cell = make_cell(family, options, torch.float32)
    (out, final, grads), (out_ref, final_ref, grads_ref) = run_float32_and_truth(
        cell, torch.tensor([5, 3, 4]), reverse
    )
    names = ["outputs", "final"] + [f"grad[{k}]" for k in range(len(grads))]
    pairs = [
        (out, out_ref),
        *zip(final, final_ref, strict=True),
        *zip(grads, grads_ref, strict=True),
    ]
    for label, (a, b) in zip(names + ["final"] * 2, pairs, strict=False):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(
            a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, label=label: f"{label}: {m}"
        )


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("lstm", {"peepholes": True, "proj_size": 2, "cell_clip": 0.6, "layer_norm": True}),
        ("lstm", {"coupled_gates": True, "peepholes": True}),
        ("gru", {"reset_after": True}),
        ("gru", {"reset_after": False}),
        ("gru", {"reset_after": False, "layer_norm": True}),
        ("gru", {"reset_after": True, "layer_norm": True}),
        ("elman", {"nonlinearity": "tanh"}),
        ("ugrnn", {"forget_bias": 0.5}),
    ],
)
def test_gradcheck(family, options):
    torch.manual_seed(0)
    cls = CELLS[family]
    cell = cls(3, 4, dtype=torch.float64, **options)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    state = [s.requires_grad_() for s in as_tuple(random_state(cell, 2, torch.float64))]
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    lengths = torch.tensor([4, 2])

    class Runner(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, *st):
            out, final = compiled.run_recurrence(
                self.cell, x, st if len(st) > 1 else st[0], lengths, reverse=True
            )
            return (out, *as_tuple(final))

    runner = Runner()

    def run(x, *tensors):
        st, ps = tensors[: len(state)], tensors[len(state) :]
        values = {f"cell.{n}": p for n, p in zip(names, ps, strict=True)}
        return torch.func.functional_call(runner, values, (x, *st))

    assert torch.autograd.gradcheck(run, (x, *state, *params), atol=1e-6)


@pytest.mark.parametrize(
    ("family", "options"),
    [("lstm", LSTM_OPTIONS["everything"]), ("gru", {"reset_after": False}), ("elman", {}),
     ("ugrnn", {})],
)
def test_inference_path_equals_training_path(family, options):
    cell = make_cell(family, options, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = random_state(cell, B, torch.float64)
    lengths = torch.tensor([5, 1, 3])
    with torch.no_grad():
        out_a, final_a = compiled.run_recurrence(cell, x, state, lengths, reverse=True)
    out_b, final_b = compiled.run_recurrence(cell, x.requires_grad_(), state, lengths, True)
    torch.testing.assert_close(out_a, out_b.detach(), rtol=0, atol=0)
    for a, b in zip(as_tuple(final_a), as_tuple(final_b), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_padded_outputs_are_zero_and_zero_length_keeps_state():
    cell = make_cell("lstm", {"peepholes": True}, torch.float32)
    x = torch.randn(T, B, I)
    h0, c0 = random_state(cell, B, torch.float32)
    lengths = torch.tensor([2, 0, 5])
    for reverse in (False, True):
        out, (h, c) = compiled.run_recurrence(cell, x, (h0, c0), lengths, reverse)
        assert torch.all(out[2:, 0] == 0) and torch.all(out[:, 1] == 0)
        assert torch.equal(h[1], h0[1]) and torch.equal(c[1], c0[1])


def test_gradient_of_final_state_only_and_outputs_only():
    cell = make_cell("gru", {}, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = random_state(cell, B, torch.float64)
    for pick in (0, 1):
        out, h = compiled.run_recurrence(cell, x, h0)
        out_ref, (h_ref,) = loop_oracle(cell, x, h0, None, False)
        g = torch.autograd.grad((out, h)[pick].sum(), x)[0]
        g_ref = torch.autograd.grad((out_ref, h_ref)[pick].sum(), x)[0]
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_lstm_matches_torch_nn_lstm():
    # Independent of the rnnkit cells: torch's fused LSTM with the same weights.
    torch.manual_seed(0)
    ref = nn.LSTM(I, H)
    cell = LSTMCell(I, H)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I)
    out, (h, c) = compiled.run_recurrence(cell, x, cell.initial_state(B))
    out_ref, (h_ref, c_ref) = ref(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, c_ref[0], rtol=1e-5, atol=1e-6)


class PlainModule(nn.Module):
    def forward(self, x, state):
        return x, state


class CustomLSTM(LSTMCell):
    def forward(self, x, state=None):
        return super().forward(x, state)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PlainModule(), "PlainModule has no compiled kernel"),
        (lambda: CustomLSTM(2, 3), "CustomLSTM overrides LSTMCell.forward"),
        (lambda: LSTMCell(2, 3).half(), "dtype torch.float16 not supported"),
    ],
)
def test_supports_reasons(make, match):
    cell = make()
    ok, reason = compiled.supports(cell)
    assert not ok and match in reason
    with pytest.raises(ValueError, match="cannot run this cell"):
        compiled.run_recurrence(cell, torch.randn(2, 1, 2), None)


def test_supports_hooks_and_positive_cases():
    cell = ElmanCell(2, 3)
    assert compiled.supports(cell) == (True, "ElmanCell (tanh)")
    assert compiled.supports(GRUCell(2, 3, reset_after=False)) == (
        True,
        "GRUCell (reset_after=False)",
    )
    ok, reason = compiled.supports(LSTMCell(2, 3, peepholes=True, layer_norm=True))
    assert ok and reason == "LSTMCell with peepholes, layer norm"
    cell.register_forward_hook(lambda *args: None)
    ok, reason = compiled.supports(cell)
    assert not ok and "forward hooks" in reason


def test_supports_refuses_every_hook_that_runs_per_call_and_sees_it_come_and_go():
    """Called directly (no dispatch in front), the kernels still refuse a cell whose hooks
    they would skip: backward hooks and hooks on a module inside the cell too; the memoised
    answer follows each registration and removal."""
    cell = GRUCell(2, 3)
    assert compiled.supports(cell)[0]
    handle = cell.register_full_backward_hook(lambda *args: None)
    ok, reason = compiled.supports(cell)
    assert not ok and reason.startswith("a backward hook on GRUCell: backward hooks run")
    handle.remove()
    assert compiled.supports(cell)[0]
    normed = LSTMCell(2, 3, layer_norm=True)
    inner_name, inner = next(iter(normed.named_children()))
    assert compiled.supports(normed)[0]
    handle = inner.register_forward_pre_hook(lambda *args: None)
    ok, reason = compiled.supports(normed)
    assert not ok and reason.startswith(f"a forward pre-hook on LSTMCell.{inner_name}:")
    handle.remove()
    assert compiled.supports(normed)[0]


def test_bad_arguments():
    cell = LSTMCell(I, H)
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match=r"lengths must be a 1-D tensor of 3"):
        compiled.run_recurrence(cell, x, None, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
        compiled.run_recurrence(cell, x, None, torch.tensor([1, 2, 6]))
    with pytest.raises(TypeError, match="lengths must be integers"):
        compiled.run_recurrence(cell, x, None, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"inputs must be \(T, B, H_in\)"):
        compiled.run_recurrence(cell, x[0], None)
    with pytest.raises(ValueError, match="expects 4 input features"):
        compiled.run_recurrence(cell, torch.randn(T, B, I + 1), None)
    with pytest.raises(TypeError, match="inputs are torch.float64"):
        compiled.run_recurrence(cell, x.double(), None)
    with pytest.raises(ValueError, match=r"state c must be \(3, 11\)"):
        compiled.run_recurrence(cell, x, (torch.zeros(B, H), torch.zeros(B, H + 1)))
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\)"):
        compiled.run_recurrence(cell, x, torch.zeros(B, H))


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(_build, "_module", None)
    monkeypatch.setattr(_build, "_error", None)
    monkeypatch.setenv("RNNKIT_DISABLE_COMPILED", "1")
    assert compiled.available() == (False, "compiled kernels disabled by RNNKIT_DISABLE_COMPILED")
    with pytest.raises(RuntimeError, match="unavailable: compiled kernels disabled"):
        compiled.run_recurrence(ElmanCell(2, 3), torch.randn(2, 1, 2), None)
    monkeypatch.setattr(_build, "_error", None)
    monkeypatch.delenv("RNNKIT_DISABLE_COMPILED")
    monkeypatch.setattr(_build, "_compiler", lambda: None)
    ok, reason = compiled.available()
    assert not ok and "no C++ compiler found" in reason


def test_cache_key_depends_on_flags():
    assert _build._key(["-mavx2"]) != _build._key(["-mavx512f"])
    assert _build.capabilities()[-1] == "DEFAULT"


MEDIUM = [
    ("lstm", {"peepholes": True, "proj_size": 40}),
    ("lstm", {"layer_norm": True}),
    ("gru", {"reset_after": True}),
    ("gru", {"reset_after": False}),
    ("elman", {}),
    ("ugrnn", {}),
]


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("blas", "packing"),
    [(True, False), (True, True), (False, False)],
    ids=["blas", "blas_packed", "aten_fallback"],
)
@pytest.mark.parametrize(("family", "options"), MEDIUM, ids=[f for f, _ in MEDIUM])
def test_threaded_and_fallback_gemm_paths(family, options, blas, packing, two_threads):
    # Big enough (B=24, H=180: > 2 MFLOP per step, columns not a multiple of the slice
    # size) that the per-step products are split across threads; then with packed weights,
    # and with the BLAS path switched off so that ATen's GEMM fallback runs.
    ext = _build.load()[0]
    torch.manual_seed(0)
    # MKL packs float32 only (no cblas_dgemm_pack in torch's build): test packing in float32.
    dtype, tol = (torch.float32, 1e-4) if packing else (torch.float64, 1e-9)
    cls = CELLS[family]
    cell = cls(8, 180, dtype=dtype, **options)
    x = torch.randn(3, 24, 8, dtype=dtype, requires_grad=True)
    state = random_state(cell, 24, dtype)
    lengths = torch.randint(0, 4, (24,))
    ext.set_blas_gemm(blas)
    previous_packing = ext.set_packing(packing)
    try:
        out, final = compiled.run_recurrence(cell, x, state, lengths, reverse=True)
        grad = torch.autograd.grad(out.sum() + as_tuple(final)[0].sum(), [x, cell.weight_hh])
    finally:
        ext.set_blas_gemm(True)
        ext.set_packing(previous_packing)
    out_ref, final_ref = loop_oracle(cell, x, state, lengths, True)
    grad_ref = torch.autograd.grad(out_ref.sum() + final_ref[0].sum(), [x, cell.weight_hh])
    torch.testing.assert_close(out, out_ref, rtol=tol, atol=tol)
    for g, g_ref in zip(grad, grad_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol)


def test_stale_build_lock_is_removed(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    _build._remove_stale_lock(tmp_path)
    assert lock.exists()  # fresh: another process may be building right now
    old = time.time() - _build._STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    _build._remove_stale_lock(tmp_path)
    assert not lock.exists()
    _build._remove_stale_lock(tmp_path)  # no lock: nothing to do


def test_parameters_that_are_strided_views():
    # Drivers may bind a cell's parameters to views of other tensors (flat buffers,
    # transposes); the kernels must read them by value, and gradients must reach the base.
    cell = make_cell("lstm", {"peepholes": True}, torch.float64)
    base = torch.randn(H, 4 * H, dtype=torch.float64, requires_grad=True)
    peep = torch.randn(2 * H, dtype=torch.float64, requires_grad=True)
    cell._parameters["weight_hh"] = base.t()  # (4H, H), not contiguous
    cell._parameters["weight_cf"] = peep[::2]  # stride 2
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, _ = compiled.run_recurrence(cell, x, None)
    out_ref, _ = loop_oracle(cell, x, cell.initial_state(B), None, False)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    g = torch.autograd.grad(out.sum(), [base, peep])
    g_ref = torch.autograd.grad(out_ref.sum(), [base, peep])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["lstm", "gru", "elman", "ugrnn"])
def test_no_grad_calls_save_nothing(family, monkeypatch):
    # needs_input_grad ignores no_grad/inference_mode: the kernels must be told, or an
    # eval-mode call with trainable parameters saves every gate for nothing.
    ext = _build.load()[0]
    original = ext.forward
    seen = []

    def spy(name, tensors, numbers, flags):
        assert name == family
        seen.append(flags["training"])
        result = original(name, tensors, numbers, flags)
        assert (result[2] is not None) == flags["training"]  # saved states only in training
        return result

    monkeypatch.setattr(ext, "forward", spy)
    # Elman on the small path runs the projection inside the steps (its own entry point)
    projected = ext.elman_projected_forward

    def spy_projected(*args, **options):
        seen.append(options["training"])
        result = projected(*args, **options)
        assert (result[2] is not None) == options["training"]
        return result

    monkeypatch.setattr(ext, "elman_projected_forward", spy_projected)
    cell = make_cell(family, {}, torch.float32)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        compiled.run_recurrence(cell, x, None)
    with torch.inference_mode():
        compiled.run_recurrence(cell, x, None)
    compiled.run_recurrence(cell, x, None)
    assert seen == [False, False, True]


# ---- degenerate sizes (issue 9 item 1) -------------------------------------------------
# A (G*H, 1) weight transposed and made contiguous keeps stride 1 for its single row; that
# stride reached sgemm as a leading dimension smaller than the row, MKL skipped the product
# ("Parameter 8 was incorrect on entry to SGEMM") and the outputs were garbage (GRU(4, 1)
# 0.17-0.84 from torch). Hidden size 1, and proj_size 1 (a (4H, 1) weight_hh), for every
# option of every family, against the per-sequence loop.
TINY_CASES = [
    (family, name, dict(options, proj_size=1) if "proj_size" in options else options, size)
    for family, name, options in CASES
    for size in ((2,) if "proj_size" in options else (1,))
]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    ("family", "name", "options", "hidden"), TINY_CASES,
    ids=[f"{c[0]}-{c[1]}" for c in TINY_CASES]
)
def test_hidden_size_one_matches_cell_loop(family, name, options, hidden, reverse):
    torch.manual_seed(0)
    cls = CELLS[family]
    cell = cls(3, hidden, dtype=torch.float64, **options)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    state = random_state(cell, 2, torch.float64)
    lengths = torch.tensor([4, 2])
    out, final = compiled.run_recurrence(cell, x, state, lengths, reverse)
    out_ref, final_ref = loop_oracle(cell, x, state, lengths, reverse)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    leaves = [x, *cell.parameters()]
    loss = (out * out.detach().cos()).sum() + as_tuple(final)[0].sum()
    loss_ref = (out_ref * out_ref.detach().cos()).sum() + final_ref[0].sum()
    grads = torch.autograd.grad(loss, leaves)
    grads_ref = torch.autograd.grad(loss_ref, leaves)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hidden", [1, 2])
@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_drop_ins_at_hidden_size_one_match_torch_nn(kind, hidden):
    # The reproduction: torch.nn weights loaded into the drop-in, compiled path forced
    # (engine="auto" sends GRU and RNN there on CPU); two layers as in Keras's stacked
    # one-unit LSTM test, where the kernel gave 0.633 instead of 0.779.
    import rnnkit

    torch.manual_seed(0)
    ref = getattr(nn, kind)(4, hidden, num_layers=2)
    mod = getattr(rnnkit, kind)(4, hidden, num_layers=2, engine="compiled")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, requires_grad=True)
    out, _ = mod(x)
    out_ref, _ = ref(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(out.sum(), [x, mod.weight_hh_l0])
    g_ref = torch.autograd.grad(out_ref.sum(), [x, ref.weight_hh_l0])
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["lstm", "gru", "elman", "ugrnn"])
def test_transposed_and_expanded_state_gradients(family):
    # The gradient of the final state may arrive with any strides (here transposed, and
    # expanded from a broadcast); the kernels read it row by row.
    cell = make_cell(family, {}, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(H, B, dtype=torch.float64)
    results = []
    for runner in (compiled.run_recurrence, loop_oracle):
        _, final = runner(cell, x, None if runner is compiled.run_recurrence
                          else tuple(cell.initial_state(B, dtype=torch.float64))
                          if family == "lstm" else cell.initial_state(B, dtype=torch.float64),
                          None, False)
        h = as_tuple(final)[0]
        loss = (h.t() * weights).sum() + as_tuple(final)[-1].sum()
        results.append(torch.autograd.grad(loss, [x, cell.weight_hh]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gemm_leading_dimension_rules_are_checked():
    # Every leading dimension is checked against the BLAS rules before any BLAS call, so a
    # bad stride is an error that says so (not a skipped product and a line on stderr).
    ext = _build.load()[0]
    a, b, c = torch.randn(2, 3), torch.randn(3, 4), torch.zeros(2, 4)
    ext.gemm_rows(a, 3, b, 4, c, 4, 2, 4, 3)
    torch.testing.assert_close(c, a @ b)
    for lda, ldb, ldc in [(2, 4, 4), (3, 1, 4), (3, 4, 3)]:
        with pytest.raises(RuntimeError, match=r"BLAS rules .* lda >= max\(1, K\)"):
            ext.gemm_rows(a, lda, b, ldb, c, ldc, 2, 4, 3)
    # The kernels' own entry refuses a weight whose rows overlap before it gets that far.
    w = torch.randn(6, 4).as_strided((2, 2), (1, 1))
    with pytest.raises(RuntimeError, match="weight_hh must be contiguous"):
        ext.forward("elman", {"xp": torch.randn(2, 1, 2), "state": torch.zeros(1, 2),
                              "weight_hh": w}, {},
                    {"relu": False, "reverse": False, "training": False})


# ---- second-order gradients (issue 9 item 4.1) -----------------------------------------
# The C++ backward is first order; under create_graph=True the Functions recompute through
# torch ops (rnnkit/engine/compiled/_differentiable.py) so that gradients of gradients exist.


@pytest.mark.parametrize("kind", ["GRU", "RNN", "LSTM"])
def test_double_backward_matches_torch_nn(kind):
    # The snippet: a gradient penalty on the input gradient. weight_hh_l0.grad was
    # None (rnnkit.GRU/RNN go to the compiled kernels on CPU by default).
    import rnnkit

    torch.manual_seed(0)
    ref = getattr(nn, kind)(3, 4)
    mod = getattr(rnnkit, kind)(3, 4, engine="compiled")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    for m in (mod, ref):
        gx, = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
    for (name, p), p_ref in zip(mod.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(("family", "name", "options"), CASES, ids=CASE_IDS)
def test_create_graph_gradients_equal_kernel_gradients(family, name, options, reverse):
    # The differentiable recomputation must be the same function as the kernel: its
    # gradients (create_graph=True) equal the C++ backward's (create_graph=False).
    cell = make_cell(family, options, torch.float64)
    torch.manual_seed(2)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in as_tuple(random_state(cell, B, torch.float64)))
    lengths = torch.tensor([5, 2, 4])
    leaves = [x, *state, *cell.parameters()]
    w_out = torch.randn(T, B, cell.output_size, dtype=torch.float64)
    results = []
    for create_graph in (False, True):
        out, final = compiled.run_recurrence(
            cell, x, state if len(state) > 1 else state[0], lengths, reverse)
        loss = (out * w_out).sum() + sum(f.pow(2).sum() for f in as_tuple(final))
        results.append(torch.autograd.grad(loss, leaves, create_graph=create_graph))
    for g, g_ref in zip(results[1], results[0], strict=True):
        assert g.requires_grad or not any(t.requires_grad for t in leaves)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


GRADGRAD = [
    ("lstm", {"peepholes": True, "proj_size": 1, "cell_clip": 2.0}),
    ("lstm", {"coupled_gates": True, "layer_norm": True}),
    ("gru", {}),
    ("gru", {"reset_after": False, "layer_norm": True}),
    ("elman", {}),
    ("elman", {"nonlinearity": "relu"}),
    ("ugrnn", {}),
]


@pytest.mark.parametrize(("family", "options"), GRADGRAD,
                         ids=[f"{f}-{'-'.join(o) or 'plain'}" for f, o in GRADGRAD])
def test_gradgradcheck(family, options):
    # Tiny float64 sizes: gradgradcheck differentiates the backward numerically.
    torch.manual_seed(0)
    cls = CELLS[family]
    cell = cls(2, 2, dtype=torch.float64, **options)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    state = [s.requires_grad_() for s in as_tuple(random_state(cell, 2, torch.float64))]
    lengths = torch.tensor([3, 2])

    def run(x, *tensors):
        states, values = tensors[: len(state)], tensors[len(state):]
        out, final = _functional_run(cell, names, values, x, states, lengths)
        return (out, *as_tuple(final))

    assert torch.autograd.gradgradcheck(run, (x, *state, *params), atol=1e-6, rtol=1e-4)


def _functional_run(cell, names, values, x, states, lengths):
    # The cell's parameters bound to `values` for one call (what torch.func.functional_call
    # does), then the compiled path.
    saved = {}
    for name, value in zip(names, values, strict=True):
        owner, _, leaf = name.rpartition(".")
        module = cell.get_submodule(owner) if owner else cell
        saved[name] = (module, leaf, module._parameters[leaf])
        module._parameters[leaf] = value
    try:
        return compiled.run_recurrence(cell, x, states if len(states) > 1 else states[0],
                                       lengths, reverse=True)
    finally:
        for module, leaf, value in saved.values():
            module._parameters[leaf] = value


@pytest.mark.parametrize("engine", ["fused", "compiled", "loop"])
@pytest.mark.parametrize("kind", ["GRU", "RNN", "LSTM"])
def test_gradgradcheck_every_drop_in_path(kind, engine):
    import rnnkit

    torch.manual_seed(0)
    module = getattr(rnnkit, kind)(2, 2, engine=engine, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        out, final = torch.func.functional_call(module, dict(zip(names, values, strict=True)),
                                                (x,))
        return (out, *as_tuple(final))

    assert torch.autograd.gradgradcheck(run, (x, *params), atol=1e-6, rtol=1e-4)


# ---- torch.func and vectorized Jacobians (issue 9 item 4.2) -----------------------------


@pytest.mark.parametrize("kind", ["GRU", "RNN", "LSTM"])
def test_functorch_transforms_match_torch_nn(kind):
    # The kernels read raw memory; functorch's tensors have none ("Cannot access data pointer
    # of Tensor that doesn't have storage"). The entry hands such calls to the loop and the
    # backward takes its differentiable form for vmapped gradients.
    import rnnkit

    torch.manual_seed(0)
    ref = getattr(nn, kind)(3, 2, dtype=torch.float64)
    mod = getattr(rnnkit, kind)(3, 2, engine="compiled", dtype=torch.float64)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for m_fn in (
        lambda m: torch.autograd.functional.jacobian(lambda v: m(v)[0], x, vectorize=True),
        lambda m: torch.func.jacrev(lambda v: m(v)[0])(x),
        lambda m: torch.func.grad(lambda v: m(v)[0].pow(2).sum())(x),
        lambda m: torch.func.grad(
            lambda p: torch.func.functional_call(m, p, (x,))[0].pow(2).sum()
        )(dict(m.named_parameters()))["weight_hh_l0"],
    ):
        torch.testing.assert_close(m_fn(mod), m_fn(ref), rtol=1e-10, atol=1e-12)
    # vmap over the batch: torch.nn has no batching rule for its fused RNNs, so compare
    # with torch.nn run on each sequence.
    got = torch.func.vmap(lambda v: mod(v)[0], in_dims=1, out_dims=1)(x)
    want = torch.stack([ref(x[:, b])[0] for b in range(x.shape[1])], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fallback_reason_names_the_transform():
    cell = GRUCell(3, 4)
    x = torch.randn(2, 1, 3)
    assert compiled.fallback_reason(cell, x) is None
    seen = []
    torch.func.vmap(lambda v: seen.append(compiled.fallback_reason(cell, v)) or v)(x)
    assert seen and "torch.func transform" in seen[0] and "eager loop" in seen[0]


def test_packed_weights_are_the_default_on_intel_only():
    """MKL's packed per-step GEMM paid 7-10% on an Intel Xeon and nothing on AMD EPYC Zen 3
    (csrc/common.h): the default follows the CPU's vendor (/proc/cpuinfo is the oracle)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU vendor from")
    vendors = {line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
               if line.startswith("vendor_id")}
    if len(vendors) != 1:
        pytest.skip(f"no single x86 vendor in /proc/cpuinfo: {vendors}")
    ext = _build.load()[0]
    assert ext.packing() == (vendors == {"GenuineIntel"})
    previous = ext.set_packing(not ext.packing())
    try:
        assert ext.packing() != previous
    finally:
        ext.set_packing(previous)
