r"""The fused path: whole drop-in modules through PyTorch's own RNN kernels.

A drop-in module (:class:`rnnkit.LSTM`, :class:`rnnkit.GRU`, :class:`rnnkit.RNN`) whose
configuration equals a ``torch.nn`` module computes exactly what ``torch.nn`` computes, so
it can call the same kernels: ``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``
(oneDNN's LSTM primitive on CPU, cuDNN on CUDA, ATen's native loop otherwise).

Symbols (as in ``torch.nn.LSTM``):

======  ==========================================================
T       number of time steps (padded length)
B       batch size
H_in    input size
H       hidden size
H_out   output size: ``proj_size`` if ``proj_size > 0`` else ``H``
L       number of layers
D       2 if bidirectional else 1
======  ==========================================================

Variable lengths without PyTorch's PackedSequence kernels
--------------------------------------------------------
``torch.nn.LSTM`` on a PackedSequence runs ATen's per-step CPU path (no oneDNN), which is
many times slower than the padded kernel (pytorch/pytorch#149194). Here the batch is sorted by
length once (``argsort``, tensors only), time is split at the distinct lengths
:math:`0 = s_0 < s_1 < \dots < s_K = \max_b \ell_b` and segment :math:`k` runs the padded
fused kernel on :math:`x[s_{k-1}:s_k,\ :n_k]`, where :math:`n_k = |\{b: \ell_b > s_{k-1}\}|`
is the still-active prefix of the sorted batch, carrying the state between segments. Every
sequence therefore stops exactly at its own last step (exact final states), padded outputs
are zero, and the work done is :math:`\sum_b \ell_b` steps, not :math:`T B`. The reverse
direction reads each sequence from its own last step: inputs are reversed within each length
by one ``gather``, the same segmented forward recurrence runs, and outputs are gathered back.

Example::

    >>> import torch, rnnkit.engine.fused as fused
    >>> lstm = torch.nn.LSTM(3, 5, num_layers=2)
    >>> x = torch.randn(7, 4, 3)                       # (T, B, H_in)
    >>> out, (h, c) = fused.forward(lstm, x, None, torch.tensor([7, 2, 5, 5]))
    >>> out.shape, h.shape
    (torch.Size([7, 4, 5]), torch.Size([2, 4, 5]))
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

from rnnkit._caller import warn
from rnnkit.engine.lengths import (
    check_lengths,
    check_steps,
    reverse_index,
    reverse_within_lengths,
)

HiddenState = Tensor | tuple[Tensor, Tensor]

#: torch.nn ``mode`` -> the fused ATen entry point.
KERNELS = {
    "LSTM": "lstm",
    "GRU": "gru",
    "RNN_TANH": "rnn_tanh",
    "RNN_RELU": "rnn_relu",
}

#: Precisions the fused path can run in.
PRECISIONS = ("fp32", "bf16")

_precision: contextvars.ContextVar[str] = contextvars.ContextVar(
    "rnnkit_engine_precision", default="fp32"
)


def _check_precision(value: str) -> str:
    aliases = {"float32": "fp32", "fp32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
    if not isinstance(value, str) or value.lower() not in aliases:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
    return aliases[value.lower()]


@contextlib.contextmanager
def precision(value: str) -> Iterator[None]:
    """Run fused-path calls inside the block at ``value`` precision ("fp32" or "bf16").

    With ``"bf16"`` the input, initial state and weights are cast to bfloat16 before the fused
    kernel and the outputs are cast back to the input's dtype. This is meant for inference: on
    CPUs with AVX512-bf16 or AMX the kernels run at bf16 speed; on other CPUs PyTorch emulates
    bf16 and it is usually *slower* than float32 (see ``docs/benchmarks.md``). The fused path
    honours it, and so do ``Recurrence``/``Fold`` and a drop-in's layer-by-layer path: a
    cell on rnnkit's compiled kernels runs its GEMMs in bf16 with float32 state and gate math
    (``rnnkit.engine.compiled._bf16``); ``Recurrence`` casts any other cell to bfloat16,
    a drop-in's layer that the kernels do not serve runs in its parameters' dtype.
    ``precision="bf16"`` as a module's constructor argument has the same effect on that
    module without the block.

    Example::

        >>> import torch, rnnkit.engine as engine
        >>> lstm = torch.nn.LSTM(8, 16).eval()
        >>> with torch.no_grad(), engine.precision("bf16"):
        ...     out, _ = engine.fused.forward(lstm, torch.randn(5, 2, 8), None, None)
        >>> out.dtype
        torch.float32
    """
    token = _precision.set(_check_precision(value))
    try:
        yield
    finally:
        _precision.reset(token)


def check_precision(owner: str, value: object) -> str:
    """Validate a module's ``precision=`` constructor argument ("fp32"/"float32" or
    "bf16"/"bfloat16") and return its short name; the error names ``owner``."""
    try:
        return _check_precision(value)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"{owner}: precision must be 'fp32' or 'bf16' (or 'float32', "
                         f"'bfloat16'), got {value!r}") from None


def current_precision(module: nn.Module | None = None) -> str:
    """The precision in force for ``module``: its own ``precision="bf16"`` constructor
    argument, else the one :func:`precision` sets (default "fp32")."""
    own = getattr(module, "precision", None) if module is not None else None
    if own == "bf16":
        return "bf16"
    return _precision.get()


def notice_emulated_bf16() -> None:
    """Say once per process, on a CPU without AVX512-bf16/AMX, that bf16 is emulated."""
    _notice_emulated_bf16()


# ----------------------------------------------------------------------------- eligibility

# Sequence features a drop-in may carry on top of torch.nn that change the recurrence itself,
# with the value that means "off". (``dropout_input`` is not here: the drop-ins apply it to the
# inputs before calling the engine, so the recurrence is still torch's; ``stateful`` only
# supplies the initial state.) ``recurrent_dropout`` is off in eval mode.
_MODULE_FEATURES: dict[str, tuple[object, str]] = {
    "recurrent_dropout": (0.0, "recurrent_dropout (variational dropout on h)"),
    "zoneout": (0.0, "zoneout"),
    "residual": (False, "residual connections between layers"),
}


def _is_off(value: object, off: object) -> bool:
    """Whether an option's ``value`` leaves torch.nn's computation unchanged (``off``)."""
    if value is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_off(v, off) for v in value)
    return value == off


def module_kind(module: nn.Module) -> str | None:
    """torch.nn's ``mode`` of a drop-in module ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")."""
    mode = getattr(module, "mode", None)
    return mode if mode in KERNELS else None


def ineligibility(module: nn.Module) -> str | None:
    """Why ``module`` cannot run on the fused path, or None when it can.

    The answer names the option that prevents it, e.g. ``"cell option peepholes=True"``.
    """
    if module_kind(module) is None:
        mode = getattr(module, "mode", None)
        return (
            f"{type(module).__name__} is not a torch-style RNN module (mode={mode!r}; the fused "
            f"path serves modes {', '.join(KERNELS)})"
        )
    for name, (off, description) in _MODULE_FEATURES.items():
        value = getattr(module, name, None)
        if name == "recurrent_dropout" and not module.training:
            continue  # dropout is off in eval mode: the recurrence is torch's
        if not _is_off(value, off):
            return f"{description} is active ({name}={value!r})"
    # the drop-ins list only the cell options that differ from torch.nn's cell
    for name, value in (getattr(module, "cell_options", None) or {}).items():
        return f"cell option {name}={value!r} has no torch.nn equivalent"
    return None


def flat_weights(module: nn.Module) -> list[Tensor]:
    """The module's weights in ``torch.nn.RNNBase._flat_weights`` order (``torch.nn`` modules
    and the rnnkit drop-ins both expose them as ``_flat_weights``)."""
    return list(module._flat_weights)


# ----------------------------------------------------------------------------- helpers


def _directions(module: nn.Module) -> int:
    return 2 if module.bidirectional else 1


def _hidden_out(module: nn.Module) -> int:
    proj = getattr(module, "proj_size", 0) or 0
    return proj if proj > 0 else module.hidden_size


def _zeros_state(module: nn.Module, inputs: Tensor) -> HiddenState:
    rows = module.num_layers * _directions(module)
    batch = inputs.size(1)
    h = inputs.new_zeros(rows, batch, _hidden_out(module))
    if module_kind(module) == "LSTM":
        return (h, inputs.new_zeros(rows, batch, module.hidden_size))
    return h


def _as_tuple(hx: HiddenState) -> tuple[Tensor, ...]:
    return tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)


def _from_tuple(module: nn.Module, parts: Sequence[Tensor]) -> HiddenState:
    return (parts[0], parts[1]) if module_kind(module) == "LSTM" else parts[0]


class _Kernel(NamedTuple):
    """The arguments of one torch kernel call besides the input and the state."""

    kind: str
    weights: list[Tensor]
    bias: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool


def _call_kernel(kernel: _Kernel, inputs: Tensor,
                 state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One call of torch's fused kernel, time-major: inputs (T, B, H_in)."""
    fn = getattr(_VF, KERNELS[kernel.kind])
    args = (kernel.weights, kernel.bias, kernel.num_layers, kernel.dropout, kernel.train,
            kernel.bidirectional, False)
    if kernel.kind == "LSTM":
        out, h, c = fn(inputs, state, *args)
        return out, (h, c)
    out, h = fn(inputs, state[0], *args)
    return out, (h,)


def segments(sorted_lengths: list[int]) -> list[tuple[int, int, int]]:
    """Time segments ``(start, stop, n_active)`` for lengths sorted in descending order.

    In ``[start, stop)`` exactly the first ``n_active`` sequences are still running.

    >>> segments([7, 5, 5, 2])
    [(0, 2, 4), (2, 5, 3), (5, 7, 1)]
    """
    bounds = sorted(set(sorted_lengths))
    out = []
    start = 0
    for stop in bounds:
        active = sum(1 for n in sorted_lengths if n > start)
        out.append((start, stop, active))
        start = stop
    return out


def _run_segmented(
    kernel: _Kernel, inputs: Tensor, state: tuple[Tensor, ...], plan: list[tuple[int, int, int]]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Forward-direction recurrence over a length-sorted batch, one kernel call per segment.

    inputs (T, B, H_in) sorted by length descending; state parts (L, B, *). Returns outputs
    (T, B, H_out) with zeros past each length and each sequence's state at its own last step.
    """
    steps, batch = inputs.shape[:2]
    pieces: list[Tensor] = []
    finished: list[tuple[Tensor, ...]] = []
    for start, stop, active in plan:
        if active < state[0].size(1):
            # sequences [active, current) ended at `start`: their state is final
            finished.append(tuple(s[:, active:] for s in state))
            state = tuple(s[:, :active] for s in state)
        out, state = _call_kernel(kernel, inputs[start:stop, :active], state)  # (S, n, H_out)
        pieces.append(F.pad(out, (0, 0, 0, batch - active)) if active < batch else out)
    finished.append(state)
    output = torch.cat(pieces, dim=0)  # (max_len, B, H_out)
    if output.size(0) < steps:
        output = F.pad(output, (0, 0, 0, 0, 0, steps - output.size(0)))  # (T, B, H_out)
    final = tuple(torch.cat([f[i] for f in reversed(finished)], dim=1)
                  for i in range(len(state)))  # (L, B, *) in sorted order
    return output, final


def _forward_lengths(
    module: nn.Module,
    kind: str,
    inputs: Tensor,
    state: tuple[Tensor, ...],
    weights: list[Tensor],
    lengths: Tensor,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    steps, batch = inputs.shape[:2]
    layers, directions = module.num_layers, _directions(module)
    dropout, train = float(module.dropout), module.training
    kernel = _Kernel(kind, weights, module.bias, layers, dropout, train, False)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths.index_select(0, order)
    order_dev = order.to(inputs.device)
    inverse = torch.empty_like(order_dev)
    inverse[order_dev] = torch.arange(batch, device=inputs.device)
    plan = segments(sorted_lengths.tolist())

    x = inputs.index_select(1, order_dev)  # (T, B, H_in), longest first
    state = tuple(s.index_select(1, order_dev) for s in state)

    if directions == 1:
        # a unidirectional stack can run all its layers per segment: layer l at step t only
        # needs layer l-1 at step t
        output, final = _run_segmented(kernel, x, state, plan)
    else:
        per = len(weights) // (layers * directions)
        rev = reverse_index(sorted_lengths.to(inputs.device), steps)  # (T, B)
        finals: list[list[Tensor]] = [[] for _ in state]
        layer_input = x
        for layer in range(layers):
            outs = []
            for d in range(directions):
                row = layer * directions + d
                w = weights[row * per:(row + 1) * per]
                s0 = tuple(s[row:row + 1] for s in state)
                src = layer_input if d == 0 else reverse_within_lengths(layer_input, rev)
                one = kernel._replace(weights=w, num_layers=1, dropout=0.0)
                out, fin = _run_segmented(one, src, s0, plan)
                outs.append(out if d == 0 else reverse_within_lengths(out, rev))
                for i, f in enumerate(fin):
                    finals[i].append(f)
            layer_input = torch.cat(outs, dim=-1)  # (T, B, D*H_out)
            if dropout > 0 and train and layer < layers - 1:
                layer_input = F.dropout(layer_input, dropout, training=True)
        output = layer_input
        final = tuple(torch.cat(f, dim=0) for f in finals)
    output = output.index_select(1, inverse)
    final = tuple(f.index_select(1, inverse) for f in final)
    return output, final


# ----------------------------------------------------------------------------- bf16 weights

_bf16_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _cast_weights(module: nn.Module, weights: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """Weights cast to ``dtype``; cached per module while gradients are off and they are
    unchanged (a parameter update bumps ``_version`` and invalidates the cache)."""
    if torch.is_grad_enabled():
        return [w.to(dtype) for w in weights]
    key = tuple((w.data_ptr(), w._version, w.dtype, dtype) for w in weights)
    hit = _bf16_cache.get(module)
    if hit is not None and hit[0] == key:
        return hit[1]
    cast = [w.detach().to(dtype) for w in weights]
    _bf16_cache[module] = (key, cast)
    return cast


# ----------------------------------------------------------------------------- entry point


def forward(
    module: nn.Module,
    inputs: Tensor,
    hx: HiddenState | None,
    lengths: Tensor | None,
) -> tuple[Tensor, HiddenState]:
    """Run ``module`` (torch-compatible configuration) through torch's fused kernels.

    Args:
        module: a ``torch.nn.RNN/LSTM/GRU`` or an rnnkit drop-in for which
            :func:`ineligibility` is None.
        inputs: (T, B, H_in), time-major.
        hx: None (zeros) or torch.nn's format: (L*D, B, H_out), or ``(h0, c0)`` for LSTM with
            c0 (L*D, B, H).
        lengths: None, or int64 (B,) with 1 <= lengths <= T.

    Returns:
        ``(output (T, B, D*H_out), h_n)`` or ``(output, (h_n, c_n))`` for LSTM; outputs are
        zero at padded steps and final states are each sequence's state at its own last step.
    """
    reason = ineligibility(module)
    if reason is not None:
        raise ValueError(f"the fused path cannot run this module: {reason}")
    kind = module_kind(module)
    assert kind is not None
    if inputs.dim() != 3:
        raise ValueError(f"fused path: inputs must be (T, B, H_in), got shape "
                         f"{tuple(inputs.shape)}")
    steps, batch = inputs.shape[:2]
    check_steps(steps, "fused path")
    state = _as_tuple(hx if hx is not None else _zeros_state(module, inputs))
    weights = flat_weights(module)

    out_dtype = inputs.dtype
    if current_precision(module) == "bf16" and inputs.dtype != torch.bfloat16:
        if inputs.device.type == "cpu":
            _notice_emulated_bf16()
        inputs = inputs.to(torch.bfloat16)
        state = tuple(s.to(torch.bfloat16) for s in state)
        weights = _cast_weights(module, weights, torch.bfloat16)

    full = lengths is None
    if not full:
        lengths = check_lengths(lengths, batch, steps, inputs.device)
        full = bool((lengths == steps).all())
    if full:
        kernel = _Kernel(kind, weights, module.bias, module.num_layers, float(module.dropout),
                         module.training, module.bidirectional)
        output, final = _call_kernel(kernel, inputs, state)
    else:
        output, final = _forward_lengths(module, kind, inputs, state, weights, lengths)
    if output.dtype != out_dtype:
        output = output.to(out_dtype)
        final = tuple(f.to(out_dtype) for f in final)
    return output, _from_tuple(module, final)


def describe_kernel(module: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Which torch kernel the fused path lands in for this module, device and dtype."""
    kind = module_kind(module)
    name = f"torch._VF.{KERNELS[kind]}" if kind else "torch._VF"
    if device.type == "cuda":
        return f"{name} -> cuDNN" if torch.backends.cudnn.is_available() else f"{name} (CUDA)"
    if device.type != "cpu":
        return f"{name} on {device.type}"
    proj = (getattr(module, "proj_size", 0) or 0) > 0
    if (kind == "LSTM" and not proj and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and (dtype == torch.float32 or (dtype == torch.bfloat16 and _cpu_has_bf16()))):
        return f"{name} -> oneDNN LSTM primitive"
    why = ("proj_size > 0" if kind == "LSTM" and proj
           else "bf16 without AVX512-bf16/AMX" if kind == "LSTM" and dtype == torch.bfloat16
           else "torch has no oneDNN path for this mode" if kind != "LSTM"
           else f"dtype {dtype}")
    return f"{name} -> ATen native C++ loop ({why})"


_bf16_notice_given = False


def _notice_emulated_bf16() -> None:
    """Say once per process that bf16 on this CPU is emulated (and usually slower)."""
    global _bf16_notice_given
    if _bf16_notice_given or _cpu_has_bf16():
        return
    _bf16_notice_given = True
    warn(
        "rnnkit: precision='bf16' on a CPU without AVX512-bf16/AMX: PyTorch emulates bfloat16 "
        "here, which is usually slower than float32, and rnnkit's compiled kernels emulate "
        "their bf16 GEMMs, no faster than float32 (see docs/benchmarks.md). This notice is "
        "shown once per process.",
        RuntimeWarning,
    )


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
