"""Drop-in replacements for ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU``.

With default options each module has ``torch.nn``'s constructor, attributes, parameter names,
initialisation (the same random draws after the same seed), state_dict and outputs. On top
they take rnnkit's cell options and sequence features (all keyword-only):

* cell options: ``peepholes``, ``coupled_gates``, ``cell_clip``, ``layer_norm``,
  ``forget_bias`` (LSTM); ``reset_after``, ``layer_norm`` (GRU); ``init="irnn"`` (RNN);
* ``lengths=`` in :meth:`forward` (padded steps never change the state, outputs there are zero,
  ``h_n`` is each sequence's state at its own last step, the reverse direction starts at each
  sequence's own last step), like a PackedSequence but on padded tensors;
* ``stateful=True`` with :meth:`reset_states`;
* ``recurrent_dropout`` (variational), ``dropout_input`` (variational, on the module input),
  ``zoneout``, ``residual`` connections between stacked layers, ``learnable_initial_state``;
* ``engine="auto" | "fused" | "compiled" | "scan" | "inductor" | "loop"`` (see
  :mod:`rnnkit.engine.dispatch`);
* ``precision="bf16"``: every call as inside ``rnnkit.engine.precision("bf16")`` (the fused
  path casts the input, state and weights to bfloat16 and the results back);
* Keras' semantics: ``mask=`` (B, T) in :meth:`forward` (gaps allowed: a masked step keeps
  the state), ``zero_output_for_mask=False`` (a masked step repeats the last valid output),
  ``go_backwards=True`` (read the padded sequence reversed, outputs in processing order).

Symbols: ``T`` time steps, ``B`` batch, ``H_in`` input_size, ``H`` hidden_size,
``H_out = proj_size or hidden_size``, ``L`` num_layers, ``D = 2 if bidirectional else 1``.

Parameters live on the module under ``torch.nn``'s names (``weight_ih_l0``,
``weight_hh_l0_reverse``, ...). Each (layer, direction) also owns an unregistered rnnkit cell
(:class:`~rnnkit.cells.ElmanCell`, :class:`~rnnkit.cells.LSTMCell`,
:class:`~rnnkit.cells.GRUCell`) whose parameter slots are re-pointed at the module's current
tensors at every forward, so ``.to()``, ``load_state_dict``, ``torch.func.functional_call``
and parametrizations all act on the one set of parameters. A cell parameter ``p`` (or ``m.p``
of a submodule such as a layer norm) of layer ``k`` appears on the module as ``p_lk`` (or
``m_p_lk``), with ``_reverse`` appended for the backward direction, e.g. ``weight_ci_l0``,
``ln_ih_weight_l1_reverse``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit._caller import warn
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.config import Configurable
from rnnkit.engine import dispatch
from rnnkit.engine.autocast import outside_autocast
from rnnkit.engine.fused import _precision
from rnnkit.engine.hooks import has_step_hooks, step_hook
from rnnkit.engine.lengths import unbatched_lengths
from rnnkit.engine.plan import Plan
from rnnkit.errors import DeviceError, DTypeError, ShapeError
from rnnkit.layers.dropout import (
    RecurrentDropoutCell,
    ZoneoutCell,
    check_probability,
    variational_mask,
)
from rnnkit.layers.masking import (
    carry_last_valid,
    from_time_major,
    mask_to_lengths,
    reverse_padded,
    to_time_major,
    valid_steps,
)
from rnnkit.layers.stateful import Stateful, StateStore

_TORCH_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

HiddenState = Tensor | tuple[Tensor, Tensor]

# torch.nn skips its input dtype check under autocast (torch >= 2.4 has this query).
_any_autocast_enabled = getattr(torch._C, "_is_any_autocast_enabled", lambda: False)


def check_constructor_args(
    name: str,
    input_size: object,
    hidden_size: object,
    num_layers: object,
    bias: object,
    batch_first: object,
    dropout: object,
    bidirectional: object,
    proj_size: object,
) -> None:
    """``torch.nn.RNNBase``'s argument checks, in torch's order and with torch's classes and
    phrases (``"bias should be of type bool, got: int"``), each prefixed with the module name.

    torch type-checks ``bias``, ``batch_first``, ``input_size`` and ``hidden_size``; rnnkit also
    ``bidirectional``, ``num_layers`` and ``proj_size`` (torch would fail later, deep inside,
    or read a truthy string as True), rejects ``True``/``False`` as sizes and, like rnnkit's
    cells, accepts NumPy integers and bools (torch refuses them); the constructor stores them
    as Python ``int``/``bool``.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not (
        0 <= dropout <= 1  # type: ignore[operator]
    ):
        raise ValueError(
            f"{name}: dropout should be a number in range [0, 1] representing the "
            f"probability of an element being zeroed, got {dropout!r}"
        )
    for arg, value in (("bias", bias), ("batch_first", batch_first),
                       ("bidirectional", bidirectional)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(
                f"{name}: {arg} should be of type bool, got: {type(value).__name__}"
            )
    for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                       ("num_layers", num_layers), ("proj_size", proj_size)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
        if arg == "proj_size":
            if value < 0:
                raise ValueError(
                    f"{name}: proj_size should be a positive integer or zero to disable "
                    f"projections, got {value}"
                )
        elif value <= 0:
            raise ValueError(f"{name}: {arg} must be greater than zero, got {value}")
    if proj_size >= hidden_size:  # type: ignore[operator]
        raise ValueError(
            f"{name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size}"
            f" and hidden_size={hidden_size}"
        )


class _CallCache:
    """A drop-in's remembered calls (:meth:`RNNBase._fast_forward`): ``entries`` maps a call
    key to what that call decided, at most :attr:`capacity` of them (the oldest goes first),
    so a module called in turns with different keys (a training step with gradients and an
    evaluation under ``no_grad``, a last batch of another size) keeps each. Pickled and
    deep-copied empty (the entries hold the compiled extension and cells, and are rebuilt at
    the copy's first calls)."""

    __slots__ = ("entries",)
    capacity = 4

    def __init__(self) -> None:
        self.entries: dict[tuple, _FastCall] = {}

    def remember(self, key: tuple, entry: _FastCall) -> None:
        self.entries.pop(key, None)
        while len(self.entries) >= self.capacity:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = entry

    def __reduce__(self):
        return (_CallCache, ())


class _FastCall:
    """What a drop-in's call decided, kept for the next call with the same key: the fused
    path, or one prepared compiled run per layer and direction (``compiled.prepare``), the
    cells' parameter bindings and the zero initial state in the kernels' row layout."""

    __slots__ = ("fused", "runs", "bindings", "zero_state")

    def __init__(self, fused: bool, runs: list, bindings: list, zero_state: Tensor | None):
        self.fused, self.runs, self.bindings, self.zero_state = fused, runs, bindings, zero_state


_functorch_level = getattr(getattr(torch._C, "_functorch", None), "maybe_current_level",
                           lambda: None)


class RNNBase(Configurable, Stateful, nn.RNNBase):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU` (see module docs).

    A subclass of ``torch.nn.RNNBase`` (and each drop-in of its ``torch.nn`` class), so that
    ``isinstance(rnnkit.LSTM(3, 5), torch.nn.LSTM)`` holds for code that branches on it.
    What rnnkit replaces: the constructor (``nn.Module.__init__`` only; parameters come from
    rnnkit's cells, under torch's names plus rnnkit's extras), ``forward``,
    ``reset_parameters``, ``extra_repr``, ``flatten_parameters`` (a no-op) and
    ``_flat_weights`` (always read from the module's current attributes). What it keeps from
    torch: ``__setattr__``, ``_apply``, pickling (``__getstate__``/``__setstate__``) and the
    ``_flat_weight_refs`` bookkeeping behind them.
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        cell_kwargs: dict[str, Any] | None = None,
        cell_options: dict[str, Any] | None = None,
        init_options: dict[str, Any] | None = None,
        stateful: bool = False,
        recurrent_dropout: float = 0.0,
        dropout_input: float = 0.0,
        zoneout: float | tuple[float, ...] = 0.0,
        residual: bool = False,
        learnable_initial_state: bool = False,
        engine: str = "auto",
        go_backwards: bool = False,
        zero_output_for_mask: bool = True,
        precision: str = "fp32",
    ) -> None:
        # nn.Module's constructor, not torch.nn.RNNBase's: the parameters are registered
        # below under torch's names (plus rnnkit's extras), from rnnkit's cells.
        nn.Module.__init__(self)
        name = type(self).__name__
        check_constructor_args(
            name, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size,
        )
        input_size, hidden_size, num_layers = int(input_size), int(hidden_size), int(num_layers)
        bias, batch_first, bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        proj_size = int(proj_size)
        cell_kwargs = dict(cell_kwargs or {})
        for key, value in (("bias", bias), ("proj_size", proj_size)):
            if key in cell_kwargs:
                cell_kwargs[key] = value
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if dropout > 0 and num_layers == 1:
            warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}"
            )
        try:
            dispatch.check_engine(engine)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        if go_backwards and bidirectional:
            raise ValueError(
                f"{name}: go_backwards=True reads the sequence backwards only; a "
                "bidirectional module already has a backward direction"
            )
        if residual and num_layers < 2:
            raise ValueError(
                f"{name}: residual=True adds connections between stacked layers and needs "
                f"num_layers >= 2, got num_layers={num_layers}"
            )
        from rnnkit.engine import fused

        self.precision = fused.check_precision(name, precision)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.engine = engine
        self.stateful = bool(stateful)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.dropout_input = check_probability("dropout_input", dropout_input)
        if isinstance(zoneout, (tuple, list)):
            self.zoneout: float | tuple[float, ...] = tuple(
                check_probability("zoneout", p) for p in zoneout
            )
            if len(self.zoneout) != (2 if mode == "LSTM" else 1):
                raise ValueError(
                    f"{name}: zoneout takes one rate or one per state tensor "
                    f"({'(h, c)' if mode == 'LSTM' else 'h'}), got {zoneout!r}"
                )
        else:
            self.zoneout = check_probability("zoneout", zoneout)
        self.residual = bool(residual)
        self.learnable_initial_state = bool(learnable_initial_state)
        # Keras' semantics; neither changes the per-step computation, so the fused path
        # still serves them (both act on the inputs and outputs around it).
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)

        # Options of the cells that change the per-step computation (a non-empty dict means
        # torch's fused kernels cannot run this module); the sequence features
        # (recurrent_dropout, zoneout, residual) are attributes of the module, not cell options.
        self.cell_options: dict[str, Any] = dict(cell_options or {})
        # Options that only change how parameters start (the forward is still torch's).
        self.init_options: dict[str, Any] = dict(init_options or {})

        num_directions = 2 if bidirectional else 1
        real_hidden = proj_size if proj_size > 0 else hidden_size
        cells: list[nn.Module] = []
        bindings: list[list[tuple[str, str]]] = []
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * num_directions
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                # Built on the meta device: no memory and no random draws, so the module
                # below draws exactly what torch.nn draws.
                cell = self._make_cell(layer_input, dict(cell_kwargs or {}), "meta", dtype)
                binding, torch_names = [], []
                for path, meta in cell.named_parameters():
                    module_name = path.replace(".", "_") + suffix
                    param = nn.Parameter(torch.empty(meta.shape, **factory))
                    self.register_parameter(module_name, param)
                    binding.append((path, module_name))
                    if path in _TORCH_NAMES:
                        torch_names.append((_TORCH_NAMES.index(path), module_name))
                flat = [module_name for _, module_name in sorted(torch_names)]
                self._flat_weights_names.extend(flat)
                self._all_weights.append(flat)
                cells.append(cell)
                bindings.append(binding)
        # Plain attributes, not submodules: the parameters belong to this module alone.
        self.__dict__["_cells"] = cells
        self.__dict__["_bindings"] = bindings

        state_rows = num_layers * num_directions
        if self.learnable_initial_state:
            self.initial_h = nn.Parameter(torch.zeros(state_rows, real_hidden, **factory))
            if mode == "LSTM":
                self.initial_c = nn.Parameter(torch.zeros(state_rows, hidden_size, **factory))
        self._state_store = StateStore(self, name, batch_dim=1)
        self.reset_parameters()
        # torch.nn.RNNBase's weak references to the weights (its pickling and _apply use them).
        self._init_flat_weights()
        if engine == "fused":  # refused now rather than at the first call, in the same words
            refusal = dispatch.fused_refusal(self)
            if refusal is not None:
                raise ValueError(refusal)

    # ----------------------------------------------------------------- construction
    def _make_cell(self, input_size: int, kwargs: dict[str, Any], device, dtype) -> nn.Module:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-draw the parameters.

        With torch-compatible options, exactly ``torch.nn.RNNBase.reset_parameters``: every
        weight and bias from :math:`U(-1/\\sqrt{H}, 1/\\sqrt{H})` in ``torch.nn``'s order.
        Otherwise each cell's own ``reset_parameters`` (forget-gate bias, IRNN, layer norms).
        """
        if not self.cell_options and not self.init_options:
            bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
            for name in self._flat_weights_names:
                nn.init.uniform_(getattr(self, name), -bound, bound)
        else:
            for index in range(len(self._cells)):
                self._bound_cell(index).reset_parameters()
        if self.learnable_initial_state:
            nn.init.zeros_(self.initial_h)
            if self.mode == "LSTM":
                nn.init.zeros_(self.initial_c)

    def _bound_cell(self, index: int) -> nn.Module:
        """Cell ``index`` with its parameter slots pointing at this module's tensors."""
        cell = self._cells[index]
        for path, module_name in self._bindings[index]:
            owner_path, _, leaf = path.rpartition(".")
            owner = cell.get_submodule(owner_path) if owner_path else cell
            owner._parameters[leaf] = getattr(self, module_name)
        return cell

    # ----------------------------------------------------------------- torch.nn API
    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """Weights in ``torch.nn.RNNBase._flat_weights`` order (for ``torch._VF`` calls), read
        from the module's attributes at each access, so a weight replaced by assignment,
        ``weight_norm`` or a parametrization is seen at once (None for a deleted one)."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, value: list[Tensor | None]) -> None:
        # torch.nn.RNNBase's bookkeeping (_init_flat_weights, __setattr__, DataParallel
        # replicas) assigns this list; each assignment equals what the getter reads, which
        # is always current, so there is nothing to store.
        del value

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per (layer, direction) weights, as ``torch.nn.RNNBase.all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, for code written for cuDNN modules (parameters are never flattened here)."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            text += f", nonlinearity={self.nonlinearity!r}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        for key, value in {**self.cell_options, **self.init_options}.items():
            text += f", {key}={value!r}"
        if self.recurrent_dropout:
            text += f", recurrent_dropout={self.recurrent_dropout}"
        if self._zoneout_active():
            text += f", zoneout={self.zoneout!r}"
        if self.residual:
            text += ", residual=True"
        if self.stateful:
            text += ", stateful=True"
        if self.dropout_input:
            text += f", dropout_input={self.dropout_input}"
        if self.learnable_initial_state:
            text += ", learnable_initial_state=True"
        if self.go_backwards:
            text += ", go_backwards=True"
        if not self.zero_output_for_mask:
            text += ", zero_output_for_mask=False"
        if self.engine != "auto":
            text += f", engine={self.engine!r}"
        if self.precision != "fp32":
            text += f", precision={self.precision!r}"
        return text

    # ----------------------------------------------------------------- state
    def _initial_hx(self, batch_size: int, like: Tensor) -> HiddenState:
        num_directions = 2 if self.bidirectional else 1
        rows = self.num_layers * num_directions
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if self.learnable_initial_state:
            h0 = self.initial_h[:, None, :].expand(rows, batch_size, real_hidden)
            if self.mode == "LSTM":
                c0 = self.initial_c[:, None, :].expand(rows, batch_size, self.hidden_size)
                return h0, c0
            return h0
        factory = {"device": like.device, "dtype": like.dtype}
        h0 = torch.zeros(rows, batch_size, real_hidden, **factory)  # (L*D, B, H_out)
        if self.mode == "LSTM":
            return h0, torch.zeros(rows, batch_size, self.hidden_size, **factory)
        return h0

    def _check_hx(self, hx: Any, batch_size: int, inputs: Tensor,
                  source: str | None = None) -> HiddenState:
        """Check ``hx`` (a user's, or ``source``: the carried state) against the input."""
        name = type(self).__name__
        rows = self.num_layers * (2 if self.bidirectional else 1)
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            parts = (("h_0", hx[0], real_hidden), ("c_0", hx[1], self.hidden_size))
        else:
            parts = (("h_0", hx, real_hidden),)
        for label, tensor, size in parts:
            label = f"{label} ({source})" if source else label
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name}: {label} must be a Tensor, got {type(tensor).__name__}")
            expected = (rows, batch_size, size)
            if tuple(tensor.shape) != expected:
                # torch.nn's phrase too: "Expected hidden size ..." (LSTM: hidden[0]/[1]).
                torch_label = "hidden"
                if self.mode == "LSTM":
                    torch_label = "hidden[0]" if label == "h_0" else "hidden[1]"
                raise ShapeError(
                    f"{name}: expected {label} of shape (num_layers * num_directions, batch, "
                    f"{'proj_size or ' if label == 'h_0' and self.mode == 'LSTM' else ''}"
                    f"hidden_size) = {expected}, got {tuple(tensor.shape)} (Expected "
                    f"{torch_label} size {expected}, got {list(tensor.shape)})"
                )
            if tensor.device != inputs.device:
                raise DeviceError(
                    f"{name}: {label} is on {tensor.device} but the input is on "
                    f"{inputs.device} (Input and hidden tensors are not at the same device)"
                )
            if tensor.dtype != inputs.dtype:
                raise DTypeError(
                    f"{name}: {label} dtype {tensor.dtype} does not match input dtype "
                    f"{inputs.dtype}"
                )
        return (hx[0], hx[1]) if self.mode == "LSTM" else hx

    # ----------------------------------------------------------------- forward
    @outside_autocast
    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: HiddenState | None = None,
        lengths: Tensor | list[int] | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, HiddenState]:
        """Run the stack over ``input``; returns ``(output, h_n)`` or ``(output, (h_n, c_n))``.

        Args:
            input: ``(T, B, H_in)`` (``(B, T, H_in)`` if batch_first), unbatched
                ``(T, H_in)``, or a PackedSequence.
            hx: ``h_0 (L*D, B, H_out)`` (LSTM: ``(h_0, c_0)`` with ``c_0 (L*D, B, H)``);
                unbatched ``(L*D, H_out)``. None: zeros, the learnable initial state, or the
                carried state when ``stateful``.
            lengths: ``(B,)`` valid steps per sequence for a padded ``input``.
            mask: Keras' bool ``(B, T)`` (batch-first whatever ``batch_first``; ``(T,)`` for
                unbatched input), True at the steps to run, exclusive with ``lengths``. A
                mask that marks a prefix of each row runs as ``lengths`` (the fast paths);
                one with gaps holds the state at masked steps on the loop path.

        Returns:
            ``output`` like the input with ``D*H_out`` features (zero at padded steps, or
            the last valid output with ``zero_output_for_mask=False``; in processing order
            with ``go_backwards``) and the final states ``(L*D, B, H_out)`` (LSTM also
            ``c_n (L*D, B, H)``).
        """
        plain = hx is None and lengths is None and mask is None and type(input) is Tensor
        if plain:
            cache = self.__dict__.get("_call_cache")
            key = self._call_key(input)
            entry = cache.entries.get(key) if cache is not None and key is not None else None
            if entry is not None:
                return self._fast_forward(entry, input)
        inputs, hx, lengths, gaps, pack_info, unbatched = self._prepare(input, hx, lengths, mask)
        batch_size = inputs.shape[1]  # lengths were validated by to_time_major
        if hx is not None:
            hx = self._check_hx(hx, batch_size, inputs)
        elif self.stateful:
            hx, carried = self._state_store.get(
                batch_size, lambda: self._initial_hx(batch_size, inputs))
            if carried:
                hx = self._check_hx(hx, batch_size, inputs, self._state_store.describe())
        else:
            hx = self._initial_hx(batch_size, inputs)

        if self.training and self.dropout_input > 0:
            # Variational: one mask per sequence, shared by every time step.
            drop = variational_mask((batch_size, self.input_size), self.dropout_input, inputs)
            inputs = inputs * drop  # (T, B, H_in)

        if self.go_backwards:
            # Keras: the padded sequence reversed. Within lengths that is each sequence
            # reversed in place (its padding, masked in Keras, keeps the state anyway).
            inputs = reverse_padded(inputs, lengths) if gaps is None else inputs.flip(0)
            gaps = None if gaps is None else gaps.flip(0)

        plan = dispatch.plan_module(self, inputs, lengths, describe=False, mask=gaps)
        if plan.path == "fused":
            outputs, h_n = dispatch.run_fused(plan, self, inputs, hx, lengths)
        else:
            outputs, h_n = self._forward_layers(plan, inputs, hx, lengths, gaps)
        if self.go_backwards and gaps is None and lengths is not None:
            # In processing order: the padding (processed first in Keras) comes first.
            outputs = reverse_padded(outputs, lengths).flip(0)
        if not self.zero_output_for_mask:
            outputs = self._carry(outputs, lengths, gaps)

        if self.stateful:
            self._state_store.put(h_n)
        if plain and key is not None and not unbatched:
            self._remember_call(key, plan, inputs)
        output = from_time_major(outputs, self.batch_first and not unbatched, lengths, pack_info)
        if unbatched:
            output = output.squeeze(1)  # (T, D*H_out)
            h_n = tuple(t.squeeze(1) for t in h_n) if isinstance(h_n, tuple) else h_n.squeeze(1)
        return output, h_n

    # ----------------------------------------------------------------- call cache
    # A small model pays Python at every call (docs/engine.md, "Per-call overhead"): the
    # input checks, the plan, the compiled kernels' checks and the kernel call's options.
    # A call without hx, lengths or mask remembers what it decided under a key of everything
    # the decision depends on (_call_key); the next call with the same key runs the
    # remembered runs directly (the last few keys are kept: _CallCache). Assigning any
    # attribute (an option, a parameter, train()) forgets them all; the key covers what
    # changes without an assignment.

    def __setattr__(self, name: str, value: Any) -> None:
        self._forget_call()
        super().__setattr__(name, value)

    def _forget_call(self) -> None:
        cache = self.__dict__.get("_call_cache")
        if cache is None:
            self.__dict__["_call_cache"] = _CallCache()
        elif cache.entries:
            cache.entries = {}

    def __delattr__(self, name: str) -> None:
        self._forget_call()
        super().__delattr__(name)

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_call_cache", _CallCache())
        super().__setstate__(state)

    def _apply(self, fn, recurse=True):
        self._forget_call()
        return super()._apply(fn, recurse)

    def _call_key(self, input: Tensor) -> tuple | None:
        """Everything a plain call's decision depends on beyond the module's attributes (an
        assignment forgets the remembered call): the input's shape, dtype, requires_grad and
        layout, the training flag, the grad and inference modes, the precision context, each
        parameter's identity, dtype, device, shape and requires_grad (``.to()``,
        ``.data = ...``, ``requires_grad_`` and ``register_parameter`` change them without an
        assignment), and whether the cells have hooks (:meth:`step_hook`: registering one
        leaves the remembered call, removing it comes back to it). None: never remembered
        (tracing, exporting, torch.compile, a torch.func transform, a parametrized module, a
        non-CPU input)."""
        if (self._modules or input.device.type != "cpu" or _functorch_level() is not None
                or torch.compiler.is_compiling() or dispatch.exporting()
                or dispatch.tracing()):
            return None
        return (
            input.shape, input.dtype, input.requires_grad, input.layout, self.training,
            torch.is_grad_enabled(), torch.is_inference_mode_enabled(), _precision.get(),
            tuple([(id(p), p.dtype, p.device, p.shape, p.requires_grad)
                   for p in self._parameters.values() if p is not None]),
            tuple([has_step_hooks(c) for c in self._cells]),
        )

    def _remember_call(self, key: tuple, plan: Plan, inputs: Tensor) -> None:
        """After a plain call: remember the fused plan, or the compiled runs when every layer
        and direction ran on the compiled kernels' template (no wrapper cell, float32 or
        float64, nothing declined); anything else is decided again at every call."""
        if (self.stateful or self.go_backwards or self.learnable_initial_state
                or (self.training and self.dropout_input > 0)):
            return
        if plan.path == "fused":
            entry = _FastCall(True, [], [], None)
        elif plan.path == "cells" and len(plan.runs) == len(self._cells):
            from rnnkit.engine import compiled

            runs, bindings = [], []
            directions = 2 if self.bidirectional else 1
            layer_input = inputs
            for index, run in enumerate(plan.runs):
                cell = self._cells[index]
                if (run.ran != "compiled" or run.declined or run.cell is not cell
                        or run.precision != "fp32"):
                    return
                bindings.append(self._binding_slots(index))
                if index and index % directions == 0:  # the next layer's input features
                    layer_input = inputs.new_empty(
                        inputs.shape[0], inputs.shape[1], cell.input_size)
                prepared = compiled.prepare(cell, layer_input, reverse=index % directions == 1)
                if prepared is None:
                    return
                runs.append(prepared)
            widths = {run.state_width for run in runs}
            if len(widths) != 1:
                return
            zero = inputs.new_zeros(inputs.shape[1], widths.pop())  # (B, SW)
            entry = _FastCall(False, runs, bindings, zero)
        else:
            return
        cache = self.__dict__.get("_call_cache")
        if cache is None:
            cache = self.__dict__["_call_cache"] = _CallCache()
        cache.remember(key, entry)

    def _binding_slots(self, index: int) -> list[tuple[dict, str, str]]:
        """``(parameter dict of the owner, slot, module parameter name)`` per parameter of
        cell ``index``: :meth:`_bound_cell` without the module lookups."""
        cell = self._cells[index]
        slots = []
        for path, module_name in self._bindings[index]:
            owner_path, _, leaf = path.rpartition(".")
            owner = cell.get_submodule(owner_path) if owner_path else cell
            slots.append((owner._parameters, leaf, module_name))
        return slots

    def _fast_forward(self, entry: _FastCall, input: Tensor) -> tuple[Tensor, HiddenState]:
        """A remembered plain call (same key): the checks it passed and the plan it made
        still hold; only the tensors are new."""
        inputs = input.transpose(0, 1) if self.batch_first else input  # (T, B, H_in)
        if entry.fused:
            from rnnkit.engine import fused

            hx = self._initial_hx(inputs.shape[1], inputs)
            outputs, h_n = fused.forward(self, inputs, hx, None)
        else:
            outputs, h_n = self._fast_layers(entry, inputs)
        return (outputs.transpose(0, 1) if self.batch_first else outputs), h_n

    def _fast_layers(self, entry: _FastCall, inputs: Tensor) -> tuple[Tensor, HiddenState]:
        """:meth:`_forward_layers` on the remembered compiled runs, from zero states."""
        from rnnkit.engine import compiled

        params = self._parameters
        for slots in entry.bindings:  # the cells read the module's current tensors
            for owner, leaf, name in slots:
                owner[leaf] = params[name]
        directions = 2 if self.bidirectional else 1
        out_width = self.proj_size if self.proj_size > 0 else self.hidden_size
        finals: list[Tensor] = []
        layer_input, previous = inputs, inputs
        runs = entry.runs
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            outputs = []
            for direction in range(directions):
                out, final = compiled.run_prepared(
                    runs[layer * directions + direction], layer_input, entry.zero_state)
                outputs.append(out)  # (T, B, H_out)
                finals.append(final)  # (B, SW)
            output = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
            if self.residual and layer > 0:
                output = output + previous
            previous = layer_input = output  # (T, B, D*H_out)
        if self.mode == "LSTM":
            h_n = torch.stack([f[:, :out_width] for f in finals])  # (L*D, B, H_out)
            c_n = torch.stack([f[:, out_width:] for f in finals])  # (L*D, B, H)
            return layer_input, (h_n, c_n)
        h_n = finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)
        return layer_input, h_n

    def execution_plan(self, input: Tensor | PackedSequence,
                       lengths: Tensor | list[int] | None = None,
                       mask: Tensor | None = None) -> Plan:
        """The plan ``self(input, lengths=lengths, mask=mask)`` executes (what ``explain``
        prints), after the same input checks as the call."""
        inputs, _, lengths, gaps, pack_info, _ = self._prepare(input, None, lengths, mask)
        if gaps is not None and self.go_backwards:
            gaps = gaps.flip(0)
        plan = dispatch.plan_module(self, inputs, lengths, packed=pack_info is not None,
                                    mask=gaps)
        return dispatch.mask_plan_input(plan, mask, gaps)

    def _prepare(self, input: Any, hx: Any, lengths: Any, mask: Any = None) -> tuple[
            Tensor, Any, Tensor | None, Tensor | None, Any, bool]:
        """Check a call's input and return it time-major: ``(inputs (T, B, H_in), hx,
        lengths, gaps (T, B) or None, pack_info, unbatched)``; ``mask`` becomes ``lengths``
        when it marks a prefix of each row, else ``gaps``."""
        name = type(self).__name__
        unbatched = False
        if isinstance(input, Tensor):
            if input.dim() not in (2, 3):
                raise ShapeError(
                    f"{name}: expected input to be 2-D (unbatched) or 3-D (batched), "
                    f"got {input.dim()}-D tensor of shape {tuple(input.shape)}"
                )
            if not input.is_floating_point():
                raise DTypeError(f"{name}: input must be floating point, got dtype {input.dtype}")
            if input.dim() == 2:
                unbatched = True
                input = input.unsqueeze(1)  # (T, 1, H_in)
                if lengths is not None:
                    lengths = unbatched_lengths(lengths, f"{name} input")
                if isinstance(mask, Tensor) and mask.dim() == 1:
                    mask = mask[None, :]  # (1, T)
                if hx is not None:
                    hx = self._unsqueeze_hx(hx)
            elif hx is not None:
                for tensor in hx if isinstance(hx, (tuple, list)) else (hx,):
                    if isinstance(tensor, Tensor) and tensor.dim() != 3:
                        raise ShapeError(
                            f"{name}: for batched 3-D input, hx should also be 3-D but got "
                            f"{tensor.dim()}-D tensor"
                        )
            inputs, lengths, pack_info = to_time_major(
                input, self.batch_first and not unbatched, lengths, name=f"{name} input"
            )
        else:
            if mask is not None:
                raise ValueError(f"{name}: mask= cannot be combined with a PackedSequence "
                                 "(the packed sequence already carries its lengths)")
            if self.go_backwards:
                raise ValueError(
                    f"{name}: go_backwards=True returns outputs reversed in time (Keras), "
                    "which a PackedSequence cannot hold; pass a padded tensor with lengths="
                )
            inputs, lengths, pack_info = to_time_major(input, False, lengths, name=f"{name} input")
        self._check_input_dtype(inputs)
        gaps = None  # (T, B): a mask with gaps
        if mask is not None:
            if lengths is not None:
                raise ValueError(f"{name}: pass either lengths= or mask=, not both")
            lengths, gaps = mask_to_lengths(mask, inputs.shape[1], inputs.shape[0],
                                            inputs.device, name=f"{name} mask")
        if inputs.shape[-1] != self.input_size:
            raise ShapeError(
                f"{name}: input.size(-1) must be equal to input_size. Expected "
                f"{self.input_size}, got {inputs.shape[-1]}"
            )
        return inputs, hx, lengths, gaps, pack_info, unbatched

    def _check_input_dtype(self, inputs: Tensor) -> None:
        """The input must have the weights' dtype (torch.nn's check, with its phrase; under
        autocast torch skips it, and so does rnnkit)."""
        names = self._flat_weights_names  # the first weight, as next(iter(_flat_weights))
        weight = getattr(self, names[0], None) if names else None
        if (
            isinstance(weight, Tensor)
            and inputs.dtype != weight.dtype
            and not _any_autocast_enabled()
        ):
            raise DTypeError(
                f"{type(self).__name__}: RNN input dtype ({inputs.dtype}) does not match "
                f"weight dtype ({weight.dtype}). Convert input: input.to({weight.dtype}), "
                f"or convert model: model.to({inputs.dtype})"
            )

    def _unsqueeze_hx(self, hx: Any) -> Any:
        name = type(self).__name__
        tensors = hx if isinstance(hx, (tuple, list)) else (hx,)
        for tensor in tensors:
            if isinstance(tensor, Tensor) and tensor.dim() != 2:
                raise ShapeError(
                    f"{name}: for unbatched 2-D input, hx should also be 2-D but got "
                    f"{tensor.dim()}-D tensor"
                )
        unsqueezed = tuple(t.unsqueeze(1) if isinstance(t, Tensor) else t for t in tensors)
        return unsqueezed if isinstance(hx, (tuple, list)) else unsqueezed[0]

    def _carry(self, outputs: Tensor, lengths: Tensor | None, gaps: Tensor | None) -> Tensor:
        """Keras' ``zero_output_for_mask=False``: masked steps repeat the last valid output
        (per direction, in the order that direction reads)."""
        time_steps, batch_size = outputs.shape[0], outputs.shape[1]
        valid = valid_steps(time_steps, batch_size, lengths, gaps, outputs.device)
        if valid is None:
            return outputs
        if self.go_backwards and gaps is None:
            valid = valid.flip(0)  # the outputs are in processing order
        if not self.bidirectional:
            return carry_last_valid(outputs, valid)
        forward, backward = outputs.chunk(2, dim=-1)
        return torch.cat([carry_last_valid(forward, valid),
                          carry_last_valid(backward, valid, reverse=True)], dim=-1)

    def _forward_layers(
        self, plan: Plan, inputs: Tensor, hx: HiddenState, lengths: Tensor | None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, HiddenState]:
        """Layer by layer, direction by direction: each of the plan's cell runs.

        ``mask`` (T, B) is a mask with gaps (exclusive with ``lengths``)."""
        num_directions = 2 if self.bidirectional else 1
        is_lstm = self.mode == "LSTM"
        h0, c0 = hx if is_lstm else (hx, None)
        finals_h: list[Tensor] = []
        finals_c: list[Tensor] = []
        layer_input = inputs  # (T, B, H_in)
        previous = inputs
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                state = (h0[index], c0[index]) if is_lstm else h0[index]  # (B, H_out)
                out, final = dispatch.run_cell(
                    plan.runs[index], layer_input, state, lengths, reverse=direction == 1,
                    mask=mask,
                )
                outputs.append(out)  # (T, B, H_out)
                if is_lstm:
                    finals_h.append(final[0])
                    finals_c.append(final[1])
                else:
                    finals_h.append(final)
            output = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
            if self.residual and layer > 0:
                output = output + previous
            previous = output  # (T, B, D*H_out)
            layer_input = output
        h_n = torch.stack(finals_h)  # (L*D, B, H_out)
        if is_lstm:
            return layer_input, (h_n, torch.stack(finals_c))
        return layer_input, h_n

    def _zoneout_active(self) -> bool:
        rates = self.zoneout if isinstance(self.zoneout, tuple) else (self.zoneout,)
        return any(p > 0 for p in rates)

    def step_hook(self) -> str | None:
        """Why a layer's cell must run on the eager loop because of a hook, or None: the
        first hook registered on the cell of a layer and direction (or on a module inside
        it) that ``nn.Module.__call__`` runs at each call, so once per step (forward,
        forward pre-, backward and backward pre-hooks, ``with_kwargs`` and ``always_call``
        ones included), e.g. ``"a forward hook on layer 0's cell (LSTMCell) ..."``. Any such
        hook keeps the whole module off torch's fused kernels (they never call the cells)
        and its cell off the compiled kernels; hooks on the module itself run once per call,
        as on ``torch.nn``, and choose nothing."""
        directions = 2 if self.bidirectional else 1
        for index, cell in enumerate(self._cells):
            if has_step_hooks(cell):
                layer, direction = divmod(index, directions)
                owner = f"layer {layer}{' reverse' if direction else ''}'s cell"
                return step_hook(cell, owner)
        return None

    def step_cells(self) -> list[tuple[str, nn.Module]]:
        """``(label, cell)`` per layer and direction, in ``torch.nn``'s order: the cells the
        layer-by-layer path runs, bound to this module's parameters, with the recurrent
        dropout (training only) and zoneout of the current mode around them."""
        directions = 2 if self.bidirectional else 1
        cells = []
        for index in range(len(self._cells)):
            layer, direction = divmod(index, directions)
            cell = self._bound_cell(index)
            if self.recurrent_dropout > 0 and self.training:
                cell = RecurrentDropoutCell(cell, self.recurrent_dropout)
            if self._zoneout_active():
                cell = ZoneoutCell(cell, self.zoneout)
                cell.train(self.training)
            cells.append((f"layer {layer}" + (" reverse" if direction else ""), cell))
        return cells


def _reject_proj_size(options: dict[str, Any]) -> None:
    """torch.nn.RNN/GRU raise this ValueError for any ``proj_size`` keyword (even 0)."""
    if "proj_size" in options:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class RNN(RNNBase, nn.RNN):
    r"""Elman RNN, a drop-in for ``torch.nn.RNN``; :math:`h_t = \phi(W_{ih} x_t + b_{ih} +
    W_{hh} h_{t-1} + b_{hh})` with :math:`\phi` = tanh or ReLU, per layer and direction.

    Args (torch.nn.RNN's, same order): input_size, hidden_size, num_layers=1,
    nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0, bidirectional=False,
    device=None, dtype=None. rnnkit-only, keyword: ``init="default"|"irnn"`` and the sequence
    options of :mod:`rnnkit.layers.rnn`.

    Example:
        >>> import torch, rnnkit
        >>> rnn = rnnkit.RNN(3, 5, num_layers=2, nonlinearity="relu", init="irnn")
        >>> out, h_n = rnn(torch.randn(7, 2, 3), lengths=torch.tensor([7, 4]))
        >>> out.shape, h_n.shape
        (torch.Size([7, 2, 5]), torch.Size([2, 2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "default",
        **options: Any,
    ) -> None:
        _reject_proj_size(options)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        if init not in ("default", "irnn"):
            raise ValueError(f"RNN: init must be 'default' or 'irnn', got {init!r}")
        self.nonlinearity = nonlinearity
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0, device, dtype,
            cell_kwargs={"nonlinearity": nonlinearity, "bias": bias, "init": init},
            init_options={"init": init} if init != "default" else None,
            **options,
        )

    def _make_cell(self, input_size, kwargs, device, dtype):
        return ElmanCell(input_size, self.hidden_size, device=device, dtype=dtype, **kwargs)


class LSTM(RNNBase, nn.LSTM):
    r"""LSTM, a drop-in for ``torch.nn.LSTM`` (gates i, f, g, o; optional projection).

    .. math::
        \begin{aligned}
        i_t, f_t, o_t &= \sigma(W_{i\cdot} x_t + b_{i\cdot} + W_{h\cdot} h_{t-1} + b_{h\cdot}),
        \quad g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \qquad
        h_t = W_{hr}\,(o_t \odot \tanh c_t)
        \end{aligned}

    Args (torch.nn.LSTM's, same order): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None. rnnkit-only, keyword: ``peepholes``, ``coupled_gates``, ``cell_clip``,
    ``layer_norm``, ``forget_bias`` (initial forget-gate bias; None keeps torch's draw) and
    the sequence options of :mod:`rnnkit.layers.rnn`.

    Example:
        >>> import torch, rnnkit
        >>> lstm = rnnkit.LSTM(3, 8, batch_first=True, bidirectional=True, proj_size=4)
        >>> out, (h_n, c_n) = lstm(torch.randn(2, 6, 3), lengths=torch.tensor([6, 2]))
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([2, 6, 8]), torch.Size([2, 2, 4]), torch.Size([2, 2, 8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        peepholes: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        forget_bias: float | None = None,
        **options: Any,
    ) -> None:
        cell_options = {
            key: value
            for key, value, default in (
                ("peepholes", peepholes, False),
                ("coupled_gates", coupled_gates, False),
                ("cell_clip", cell_clip, None),
                ("layer_norm", layer_norm, False),
            )
            if value != default
        }
        self.peepholes, self.coupled_gates = peepholes, coupled_gates
        self.cell_clip, self.layer_norm, self.forget_bias = cell_clip, layer_norm, forget_bias
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype,
            cell_kwargs={
                "bias": bias, "forget_bias": forget_bias, "peepholes": peepholes,
                "coupled_gates": coupled_gates, "proj_size": proj_size,
                "cell_clip": cell_clip, "layer_norm": layer_norm,
            },
            cell_options=cell_options,
            init_options={"forget_bias": forget_bias} if forget_bias is not None else None,
            **options,
        )

    def _make_cell(self, input_size, kwargs, device, dtype):
        return LSTMCell(input_size, self.hidden_size, device=device, dtype=dtype, **kwargs)


class GRU(RNNBase, nn.GRU):
    r"""GRU, a drop-in for ``torch.nn.GRU`` (gates r, z, n; reset applied after the matmul).

    .. math::
        \begin{aligned}
        r_t, z_t &= \sigma(W_{i\cdot} x_t + b_{i\cdot} + W_{h\cdot} h_{t-1} + b_{h\cdot}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})), \qquad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{aligned}

    Args (torch.nn.GRU's, same order): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None.
    rnnkit-only, keyword: ``reset_after=False`` (Cho et al.'s original form),
    ``layer_norm`` and the sequence options of :mod:`rnnkit.layers.rnn`.

    Example:
        >>> import torch, rnnkit
        >>> gru = rnnkit.GRU(3, 5, stateful=True)
        >>> x = torch.randn(8, 2, 3)
        >>> first, _ = gru(x[:4])
        >>> second, _ = gru(x[4:])
        >>> gru.reset_states()
        >>> whole, _ = gru(x)
        >>> torch.allclose(torch.cat([first, second]), whole, atol=1e-6)
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
        **options: Any,
    ) -> None:
        _reject_proj_size(options)
        cell_options: dict[str, Any] = {}
        if not reset_after:
            cell_options["reset_after"] = False
        if layer_norm:
            cell_options["layer_norm"] = True
        self.reset_after, self.layer_norm = reset_after, layer_norm
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0, device, dtype,
            cell_kwargs={"bias": bias, "reset_after": reset_after, "layer_norm": layer_norm},
            cell_options=cell_options,
            **options,
        )

    def _make_cell(self, input_size, kwargs, device, dtype):
        return GRUCell(input_size, self.hidden_size, device=device, dtype=dtype, **kwargs)
