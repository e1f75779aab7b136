"""The ``torch.autograd.Function``s around the C++ step-loop template, for every family.

:class:`ProjectedRecurrence` computes the hoisted input projection inside the node (for a
projection that is a plain ``x W^T + b``, see its docstring). :class:`CellRecurrence`
covers only the recurrent part: it takes the hoisted input projection ``xp`` (T, B, X),
the initial state (B, SW) and the recurrent tensors by their kernel names, and returns
``(outputs, final state)``; the Python-to-C++ call (``ext.forward`` / ``ext.backward``,
tensors, numbers and flags by name) is written here once. The input projection itself
(``W_ih x + b``, and ``LN_ih`` for layer-normalised cells) is computed by the cell's adapter
in ordinary torch ops over all time steps at once, so autograd produces its gradients
(dW_ih = dxp^T x, one GEMM) without extra code here.

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
import torch.nn.functional as F
from torch import Tensor

from rnnkit import functional as RF
from rnnkit.engine.compiled import _differentiable


def _grad(ctx, index: int, value: Tensor | None) -> Tensor | None:
    return value if ctx.needs_input_grad[index] else None


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
    # torch.is_grad_enabled() at the call: needs_input_grad ignores no_grad/inference_mode,
    # and without it an eval-mode call would save every gate for a backward never run.
    grad: bool = True
    # precision="bf16": the template's GEMMs with bf16 operands, float32 elsewhere (_bf16.py)
    bf16: bool = False


class CellRecurrence(torch.autograd.Function):
    """Any family on the template. Inputs: ext, call, lengths, xp (T, B, X), state
    (B, SW), then the tensors named by ``call.names``; outputs (out, final state)."""

    @staticmethod
    def forward(ctx, ext, call: KernelCall, lengths, xp, state, *tensors):
        training = call.grad and any(ctx.needs_input_grad)
        named = dict(zip(call.names, tensors, strict=True))
        named.update(xp=xp, state=state, lengths=lengths)
        flags = dict(call.flags, reverse=call.reverse, training=training, bf16=call.bf16)
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
            if call.bf16:
                raise RuntimeError(
                    "compiled recurrence in precision='bf16': gradients of gradients "
                    "(create_graph=True, vmapped gradients) are not available for the bf16 "
                    "GEMMs; run this call with precision='fp32'")
            grads = _differentiable.gradients(
                ctx.needs_input_grad[3:],
                lambda: _differentiable.steps(call, lengths, xp, state, tensors),
                inputs, (d_out, d_state))
            return (None,) * 3 + tuple(grads)
        grads = _kernel_backward(ctx.ext, call, tensors, lengths, states, saved, d_out,
                                 d_state, ctx.T, call.bf16)
        values = [grads["xp"], grads["state"]] + [grads.get(name) for name in call.names]
        return (None,) * 3 + tuple(_grad(ctx, 3 + i, v) for i, v in enumerate(values))


def _kernel_backward(ext, call, tensors, lengths: Tensor, states: Tensor, saved: Tensor,
                     d_out: Tensor | None, d_state: Tensor | None, steps: int,
                     bf16: bool) -> dict:
    """The template's backward call: the family's named tensors, the forward's saved
    buffers and the incoming gradients (absent ones left out) -> the kernel's gradients."""
    named = dict(zip(call.names, tensors, strict=True))
    named.update(lengths=lengths, states=states, saved=saved)
    if d_out is not None:
        named["grad_out"] = d_out
    if d_state is not None:
        named["grad_state"] = d_state
    numbers = dict(call.numbers, steps=float(steps))
    flags = dict(call.flags, reverse=call.reverse, bf16=bf16)
    return ext.backward(call.family, named, numbers, flags)


def project(x: Tensor, weight: Tensor, bias: Tensor | None, second: Tensor | None) -> Tensor:
    """``x W^T + (bias + second)`` over all steps, ``(T, B, H_in) -> (T, B, X)``: the same ops,
    in the same order, as ``rnnkit.cells._compiled.projection`` with ``sum_bias``."""
    T, B, features = x.shape
    if bias is None:
        bias = second
    elif second is not None:
        bias = bias + second
    return F.linear(x.reshape(T * B, features), weight, bias).view(T, B, weight.shape[0])


# The kernels' own small GEMM (csrc/small_gemm.h) for the projection of a narrow layer: at
# (T*B, H_in, X) = (2800, 28, 16) MKL's addmm took ~240 us on one thread here, the register
# tiles ~40 us. Single-threaded, so used where a product this size would gain little from
# threads (the per-step threshold of csrc/common.h's gemm_rows, times the sequence's steps).
_SMALL_WIDTH = 32
_SMALL_FLOPS = 2e7


def _small_projection(x: Tensor, weight: Tensor) -> bool:
    X, features = weight.shape
    return (X <= _SMALL_WIDTH and x.dtype in (torch.float32, torch.float64)
            and (torch.get_num_threads() == 1
                 or 2.0 * x.shape[0] * x.shape[1] * features * X < _SMALL_FLOPS))


def _project_small(ext, x: Tensor, weight: Tensor, bias: Tensor | None,
                   second: Tensor | None) -> Tensor:
    """:func:`project` on the small GEMM: ``(T, B, H_in) -> (T, B, X)``."""
    if bias is None:
        bias = second
    elif second is not None:
        bias = bias + second
    if bias is None:
        bias = weight.new_empty(0)
    # (T, B, H_in) as it lies: a batch-first caller's transposed view is not copied
    return ext.small_linear(x, weight, bias)  # (T, B, X)


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def _projected_elman(ext, call: KernelCall, lengths: Tensor, x: Tensor, weight: Tensor,
                     bias: Tensor | None, second: Tensor | None, state: Tensor,
                     tensors: tuple[Tensor, ...], training: bool):
    """Elman on the small path with the projection inside the steps
    (``ext.elman_projected_forward``, csrc/elman.cpp): ``[out, final, states]``, or None
    where that kernel does not apply (lengths shorter than T, a hidden size past the small
    path) and the projection runs first."""
    if call.family != "elman" or call.bf16 or not hasattr(ext, "elman_projected_forward"):
        return None
    (weight_hh,) = tensors
    result = ext.elman_projected_forward(
        x, weight, _empty_if_none(bias, weight), _empty_if_none(second, weight), weight_hh,
        state, lengths, relu=dict(call.flags)["relu"], reverse=call.reverse, training=training)
    return result or None


def _elman_differentiable(inputs: list[Tensor], needs: list[bool], d_out: Tensor | None,
                          d_state: Tensor | None, relu: bool, reverse: bool):
    """Gradients of gradients for the C++ Elman node (csrc/elman_node.cpp), which calls this
    under ``create_graph=True`` or with vmapped gradients: the layer recomputed step by step
    with :func:`rnnkit.functional.elman_step` from its inputs ``[x, W_ih, bias, second, W_hh,
    h0]`` (absent biases empty) and differentiated by autograd
    (:func:`._differentiable.gradients`). Returns one gradient or None per input."""
    x, weight, bias, second, weight_hh, state = inputs
    weights = RF.ElmanWeights(weight, weight_hh, *(t if t.numel() else None
                                                   for t in (bias, second)))
    nonlinearity = "relu" if relu else "tanh"
    call = KernelCall(family="elman", names=(), flags=(), numbers=(), reverse=reverse,
                      output_size=weight.shape[0],
                      step=lambda x_t, h, _: RF.elman_step(x_t, h, weights, nonlinearity))
    empty = torch.empty(0, dtype=torch.int64)
    # the steps read x itself: elman_step projects each step's inputs
    return _differentiable.gradients(
        needs, lambda: _differentiable.steps(call, empty, x, state, ()), inputs,
        (d_out, d_state))


class ProjectedRecurrence(torch.autograd.Function):
    """:class:`CellRecurrence` with the hoisted input projection inside: one autograd node
    for ``xp = x W^T + b + b2`` and the recurrence, where autograd would record the bias
    sum, the GEMM, its view and the recurrence. Inputs: ext, call, lengths, x (T, B, H_in),
    weight (X, H_in), bias (X,) or None, second bias (X,) or None, state (B, SW), then the
    tensors named by ``call.names``; outputs (out, final state).

    Backward: the kernel's BPTT gives ``d xp`` (T, B, X); then one GEMM each for
    ``d W = d xp^T x`` and ``d x = d xp W`` (only those needed) and one column sum for the
    biases. Gradients of gradients recompute the projection and the steps in torch ops.

    An Elman layer on the small path whose rows all run every step computes the projection
    inside the steps instead (``_projected_elman``: no ``xp`` at all), and its backward
    returns every gradient from one C++ call."""

    @staticmethod
    def forward(ctx, ext, call: KernelCall, lengths, x, weight, bias, second, state, *tensors):
        small = _small_projection(x, weight)
        training = call.grad and any(ctx.needs_input_grad)
        ctx.set_materialize_grads(False)
        fused = (_projected_elman(ext, call, lengths, x, weight, bias, second, state, tensors,
                                  training) if small else None)
        ctx.fused = fused is not None
        if fused is not None:
            out, final, states = fused
            if training:
                ctx.ext, ctx.call, ctx.small = ext, call, small
                ctx.save_for_backward(lengths, x, weight, bias, second, state, *tensors,
                                      states, states.new_empty(0))
            return out, final
        if small:
            xp = _project_small(ext, x, weight, bias, second)  # (T, B, X)
        else:
            xp = project(x, weight, bias, second)  # (T, B, X)
        named = dict(zip(call.names, tensors, strict=True))
        named.update(xp=xp, state=state, lengths=lengths)
        flags = dict(call.flags, reverse=call.reverse, training=training, bf16=False)
        out, final, states, saved = ext.forward(call.family, named, dict(call.numbers), flags)
        if training:
            ctx.ext, ctx.call, ctx.small = ext, call, small
            ctx.save_for_backward(lengths, x, weight, bias, second, state, *tensors, states,
                                  saved)
        return out, final

    @staticmethod
    def backward(ctx, d_out, d_state):
        call = ctx.call
        lengths, x, weight, bias, second, state, *rest = ctx.saved_tensors
        tensors, (states, saved) = rest[:-2], rest[-2:]
        if _differentiable.needed(d_out, d_state):  # create_graph=True, or vmapped grads
            grads = _differentiable.gradients(
                ctx.needs_input_grad[3:],
                lambda: _differentiable.steps(call, lengths, project(x, weight, bias, second),
                                              state, tensors),
                [x, weight, bias, second, state, *tensors], (d_out, d_state))
            return (None,) * 3 + tuple(grads)
        T, B, features = x.shape
        needs = ctx.needs_input_grad
        if ctx.fused:  # the projection's gradients came out of the steps
            want_bias = (bias is not None and needs[5]) or (second is not None and needs[6])
            d_x, d_weight, column_sum, d_state0, d_weight_hh = ctx.ext.elman_projected_backward(
                x, weight, tensors[0], states, _empty_if_none(d_out, x),
                _empty_if_none(d_state, x), relu=dict(call.flags)["relu"],
                reverse=call.reverse, need_x=needs[3], need_weight_ih=needs[4],
                need_bias=want_bias)
            d_bias = column_sum if bias is not None and needs[5] else None
            d_second = None
            if second is not None and needs[6]:
                d_second = column_sum if d_bias is None else column_sum.clone()
            return ((None,) * 3 + (d_x, d_weight, d_bias, d_second)
                    + (_grad(ctx, 7, d_state0), _grad(ctx, 8, d_weight_hh)))
        grads = _kernel_backward(ctx.ext, call, tensors, lengths, states, saved, d_out,
                                 d_state, T, False)
        d_xp = grads["xp"].reshape(T * B, weight.shape[0])  # (T*B, X)
        d_x = d_weight = d_bias = d_second = None
        if needs[3]:
            d_x = (d_xp @ weight).view(T, B, features)  # (T, B, H_in)
        want_bias = (bias is not None and needs[5]) or (second is not None and needs[6])
        if ctx.small and (needs[4] or want_bias):
            # d W = d xp^T x (X, H_in) and the bias's column sum in the small GEMM's pass
            d_weight, column_sum = ctx.ext.small_linear_grads(x, d_xp, needs[4], want_bias)
            d_bias = column_sum if bias is not None and needs[5] else None
            if second is not None and needs[6]:
                d_second = column_sum if d_bias is None else column_sum.clone()
            rest = [grads["state"]] + [grads.get(name) for name in call.names]
            return ((None,) * 3 + (d_x, d_weight if needs[4] else None, d_bias, d_second)
                    + tuple(_grad(ctx, 7 + i, v) for i, v in enumerate(rest)))
        if needs[4]:
            # x^T d xp, transposed into W's layout (contiguous, as torch returns it): the
            # GEMM d xp^T x that torch's linear backward runs measured 1.8x slower at
            # (T*B, X, H_in) = (2800, 16, 28) (MKL, 1 thread, AMD EPYC Zen 3)
            d_weight = (x.reshape(T * B, features).t() @ d_xp).t().contiguous()  # (X, H_in)
        if want_bias:
            column_sum = d_xp.sum(0)  # (X,)
            d_bias = column_sum if bias is not None and needs[5] else None
            if second is not None and needs[6]:
                d_second = column_sum if d_bias is None else column_sum.clone()
        rest = [grads["state"]] + [grads.get(name) for name in call.names]
        return ((None,) * 3 + (d_x, d_weight, d_bias, d_second)
                + tuple(_grad(ctx, 7 + i, v) for i, v in enumerate(rest)))
