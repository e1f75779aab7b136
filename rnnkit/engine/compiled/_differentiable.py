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

from collections.abc import Callable

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


def lstm(o, lengths: Tensor, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr, w_ci,
         w_cf, w_co, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM family of csrc/lstm.cpp; ``o`` is an ``LSTMOptions``."""
    w_hr, w_ci, w_cf, w_co = (_given(t) for t in (w_hr, w_ci, w_cf, w_co))
    ln_hh_w, ln_hh_b, ln_c_w, ln_c_b = (_given(t) for t in (ln_hh_w, ln_hh_b, ln_c_w, ln_c_b))
    T, B, GH = xp.shape
    H = c0.shape[1]
    plan = _Steps(lengths, T, B, o.reverse, xp.device)
    h, c, outs = h0, c0, []
    for s in range(plan.S):
        a = h @ w_hh.t()  # (B, G*H)
        if o.ln_hh:
            a = _norm(a, ln_hh_w, ln_hh_b, o.eps_hh)
        a = plan.inputs(xp, s) + a
        gates = a.split(H, dim=1)
        if o.coupled:
            a_f, a_g, a_o = gates
        else:
            a_i, a_f, a_g, a_o = gates
        if o.peepholes:
            a_f = a_f + w_cf * c
        f = torch.sigmoid(a_f)
        if o.coupled:
            i = 1 - f
        else:
            i = torch.sigmoid(a_i + w_ci * c if o.peepholes else a_i)
        c_new = f * c + i * torch.tanh(a_g)
        if o.ln_c:
            c_new = _norm(c_new, ln_c_w, ln_c_b, o.eps_c)
        if o.clip > 0:
            c_new = c_new.clamp(-o.clip, o.clip)
        gate_o = torch.sigmoid(a_o + w_co * c_new if o.peepholes else a_o)
        h_new = gate_o * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()  # (B, P)
        outs.append(h_new)
        h, c = plan.carry(s, h_new, h), plan.carry(s, c_new, c)
    return plan.outputs(outs, h0), h, c


def gru(o, lengths: Tensor, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh, ln_hh_w, ln_hh_b,
        ln_hn_w, ln_hn_b) -> tuple[Tensor, Tensor]:
    """Both GRU forms of csrc/gru.cpp; ``o`` is a ``GRUOptions``."""
    b_hh, ln_hh_w, ln_hh_b, ln_hn_w, ln_hn_b = (
        _given(t) for t in (b_hh, ln_hh_w, ln_hh_b, ln_hn_w, ln_hn_b))
    T, B, _ = xp.shape
    H = h0.shape[1]
    plan = _Steps(lengths, T, B, o.reverse, xp.device)
    w_rz, w_n = w_hh[: 2 * H], w_hh[2 * H:]
    b_rz = None if b_hh is None else b_hh[: 2 * H]
    b_n = None if b_hh is None else b_hh[2 * H:]
    h, outs = h0, []
    for s in range(plan.S):
        x_r, x_z, x_n = plan.inputs(xp, s).split(H, dim=1)
        if o.reset_after:
            a = h @ w_hh.t()  # (B, 3H)
            if o.layer_norm:
                a = _norm(a, ln_hh_w, ln_hh_b, o.eps_hh)
            if b_hh is not None:
                a = a + b_hh
            a_r, a_z, a_n = a.split(H, dim=1)
            r, z = torch.sigmoid(x_r + a_r), torch.sigmoid(x_z + a_z)
            n = torch.tanh(x_n + r * a_n)
        else:
            a = h @ w_rz.t()  # (B, 2H)
            if o.layer_norm:
                a = _norm(a, ln_hh_w, ln_hh_b, o.eps_hh)
            if b_rz is not None:
                a = a + b_rz
            a_r, a_z = a.split(H, dim=1)
            r, z = torch.sigmoid(x_r + a_r), torch.sigmoid(x_z + a_z)
            a_n = (r * h) @ w_n.t()  # (B, H)
            if o.layer_norm:
                a_n = _norm(a_n, ln_hn_w, ln_hn_b, o.eps_hn)
            if b_n is not None:
                a_n = a_n + b_n
            n = torch.tanh(x_n + a_n)
        h_new = n + z * (h - n)
        outs.append(h_new)
        h = plan.carry(s, h_new, h)
    return plan.outputs(outs, h0), h


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


def gradients(ctx, offset: int, recompute: Callable[[], tuple[Tensor, ...]],
              inputs: list[Tensor | None], grad_outputs: tuple[Tensor | None, ...]):
    """Differentiable gradients of ``recompute()``'s outputs w.r.t. ``inputs``.

    ``inputs`` are the Function's saved inputs from position ``offset`` on (None where
    absent); called inside the Function's backward under ``create_graph=True``, so the
    result is itself recorded by autograd and can be differentiated again.
    """
    wanted = [k for k, t in enumerate(inputs)
              if t is not None and t.numel() > 0 and ctx.needs_input_grad[offset + k]]
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
