"""Compiled adapters of the exotic cells: IndRNN, GroupedLSTM and NAS.

These families have kernels of their own in ``csrc/`` (``indrnn.cpp``, ``grouped_lstm.cpp``,
``nas.cpp``), written beside the step-loop template (``csrc/step_loop.h``) rather than on it:
IndRNN has no recurrent GEMM and runs rows outside and time inside (one parallel region per
call instead of one per step), and the other two were written before the template reached
``main``. Each has an adapter here (:class:`OwnKernelAdapter`: what it covers, the parameters
it reads, :meth:`~OwnKernelAdapter.run`), which ``rnnkit.engine.compiled`` finds through
:func:`adapter_class`, the hoisted input projection, a ``torch.autograd.Function`` around
the C++ forward and backward, and the same recurrence in torch ops for gradients of
gradients.

* IndRNN: ``h' = act(W_ih x + b + u * h)`` with ``u = clip(weight_hh)``: no recurrent GEMM.
  The clip is ``torch.clamp`` in Python, so its gradient is torch's.
* GroupedLSTM: the block-diagonal recurrent product is one GEMM per group and step on the
  group's slice of ``h`` (never a dense, zero-padded one); the input projection is one
  batched GEMM over all steps.
* NAS: the eight branches keep the input (``u = W_ih x``, hoisted) and recurrent
  (``v = W_hh h + b``, per step) projections apart, since branch 3 multiplies them.

Symbols: T time steps, B batch, H_in input features, H hidden size, N groups, H_out output
size (NAS ``proj_size`` if set, else H).
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
    from rnnkit.cells.grouped_lstm import GroupedLSTMCell
    from rnnkit.cells.indrnn import IndRNNCell
    from rnnkit.cells.nas import NASCell

    return (IndRNNCell, GroupedLSTMCell, NASCell)


class OwnKernelAdapter(CompiledAdapter):
    """An adapter whose family runs a kernel of its own (``csrc/indrnn.cpp``,
    ``grouped_lstm.cpp``, ``nas.cpp``) instead of the step-loop template: the engine does the
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


class GroupedLSTMAdapter(OwnKernelAdapter):
    family = "grouped_lstm"

    def describe(self) -> str:
        return (f"GroupedLSTMCell (groups={self.cell.groups}; one recurrent GEMM per group "
                f"and step)")

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        N, H, I = cell.groups, cell.hidden_size, cell.input_size
        rows = 4 * H // N
        bias = (N, rows) if cell.bias_ih is not None else None
        return {"weight_ih": (N, rows, I // N), "weight_hh": (N, rows, H // N),
                "bias_ih": bias, "bias_hh": bias}

    def run(self, ext, inputs, state, lengths, reverse, state_tensor):
        return _run_grouped_lstm(ext, self.cell, inputs, state, lengths, reverse, state_tensor)


class NASAdapter(OwnKernelAdapter):
    family = "nas"

    def describe(self) -> str:
        proj = f"proj_size={self.cell.proj_size}, " if self.cell.proj_size else ""
        return f"NASCell ({proj}input and recurrent branches kept apart)"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        return {"weight_ih": (8 * H, cell.input_size), "weight_hh": (8 * H, cell.output_size),
                "bias_hh": (8 * H,) if cell.bias_hh is not None else None,
                "weight_hr": (cell.proj_size, H) if cell.proj_size else None}

    def run(self, ext, inputs, state, lengths, reverse, state_tensor):
        return _run_nas(ext, self.cell, inputs, state, lengths, reverse, state_tensor)


def adapter_class(cell: nn.Module) -> tuple[type | None, type[OwnKernelAdapter] | None]:
    """(the served class ``cell`` is an instance of, its adapter), or (None, None)."""
    adapters = dict(zip(cell_classes(), (IndRNNAdapter, GroupedLSTMAdapter, NASAdapter),
                        strict=True))
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
                ctx, 5, lambda: indrnn_reference(ctx.relu, ctx.reverse, lengths, xp, h0, u),
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


# ----------------------------------------------------------------------------- GroupedLSTM


class GroupedLSTMRecurrence(torch.autograd.Function):
    """Inputs: ext, reverse, grad, lengths, xp (T, B, 4H) group-major, h0, c0 (B, H),
    w_hh (N, 4H/N, H/N)."""

    @staticmethod
    def forward(ctx, ext, reverse: bool, grad: bool, lengths, xp, h0, c0, w_hh):
        training = grad and any(ctx.needs_input_grad)
        result = ext.grouped_lstm_forward(xp, h0, c0, w_hh, lengths, reverse, training)
        out, h_n, c_n = result[:3]
        if training:
            ctx.ext, ctx.reverse, ctx.T = ext, reverse, xp.shape[0]
            ctx.save_for_backward(lengths, xp, h0, c0, w_hh, *result[3:])
        ctx.set_materialize_grads(False)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        lengths, xp, h0, c0, w_hh, gates, hs, cs, tanhc = ctx.saved_tensors
        if _differentiable.needed(d_out, d_h, d_c):
            grads = _differentiable.gradients(
                ctx, 4, lambda: grouped_lstm_reference(ctx.reverse, lengths, xp, h0, c0, w_hh),
                [xp, h0, c0, w_hh], (d_out, d_h, d_c))
            return (None,) * 4 + tuple(grads)
        d_out, d_h, d_c = (_present(t, hs) for t in (d_out, d_h, d_c))
        values = ctx.ext.grouped_lstm_backward(d_out, d_h, d_c, gates, hs, cs, tanhc, w_hh,
                                               lengths, ctx.T, ctx.reverse)
        return (None,) * 4 + tuple(_grad(ctx, 4 + i, v) for i, v in enumerate(values))


def grouped_lstm_reference(reverse: bool, lengths: Tensor, xp: Tensor, h0: Tensor, c0: Tensor,
                           w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """csrc/grouped_lstm.cpp in torch ops (gate rows group-major: [i f g o] per group)."""
    T, B, _ = xp.shape
    N, rows, Hg = w_hh.shape
    plan = _differentiable._Steps(lengths, T, B, reverse, xp.device)
    h, c, outs = h0, c0, []
    for s in range(plan.S):
        rec = torch.bmm(h.view(B, N, Hg).transpose(0, 1), w_hh.transpose(1, 2))  # (N, B, 4Hg)
        a = plan.inputs(xp, s).view(B, N, rows) + rec.transpose(0, 1)  # (B, N, 4Hg)
        i, f, g, o = a.split(Hg, dim=2)
        c_new = torch.sigmoid(f) * c.view(B, N, Hg) + torch.sigmoid(i) * torch.tanh(g)
        h_new = (torch.sigmoid(o) * torch.tanh(c_new)).reshape(B, N * Hg)
        c_new = c_new.reshape(B, N * Hg)
        outs.append(h_new)
        h, c = plan.carry(s, h_new, h), plan.carry(s, c_new, c)
    return plan.outputs(outs, h0), h, c


def _pair(cell, state, batch: int, state_tensor: Callable, h_size: int):
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(
            f"compiled.run_recurrence: {type(cell).__name__} state must be a pair (h, c), got "
            f"{type(state).__name__}"
        )
    h0 = state_tensor(cell, state[0], batch, h_size, "state h")
    c0 = state_tensor(cell, state[1], batch, cell.hidden_size, "state c")
    return h0, c0


def _run_grouped_lstm(ext, cell, inputs: Tensor, state, lengths: Tensor, reverse: bool,
                      state_tensor: Callable):
    T, B, I = inputs.shape
    h0, c0 = _pair(cell, state, B, state_tensor, cell.hidden_size)
    N = cell.groups
    rows = cell.weight_ih.shape[1]  # 4H/N
    # Hoisted block-diagonal input projection: one batched GEMM over all T*B rows.
    x = inputs.reshape(T * B, N, I // N).transpose(0, 1)  # (N, T*B, H_in/N)
    bias = None
    if cell.bias_ih is not None or cell.bias_hh is not None:
        bias = sum(b for b in (cell.bias_ih, cell.bias_hh) if b is not None)  # (N, 4H/N)
    if bias is None:
        xp = torch.bmm(x, cell.weight_ih.transpose(1, 2))  # (N, T*B, 4H/N)
    else:
        xp = torch.baddbmm(bias.unsqueeze(1), x, cell.weight_ih.transpose(1, 2))
    xp = xp.transpose(0, 1).reshape(T, B, N * rows)  # (T, B, 4H), group-major
    out, h_n, c_n = GroupedLSTMRecurrence.apply(ext, reverse, torch.is_grad_enabled(), lengths,
                                                xp, h0, c0, cell.weight_hh.contiguous())
    return out, (h_n, c_n)


# ----------------------------------------------------------------------------- NAS


class NASRecurrence(torch.autograd.Function):
    """Inputs: ext, reverse, grad, lengths, xp = W_ih x (T, B, 8H), h0 (B, H_out), c0 (B, H),
    w_hh (8H, H_out), b_hh (8H,) or empty, w_hr (P, H) or empty."""

    @staticmethod
    def forward(ctx, ext, reverse: bool, grad: bool, lengths, xp, h0, c0, w_hh, b_hh, w_hr):
        training = grad and any(ctx.needs_input_grad)
        result = ext.nas_forward(xp, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, training)
        out, h_n, c_n = result[:3]
        if training:
            ctx.ext, ctx.reverse = ext, reverse
            ctx.save_for_backward(lengths, xp, h0, c0, w_hh, b_hh, w_hr, *result[3:])
        ctx.set_materialize_grads(False)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        lengths, xp, h0, c0, w_hh, b_hh, w_hr, act, mid, mo, hs, cs = ctx.saved_tensors
        if _differentiable.needed(d_out, d_h, d_c):
            grads = _differentiable.gradients(
                ctx, 4, lambda: nas_reference(ctx.reverse, lengths, xp, h0, c0, w_hh, b_hh,
                                              w_hr),
                [xp, h0, c0, w_hh, b_hh, w_hr], (d_out, d_h, d_c))
            return (None,) * 4 + tuple(grads)
        d_out, d_h, d_c = (_present(t, hs) for t in (d_out, d_h, d_c))
        values = ctx.ext.nas_backward(d_out, d_h, d_c, xp, act, mid, mo, hs, cs, w_hh, b_hh,
                                      w_hr, lengths, ctx.reverse)
        dxp, dh0, dc0, dw_hh, db_hh, dw_hr = values
        values = (dxp, dh0, dc0, dw_hh, db_hh, dw_hr)
        return (None,) * 4 + tuple(_grad(ctx, 4 + i, v) for i, v in enumerate(values))


def nas_reference(reverse: bool, lengths: Tensor, xp: Tensor, h0: Tensor, c0: Tensor,
                  w_hh: Tensor, b_hh: Tensor, w_hr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """csrc/nas.cpp in torch ops (the equations of rnnkit.functional.nas_step)."""
    b_hh = _differentiable._given(b_hh)
    w_hr = _differentiable._given(w_hr)
    T, B, _ = xp.shape
    plan = _differentiable._Steps(lengths, T, B, reverse, xp.device)
    sigmoid, relu, tanh = torch.sigmoid, torch.relu, torch.tanh
    h, c, outs = h0, c0, []
    for s in range(plan.S):
        u = plan.inputs(xp, s).chunk(8, 1)
        v = F.linear(h, w_hh, b_hh).chunk(8, 1)
        l0, l1 = sigmoid(u[0] + v[0]), relu(u[1] + v[1])
        l2, l3 = sigmoid(u[2] + v[2]), relu(u[3] * v[3])
        l4, l5 = tanh(u[4] + v[4]), sigmoid(u[5] + v[5])
        l6, l7 = tanh(u[6] + v[6]), sigmoid(u[7] + v[7])
        c_new = tanh(tanh(l0 * l1) + c) * tanh(l2 + l3)
        h_new = tanh(c_new * tanh(tanh(l4 * l5) + sigmoid(l6 + l7)))
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        outs.append(h_new)
        h, c = plan.carry(s, h_new, h), plan.carry(s, c_new, c)
    return plan.outputs(outs, h0), h, c


def _run_nas(ext, cell, inputs: Tensor, state, lengths: Tensor, reverse: bool,
             state_tensor: Callable):
    T, B, _ = inputs.shape
    h0, c0 = _pair(cell, state, B, state_tensor, cell.output_size)
    xp = F.linear(inputs.reshape(T * B, -1), cell.weight_ih).view(T, B, -1)  # (T, B, 8H)
    empty = xp.new_empty(0)
    b_hh = empty if cell.bias_hh is None else cell.bias_hh.contiguous()
    w_hr = empty if cell.weight_hr is None else cell.weight_hr.contiguous()
    out, h_n, c_n = NASRecurrence.apply(ext, reverse, torch.is_grad_enabled(), lengths, xp, h0,
                                        c0, cell.weight_hh.contiguous(), b_hh, w_hr)
    return out, (h_n, c_n)
