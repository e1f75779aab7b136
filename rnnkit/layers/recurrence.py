"""Drivers that run any cell over time, after CNTK's layers library.

* :class:`Recurrence` returns every step's output and the final state (CNTK ``Recurrence``,
  Keras ``RNN(return_sequences=True)``).
* :class:`Fold` returns only each sequence's last output and final state (CNTK ``Fold``,
  Keras ``return_sequences=False``).
* :class:`UnfoldFrom` generates a sequence from a state, feeding each output back in as the
  next input (CNTK ``UnfoldFrom``; the decoder loop of generation).

Any ``nn.Module`` following the cell contract (``output, state = cell(x, state)`` plus
``state_size`` / ``initial_state``) can be driven: rnnkit's cells or a user's own.

Symbols: ``T`` time steps, ``B`` batch, ``H_in`` the cell's input size, ``H_out`` its output
size, ``S`` its state size(s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.cells.base import State
from rnnkit.config import Configurable
from rnnkit.engine import dispatch, fused
from rnnkit.engine.autocast import outside_autocast
from rnnkit.engine.lengths import unbatched_lengths
from rnnkit.engine.loop import first_step
from rnnkit.engine.plan import Plan
from rnnkit.layers.dropout import reset_dropout_masks
from rnnkit.layers.masking import (
    carry_last_valid,
    check_lengths,
    from_time_major,
    gather_steps,
    last_steps,
    last_valid_steps,
    map_state,
    normalise_with_mask,
    valid_steps,
)
from rnnkit.layers.state import (
    CellWrapper,
    DriverOutput,
    check_state,
    nest_like,
    state_leaves,
    state_like,
    state_sizes,
    zero_state,
)
from rnnkit.layers.stateful import Stateful, StateStore

OUTPUT_ORDERS = ("time", "processing")


class _FullStateCell(CellWrapper):
    """Outputs the whole state (all tensors concatenated) instead of the cell's output: what
    ``Recurrence(return_full_state=True)`` runs."""

    #: how plans and explain name it (the class is private)
    plan_name = "return_full_state"
    #: the compiled kernels return the output sequence and the final state only
    compiled_refusal = ("return_full_state=True needs every step's state, and the compiled "
                        "kernels return only each step's output")

    @property
    def output_size(self) -> int:
        return sum(state_leaves(state_sizes(self.cell)))

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        _, new_state = self.cell(x, state)
        return torch.cat(state_leaves(new_state), dim=-1), new_state  # (B, sum(S))


class Recurrence(Configurable, Stateful, nn.Module):
    """Run ``cell`` over a sequence; return every step's output and the final state.

    .. math:: o_t, s_t = \\mathrm{cell}(x_t, s_{t-1}), \\qquad t = 1 \\dots T

    Args:
        cell: any module with the cell contract.
        go_backwards: read each sequence from its own last valid step back to its first.
            Outputs stay at their original time positions (see ``output_order``).
        initial_state: the state used when ``forward`` gets none: None (the cell's zeros), a
            number (every entry of every state tensor, CNTK's ``initial_state=0.1``), a tensor
            ``(S,)`` or ``(B, S)`` (a tuple of them for multi-state cells).
        return_full_state: return the whole state at every step instead of the cell's
            output: for an LSTM a tuple ``(h (T, B, H_out), c (T, B, H))`` (CNTK).
        learnable_initial_state: make the initial state a parameter (``initial_state`` or
            zeros is where it starts), shared by all sequences of a batch.
        batch_first: inputs and outputs are ``(B, T, ...)``.
        stateful: carry the final state into the next call (see :meth:`reset_states`).
        engine: ``"auto"``, ``"compiled"``, ``"scan"`` or ``"loop"``; passed to
            :func:`rnnkit.engine.dispatch.run_recurrence`.
        zero_output_for_mask: outputs at padded or masked steps are zero (True, rnnkit's and
            torch's convention) or repeat the last valid output processed before them
            (False, Keras' default; zeros before the first valid step).
        output_order: ``"time"`` (outputs at their original time positions) or
            ``"processing"`` (Keras' ``go_backwards``: the whole padded sequence reversed
            and outputs returned in the order they were computed, ``outputs[0]`` being the
            last time step's). Only differs from ``"time"`` with ``go_backwards``.
        precision: ``"fp32"`` or ``"bf16"``: every call runs as inside
            ``rnnkit.engine.precision("bf16")``, which ``Recurrence`` honours too. A float32
            cell on the compiled kernels (LSTM, GRU, Elman, UGRNN, NAS) runs its GEMMs in bf16:
            the input projection and the per-step recurrent products take bfloat16 operands
            (weights rounded once per call, the state once per step) with float32
            accumulation; gate math, carried state, outputs and gradients stay float32
            (``docs/engine-compiled.md``, "bf16"). Any other cell is cast: the input, the
            state and the cell's floating parameters and buffers become bfloat16 for the call
            (differentiably: gradients reach the float32 parameters), the cell runs on
            whichever path serves bf16, and the outputs and final state are cast back to the
            input's dtype. On CPUs without AVX512-bf16/AMX bf16 is emulated (no faster than
            float32), and rnnkit says so once; ``explain`` names the precision and path.

    Call: ``outputs, final_state = layer(inputs, state=None, lengths=None, mask=None)`` with
    ``inputs`` ``(T, B, H_in)`` (or ``(B, T, H_in)``, an unbatched ``(T, H_in)``, or a
    PackedSequence, returned in the same form); ``outputs`` is zero at padded steps and
    ``final_state`` is each sequence's state at its own last step. ``mask`` is Keras' bool
    ``(B, T)`` (batch-first whatever ``batch_first``), True at the steps to run, in any
    pattern: a masked step leaves the state unchanged. A mask that marks a prefix of each
    row runs as ``lengths`` (every engine path); one with gaps runs on the loop path.

    Example:
        >>> import torch
        >>> from rnnkit.cells import LSTMCell
        >>> layer = Recurrence(LSTMCell(3, 4), initial_state=0.1, batch_first=True)
        >>> out, (h, c) = layer(torch.randn(2, 5, 3), lengths=torch.tensor([5, 3]))
        >>> out.shape, h.shape, torch.equal(out[1, 2], h[1])
        (torch.Size([2, 5, 4]), torch.Size([2, 4]), True)
    """

    def __init__(
        self,
        cell: nn.Module,
        go_backwards: bool = False,
        initial_state: float | Tensor | Sequence[Tensor] | None = None,
        return_full_state: bool = False,
        learnable_initial_state: bool = False,
        batch_first: bool = False,
        stateful: bool = False,
        engine: str = "auto",
        zero_output_for_mask: bool = True,
        output_order: str = "time",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if not isinstance(cell, nn.Module) or not callable(cell):
            raise TypeError(f"cell must be an nn.Module, got {type(cell).__name__}")
        try:
            dispatch.check_cell_engine(engine, cell)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None
        if output_order not in OUTPUT_ORDERS:
            raise ValueError(f"{type(self).__name__}: output_order must be one of "
                             f"{OUTPUT_ORDERS}, got {output_order!r}")
        self.cell = cell
        self.precision = fused.check_precision(type(self).__name__, precision)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.output_order = output_order
        self.go_backwards = bool(go_backwards)
        self.return_full_state = bool(return_full_state)
        self.batch_first = bool(batch_first)
        self.stateful = bool(stateful)
        self.engine = engine
        self.learnable_initial_state = bool(learnable_initial_state)
        self._constant: float | None = None
        fixed: State | None = None
        if isinstance(initial_state, (int, float)) and not isinstance(initial_state, bool):
            self._constant = float(initial_state)
        elif isinstance(initial_state, Tensor) or isinstance(initial_state, (tuple, list)):
            fixed = initial_state if isinstance(initial_state, Tensor) else tuple(initial_state)
            _check_initial_state(type(self).__name__, cell, fixed)
        elif initial_state is not None:
            raise TypeError(
                "initial_state must be None, a number, a tensor or a tuple of tensors, got "
                f"{type(initial_state).__name__}"
            )
        # A fixed initial state lives in buffers, so .to()/.double() move it and the
        # state_dict saves it.
        self._fixed_count = 0
        if fixed is not None and not self.learnable_initial_state:
            parts = state_leaves(fixed)
            self._fixed_count = len(parts)
            for index, part in enumerate(parts):
                self.register_buffer(f"fixed_initial_state_{index}", part.detach().clone())
        if self.learnable_initial_state:
            sizes = state_leaves(state_sizes(cell))  # nested for a MultiCell: one per tensor
            start = self._constant or 0.0
            params = []
            for index, s in enumerate(sizes):
                value = torch.full((s,), start)
                if fixed is not None:
                    part = state_leaves(fixed)[index]
                    if part.dim() != 1:
                        raise ValueError(
                            f"{type(self).__name__}: learnable_initial_state=True starts from "
                            f"one state shared by all sequences, so initial_state must be "
                            f"({s},), got shape {tuple(part.shape)}"
                        )
                    value = part.detach().clone()
                params.append(nn.Parameter(value))
            self.initial_states = nn.ParameterList(params)
        self._state_store = StateStore(self, type(self).__name__, batch_dim=0)

    def initial(self, batch_size: int, like: Tensor) -> State:
        """The state a sequence starts from when none is passed."""
        like = state_like(self.cell, like)
        if self.learnable_initial_state:
            parts = [p.to(like.dtype)[None, :].expand(batch_size, -1) for p in self.initial_states]
            return nest_like(parts, state_sizes(self.cell))
        if self._fixed_count:
            parts = [getattr(self, f"fixed_initial_state_{i}") for i in range(self._fixed_count)]
            parts = [t.to(device=like.device, dtype=like.dtype) for t in parts]
            parts = [t.expand(batch_size, -1) if t.dim() == 1 else t for t in parts]
            return nest_like(parts, state_sizes(self.cell))
        state = zero_state(self.cell, batch_size, like.device, like.dtype)
        if self._constant:
            state = map_state(lambda t: torch.full_like(t, self._constant), state)
        return state

    # Constructor options and their defaults: repr shows the ones a module changed.
    _REPR_DEFAULTS = {"go_backwards": False, "return_full_state": False,
                      "learnable_initial_state": False, "batch_first": False,
                      "stateful": False, "engine": "auto", "zero_output_for_mask": True,
                      "output_order": "time", "precision": "fp32"}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}"
                         for name, default in self._REPR_DEFAULTS.items()
                         if getattr(self, name) != default)

    def step_cell(self) -> nn.Module:
        """The cell this recurrence runs at each step (with ``return_full_state``, the
        wrapper that outputs the whole state)."""
        return _FullStateCell(self.cell) if self.return_full_state else self.cell

    def _plan(self, inputs: Tensor, lengths: Tensor | None, describe: bool,
              mask: Tensor | None = None, precision: str = "fp32") -> Plan:
        dispatch.check_cell_input(self.cell, inputs, type(self).__name__)
        label = "backward" if self.go_backwards else "forward"
        run = dispatch.plan_cell(self.step_cell(), inputs, self.engine, label, mask=mask,
                                 precision=precision)
        if not describe:
            return Plan("", "", "cells", "", runs=[run])
        return Plan(dispatch.module_line(self), dispatch.describe_input(inputs, lengths,
                                                                        mask=mask),
                    "cells", "", runs=[run])

    def execution_plan(self, inputs: Tensor | PackedSequence,
                       lengths: Tensor | Sequence[int] | None = None,
                       mask: Tensor | None = None) -> Plan:
        """The plan ``self(inputs, lengths=lengths, mask=mask)`` executes (what ``explain``
        prints), after the same input checks as the call."""
        padded, lengths, _, _, gaps = self._normalise(inputs, lengths, mask)
        if self._in_bf16(padded):
            plan = self._plan(padded, lengths, describe=True, mask=gaps, precision="bf16")
            if plan.runs[0].precision == "bf16":
                plan.notes.append("  precision: bf16 GEMMs on the compiled kernels (inputs, "
                                  "state, outputs and gradients stay float32)")
            else:
                with self._bf16_cell():
                    plan = self._plan(padded.to(torch.bfloat16), lengths, describe=True,
                                      mask=gaps)
                plan.input_line = dispatch.describe_input(padded, lengths, mask=gaps)
                plan.notes.append("  precision: bf16 (inputs, state and the cell's weights "
                                  "cast to bfloat16; outputs and state cast back)")
        else:
            plan = self._plan(padded, lengths, describe=True, mask=gaps)
        return dispatch.mask_plan_input(plan, mask, gaps)

    def _in_bf16(self, inputs: Tensor) -> bool:
        """Whether this call runs in bfloat16 (``precision="bf16"`` or the context)."""
        return (fused.current_precision(self) == "bf16" and inputs.is_floating_point()
                and inputs.dtype != torch.bfloat16)

    @contextlib.contextmanager
    def _bf16_cell(self) -> Iterator[None]:
        """The cell's floating parameters and buffers as bfloat16 casts (autograd flows
        through the casts to the originals) for the duration of a call."""
        from torch.nn.utils.stateless import _reparametrize_module  # what functional_call uses

        casts = {name: t.to(torch.bfloat16) if t.is_floating_point() else t
                 for name, t in [*self.cell.named_parameters(), *self.cell.named_buffers()]}
        with _reparametrize_module(self.cell, casts):
            yield

    def _run_bf16(self, inputs: Tensor, state: State | None, lengths: Tensor | None,
                  mask: Tensor | None) -> tuple[Any, State]:
        """:meth:`run` in bfloat16, results cast back to the input's dtype."""
        if inputs.device.type == "cpu":
            fused.notice_emulated_bf16()
        dtype = inputs.dtype
        if state is not None:
            state = map_state(lambda t: t.to(torch.bfloat16), state)
        with self._bf16_cell():
            outputs, final = self._run(inputs.to(torch.bfloat16), state, lengths, mask)
        back = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
        return map_state(back, outputs), map_state(back, final)

    @property
    def processing_order(self) -> bool:
        """Whether ``forward`` returns outputs reversed in time (Keras' ``go_backwards``)."""
        return self.go_backwards and self.output_order == "processing"

    def run(
        self, inputs: Tensor, state: State | None, lengths: Tensor | None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor | tuple[Tensor, ...], State]:
        """The time-major core: ``inputs (T, B, H_in)`` -> ``(outputs (T, B, ...), state)``.

        ``mask`` is time-major ``(T, B)`` (a mask with gaps); outputs are at their original
        time positions whatever ``output_order``.
        """
        if self._in_bf16(inputs):
            # the compiled kernels' bf16 GEMMs on the float32 cell where they serve it,
            # else the whole cell cast to bfloat16 on whichever path serves that
            plan = self._plan(inputs, lengths, describe=False, mask=mask, precision="bf16")
            if plan.runs[0].precision == "bf16":
                return self._run(inputs, state, lengths, mask, plan)
            return self._run_bf16(inputs, state, lengths, mask)
        return self._run(inputs, state, lengths, mask)

    def _run(
        self, inputs: Tensor, state: State | None, lengths: Tensor | None,
        mask: Tensor | None = None, plan: Plan | None = None,
    ) -> tuple[Tensor | tuple[Tensor, ...], State]:
        if plan is None:
            plan = self._plan(inputs, lengths, describe=False, mask=mask)
        batch_size = inputs.shape[1]
        name = type(self).__name__
        if state is not None:
            check_state(name, self.cell, state, batch_size, inputs)
        elif self.stateful:
            state, carried = self._state_store.get(
                batch_size, lambda: self.initial(batch_size, inputs))
            if carried:
                check_state(name, self.cell, state, batch_size, inputs,
                            self._state_store.describe())
        else:
            state = self.initial(batch_size, inputs)
        reset_dropout_masks(self.cell)
        outputs, final = dispatch.run_cell(plan.runs[0], inputs, state, lengths,
                                           reverse=self.go_backwards, mask=mask)
        if not self.zero_output_for_mask:
            valid = valid_steps(inputs.shape[0], batch_size, lengths, mask, inputs.device)
            if valid is not None:
                outputs = carry_last_valid(outputs, valid, reverse=self.go_backwards)
        if self.stateful:
            self._state_store.put(final)
        if self.return_full_state:
            size = state_sizes(self.cell)
            if isinstance(size, tuple):  # each (T, B, S_i), nested as the state is
                outputs = nest_like(list(outputs.split(state_leaves(size), dim=-1)), size)
        return outputs, final

    def _normalise(
        self, inputs: Tensor | PackedSequence, lengths: Any, mask: Any = None
    ) -> tuple[Tensor, Tensor | None, Any, bool, Tensor | None]:
        name = type(self).__name__
        unbatched = isinstance(inputs, Tensor) and inputs.dim() == 2
        if unbatched:
            inputs = inputs.unsqueeze(1)  # (T, 1, H_in)
            if lengths is not None:
                lengths = unbatched_lengths(lengths, f"{type(self).__name__} input")
            if isinstance(mask, Tensor) and mask.dim() == 1:
                mask = mask[None, :]  # (1, T)
        batch_first = self.batch_first and not unbatched
        padded, lengths, info, gaps = normalise_with_mask(name, inputs, batch_first, lengths,
                                                          mask)
        return padded, lengths, info, unbatched, gaps

    def _call(
        self, inputs: Tensor | PackedSequence, state: State | None, lengths: Any,
        mask: Any = None,
    ) -> tuple[Tensor, Tensor | None, Any, bool, Any, State, Tensor | None]:
        """Normalise a call's input (and an unbatched state) and run it, time-major."""
        padded, lengths, info, unbatched, gaps = self._normalise(inputs, lengths, mask)
        if self.processing_order and info is not None:
            raise ValueError(
                f"{type(self).__name__}: output_order='processing' returns outputs reversed "
                "in time, which a PackedSequence cannot hold; pass a padded tensor with "
                "lengths= or mask="
            )
        if unbatched and state is not None:
            state = map_state(lambda t: t.unsqueeze(0), state)
        outputs, final = self.run(padded, state, lengths, gaps)
        return padded, lengths, info, unbatched, outputs, final, gaps

    @outside_autocast
    def forward(
        self,
        inputs: Tensor | PackedSequence,
        state: State | None = None,
        lengths: Tensor | Sequence[int] | None = None,
        mask: Tensor | None = None,
    ) -> DriverOutput:
        padded, lengths, info, unbatched, outputs, final, gaps = self._call(
            inputs, state, lengths, mask
        )
        if unbatched:
            final = map_state(lambda t: t.squeeze(0), final)
        return DriverOutput(self._output(outputs, padded, lengths, info, unbatched, gaps), final)

    def _output(self, outputs: Any, padded: Tensor, lengths: Tensor | None, info: Any,
                unbatched: bool, gaps: Tensor | None = None) -> Any:
        """What the call returns as ``output``: every step, in the caller's layout."""
        batch_first = self.batch_first and not unbatched
        reverse_time = self.processing_order

        def convert(sequence: Tensor) -> Tensor | PackedSequence:
            if reverse_time:
                sequence = sequence.flip(0)  # (T, B, ...) in processing order
            converted = from_time_major(sequence, batch_first, lengths, info)
            return converted.squeeze(1) if unbatched else converted

        return map_state(convert, outputs)


def _check_initial_state(owner: str, cell: nn.Module, fixed: State) -> None:
    """A fixed ``initial_state`` matches the cell's ``state_size``: each part ``(S_i,)`` or
    ``(B, S_i)``."""
    size = state_sizes(cell)
    multi = isinstance(size, tuple)
    if multi and not all(isinstance(s, int) for s in size):
        return  # nested states (stacks of cells) are checked by the cells
    sizes = size if multi else (size,)
    parts = fixed if isinstance(fixed, tuple) else (fixed,)
    if multi != isinstance(fixed, tuple) or len(parts) != len(sizes):
        want = f"a tuple of {len(sizes)} tensors" if multi else "one tensor"
        got = f"a tuple of {len(parts)}" if isinstance(fixed, tuple) else "one tensor"
        raise ValueError(f"{owner}: initial_state must be {want} for {type(cell).__name__} "
                         f"(state_size={size}), got {got}")
    for index, (part, s) in enumerate(zip(parts, sizes, strict=True)):
        label = f"initial_state[{index}]" if multi else "initial_state"
        if not isinstance(part, Tensor):
            raise TypeError(f"{owner}: {label} must be a Tensor, got {type(part).__name__}")
        if part.dim() not in (1, 2) or part.shape[-1] != s:
            raise ValueError(
                f"{owner}: {label} must be ({s},) or (batch, {s}) for {type(cell).__name__} "
                f"(state_size={size}), got shape {tuple(part.shape)}"
            )


class Fold(Recurrence):
    """Run ``cell`` over a sequence; return only the last output and the final state.

    The last output is each sequence's output at its own last processed step: step
    ``lengths[b] - 1``, or step 0 with ``go_backwards``; under a ``mask`` the last (with
    ``go_backwards`` the first) valid step, zeros for a sequence with none. Arguments as
    :class:`Recurrence`; with ``return_full_state`` the "output" is the final state itself.

    Call: ``last_output (B, H_out), final_state = fold(inputs, state=None, lengths=None,
    mask=None)``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> fold = Fold(GRUCell(3, 4))
        >>> last, h = fold(torch.randn(6, 2, 3), lengths=[6, 2])
        >>> last.shape, torch.equal(last, h)
        (torch.Size([2, 4]), True)
    """

    def _output(self, outputs: Any, padded: Tensor, lengths: Tensor | None, info: Any,
                unbatched: bool, gaps: Tensor | None = None) -> Any:
        """Each sequence's output at its own last processed step, ``(B, H_out)``; under a
        mask with gaps ``gaps`` (T, B) its last valid step, zeros for a sequence with none."""
        found = None
        if gaps is not None:
            steps, found = last_valid_steps(gaps, reverse=self.go_backwards)
        else:
            steps = last_steps(lengths, padded.shape[0], padded.shape[1], padded.device,
                               backwards=self.go_backwards)  # (B,)
        last = map_state(lambda sequence: gather_steps(sequence, steps), outputs)  # (B, H_out)
        if found is not None:
            last = map_state(lambda t: torch.where(found[:, None], t, 0.0), last)
        return map_state(lambda t: t.squeeze(0), last) if unbatched else last


class Unfolded(NamedTuple):
    """What :class:`UnfoldFrom` returns: the drivers' ``(output, state)`` and ``lengths``."""

    output: Tensor  # (T, B, H_in) or (B, T, H_in): each step's fed-back value, zero-padded
    state: State  # each sequence's state at its own last generated step
    lengths: Tensor  # (B,) int64: generated steps per sequence (the stopping step included)


class UnfoldFrom(Configurable, nn.Module):
    """Generate a sequence from a state by feeding each output back in (one-to-many).

    .. math::

        o_t, s_t = \\mathrm{cell}(x_t, s_{t-1}), \\qquad y_t = \\mathrm{head}(o_t),
        \\qquad x_{t+1} = y_t

    Generation stops at ``max_length`` steps, or earlier once ``until(y_t)`` has been True for
    every sequence. A sequence whose ``until`` fired keeps its state and gets zero outputs
    from then on (the step where it fired is part of it, like an end-of-sequence token), so
    the result has the same masking rules as :class:`Recurrence` with ``lengths``.

    Args:
        cell: any module with the cell contract.
        head: maps the cell output ``(B, H_out)`` to the next input ``(B, H_in)`` (e.g. a
            linear layer, or logits -> argmax -> embedding). None: the identity.
        until: ``(B, H_in) -> (B,)`` bool, True where a sequence has ended. None: never.
        max_length: the longest sequence to generate (may also be passed to forward).
        batch_first: return outputs as ``(B, T, H_in)``.

    Call: ``outputs, final_state, lengths = unfold(start, state=None, max_length=None,
    lengths=None)`` where ``start (B, H_in)`` is the first input and ``lengths`` optionally caps
    each sequence's length.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> gen = UnfoldFrom(GRUCell(4, 4), head=torch.nn.Tanh(),
        ...                  until=lambda y: y[:, 0] > 0.5, max_length=10)
        >>> out, h, lengths = gen(torch.zeros(3, 4))
        >>> out.shape[1:], bool((lengths <= 10).all())
        (torch.Size([3, 4]), True)
    """

    def __init__(
        self,
        cell: nn.Module,
        head: Callable[[Tensor], Tensor] | None = None,
        until: Callable[[Tensor], Tensor] | None = None,
        max_length: int | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.head = head if head is not None else nn.Identity()
        self.until = until
        if max_length is not None:
            _check_max_length(max_length)
        self.max_length = max_length
        self.batch_first = bool(batch_first)

    @outside_autocast
    def forward(
        self,
        start: Tensor,
        state: State | None = None,
        max_length: int | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> Unfolded:
        if not isinstance(start, Tensor) or start.dim() != 2:
            shape = tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__
            raise ValueError(f"UnfoldFrom: start must be (batch, input_size), got {shape}")
        max_length = max_length if max_length is not None else self.max_length
        if max_length is None:
            raise ValueError("UnfoldFrom: max_length is needed (constructor or forward)")
        _check_max_length(max_length)
        batch_size = start.shape[0]
        if lengths is not None:
            caps = check_lengths(lengths, batch_size, max_length, start.device)
            max_length = int(caps.max())
        else:
            caps = torch.full((batch_size,), max_length, dtype=torch.int64, device=start.device)
        if state is None:
            like = state_like(self.cell, start)
            state = zero_state(self.cell, batch_size, like.device, like.dtype)
        reset_dropout_masks(self.cell)
        running = torch.ones(batch_size, dtype=torch.bool, device=start.device)  # (B,)
        produced = torch.zeros(batch_size, dtype=torch.int64, device=start.device)
        outputs: list[Tensor] = []
        x = start  # (B, H_in)
        for t in range(max_length):
            running = running & (caps > t)
            if t > 0 and not bool(running.any()):
                break
            keep = running[:, None]  # (B, 1)
            out, new_state = first_step(self.cell, x, state) if t == 0 else self.cell(x, state)
            y = self.head(out)  # (B, H_in)
            state = map_state(
                lambda new, old, keep=keep: torch.where(keep, new, old), new_state, state
            )
            outputs.append(torch.where(keep, y, 0.0))
            produced = produced + running.long()
            if self.until is not None:
                stop = self.until(y)
                if not isinstance(stop, Tensor) or stop.shape != (batch_size,):
                    raise ValueError(
                        "UnfoldFrom: until(output) must return a bool tensor of shape "
                        f"({batch_size},), got "
                        + (str(tuple(stop.shape)) if isinstance(stop, Tensor) else repr(stop))
                    )
                running = running & ~stop.to(torch.bool)
            x = y
        sequence = torch.stack(outputs)  # (T, B, H_in)
        if self.batch_first:
            sequence = sequence.transpose(0, 1)
        return Unfolded(sequence, state, produced)


def _check_max_length(max_length: object) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"UnfoldFrom: max_length must be a positive int, got {max_length!r}")
