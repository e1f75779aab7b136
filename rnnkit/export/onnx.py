"""ONNX export with a dynamic batch and sequence length, checked with onnxruntime.

:func:`export_onnx` writes a model to ONNX and declares the file written only after
onnxruntime reproduced the PyTorch output (``atol``) on the example *and* on a second input
with another batch size, another number of steps and other lengths. Until then the graph
lives in a temporary file next to ``path``; a failed check removes it and raises
:class:`ExportCheckError` naming the output, the largest difference and the input shapes.

How: the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, i.e.
``torch.export`` plus onnxscript). While ``torch.export`` records the model, rnnkit's engine
runs every cell over time as one ``scan`` (:mod:`rnnkit.engine.scan`), which becomes one
ONNX ``Scan`` node: batch size, number of steps and ``lengths`` are graph inputs, and
padded steps keep the state exactly as in PyTorch. The compiled C++ kernels and torch's
fused kernels are never recorded (``rnnkit.engine.dispatch.EXPORT_REASON``).

The TorchScript-based exporter (``exporter="torchscript"``) is available for the one case it
serves: a torch-compatible ``rnnkit.LSTM/GRU/RNN`` called without ``lengths``, which it writes
as ONNX's own LSTM/GRU/RNN operator (about ten times faster to export). It traces Python, so
a loop over time is unrolled for the example's length and ``lengths`` become constants
(the check with a second input refuses such a file); see ``docs/export.md``.

Symbols: ``B`` batch size, ``T`` time steps, ``F`` input features.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit import cells as C
from rnnkit._files import file_mode
from rnnkit.layers.recurrence import UnfoldFrom

__all__ = [
    "CellSupport",
    "ExampleInputs",
    "UNSUPPORTED",
    "Unsupported",
    "ExportCheckError",
    "ExportError",
    "UnsupportedExportError",
    "example_inputs_for",
    "export_onnx",
    "export_run",
    "exportable_cells",
]

EXPORTERS = ("dynamo", "torchscript")


class ExportError(RuntimeError):
    """The model could not be written to ONNX (the message says why)."""


class UnsupportedExportError(ExportError):
    """The model holds a cell or option that torch.onnx cannot express (see
    :func:`exportable_cells`) or that an ONNX graph cannot hold (carried state)."""


class ExportCheckError(ExportError):
    """onnxruntime's output differs from PyTorch's: the file was not written."""


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class CellSupport:
    """One row of the table of cells: whether ``export_onnx`` writes it, and if not why.

    ``build(input_size, hidden_size)`` makes the cell of the row (the tests export each row
    with it); ``reason`` summarises the error torch.onnx gives (empty when exportable).
    """

    cell: str
    options: str
    exportable: bool
    reason: str
    build: Callable[[int, int], nn.Module]

    @property
    def name(self) -> str:
        return f"{self.cell}({self.options})" if self.options else self.cell


_ROWS: tuple[CellSupport, ...] = (
    CellSupport("LSTMCell", "peepholes=True, layer_norm=True, proj_size=2, cell_clip=0.5",
                True, "", lambda i, h: C.LSTMCell(i, h, peepholes=True, layer_norm=True,
                                                  proj_size=2, cell_clip=0.5)),
    CellSupport("LSTMCell", "coupled_gates=True", True, "",
                lambda i, h: C.LSTMCell(i, h, coupled_gates=True)),
    CellSupport("GRUCell", "reset_after=True", True, "", lambda i, h: C.GRUCell(i, h)),
    CellSupport("GRUCell", "reset_after=False, layer_norm=True", True, "",
                lambda i, h: C.GRUCell(i, h, reset_after=False, layer_norm=True)),
    CellSupport("ElmanCell", "nonlinearity='tanh'", True, "", lambda i, h: C.ElmanCell(i, h)),
    CellSupport("IndRNNCell", "recurrent_max_abs=2.0", True, "",
                lambda i, h: C.IndRNNCell(i, h, recurrent_max_abs=2.0)),
    CellSupport("UGRNNCell", "", True, "", lambda i, h: C.UGRNNCell(i, h)),
    CellSupport("NASCell", "proj_size=2", True, "", lambda i, h: C.NASCell(i, h, proj_size=2)),
    CellSupport("GroupedLSTMCell", "groups=2", True, "",
                lambda i, h: C.GroupedLSTMCell(i, h, groups=2)),
    CellSupport("MinGRUCell", "", True, "", lambda i, h: C.MinGRUCell(i, h)),
    CellSupport("MinLSTMCell", "", True, "", lambda i, h: C.MinLSTMCell(i, h)),
    CellSupport("MultiCell", "[ElmanCell, LSTMCell]", True, "",
                lambda i, h: C.MultiCell([C.ElmanCell(i, h), C.LSTMCell(h, h)])),
)

@dataclass(frozen=True)
class Unsupported:
    """Something an ONNX graph cannot hold, why, and the error torch.onnx gives for it."""

    what: str
    reason: str
    error: str


#: UnfoldFrom's reason (export_onnx refuses the module with it before calling torch.onnx).
UNFOLD_REASON = (
    "generation stops as soon as every sequence's `until` has fired, and that test "
    "(bool(running.any()) after each step) reads a value the graph does not have, so "
    "torch.export cannot record the loop"
)

#: What export_onnx cannot write (torch 2.13, onnxscript 0.7), checked by tests/export.
UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("UnfoldFrom (generation)", UNFOLD_REASON,
                "GuardOnDataDependentSymNode: Could not guard on data-dependent expression"),
    Unsupported(
        "mask= with gaps (Keras masks)",
        "a layer first asks whether the mask marks a prefix of each row (torch.equal) to "
        "run it as lengths, a question about values the graph does not have; pass lengths= "
        "(the padded steps then never change the result)",
        "DataDependentOutputException: aten.equal.default"),
    Unsupported(
        "stateful=True layers",
        "the carried state lives in buffers each call writes, and an ONNX graph keeps "
        "nothing between runs; export a copy built with stateful=False and pass the state "
        "as an input",
        "refused by export_onnx (UnsupportedExportError)"),
)

#: Module classes export_onnx refuses before calling torch.onnx, with the reason.
UNEXPORTABLE: dict[type, str] = {UnfoldFrom: UNFOLD_REASON}


def exportable_cells() -> list[CellSupport]:
    """The table of rnnkit's cells (and their options) with whether :func:`export_onnx`
    writes them; docs/export.md shows it and tests/export checks every row.

    Example:
        >>> [row.name for row in exportable_cells()][:2]
        ['LSTMCell(peepholes=True, layer_norm=True, proj_size=2, cell_clip=0.5)', \
'LSTMCell(coupled_gates=True)']
        >>> all(row.exportable for row in exportable_cells())
        True
    """
    return list(_ROWS)


# ------------------------------------------------------------------------------ helpers


def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs onnx, onnxruntime and onnxscript ({error.name} is missing); "
            "install them with: pip install 'rnnkit[onnx]'"
        ) from error
    return onnxruntime


def _flatten(value: Any, name: str, out: list[tuple[str, Tensor]]) -> None:
    """Outputs (a tensor, tuples/lists of them, ``DriverOutput``) as named tensors."""
    if isinstance(value, Tensor):
        out.append((name, value))
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        for index, item in enumerate(value):
            part = fields[index] if fields else str(index)
            _flatten(item, f"{name}_{part}" if name else part, out)
    elif value is None:
        return
    else:
        raise ExportError(f"the model returns a {type(value).__name__}, which ONNX cannot "
                          f"hold; return tensors (or tuples of tensors)")


def _output_names(value: Any) -> list[str]:
    """Graph output names: ``output`` for the output (the first element of a tuple, as
    rnnkit's drivers, torch's RNNs and the task models return it), ``state`` /
    ``state_0``, ``state_1``... for the state after it, ``output_2``... for anything else."""
    if isinstance(value, Tensor):
        return ["output"]
    names: list[str] = []
    for index, item in enumerate(value):
        stem = {0: "output", 1: "state"}.get(index, f"output_{index}")
        flat: list[tuple[str, Tensor]] = []
        _flatten(item, "", flat)
        if isinstance(item, Tensor):
            names.append(stem)
        else:
            names += [f"{stem}_{name}" for name, _ in flat]
    return names


class _Call(nn.Module):
    """``model(*inputs, lengths=lengths)`` with flat tensor outputs: what the graph holds."""

    def __init__(self, model: nn.Module, with_lengths: bool) -> None:
        super().__init__()
        self.model = model
        self.with_lengths = with_lengths

    @staticmethod
    def raw(model: nn.Module, args: Sequence[Tensor], with_lengths: bool) -> Any:
        if with_lengths:
            *inputs, lengths = args
            return model(*inputs, lengths=lengths)
        return model(*args)

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        flat: list[tuple[str, Tensor]] = []
        _flatten(self.raw(self.model, args, self.with_lengths), "", flat)
        return tuple(t for _, t in flat)


def _refuse_unexportable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        where = f" (at {name})" if name else ""
        reason = UNEXPORTABLE.get(type(module))
        if reason is not None:
            raise UnsupportedExportError(
                f"{type(module).__name__}{where} cannot be exported to ONNX: {reason} "
                f"(docs/export.md lists what can and cannot be exported)"
            )
        if getattr(module, "stateful", False) is True:
            raise UnsupportedExportError(
                f"{type(module).__name__}{where} is stateful (it carries its state from one "
                f"call to the next in buffers), which an ONNX graph cannot hold; export a "
                f"copy built with stateful=False and pass the state as an input"
            )


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with parameters that need no gradient, restored afterwards.

    Without gradients torch.export does not trace the scan's backward: measured on the
    shared 2-core AMD EPYC Zen 3, a Recurrence(LSTMCell) exports in 6.6 s instead of 19 s.
    """
    modes = {module: module.training for module in model.modules()}
    grads = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.eval()
    model.requires_grad_(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.train(mode)
        for parameter, flag in grads.items():
            parameter.requires_grad_(flag)


def _layout(model: nn.Module, batch_first: bool | None) -> tuple[int, int]:
    """(batch_dim, time_dim) of the inputs: the model's own ``batch_first`` when it has one,
    else batch-major (the task models' convention)."""
    if batch_first is None:
        batch_first = bool(getattr(model, "batch_first", True))
    return (0, 1) if batch_first else (1, 0)


def _shapes(tensors: Sequence[Tensor]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)


def _second_inputs(
    inputs: Sequence[Tensor], lengths: Tensor | None, dims: tuple[int, int],
    dynamic_batch: bool, dynamic_time: bool,
) -> tuple[list[Tensor], Tensor | None]:
    """Inputs of another batch size and length (and other lengths) for the check."""
    batch_dim, time_dim = dims
    generator = torch.Generator().manual_seed(1234)
    first = inputs[0]
    batch = first.shape[batch_dim] + 1 if dynamic_batch else first.shape[batch_dim]
    steps = first.shape[time_dim] + 2 if dynamic_time else first.shape[time_dim]
    second = []
    for x in inputs:
        shape = list(x.shape)
        if x.dim() > batch_dim:
            shape[batch_dim] = batch
        if x.dim() > time_dim and x.dim() >= 2:
            shape[time_dim] = steps
        if x.is_floating_point():
            second.append(torch.randn(shape, generator=generator, dtype=x.dtype))
        elif x.dtype == torch.bool:
            second.append(torch.rand(shape, generator=generator) < 0.5)
        else:  # token ids: stay inside the example's range (the vocabulary)
            low, high = int(x.min()), int(x.max()) + 1
            second.append(torch.randint(low, high, shape, generator=generator, dtype=x.dtype))
    new_lengths = None
    if lengths is not None:
        new_lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
        new_lengths[0] = steps  # the longest sequence fills the batch
        if batch > 1:
            new_lengths[-1] = 1  # and a one-step sequence
    return second, new_lengths


def _summary(error: BaseException) -> str:
    """The one line that says why torch.onnx failed (its 'Exception summary')."""
    text = str(error)
    marker = "## Exception summary"
    if marker in text:
        lines = [line.strip() for line in text.split(marker, 1)[1].splitlines()]
        lines = [line for line in lines if line]
        if lines:  # "<class 'torch...GuardOnDataDependentSymNode'>: ..." -> "Guard...: ..."
            return re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>", r"\1", lines[0])
    cause = error.__cause__ or error.__context__
    if cause is not None and cause is not error and not text.strip():
        return _summary(cause)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}"


def _dynamo_export(wrapper: nn.Module, args: tuple[Tensor, ...], target: str,
                   input_names: list[str], output_names: list[str],
                   dynamic: list[dict[int, Any] | None], opset: int | None) -> None:
    program = torch.onnx.export(
        wrapper, args, dynamo=True, dynamic_shapes={"args": tuple(dynamic)},  # forward(*args)
        input_names=input_names, output_names=output_names, opset_version=opset,
        verbose=False,
    )
    program.save(target)


def _torchscript_export(wrapper: nn.Module, args: tuple[Tensor, ...], target: str,
                        input_names: list[str], output_names: list[str],
                        dynamic: list[dict[int, Any] | None], opset: int | None) -> None:
    axes = {name: {dim: str(dim_name) for dim, dim_name in spec.items()}
            for name, spec in zip(input_names, dynamic, strict=True) if spec}
    torch.onnx.export(wrapper, args, target, dynamo=False, input_names=input_names,
                      output_names=output_names, dynamic_axes=axes,
                      opset_version=opset if opset is not None else 17)


# ------------------------------------------------------------------------------ export


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Tensor | Sequence[Tensor],
    *,
    lengths: Tensor | Sequence[int] | None = None,
    dynamic_batch: bool = True,
    dynamic_time: bool = True,
    batch_first: bool | None = None,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    exporter: str = "dynamo",
) -> Path:
    """Write ``model`` to ONNX at ``path`` with a dynamic batch and sequence length.

    Args:
        model: any module; called as ``model(*example_inputs)`` or, with ``lengths``,
            ``model(*example_inputs, lengths=lengths)``. Exported in eval mode (the
            model's modes are restored afterwards).
        path: the ``.onnx`` file to write (replaced atomically).
        example_inputs: a tensor or a tuple of tensors: ``(B, T, F)`` features or ``(B, T)``
            token ids (``(T, B, ...)`` for a model whose ``batch_first`` is False).
        lengths: ``(B,)`` valid steps per sequence; they become the graph input
            ``lengths`` (padded steps do not change the result, as in PyTorch).
        dynamic_batch, dynamic_time: whether the batch size and the number of steps are
            free in the graph (the example must then have at least 2 of each: torch.export
            specialises sizes 0 and 1).
        batch_first: the inputs' layout; None: the model's ``batch_first`` if it has one,
            else batch-major (rnnkit's task models).
        opset: the ONNX opset (None: the exporter's default).
        check: run onnxruntime on the example and on a second input with another batch
            size, length and lengths, and compare with PyTorch before writing ``path``.
        atol: the largest absolute difference the check accepts.
        exporter: ``"dynamo"`` (every rnnkit model; ``torch.export`` + onnxscript) or
            ``"torchscript"`` (torch-compatible drop-ins without lengths only).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UnsupportedExportError: the model holds a cell torch.onnx cannot express (named,
            with the reason; see :func:`exportable_cells`) or a stateful layer.
        ExportError: torch.onnx failed (its own summary of why).
        ExportCheckError: onnxruntime disagrees with PyTorch (output, difference, shapes);
            nothing is written.

    Example::

        >>> import torch, rnnkit
        >>> from rnnkit.export import export_onnx
        >>> lstm = rnnkit.LSTM(3, 4, batch_first=True)
        >>> export_onnx(lstm, "lstm.onnx", torch.randn(2, 5, 3),
        ...             lengths=torch.tensor([5, 2]))  # doctest: +SKIP
        PosixPath('lstm.onnx')
    """
    ort = _require_onnx()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = [example_inputs] if isinstance(example_inputs, Tensor) else list(example_inputs)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("example_inputs must be a tensor or a non-empty sequence of tensors")
    dims = _layout(model, batch_first)
    batch_dim, time_dim = dims
    first = inputs[0]
    if first.dim() < 2:
        raise ValueError(f"the first example input must be at least (B, T), got shape "
                         f"{tuple(first.shape)}")
    batch, steps = first.shape[batch_dim], first.shape[time_dim]
    for flag, size, what in ((dynamic_batch, batch, "batch size"),
                             (dynamic_time, steps, "number of steps")):
        if flag and size < 2:
            raise ValueError(
                f"the example's {what} is {size}; a dynamic {what} needs an example with at "
                f"least 2 (torch.export specialises sizes 0 and 1)"
            )
    if lengths is not None:
        from rnnkit.engine.lengths import check_lengths

        lengths = check_lengths(lengths, batch, steps)
    _refuse_unexportable(model)

    path = Path(path)
    names = [f"input_{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]
    args = tuple(inputs) + ((lengths,) if lengths is not None else ())
    input_names = names + (["lengths"] if lengths is not None else [])
    dynamic: list[dict[int, Any] | None] = []
    batch_name = torch.export.Dim("batch") if exporter == "dynamo" else "batch"
    time_name = torch.export.Dim("time") if exporter == "dynamo" else "time"
    for x in args:
        spec: dict[int, Any] = {}
        if dynamic_batch and x.dim() > batch_dim:
            spec[batch_dim] = batch_name
        if dynamic_time and x.dim() >= 2 and x.dim() > time_dim:
            spec[time_dim] = time_name
        dynamic.append(spec or None)

    wrapper = _Call(model, lengths is not None)
    with _frozen(model):
        expected = wrapper(*args)  # also checks the call works at all, with a plain error
        output_names = _output_names(_Call.raw(model, args, lengths is not None))
        if len(output_names) != len(expected):  # a structure the names do not follow
            output_names = [f"output_{i}" for i in range(len(expected))]
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                        dir=path.parent)
        os.close(handle)
        os.chmod(temp, file_mode(path))  # what open() would give it, not mkstemp's 0o600
        try:
            run = _dynamo_export if exporter == "dynamo" else _torchscript_export
            try:
                with warnings.catch_warnings(), _quiet_exporter():
                    warnings.simplefilter("ignore")  # the exporter's internal notices
                    run(wrapper, args, temp, input_names, output_names, dynamic, opset)
            except Exception as error:
                summary = _summary(error)
                hint = ""
                if "DataDependent" in summary:
                    hint = (" (the model reads a tensor's value in Python, bool(t), t.item(), "
                            "torch.equal, which a graph cannot record; docs/export.md, 'What "
                            "cannot be exported')")
                raise ExportError(
                    f"torch.onnx ({exporter} exporter) could not export "
                    f"{type(model).__name__} on inputs {_shapes(args)}: {summary}{hint}"
                ) from error
            if check:
                second, second_lengths = _second_inputs(inputs, lengths, dims, dynamic_batch,
                                                        dynamic_time)
                second_args = tuple(second) + ((second_lengths,) if lengths is not None
                                               else ())
                options = ort.SessionOptions()
                options.log_severity_level = 3  # errors only: no constant-folding notices
                session = ort.InferenceSession(temp, options,
                                               providers=["CPUExecutionProvider"])
                for call_args, reference in ((args, expected), (second_args, None)):
                    if reference is None:
                        reference = wrapper(*call_args)
                    _compare(session, input_names, output_names, call_args, reference, atol,
                             type(model).__name__)
            with open(temp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's logs during an export: torch.onnx's registry notices (missing
    torchvision ops) and torch.export's graph dumps when it cannot record a model (the
    ExportError raised then says why in one line)."""
    import logging

    loggers = [logging.getLogger(name) for name in (
        "torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _compare(session: Any, input_names: list[str], output_names: list[str],
             args: Sequence[Tensor], reference: Sequence[Tensor], atol: float,
             model_name: str) -> None:
    wanted = {i.name for i in session.get_inputs()}
    feed = {name: arg.numpy() for name, arg in zip(input_names, args, strict=True)
            if name in wanted}
    try:
        got = session.run(None, feed)
    except Exception as error:  # onnxruntime's own failure on another shape
        raise ExportCheckError(
            f"onnxruntime could not run the exported {model_name} on inputs {_shapes(args)}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0]}; the file was not "
            f"written"
        ) from error
    if len(got) != len(reference):
        raise ExportCheckError(
            f"the exported {model_name} returns {len(got)} outputs, PyTorch {len(reference)}; "
            f"the file was not written"
        )
    for name, onnx_out, torch_out in zip(output_names, got, reference, strict=True):
        expected = torch_out.detach().cpu()
        actual = torch.from_numpy(onnx_out)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportCheckError(
                f"ONNX output {name!r} has shape {tuple(actual.shape)}, PyTorch "
                f"{tuple(expected.shape)}, on inputs {_shapes(args)}; the file was not written"
            )
        if expected.numel() == 0:
            continue
        difference = float((actual.to(expected.dtype) - expected).abs().max())
        if not difference <= atol:  # also catches nan
            raise ExportCheckError(
                f"ONNX output {name!r} differs from PyTorch by up to {difference:.3g} (atol "
                f"{atol:g}) on inputs {_shapes(args)}; the file was not written"
            )


# ------------------------------------------------------------------------------ run dirs


def _accepts_lengths(model: nn.Module) -> bool:
    try:
        return "lengths" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class ExampleInputs(NamedTuple):
    """What :func:`example_inputs_for` builds: the positional inputs, the lengths (or None)
    and whether the number of steps may vary (False for a fixed window such as a
    forecaster's ``look_back``)."""

    inputs: tuple[Tensor, ...]
    lengths: Tensor | None
    dynamic_time: bool


def example_inputs_for(model: nn.Module, batch_size: int = 2, steps: int = 5) -> ExampleInputs:
    """Example inputs built from a model's configuration.

    * a fixed window (a ``look_back`` attribute, the ``Forecaster``): ``x (B, look_back)``
      of positive values, plus ``covariates (B, look_back + horizon, covariate_width)`` when
      the model has covariates; the number of steps stays fixed;
    * token ids ``(B, T)`` when the model embeds tokens (``vocab_size`` or its first
      ``nn.Embedding``);
    * else features ``(B, T, F)`` with ``F`` its ``input_size`` (its own or its first
      layer's); ``(T, B, F)`` for a model whose ``batch_first`` is False.

    Lengths (one full-length and shorter sequences) when the model's ``forward`` takes
    ``lengths`` and the number of steps may vary.
    """
    generator = torch.Generator().manual_seed(0)
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    window = getattr(model, "look_back", None)
    if isinstance(window, int):
        x = 1.0 + torch.rand(batch_size, window, generator=generator, dtype=dtype)
        width = getattr(model, "covariate_width", 0)
        if isinstance(width, int) and width > 0:
            need = window + int(getattr(model, "horizon", 0))
            covariates = torch.randn(batch_size, need, width, generator=generator, dtype=dtype)
            return ExampleInputs((x, covariates), None, False)
        return ExampleInputs((x,), None, False)
    vocab = getattr(model, "vocab_size", None)
    if not isinstance(vocab, int):
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        vocab = embedding.num_embeddings if embedding is not None else None
    dims = _layout(model, None)
    shape = [0, 0]
    shape[dims[0]], shape[dims[1]] = batch_size, steps
    if isinstance(vocab, int):
        x = torch.randint(0, vocab, shape, generator=generator)
    else:
        size = getattr(model, "input_size", None)
        if not isinstance(size, int):
            size = next((m.input_size for m in model.modules()
                         if isinstance(getattr(m, "input_size", None), int)), None)
        if size is None:
            raise ExportError(
                f"cannot tell the input of {type(model).__name__} from its configuration (no "
                f"look_back, vocab_size, nn.Embedding or input_size); call "
                f"rnnkit.export.export_onnx with example inputs"
            )
        x = torch.randn(*shape, size, generator=generator, dtype=dtype)
    lengths = None
    if _accepts_lengths(model):
        lengths = torch.full((batch_size,), steps, dtype=torch.int64)
        lengths[1:] = max(1, steps - 2)
    return ExampleInputs((x,), lengths, True)


def export_run(run_dir: str | os.PathLike[str], output: str | os.PathLike[str], *,
               opset: int | None = None, atol: float = 1e-4) -> Path:
    """Export the model of a run directory (``rnnkit.load(run_dir)``) to ONNX at ``output``,
    with example inputs built from its configuration (:func:`example_inputs_for`); what
    ``rnnkit export RUN_DIR --format onnx`` runs."""
    from rnnkit.training.checkpoint import load

    model = load(run_dir)
    example = example_inputs_for(model)
    return export_onnx(model, output, example.inputs, lengths=example.lengths,
                       dynamic_time=example.dynamic_time, opset=opset, atol=atol)
