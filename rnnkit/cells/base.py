"""The contract every rnnkit cell follows.

A cell computes one time step and knows nothing about time::

    output, new_state = cell(x, state)      # x: (B, H_in)

``state`` is a tensor ``(B, H)`` for single-state cells (Elman, GRU, ...) or a tuple of
tensors for multi-state cells (LSTM: ``(h, c)``). ``output`` is ``(B, output_size)``.
Drivers in :mod:`rnnkit.layers` and :mod:`rnnkit.engine` run a cell over a sequence;
any ``nn.Module`` with the same call signature, ``state_size`` and ``initial_state`` can be
driven the same way.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.config import Configurable
from rnnkit.errors import DeviceError, DTypeError, ShapeError

State = Tensor | tuple[Tensor, ...]


def check_size(name: str, value: int, minimum: int = 1, owner: str | None = None) -> int:
    """Validate an integer size argument (any integral type, NumPy's included; not a bool)
    and return it as an ``int``; ``owner`` (the cell's name) prefixes the error."""
    where = f"{owner}: {name}" if owner else name
    if isinstance(value, torch.SymInt):  # a dynamic size while torch.export records a graph
        return value  # type: ignore[return-value]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{where} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value}")
    return int(value)


def check_flag(owner: str, name: str, value: object) -> bool:
    """Validate a boolean constructor option (``bias``, ``peepholes``, ...); NumPy's bool
    is accepted, numbers are not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} ({value!r})")
    return bool(value)


def check_proj_size(owner: str, proj_size: object, hidden_size: int) -> int:
    """Validate ``proj_size``: 0 (no projection) or a size smaller than ``hidden_size``."""
    proj_size = check_size("proj_size", proj_size, minimum=0, owner=owner)
    if proj_size >= hidden_size:
        raise ValueError(
            f"{owner}: proj_size must be smaller than hidden_size, got proj_size={proj_size}"
            f" and hidden_size={hidden_size}"
        )
    return proj_size


def check_dtype(owner: str, dtype: object) -> torch.dtype | None:
    """Validate a ``dtype=`` argument: ``None`` or a floating-point ``torch.dtype`` (parameters
    and states need one: gradients exist only for floating-point tensors)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{owner}: dtype must be a torch.dtype such as torch.float32, got "
            f"{type(dtype).__name__} ({dtype!r})"
        )
    if not dtype.is_floating_point:
        raise TypeError(
            f"{owner}: dtype must be a floating-point dtype (float32, float64, float16, "
            f"bfloat16), got {dtype}"
        )
    return dtype


def factory_kwargs(owner: str, device: object, dtype: object) -> dict[str, object]:
    """``{"device": ..., "dtype": ...}`` for creating a cell's parameters, checked first so
    that a bad value is reported with the cell's name rather than from inside torch."""
    if device is not None:
        try:
            device = torch.device(device)  # type: ignore[arg-type]
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{owner}: invalid device {device!r}: {error}") from None
    return {"device": device, "dtype": check_dtype(owner, dtype)}


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """Validate a string option against its allowed values."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def check_real(owner: str, name: str, value: object, *, optional: bool = False) -> float | None:
    """Validate a finite real-number option and return it as a float (``None`` passes
    through when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        or_none = " or None" if optional else ""
        raise TypeError(f"{owner}: {name} must be a finite number{or_none}, got {value!r}")
    return float(value)


def check_positive(owner: str, name: str, value: object) -> float | None:
    """Validate an optional positive bound (``cell_clip``, ``recurrent_max_abs``): a float,
    or ``None`` for no bound."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: {name} must be a positive number or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value}")
    return float(value)


def optional_parameter(
    wanted: bool,
    *shape: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Parameter | None:
    """An uninitialised parameter of ``shape``, or ``None`` when not ``wanted``; pass it to
    ``register_parameter`` so that an absent parameter reads as ``None`` (``torch.nn``'s way)."""
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype)) if wanted else None


def check_input_dtype(cell: RecurrentCell, x: Tensor) -> None:
    """The input must share the parameters' dtype: torch would fail deep inside otherwise."""
    weight = next(cell.parameters(), None)
    if weight is not None and x.dtype != weight.dtype:
        raise DTypeError(
            f"{type(cell).__name__}: input dtype {x.dtype} does not match the parameter dtype "
            f"{weight.dtype}; convert one of them (e.g. cell.to({x.dtype}))"
        )
    if weight is not None and x.device != weight.device:
        raise DeviceError(
            f"{type(cell).__name__}: the input is on {x.device} but the parameters are on "
            f"{weight.device}; move one of them (e.g. cell.to({str(x.device)!r}))"
        )


def check_state_tensor(
    cell: RecurrentCell, what: str, state: object, x: Tensor, size: int
) -> Tensor:
    """Raise a readable error unless ``state`` is a ``(B, size)`` tensor of ``x``'s dtype."""
    name = type(cell).__name__
    if not isinstance(state, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(state).__name__}")
    expected = (x.shape[0], size)
    if tuple(state.shape) != expected:
        raise ShapeError(
            f"{name}: expected {what} of shape {expected} (batch, {size}) for input of shape "
            f"{tuple(x.shape)}, got {tuple(state.shape)}"
        )
    if state.dtype != x.dtype:
        raise DTypeError(f"{name}: {what} dtype {state.dtype} does not match input dtype {x.dtype}")
    if state.device != x.device:
        raise DeviceError(f"{name}: {what} is on {state.device} but the input is on {x.device}")
    return state


def _is_layer_norm(module: nn.Module) -> bool:
    """Exactly ``torch.nn.LayerNorm`` (no subclass) over the last dimension: what the
    functional step and the kernels compute from its parameters."""
    return type(module) is nn.LayerNorm and len(module.normalized_shape) == 1


def _plain_layer_norm(module: nn.Module) -> bool:
    """:func:`_is_layer_norm`, with no hooks of its own."""
    return _is_layer_norm(module) and not (
        module._forward_hooks or module._forward_pre_hooks
        or module._backward_hooks or module._backward_pre_hooks)


def layer_norm_params(module: nn.Module | None) -> RF.LayerNormParams | None:
    """A cell's norm (or ``None``) as :class:`rnnkit.functional.LayerNormParams`: a plain
    ``nn.LayerNorm`` by its parameters; anything else (a subclass, another norm put in its
    place, or one with hooks) is called as the module it is."""
    if module is None:
        return None
    if _plain_layer_norm(module):
        return RF.LayerNormParams(module.weight, module.bias, module.eps)
    return RF.LayerNormParams(getattr(module, "weight", None), getattr(module, "bias", None),
                              getattr(module, "eps", 1e-5), module)


def replaced_layer_norms(cell: nn.Module) -> list[str]:
    """Names of the cell's norm slots (children named ``ln_*``) that hold something other
    than a plain ``torch.nn.LayerNorm`` (a subclass or another module put in its place): the
    fast paths compute ``nn.LayerNorm``'s formula, so such a cell runs its own steps."""
    return [name for name, child in cell.named_children()
            if name.startswith("ln_") and child is not None and not _is_layer_norm(child)]


class RecurrentCell(Configurable, nn.Module):
    """Base class of rnnkit cells.

    Subclasses set ``input_size``, ``hidden_size``, ``state_size`` (an int, or a tuple of
    ints for multi-state cells) and ``output_size``, and implement :meth:`forward`, which
    usually starts with ``state = self.prepare_call(x, state)``. Multi-state cells name
    their state's parts in ``state_names`` (used in error messages).
    """

    input_size: int
    hidden_size: int
    state_size: int | tuple[int, ...]
    output_size: int
    state_names: tuple[str, ...] = ("h", "c")
    # Parameters renamed since an earlier version: old name -> new name. load_state_dict
    # accepts a state_dict with the old names (see _load_from_state_dict).
    renamed_parameters: dict[str, str] = {}

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zeros in the shape of this cell's state for ``batch_size`` sequences."""
        owner = f"{type(self).__name__}.initial_state"
        batch_size = check_size("batch_size", batch_size, owner=owner)
        factory = factory_kwargs(owner, device, dtype)
        device, dtype = factory["device"], factory["dtype"]
        reference = next(self.parameters(), None)
        if device is None:
            device = reference.device if reference is not None else None
        if dtype is None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        if isinstance(self.state_size, tuple):
            return tuple(
                torch.zeros(batch_size, size, device=device, dtype=dtype)
                for size in self.state_size
            )
        return torch.zeros(batch_size, self.state_size, device=device, dtype=dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # torch's load_state_dict hands each module a copy of the dict it may rewrite
        for old, new in self.renamed_parameters.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _reset_uniform(self, bound: float, zeros: tuple[str, ...] = ()) -> None:
        """Draw this cell's own parameters from :math:`U(-bound, bound)` in registration order
        (so the random stream is ``torch.nn``'s), set those named in ``zeros`` to 0, and let
        submodules (layer norms) reset themselves."""
        for name, param in self.named_parameters(recurse=False):
            if name in zeros:
                nn.init.zeros_(param)
            else:
                nn.init.uniform_(param, -bound, bound)
        for module in self.children():
            module.reset_parameters()

    def check_input(self, x: Tensor) -> None:
        """Raise a readable error unless ``x`` is a floating ``(B, input_size)`` tensor."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__}: input must be a Tensor, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: input must be floating point, got dtype {x.dtype}"
            )
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__}: expected input of shape (batch, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )

    def prepare_call(self, x: Tensor, state: State | None) -> State:
        """Check one call's arguments and return the state to step from.

        ``x`` must be a floating ``(B, input_size)`` tensor of the parameters' dtype.
        ``state=None`` gives zeros (:meth:`initial_state`). Otherwise, as ``state_size``
        says, ``state`` is one ``(B, state_size)`` tensor (``"state h"``) or a tuple/list
        of ``(B, state_size[k])`` tensors named by ``state_names``, each of ``x``'s dtype;
        a list comes back as a tuple. Errors name the cell, the part and the shapes.
        """
        self.check_input(x)
        check_input_dtype(self, x)
        if state is None:
            return self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        if isinstance(self.state_size, int):
            return check_state_tensor(self, "state h", state, x, self.state_size)
        names = self.state_names
        if not isinstance(state, (tuple, list)) or len(state) != len(names):
            kind = "a pair" if len(names) == 2 else f"a tuple of {len(names)}"
            raise TypeError(
                f"{type(self).__name__}: state must be {kind} ({', '.join(names)}), "
                f"got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        return tuple(
            check_state_tensor(self, f"state {name}", part, x, size)
            for name, part, size in zip(names, state, self.state_size, strict=True)
        )
