"""Compiled kernels of the exotic cells against the cells' loop: IndRNN (its own kernel),
GroupedLSTM and NAS (on the step-loop template: csrc/grouped_lstm.cpp, csrc/nas.cpp).

Oracle: every sequence run on its own through the cell's ``forward`` in a plain Python loop
(lengths and reverse by brute force: no sorting, no masking), compared on outputs, final
states and the gradients of a random linear loss with respect to the inputs, the initial
state and every parameter: float64 to 1e-10, float32 to 1e-5 of each tensor's scale (against
the float64 truth); gradcheck and gradgradcheck in float64; hidden size 1, batch 1, T = 1
and odd shapes. BLAS/oneDNN complaints on stderr fail a test (tests/stderr_check.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GroupedLSTMCell, IndRNNCell, NASCell
from rnnkit.engine import compiled, dispatch


@pytest.fixture(scope="module", autouse=True)
def extension():
    # The first call compiles the extension (minutes, once per cache); later calls are free.
    ok, reason = compiled.available()
    if not ok:
        pytest.skip(f"compiled kernels unavailable: {reason}")
    return reason


CELLS = {
    "indrnn_relu": (IndRNNCell, {}),
    "indrnn_tanh_clip": (IndRNNCell, {"nonlinearity": "tanh", "recurrent_max_abs": 0.6}),
    "indrnn_relu_clip_nobias": (IndRNNCell, {"recurrent_max_abs": 0.7, "bias": False}),
    "glstm_1": (GroupedLSTMCell, {"groups": 1}),
    "glstm_2": (GroupedLSTMCell, {"groups": 2}),
    "glstm_3_nobias": (GroupedLSTMCell, {"groups": 3, "bias": False}),
    "glstm_4": (GroupedLSTMCell, {"groups": 4}),
    "nas": (NASCell, {}),
    "nas_proj": (NASCell, {"proj_size": 4}),
    "nas_proj_nobias": (NASCell, {"proj_size": 2, "bias": False}),
}
T, B, I, H = 5, 4, 12, 12  # divisible by 1-4 groups; H/3 = 4 and H/4 = 3 are below a vector


def make_cell(name: str, dtype: torch.dtype, input_size: int = I, hidden: int = H,
              seed: int = 0) -> nn.Module:
    cls, options = CELLS[name]
    torch.manual_seed(seed)
    cell = cls(input_size, hidden, dtype=dtype, **options)
    with torch.no_grad():
        for pname, p in cell.named_parameters():
            if pname.startswith("bias"):  # non-zero biases, so their gradients matter
                p.copy_(0.3 * torch.randn_like(p))
            if isinstance(cell, IndRNNCell) and pname == "weight_hh":
                # both signs, some beyond the clip (their gradient is zero there)
                p.copy_(torch.empty_like(p).uniform_(-1.2, 1.2))
    return cell


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def random_state(cell, batch: int, dtype: torch.dtype):
    sizes = cell.state_size if isinstance(cell.state_size, tuple) else (cell.state_size,)
    parts = tuple(torch.randn(batch, n, dtype=dtype) * 0.5 for n in sizes)
    return parts if isinstance(cell.state_size, tuple) else parts[0]


def loop_oracle(cell, x, state, lengths, reverse):
    """Every sequence on its own, step by step through cell.forward."""
    steps, batch, _ = x.shape
    zero = x.new_zeros(cell.output_size)
    rows = [[zero] * batch for _ in range(steps)]
    finals = []
    for b in range(batch):
        n = steps if lengths is None else int(lengths[b])
        st = tuple(s[b: b + 1] for s in as_tuple(state))
        st = st if len(st) > 1 else st[0]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            y, st = cell(x[t, b: b + 1], st)
            rows[t][b] = y[0]
        finals.append(as_tuple(st))
    out = torch.stack([torch.stack(r) for r in rows])  # (T, B, H_out)
    final = tuple(torch.cat([f[k] for f in finals]) for k in range(len(finals[0])))
    return out, final


def run_both(cell, x, state, lengths, reverse, seed=1):
    """(outputs, final state parts, gradients) of the kernel and of the loop oracle."""
    torch.manual_seed(seed)  # the loss weights drawn in float64: the same in both dtypes
    w_out = torch.randn(x.shape[0], x.shape[1], cell.output_size, dtype=torch.float64)
    w_out = w_out.to(x.dtype)
    parts = as_tuple(state)
    w_state = [torch.randn(s.shape, dtype=torch.float64).to(s.dtype) for s in parts]
    results = []
    for runner in ("compiled", "oracle"):
        xx = x.detach().clone().requires_grad_()
        st = tuple(s.detach().clone().requires_grad_() for s in parts)
        call_state = st if isinstance(state, tuple) else st[0]
        if runner == "compiled":
            out, final = compiled.run_recurrence(cell, xx, call_state, lengths=lengths,
                                                 reverse=reverse)
        else:
            out, final = loop_oracle(cell, xx, call_state, lengths, reverse)
        final = as_tuple(final)
        loss = (out * w_out).sum() + sum((f * w).sum() for f, w in zip(final, w_state, strict=True))
        leaves = [xx, *st, *cell.parameters()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g
                 for leaf, g in zip(leaves, grads, strict=True)]
        results.append((out.detach(), [f.detach() for f in final], grads))
    return results


def assert_close(kernel, oracle, cell, rtol, atol, scale=False):
    (out_k, fin_k, g_k), (out_o, fin_o, g_o) = kernel, oracle
    pairs = [("outputs", out_k, out_o)]
    pairs += [(f"final state {i}", a, b) for i, (a, b) in enumerate(zip(fin_k, fin_o, strict=True))]
    labels = ["d input"] + [f"d state {i}" for i in range(len(fin_k))] + [
        f"d {n}" for n, _ in cell.named_parameters()]
    pairs += [(label, a, b) for label, a, b in zip(labels, g_k, g_o, strict=True)]
    for label, a, b in pairs:
        size = float(b.abs().max()) if scale and b.numel() else 1.0
        torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=atol * max(size, 1.0),
                                   msg=lambda m, label=label: f"{label}: {m}")


LENGTHS = {"full": None, "varied": [5, 2, 5, 3]}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("name", list(CELLS))
def test_matches_cell_loop_float64(name, lengths, reverse):
    cell = make_cell(name, torch.float64)
    torch.manual_seed(2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = random_state(cell, B, torch.float64)
    lens = None if LENGTHS[lengths] is None else torch.tensor(LENGTHS[lengths])
    kernel, oracle = run_both(cell, x, state, lens, reverse)
    assert_close(kernel, oracle, cell, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CELLS))
def test_float32_matches_float64_truth(name, reverse):
    cell64 = make_cell(name, torch.float64)
    cell32 = make_cell(name, torch.float32)
    with torch.no_grad():
        for p32, p64 in zip(cell32.parameters(), cell64.parameters(), strict=True):
            p32.copy_(p64)
    torch.manual_seed(3)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = random_state(cell64, B, torch.float64)
    lens = torch.tensor([5, 1, 4, 5])
    truth = run_both(cell64, x, state, lens, reverse)[1]
    state32 = tuple(s.float() for s in as_tuple(state))
    state32 = state32 if isinstance(state, tuple) else state32[0]
    kernel = run_both(cell32, x.float(), state32, lens, reverse)[0]
    assert_close(kernel, truth, cell64, rtol=1e-5, atol=1e-5, scale=True)


EDGE_SHAPES = {  # (T, B, H_in, H): hidden 1, batch 1, T = 1, odd sizes
    "hidden1": (4, 3, 2, 1),
    "batch1": (4, 1, 3, 6),
    "steps1": (1, 3, 3, 6),
    "odd": (7, 5, 9, 6),
}


@pytest.mark.parametrize("shape", list(EDGE_SHAPES))
@pytest.mark.parametrize("name", ["indrnn_tanh_clip", "glstm_1", "glstm_2", "glstm_3_nobias",
                                  "glstm_4", "nas", "nas_proj", "nas_proj_nobias"])
def test_edge_shapes_match_cell_loop(name, shape):
    steps, batch, input_size, hidden = EDGE_SHAPES[shape]
    cls, options = CELLS[name]
    groups = options.get("groups", 1)
    # every group gets the shape's sizes (hidden1: one unit per group)
    input_size, hidden = input_size * groups, hidden * groups
    hidden = max(hidden, options.get("proj_size", 0) + 1)  # proj_size < hidden_size
    cell = make_cell(name, torch.float64, input_size, hidden)
    torch.manual_seed(4)
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    state = random_state(cell, batch, torch.float64)
    lens = torch.randint(1, steps + 1, (batch,))
    for reverse in (False, True):
        for lengths in (None, lens):
            kernel, oracle = run_both(cell, x, state, lengths, reverse)
            assert_close(kernel, oracle, cell, rtol=1e-10, atol=1e-10)


class _Runner(nn.Module):
    """The kernel as a module of the cell's parameters, for torch.func.functional_call."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x, state):
        steps = x.shape[0]
        lengths = torch.tensor([steps, max(1, steps - 1)])
        return compiled.run_recurrence(self.cell, x, state, lengths=lengths, reverse=True)


def _gradcheck_inputs(name, steps=3, batch=2, input_size=4, hidden=8):
    cell = make_cell(name, torch.float64, input_size, hidden)
    torch.manual_seed(5)
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in as_tuple(random_state(cell, batch, torch.float64)))
    names_ = [f"cell.{n}" for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    runner = _Runner(cell)
    single = not isinstance(cell.state_size, tuple)

    def run(x, *tensors):
        st, ps = tensors[: len(state)], tensors[len(state):]
        out, final = torch.func.functional_call(
            runner, dict(zip(names_, ps, strict=True)), (x, st[0] if single else tuple(st)))
        return (out, *as_tuple(final))

    return run, (x, *state, *params)


@pytest.mark.parametrize("name", ["indrnn_relu", "indrnn_tanh_clip", "glstm_1", "glstm_2",
                                  "glstm_4", "nas", "nas_proj", "nas_proj_nobias"])
def test_gradcheck(name):
    run, inputs = _gradcheck_inputs(name)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["indrnn_tanh_clip", "glstm_2", "nas", "nas_proj_nobias"])
def test_gradgradcheck(name):
    run, inputs = _gradcheck_inputs(name, steps=2, hidden=4)
    assert torch.autograd.gradgradcheck(run, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["indrnn_relu", "glstm_3_nobias", "glstm_4", "nas", "nas_proj"])
def test_inference_equals_training_and_saves_nothing(name):
    cell = make_cell(name, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lens = torch.tensor([5, 2, 5, 3])
    train_out, train_final = compiled.run_recurrence(cell, x, None, lengths=lens, reverse=True)
    with torch.no_grad():
        out, final = compiled.run_recurrence(cell, x, None, lengths=lens, reverse=True)
    assert out.grad_fn is None
    torch.testing.assert_close(out, train_out.detach(), rtol=0, atol=0)
    for a, b in zip(as_tuple(final), as_tuple(train_final), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert float(out[3:, 1].abs().max()) == 0.0  # padded steps are exactly zero


@pytest.mark.parametrize("name", ["indrnn_relu", "glstm_2", "nas", "nas_proj"])
def test_recurrence_runs_the_kernel_and_explain_names_it(name):
    cell = make_cell(name, torch.float32)
    layer = rnnkit.Recurrence(cell)
    x = torch.randn(T, B, I)
    text = rnnkit.engine.explain(layer, x, lengths=torch.tensor([5, 2, 5, 3]))
    assert f"{type(cell).__name__} -> compiled" in text, text
    ok, why = compiled.supports(cell)
    assert ok and type(cell).__name__ in why
    plan = layer.execution_plan(x)
    out, _ = layer(x)
    assert plan.runs[0].path == "compiled"
    forced = rnnkit.Recurrence(cell, engine="loop")(x)[0]
    torch.testing.assert_close(out, forced, rtol=1e-5, atol=1e-5)
    assert dispatch.ENGINES  # the engine names are what Recurrence checked against


def test_bad_parameters_and_states_are_named():
    cell = make_cell("glstm_2", torch.float64)
    with torch.no_grad():
        cell.weight_hh = nn.Parameter(torch.zeros(2, 24, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"GroupedLSTMCell\.weight_hh has shape \(2, 24, 5\)"):
        compiled.run_recurrence(cell, torch.randn(T, B, I, dtype=torch.float64), None)
    nas = make_cell("nas_proj", torch.float64)
    bad = (torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"NASCell state h must be \(4, 4\)"):
        compiled.run_recurrence(nas, torch.randn(T, B, I, dtype=torch.float64), bad)
    ind = make_cell("indrnn_relu", torch.float64)
    with pytest.raises(TypeError, match="state must be|dtype"):
        compiled.run_recurrence(ind, torch.randn(T, B, I, dtype=torch.float64),
                                torch.zeros(B, H, dtype=torch.float32))


def test_supports_names_the_cell_and_refuses_overridden_forward():
    class MyIndRNN(IndRNNCell):
        def forward(self, x, state=None):
            return super().forward(x, state)

    ok, why = compiled.supports(MyIndRNN(3, 4))
    assert not ok and "overrides IndRNNCell.forward" in why
    ok, why = compiled.supports(IndRNNCell(3, 4, recurrent_max_abs=2.0))
    assert ok and "recurrent_max_abs=2.0" in why and "no recurrent GEMM" in why
    ok, why = compiled.supports(GroupedLSTMCell(4, 6, groups=2))
    assert ok and "groups=2" in why
    ok, why = compiled.supports(NASCell(4, 6, proj_size=3))
    assert ok and "proj_size=3" in why


@pytest.mark.parametrize("name", ["glstm_1", "glstm_2", "glstm_4", "nas", "nas_proj"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_bidirectional_compiled_equals_loop_engine(name, dtype):
    """Both directions through the drivers: Bidirectional(Recurrence(cell)) with
    engine='compiled' against the same layer with engine='loop', with lengths; outputs,
    final states and the gradients of inputs, initial states and every parameter."""
    cell = make_cell(name, dtype)
    torch.manual_seed(6)
    x = torch.randn(T, B, I, dtype=dtype)
    lengths = torch.tensor([5, 2, 4, 1])
    w_out = torch.randn(T, B, 2 * cell.output_size, dtype=dtype)
    layers = [rnnkit.Bidirectional(rnnkit.Recurrence(make_cell(name, dtype), engine=engine))
              for engine in ("compiled", "loop")]
    layers[1].load_state_dict(layers[0].state_dict())  # the backward copy draws its own
    results = []
    for layer in layers:
        xx = x.clone().requires_grad_()
        out, finals = layer(xx, lengths=lengths)
        leaves = torch.utils._pytree.tree_leaves(finals)
        loss = (out * w_out).sum() + sum((f * (k + 1)).sum() for k, f in enumerate(leaves))
        params = list(layer.parameters())
        grads = torch.autograd.grad(loss, [xx, *params])
        results.append((out.detach(), [f.detach() for f in leaves], grads))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    (out_c, fin_c, g_c), (out_l, fin_l, g_l) = results
    for label, a, b in [("outputs", out_c, out_l),
                        *[(f"final {k}", a, b) for k, (a, b) in enumerate(zip(fin_c, fin_l,
                                                                             strict=True))],
                        *[(f"grad {k}", a, b) for k, (a, b) in enumerate(zip(g_c, g_l,
                                                                            strict=True))]]:
        scale = max(float(b.abs().max()), 1.0)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale,
                                   msg=lambda m, label=label: f"{name} {label}: {m}")
    text = rnnkit.engine.explain(layers[0], x, lengths=lengths)
    assert f"{type(cell).__name__} -> compiled" in text, text


@pytest.mark.parametrize("name", ["glstm_2", "glstm_3_nobias", "glstm_4"])
def test_grouped_threads_equal_one_thread_bit_for_bit(name):
    """Each group's whole sequence on its own thread (the template's independent groups):
    with 2 threads (2, 3 or 4 groups: even and uneven splits) the results equal the
    single-threaded run exactly, forward and backward, with lengths and reverse."""
    cell = make_cell(name, torch.float64)
    torch.manual_seed(7)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = random_state(cell, B, torch.float64)
    lengths = torch.tensor([5, 2, 5, 3])
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, (h, c) = compiled.run_recurrence(cell, x, state, lengths=lengths, reverse=True)
            loss = out.pow(2).sum() + h.sum() + 2 * c.sum()
            results.append((out, h, c, *torch.autograd.grad(loss, [x, *cell.parameters()])))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_families_run_on_the_template():
    """GroupedLSTM and NAS are registered step-loop families (no kernels of their own);
    IndRNN keeps its own kernel."""
    from rnnkit.engine.compiled import _build

    ext, error = _build.load()
    assert ext is not None, error
    families = ext.families()
    assert families["grouped_lstm"] == [["weight_hh"], [], []]
    assert families["nas"] == [["weight_hh", "bias_hh", "weight_hr"], [], []]
    assert not hasattr(ext, "grouped_lstm_forward") and not hasattr(ext, "nas_forward")
    assert hasattr(ext, "indrnn_forward")
