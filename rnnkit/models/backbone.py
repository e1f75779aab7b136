"""The recurrent stack every task model is built on: a cell name (or instance) in, a
batch-first ``(B, T, F) -> (B, T, D*H_out)`` module out.

=================  ==========================================  =========================
``cell=``          what runs                                   path
=================  ==========================================  =========================
``"lstm"``         :class:`rnnkit.LSTM`                        torch drop-in (fast path)
``"gru"``          :class:`rnnkit.GRU`                         torch drop-in (fast path)
``"elman"``        :class:`rnnkit.RNN` (tanh)                  torch drop-in (fast path)
``"rnn_relu"``     :class:`rnnkit.RNN` (ReLU)                  torch drop-in (fast path)
``"irnn"``         :class:`rnnkit.RNN` (ReLU, identity init)   torch drop-in (fast path)
``"indrnn"``       :class:`~rnnkit.cells.IndRNNCell`           Recurrence / Bidirectional
``"ugrnn"``        :class:`~rnnkit.cells.UGRNNCell`            Recurrence / Bidirectional
``"nas"``          :class:`~rnnkit.cells.NASCell`              Recurrence / Bidirectional
``"grouped_lstm"`` :class:`~rnnkit.cells.GroupedLSTMCell`      Recurrence / Bidirectional
``"min_gru"``      :class:`~rnnkit.cells.MinGRUCell`           Recurrence / Bidirectional
``"min_lstm"``     :class:`~rnnkit.cells.MinLSTMCell`          Recurrence / Bidirectional
a cell instance    that cell (layer 1), copies of its config   Recurrence / Bidirectional
=================  ==========================================  =========================

``cell_options`` go to the drop-in (``peepholes``, ``layer_norm``, ``proj_size``,
``recurrent_dropout``, ``zoneout``, ``engine`` ...) or to each cell's constructor
(``recurrent_max_abs``, ``groups``, ``forget_bias`` ...).

**State.** What the layers themselves return, so that a trainer carrying it between TBPTT
windows finds the batch axis as it does for torch's RNNs: for the drop-ins torch's ``h_n
(L*D, B, H_out)`` (LSTM: ``(h_n, c_n)``); for cell stacks a tuple with one entry per layer,
each that layer's state (a ``(forward, backward)`` pair when bidirectional) made of ``(B, S)``
tensors.

Symbols: ``B`` batch, ``T`` time steps, ``F`` input features, ``H`` hidden size, ``L`` layers,
``D`` directions (2 when bidirectional), ``H_out`` the cell's output size.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.cells import (
    GroupedLSTMCell,
    IndRNNCell,
    MinGRUCell,
    MinLSTMCell,
    NASCell,
    UGRNNCell,
)
from rnnkit.config import Configurable
from rnnkit.layers import GRU, LSTM, RNN, Bidirectional, Recurrence
from rnnkit.layers.state import DriverOutput

__all__ = ["CELL_NAMES", "Backbone", "resolve_cell_name"]

# name -> (drop-in class, fixed keyword arguments)
_DROP_INS: dict[str, tuple[type, dict[str, Any]]] = {
    "lstm": (LSTM, {}),
    "gru": (GRU, {}),
    "elman": (RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "irnn": (RNN, {"nonlinearity": "relu", "init": "irnn"}),
}
# name -> cell class, driven by Recurrence / Bidirectional
_CELLS: dict[str, type] = {
    "indrnn": IndRNNCell,
    "ugrnn": UGRNNCell,
    "nas": NASCell,
    "grouped_lstm": GroupedLSTMCell,
    "min_gru": MinGRUCell,
    "min_lstm": MinLSTMCell,
}
CELL_NAMES: tuple[str, ...] = (*_DROP_INS, *_CELLS)
DEFAULT_HIDDEN_SIZE = 64


def resolve_cell_name(name: object, owner: str = "Backbone") -> str:
    """``name`` lower-cased if it is a known cell name; a one-line error with the closest
    valid name otherwise."""
    if not isinstance(name, str):
        raise TypeError(
            f"{owner}: cell must be one of {', '.join(CELL_NAMES)} or a cell instance, got "
            f"{type(name).__name__} ({name!r})"
        )
    key = name.strip().lower().replace("-", "_")
    if key in CELL_NAMES:
        return key
    close = difflib.get_close_matches(key, CELL_NAMES, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"{owner}: unknown cell {name!r}{hint}; valid names: {', '.join(CELL_NAMES)}, or a "
        "cell instance"
    )


def _check_int(owner: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_dropout(owner: str, dropout: object) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
        0.0 <= dropout < 1.0
    ):
        raise ValueError(f"{owner}: dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def _cell_like(cell: nn.Module, input_size: int, owner: str) -> nn.Module:
    """A fresh cell with ``cell``'s options and another ``input_size`` (layers 2..L)."""
    get_config = getattr(cell, "get_config", None)
    if not callable(get_config) or not hasattr(type(cell), "from_config"):
        raise TypeError(
            f"{owner}: num_layers > 1 with a cell instance builds the upper layers from the "
            f"cell's config, and {type(cell).__name__} has no get_config/from_config (derive it "
            "from rnnkit.cells.RecurrentCell)"
        )
    config = dict(get_config())
    if "input_size" not in config:
        raise TypeError(f"{owner}: {type(cell).__name__}'s config has no input_size to change "
                        "for the upper layers")
    config["input_size"] = input_size
    return type(cell).from_config(config)


class Backbone(Configurable, nn.Module):
    """A stack of recurrent layers, batch-first, from a cell name or a cell instance.

    Args:
        input_size: ``F``, features per step.
        hidden_size: ``H``, units per layer and direction (default 64; with a cell instance,
            the cell's own ``hidden_size``).
        cell: a name from :data:`CELL_NAMES` or a cell instance (whose ``input_size`` must be
            ``F``; the upper layers are fresh cells with the same config).
        num_layers: ``L`` stacked layers.
        bidirectional: every layer reads forwards and backwards; outputs concatenated.
        dropout: probability of zeroing features between stacked layers (as ``torch.nn.LSTM``'s
            ``dropout``), in training only.
        cell_options: keyword arguments for the drop-in or for each cell (see module docs).

    Call: ``outputs, state = backbone(x, lengths=None, state=None)`` with ``x (B, T, F)``;
    ``outputs (B, T, D*H_out)`` is zero at padded steps and ``state`` (module docs) is each
    sequence's state at its own last step.

    Example:
        >>> import torch
        >>> net = Backbone(3, hidden_size=4, cell="indrnn", num_layers=2, bidirectional=True)
        >>> out, state = net(torch.randn(2, 5, 3), lengths=torch.tensor([5, 2]))
        >>> out.shape, net.output_size, len(state)
        (torch.Size([2, 5, 8]), 8, 2)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        cell: str | nn.Module = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        cell_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = _check_int(owner, "input_size", input_size, 1)
        self.num_layers = _check_int(owner, "num_layers", num_layers, 1)
        self.bidirectional = bool(bidirectional)
        self.dropout = _check_dropout(owner, dropout)
        if cell_options is not None and not isinstance(cell_options, dict):
            raise TypeError(f"{owner}: cell_options must be a dict of keyword arguments, got "
                            f"{type(cell_options).__name__}")
        options = dict(cell_options or {})
        directions = 2 if self.bidirectional else 1
        self.drop_in: nn.Module | None = None
        self.layers = nn.ModuleList()

        if isinstance(cell, nn.Module):
            self.cell_name = type(cell).__name__
            if not hasattr(cell, "state_size"):
                raise TypeError(f"{owner}: cell {type(cell).__name__} is not a recurrent cell "
                                "(it has no state_size); pass a cell name or an rnnkit cell")
            if options:
                raise ValueError(f"{owner}: cell_options only apply to a cell name; the cell "
                                 f"instance {type(cell).__name__} already has its options")
            cell_input = getattr(cell, "input_size", input_size)
            if cell_input != input_size:
                raise ValueError(f"{owner}: the cell's input_size is {cell_input} but the "
                                 f"inputs have {input_size} features")
            own_hidden = getattr(cell, "hidden_size", None)
            if hidden_size is not None and own_hidden is not None and hidden_size != own_hidden:
                raise ValueError(f"{owner}: hidden_size={hidden_size} but the cell has "
                                 f"hidden_size={own_hidden}; leave hidden_size out")
            self.hidden_size = int(own_hidden if own_hidden is not None else cell.output_size)
            cells = [cell]
        else:
            self.cell_name = resolve_cell_name(cell, owner)
            self.hidden_size = _check_int(
                owner, "hidden_size",
                DEFAULT_HIDDEN_SIZE if hidden_size is None else hidden_size, 1,
            )
            cells = []

        if self.cell_name in _DROP_INS:
            layer_class, fixed = _DROP_INS[self.cell_name]
            clash = sorted(set(options) & {*fixed, "batch_first", "num_layers", "dropout",
                                           "bidirectional", "input_size", "hidden_size"})
            if clash:
                raise ValueError(f"{owner}: cell_options {clash} are set by the model; pass "
                                 "them as the model's own arguments")
            try:
                self.drop_in = layer_class(
                    self.input_size, self.hidden_size, num_layers=self.num_layers,
                    batch_first=True, dropout=self.dropout if self.num_layers > 1 else 0.0,
                    bidirectional=self.bidirectional, **fixed, **options,
                )
            except TypeError as error:
                raise TypeError(f"{owner}: cell {self.cell_name!r}: {error}") from None
            proj = int(getattr(self.drop_in, "proj_size", 0) or 0)
            self.output_size = (proj or self.hidden_size) * directions
        else:
            layer_input = self.input_size
            for index in range(self.num_layers):
                if index < len(cells):
                    layer_cell = cells[index]
                elif cells:
                    layer_cell = _cell_like(cells[0], layer_input, owner)
                else:
                    try:
                        layer_cell = _CELLS[self.cell_name](layer_input, self.hidden_size,
                                                            **options)
                    except (TypeError, ValueError) as error:
                        raise type(error)(f"{owner}: cell {self.cell_name!r}, layer "
                                          f"{index + 1}: {error}") from None
                layer: nn.Module
                if self.bidirectional:
                    layer = Bidirectional(layer_cell, batch_first=True)
                else:
                    layer = Recurrence(layer_cell, batch_first=True)
                self.layers.append(layer)
                layer_input = int(layer_cell.output_size) * directions
            self.output_size = layer_input
        self.between = nn.Dropout(self.dropout)

    @property
    def uses_drop_in(self) -> bool:
        """True when the stack is one of torch's drop-ins (the fast path)."""
        return self.drop_in is not None

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: Any = None
                ) -> DriverOutput:
        """``x (B, T, F)`` -> ``DriverOutput(outputs (B, T, D*H_out), state)``."""
        if self.drop_in is not None:
            outputs, h_n = self.drop_in(x, state, lengths=lengths)  # (B, T, D*H_out)
            return DriverOutput(outputs, h_n)
        if state is not None and (not isinstance(state, (tuple, list))
                                  or len(state) != self.num_layers):
            raise ValueError(
                f"{type(self).__name__}: state must be a tuple with one entry per layer "
                f"({self.num_layers}), as returned by a previous call; got "
                f"{type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        finals = []
        outputs = x
        for index, layer in enumerate(self.layers):
            if index > 0:
                outputs = self.between(outputs)
            layer_state = None if state is None else state[index]
            outputs, final = layer(outputs, layer_state, lengths=lengths)  # (B, T, D*H_out)
            finals.append(final)
        return DriverOutput(outputs, tuple(finals))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> Any:
        """The zero state for ``batch_size`` sequences, in the backbone's state layout."""
        probe = torch.zeros(batch_size, 1, self.input_size, device=device,
                            dtype=dtype or _parameter_dtype(self))
        with torch.no_grad():
            _, state = self(probe)
        return _map(lambda t: torch.zeros_like(t), state)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    first = next(module.parameters(), None)
    return first.dtype if first is not None else torch.get_default_dtype()


def _map(fn, tree: Any) -> Any:
    if isinstance(tree, (tuple, list)):
        return tuple(_map(fn, part) for part in tree)
    return fn(tree)
