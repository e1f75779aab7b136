"""TF1's cell wrappers (``tf.nn.rnn_cell`` / ``tf.contrib.rnn``): modules that wrap any cell
and are cells themselves, so they nest in each other, stack in a
:class:`~rnnkit.cells.MultiCell` (TF1 ``MultiRNNCell``) and run under every driver
(``Recurrence``, ``Fold``, ``UnfoldFrom``, ``Bidirectional``, ``Sequence``).

Ported from TensorFlow 1.x ``tensorflow/python/ops/rnn_cell_impl.py`` (``DropoutWrapper``,
``ResidualWrapper``, ``DeviceWrapper``) and ``tensorflow/contrib/rnn/python/ops/core_rnn_cell.py``
(``EmbeddingWrapper``, ``InputProjectionWrapper``, ``OutputProjectionWrapper``), Apache-2.0.
One step of each, for a wrapped ``cell`` with ``o, s' = cell(x, s)``:

=========================  ====================================================================
``EmbeddingWrapper``       ``cell(E[x], s)``: ``x`` token ids ``(B,)`` or ``(B, 1)`` int64,
                           ``E`` a ``(classes, size)`` embedding (TF's ``U(-\\sqrt3, \\sqrt3)``)
``InputProjectionWrapper`` ``cell(act(W x + b), s)``
``OutputProjectionWrapper`` ``act(W o + b), s'``
``ResidualWrapper``        ``x + o, s'`` (or ``residual_fn(x, o), s'``)
``DropoutWrapper``         dropout on the input, the output and the new state (not an LSTM's
                           memory ``c``); a fresh mask every step, or one per sequence
                           (``variational_recurrent``)
``DeviceWrapper``          ``cell`` kept on ``device``; inputs and state go there and come back
=========================  ====================================================================

Symbols: ``B`` batch, ``F`` the wrapper's input features, ``H_out`` the cell's output size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.engine.dispatch import reads_token_ids
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.layers.state import CellWrapper, state_leaves, zero_state

__all__ = [
    "ACTIVATIONS",
    "DeviceWrapper",
    "DropoutWrapper",
    "EmbeddingWrapper",
    "InputProjectionWrapper",
    "OutputProjectionWrapper",
    "ResidualWrapper",
    "state_leaf_names",
]

#: Activations a projection wrapper takes by name (a config can hold a name, not a function).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda v: v,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "swish": F.silu,
}


def _check_cell(owner: str, cell: Any) -> nn.Module:
    if not isinstance(cell, nn.Module) or not hasattr(cell, "state_size"):
        raise TypeError(f"{owner}: cell must be a recurrent cell (an nn.Module with state_size "
                        f"and output, state = cell(x, state)), got {type(cell).__name__}")
    return cell


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def _activation(owner: str, activation: Any) -> Callable[[Tensor], Tensor] | None:
    """``None``, a name from :data:`ACTIVATIONS`, or any callable ``Tensor -> Tensor``."""
    if activation is None:
        return None
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"{owner}: unknown activation {activation!r}; use one of "
                             f"{', '.join(sorted(ACTIVATIONS))}, None or a callable")
        return ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(f"{owner}: activation must be None, a name or a callable, got "
                        f"{type(activation).__name__}")
    return activation


def _known_size(cell: nn.Module, name: str) -> int | None:
    value = getattr(cell, name, None)
    return int(value) if isinstance(value, numbers.Integral) else None


def _factory_of(cell: nn.Module) -> dict[str, Any]:
    """``device``/``dtype`` of the cell's parameters, for a wrapper's own (empty if none)."""
    weight = next(cell.parameters(), None)
    return {} if weight is None else {"device": weight.device, "dtype": weight.dtype}


def _check_cell_reads(owner: str, cell: nn.Module, name: str, size: int) -> None:
    """The wrapper feeds the cell ``size`` features (argument ``name``): the cell's known
    ``input_size`` must agree."""
    cell_input = _known_size(cell, "input_size")
    if cell_input is not None and cell_input != size:
        raise ValueError(f"{owner}: the cell reads {cell_input} features but {name}={size}")


class EmbeddingWrapper(CellWrapper):
    """Embed token ids before the cell (TF1 ``tf.contrib.rnn.EmbeddingWrapper``).

    .. math:: o_t, s_t = \\mathrm{cell}(E[x_t], s_{t-1})

    Args:
        cell: any cell whose ``input_size`` (when it has one) is ``embedding_size``.
        embedding_classes: ``V``, the number of token ids.
        embedding_size: ``E``'s width.

    ``E`` starts as TF1 draws it, :math:`U(-\\sqrt 3, \\sqrt 3)` (variance 1). The input of a
    step is ``(B,)`` or ``(B, 1)`` int64 ids, so a driver takes ``(B, T, 1)`` (TF1's
    ``dynamic_rnn`` layout) and ``input_size`` is 1. The state is the cell's, in the
    embedding's dtype.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> from rnnkit.layers import Recurrence
        >>> cell = EmbeddingWrapper(GRUCell(8, 16), embedding_classes=100, embedding_size=8)
        >>> ids = torch.randint(0, 100, (2, 5, 1))                        # (B, T, 1)
        >>> out, h = Recurrence(cell, batch_first=True)(ids, lengths=[5, 3])
        >>> out.shape, h.dtype
        (torch.Size([2, 5, 16]), torch.float32)
    """

    takes_token_ids = True

    def __init__(self, cell: nn.Module, embedding_classes: int, embedding_size: int) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        self.embedding_classes = _positive_int(owner, "embedding_classes", embedding_classes)
        self.embedding_size = _positive_int(owner, "embedding_size", embedding_size)
        _check_cell_reads(owner, cell, "embedding_size", self.embedding_size)
        factory = _factory_of(cell)
        self.embedding = nn.Parameter(torch.empty(self.embedding_classes, self.embedding_size,
                                                  **factory))
        self.reset_parameters()

    @property
    def input_size(self) -> int:
        return 1

    def reset_parameters(self) -> None:
        """``E`` from :math:`U(-\\sqrt 3, \\sqrt 3)`, TF1's default (unit variance)."""
        bound = math.sqrt(3.0)
        nn.init.uniform_(self.embedding, -bound, bound)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        if dtype is not None and not dtype.is_floating_point:  # the ids' dtype: not the state's
            dtype = None
        return zero_state(self.cell, batch_size, device, dtype or self.embedding.dtype)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        owner = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner}: input must be a Tensor of token ids, got "
                            f"{type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise DTypeError(f"{owner}: input must be integer token ids (int64), got {x.dtype}")
        if x.dim() == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 1:
            raise ShapeError(f"{owner}: input must be token ids (B,) or (B, 1), got shape "
                             f"{tuple(x.shape)}")
        if x.numel() and not torch.compiler.is_exporting():
            low, high = int(x.min()), int(x.max())
            if low < 0 or high >= self.embedding_classes:
                raise ValueError(f"{owner}: token id {low if low < 0 else high} is outside "
                                 f"[0, embedding_classes={self.embedding_classes})")
        embedded = self.embedding[x]  # (B, E)
        return self.cell(embedded, state)

    def extra_repr(self) -> str:
        return f"embedding_classes={self.embedding_classes}, embedding_size={self.embedding_size}"


class InputProjectionWrapper(CellWrapper):
    """Project the input before the cell (TF1 ``tf.contrib.rnn.InputProjectionWrapper``).

    .. math:: o_t, s_t = \\mathrm{cell}(\\mathrm{act}(W x_t + b), s_{t-1})

    Args:
        cell: any cell whose ``input_size`` (when it has one) is ``num_proj``.
        num_proj: the projection's output size.
        activation: None (TF1's default: linear), a name from :data:`ACTIVATIONS` or a
            callable.
        input_size: ``F``; None infers it from the first input, as TF1 does (the weight is
            a ``torch.nn.LazyLinear`` until then).

    Example:
        >>> import torch
        >>> from rnnkit.cells import LSTMCell
        >>> cell = InputProjectionWrapper(LSTMCell(4, 6), num_proj=4, input_size=10)
        >>> out, (h, c) = cell(torch.randn(3, 10))
        >>> out.shape
        torch.Size([3, 6])
    """

    def __init__(self, cell: nn.Module, num_proj: int, activation: str | Callable | None = None,
                 input_size: int | None = None) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        self.num_proj = _positive_int(owner, "num_proj", num_proj)
        self.activation = _activation(owner, activation)
        _check_cell_reads(owner, cell, "num_proj", self.num_proj)
        factory = _factory_of(cell)
        if input_size is None:
            self.projection: nn.Module = nn.LazyLinear(self.num_proj, **factory)
        else:
            input_size = _positive_int(owner, "input_size", input_size)
            self.projection = nn.Linear(input_size, self.num_proj, **factory)
            self.reset_parameters()

    @property
    def input_size(self) -> int | None:  # type: ignore[override]
        """``F``: None until a lazy projection has seen its first input."""
        features = getattr(self.projection, "in_features", 0)
        return int(features) if features else None

    def reset_parameters(self) -> None:
        """Glorot-uniform weight and zero bias, as TF1's ``_Linear``."""
        if isinstance(self.projection.weight, nn.parameter.UninitializedParameter):
            return
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        expected = self.input_size
        if isinstance(x, Tensor) and expected is not None and (x.dim() != 2
                                                               or x.shape[-1] != expected):
            raise ShapeError(f"{type(self).__name__}: expected input of shape (batch, "
                             f"{expected}), got {tuple(x.shape)}")
        projected = self.projection(x)  # (B, num_proj)
        if self.activation is not None:
            projected = self.activation(projected)
        return self.cell(projected, state)

    def extra_repr(self) -> str:
        return f"num_proj={self.num_proj}"


class OutputProjectionWrapper(CellWrapper):
    """Project the cell's output (TF1 ``tf.contrib.rnn.OutputProjectionWrapper``).

    .. math:: o_t, s_t = \\mathrm{cell}(x_t, s_{t-1}), \\qquad y_t = \\mathrm{act}(W o_t + b)

    Args:
        cell: any cell with a known ``output_size``.
        output_size: ``y``'s size (the wrapper's ``output_size``; the state is untouched).
        activation: None (linear), a name from :data:`ACTIVATIONS` or a callable.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> from rnnkit.layers import Fold
        >>> cell = OutputProjectionWrapper(GRUCell(3, 8), output_size=2, activation="tanh")
        >>> last, h = Fold(cell)(torch.randn(5, 4, 3))
        >>> last.shape, h.shape
        (torch.Size([4, 2]), torch.Size([4, 8]))
    """

    def __init__(self, cell: nn.Module, output_size: int,
                 activation: str | Callable | None = None) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        self.projected_size = _positive_int(owner, "output_size", output_size)
        self.activation = _activation(owner, activation)
        cell_output = _known_size(cell, "output_size")
        if cell_output is None:
            raise ValueError(f"{owner}: the cell ({type(cell).__name__}) has no output_size "
                             "to project from")
        factory = _factory_of(cell)
        self.projection = nn.Linear(cell_output, self.projected_size, **factory)
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.projected_size

    def reset_parameters(self) -> None:
        """Glorot-uniform weight and zero bias, as TF1's ``_Linear``."""
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        output, new_state = self.cell(x, state)  # (B, H_out)
        projected = self.projection(output)  # (B, output_size)
        if self.activation is not None:
            projected = self.activation(projected)
        return projected, new_state

    def extra_repr(self) -> str:
        return f"output_size={self.projected_size}"


class ResidualWrapper(CellWrapper):
    """Add the input to the cell's output (TF1 ``tf.nn.rnn_cell.ResidualWrapper``).

    .. math:: o_t, s_t = \\mathrm{cell}(x_t, s_{t-1}), \\qquad y_t = x_t + o_t

    Args:
        cell: any cell.
        residual_fn: ``(inputs, outputs) -> outputs`` in place of the sum (e.g. to slice
            an input wider than the output, TF1's ``testResidualWrapperWithSlice``); without
            it the cell's ``input_size`` and ``output_size`` must match.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> cell = ResidualWrapper(GRUCell(3, 3))
        >>> x = torch.randn(2, 3)
        >>> out, h = cell(x)
        >>> torch.allclose(out - x, h)
        True
    """

    def __init__(self, cell: nn.Module,
                 residual_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        if residual_fn is not None and not callable(residual_fn):
            raise TypeError(f"{owner}: residual_fn must be callable (inputs, outputs) -> "
                            f"outputs, got {type(residual_fn).__name__}")
        self.residual_fn = residual_fn
        inputs, outputs = _known_size(cell, "input_size"), _known_size(cell, "output_size")
        if residual_fn is None and None not in (inputs, outputs) and inputs != outputs:
            raise ValueError(f"{owner}: the cell reads {inputs} features and outputs {outputs}"
                             "; a residual sum needs them equal (or pass residual_fn)")

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        output, new_state = self.cell(x, state)  # (B, H_out)
        if self.residual_fn is not None:
            return self.residual_fn(x, output), new_state
        if x.shape != output.shape:
            raise ShapeError(f"{type(self).__name__}: the input {tuple(x.shape)} and the "
                             f"cell's output {tuple(output.shape)} differ in shape; pass "
                             "residual_fn to combine them")
        return x + output, new_state


class DeviceWrapper(CellWrapper):
    """Run the cell on ``device`` (TF1 ``tf.nn.rnn_cell.DeviceWrapper``).

    The cell's parameters move to ``device`` and stay there: ``wrapper.to(...)`` changes
    their dtype but not their device. Each step moves the input and the state to
    ``device``, runs the cell there and brings the output and the new state back to the
    input's device, so a driver, a :class:`~rnnkit.cells.MultiCell` with cells on
    different devices (model parallelism, TF1's use of it) and the rest of the model never
    see another device. (TF1 places the ops; torch has no implicit copies, so the copies
    are the wrapper's.)

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> cell = DeviceWrapper(GRUCell(3, 4), "cpu")
        >>> out, h = cell(torch.randn(2, 3))
        >>> out.device.type, cell.device
        ('cpu', 'cpu')
    """

    def __init__(self, cell: nn.Module, device: str | torch.device) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{owner}: invalid device {device!r}: {error}") from None
        self.device = str(resolved)
        self.cell.to(resolved)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments; unlike other rnnkit configs this one holds ``device``,
        the placement being what the wrapper is for."""
        return {**super().get_config(), "device": self.device}

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.cell.to(self.device)  # dtype changes stay; the device is pinned
        return self

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = zero_state(self.cell, batch_size, self.device, dtype)
        if device is None:
            return state
        return _map_state(lambda t: t.to(device), state)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        home = x.device
        if state is not None:
            state = _map_state(lambda t: t.to(self.device), state)
        output, new_state = self.cell(x.to(self.device), state)
        return output.to(home), _map_state(lambda t: t.to(home), new_state)

    def extra_repr(self) -> str:
        return f"device={self.device!r}"


def _map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(fn, part) for part in state) if not hasattr(
            state, "_fields") else type(state)(*(_map_state(fn, part) for part in state))
    return fn(state) if isinstance(state, Tensor) else state


def state_leaf_names(cell: nn.Module, state: Any) -> list[str]:
    """The name of every tensor of ``cell``'s ``state``, depth first: ``"h"`` for a
    single-state cell, the cell's ``state_names`` (``"h"``, ``"c"``) for a multi-state one,
    ``"cell 0/c"`` inside a :class:`~rnnkit.cells.MultiCell`, ``"cell_state/c"`` and
    ``"attention"`` inside an ``AttentionWrapper``."""
    names: list[str] = []

    def walk(module: nn.Module | None, part: Any, prefix: str) -> None:
        # wrappers that keep their cell's state structure: name by the innermost cell
        while isinstance(module, CellWrapper) and getattr(module, "state_names", None) is None:
            module = module.cell
        if not isinstance(part, (tuple, list)):
            names.append(prefix + "h")
            return
        labels = getattr(module, "state_names", None) or ()
        stack = getattr(module, "cells", None)
        for index, sub in enumerate(part):
            label = labels[index] if index < len(labels) else str(index)
            if stack is not None and index < len(stack):
                walk(stack[index], sub, f"{prefix}{label}/")
            elif label == "cell_state" and isinstance(module, CellWrapper):
                walk(module.cell, sub, f"{prefix}{label}/")
            elif isinstance(sub, (tuple, list)):
                walk(None, sub, f"{prefix}{label}/")
            else:
                names.append(prefix + label)

    walk(cell, state, "")
    return names


#: State tensors never dropped by default: an LSTM's memory ``c`` (TF1's rule) and what an
#: ``AttentionWrapper`` carries along unchanged (the memory, its keys and its mask).
NEVER_DROPPED = ("c", "memory", "keys", "memory_mask")


def default_dropout_state_filter(name: str) -> bool:
    """TF1's default: drop every state tensor except an LSTM's memory ``c`` (and an attention
    wrapper's memory, keys and mask)."""
    return name.rsplit("/", 1)[-1] not in NEVER_DROPPED


def _keep_probability(owner: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a float in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{owner}: {name} must be in (0, 1], got {value}")
    return float(value)


class DropoutWrapper(CellWrapper):
    """Dropout on a cell's input, output and state (TF1 ``tf.nn.rnn_cell.DropoutWrapper``).

    .. math::

        o_t, s_t = \\mathrm{cell}(m^x_t \\odot x_t / p_x,\\; s_{t-1}), \\qquad
        y_t = m^o_t \\odot o_t / p_o, \\qquad s_t \\leftarrow m^s_t \\odot s_t / p_s

    with Bernoulli keep-masks :math:`m \\sim B(p)` (``p`` the keep probabilities); the state
    mask applies to the new state the cell returns, which is also what the next step reads.

    Args:
        cell: any cell.
        input_keep_prob, output_keep_prob, state_keep_prob: keep probabilities in (0, 1];
            1 (the default) adds no dropout there.
        variational_recurrent: False: a fresh mask every step (TF1's default). True: one
            mask per sequence, the same at every step (Gal & Ghahramani 2016), drawn at the
            first step of each driver call (every driver calls :meth:`reset_mask`) or when
            the batch size changes; call :meth:`reset_mask` yourself between sequences when
            you step the cell by hand.
        input_size: ``F``, optional: checked against each input (TF1 needs it to build the
            variational input mask; here the mask takes its shape from the first input).
        dropout_state_filter_visitor: ``name -> bool``, True for the state tensors to drop;
            ``name`` is the tensor's :func:`state_leaf_names` entry (``"h"``, ``"c"``,
            ``"cell 1/h"``). Default: every tensor but an LSTM's memory ``c`` (TF1's rule).
        seed: draw the masks from a ``torch.Generator`` seeded with it (the same sequence of
            masks every time the wrapper is built), instead of torch's global generator.

    Masks are drawn in this order: the input's, then (after the cell) each dropped state
    tensor's in :func:`state_leaf_names` order, then the output's; each is
    ``torch.empty(shape).bernoulli_(p, generator=...)`` and applied as ``v / p * m`` (TF1's
    form). In ``eval()`` mode the wrapper is the cell itself: no dropout, no rescaling.

    Example:
        >>> import torch
        >>> from rnnkit.cells import LSTMCell
        >>> from rnnkit.layers import Recurrence
        >>> cell = DropoutWrapper(LSTMCell(3, 4), output_keep_prob=0.5,
        ...                       variational_recurrent=True, seed=0)
        >>> out, (h, c) = Recurrence(cell)(torch.randn(6, 2, 3))     # (T, B, H_out)
        >>> dropped = out == 0
        >>> bool((dropped == dropped[0]).all())                       # the same mask each step
        True
    """

    def __init__(
        self,
        cell: nn.Module,
        input_keep_prob: float = 1.0,
        output_keep_prob: float = 1.0,
        state_keep_prob: float = 1.0,
        variational_recurrent: bool = False,
        input_size: int | None = None,
        dropout_state_filter_visitor: Callable[[str], bool] | None = None,
        seed: int | None = None,
    ) -> None:
        owner = type(self).__name__
        super().__init__(_check_cell(owner, cell))
        self.input_keep_prob = _keep_probability(owner, "input_keep_prob", input_keep_prob)
        self.output_keep_prob = _keep_probability(owner, "output_keep_prob", output_keep_prob)
        self.state_keep_prob = _keep_probability(owner, "state_keep_prob", state_keep_prob)
        if not isinstance(variational_recurrent, (bool, np.bool_)):
            raise TypeError(f"{owner}: variational_recurrent must be a bool, got "
                            f"{variational_recurrent!r}")
        self.variational_recurrent = bool(variational_recurrent)
        if input_size is not None:
            input_size = _positive_int(owner, "input_size", input_size)
            known = _known_size(cell, "input_size")
            if known is not None and known != input_size:
                raise ValueError(f"{owner}: input_size={input_size} but the cell reads {known}")
        self._input_size = input_size
        if dropout_state_filter_visitor is not None and not callable(
                dropout_state_filter_visitor):
            raise TypeError(f"{owner}: dropout_state_filter_visitor must be callable "
                            f"(state tensor name -> bool), got "
                            f"{type(dropout_state_filter_visitor).__name__}")
        self.dropout_state_filter_visitor = dropout_state_filter_visitor
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"{owner}: seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        if reads_token_ids(cell) and self.input_keep_prob < 1.0:
            raise ValueError(f"{owner}: the cell reads token ids, which dropout cannot scale; "
                             "drop the embedded vectors instead: EmbeddingWrapper("
                             "DropoutWrapper(cell, input_keep_prob=...), ...)")
        self._generators: dict[str, torch.Generator] = {}
        self._masks: dict[str, Tensor] = {}

    @property
    def input_size(self) -> int | None:  # type: ignore[override]
        return self._input_size if self._input_size is not None else _known_size(
            self.cell, "input_size")

    def reset_mask(self) -> None:
        """Forget the variational masks; the next step draws new ones (drivers call this at
        the start of every call)."""
        self._masks = {}

    def _generator(self, like: Tensor) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(like.device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(like.device).manual_seed(self.seed)
        return self._generators[key]

    def _drop(self, key: str, value: Tensor, keep: float) -> Tensor:
        """``value / keep * mask`` with a Bernoulli(keep) mask: a fresh one, or the
        sequence's (``variational_recurrent``) drawn at its first step."""
        mask = self._masks.get(key) if self.variational_recurrent else None
        if mask is None or mask.shape != value.shape or mask.device != value.device:
            mask = torch.empty(value.shape, device=value.device, dtype=value.dtype)
            mask.bernoulli_(keep, generator=self._generator(value))
            if self.variational_recurrent:
                self._masks[key] = mask
        return value / keep * mask.to(value.dtype)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        owner = type(self).__name__
        if self._input_size is not None and isinstance(x, Tensor) and (
                x.dim() != 2 or x.shape[-1] != self._input_size):
            raise ShapeError(f"{owner}: expected input of shape (batch, {self._input_size}), "
                             f"got {tuple(x.shape)}")
        if not self.training:
            return self.cell(x, state)
        if self.input_keep_prob < 1.0:
            x = self._drop("input", x, self.input_keep_prob)
        output, new_state = self.cell(x, state)
        if self.state_keep_prob < 1.0:
            new_state = self._drop_state(new_state)
        if self.output_keep_prob < 1.0:
            output = self._drop("output", output, self.output_keep_prob)
        return output, new_state

    def _drop_state(self, state: State) -> State:
        keep = self.state_keep_prob
        wanted = self.dropout_state_filter_visitor or default_dropout_state_filter
        leaves = state_leaves(state)
        names = state_leaf_names(self.cell, state)
        dropped = []
        for name, leaf in zip(names, leaves, strict=True):
            if isinstance(leaf, Tensor) and leaf.is_floating_point() and bool(wanted(name)):
                leaf = self._drop(f"state {name}", leaf, keep)
            dropped.append(leaf)
        return _rebuild(state, iter(dropped))

    def extra_repr(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in
                 ("input_keep_prob", "output_keep_prob", "state_keep_prob")
                 if getattr(self, name) < 1.0]
        if self.variational_recurrent:
            parts.append("variational_recurrent=True")
        return ", ".join(parts)


def _rebuild(like: Any, leaves: Any) -> Any:
    """``like``'s nesting (tuples, lists, named tuples) filled from the iterator ``leaves``."""
    if isinstance(like, (tuple, list)):
        parts = [_rebuild(part, leaves) for part in like]
        return type(like)(*parts) if hasattr(like, "_fields") else type(like)(parts)
    return next(leaves)
