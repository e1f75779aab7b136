"""Model summaries: Keras' ``model.summary()`` table for any torch module, built on
`torchinfo <https://github.com/TylerYep/torchinfo>`_.

``rnnkit.summary(model, example_input)`` runs one forward pass (in eval mode, without
gradients; the model's modes and any carried state are restored afterwards) and prints::

    Model: "SequenceClassifier"
    Input: (2, 28, 28) float32
    __________________________________________________________________________________
    Layer (type)                      Output Shape                            Param #
    ==================================================================================
    encoder (InputEncoder)            (2, 28, 28)                                   0
    backbone (Backbone)               out (B=2, T=28, F=16)                     5,120
                                      state h_n (L*D=1, B=2, H=16), c_n (...)
    ...
    ==================================================================================
    Total params: 5,290
    Trainable params: 5,290
    Non-trainable params: 0
    __________________________________________________________________________________

What torchinfo gives (the layer tree, each layer's parameters, trainable or not, the totals,
the mult-adds) is kept; what rnnkit adds is the recurrent rows: a recurrent layer (a driver,
a drop-in, ``Bidirectional``, ``Sequence``, a torch RNN) is one row, as in Keras, whose
output is labelled by axis (``B`` batch, ``T`` time, ``F`` features; time-major layers show
``(T=..., B=..., F=...)``) and whose final state follows, each tensor named (``h``, ``c``,
``cell 1/h``; a torch-format state ``h_n (L*D=..., B=..., H=...)``, ``L*D`` = layers times
directions). The cells a recurrence runs at every step are not listed one call per step
(torchinfo's "(recursive)" rows): their parameters are in the recurrent row. A module a model
calls several times itself (a decoder cell stepped in a Python loop) is one row, marked
``x N calls``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["ModelSummary", "SummaryMixin", "SummaryRow", "summary"]

WIDTHS = (38, 46, 12)  # Layer (type), Output Shape, Param #


@dataclass
class SummaryRow:
    """One row of the table: ``name (type)``, the output and (recurrent layers) state shapes,
    the parameters of the module and everything under it."""

    name: str
    type: str
    depth: int
    output: str
    state: str | None
    params: int
    trainable: int
    calls: int = 1
    path: str = ""  # the module's name in model.named_modules() ("" for the model)


@dataclass
class ModelSummary:
    """What :func:`summary` returns; ``str()`` is the printed table, ``repr()`` one line
    (so an interactive session does not show the table twice)."""

    model_name: str
    rows: list[SummaryRow]
    total_params: int
    trainable_params: int
    input_description: str
    output_description: str
    statistics: Any = field(repr=False, default=None)  # torchinfo's ModelStatistics

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        return _render(self)

    def __repr__(self) -> str:  # short: summary() has printed the table already
        return (f"ModelSummary(model={self.model_name!r}, rows={len(self.rows)}, "
                f"total_params={self.total_params:,}, "
                f"trainable_params={self.trainable_params:,})")


class SummaryMixin:
    """``model.summary()`` for rnnkit's task models: :func:`summary` on an example input the
    model builds itself (:meth:`example_input`) when none is given."""

    def example_input(self, batch_size: int = 2, steps: int = 8) -> Any:
        """Arguments for one forward call: a tensor, or a tuple of positional arguments."""
        raise NotImplementedError(f"{type(self).__name__} cannot build an example input; pass "
                                  "one: model.summary(example_input)")

    def summary(self, example_input: Any = None, **options: Any) -> ModelSummary:
        """Print (and return) the Keras-style summary table; see :func:`rnnkit.summary`."""
        if example_input is None and options.get("input_size") is None:
            example_input = self.example_input(**_example_options(options))
        else:
            _example_options(options)
        return summary(self, example_input, **options)  # type: ignore[arg-type]


def _example_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: options.pop(key) for key in ("batch_size", "steps") if key in options}


# --------------------------------------------------------------------------- recurrent rows


def _recurrent_types() -> tuple[type, ...]:
    from rnnkit.layers import Bidirectional, Recurrence, Sequence, UnfoldFrom

    return (Recurrence, UnfoldFrom, Bidirectional, Sequence, nn.RNNBase)


def _is_recurrent(module: nn.Module) -> bool:
    """A row whose output is ``(output, state)`` and whose insides are not listed: a driver,
    a drop-in, ``Bidirectional``, ``Sequence``, a torch RNN, or a cell (``state_size``)."""
    return isinstance(module, _recurrent_types()) or hasattr(module, "state_size")


def _is_stack(module: nn.Module) -> bool:
    """A stack of recurrent layers returning ``(outputs, state)`` (the task models'
    ``Backbone``): a recurrent row of its own, its layers listed under it."""
    return hasattr(module, "drop_in") and hasattr(module, "layers")


def _batch_first(module: nn.Module) -> bool:
    if _is_stack(module):
        return True
    value = getattr(module, "batch_first", None)
    if isinstance(value, bool):
        return value
    inner = getattr(module, "forward_layer", None) or getattr(module, "layer", None)
    return _batch_first(inner) if isinstance(inner, nn.Module) else False


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(tuple(value.shape)).replace(",)", ")")
    if isinstance(value, PackedSequence):
        return f"packed {_shape(value.data)}"
    return "--" if value is None else type(value).__name__


def _labelled(value: Any, batch_first: bool) -> str:
    """A recurrent layer's output with its axes named."""
    if isinstance(value, PackedSequence):
        return f"packed (N={value.data.shape[0]}, F={value.data.shape[-1]})"
    if not isinstance(value, Tensor):
        return _shape(value)
    dims = tuple(value.shape)
    if len(dims) == 3:
        names = ("B", "T", "F") if batch_first else ("T", "B", "F")
    elif len(dims) == 2:
        names = ("B", "F")
    else:
        return _shape(value)
    return "(" + ", ".join(f"{n}={d}" for n, d in zip(names, dims, strict=True)) + ")"


def _state_parts(module: nn.Module, state: Any) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor of a recurrent layer's final ``state``."""
    from rnnkit.layers import Bidirectional, Recurrence, Sequence, UnfoldFrom
    from rnnkit.layers.state import state_leaves
    from rnnkit.layers.wrappers import state_leaf_names

    if isinstance(module, nn.RNNBase):  # torch format: h_n or (h_n, c_n)
        parts = state if isinstance(state, (tuple, list)) else (state,)
        return list(zip(("h_n", "c_n"), parts, strict=False))
    if isinstance(module, Bidirectional) and isinstance(state, (tuple, list)) \
            and len(state) == 2:
        found = []
        for label, layer, part in (("fw", module.forward_layer, state[0]),
                                   ("bw", module.backward_layer, state[1])):
            found += [(f"{label}/{name}", t) for name, t in _state_parts(layer, part)]
        return found
    if isinstance(module, (Recurrence, UnfoldFrom)):
        leaves = state_leaves(state)
        if all(isinstance(t, Tensor) for t in leaves):
            return list(zip(state_leaf_names(module.cell, state), leaves, strict=True))
    if isinstance(module, Sequence):
        return _state_parts(module.layer, state)
    if hasattr(module, "state_size"):  # a cell stepped by the model itself
        leaves = state_leaves(state)
        if all(isinstance(t, Tensor) for t in leaves):
            return list(zip(state_leaf_names(module, state), leaves, strict=True))
    if _is_stack(module):
        if module.drop_in is not None:
            return _state_parts(module.drop_in, state)
        found = []
        for index, (layer, part) in enumerate(zip(module.layers, state, strict=False)):
            found += [(f"layer {index}/{name}", t) for name, t in _state_parts(layer, part)]
        return found
    leaves = [t for t in state_leaves(state) if isinstance(t, Tensor)]
    return [(str(index), t) for index, t in enumerate(leaves)]


def _state_text(parts: list[tuple[str, Tensor]]) -> str:
    texts = []
    for name, tensor in parts:
        dims = tuple(tensor.shape)
        if len(dims) == 2:
            shape = f"(B={dims[0]}, {dims[1]})"
        elif len(dims) == 3:
            shape = f"(L*D={dims[0]}, B={dims[1]}, H={dims[2]})"
        else:
            shape = _shape(tensor)
        texts.append(f"{name} {shape}")
    return "state " + ", ".join(texts) if texts else "state --"


def _split_recurrent(module: nn.Module, output: Any) -> tuple[Any, Any]:
    """``(sequence output, final state)`` of a recurrent layer's return value."""
    from rnnkit.layers import Sequence

    if isinstance(module, Sequence):
        if isinstance(output, (tuple, list)) and module.return_state:
            return output[0], tuple(output[1:]) if len(output) > 2 else output[1]
        return output, None
    if isinstance(output, (tuple, list)) and len(output) >= 2:
        return output[0], output[1]
    return output, None


def _describe(value: Any) -> str:
    """Any module output: a shape, or the shapes of a tuple's / named tuple's tensors."""
    if isinstance(value, (Tensor, PackedSequence)) or value is None:
        return _shape(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_describe(v)}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        if fields:
            return ", ".join(f"{name} {_describe(part)}" for name, part in zip(
                fields, value, strict=True) if part is not None)
        return "[" + ", ".join(_describe(part) if not isinstance(part, (tuple, list))
                               else f"({len(_leaves(part))} tensors)" for part in value) + "]"
    return type(value).__name__


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [leaf for part in value for leaf in _leaves(part)]
    return [value]


# ------------------------------------------------------------------------------ summary


def _parameter_counts(module: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for param in module.parameters():
        if isinstance(param, nn.parameter.UninitializedParameter):
            continue
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return total, trainable


def _random_input(size: Sequence[int], dtype: torch.dtype, device: torch.device | None
                  ) -> Tensor:
    if dtype.is_floating_point:
        return torch.randn(*size, dtype=dtype, device=device)
    return torch.zeros(*size, dtype=dtype, device=device)  # token ids: 0 is in every vocabulary


def _snapshot(model: nn.Module) -> Callable[[], None]:
    """Save what a forward pass changes besides outputs (training flags, the state stateful
    layers carry) and return the function that puts it back."""
    from rnnkit.layers.stateful import StateStore

    modes = [(module, module.training) for module in model.modules()]
    stores = []
    for module in model.modules():
        store = getattr(module, "_state_store", None)
        if isinstance(store, StateStore):
            buffers = {k: v for k, v in module._buffers.items() if k.startswith("carried_")}
            stores.append((module, store, dict(store.__dict__), buffers))

    def restore() -> None:
        for module, training in modes:
            module.training = training
        for module, store, fields, buffers in stores:
            for key in [k for k in module._buffers if k.startswith("carried_")]:
                del module._buffers[key]
            module._buffers.update(buffers)
            store.__dict__.update(fields)

    return restore


def summary(
    model: nn.Module,
    example_input: Any = None,
    *,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    depth: int = 3,
    print_fn: Callable[[str], Any] | None = print,
    **forward_kwargs: Any,
) -> ModelSummary:
    """Print Keras' summary table for ``model`` (layer (type), output shape, param #, totals)
    and return it as a :class:`ModelSummary`.

    Args:
        model: any ``torch.nn.Module``.
        example_input: what one forward call takes: a tensor, a tuple of positional
            arguments, or a dict of keyword arguments (torchinfo's ``input_data``).
        input_size: instead of ``example_input``: the input's shape, batch included (a list
            of shapes for several inputs); float inputs are random normal, integer ones
            (``dtypes=[torch.int64]``) zeros.
        dtypes: the dtypes of the ``input_size`` inputs (default: the model's parameter
            dtype).
        depth: how many levels of nested modules to list (a recurrent layer's insides are
            never listed; its parameters are in its row).
        print_fn: where the table goes (``None``: only return it).
        forward_kwargs: more keyword arguments for the forward call (``lengths=...``).

    The forward pass runs in eval mode without gradients, on the example input's device;
    training flags and the state of stateful layers are as before afterwards. Output shapes
    are those of that pass (real batch and time sizes, where Keras prints ``None``).
    """
    try:
        import torchinfo
    except ImportError as error:  # a core dependency; a broken install says so
        raise ImportError("rnnkit.summary needs torchinfo: pip install torchinfo") from error
    if not isinstance(model, nn.Module):
        raise TypeError(f"rnnkit.summary: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"rnnkit.summary: depth must be a positive int, got {depth!r}")
    first = next(model.parameters(), None)
    if example_input is None:
        if input_size is None:
            raise ValueError(
                f"rnnkit.summary: give example_input (what {type(model).__name__}'s forward "
                "takes) or input_size (its shape, batch included): output shapes come from "
                "one forward pass")
        sizes = [input_size] if all(isinstance(d, int) for d in input_size) else input_size
        default = first.dtype if first is not None else torch.get_default_dtype()
        kinds = list(dtypes) if dtypes is not None else [default] * len(sizes)
        if len(kinds) != len(sizes):
            raise ValueError(f"rnnkit.summary: {len(sizes)} input sizes but {len(kinds)} dtypes")
        device = first.device if first is not None else None
        inputs = [_random_input(s, d, device) for s, d in zip(sizes, kinds, strict=True)]
        example_input = inputs[0] if len(inputs) == 1 else tuple(inputs)
    elif input_size is not None:
        raise ValueError("rnnkit.summary: give example_input or input_size, not both")

    records: dict[int, list[Any]] = {}  # id(module) -> [calls, output text, state text]

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        entry = records.setdefault(id(module), [0, "--", None])
        entry[0] += 1
        if _is_recurrent(module) or _is_stack(module):
            sequence, state = _split_recurrent(module, output)
            entry[1] = _labelled(sequence, _batch_first(module))
            entry[2] = None if state is None else _state_text(_state_parts(module, state))
        else:
            entry[1] = _describe(output)

    restore = _snapshot(model)
    hooks = [module.register_forward_hook(record) for module in model.modules()]
    try:
        statistics = torchinfo.summary(model, input_data=example_input, depth=100,
                                       verbose=0, mode="eval", **forward_kwargs)
    except RuntimeError as error:
        cause = error.__cause__ or error
        raise RuntimeError(f"rnnkit.summary: the forward pass of {type(model).__name__} on the "
                           f"example input failed: {cause}") from cause
    finally:
        for hook in hooks:
            hook.remove()
        restore()
    rows = _rows(model, statistics, records, depth)
    # totals from the parameters themselves, each shared (tied) parameter once: torchinfo
    # 1.8's own totals count some shared parameters twice (a Seq2Seq's, for one)
    total, trainable = _parameter_counts(model)
    result = ModelSummary(
        model_name=type(model).__name__, rows=rows, total_params=total,
        trainable_params=trainable,
        input_description=_describe_input(example_input),
        output_description=records.get(id(model), [0, "--"])[1], statistics=statistics)
    if print_fn is not None:
        print_fn(str(result))
    return result


def _describe_input(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{_shape(value)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_describe_input(v)}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ", ".join(_describe_input(v) for v in value)
    return type(value).__name__


def _rows(model: nn.Module, statistics: Any, records: dict[int, list[Any]],
          depth: int) -> list[SummaryRow]:
    """The table's rows in torchinfo's order (the order of the forward pass)."""
    modules = dict(model.named_modules())  # name -> module ("" is the model)

    def listed(name: str) -> bool:
        """Whether a module gets a row: called, or holding parameters of its own; never
        a container nobody calls (a ModuleList), anything inside a recurrent layer, or the
        model itself unless it is one recurrent layer."""
        module = modules[name]
        if name == "":  # the model itself: a row only when it is one recurrent layer
            return _is_recurrent(model)
        parts = name.split(".")
        for cut in range(len(parts)):
            ancestor = modules[".".join(parts[:cut])]
            if _is_recurrent(ancestor):
                return False
        called = id(module) in records
        return called or any(True for _ in module.parameters(recurse=False))

    def level(name: str) -> tuple[int, str]:
        """How many listed modules hold this one (itself included), and its name relative
        to the nearest listed one above it."""
        if name == "":
            return 1, type(model).__name__
        parts = name.split(".")
        above = [cut for cut in range(1, len(parts)) if listed(".".join(parts[:cut]))]
        return len(above) + 1, ".".join(parts[above[-1] if above else 0:])

    names = {id(module): name for name, module in modules.items()}
    rows: list[SummaryRow] = []
    seen: set[int] = set()
    for info in statistics.summary_list:
        key = id(info.module)
        name = names.get(key)
        if name is None or key in seen or not listed(name):
            continue
        seen.add(key)
        row_level, short = level(name)
        if row_level > depth:
            continue
        total, trainable = _parameter_counts(info.module)
        calls, output, state = records.get(key, (0, "-- (not called)", None))
        rows.append(SummaryRow(name=short, type=type(info.module).__name__, depth=row_level,
                               output=output, state=state, params=total, trainable=trainable,
                               calls=calls, path=name))
    return rows


def _wrap(text: str, width: int, sep: str = ", ", keep: bool = True) -> list[str]:
    """Split ``text`` at ``sep`` so each line fits ``width`` (a long piece stays whole);
    ``keep=False`` joins the pieces of a line with a space and drops ``sep`` at breaks."""
    lines: list[str] = []
    current = ""
    joiner = sep if keep else " "
    for piece in text.split(sep):
        candidate = piece if not current else f"{current}{joiner}{piece}"
        if len(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current + (sep.rstrip() if keep else ""))
            current = "  " + piece
    lines.append(current)
    return lines


def _render(result: ModelSummary) -> str:
    name_w, out_w, param_w = WIDTHS
    width = name_w + out_w + param_w
    lines = [f'Model: "{result.model_name}"', f"Input: {result.input_description}",
             f"Output: {result.output_description}", "_" * width,
             f"{'Layer (type)':<{name_w}}{'Output Shape':<{out_w}}{'Param #':>{param_w}}",
             "=" * width]
    for index, row in enumerate(result.rows):
        label = "  " * (row.depth - 1) + f"{row.name} ({row.type})"
        if row.calls > 1:
            label += f" x{row.calls} calls"
        texts = _wrap(row.output, out_w - 2)
        if row.state is not None:
            texts += _wrap(row.state, out_w - 2)
        label_lines = _wrap(label.replace(" (", ", ("), name_w - 1, sep=", ", keep=False)
        count = f"{row.params:,}"
        for line in range(max(len(texts), len(label_lines))):
            left = label_lines[line] if line < len(label_lines) else ""
            middle = texts[line] if line < len(texts) else ""
            right = count if line == 0 else ""
            lines.append(f"{left:<{name_w}}{middle:<{out_w}}{right:>{param_w}}".rstrip())
        if index < len(result.rows) - 1 and len(texts) > 1:
            lines.append("")
    lines += ["=" * width, f"Total params: {result.total_params:,}",
              f"Trainable params: {result.trainable_params:,}",
              f"Non-trainable params: {result.non_trainable_params:,}", "_" * width]
    return "\n".join(lines)
