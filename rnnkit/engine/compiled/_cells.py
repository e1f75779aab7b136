"""The compiled adapter of IndRNN, the one family that runs a kernel of its own.

Every other compiled family (LSTM, GRU, Elman, UGRNN, GroupedLSTM, NAS) runs on the step-loop
template (``csrc/step_loop.h``) and declares its adapter in its cell's file
(``compiled_adapter``, see ``rnnkit/cells/_compiled.py``). IndRNN does not fit a per-step
template: ``h' = act(W_ih x + b + u * h)`` with ``u = clip(weight_hh)`` has no recurrent GEMM,
so every unit of every sequence is a scalar recurrence and ``csrc/indrnn.cpp`` runs rows
outside and time inside, each vector of units in registers through all steps of its sequence,
in one parallel region per call. On the template (a family with no GEMM, ``N = 0``) every
step would be a pass over the whole ``(B, H)`` state in memory, with nothing to amortise it.

Its adapter (:class:`OwnKernelAdapter`: what it covers, the parameters it reads,
:meth:`~OwnKernelAdapter.run`) is found by ``rnnkit.engine.compiled`` through
:func:`adapter_class`; ``run`` computes the hoisted input projection, calls the C++ forward
and backward through its own ``torch.autograd.Function``, and has the same recurrence in
torch ops for gradients of gradients. The clip is ``torch.clamp`` in Python, so its gradient
is torch's.

Symbols: T time steps, B batch, H_in input features, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells._compiled import CompiledAdapter
from rnnkit.engine.compiled import _differentiable


def cell_classes() -> tuple[type, ...]:
    """The cell classes served here (imported lazily: rnnkit.cells imports no engine)."""
    from rnnkit.cells.indrnn import IndRNNCell

    return (IndRNNCell,)


class OwnKernelAdapter(CompiledAdapter):
    """An adapter whose family runs a kernel of its own (``csrc/indrnn.cpp``) instead of
    the step-loop template: the engine does the
    checks (:meth:`parameter_shapes`, dtypes, devices, lengths) and then calls :meth:`run`."""

    def run(self, ext, inputs: Tensor, state, lengths: Tensor, reverse: bool,
            state_tensor: Callable):
        raise NotImplementedError


class IndRNNAdapter(OwnKernelAdapter):
    family = "indrnn"

    def describe(self) -> str:
        cell = self.cell
        clip = (f", recurrent_max_abs={cell.recurrent_max_abs}"
                if cell.recurrent_max_abs is not None else "")
        return f"IndRNNCell ({cell.nonlinearity}{clip}; no recurrent GEMM)"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H, I = cell.hidden_size, cell.input_size
        return {"weight_ih": (H, I), "weight_hh": (H,),
                "bias_ih": (H,) if cell.bias_ih is not None else None}

    def run(self, ext, inputs, state, lengths, reverse, state_tensor):
        return _run_indrnn(ext, self.cell, inputs, state, lengths, reverse, state_tensor)


def adapter_class(cell: nn.Module) -> tuple[type | None, type[OwnKernelAdapter] | None]:
    """(the served class ``cell`` is an instance of, its adapter), or (None, None)."""
    adapters = dict(zip(cell_classes(), (IndRNNAdapter,), strict=True))
    for klass in type(cell).__mro__:
        if klass in adapters:
            return klass, adapters[klass]
    return None, None


def _present(t: Tensor | None, reference: Tensor) -> Tensor:
    return reference.new_empty(0) if t is None else t


def _grad(ctx, index: int, value: Tensor | None) -> Tensor | None:
    return value if ctx.needs_input_grad[index] else None


# ----------------------------------------------------------------------------- IndRNN


class IndRNNRecurrence(torch.autograd.Function):
    """Inputs: ext, relu, reverse, grad (torch.is_grad_enabled() at the call), lengths,
    xp (T, B, H), h0 (B, H), u (H,) (the clipped recurrent weight)."""

    @staticmethod
    def forward(ctx, ext, relu: bool, reverse: bool, grad: bool, lengths, xp, h0, u):
        training = grad and any(ctx.needs_input_grad)
        result = ext.indrnn_forward(xp, h0, u, lengths, relu, reverse, training)
        out, h_n = result[:2]
        if training:
            ctx.ext, ctx.relu, ctx.reverse, ctx.T = ext, relu, reverse, xp.shape[0]
            ctx.save_for_backward(lengths, xp, h0, u, result[2])
        ctx.set_materialize_grads(False)
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_h):
        lengths, xp, h0, u, hs = ctx.saved_tensors
        if _differentiable.needed(d_out, d_h):  # create_graph=True, or vmapped grads
            grads = _differentiable.gradients(
                ctx.needs_input_grad[5:],
                lambda: indrnn_reference(ctx.relu, ctx.reverse, lengths, xp, h0, u),
                [xp, h0, u], (d_out, d_h))
            return (None,) * 5 + tuple(grads)
        d_out, d_h = _present(d_out, hs), _present(d_h, hs)
        values = ctx.ext.indrnn_backward(d_out, d_h, hs, u, lengths, ctx.T, ctx.relu,
                                         ctx.reverse)
        return (None,) * 5 + tuple(_grad(ctx, 5 + i, v) for i, v in enumerate(values))


def indrnn_reference(relu: bool, reverse: bool, lengths: Tensor, xp: Tensor, h0: Tensor,
                     u: Tensor) -> tuple[Tensor, Tensor]:
    """csrc/indrnn.cpp in torch ops: ``h' = act(xp + u * h)``."""
    T, B, _ = xp.shape
    plan = _differentiable._Steps(lengths, T, B, reverse, xp.device)
    act: Callable[[Tensor], Tensor] = torch.relu if relu else torch.tanh
    h, outs = h0, []
    for s in range(plan.S):
        h_new = act(plan.inputs(xp, s) + u * h)
        outs.append(h_new)
        h = plan.carry(s, h_new, h)
    return plan.outputs(outs, h0), h


def _run_indrnn(ext, cell, inputs: Tensor, state, lengths: Tensor, reverse: bool,
                state_tensor: Callable) -> tuple[Tensor, Tensor]:
    h0 = state_tensor(cell, state, inputs.shape[1])
    T, B, _ = inputs.shape
    xp = F.linear(inputs.reshape(T * B, -1), cell.weight_ih, cell.bias_ih).view(T, B, -1)
    u = cell.weight_hh  # (H,)
    if cell.recurrent_max_abs is not None:  # torch's clamp: gradient zero where clipped
        u = u.clamp(-cell.recurrent_max_abs, cell.recurrent_max_abs)
    return IndRNNRecurrence.apply(ext, cell.nonlinearity == "relu", reverse,
                                  torch.is_grad_enabled(), lengths, xp, h0, u.contiguous())
