"""Keras's categorical cross-entropy on a softmax output, from the logits, as one autograd node.

A Keras classifier ends in ``Dense(C)`` + softmax and trains on
``categorical_crossentropy`` (one-hot targets) or ``sparse_categorical_crossentropy``
(class ids). Keras 3 computes that loss on the *probabilities*
(``keras/src/backend/torch/nn.py``)::

    p    = softmax(z)                          # (N, C), z the logits
    p    = clip(p / sum(p), eps, 1 - eps)      # eps = 1e-7, keras.backend.epsilon()
    loss = mean over N of  -sum_c t_c * log(p_c)

``torch.nn.functional.cross_entropy`` has no clip. The clip matters in training: a sample
predicted beyond ``1 - eps`` (right) or below ``eps`` (wrong) gives *no* gradient in Keras,
and the full gradient in torch. This function is Keras's loss, clip included, so a model ported
from Keras follows the same path (with :class:`rnnkit.training.RMSprop`, Keras's optimizer).

It clips the log-probabilities at ``log(eps)`` and ``log(1 - eps)`` (in the logits' dtype),
which is Keras's clip of the probabilities up to the rounding of ``log``. The gradient is
written out rather than recorded op by op: one autograd node instead of five
(log_softmax, gather, clamp, mean, neg). Where rnnkit's compiled extension is built that node
is C++ (``csrc/keras_loss.cpp``: one call forward, one backward), else a Python
``autograd.Function`` on torch ops (which costs about what the five nodes cost: Python's
apply and backward are the price). With ``m_c`` 1 where ``log p_c`` lies inside the bounds
(inclusive, as torch's clip)::

    d loss / d z_j = (1 / N) * ( p_j * sum_c t_c m_c  -  t_j m_j )

Shapes: ``logits (N, C)`` (or ``(..., C)``, flattened), ``target`` class ids ``(N,)``
(integers in ``[0, C)``) or probabilities / one-hot ``(N, C)`` of the logits' dtype.

Example:
    >>> import torch
    >>> z = torch.tensor([[2.0, 0.0, -1.0], [30.0, 0.0, 0.0]], requires_grad=True)
    >>> loss = keras_crossentropy(z, torch.tensor([0, 0]))
    >>> loss.backward()
    >>> z.grad[1].abs().max().item()    # p = 1 - 1e-13 > 1 - eps: clipped, no gradient
    0.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.engine import compiled
from rnnkit.errors import ShapeError

__all__ = ["keras_crossentropy"]

_BOUNDS: dict[tuple[float, torch.dtype], tuple[float, float]] = {}
_COMPILED_DTYPES = (torch.float32, torch.float64)


# The compiled extension (the loss as one C++ node), or None: the Python Function. A name of
# this module's own, so that tests can take either path.
_kernels = compiled.extension


def _bounds(epsilon: float, dtype: torch.dtype) -> tuple[float, float]:
    """``(log(eps), log(1 - eps))`` with ``1 - eps`` rounded to ``dtype`` as Keras's clip
    rounds it (float32: 1 - 1e-7 is 0.99999988)."""
    key = (epsilon, dtype)
    if key not in _BOUNDS:
        high = float(torch.tensor(1.0 - epsilon, dtype=dtype))
        _BOUNDS[key] = (math.log(epsilon), math.log(high))
    return _BOUNDS[key]


class _KerasCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, low: float, high: float) -> Tensor:
        log_p = torch.log_softmax(logits, -1)                          # (N, C)
        ids = target.dim() == 1
        picked = log_p.gather(1, target[:, None]) if ids else log_p    # (N, 1) or (N, C)
        clipped = picked.clamp(low, high)
        inside = (picked >= low) & (picked <= high)                    # where the clip passes
        if ids:
            loss = clipped.mean().neg()
        else:
            loss = (target * clipped).sum().div(log_p.shape[0]).neg()
        ctx.save_for_backward(log_p, target, inside)
        return loss

    @staticmethod
    @once_differentiable    # the gradient is written out: no graph to differentiate again
    def backward(ctx, grad: Tensor):
        log_p, target, inside = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        scale = grad / log_p.shape[0]
        p = log_p.exp()                                                # (N, C)
        if target.dim() == 1:     # one-hot t: sum_c t_c m_c = m_y
            weight = inside.to(p.dtype) * scale                        # (N, 1)
            d_logits = p.mul_(weight).scatter_add_(1, target[:, None], weight.neg())
        else:
            held = target * inside * scale                             # (N, C): t_c m_c / N
            d_logits = p.mul_(held.sum(1, keepdim=True)).sub_(held)
        return d_logits, None, None, None


def keras_crossentropy(logits: Tensor, target: Tensor, epsilon: float = 1e-7) -> Tensor:
    """Keras's ``(sparse_)categorical_crossentropy`` of ``softmax(logits)``, mean over samples.

    Args:
        logits: ``(N, C)`` or ``(..., C)``, floating point: the layer *before* the softmax.
        target: class ids ``(N,)`` / ``(...)``, or class probabilities of the logits' shape.
        epsilon: Keras's clip, ``keras.backend.epsilon()`` (1e-7); > 0 and < 0.5.

    Returns:
        The scalar loss; its gradient is Keras's (zero for samples the clip holds).
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError(f"keras_crossentropy: logits must be a floating-point tensor (..., C), "
                        f"got {_describe(logits)}")
    if not isinstance(target, Tensor):
        raise TypeError(f"keras_crossentropy: target must be a tensor, got {_describe(target)}")
    if target.requires_grad:
        raise ValueError("keras_crossentropy: the target requires grad, but no gradient flows "
                         "to it (Keras's targets are data); pass target.detach()")
    if not 0.0 < epsilon < 0.5:
        raise ValueError(f"keras_crossentropy: epsilon must be in (0, 0.5), got {epsilon!r}")
    classes = logits.shape[-1]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ShapeError(f"keras_crossentropy: probability targets must have the logits' "
                             f"shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        target = target.to(logits.dtype).reshape(-1, classes)
    else:
        if target.dtype == torch.bool or target.shape != logits.shape[:-1]:
            raise ShapeError(f"keras_crossentropy: class ids must be integers of shape "
                             f"{tuple(logits.shape[:-1])} (the logits' {tuple(logits.shape)} "
                             f"without the class axis), got {target.dtype} "
                             f"{tuple(target.shape)}")
        if target.dim() != 1 or target.dtype != torch.int64:
            target = target.reshape(-1).long()
    if target.shape[0] == 0:
        raise ShapeError("keras_crossentropy: no samples (the logits' leading size is 0)")
    low, high = _bounds(float(epsilon), logits.dtype)
    flat = logits if logits.dim() == 2 else logits.reshape(-1, classes)  # (N, C)
    ext = _kernels() if flat.device.type == "cpu" and flat.dtype in _COMPILED_DTYPES else None
    try:
        if ext is not None:   # one C++ node (csrc/keras_loss.cpp)
            return ext.keras_crossentropy(flat, target, low, high)
        return _KerasCrossEntropy.apply(flat, target, low, high)
    except (IndexError, RuntimeError) as error:
        if "out of bounds" in str(error):   # gather's (or the kernel's) bad class id
            raise ValueError(f"keras_crossentropy: class ids must lie in [0, {classes}), got "
                             f"values from {int(target.min())} to {int(target.max())}"
                             ) from error
        raise


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
