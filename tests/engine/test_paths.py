"""Every engine path against the eager loop, on tiny and odd shapes (issue 9 item 1).

A property test (hypothesis) over the paths a recurrence can take: ``fused`` (torch's own
kernels, drop-ins only), ``compiled`` (rnnkit's C++ kernels) and ``loop`` (the eager Python
loop, the reference semantics of docs/design.md, itself checked against torch.nn and the
NumPy reference elsewhere). Each example draws the degenerate sizes where the hidden-size-1
bug hid — hidden size 1, input size 1, batch 1, T = 1, proj_size 1 — with or without
lengths, both directions, training (gradients of the inputs, the initial state and every
parameter) or inference (no_grad), and parameters bound to transposed or strided views.
Any BLAS/oneDNN complaint on stderr fails the example too (tests/stderr_check.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import rnnkit
from rnnkit.cells import ElmanCell, GroupedLSTMCell, GRUCell, LSTMCell, NASCell, UGRNNCell
from rnnkit.engine import compiled
from rnnkit.layers.recurrence import Recurrence

pytestmark = pytest.mark.skipif(
    not compiled.available()[0], reason=f"compiled kernels unavailable: {compiled.available()[1]}"
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow],
)
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@st.composite
def shapes(draw) -> dict:
    steps = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 3))
    varied = draw(st.booleans())
    lengths = None
    if varied:
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    return {
        "T": steps,
        "B": batch,
        "H_in": draw(st.sampled_from([1, 2, 3])),
        "H": draw(st.sampled_from([1, 1, 2, 3])),
        "lengths": lengths,
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "training": draw(st.booleans()),
        "layouts": draw(st.lists(st.sampled_from(["plain", "transposed", "strided"]),
                                 min_size=16, max_size=16)),
        "seed": draw(st.integers(0, 2**16)),
    }


def rebind_to_views(module: nn.Module, layouts: list[str], recurse: bool = True) -> list[Tensor]:
    """Replace every parameter by a view of a new leaf (transposed, or every other element of
    a buffer with NaN in between: a kernel reading the wrong element sees NaN); return the
    leaves, which is where the gradients must arrive."""
    leaves = []
    owners = module.modules() if recurse else [module]
    named = [(owner, name, p) for owner in owners
             for name, p in list(owner._parameters.items()) if p is not None]
    for (owner, name, p), layout in zip(named, layouts * 4, strict=False):
        value = p.detach()
        if layout == "transposed" and p.dim() == 2:
            leaf = value.t().clone().requires_grad_()
            view = leaf.t()  # p's shape, strides (1, rows)
        elif layout == "strided":
            leaf = torch.stack([value, torch.full_like(value, float("nan"))], -1)
            view = leaf.requires_grad_()[..., 0]
        else:
            leaf = value.clone().requires_grad_()
            view = leaf
        owner._parameters[name] = view
        leaves.append(leaf)
    return leaves


def run(layer: nn.Module, x: Tensor, state, lengths, training: bool, leaves: list[Tensor],
        weights: list[Tensor]):
    """Outputs, final states and (training) gradients of a fixed random linear loss."""
    x = x.clone().requires_grad_(training)
    state = tuple(s.clone().requires_grad_(training) for s in state)
    with torch.set_grad_enabled(training):
        out, final = layer(x, state if len(state) > 1 else state[0], lengths=lengths)
        final = final if isinstance(final, tuple) else (final,)
        results = [out, *final]
        if not training:
            return [r.detach() for r in results]
        loss = sum((r * w).sum() for r, w in zip(results, weights, strict=True))
        grads = torch.autograd.grad(loss, [x, *state, *leaves])
    return [r.detach() for r in results] + list(grads)


def assert_all_close(got: list[Tensor], want: list[Tensor], tol: float, label: str) -> None:
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol,
                                   msg=lambda m, i=index: f"{label}, result {i}: {m}")


DROP_INS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]


@SETTINGS
@given(shape=shapes(), kind=st.sampled_from(range(len(DROP_INS))), layers=st.integers(1, 2),
       bidirectional=st.booleans(), project=st.booleans())
def test_drop_in_paths_match_the_loop(shape, kind, layers, bidirectional, project):
    name, options = DROP_INS[kind]
    if name == "LSTM" and project and shape["H"] > 1:
        options = dict(options, proj_size=1)
    torch.manual_seed(shape["seed"])
    dtype, B = shape["dtype"], shape["B"]
    module = getattr(rnnkit, name)(shape["H_in"], shape["H"], num_layers=layers,
                                   bidirectional=bidirectional, dtype=dtype, **options)
    # The drop-in binds its cells to its own tensors at each call: rebind only those.
    leaves = rebind_to_views(module, shape["layouts"], recurse=False)
    directions = 2 if bidirectional else 1
    out_size = options.get("proj_size") or shape["H"]
    x = torch.randn(shape["T"], B, shape["H_in"], dtype=dtype)
    state = [torch.randn(layers * directions, B, out_size, dtype=dtype)]
    if name == "LSTM":
        state.append(torch.randn(layers * directions, B, shape["H"], dtype=dtype))
    lengths = None if shape["lengths"] is None else torch.tensor(shape["lengths"])
    weights = [torch.randn(shape["T"], B, directions * out_size, dtype=dtype),
               *(torch.randn_like(s) for s in state)]
    results = {}
    for engine in ("loop", "compiled", "fused"):
        module.engine = engine
        results[engine] = run(module, x, state, lengths, shape["training"], leaves, weights)
    for engine in ("compiled", "fused"):
        assert_all_close(results[engine], results["loop"], TOL[dtype],
                         f"{name}{options} engine={engine} {shape}")


CELLS = [
    (LSTMCell, {}),
    (LSTMCell, {"peepholes": True}),
    (LSTMCell, {"coupled_gates": True, "peepholes": True}),
    (LSTMCell, {"proj_size": 1}),
    (LSTMCell, {"cell_clip": 0.2, "bias": False}),
    (LSTMCell, {"layer_norm": True, "proj_size": 1, "peepholes": True}),
    (GRUCell, {}),
    (GRUCell, {"reset_after": False}),
    (GRUCell, {"layer_norm": True}),
    (GRUCell, {"reset_after": False, "layer_norm": True, "bias": False}),
    (ElmanCell, {}),
    (ElmanCell, {"nonlinearity": "relu", "bias": False}),
    (UGRNNCell, {}),
    (UGRNNCell, {"bias": False, "forget_bias": -0.5}),
    (GroupedLSTMCell, {"groups": 2}),
    (GroupedLSTMCell, {"groups": 1, "bias": False}),
    (NASCell, {}),
    (NASCell, {"proj_size": 1, "bias": False}),
]


@SETTINGS
@given(shape=shapes(), which=st.sampled_from(range(len(CELLS))), backwards=st.booleans())
def test_cell_paths_match_the_loop(shape, which, backwards):
    cls, options = CELLS[which]
    groups = options.get("groups", 1)  # GroupedLSTM: each group gets the drawn sizes
    hidden, features = shape["H"] * groups, shape["H_in"] * groups
    if options.get("proj_size") and hidden == 1:
        hidden = 2  # proj_size 1 needs hidden size >= 2
    torch.manual_seed(shape["seed"])
    dtype, B, T = shape["dtype"], shape["B"], shape["T"]
    cell = cls(features, hidden, dtype=dtype, **options)
    with torch.no_grad():  # non-trivial layer norm gains/offsets
        for pname, p in cell.named_parameters():
            if "ln_" in pname:
                p.add_(0.3 * torch.randn_like(p))
    leaves = rebind_to_views(cell, shape["layouts"])
    sizes = cell.state_size if isinstance(cell.state_size, tuple) else (cell.state_size,)
    x = torch.randn(T, B, features, dtype=dtype)
    state = [0.5 * torch.randn(B, size, dtype=dtype) for size in sizes]
    lengths = None if shape["lengths"] is None else torch.tensor(shape["lengths"])
    weights = [torch.randn(T, B, cell.output_size, dtype=dtype),
               *(torch.randn_like(s) for s in state)]
    results = {
        engine: run(Recurrence(cell, go_backwards=backwards, engine=engine), x, state, lengths,
                    shape["training"], leaves, weights)
        for engine in ("loop", "compiled")
    }
    assert_all_close(results["compiled"], results["loop"], TOL[dtype],
                     f"{cls.__name__}{options} backwards={backwards} {shape}")
