"""The eager time loop: the path every recurrence can always take.

``run_recurrence`` steps a cell over a time-major sequence in a Python loop. It is the
reference semantics the faster engines must reproduce (see ``docs/design.md``).

Symbols: ``T`` time steps, ``B`` batch size, ``H_in`` input features, ``H_out`` the cell's
``output_size``.

Masking with ``lengths`` (sequence ``b`` is valid at steps ``0 <= t < lengths[b]``):

.. math::

    s_t = m_t \\odot f(x_t, s_{t-1}) + (1 - m_t) \\odot s_{t-1}, \\qquad
    y_t = m_t \\odot \\mathrm{out}(x_t, s_{t-1})

so padded steps never change the state, outputs there are zero, and the state after the loop
is each sequence's state at its own last valid step. Going backwards the loop runs from
``t = max(lengths) - 1`` down to 0 with the same masks: a sequence's state stays at its
initial value until ``t = lengths[b] - 1``, so it is read from its own last valid step, and
outputs are written at their original time positions.

The inputs are split with :func:`torch.unbind` rather than indexed step by step: indexing
makes autograd allocate a full-size zero gradient per step (O(T^2) memory traffic in
backward); ``unbind`` has a single O(T) backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.engine.lengths import check_lengths, check_steps
from rnnkit.engine.scan import exporting, run_scan

__all__ = ["check_lengths", "map_state", "run_recurrence"]


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` leaf-wise to one or more states of the same structure (tensor or tuples)."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    if isinstance(first, (tuple, list)):
        return type(first)(map_state(fn, *parts) for parts in zip(*states, strict=True))
    raise TypeError(f"state must be a Tensor or a tuple of Tensors, got {type(first).__name__}")


def check_mask(mask: object, max_time: int, batch_size: int,
               device: torch.device | str | None = None) -> Tensor:
    """Validate a time-major step mask ``(T, B)`` (True at steps that run) and return it.

    Raises:
        TypeError: not a bool tensor.
        ValueError: wrong shape, or on another device than the input.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = f"a tensor of dtype {mask.dtype}" if isinstance(mask, Tensor) else \
            type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True at valid steps), got {kind}")
    if tuple(mask.shape) != (max_time, batch_size):
        raise ValueError(
            f"the engine's mask must be time-major (T, B) = ({max_time}, {batch_size}), got "
            f"{tuple(mask.shape)}"
        )
    if device is not None:
        device = torch.device(device)
        if mask.device.type != "cpu" and mask.device != device:
            raise ValueError(f"mask is on device {mask.device} but the input is on {device}")
    return mask.to(device)


def mask_to_lengths(
    mask: object, batch_size: int, max_time: int, device: torch.device | str | None = None,
    *, name: str = "mask",
) -> tuple[Tensor | None, Tensor | None]:
    """A Keras step mask ``(B, T)`` as ``(lengths, None)`` or ``(None, time_major_mask)``.

    ``mask`` is batch-first whatever the layer's ``batch_first`` (Keras' layout), True at the
    steps to run. When every row marks a non-empty prefix (``[T, T, T, F]``) it becomes
    ``lengths (B,)``, the fast form every engine path takes; otherwise (gaps such as
    ``[T, T, F, T]``, a row with no valid step) the mask itself comes back time-major
    ``(T, B)`` for the loop path.

    Example:
        >>> import torch
        >>> mask_to_lengths(torch.tensor([[True, True, False], [True, False, False]]), 2, 3)
        (tensor([2, 1]), None)
        >>> mask_to_lengths(torch.tensor([[True, False, True]]), 1, 3)[1].T.tolist()
        [[True, False, True]]
    """
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a bool tensor (batch, time), got "
                            f"{type(mask).__name__}") from error
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor (True at valid steps), got dtype {mask.dtype}; "
            "convert it with mask.bool()"
        )
    if tuple(mask.shape) != (batch_size, max_time):
        raise ValueError(
            f"{name} must have shape (batch, time) = ({batch_size}, {max_time}) (batch-first "
            f"as in Keras, whatever the layer's batch_first), got {tuple(mask.shape)}"
        )
    if device is not None:
        device = torch.device(device)
        if mask.device.type != "cpu" and mask.device != device:
            raise ValueError(f"{name} is on device {mask.device} but the input is on {device}")
        mask = mask.to(device)
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(max_time, device=mask.device)[None, :] < lengths[:, None]  # (B, T)
    if torch.equal(prefix, mask) and (lengths.numel() == 0 or int(lengths.min()) >= 1):
        return lengths.to(torch.int64), None
    return None, mask.T  # (T, B)


def _shapes(state: State) -> object:
    if isinstance(state, Tensor):
        return tuple(state.shape)
    if isinstance(state, (tuple, list)):
        return tuple(_shapes(part) for part in state)
    return type(state).__name__


def first_step(cell: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
    """``cell(x, state)`` for the first step of a sequence, checked: a cell that fails on the
    state its ``state_size`` describes, or returns a state of another structure or size,
    gets an error naming the cell (instead of torch's shape error a step later)."""
    given = f"a state of shape {_shapes(state)} (state_size={getattr(cell, 'state_size', '?')})"
    plain = (RuntimeError, TypeError, ValueError, IndexError, AttributeError)
    try:
        out, new_state = cell(x, state)
    except plain as error:
        if type(error) not in plain:
            raise  # a subclass may need other constructor arguments: pass it on unchanged
        message = (f"{type(cell).__name__} failed on the first step, called with x "
                   f"{tuple(x.shape)} and {given}; check that state_size describes the state "
                   f"the cell uses. The cell said: {error}")
        raise type(error)(message) from error
    if _shapes(new_state) != _shapes(state):
        message = (f"{type(cell).__name__} returned a state of shape {_shapes(new_state)} from "
                   f"{given}; a cell must return its new state in the same structure and "
                   f"size, as its state_size says")
        raise ValueError(message)
    return out, new_state


def _checking_first_step(cell: nn.Module) -> Callable[[Tensor, State], tuple[Tensor, State]]:
    """``cell`` as a callable whose first call goes through :func:`first_step`."""
    pending = [True]

    def step(x: Tensor, state: State) -> tuple[Tensor, State]:
        if pending[0]:
            pending[0] = False
            return first_step(cell, x, state)
        return cell(x, state)

    return step


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: State,
    lengths: Tensor | Sequence[int] | None = None,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` step by step over ``inputs``; return ``(outputs, final_state)``.

    Args:
        cell: any module with ``output, new_state = cell(x, state)``.
        inputs: ``(T, B, H_in)`` time-major.
        state: the initial state, a ``(B, H)`` tensor or a tuple of them.
        lengths: ``(B,)`` valid steps per sequence, or None when every sequence has ``T``.
        reverse: read each sequence from its own last valid step back to step 0.
        mask: ``(T, B)`` bool, True at the steps that run, in any pattern (Keras' masks
            with gaps, ``[T, T, F, T]``); a masked step leaves the state unchanged and
            outputs zeros there. Exclusive with ``lengths``, which is the fast form of a
            mask that marks a prefix.

    Returns:
        ``outputs (T, B, H_out)`` at the original time positions (zero at padded steps) and
        each sequence's state at its own last processed step.

    Example:
        >>> import torch
        >>> cell = torch.nn.GRUCell(3, 4)
        >>> class Wrap(torch.nn.Module):
        ...     def forward(self, x, h):
        ...         h = cell(x, h)
        ...         return h, h
        >>> out, h = run_recurrence(Wrap(), torch.randn(5, 2, 3), torch.zeros(2, 4),
        ...                         lengths=torch.tensor([5, 3]))
        >>> out.shape, bool(out[3:, 1].eq(0).all())
        (torch.Size([5, 2, 4]), True)
    """
    cell_step = _checking_first_step(cell)
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"run_recurrence: inputs must be (T, B, H_in), got {shape}")
    time_steps, batch_size = inputs.shape[0], inputs.shape[1]
    check_steps(time_steps, "run_recurrence")
    if exporting():  # torch.export: the same loop as one scan (any T, lengths as an input)
        if mask is not None and lengths is not None:
            raise ValueError("run_recurrence: pass lengths or mask, not both")
        if lengths is not None:
            lengths = check_lengths(lengths, batch_size, time_steps, inputs.device)
        if mask is not None:
            mask = check_mask(mask, time_steps, batch_size, inputs.device)
        return run_scan(cell, inputs, state, lengths, reverse, mask)
    steps = inputs.unbind(0)  # T x (B, H_in)
    outputs: list[Tensor | None] = [None] * time_steps

    if mask is not None:
        if lengths is not None:
            raise ValueError("run_recurrence: pass lengths or mask, not both")
        return _run_masked(cell, steps, state, check_mask(mask, time_steps, batch_size,
                                                          inputs.device), reverse)
    if lengths is None:
        order = range(time_steps - 1, -1, -1) if reverse else range(time_steps)
        for t in order:
            outputs[t], state = cell_step(steps[t], state)
        return torch.stack(outputs), state  # type: ignore[arg-type]  # (T, B, H_out)

    lengths = check_lengths(lengths, batch_size, time_steps, inputs.device)
    max_len, min_len = int(lengths.max()), int(lengths.min())
    valid = torch.arange(max_len, device=inputs.device)[:, None] < lengths[None, :]  # (T', B)
    valid_steps = valid.unsqueeze(-1).unbind(0)  # T' x (B, 1)
    order = range(max_len - 1, -1, -1) if reverse else range(max_len)
    for t in order:
        if t < min_len:
            # Every sequence is still running: no masking needed.
            outputs[t], state = cell_step(steps[t], state)
            continue
        keep = valid_steps[t]  # (B, 1)
        # Zero padded inputs so garbage there (inf, nan) cannot leak through 0 * nan.
        out, new_state = cell_step(torch.where(keep, steps[t], 0), state)  # ids stay ints
        state = map_state(lambda new, old, keep=keep: torch.where(keep, new, old), new_state, state)
        outputs[t] = torch.where(keep, out, 0.0)  # (B, H_out)
    if max_len < time_steps:
        zeros = torch.zeros_like(outputs[0])  # (B, H_out)
        for t in range(max_len, time_steps):
            outputs[t] = zeros
    return torch.stack(outputs), state  # type: ignore[arg-type]  # (T, B, H_out)


def _run_masked(cell: nn.Module, steps: Sequence[Tensor], state: State, mask: Tensor,
                reverse: bool) -> tuple[Tensor, State]:
    """The loop under an arbitrary step mask ``(T, B)``: masked steps hold the state."""
    cell_step = _checking_first_step(cell)
    time_steps = len(steps)
    every = mask.all(dim=1).tolist()  # per step: no sequence is masked (no where needed)
    keeps = mask.unsqueeze(-1).unbind(0)  # T x (B, 1)
    outputs: list[Tensor | None] = [None] * time_steps
    order = range(time_steps - 1, -1, -1) if reverse else range(time_steps)
    for t in order:
        if every[t]:
            outputs[t], state = cell_step(steps[t], state)
            continue
        keep = keeps[t]  # (B, 1)
        # Zero masked inputs so garbage there (inf, nan) cannot leak through 0 * nan.
        out, new_state = cell_step(torch.where(keep, steps[t], 0), state)  # ids stay ints
        state = map_state(lambda new, old, keep=keep: torch.where(keep, new, old), new_state, state)
        outputs[t] = torch.where(keep, out, 0.0)  # (B, H_out)
    return torch.stack(outputs), state  # type: ignore[arg-type]  # (T, B, H_out)
