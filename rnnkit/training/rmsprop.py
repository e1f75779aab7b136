"""Keras's RMSprop as a ``torch.optim.Optimizer``: the same update, bit for bit on float32.

``keras.optimizers.RMSprop`` and ``torch.optim.RMSprop`` share a name, not a formula. With
``g`` the gradient, ``v`` the running mean of ``g**2`` (``velocity``), ``a`` the running mean of
``g`` (centered only), ``m`` the momentum buffer, ``lr`` the learning rate::

    v <- rho * v + (1 - rho) * g**2
    a <- rho * a + (1 - rho) * g                       # centered=True only
    d  = v + epsilon           (centered: d = v - a**2 + epsilon)
    u  = lr * g / sqrt(d)
    m <- momentum * m + u;  p <- p - m                 # momentum > 0
    p <- p - u                                         # momentum == 0

The one-line difference from ``torch.optim.RMSprop``: Keras divides by
``sqrt(v + epsilon)``, torch by ``sqrt(v) + eps``. With Keras's default ``epsilon=1e-7`` the
denominator never falls below ``sqrt(1e-7) = 3.2e-4``, so a near-zero gradient moves a weight by
at most ``lr * g / 3.2e-4``; torch's floor is ``1e-7`` and a near-zero gradient divided by its own
near-zero RMS takes a near-full ``lr`` step (``torch.optim.RMSprop(alpha=rho, eps=epsilon)`` is
therefore *not* Keras's optimizer, whatever the arguments). Momentum differs too: Keras's buffer
holds ``lr``-scaled steps (``m <- momentum * m + lr * g / sqrt(d)``), torch's holds unscaled
ones and multiplies by the current ``lr`` when it applies them; the two agree while ``lr`` is
constant.

Names and defaults are Keras's: ``learning_rate=0.001`` (``lr`` is accepted as torch's alias and
is the param-group key that torch schedulers change), ``rho=0.9``, ``momentum=0.0``,
``epsilon=1e-7``, ``centered=False``. The step runs the elementwise ops of Keras's torch
backend (``keras/src/backend/torch/optimizers/torch_rmsprop.py``) in Keras's order, so float32
results equal Keras 3's (bit for bit on the machines tested). The state of a param group lives
in one flat buffer per (device, dtype) (``state_dict`` shows per-parameter views of it): a step
is one gradient concatenation, seven ops on the flat buffer and one ``torch._foreach_add_``
into the parameters, whatever their number (on CPU a foreach op is still a loop of one kernel
call per tensor, so fewer calls is what makes a small model's step cheap: 0.08 ms against
``torch.optim.RMSprop(foreach=True)``'s 0.30 ms on a 6-tensor RNN, AMD EPYC, one thread).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([10.0]))
    >>> opt = RMSprop([w], learning_rate=0.1)
    >>> (w ** 2 / 2).sum().backward()        # gradient = w = 10
    >>> opt.step()
    >>> round(w.item(), 6)                   # 10 - 0.1 * 10 / sqrt(0.1 * 100 + 1e-7), as Keras
    9.683772
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer

from rnnkit.engine import compiled

__all__ = ["RMSprop"]

_UNSET = object()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"RMSprop: {name} must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"RMSprop: {name} must be finite, got {value!r}")
    return value


def _check(lr: Any, rho: Any, momentum: Any, epsilon: Any, centered: Any) -> dict:
    lr, rho = _number("learning_rate", lr), _number("rho", rho)
    momentum, epsilon = _number("momentum", momentum), _number("epsilon", epsilon)
    if lr < 0:
        raise ValueError(f"RMSprop: learning_rate must be >= 0, got {lr!r}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"RMSprop: rho (the decay of the running mean of squared gradients) "
                         f"must be in [0, 1), got {rho!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"RMSprop: momentum must be in [0, 1), got {momentum!r}")
    if not epsilon > 0:
        raise ValueError(f"RMSprop: epsilon must be > 0 (it keeps sqrt(velocity + epsilon) "
                         f"away from zero), got {epsilon!r}")
    if not isinstance(centered, bool):
        raise TypeError(f"RMSprop: centered must be True or False, got "
                        f"{type(centered).__name__} {centered!r}")
    return {"lr": lr, "rho": rho, "momentum": momentum, "epsilon": epsilon,
            "centered": centered}


class RMSprop(torch.optim.Optimizer):
    """Keras's RMSprop (``keras.optimizers.RMSprop``) for torch parameters.

    Update, per parameter ``p`` with gradient ``g`` (see the module docstring for the
    derivation and the difference from ``torch.optim.RMSprop``)::

        v <- rho * v + (1 - rho) * g**2
        a <- rho * a + (1 - rho) * g                  (centered)
        u  = lr * g / sqrt(v + epsilon)               (centered: sqrt(v - a**2 + epsilon))
        p <- p - u      or, with momentum:  m <- momentum * m + u;  p <- p - m

    Args:
        params: parameters or param-group dicts (as every torch optimizer).
        learning_rate: step size, Keras's name; default 0.001. ``lr`` is the same argument
            under torch's name (give one of the two); param groups store it as ``"lr"``.
        rho: decay of the running mean of squared gradients, in [0, 1); default 0.9.
        momentum: Keras's momentum on the ``lr``-scaled steps, in [0, 1); default 0.0.
        epsilon: added to the mean square *inside* the square root, > 0; default 1e-7.
        centered: divide by the estimated variance ``v - a**2`` instead of ``v``.

    State per parameter (in ``state_dict``): ``velocity``, plus ``momentum`` (momentum > 0)
    and ``average_gradient`` (centered). Sparse and complex gradients are refused.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], learning_rate: Any = _UNSET,
                 rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
                 centered: bool = False, *, lr: Any = _UNSET) -> None:
        if learning_rate is not _UNSET and lr is not _UNSET:
            raise TypeError("RMSprop: give learning_rate (Keras's name) or lr (torch's), "
                            "not both")
        rate = 0.001 if learning_rate is _UNSET and lr is _UNSET else (
            lr if learning_rate is _UNSET else learning_rate)
        defaults = _check(rate, rho, momentum, epsilon, centered)
        self._flat: dict[int, tuple] = {}
        super().__init__(params, defaults)   # add_param_group checks each group's overrides

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.update(_check(group["lr"], group["rho"], group["momentum"], group["epsilon"],
                            group["centered"]))

    def __setstate__(self, state: dict) -> None:   # unpickling, copy.deepcopy
        super().__setstate__(state)
        self._flat = {}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, then the next step rebuilds the flat buffers from the loaded state. (The
        state tensors are views of those buffers, updated in place: change them in place or
        through ``load_state_dict``, not by putting new tensors into ``optimizer.state``.)"""
        super().load_state_dict(state_dict)
        self._flat.clear()

    def _buckets(self, index: int, group: dict, params: list[Tensor]) -> list[_Bucket]:
        """The group's state as flat buffers, one per (device, dtype) of its parameters,
        rebuilt only when the parameters with gradients, the options or the state change."""
        momentum, centered = group["momentum"] > 0, group["centered"]
        key = (tuple(map(id, params)), momentum, centered)
        buckets = self._flat.get(index)
        if buckets is not None and buckets[0] == key:
            return buckets[1]
        by_kind: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            if p.is_complex():
                raise RuntimeError(f"RMSprop: complex parameters are not supported "
                                   f"(shape {tuple(p.shape)}, {p.dtype})")
            by_kind.setdefault((p.device, p.dtype), []).append(i)
        names = ["velocity"] + ["momentum"] * momentum + ["average_gradient"] * centered
        built = []
        for positions in by_kind.values():
            members = [params[i] for i in positions]
            flats = {}
            for name in names:   # Keras's optimizer variables start at zero
                parts = [self.state[p].get(name) for p in members]
                parts = [torch.zeros_like(p) if t is None else t
                         for p, t in zip(members, parts, strict=True)]
                flat = torch._utils._flatten_dense_tensors(parts).clone()   # (sum of numels,)
                views = torch._utils._unflatten_dense_tensors(flat, members)
                for p, view in zip(members, views, strict=True):
                    self.state[p][name] = view      # state_dict sees the live values
                flats[name] = flat
            built.append(_Bucket(positions if len(by_kind) > 1 else None, members,
                                 flats["velocity"], flats.get("momentum"),
                                 flats.get("average_gradient"),
                                 [self.state[p]["momentum"] for p in members]
                                 if momentum else None))
        self._flat[index] = (key, built)
        return built

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; ``closure`` (optional)
        re-evaluates the model and returns the loss, as in every torch optimizer."""
        hooks = _optimizer_hooks_present(self)
        if hooks:
            _run_pre_hooks(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_was_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            for index, group in enumerate(self.param_groups):
                params = group["params"]
                grads = [p.grad for p in params]
                if any(g is None for g in grads):
                    params = [p for p, g in zip(params, grads, strict=True) if g is not None]
                    grads = [g for g in grads if g is not None]
                    if not params:
                        continue
                if any(g.is_sparse for g in grads):
                    shape = next(tuple(p.shape) for p in params if p.grad.is_sparse)
                    raise RuntimeError(
                        f"RMSprop does not support sparse gradients (the parameter of shape "
                        f"{shape} got one; use a dense layer, e.g. nn.Embedding(sparse=False))")
                for bucket in self._buckets(index, group, params):
                    bucket_grads = (grads if bucket.positions is None
                                    else [grads[i] for i in bucket.positions])
                    _keras_rmsprop(bucket, bucket_grads, lr=group["lr"], rho=group["rho"],
                                   momentum=group["momentum"], epsilon=group["epsilon"],
                                   centered=group["centered"])
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)
        if hooks:
            _run_post_hooks(self)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; the default ``set_to_none=True`` without its profiler
        record_function (14 us of a 15 us call for a 4-tensor model, one CPU thread)."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    # torch.optim.Optimizer wraps ``step`` in a profiler record_function (a dispatcher call
    # per step, a fifth of this step's cost); this step runs the hooks itself instead.
    step.hooked = True  # type: ignore[attr-defined]


class _Bucket:
    """One (device, dtype) share of a param group: its parameters and flat state buffers."""

    __slots__ = ("positions", "params", "velocity", "momentum", "average", "increment",
                 "applied_views")

    def __init__(self, positions: list[int] | None, params: list[Tensor], velocity: Tensor,
                 momentum: Tensor | None, average: Tensor | None,
                 momentum_views: list[Tensor] | None) -> None:
        self.positions, self.params = positions, params
        self.velocity, self.momentum, self.average = velocity, momentum, average
        # the step's increments land in one buffer whose per-parameter views are made once
        self.increment = torch.empty_like(velocity)                 # (N,)
        self.applied_views = (momentum_views if momentum_views is not None
                              else torch._utils._unflatten_dense_tensors(self.increment, params))


def _optimizer_hooks_present(optimizer: torch.optim.Optimizer) -> bool:
    return bool(torch_optimizer._global_optimizer_pre_hooks
                or torch_optimizer._global_optimizer_post_hooks
                or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)


def _run_pre_hooks(optimizer: torch.optim.Optimizer) -> None:
    for hook in (*torch_optimizer._global_optimizer_pre_hooks.values(),
                 *optimizer._optimizer_step_pre_hooks.values()):
        if hook(optimizer, (optimizer,), {}) is not None:
            raise RuntimeError("rnnkit.training.RMSprop: a step pre-hook returned new "
                               "arguments; this optimizer's step takes none to change")


def _run_post_hooks(optimizer: torch.optim.Optimizer) -> None:
    for hook in (*optimizer._optimizer_step_post_hooks.values(),
                 *torch_optimizer._global_optimizer_post_hooks.values()):
        hook(optimizer, (optimizer,), {})


_KERNEL_DTYPES = (torch.float32, torch.float64)


# The compiled extension (one C++ call per step), or None: the torch-op step. A name of this
# module's own, so that tests can take either path.
_kernels = compiled.extension


def _keras_rmsprop(bucket: _Bucket, grads: list[Tensor], *, lr: float, rho: float,
                   momentum: float, epsilon: float, centered: bool) -> None:
    """Keras 3's torch-backend ``_parallel_update_step`` on one flat buffer: in one C++ pass
    where the extension is built and the tensors are plain contiguous CPU ones (rounded as
    the torch ops round, so the two agree to the bit), else op for op."""
    velocity = bucket.velocity
    ext = (_kernels() if velocity.device.type == "cpu" and velocity.dtype in _KERNEL_DTYPES
           and all(type(v) is float for v in (lr, rho, momentum, epsilon)) else None)
    if ext is not None and all(g.layout == torch.strided and g.is_contiguous()
                               and g.dtype == velocity.dtype for g in grads) and all(
            p.is_contiguous() for p in bucket.params):
        empty = bucket.velocity[:0]
        ext.keras_rmsprop_step(
            bucket.params, grads, bucket.velocity,
            empty if bucket.momentum is None else bucket.momentum,
            empty if bucket.average is None else bucket.average, bucket.increment,
            lr=lr, rho=rho, momentum_factor=momentum, epsilon=epsilon)
        return
    g = torch._utils._flatten_dense_tensors(grads)                 # (N,) all gradients
    v = bucket.velocity
    v.mul_(rho)
    v.add_(g * g, alpha=1 - rho)
    denominator = v + epsilon
    if centered:
        a = bucket.average
        a.mul_(rho)
        a.add_(g, alpha=1 - rho)
        denominator.add_(a * a, alpha=-1)
    denominator.sqrt_()
    increment = torch.mul(g, lr, out=bucket.increment).div_(denominator)   # lr g / sqrt(d)
    if momentum > 0:
        bucket.momentum.mul_(momentum).add_(increment)
    # p <- p - increment (or - momentum): the views of the flat buffer, one foreach call
    torch._foreach_add_(bucket.params, bucket.applied_views, alpha=-1)
