"""rnnkit.training.keras_crossentropy against Keras's formula written out op by op in torch
(softmax, normalise, clip, log, weighted sum: autograd gives its gradient), against Keras 3
itself where installed, and by gradcheck."""

from __future__ import annotations

import os

import pytest
import torch

from rnnkit.engine import compiled
from rnnkit.errors import ShapeError
from rnnkit.training import keras_crossentropy
from rnnkit.training import keras_loss as module
from tests.helpers import assert_doctests_pass


@pytest.fixture(autouse=True, params=["compiled", "torch ops"])
def path(request, monkeypatch):
    """Every test runs on both forms: the C++ node and the Python Function."""
    if request.param == "compiled":
        if compiled.extension() is None:
            pytest.skip(f"compiled kernels unavailable: {compiled.available()[1]}")
        monkeypatch.setattr(module._KerasCrossEntropy, "apply", _refused)
    else:
        monkeypatch.setattr(module, "_kernels", lambda: None)
    return request.param


def _refused(*args):
    raise AssertionError("the Python Function ran where the C++ node should")


def keras_formula(logits, target, epsilon=1e-7):
    """keras/src/backend/torch/nn.py categorical_crossentropy(from_logits=False) on a
    softmax, mean over samples (Keras's sum_over_batch_size)."""
    classes = logits.shape[-1]
    p = torch.softmax(logits.reshape(-1, classes), -1)
    p = p / p.sum(-1, keepdim=True)
    p = torch.clip(p, epsilon, 1.0 - epsilon)
    if not target.is_floating_point():
        target = torch.nn.functional.one_hot(target.reshape(-1).long(), classes).to(logits.dtype)
    return -(target.reshape(-1, classes) * torch.log(p)).sum(-1).mean()


def _both(logits, target, **options):
    a = logits.detach().clone().requires_grad_(True)
    b = logits.detach().clone().requires_grad_(True)
    ours, theirs = keras_crossentropy(a, target, **options), keras_formula(b, target, **options)
    ours.backward()
    theirs.backward()
    return ours, theirs, a.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,C", [(1, 1), (1, 2), (7, 3), (100, 10)])
def test_ids_equal_keras_formula(dtype, N, C):
    torch.manual_seed(N * 10 + C)
    logits = torch.randn(N, C, dtype=dtype) * 3
    target = torch.randint(0, C, (N,))
    ours, theirs, g, g_ref = _both(logits, target)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_targets_and_leading_axes_equal_keras_formula(dtype):
    torch.manual_seed(1)
    logits = torch.randn(4, 5, 6, dtype=dtype) * 2               # (..., C): 20 samples
    target = torch.softmax(torch.randn(4, 5, 6, dtype=dtype), -1)
    ours, theirs, g, g_ref = _both(logits, target)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol)
    ids = torch.randint(0, 6, (4, 5))                            # (...) ids as well
    ours, theirs, g, g_ref = _both(logits, ids)
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol)


def test_clipped_samples_give_no_gradient_as_in_keras():
    """Confidently right (p > 1 - eps) and confidently wrong (p < eps) samples: Keras's clip
    stops their gradient; torch's cross_entropy would not."""
    logits = torch.tensor([[40.0, 0.0, 0.0], [0.0, 40.0, 0.0], [1.0, 0.5, 0.0]])
    target = torch.tensor([0, 0, 2])                     # right, wrong, ordinary
    ours, theirs, g, g_ref = _both(logits, target)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g, g_ref)
    assert g[:2].abs().max() == 0 and g[2].abs().min() > 0
    leaf = logits.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(leaf, target).backward()
    assert leaf.grad[1].abs().max() > 0.1                # torch: the wrong sample still pulls


@pytest.mark.parametrize("ids", [True, False])
def test_gradcheck(ids):
    torch.manual_seed(2)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = (torch.randint(0, 4, (5,)) if ids
              else torch.softmax(torch.randn(5, 4, dtype=torch.float64), -1))
    assert torch.autograd.gradcheck(lambda z: keras_crossentropy(z, target), (logits,))
    # the gradient is written out, not recorded: a second derivative is refused, not wrong
    with pytest.raises(RuntimeError, match="does not require grad|gradients of gradients"):
        (g,) = torch.autograd.grad(keras_crossentropy(logits, target), logits,
                                   create_graph=True)
        g.sum().backward()


def test_clip_bound_is_the_dtype_rounded_one():
    """float32 rounds 1 - 1e-7 to 0.99999988: a sample at p = 0.9999999 is clipped there and
    gives no gradient (as Keras on float32), not so in float64."""
    z = torch.tensor([[16.0, 0.0]])          # p(0) = 1 - 1.13e-7: between the two roundings
    for dtype, clipped in ((torch.float32, True), (torch.float64, False)):
        logits = z.to(dtype).detach().requires_grad_(True)
        keras_crossentropy(logits, torch.tensor([0])).backward()
        assert (logits.grad.abs().max() == 0) == clipped, dtype


def test_bad_input_is_named():
    logits = torch.randn(3, 4)
    with pytest.raises(ShapeError, match=r"class ids must be integers of shape \(3,\)"):
        keras_crossentropy(logits, torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="probability targets must have the logits' shape"):
        keras_crossentropy(logits, torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\), got values from 0 to 4"):
        keras_crossentropy(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\)"):
        keras_crossentropy(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        keras_crossentropy(torch.ones(3, 4, dtype=torch.int64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="epsilon must be in"):
        keras_crossentropy(logits, torch.tensor([0, 1, 2]), epsilon=0.0)
    with pytest.raises(ValueError, match="no gradient flows to it"):
        keras_crossentropy(logits, torch.rand(3, 4, requires_grad=True))
    with pytest.raises(ShapeError, match="no samples"):
        keras_crossentropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.int64))


def test_equals_keras_itself():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, this test needs torch")
    torch.manual_seed(3)
    logits = torch.randn(50, 10) * 4
    logits[0, 3] = 40.0                                   # one sample beyond the clip
    target = torch.randint(0, 10, (50,))
    z = logits.clone().requires_grad_(True)
    probabilities = torch.softmax(z, -1)
    theirs = keras.losses.SparseCategoricalCrossentropy()(target, probabilities)
    theirs.backward()
    mine = logits.clone().requires_grad_(True)
    ours = keras_crossentropy(mine, target)
    ours.backward()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.grad, z.grad, rtol=1e-5, atol=1e-7)


def test_doctests():
    assert_doctests_pass("rnnkit.training.keras_loss")


def test_strided_logits_and_int32_ids_equal_keras_formula():
    """A transposed (non-contiguous) logits view and int32 class ids give what contiguous
    logits and int64 ids give."""
    torch.manual_seed(4)
    base = torch.randn(6, 9, dtype=torch.float64)            # (C, N) in memory
    logits = base.t()                                        # (N, C) view, strides (1, 9)
    target = torch.randint(0, 6, (9,), dtype=torch.int32)
    ours, theirs, g, g_ref = _both(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
