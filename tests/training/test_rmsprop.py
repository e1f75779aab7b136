"""rnnkit.training.RMSprop: Keras's formula, against a NumPy oracle and against Keras itself."""

from __future__ import annotations

import copy
import io
import os

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.training import RMSprop, Trainer

SHAPES = [(4, 3), (4,), (2, 5, 3), (1,)]
STEPS = 20


def random_gradients(seed: int, steps: int = STEPS) -> list[list[np.ndarray]]:
    """Gradients of mixed scales, some exactly zero (where Keras and torch part most)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        grads = [rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 1) for shape in SHAPES]
        grads[1][rng.random(SHAPES[1]) < 0.3] = 0.0
        out.append(grads)
    return out


def initial_values(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return [rng.standard_normal(shape) for shape in SHAPES]


def numpy_keras_rmsprop(values, grads_per_step, lr, rho, momentum, epsilon, centered):
    """Keras's ``RMSprop.update_step`` written from its formula, in float64 NumPy."""
    values = [v.copy() for v in values]
    velocity = [np.zeros_like(v) for v in values]
    average = [np.zeros_like(v) for v in values]
    moment = [np.zeros_like(v) for v in values]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            velocity[i] = rho * velocity[i] + (1 - rho) * g * g
            if centered:
                average[i] = rho * average[i] + (1 - rho) * g
                denominator = velocity[i] - average[i] ** 2 + epsilon
            else:
                denominator = velocity[i] + epsilon
            increment = lr * g / np.sqrt(denominator)
            if momentum > 0:
                moment[i] = momentum * moment[i] + increment
                values[i] -= moment[i]
            else:
                values[i] -= increment
    return values


def run_ours(values, grads_per_step, dtype=torch.float64, **options):
    params = [nn.Parameter(torch.tensor(v, dtype=dtype)) for v in values]
    optimizer = RMSprop(params, **options)
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
    return params, optimizer


CASES = [
    {"learning_rate": 0.01, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
    {"learning_rate": 0.003, "rho": 0.8, "momentum": 0.7, "epsilon": 1e-6, "centered": False},
    {"learning_rate": 0.01, "rho": 0.95, "momentum": 0.0, "epsilon": 1e-7, "centered": True},
    {"learning_rate": 0.02, "rho": 0.5, "momentum": 0.9, "epsilon": 1e-5, "centered": True},
]


@pytest.mark.parametrize("options", CASES, ids=["plain", "momentum", "centered", "both"])
def test_matches_a_numpy_oracle_of_keras_formula(options):
    values, grads = initial_values(0), random_gradients(0)
    want = numpy_keras_rmsprop(values, grads, options["learning_rate"], options["rho"],
                               options["momentum"], options["epsilon"], options["centered"])
    got, _ = run_ours(values, grads, **options)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-12, atol=1e-14)


def test_differs_from_torch_rmsprop_where_the_epsilon_sits():
    """A tiny constant gradient: Keras's step is lr * g / sqrt(g^2 + eps) (tiny), torch's
    lr * g / (|g| + eps) (about lr): the reason this optimizer exists."""
    g = 1e-6
    ours, torch_param = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    ours.grad, torch_param.grad = torch.full((1,), g), torch.full((1,), g)
    RMSprop([ours], lr=0.01).step()
    torch.optim.RMSprop([torch_param], lr=0.01, alpha=0.9, eps=1e-7).step()
    np.testing.assert_allclose(-ours.item(), 0.01 * g / np.sqrt(0.1 * g * g + 1e-7), rtol=1e-5)
    assert -ours.item() < 1e-4 < 0.01 * 0.5 < -torch_param.item()


def test_defaults_are_keras_and_lr_is_learning_rate():
    optimizer = RMSprop([nn.Parameter(torch.zeros(1))])
    group = optimizer.param_groups[0]
    assert (group["lr"], group["rho"], group["momentum"], group["epsilon"], group["centered"]) \
        == (0.001, 0.9, 0.0, 1e-7, False)
    assert RMSprop([nn.Parameter(torch.zeros(1))], lr=0.5).param_groups[0]["lr"] == 0.5
    assert RMSprop([nn.Parameter(torch.zeros(1))], 0.25).param_groups[0]["lr"] == 0.25


def keras_backend_torch():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, this test needs torch")
    return keras


@pytest.mark.parametrize("options", CASES, ids=["plain", "momentum", "centered", "both"])
def test_matches_keras_rmsprop_itself(options):
    keras = keras_backend_torch()
    values, grads = initial_values(1), random_gradients(1)
    variables = [keras.Variable(v.astype(np.float32)) for v in values]
    keras_optimizer = keras.optimizers.RMSprop(**options)
    for step in grads:
        keras_optimizer.apply_gradients([(torch.tensor(g, dtype=torch.float32), var)
                                         for g, var in zip(step, variables, strict=True)])
    got, _ = run_ours(values, grads, dtype=torch.float32, **options)
    for ours, theirs in zip(got, variables, strict=True):
        # the same ops in the same order: bit-equal on the machines we ran (fused
        # multiply-adds in the vectorised kernels may round otherwise elsewhere)
        np.testing.assert_allclose(ours.detach().numpy(), theirs.value.detach().numpy(),
                                   rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_resumes_identically():
    values, grads = initial_values(2), random_gradients(2)
    options = {"lr": 0.01, "momentum": 0.5, "centered": True}
    straight, _ = run_ours(values, grads, **options)

    first, optimizer = run_ours(values, grads[:8], **options)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "opt": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [nn.Parameter(t.clone()) for t in saved["params"]]
    fresh = RMSprop(resumed, lr=0.3)                  # the state dict brings lr back too
    fresh.load_state_dict(saved["opt"])
    assert fresh.param_groups[0]["lr"] == 0.01
    assert set(fresh.state[resumed[0]]) == {"velocity", "momentum", "average_gradient"}
    for step in grads[8:]:
        for p, g in zip(resumed, step, strict=True):
            p.grad = torch.tensor(g)
        fresh.step()
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_state_dict_holds_the_live_state_and_loading_replaces_it():
    values, grads = initial_values(3), random_gradients(3, steps=3)
    params, optimizer = run_ours(values, grads)
    velocity = optimizer.state_dict()["state"][0]["velocity"]
    want = sum((1 - 0.9) * 0.9 ** (2 - k) * grads[k][0] ** 2 for k in range(3))
    np.testing.assert_allclose(velocity.numpy(), want, rtol=1e-12)
    # a loaded state is the one the next step uses
    snapshot = copy.deepcopy(optimizer.state_dict())
    for state in snapshot["state"].values():
        state["velocity"].fill_(4.0)
    optimizer.load_state_dict(snapshot)
    before = params[0].detach().clone()
    params[0].grad = torch.full_like(params[0], 2.0)
    optimizer.step()
    step = 0.001 * 2.0 / np.sqrt(0.9 * 4.0 + 0.1 * 4.0 + 1e-7)
    np.testing.assert_allclose((before - params[0]).detach().numpy(), step, rtol=1e-12)


def test_a_deep_copy_continues_like_the_original():
    values, grads = initial_values(4), random_gradients(4, steps=6)
    params, optimizer = run_ours(values, grads[:3], momentum=0.5)
    twin = copy.deepcopy({"params": params, "optimizer": optimizer})
    for step in grads[3:]:
        for p, q, g in zip(params, twin["params"], step, strict=True):
            p.grad, q.grad = torch.tensor(g), torch.tensor(g)
        optimizer.step()
        twin["optimizer"].step()
    for a, b in zip(params, twin["params"], strict=True):
        assert torch.equal(a, b)


def test_groups_dtypes_missing_gradients_and_schedulers():
    a = nn.Parameter(torch.ones(3, dtype=torch.float64))
    b = nn.Parameter(torch.ones(2, dtype=torch.float32))
    c = nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = RMSprop([{"params": [a, b]}, {"params": [c], "lr": 0.5, "centered": True}],
                        lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    a.grad, b.grad = torch.full((3,), 1.0, dtype=torch.float64), torch.full((2,), 1.0)
    optimizer.step()                                   # c has no gradient: untouched
    scheduler.step()
    assert torch.equal(c, torch.ones(2, dtype=torch.float64)) and c not in optimizer.state
    c.grad = torch.full((2,), 3.0, dtype=torch.float64)
    optimizer.step()                                   # lr halved by the scheduler
    first = 0.1 / np.sqrt(0.1 + 1e-7)
    second = 0.05 / np.sqrt(0.19 + 1e-7)
    np.testing.assert_allclose(a.detach().numpy(), 1 - first - second, rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), 1 - first - second, rtol=1e-6)
    # centered, one step of g = 3: v = 0.9, a = 0.3, d = 0.9 - 0.09 + eps
    np.testing.assert_allclose(c.detach().numpy(), 1 - 0.25 * 3 / np.sqrt(0.81 + 1e-7),
                               rtol=1e-12)


def test_step_hooks_and_closure_run():
    p = nn.Parameter(torch.tensor([1.0]))
    optimizer = RMSprop([p], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))

    def closure():
        optimizer.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 1.0
    assert calls == ["pre", "post"]
    assert p.item() < 1.0


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"lr": -0.1}, ValueError, "learning_rate must be >= 0"),
    ({"lr": float("nan")}, ValueError, "must be finite"),
    ({"lr": "0.1"}, TypeError, "learning_rate must be a real number"),
    ({"rho": 1.0}, ValueError, "rho"),
    ({"rho": -0.1}, ValueError, r"rho .* in \[0, 1\)"),
    ({"momentum": -0.5}, ValueError, "momentum must be in"),
    ({"momentum": 1.0}, ValueError, "momentum must be in"),
    ({"epsilon": 0.0}, ValueError, "epsilon must be > 0"),
    ({"centered": 1}, TypeError, "centered must be True or False"),
    ({"lr": 0.1, "learning_rate": 0.1}, TypeError, "not both"),
])
def test_bad_arguments_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        RMSprop([nn.Parameter(torch.zeros(1))], **kwargs)


def test_bad_param_group_override_is_named():
    with pytest.raises(ValueError, match="rho"):
        RMSprop([{"params": [nn.Parameter(torch.zeros(1))], "rho": 2.0}])


def test_sparse_gradients_are_refused():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = RMSprop(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients .* shape \\(10, 3\\)"):
        optimizer.step()


def test_complex_parameters_are_refused():
    p = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    p.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        RMSprop([p]).step()


def test_trainer_builds_it_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    trainer = Trainer(model, loss="mse", optimizer="rmsprop_keras", lr=0.01, verbose=False)
    assert isinstance(trainer.optimizer, rnnkit.training.RMSprop)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert type(Trainer(model, optimizer="rmsprop", verbose=False).optimizer) \
        is torch.optim.RMSprop
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    history = trainer.fit((x, y), epochs=5, batch_size=16)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_zero_grad_as_torch_optimizers():
    """Default: every gradient becomes None; set_to_none=False zeroes them in place, as
    torch.optim.Optimizer.zero_grad does (compared on the same parameters)."""
    def grads_after(optimizer_class, set_to_none, **options):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2)),
                  torch.nn.Parameter(torch.randn(1))]
        (params[0].sum() + params[1].pow(2).sum()).backward()   # params[2] gets no grad
        kept = params[0].grad
        optimizer = optimizer_class(params, lr=0.1, **options)
        if set_to_none is None:
            optimizer.zero_grad()
        else:
            optimizer.zero_grad(set_to_none=set_to_none)
        return [p.grad for p in params], kept

    for set_to_none in (None, True, False):
        ours, ours_kept = grads_after(RMSprop, set_to_none)
        theirs, theirs_kept = grads_after(torch.optim.RMSprop, set_to_none)
        for a, b in zip(ours, theirs, strict=True):
            assert (a is None) == (b is None), set_to_none
            if a is not None:
                torch.testing.assert_close(a, b)
        if set_to_none is False:
            assert ours[0] is ours_kept and ours[0].abs().max() == 0   # in place


def _steps_on(path, monkeypatch, dtype, sizes, options, steps=6):
    """Parameters after ``steps`` updates with the compiled step or the torch-op step."""
    from rnnkit.training import rmsprop as module

    if path == "torch ops":
        monkeypatch.setattr(module, "_kernels", lambda: None)
    else:
        from rnnkit.engine import compiled

        if compiled.extension() is None:
            pytest.skip(f"compiled kernels unavailable: {compiled.available()[1]}")
        monkeypatch.setattr(module, "_kernels", compiled.extension)
    g = torch.Generator().manual_seed(5)
    params = [nn.Parameter(torch.randn(n, generator=g, dtype=dtype)) for n in sizes]
    optimizer = RMSprop(params, **options)
    for _ in range(steps):
        for p in params:   # mixed scales and exact zeros, as random_gradients
            grad = torch.randn(p.shape, generator=g, dtype=dtype) * 10.0 ** float(
                torch.empty(1).uniform_(-6, 1, generator=g))
            p.grad = grad * (torch.rand(p.shape, generator=g) > 0.2)
        optimizer.step()
    monkeypatch.undo()
    state = [optimizer.state[p][k].clone() for p in params for k in sorted(optimizer.state[p])]
    return [p.detach().clone() for p in params], state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", CASES, ids=["plain", "momentum", "centered", "both"])
def test_compiled_step_equals_the_torch_op_step_to_the_bit(monkeypatch, dtype, options):
    """The one-pass C++ update rounds where the op-by-op form rounds (torch's add with
    alpha is a fused multiply-add, every other product is rounded): equal bits, on sizes
    that leave vector tails (1, 17, 33) and one above the parallel grain."""
    sizes = [1, 17, 33, 40000]
    ours, our_state = _steps_on("compiled", monkeypatch, dtype, sizes, options)
    theirs, their_state = _steps_on("torch ops", monkeypatch, dtype, sizes, options)
    for a, b in zip(ours + our_state, theirs + their_state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_step_changes_parameters_in_place_as_autograd_sees_it():
    """A graph that saved a parameter refuses a backward after the step (as after any torch
    optimizer's in-place update), instead of using the new values silently."""
    w = nn.Parameter(torch.randn(3))
    x = torch.randn(3, requires_grad=True)
    (w * x).sum().backward(retain_graph=False)
    saved = (w * x).sum()              # saves w for x's gradient
    RMSprop([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_steps_the_compiled_pass_leaves_to_torch_ops():
    """bfloat16 parameters and a tensor learning rate (set by hand after construction) take
    the torch-op step; both still follow Keras's formula (the NumPy oracle, float64)."""
    values, grads = initial_values(3), random_gradients(3, steps=3)
    want = numpy_keras_rmsprop(values, grads, 0.01, 0.9, 0.0, 1e-7, False)
    params = [nn.Parameter(torch.tensor(v, dtype=torch.bfloat16)) for v in values]
    optimizer = RMSprop(params, lr=0.01)
    tensor_lr = [nn.Parameter(torch.tensor(v)) for v in values]
    optimizer_tensor_lr = RMSprop(tensor_lr, lr=0.01)
    optimizer_tensor_lr.param_groups[0]["lr"] = torch.tensor(0.01, dtype=torch.float64)
    for step in grads:
        for p, q, g in zip(params, tensor_lr, step, strict=True):
            p.grad = torch.tensor(g, dtype=torch.bfloat16)
            q.grad = torch.tensor(g)
        optimizer.step()
        optimizer_tensor_lr.step()
    for p, q, w in zip(params, tensor_lr, want, strict=True):
        np.testing.assert_allclose(p.detach().double().numpy(), w, rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(q.detach().numpy(), w, rtol=1e-12, atol=1e-14)
