r"""Seeing vanishing and exploding gradients: the gradient of the loss with respect to each
step's hidden state.

:func:`gradient_flow` runs a model once on a batch and returns, for every recurrent layer
(and direction) inside it, :math:`\lVert \partial L / \partial h_t \rVert` for
:math:`t = 1 \dots T`: the *total* derivative, through every later step, the layers above and
the head, the quantity Pascanu, Mikolov and Bengio (2013) plot. For a linear recurrence
:math:`h_t = W h_{t-1} + U x_t` and a loss of :math:`h_T` alone it is
:math:`(W^\top)^{T-t}\, \partial L / \partial h_T`, which shrinks or grows geometrically with
the distance to the end: the vanishing and exploding gradients of the seeds' pages.

How it is measured, without re-implementing any model: every rnnkit driver in the model
(the drop-ins ``rnnkit.LSTM/GRU/RNN``, ``Recurrence``/``Fold``, both halves of a
``Bidirectional``, whatever task model holds them) runs once on the eager loop path
(``engine="loop"``, the reference semantics every faster path reproduces), and a forward hook
on each step's cell adds a zero tensor :math:`\delta_t` to its output :math:`h_t` (and to the
state entry that *is* that output, so the next step sees the same :math:`h_t + \delta_t`).
Then :math:`\partial L / \partial \delta_t = \partial L / \partial h_t` exactly, and
``torch.autograd.grad`` with respect to the :math:`\delta_t` leaves the model's parameter
gradients untouched. For an LSTM :math:`h_t` is the output (not the cell state :math:`c_t`).

The norm at step ``t`` is taken over the whole batch, :math:`\sqrt{\sum_b \lVert \partial L
/ \partial h_{t,b} \rVert^2}` (with a batch of one, the textbook quantity); padded steps of a
sequence contribute nothing (the loop keeps the state there). Steps that no sequence reaches
are NaN.

Symbols: ``B`` batch, ``T`` time steps, ``H`` hidden size.

Example:
    >>> import torch, rnnkit
    >>> from rnnkit.diagnostics import gradient_flow
    >>> model = rnnkit.SequenceRegressor(2, 1, cell="gru", hidden_size=8, num_layers=2)
    >>> flow = gradient_flow(model, (torch.randn(4, 30, 2), torch.randn(4, 1)))
    >>> list(flow), flow["layer 2"].shape
    (['layer 1', 'layer 2'], torch.Size([30]))
    >>> bool(flow["layer 1"][-1] > flow["layer 1"][0])   # the gradient fades going back
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit._files import atomic_write
from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.recurrence import Recurrence
from rnnkit.layers.rnn import RNNBase

__all__ = ["GradientFlow", "gradient_flow", "plot_gradient_flow"]

Loss = Callable[[Any, Any], Tensor]


@dataclass
class GradientFlow(Mapping):
    """``label -> (T,)`` tensor of :math:`\\lVert \\partial L / \\partial h_t \\rVert`, in the
    order the layers run (``"layer 1"``, ``"layer 1 reverse"``, ``"layer 2"``, ...), plus the
    loss it was measured on. A read-only mapping; :meth:`to_dict` gives plain lists for JSON."""

    norms: dict[str, Tensor]
    loss: float
    steps: int = field(init=False)

    def __post_init__(self) -> None:
        self.steps = max((len(v) for v in self.norms.values()), default=0)

    def __getitem__(self, label: str) -> Tensor:
        try:
            return self.norms[label]
        except KeyError:
            raise KeyError(f"GradientFlow has no layer {label!r}; it has "
                           f"{', '.join(self.norms)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.norms)

    def __len__(self) -> int:
        return len(self.norms)

    def to_dict(self) -> dict[str, Any]:
        """``{"loss": float, "norms": {label: [float, ...]}}`` (NaN as None), for JSON."""
        return {"loss": self.loss,
                "norms": {k: [None if math.isnan(x) else x for x in v.tolist()]
                          for k, v in self.norms.items()}}


@dataclass
class _Run:
    """One driver call: its cells' perturbations in call order, grouped by cell run."""

    driver: nn.Module
    lengths: Tensor | None
    time_steps: int
    batch_size: int
    reversed_within_lengths: bool          # Bidirectional's backward half (reverse_padded)
    cell_runs: list[list[Tensor]] = field(default_factory=list)   # per run: K x (B, H)
    last_cell: Any = None


class _Recorder:
    """Global forward hooks that find each driver's step cells and perturb their outputs."""

    def __init__(self, drivers: set[int], reversed_inputs: set[int]) -> None:
        self.drivers = drivers
        self.reversed_inputs = reversed_inputs
        self.stack: list[_Run] = []
        self.runs: list[_Run] = []
        self.active_cell: nn.Module | None = None

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if id(module) in self.drivers:
            inputs = args[0] if args else kwargs.get("input", kwargs.get("inputs"))
            lengths = kwargs.get("lengths", args[2] if len(args) > 2 else None)
            if kwargs.get("mask", args[3] if len(args) > 3 else None) is not None:
                raise ValueError("gradient_flow: a Keras mask on a recurrent layer is not "
                                 "supported; pass lengths= instead")
            if not isinstance(inputs, Tensor) or inputs.dim() != 3:
                got = (tuple(inputs.shape) if isinstance(inputs, Tensor)
                       else type(inputs).__name__)
                raise ValueError(
                    f"gradient_flow: {type(module).__name__} was called with {got}; only "
                    "batched (B, T, F) / (T, B, F) tensors are supported (no "
                    "PackedSequence: pass padded inputs and lengths=)")
            batch_first = bool(getattr(module, "batch_first", False))
            time_steps = inputs.shape[1] if batch_first else inputs.shape[0]
            batch_size = inputs.shape[0] if batch_first else inputs.shape[1]
            if lengths is not None:
                lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
            run = _Run(module, lengths, int(time_steps), int(batch_size),
                       id(module) in self.reversed_inputs)
            self.stack.append(run)
            self.runs.append(run)
            return
        if self.stack and self.active_cell is None and hasattr(module, "state_size"):
            self.active_cell = module

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if id(module) in self.drivers:
            if self.stack and self.stack[-1].driver is module:
                self.stack.pop()
            return None
        if module is not self.active_cell:
            return None
        self.active_cell = None
        run = self.stack[-1]
        out, state = output
        delta = torch.zeros_like(out, requires_grad=True)  # (B, H_out)
        perturbed = out + delta
        replaced = [False]

        def swap(leaf: Tensor) -> Tensor:
            if not replaced[0] and leaf is out:
                replaced[0] = True
                return perturbed
            return leaf

        new_state = _map_state(swap, state)
        if not replaced[0]:
            raise TypeError(
                f"gradient_flow: {type(module).__name__} returns an output that is not part "
                "of its state, so h_t is not defined for it; the hidden state must be the "
                "cell's output (as for every rnnkit cell)")
        if module is not run.last_cell:
            run.cell_runs.append([])
            run.last_cell = module
        run.cell_runs[-1].append(delta)
        return perturbed, new_state


def _map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    if isinstance(state, Tensor):
        return fn(state)
    return type(state)(_map_state(fn, part) for part in state)


def _leaf_drivers(model: nn.Module) -> tuple[list[nn.Module], set[int], set[int]]:
    """The drivers that step cells (drop-ins, Recurrence); the backward halves of every
    Bidirectional, and those of them that run forwards over reversed sequences."""
    drivers = [m for m in model.modules() if isinstance(m, (RNNBase, Recurrence))]
    backward_halves: set[int] = set()
    reversed_inputs: set[int] = set()
    for module in model.modules():
        if isinstance(module, Bidirectional):
            backward = module.backward_layer
            backward_halves.add(id(backward))
            if not getattr(backward, "go_backwards", False):
                reversed_inputs.add(id(backward))
    return drivers, backward_halves, reversed_inputs


@contextmanager
def _on_loop_path(drivers: list[nn.Module]) -> Iterator[None]:
    saved = [(d, d.engine) for d in drivers]
    try:
        for d in drivers:
            d.engine = "loop"
        yield
    finally:
        for d, engine in saved:
            d.engine = engine


def _unpack(batch: Any) -> tuple[tuple, Any, Tensor | None]:
    if isinstance(batch, Mapping):
        keys = {k.lower(): k for k in batch}
        inputs = next((batch[keys[k]] for k in ("inputs", "input", "x", "features")
                       if k in keys), None)
        target = next((batch[keys[k]] for k in ("target", "targets", "y", "labels")
                       if k in keys), None)
        if inputs is None:
            raise ValueError(f"gradient_flow: the batch dict needs an 'inputs' (or 'x') "
                             f"entry; it has {sorted(batch)}")
        lengths = batch.get("lengths")
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        inputs, target = batch[0], batch[1]
        lengths = batch[2] if len(batch) == 3 else None
    else:
        raise ValueError(
            "gradient_flow: batch must be (inputs, target), (inputs, target, lengths) or a "
            "dict with 'inputs', 'target' and optionally 'lengths'; got "
            + (f"a {type(batch).__name__} of length {len(batch)}"
               if isinstance(batch, (tuple, list)) else type(batch).__name__))
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return inputs, target, lengths


def _default_loss(output: Tensor, target: Tensor) -> Tensor:
    """MSE for float targets, cross-entropy (ignore_index -100) for class ids."""
    if not isinstance(target, Tensor):
        raise TypeError("gradient_flow: without loss=, the target must be a tensor "
                        f"(got {type(target).__name__}); pass loss=callable(output, target)")
    if target.is_floating_point():
        if output.dim() == 3 and target.dim() == 2 and output.shape[-1] == target.shape[-1]:
            output = output[:, -1]  # (B, D): the last step against a per-sequence target
        return F.mse_loss(output, target.reshape(output.shape))
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1),
                           ignore_index=-100)


def gradient_flow(model: nn.Module, batch: Any, loss: Loss | None = None) -> GradientFlow:
    r"""``||dL/dh_t||`` for ``t = 1..T`` for every recurrent layer (and direction) of ``model``.

    Args:
        model: any module holding rnnkit recurrent layers (the drop-ins ``rnnkit.LSTM``,
            ``GRU``, ``RNN``; ``Recurrence``, ``Fold``, ``Bidirectional``; the task models).
            Its mode (train/eval) is used as it is; its parameter gradients are not touched.
        batch: ``(inputs, target)``, ``(inputs, target, lengths)`` or a dict with
            ``"inputs"``, ``"target"`` and optionally ``"lengths"``; the model is called as
            ``model(*inputs)`` or ``model(*inputs, lengths=lengths)``.
        loss: ``loss(output, target) -> scalar``; by default mean squared error for float
            targets and cross-entropy for class ids. A model returning a tuple (a language
            model's ``(logits, state)``) gives its first element.

    Returns:
        A :class:`GradientFlow`: ``flow["layer 1"]`` is a ``(T,)`` float64 tensor (index
        ``t - 1`` holds step ``t``); a bidirectional layer adds ``"layer k reverse"``. Layers
        are numbered in the order they run, across every driver in the model.

    Raises:
        ValueError: the model holds no rnnkit recurrent layer (``torch.nn.LSTM`` runs as one
            kernel with no per-step hidden state to hook: use the drop-in ``rnnkit.LSTM``),
            or none ran on the batch; a bad batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gradient_flow: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    drivers, backward_halves, reversed_inputs = _leaf_drivers(model)
    if not drivers:
        plain = [type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)]
        hint = (f" ({', '.join(plain)} from torch.nn run as one kernel: use the drop-ins "
                "rnnkit.LSTM / rnnkit.GRU / rnnkit.RNN)" if plain else "")
        raise ValueError(f"gradient_flow: {type(model).__name__} holds no rnnkit recurrent "
                         f"layer{hint}")
    inputs, target, lengths = _unpack(batch)
    loss_fn = loss if loss is not None else _default_loss
    recorder = _Recorder({id(d) for d in drivers}, reversed_inputs)
    handles = []
    with _on_loop_path(drivers), torch.enable_grad():
        try:
            for d in drivers:
                handles.append(d.register_forward_pre_hook(
                    lambda m, a, k: recorder.pre(m, a, k), with_kwargs=True))
                handles.append(d.register_forward_hook(
                    lambda m, a, k, o: recorder.post(m, a, k, o), with_kwargs=True))
            handles.append(torch.nn.modules.module.register_module_forward_pre_hook(
                lambda m, a: recorder.pre(m, a, {}) if id(m) not in recorder.drivers
                else None))
            handles.append(torch.nn.modules.module.register_module_forward_hook(
                lambda m, a, o: recorder.post(m, a, {}, o) if id(m) not in recorder.drivers
                else None))
            output = (model(*inputs) if lengths is None
                      else model(*inputs, lengths=lengths))
        finally:
            for handle in handles:
                handle.remove()
    if isinstance(output, (tuple, list)):
        output = output[0]
    value = loss_fn(output, target)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("gradient_flow: the loss must be a scalar tensor, got "
                         + (f"shape {tuple(value.shape)}" if isinstance(value, Tensor)
                            else type(value).__name__))
    deltas = [d for run in recorder.runs for cells in run.cell_runs for d in cells]
    if not deltas:
        raise ValueError(f"gradient_flow: no recurrent layer of {type(model).__name__} ran on "
                         "this batch")
    grads = torch.autograd.grad(value, deltas, allow_unused=True)
    by_delta = {id(d): g if g is not None else torch.zeros_like(d)
                for d, g in zip(deltas, grads, strict=True)}
    norms = _label(recorder.runs, by_delta, backward_halves)
    return GradientFlow(norms, float(value.detach()))


def _step_norms(run: _Run, cells: list[Tensor], by_delta: dict[int, Tensor],
                reverse: bool) -> Tensor:
    """(T,) norms over the batch, each call placed at its time position."""
    squared = torch.stack([by_delta[id(d)].detach().double().pow(2).flatten(1).sum(1)
                           for d in cells])  # (K, B): per processing step and sequence
    steps, batch = squared.shape
    total = torch.full((run.time_steps, batch), 0.0, dtype=torch.float64)
    reached = torch.zeros(run.time_steps, dtype=torch.bool)
    k = torch.arange(steps)
    if run.reversed_within_lengths:
        # the backward half of a Bidirectional runs forwards over each sequence reversed
        # within its length: its k-th step is sequence b's step lengths[b] - 1 - k
        lengths = (run.lengths if run.lengths is not None
                   else torch.full((batch,), run.time_steps))
        for b in range(batch):
            valid = k < lengths[b]
            times = lengths[b] - 1 - k[valid]
            total[times, b] = squared[valid, b]
            reached[times] = True
    else:
        times = steps - 1 - k if reverse else k   # the loop runs t = K-1 .. 0 in reverse
        total[times] = squared
        reached[times] = True
    norms = total.sum(1).sqrt()
    norms[~reached] = float("nan")
    return norms


def _label(runs: list[_Run], by_delta: dict[int, Tensor],
           backward_halves: set[int]) -> dict[str, Tensor]:
    norms: dict[str, Tensor] = {}
    layer = 0
    calls: dict[int, int] = {}
    for run in runs:
        driver = run.driver
        calls[id(driver)] = calls.get(id(driver), 0) + 1
        suffix = "" if calls[id(driver)] == 1 else f" (call {calls[id(driver)]})"
        if isinstance(driver, RNNBase):
            directions = 2 if driver.bidirectional else 1
            go_backwards = bool(getattr(driver, "go_backwards", False))
            first = layer
            for index, cells in enumerate(run.cell_runs):
                depth, direction = divmod(index, directions)
                name = f"layer {first + depth + 1}" + (" reverse" if direction else "")
                norms[name + suffix] = _step_norms(run, cells, by_delta,
                                                   reverse=bool(direction) != go_backwards)
            layer = first + driver.num_layers
            continue
        if id(driver) in backward_halves:
            name = f"layer {layer} reverse"      # pairs with the forward half just before
        else:
            layer += 1
            name = f"layer {layer}"
        reverse = bool(getattr(driver, "go_backwards", False))
        for cells in run.cell_runs:
            norms[name + suffix] = _step_norms(run, cells, by_delta, reverse=reverse)
    return norms


def plot_gradient_flow(results: Mapping[str, Any], path: str | os.PathLike, *,
                       title: str | None = None, note: str | None = None,
                       layers: str = "all") -> str:
    """Draw ``||dL/dh_t||`` against ``t`` on a log scale, several models on one figure.

    Args:
        results: ``{name: GradientFlow}`` for one panel, or ``{panel title: {name:
            GradientFlow}}`` for side-by-side panels (e.g. "at initialisation" and "after
            training") with the same colour per name in every panel.
        path: the PNG (or any format matplotlib knows by the suffix), written atomically.
        title: the figure's title; note: a line under it (the machine, say).
        layers: ``"all"`` (one line per layer and direction, later layers dashed) or
            ``"last"`` (each model's last layer only, forward direction).

    Returns:
        ``path`` as a string. Needs matplotlib (``pip install 'rnnkit[plot]'``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("plot_gradient_flow needs matplotlib: pip install "
                          "'rnnkit[plot]'") from None
    if layers not in ("all", "last"):
        raise ValueError(f"plot_gradient_flow: layers must be 'all' or 'last', got {layers!r}")
    if not isinstance(results, Mapping) or not results:
        raise ValueError("plot_gradient_flow: results must be a non-empty dict "
                         "{name: GradientFlow} or {panel: {name: GradientFlow}}")
    nested = all(isinstance(v, Mapping) and not isinstance(v, GradientFlow)
                 for v in results.values())
    panels = dict(results) if nested else {"": results}
    for panel, flows in panels.items():
        for name, flow in flows.items():
            if not isinstance(flow, GradientFlow):
                where = f"{panel!r}/{name!r}" if panel else repr(name)
                raise TypeError(f"plot_gradient_flow: results[{where}] is a "
                                f"{type(flow).__name__}, not a GradientFlow")
    names = list(dict.fromkeys(n for flows in panels.values() for n in flows))
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    styles = ["-", "--", ":", "-."]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6),
                                squeeze=False, sharey=True)
    for axis, (panel, flows) in zip(axes[0], panels.items(), strict=True):
        for name, flow in flows.items():
            labels = list(flow)
            if layers == "last":
                forward = [k for k in labels if "reverse" not in k]
                labels = forward[-1:]
            for index, label in enumerate(labels):
                values = flow[label].clone()
                values[values <= 0] = float("nan")   # log scale: exact zeros are not drawn
                steps = torch.arange(1, len(values) + 1)
                shown = name if len(labels) == 1 else f"{name}: {label}"
                axis.plot(steps.numpy(), values.numpy(), styles[index % len(styles)],
                          color=colours[name], label=shown, linewidth=1.4)
        axis.set_yscale("log")
        axis.set_xlabel("time step t")
        axis.set_title(panel)
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel(r"$\|\partial L / \partial h_t\|$")
    if title or note:
        figure.suptitle("\n".join(x for x in (title, note) if x), fontsize=10)
    figure.tight_layout()
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    try:
        atomic_write(path, lambda f: figure.savefig(f, format=suffix, dpi=110), binary=True)
    finally:
        plt.close(figure)
    return os.fspath(path)
