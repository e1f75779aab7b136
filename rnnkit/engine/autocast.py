"""Recurrences under ``torch.autocast``: run in the parameters' dtype, outside the autocast region.

Autocast casts each op's inputs on its own, which suits a feed-forward graph but not a recurrence:
the state produced in one dtype meets the next step's weights in another, and the kernels that
run a whole sequence at once (torch's ``_VF.lstm`` on oneDNN, rnnkit's compiled kernels) want one
dtype for input, state and weights. On a CPU without AVX512-bf16/AMX even ``torch.nn.LSTM``
fails under ``torch.autocast("cpu", dtype=torch.bfloat16)`` ("could not create a primitive
descriptor for the LSTM forward propagation primitive"). So every rnnkit recurrence runs with
autocast disabled, its floating inputs and states cast to its parameters' dtype (float32 for a
float32 model), and the layers around it (embeddings, heads, attention) stay under autocast.
This is also what keeps a long recurrence numerically stable: the state is never rounded to
bfloat16 between steps. The price: on CPUs with AMX or AVX512-bf16, torch's own LSTM/GRU under
autocast run about 4x faster than in float32 (``shared/notes/cpu.md``, machine B), and these
layers do not take that speed from autocast; for bfloat16 recurrence kernels on such CPUs use
:func:`rnnkit.engine.precision` or a layer's ``precision="bf16"`` explicitly (torch's fused
kernels in bf16, or the compiled kernels' bf16 GEMMs with float32 state: docs/engine.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["autocast_active", "outside_autocast"]

F = TypeVar("F", bound=Callable[..., Any])


def _enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 has only the CUDA query without arguments
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())
    except RuntimeError:  # a device type autocast does not know ("meta"): never autocast
        return False


#: Whether autocast is on for any device type (torch >= 2.4; None before: ask per device).
_any_enabled: Callable[[], bool] | None = getattr(torch._C, "_is_any_autocast_enabled", None)


def _first_tensor(values: Any) -> Tensor | None:
    if isinstance(values, Tensor):
        return values
    if isinstance(values, PackedSequence):
        return values.data
    if isinstance(values, (tuple, list)):
        for value in values:
            found = _first_tensor(value)
            if found is not None:
                return found
    if isinstance(values, dict):
        return _first_tensor(list(values.values()))
    return None


def autocast_active(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` ("cpu", "cuda", ...)."""
    return _enabled(device_type)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, PackedSequence):
        return value.to(dtype) if value.data.is_floating_point() else value
    if isinstance(value, tuple) and type(value) is not tuple:  # named tuples keep their type
        return type(value)(*(_cast(v, dtype) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _parameter_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return fallback


def outside_autocast(forward: F) -> F:
    """Decorate a recurrent module's ``forward``: under autocast, run it with autocast off and
    its floating arguments in the module's parameter dtype (see the module docstring)."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if _any_enabled is not None and not _any_enabled():  # the common case, one C call
            return forward(self, *args, **kwargs)
        first = _first_tensor(args)
        if first is None:
            first = _first_tensor(kwargs)
        if first is None or not _enabled(first.device.type):
            return forward(self, *args, **kwargs)
        fallback = torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype
        dtype = _parameter_dtype(self, fallback)
        with torch.autocast(first.device.type, enabled=False):
            return forward(self, *_cast(args, dtype), **{k: _cast(v, dtype)
                                                         for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
