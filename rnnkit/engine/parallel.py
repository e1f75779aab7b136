"""The ``"scan"`` path: cells whose recurrence is linear in the state run as one scan node.

minGRU and minLSTM (:mod:`rnnkit.cells.minimal`) compute their gates from the input alone,
so the recurrence is :math:`h_t = a_t \\odot h_{t-1} + v_t` with :math:`a_t, v_t` known for
every step before the first one runs. The drivers run it whole whenever a whole sequence is
known up front (training, whole-sequence inference): the pre-activations of all ``T``
steps at once (one GEMM of ``T*B`` rows), then the linear recurrence by one autograd node:
one C++ pass through time forward and one backward (``csrc/min_scan.cpp``, the gates
formed in registers, recomputed by the backward), or, without the compiled kernels, a few
whole-sequence torch operations and one fused multiply-add per step; no autograd recording.
On a CPU that beats the cell's own ``scan`` (log space, ``cumsum`` and ``logcumsumexp``,
built for parallel hardware: it does several times the memory traffic of the recurrence
itself); a cell stepped one input at a time
(:class:`~rnnkit.layers.UnfoldFrom`, a caller's own loop) runs its ``forward``.

Semantics are the loop's (:mod:`rnnkit.engine.loop`), lengths and reverse included:

* lengths: the inputs at padded steps are zeroed (garbage there, ``inf`` or ``nan``, must not
  reach the gradients of the valid steps through the scan's backward), the scan runs over
  all ``T`` steps, outputs at padded steps are set to zero and the final state is each
  sequence's state at its own last step ``lengths[b] - 1``;
* reverse: each sequence is reversed within its own length (one ``gather``), scanned
  forwards, and the outputs gathered back to their original positions; the final state is
  the state after step 0.

Symbols: ``T`` time steps, ``B`` batch, ``H_in`` input features, ``H`` hidden size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells.base import check_input_dtype
from rnnkit.engine.hooks import step_hook
from rnnkit.engine.lengths import reverse_index, reverse_within_lengths

__all__ = ["has_scan", "run_recurrence", "supports"]


def _min_cell_class() -> type:
    # imported lazily, as the compiled kernels import the cells they know
    from rnnkit.cells.minimal import _MinRNNCell

    return _MinRNNCell


def has_scan(cell: nn.Module) -> bool:
    """Whether ``cell`` is a minGRU/minLSTM (served by the scan unless :func:`supports` says
    why not)."""
    return isinstance(cell, _min_cell_class())


def supports(cell: nn.Module) -> tuple[bool, str]:
    """Whether :func:`run_recurrence` computes exactly what stepping ``cell`` computes.

    Covered: :class:`~rnnkit.cells.MinGRUCell`, :class:`~rnnkit.cells.MinLSTMCell` and their
    subclasses that keep their ``forward`` and ``scan`` (a subclass that changes one of them
    would no longer be computed by the other), without hooks that run at each call (they
    run once per step on the loop: :func:`rnnkit.engine.hooks.step_hook`).
    """
    base = _min_cell_class()
    kind = type(cell)
    if not isinstance(cell, base):
        return False, f"{kind.__name__} has no parallel scan (covered: MinGRUCell, MinLSTMCell)"
    for method in ("forward", "scan"):
        if getattr(kind, method) is not getattr(base, method):
            return False, f"{kind.__name__} overrides {method}(), so the scan may not match it"
    hooked = step_hook(cell)
    if hooked is not None:
        return False, hooked
    return True, (f"{kind.__name__}'s gates see only the input, so its recurrence is linear "
                  f"in the state: the gates of all steps at once (one GEMM), then the "
                  f"recurrence as one autograd node (one C++ pass through time forward and "
                  f"one backward, or torch operations without the compiled kernels), no "
                  f"per-step autograd")


def _gates(kind: str, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, v, g)`` of the recurrence ``h_t = a_t h_{t-1} + v_t`` from the pre-activations
    ``pre (G, T, B, H)``, written exactly as the cell's step writes them (recorded by
    autograd for gradients of gradients): minGRU ``a = 1 - z``, ``v = z * g``; minLSTM
    ``a = f / (f + i)``, ``v = (i / (f + i)) * g``; ``g`` the candidate
    :func:`rnnkit.functional.min_rnn_g`."""
    if kind == "gru":
        z_pre, h_pre = pre.unbind(0)  # (T, B, H) each
        z = torch.sigmoid(z_pre)
        g = RF.min_rnn_g(h_pre)
        return 1.0 - z, z * g, g
    f_pre, i_pre, h_pre = pre.unbind(0)
    forget, inp = torch.sigmoid(f_pre), torch.sigmoid(i_pre)  # (T, B, H) each
    total = forget + inp
    g = RF.min_rnn_g(h_pre)
    return forget / total, (inp / total) * g, g


def _gates_saved(kind: str, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(a, v, g, s, b)`` from ``pre (G, T, B, H)`` in few whole-sequence passes over
    contiguous blocks, keeping what the backward reads: ``s = sigmoid(pre)`` (one pass for
    every gate and the candidate's negative branch), ``g = max(h_pre + 1/2,
    sigmoid(h_pre))`` (the candidate :func:`rnnkit.functional.min_rnn_g`: ``x + 1/2 >=
    sigmoid(x)`` exactly when ``x >= 0``; a boolean mask and ``where`` cost several passes
    on a CPU), and ``b``, the coefficient of ``g`` in ``v = b g`` (minGRU ``z``, minLSTM
    ``i / (f + i)``)."""
    s = torch.sigmoid(pre)  # (G, T, B, H)
    g = torch.add(pre[-1], 0.5)  # (T, B, H)
    torch.maximum(g, s[-1], out=g)
    if kind == "gru":
        b = s[0]  # z
        a = torch.rsub(b, 1.0)  # 1 - z
    else:
        forget, inp = s[0], s[1]
        total = forget + inp
        a = torch.div(forget, total)  # f / (f + i)
        b = torch.div(inp, total, out=total)  # i / (f + i)
    return a, torch.mul(b, g), g, s, b


def _recur(a: Tensor, v: Tensor, h0: Tensor, reverse: bool, out: Tensor) -> Tensor:
    """``out[t] = a[t] * h + v[t]`` step by step from ``h0`` (``reverse``: from the last
    step down), one fused multiply-add per step, no autograd; ``out`` may be ``v``
    itself."""
    h = h0
    steps = v.shape[0]
    a_t, v_t, out_t = a.unbind(0), v.unbind(0), out.unbind(0)  # views, made once
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        h = torch.addcmul(v_t[t], a_t[t], h, out=out_t[t])
    return out


def _recur_differentiable(a: Tensor, v: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """:func:`_recur` recorded by autograd (double backward)."""
    h, hs = h0, [None] * v.shape[0]
    for t in (range(v.shape[0] - 1, -1, -1) if reverse else range(v.shape[0])):
        h = hs[t] = a[t] * h + v[t]
    return torch.stack(hs)


class _MinScan(torch.autograd.Function):
    """All states of a minGRU/minLSTM from its pre-activations and ``h0 (B, H)``: one
    autograd node. ``pre`` is the input projection of every step: ``(T, B, G*H)``, the gates
    side by side, for the compiled kernel ``kernel``; ``(G, T, B, H)``, gate by gate, for the
    torch operations (``kernel`` None).

    With the compiled kernels, forward and backward are each one C++ pass through time
    (``min_scan_forward``/``min_scan_backward``: the gates recomputed from ``pre`` in the
    backward, the same equations as below); otherwise, in torch operations:

    Forward: the gates of all steps in a few whole-sequence operations (:func:`_gates_saved`),
    then the recurrence ``h_t = a_t h_{t-1} + v_t``, one fused multiply-add per step
    (``B*H`` elements: below torch's parallel grain, so no thread barrier per step).
    Backward: the adjoint of a linear recurrence is the same recurrence run the other way,
    ``G_t = dh_t + a_{t+1} G_{t+1}``; the gradient of the pre-activations then follows in
    whole-sequence operations written out by hand from the forward's saved gates (nothing
    recomputed), straight into one ``(G, T, B, H)`` buffer:

    * minGRU: ``d z_pre = G (g - h_{t-1}) z (1 - z)``, ``d h_pre = G z g'``;
    * minLSTM (``a = f/(f+i)``, ``b = i/(f+i)``): ``d f_pre = G (h_{t-1} - g) a b (1 - f)``,
      ``d i_pre = -G (h_{t-1} - g) a b (1 - i)``, ``d h_pre = G b g'``;

    with ``g' = 1`` where ``h_pre >= 0`` and ``sigma'(h_pre)`` elsewhere. Under
    ``create_graph=True`` the backward recomputes the same values with autograd recording
    instead, so gradients of gradients work.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, h0: Tensor, kind: str, reverse: bool, kernel: Any) -> Tensor:
        ctx.kind, ctx.reverse, ctx.kernel = kind, reverse, kernel
        if kernel is not None:  # pre (T, B, G*H); the backward recomputes the gates from it
            hs = kernel.min_scan_forward(pre, h0, kind == "gru", reverse)  # (T, B, H)
            ctx.save_for_backward(pre, h0, hs)
            return hs
        a, v, g, s, b = _gates_saved(kind, pre)  # pre (G, T, B, H)
        hs = _recur(a, v, h0, reverse, v)  # (T, B, H): in place of v (v_t is read once)
        ctx.save_for_backward(pre, h0, hs, a, g, s, b)
        return hs

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        pre, h0, hs, *gates = ctx.saved_tensors
        kind, reverse, kernel = ctx.kind, ctx.reverse, ctx.kernel
        if not torch.is_grad_enabled() and kernel is not None:
            grad_pre, grad_h0 = kernel.min_scan_backward(
                grad, pre, h0, hs, kind == "gru", reverse, ctx.needs_input_grad[0],
                ctx.needs_input_grad[1])
            return grad_pre, grad_h0, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: recompute, recorded
            wanted = [t for t, need in zip((pre, h0), ctx.needs_input_grad[:2], strict=True)
                      if need]
            gate_major = pre
            if kernel is not None:  # (T, B, G*H) -> (G, T, B, H), recorded
                steps, batch = pre.shape[:2]
                gate_major = pre.view(steps, batch, -1, h0.shape[-1]).permute(2, 0, 1, 3)
            a2, v2, _ = _gates(kind, gate_major)
            states = _recur_differentiable(a2, v2, h0, reverse)
            grads = iter(torch.autograd.grad(states, wanted, grad, create_graph=True))
            return (next(grads) if ctx.needs_input_grad[0] else None,
                    next(grads) if ctx.needs_input_grad[1] else None, None, None, None)
        a, g, s, b = gates  # saved by the torch-ops forward (a native forward never gets here)
        steps = grad.shape[0]
        # adjoints: G_t = dh_t + a_{t+1} G_{t+1} (reverse: a_{t-1} G_{t-1}), in time order
        adj = torch.empty_like(a)  # (T, B, H)
        grad_t, a_t, adj_t = grad.unbind(0), a.unbind(0), adj.unbind(0)
        order = range(steps) if reverse else range(steps - 1, -1, -1)
        step = -1 if reverse else 1
        previous = None
        for t in order:
            if previous is None:
                previous = adj_t[t].copy_(grad_t[t])
            else:
                previous = torch.addcmul(grad_t[t], a_t[t + step], previous, out=adj_t[t])
        first = steps - 1 if reverse else 0  # the step that reads h0
        grad_h0 = a[first] * adj[first] if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_h0, None, None, None
        # g_t - carry_t, with carry_t = h_{t-1} (reverse: h_{t+1}), h0 at the first step
        delta = torch.empty_like(g)  # (T, B, H)
        if reverse:
            torch.sub(g[:-1], hs[1:], out=delta[:-1])
            torch.sub(g[-1], h0, out=delta[-1])
        else:
            torch.sub(g[1:], hs[:-1], out=delta[1:])
            torch.sub(g[0], h0, out=delta[0])
        delta.mul_(adj).mul_(a)  # G (g - carry) a
        grad_pre = torch.empty_like(pre)  # (G, T, B, H)
        if kind == "gru":
            # d z_pre = G (g - carry) z (1 - z), with z = b, 1 - z = a
            torch.mul(delta, b, out=grad_pre[0])
        else:
            delta.mul_(b)  # G (g - carry) a b = -D
            # d f_pre = D (1 - f) = (-D) f - (-D);  d i_pre = -D (1 - i) = (-D) - (-D) i
            torch.mul(delta, s[0], out=grad_pre[0]).sub_(delta)
            torch.addcmul(delta, delta, s[1], value=-1.0, out=grad_pre[1])
        # d h_pre = G b g'(h_pre): G b sigmoid' where h_pre < 0, G b where h_pre >= 0
        adj.mul_(b)  # G b
        grad_h = grad_pre[-1]
        torch.ops.aten.sigmoid_backward.grad_input(adj, s[-1], grad_input=grad_h)
        negative = torch.clamp(pre[-1], max=0.0, out=delta).sign_().neg_()  # 1: h_pre < 0
        torch.lerp(adj, grad_h, negative, out=grad_h)
        return grad_pre, grad_h0, None, None, None


def _kernel(like: Tensor) -> Any | None:
    """The compiled extension when it serves ``like``'s dtype and device (its ``min_scan_*``
    run the recurrence and its backward in one C++ pass each), else ``None`` (torch ops)."""
    if like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        return None
    from rnnkit.engine.compiled import _build

    module, _ = _build.load()
    return module if module is not None and hasattr(module, "min_scan_forward") else None


def _kind(cell: nn.Module) -> str | None:
    step = type(cell)._step
    return {RF.min_gru_step: "gru", RF.min_lstm_step: "lstm"}.get(step)


def _scan(cell: nn.Module, x: Tensor, state: Tensor, reverse: bool = False) -> Tensor:
    """All states of ``cell`` over ``x (T, B, H_in)`` from ``state``: the input projection of
    all steps in one GEMM, then :class:`_MinScan`; a cell whose step is not minGRU's or
    minLSTM's runs its own ``scan``."""
    check_input_dtype(cell, x)
    kind = _kind(cell)
    if kind is None:
        hs = cell.scan(x.flip(0) if reverse else x, state)
        return hs.flip(0) if reverse else hs
    weights = cell.weights()
    steps, batch, features = x.shape
    gates = 2 if kind == "gru" else 3
    kernel = _kernel(x)
    if kernel is not None:  # the C++ scan reads the gates side by side in each row
        pre = F.linear(x, weights.weight_ih, weights.bias)  # (T, B, G*H)
    else:
        # gate-major: each gate's pre-activations one contiguous (T, B, H) block (the
        # elementwise passes over column slices of a (T, B, G*H) product ran 2-3x slower)
        flat = x.reshape(1, steps * batch, features).expand(gates, -1, -1)  # (G, T*B, H_in)
        weight = weights.weight_ih.view(gates, -1, features).transpose(1, 2)  # (G, H_in, H)
        if weights.bias is None:
            pre = torch.bmm(flat, weight)  # (G, T*B, H)
        else:
            pre = torch.baddbmm(weights.bias.view(gates, 1, -1), flat, weight)
        pre = pre.view(gates, steps, batch, -1)  # (G, T, B, H)
    return _MinScan.apply(pre, state.to(pre.dtype), kind, reverse, kernel)


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: Tensor,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run a minGRU/minLSTM ``cell`` over time-major ``inputs (T, B, H_in)`` by its scan.

    Same arguments and result as :func:`rnnkit.engine.loop.run_recurrence` (``lengths``
    already checked): ``(outputs (T, B, H), final_state (B, H))``, outputs zero at padded
    steps, the final state each sequence's own last. Differentiable in everything.

    Example:
        >>> import torch
        >>> from rnnkit.cells import MinGRUCell
        >>> from rnnkit.engine import loop
        >>> cell = MinGRUCell(3, 4).double()
        >>> x, h0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.zeros(2, 4).double()
        >>> out, h = run_recurrence(cell, x, h0, lengths=torch.tensor([6, 3]), reverse=True)
        >>> ref, ref_h = loop.run_recurrence(cell, x, h0, lengths=torch.tensor([6, 3]),
        ...                                  reverse=True)
        >>> bool(torch.allclose(out, ref)) and bool(torch.allclose(h, ref_h))
        True
    """
    steps, batch = inputs.shape[0], inputs.shape[1]
    if lengths is not None and bool((lengths == steps).all()):
        lengths = None  # every sequence runs all T steps
    if lengths is None:
        hs = _scan(cell, inputs, state, reverse)  # (T, B, H)
        return hs, (hs[0] if reverse else hs[-1])
    lengths = lengths.to(inputs.device)
    valid = torch.arange(steps, device=inputs.device)[:, None] < lengths[None, :]  # (T, B)
    keep = valid.unsqueeze(-1)  # (T, B, 1)
    x = torch.where(keep, inputs, 0.0)  # (T, B, H_in): padding cannot leak nan into grads
    index = reverse_index(lengths, steps) if reverse else None  # (T, B)
    if index is not None:
        x = reverse_within_lengths(x, index)  # each sequence from its own last step
    hs = _scan(cell, x, state)  # (T, B, H)
    last = (lengths - 1).view(1, batch, 1).expand(1, batch, hs.shape[2])  # (1, B, H)
    final = hs.gather(0, last).squeeze(0)  # (B, H): each sequence's own last step
    if index is not None:
        hs = reverse_within_lengths(hs, index)  # back to the original time positions
    return torch.where(keep, hs, 0.0), final  # (T, B, H)
