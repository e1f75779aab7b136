"""The compiled recurrences written again in torch ops, for gradients of gradients.

The C++ kernels' backward computes first-order gradients only: it is not itself recorded by
autograd, and it reads raw memory. When a backward runs with ``create_graph=True`` (gradient
penalties, meta-learning, ``gradgradcheck``) or receives vmapped gradients
(``torch.autograd.functional.jacobian(..., vectorize=True)``), the autograd Functions in
:mod:`._functions` hand over to these functions: they recompute the same recurrence from the
same inputs (the hoisted projection ``xp``, the initial state and the recurrent parameters)
with differentiable torch ops, and autograd differentiates that recomputation, to any order.
Same equations as the kernels (see the headers of ``csrc/lstm.cpp``, ``csrc/gru.cpp``; the
families on the step-loop template bring their own torch-op step, ``CompiledAdapter.step``
in their cell file), same lengths and reverse rules; slower (a Python loop over the steps),
which only double backward pays.

Symbols: T time steps, B batch, H hidden size, H_out output size, G gates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class _Steps:
    """Which row reads which time position at each step (as ``Schedule`` in common.h)."""

    def __init__(self, lengths: Tensor, steps: int, batch: int, reverse: bool, device) -> None:
        self.T, self.B = steps, batch
        if lengths.numel() == 0:
            self.lengths = None
            self.S = steps
        else:
            self.lengths = lengths.to(device=device, dtype=torch.int64)
            self.S = int(self.lengths.max()) if batch else 0
        s = torch.arange(self.S, device=device)[:, None]  # (S, 1)
        full = torch.full((1, batch), steps, device=device, dtype=torch.int64)
        length = full if self.lengths is None else self.lengths[None, :]  # (1, B)
        self.active = s < length  # (S, B)
        time = (length - 1 - s) if reverse else s.expand(self.S, batch)
        self.time = time.clamp(0, max(steps - 1, 0))  # (S, B); clamped where inactive
        self.rows = torch.arange(batch, device=device)
        self.plain = self.lengths is None and not reverse

    def inputs(self, xp: Tensor, s: int) -> Tensor:
        return xp[s] if self.plain else xp[self.time[s], self.rows]  # (B, G*H)

    def carry(self, s: int, new: Tensor, old: Tensor) -> Tensor:
        return new if self.plain else torch.where(self.active[s, :, None], new, old)

    def outputs(self, per_step: list[Tensor], like: Tensor) -> Tensor:
        """(S, B, H) step outputs -> (T, B, H) at their time positions, zero elsewhere."""
        size = like.shape[-1]
        if not per_step:
            return like.new_zeros(self.T, self.B, size)
        steps = torch.stack(per_step)  # (S, B, H)
        if self.plain:
            return steps
        active = self.active
        values = steps[active]  # (n, H)
        index = (self.time[active], self.rows.expand(self.S, self.B)[active])
        return like.new_zeros(self.T, self.B, size).index_put(index, values)


def _norm(v: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    return F.layer_norm(v, (v.shape[-1],), weight, bias, eps)


def _given(t: Tensor | None) -> Tensor | None:
    return None if t is None or t.numel() == 0 else t


def steps(call, lengths: Tensor, xp: Tensor, state: Tensor,
          tensors) -> tuple[Tensor, Tensor]:
    """Any family on the step-loop template, step by step through its adapter's torch-op
    ``call.step`` (a ``KernelCall``): ``(outputs (T, B, out), final state (B, SW))``."""
    T, B, _ = xp.shape
    plan = _Steps(lengths, T, B, call.reverse, xp.device)
    named = dict(zip(call.names, tensors, strict=True))
    h, outs = state, []
    for s in range(plan.S):
        out, new = call.step(plan.inputs(xp, s), h, named)
        outs.append(out)
        h = plan.carry(s, new, h)
    return plan.outputs(outs, state[:, : call.output_size]), h


try:  # functorch's wrappers (vmap's BatchedTensor, grad's GradTrackingTensor, ...) and the
    # legacy batched tensors of torch.autograd.grad(..., is_grads_batched=True)
    from torch._C._functorch import is_functorch_wrapped_tensor, is_legacy_batchedtensor

    def _is_wrapped(tensor: Tensor) -> bool:
        return is_functorch_wrapped_tensor(tensor) or is_legacy_batchedtensor(tensor)
except ImportError:  # a torch without functorch: nothing can be wrapped
    def _is_wrapped(tensor: Tensor) -> bool:
        return False


def needed(*grad_outputs: Tensor | None) -> bool:
    """Whether a Function's backward must take this differentiable path: grad mode is on
    (``create_graph=True``), or the incoming gradients are functorch-wrapped (a vmapped
    backward, as ``torch.autograd.functional.jacobian(..., vectorize=True)`` runs)."""
    if torch.is_grad_enabled():
        return True
    return any(g is not None and _is_wrapped(g) for g in grad_outputs)


def gradients(needs: Sequence[bool], recompute: Callable[[], tuple[Tensor, ...]],
              inputs: list[Tensor | None], grad_outputs: tuple[Tensor | None, ...]):
    """Differentiable gradients of ``recompute()``'s outputs w.r.t. ``inputs``.

    ``inputs`` are the node's saved inputs (None or empty where absent), ``needs[k]`` whether
    input ``k`` wants a gradient (a Function's ``ctx.needs_input_grad`` from its first
    tensor input on); called inside a backward under ``create_graph=True``, so the result
    is itself recorded by autograd and can be differentiated again.
    """
    wanted = [k for k, t in enumerate(inputs) if t is not None and t.numel() > 0 and needs[k]]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        outputs = recompute()
        pairs = [(out, g) for out, g in zip(outputs, grad_outputs, strict=True)
                 if g is not None and out.requires_grad]
        if not pairs:
            return result
        grads = torch.autograd.grad(
            [out for out, _ in pairs], [inputs[k] for k in wanted], [g for _, g in pairs],
            create_graph=True, allow_unused=True,
        )
    for k, g in zip(wanted, grads, strict=True):
        result[k] = g
    return result
