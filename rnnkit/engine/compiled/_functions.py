"""``torch.autograd.Function`` wrappers around the C++ recurrences.

Each wrapper covers only the recurrent part: it takes the hoisted input projection
``xp`` (T, B, G*H), the initial state and the recurrent parameters, and returns
``(outputs, final state)``. The input projection itself (``W_ih x + b``, and ``LN_ih`` for
layer-normalised cells) is computed by ordinary torch ops over all time steps at once, so
autograd produces its gradients (dW_ih = dxp^T x, one GEMM) without extra code here.

The C++ backward is first order only and reads raw memory. A backward run with
``create_graph=True`` (grad mode on inside ``backward``), or given vmapped gradients, hands
over to :mod:`._differentiable`, which recomputes the recurrence from the saved inputs in torch
ops so that the gradients are themselves differentiable (gradient penalties,
``gradgradcheck``). For that the inputs ``xp`` and ``h0`` are saved too: references to tensors
the caller built, one (T, B, G*H) projection kept alive until backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.engine.compiled import _differentiable


@dataclass(frozen=True)
class LSTMOptions:
    coupled: bool
    peepholes: bool
    ln_hh: bool
    ln_c: bool
    clip: float  # <= 0: no clip
    eps_hh: float
    eps_c: float
    reverse: bool
    # torch.is_grad_enabled() at the call: needs_input_grad ignores no_grad/inference_mode,
    # and without it an eval-mode call would save every gate for a backward never run.
    grad: bool = True


def _grad(ctx, index: int, value: Tensor | None) -> Tensor | None:
    return value if ctx.needs_input_grad[index] else None


def _present(t: Tensor | None, reference: Tensor) -> Tensor:
    # Unused outputs get no gradient (materialize_grads is off); C++ reads an empty tensor
    # as "zero" without allocating one.
    return reference.new_empty(0) if t is None else t


class LSTMRecurrence(torch.autograd.Function):
    """Inputs: module, options, lengths, xp, h0, c0, w_hh, w_hr, w_ci, w_cf, w_co,
    ln_hh_w, ln_hh_b, ln_c_w, ln_c_b (None where an option is off)."""

    @staticmethod
    def forward(
        ctx,
        ext,
        o: LSTMOptions,
        lengths,
        xp,
        h0,
        c0,
        w_hh,
        w_hr,
        w_ci,
        w_cf,
        w_co,
        ln_hh_w,
        ln_hh_b,
        ln_c_w,
        ln_c_b,
    ):
        training = o.grad and any(ctx.needs_input_grad)
        result = ext.lstm_forward(
            xp,
            h0,
            c0,
            w_hh,
            w_hr,
            w_ci,
            w_cf,
            w_co,
            ln_hh_w,
            ln_hh_b,
            ln_c_w,
            ln_c_b,
            lengths,
            o.coupled,
            o.peepholes,
            o.ln_hh,
            o.ln_c,
            o.clip,
            o.eps_hh,
            o.eps_c,
            o.reverse,
            training,
        )
        out, h_n, c_n = result[:3]
        if training:
            ctx.ext, ctx.o, ctx.T = ext, o, xp.shape[0]
            ctx.n_saved = len(result) - 3
            ctx.save_for_backward(
                lengths, xp, h0, c0, w_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_hh_b, ln_c_w,
                ln_c_b, *result[3:]
            )
        ctx.set_materialize_grads(False)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        lengths, *inputs = ctx.saved_tensors[:13]
        o = ctx.o
        if _differentiable.needed(d_out, d_h, d_c):  # create_graph=True, or vmapped grads
            grads = _differentiable.gradients(
                ctx, 3, lambda: _differentiable.lstm(o, lengths, *inputs), inputs,
                (d_out, d_h, d_c))
            return (None, None, None, *grads)
        _, _, c0, w_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, _, ln_c_w, _ = inputs
        saved = ctx.saved_tensors[13:]
        saved = [_present(t, c0) for t in saved]
        d_out, d_h, d_c = (_present(t, c0) for t in (d_out, d_h, d_c))
        grads = ctx.ext.lstm_backward(
            d_out,
            d_h,
            d_c,
            saved,
            c0,
            w_hh,
            w_hr,
            w_ci,
            w_cf,
            w_co,
            ln_hh_w,
            ln_c_w,
            lengths,
            ctx.T,
            o.coupled,
            o.peepholes,
            o.ln_hh,
            o.ln_c,
            o.clip,
            o.reverse,
        )
        dxp, dh0, dc0, dw_hh, dw_hr, dci, dcf, dco, dlnhw, dlnhb, dlncw, dlncb = grads
        values = (dxp, dh0, dc0, dw_hh, dw_hr, dci, dcf, dco, dlnhw, dlnhb, dlncw, dlncb)
        return (None, None, None) + tuple(_grad(ctx, 3 + i, v) for i, v in enumerate(values))


@dataclass(frozen=True)
class GRUOptions:
    reset_after: bool
    layer_norm: bool
    eps_hh: float
    eps_hn: float
    reverse: bool
    grad: bool = True  # as LSTMOptions.grad


class GRURecurrence(torch.autograd.Function):
    """Inputs: module, options, lengths, xp, h0, w_hh, b_hh, ln_hh_w, ln_hh_b, ln_hn_w,
    ln_hn_b (empty tensors where absent)."""

    @staticmethod
    def forward(
        ctx, ext, o: GRUOptions, lengths, xp, h0, w_hh, b_hh, ln_hh_w, ln_hh_b, ln_hn_w, ln_hn_b
    ):
        training = o.grad and any(ctx.needs_input_grad)
        result = ext.gru_forward(
            xp,
            h0,
            w_hh,
            b_hh,
            ln_hh_w,
            ln_hh_b,
            ln_hn_w,
            ln_hn_b,
            lengths,
            o.reset_after,
            o.layer_norm,
            o.eps_hh,
            o.eps_hn,
            o.reverse,
            training,
        )
        out, h_n = result[:2]
        if training:
            ctx.ext, ctx.o, ctx.T = ext, o, xp.shape[0]
            ctx.has_bias = b_hh.numel() > 0
            ctx.save_for_backward(
                lengths, xp, h0, w_hh, b_hh, ln_hh_w, ln_hh_b, ln_hn_w, ln_hn_b, *result[2:]
            )
        ctx.set_materialize_grads(False)
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_h):
        lengths, *inputs = ctx.saved_tensors[:9]
        if _differentiable.needed(d_out, d_h):  # create_graph=True, or vmapped grads
            grads = _differentiable.gradients(
                ctx, 3, lambda: _differentiable.gru(ctx.o, lengths, *inputs), inputs,
                (d_out, d_h))
            return (None, None, None, *grads)
        _, _, w_hh, _, ln_hh_w, _, ln_hn_w, _ = inputs
        saved = ctx.saved_tensors[9:]
        saved = [_present(t, w_hh) for t in saved]
        d_out, d_h = _present(d_out, w_hh), _present(d_h, w_hh)
        o = ctx.o
        grads = ctx.ext.gru_backward(
            d_out,
            d_h,
            saved,
            w_hh,
            ctx.has_bias,
            ln_hh_w,
            ln_hn_w,
            lengths,
            ctx.T,
            o.reset_after,
            o.layer_norm,
            o.reverse,
        )
        return (None,) * 3 + tuple(_grad(ctx, 3 + i, v) for i, v in enumerate(grads))


@dataclass(frozen=True)
class KernelCall:
    """Everything about one call of a family on the step-loop template but its tensors.

    ``names`` are the kernel's names of the recurrent tensors passed after the state, in
    order; ``flags`` and ``numbers`` its options by name (the C++ side refuses unknown
    names, so no two options can be swapped by position). ``step`` is the adapter's torch-op
    step, used only for gradients of gradients.
    """

    family: str
    names: tuple[str, ...]
    flags: tuple[tuple[str, bool], ...]
    numbers: tuple[tuple[str, float], ...]
    reverse: bool
    output_size: int
    step: Callable[[Tensor, Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]
    grad: bool = True  # as LSTMOptions.grad


class CellRecurrence(torch.autograd.Function):
    """Any family on the template. Inputs: ext, call, lengths, xp (T, B, X), state
    (B, SW), then the tensors named by ``call.names``; outputs (out, final state)."""

    @staticmethod
    def forward(ctx, ext, call: KernelCall, lengths, xp, state, *tensors):
        training = call.grad and any(ctx.needs_input_grad)
        named = dict(zip(call.names, tensors, strict=True))
        named.update(xp=xp, state=state, lengths=lengths)
        flags = dict(call.flags, reverse=call.reverse, training=training)
        out, final, states, saved = ext.forward(call.family, named, dict(call.numbers), flags)
        if training:
            ctx.ext, ctx.call, ctx.T = ext, call, xp.shape[0]
            ctx.save_for_backward(lengths, xp, state, *tensors, states, saved)
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, d_out, d_state):
        call = ctx.call
        lengths, xp, state, *rest = ctx.saved_tensors
        tensors, (states, saved) = rest[:-2], rest[-2:]
        inputs = [xp, state, *tensors]
        if _differentiable.needed(d_out, d_state):  # create_graph=True, or vmapped grads
            grads = _differentiable.gradients(
                ctx, 3, lambda: _differentiable.steps(call, lengths, xp, state, tensors),
                inputs, (d_out, d_state))
            return (None,) * 3 + tuple(grads)
        named = dict(zip(call.names, tensors, strict=True))
        named.update(lengths=lengths, states=states, saved=saved)
        if d_out is not None:
            named["grad_out"] = d_out
        if d_state is not None:
            named["grad_state"] = d_state
        numbers = dict(call.numbers, steps=float(ctx.T))
        flags = dict(call.flags, reverse=call.reverse)
        grads = ctx.ext.backward(call.family, named, numbers, flags)
        values = [grads["xp"], grads["state"]] + [grads.get(name) for name in call.names]
        return (None,) * 3 + tuple(_grad(ctx, 3 + i, v) for i, v in enumerate(values))
