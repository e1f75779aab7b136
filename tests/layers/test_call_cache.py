"""A drop-in's remembered call (``RNNBase._fast_forward``): a plain call (no hx, lengths or
mask) with the same key as the previous one skips the checks and the plan. Each test makes
calls, changes one thing the decision depends on, calls again, and compares outputs, final
states and gradients (input and every parameter) with ``torch.nn`` holding the same weights;
the path runners are instrumented so that each test also sees that the remembered call ran."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.engine import compiled
from tests.helpers import record_path_runners

HAVE_COMPILED = compiled.available()[0]
pytestmark = pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels unavailable")

T, B, F, H = 6, 4, 3, 5


@pytest.fixture
def ran(monkeypatch):
    """Every path runner call, in order: "prepared" is the remembered compiled call."""
    return record_path_runners(monkeypatch, prepared="prepared")


def _pair(kind="RNN", dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    if kind == "RNN":
        kwargs.setdefault("nonlinearity", "relu")
    ours = getattr(rnnkit, kind)(F, H, dtype=dtype, **kwargs)
    theirs = getattr(nn, kind)(F, H, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _check(ours, theirs, x, tol=None):
    """Outputs, final states and every gradient of ours against torch.nn's on ``x``."""
    tol = tol or ({"rtol": 1e-5, "atol": 1e-5} if x.dtype == torch.float32 else {})
    x_ours = x.detach().clone().requires_grad_(x.requires_grad)
    x_ref = x.detach().clone().requires_grad_(x.requires_grad)
    for module in (ours, theirs):
        module.zero_grad(set_to_none=True)
    out, h = ours(x_ours)
    ref_out, ref_h = theirs(x_ref)
    torch.testing.assert_close(out, ref_out, **tol)
    h, ref_h = (h, ref_h) if isinstance(h, tuple) else ((h,), (ref_h,))
    for ours_state, ref_state in zip(h, ref_h, strict=True):
        torch.testing.assert_close(ours_state, ref_state, **tol)
    if not torch.is_grad_enabled() or not (
            x.requires_grad or any(p.requires_grad for p in ours.parameters())):
        return
    # a loss on the outputs and on every final state, weighted so no gradient is trivial
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward(retain_graph=True)
    sum(s.square().sum() for s in h).backward()
    (ref_out * weights).sum().backward(retain_graph=True)
    sum(s.square().sum() for s in ref_h).backward()
    if x.requires_grad:
        torch.testing.assert_close(x_ours.grad, x_ref.grad, **tol)
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, theirs_params[name].grad, **tol)
        else:
            assert param.grad is None


def _x(*shape, dtype=torch.float32, requires_grad=False):
    torch.manual_seed(1)
    return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)


X = _x(T, B, F)


def test_a_second_plain_call_runs_the_remembered_call(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    with torch.no_grad():
        _check(ours, theirs, X)
        _check(ours, theirs, X)
    assert ran == ["compiled", "prepared", "compiled", "prepared"]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind, kwargs", [
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("GRU", {}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"engine": "compiled"}),
    ("LSTM", {"engine": "compiled", "proj_size": 2, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {}),  # torch's fused kernel on CPU: the plan is remembered
    ("RNN", {"bias": False}),
    ("GRU", {"bias": False, "batch_first": True}),
    ("LSTM", {"engine": "compiled", "bias": False}),
])
def test_each_family_and_stack_matches_torch_on_the_remembered_call(kind, kwargs, ran):
    torch.manual_seed(0)
    ours = getattr(rnnkit, kind)(F, H, **kwargs)
    theirs = getattr(nn, kind)(F, H, **{k: v for k, v in kwargs.items() if k != "engine"})
    theirs.load_state_dict(ours.state_dict())
    x = X.transpose(0, 1).contiguous() if kwargs.get("batch_first") else X
    for _ in range(2):
        _check(ours, theirs, x.detach().requires_grad_())
    expected = "fused" if kind == "LSTM" and "engine" not in kwargs else "prepared"
    assert ran[-1] == expected and ran.count("compiled") <= len(ran) // 2


def test_multi_layer_dropout_in_training_is_drawn_at_every_call():
    torch.manual_seed(0)
    ours = rnnkit.GRU(F, H, num_layers=2, dropout=0.5)
    first, _ = ours(X)
    second, _ = ours(X)  # the remembered call draws its own dropout mask
    assert not torch.equal(first, second)
    ours.eval()
    theirs = nn.GRU(F, H, num_layers=2, dropout=0.5).eval()
    theirs.load_state_dict(ours.state_dict())
    _check(ours, theirs, X)
    _check(ours, theirs, X)


def test_parameter_replaced(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    new = torch.randn(H, H) * 0.3
    ours.weight_hh_l0 = nn.Parameter(new.clone())
    with torch.no_grad():
        theirs.weight_hh_l0.copy_(new)
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    # register_parameter writes the parameter dict directly (no attribute assignment)
    ours.register_parameter("bias_ih_l0", nn.Parameter(torch.full((H,), 0.25)))
    with torch.no_grad():
        theirs.bias_ih_l0.fill_(0.25)
    _check(ours, theirs, X)
    assert ran == ["compiled", "prepared", "compiled", "prepared", "compiled"]


def test_parameter_replaced_by_one_of_another_shape_is_refused():
    ours, _ = _pair()
    ours(X)
    ours(X)
    ours.weight_hh_l0.data = torch.randn(H, H - 1)  # same Parameter object, new shape
    with pytest.raises(ValueError, match=r"weight_hh has shape \(5, 4\)"):
        ours(X)


def test_weights_edited_in_place(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    for module in (ours, theirs):
        with torch.no_grad():
            module.weight_ih_l0.mul_(-0.5)
            module.bias_hh_l0.add_(0.3)
            module.weight_hh_l0[0].zero_()
    _check(ours, theirs, X)
    assert ran == ["compiled", "prepared", "prepared"]


def test_optimizer_steps_between_remembered_calls():
    """Training: each call reads the weights the optimizer just wrote."""
    ours, theirs = _pair()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs)]
    for _ in range(3):
        for module, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            out, h = module(X)
            (out.square().mean() + h.sum()).backward()
            opt.step()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_dtype_changed(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    ours.to(torch.float64)
    theirs.to(torch.float64)
    _check(ours, theirs, X.double())
    _check(ours, theirs, X.double())
    with pytest.raises(TypeError, match="input dtype"):
        ours(X)  # float32 input for float64 weights: refused as the first call refuses it
    assert ran == ["compiled", "prepared", "compiled", "prepared"]


def test_train_and_eval(ran):
    ours, theirs = _pair(num_layers=2, dropout=0.3)
    ours.eval()
    theirs.eval()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    ours.train()
    torch.manual_seed(5)
    out_train, _ = ours(X)
    torch.manual_seed(5)
    again, _ = ours(X)
    torch.testing.assert_close(out_train, again, rtol=0, atol=0)  # same draw, same result
    ours.eval()
    _check(ours, theirs, X)
    assert ran.count("prepared") >= 2


def test_requires_grad_toggled_on_a_parameter_and_on_the_input(ran):
    ours, theirs = _pair()
    for frozen, input_grad in ((False, False), (False, False), (True, False), (True, False),
                               (False, True), (False, True), (False, False)):
        for module in (ours, theirs):
            module.weight_hh_l0.requires_grad_(not frozen)
        _check(ours, theirs, _x(T, B, F, requires_grad=input_grad))
    # the last call's key is the first's, still remembered (_CallCache keeps the last few)
    assert ran == ["compiled", "prepared", "compiled", "prepared", "compiled", "prepared",
                   "prepared"]


def test_frozen_module_in_grad_mode_and_no_grad():
    ours, theirs = _pair()
    for module in (ours, theirs):
        module.requires_grad_(False)
    for _ in range(2):
        out, _ = ours(X)
        assert out.grad_fn is None
        _check(ours, theirs, _x(T, B, F, requires_grad=True))


@pytest.mark.parametrize("shape", [(T, B + 2, F), (T + 3, B, F), (T, B, F)])
def test_input_shape_changed(shape, ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    _check(ours, theirs, _x(*shape))
    _check(ours, theirs, _x(*shape))
    same = shape == (T, B, F)
    assert ran == ["compiled", "prepared"] + (["prepared"] * 2 if same
                                              else ["compiled", "prepared"])


def test_wrong_features_after_remembered_calls_still_raise():
    ours, _ = _pair()
    ours(X)
    ours(X)
    with pytest.raises(Exception, match="input_size"):
        ours(_x(T, B, F + 1))


def test_lengths_packed_hx_and_unbatched_between_plain_calls(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    lengths = torch.tensor([6, 3, 5, 1])
    packed = nn.utils.rnn.pack_padded_sequence(X, lengths, enforce_sorted=False)
    out, h = ours(packed)
    ref_out, ref_h = theirs(packed)
    torch.testing.assert_close(out.data, ref_out.data, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    out, h = ours(X, lengths=lengths)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    h0 = torch.randn(1, B, H)
    torch.testing.assert_close(ours(X, h0)[1], theirs(X, h0)[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(X[:, 0])[1], theirs(X[:, 0])[1], rtol=1e-5, atol=1e-5)
    _check(ours, theirs, X)
    assert ran[-1] == "prepared" and "prepared" not in ran[1:-1]


def test_module_and_cell_hooks(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    seen = []
    handle = ours.register_forward_hook(lambda module, args, out: seen.append(out[1].shape))
    _check(ours, theirs, X)
    handle.remove()
    assert seen == [torch.Size([1, B, H])]
    # a hook on a layer's cell runs once per step: the cell leaves the remembered call for
    # the loop (neither torch's fused kernel nor the compiled one calls it); once the hook
    # is removed the remembered call serves again
    cell = ours.step_cells()[0][1]
    steps = []
    handle = cell.register_forward_hook(lambda *args: steps.append(1))
    _check(ours, theirs, X)
    handle.remove()
    _check(ours, theirs, X)
    assert ran == ["compiled", "prepared", "loop", "prepared"]
    assert len(steps) == T


def test_parametrized_module_is_never_remembered():
    """weight_norm recomputes the weight at every read (and makes a submodule): every call
    is planned afresh and follows the parametrization's parameters."""
    ours, theirs = _pair()
    nn.utils.parametrizations.weight_norm(ours, "weight_hh_l0")
    for _ in range(2):
        with torch.no_grad():
            ours.parametrizations.weight_hh_l0.original0.mul_(0.5)
            theirs.weight_hh_l0.copy_(ours.weight_hh_l0)
        out, h = ours(X)
        ref_out, ref_h = theirs(X)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)


def test_options_assigned_between_calls(ran):
    ours, theirs = _pair()
    _check(ours, theirs, X)
    _check(ours, theirs, X)
    ours.engine = "loop"
    _check(ours, theirs, X)
    ours.engine = "auto"
    ours.batch_first = True
    theirs.batch_first = True
    _check(ours, theirs, X.transpose(0, 1))
    _check(ours, theirs, X.transpose(0, 1))
    assert ran == ["compiled", "prepared", "loop", "compiled", "prepared"]


def test_functional_call_and_copies(ran):
    ours, theirs = _pair()
    ours(X)
    ours(X)
    params = {k: v * 0.5 for k, v in ours.named_parameters()}
    out, h = torch.func.functional_call(ours, params, (X,))
    ref_out, ref_h = torch.func.functional_call(theirs, params, (X,))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    _check(ours, theirs, X)  # the module's own parameters again
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        _check(clone, theirs, X)
        _check(clone, theirs, X)


def test_vmap_over_a_remembered_call():
    ours, theirs = _pair()
    ours(X[:, 0])
    ours(X[:, :1])
    ours(X[:, :1])
    out = torch.func.vmap(lambda x: ours(x[:, None])[0][:, 0], in_dims=1)(X)
    ref = torch.stack([theirs(X[:, b:b + 1])[0][:, 0] for b in range(B)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t, b, f, h", [(1, 1, 1, 1), (1, 3, 2, 1), (4, 1, 2, 3), (1, 2, 3, 4)])
def test_tiny_sizes(t, b, f, h):
    torch.manual_seed(0)
    for kind in ("RNN", "GRU"):
        ours = getattr(rnnkit, kind)(f, h)
        theirs = getattr(nn, kind)(f, h)
        theirs.load_state_dict(ours.state_dict())
        for _ in range(2):
            _check(ours, theirs, _x(t, b, f, requires_grad=True))


def test_gradcheck_on_the_remembered_call(ran):
    torch.manual_seed(0)
    ours = rnnkit.RNN(2, 3, nonlinearity="tanh", num_layers=2, bidirectional=True,
                      dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in ours.named_parameters()]

    def call(x, *params):
        out, h = torch.func.functional_call(ours, dict(zip(names, params, strict=True)), (x,))
        return out, h

    def plain(x):
        return ours(x)

    plain(x)
    torch.autograd.gradcheck(plain, (x,))
    assert ran.count("prepared") >= 1
    torch.autograd.gradcheck(call, (x, *[p.detach().requires_grad_() for p in
                                         ours.parameters()]))
    torch.autograd.gradgradcheck(plain, (x,))


@pytest.mark.parametrize("frozen", [("bias_ih_l0",), ("bias_hh_l0",), ("weight_ih_l0",),
                                    ("bias_ih_l0", "bias_hh_l0", "weight_ih_l0")])
def test_projection_operands_frozen_one_at_a_time(frozen, ran):
    """The projection's weight and both biases are inputs of the recurrence's autograd
    node: each gets its gradient (or none) on its own."""
    ours, theirs = _pair()
    for module in (ours, theirs):
        for name in frozen:
            getattr(module, name).requires_grad_(False)
    for _ in range(2):
        _check(ours, theirs, _x(T, B, F, requires_grad=True))
    assert ran == ["compiled", "prepared"]


def test_vectorized_jacobian_through_the_remembered_call(ran):
    """A vmapped backward (jacobian(vectorize=True)) takes the differentiable path."""
    ours, theirs = _pair(dtype=torch.float64)
    x = _x(3, 2, F, dtype=torch.float64)
    ours(x.clone().requires_grad_())
    jac = torch.autograd.functional.jacobian(lambda v: ours(v)[1], x, vectorize=True)
    ref = torch.autograd.functional.jacobian(lambda v: theirs(v)[1], x, vectorize=True)
    torch.testing.assert_close(jac, ref)
    assert ran == ["compiled", "prepared"]


def test_projection_gradients_of_gradients_match_torch(ran):
    """create_graph=True through the remembered call: a gradient penalty's gradient."""
    ours, theirs = _pair(kind="GRU", dtype=torch.float64)
    x = _x(T, B, F, dtype=torch.float64)
    results = []
    for module in (ours, ours, theirs):
        module.zero_grad(set_to_none=True)
        _, h = module(x)
        grads = torch.autograd.grad(h.square().sum(), list(module.parameters()),
                                    create_graph=True)
        sum(g.square().sum() for g in grads).backward()
        results.append([p.grad for p in module.parameters()])
    assert ran == ["compiled", "prepared"]
    for ours_grads in results[:2]:
        for a, b in zip(ours_grads, results[2], strict=True):
            torch.testing.assert_close(a, b)


def test_calls_in_turns_with_different_keys_are_each_remembered(ran):
    # a training step with gradients and an evaluation under no_grad, in turns: both are
    # remembered (each used to forget the other, and every call was planned afresh)
    ours, theirs = _pair()
    for _ in range(3):
        _check(ours, theirs, X)
        with torch.no_grad():
            _check(ours, theirs, X)
    assert ran == ["compiled", "compiled"] + ["prepared"] * 4


def test_the_oldest_remembered_call_goes_first(ran):
    from rnnkit.layers.rnn import _CallCache

    ours, theirs = _pair()
    batches = [_x(T, b, F) for b in range(1, _CallCache.capacity + 2)]
    for x in batches:  # one more key than the cache keeps: the first is forgotten
        _check(ours, theirs, x)
    ran.clear()
    for x in reversed(batches[1:]):
        _check(ours, theirs, x)
    _check(ours, theirs, batches[0])
    assert ran == ["prepared"] * _CallCache.capacity + ["compiled"]
    # any assignment forgets them all
    ours.train()
    ran.clear()
    _check(ours, theirs, batches[1])
    assert ran == ["compiled"]
