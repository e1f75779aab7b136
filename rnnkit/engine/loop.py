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


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` leaf-wise to one or more states of the same structure (tensor or tuples)."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    if isinstance(first, (tuple, list)):
        return type(first)(map_state(fn, *parts) for parts in zip(*states, strict=True))
    raise TypeError(f"state must be a Tensor or a tuple of Tensors, got {type(first).__name__}")


def check_lengths(
    lengths: Tensor | Sequence[int],
    batch_size: int,
    max_time: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Validate per-sequence ``lengths`` and return them as int64 ``(B,)`` on ``device``.

    Args:
        lengths: one length per sequence, a 1-D integer tensor or a list of ints.
        batch_size: ``B``, the number of sequences in the batch.
        max_time: ``T``, the padded length; every length must be in ``[1, T]``.
        device: the inputs' device; lengths may live there or on the CPU.

    Raises:
        TypeError: lengths are not integers.
        ValueError: wrong shape, a length outside ``[1, T]``, or lengths on another device.
    """
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(list(lengths), dtype=torch.int64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"lengths must be a 1-D integer tensor or a list of ints, got {lengths!r}"
            ) from error
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch_size:
        raise ValueError(
            f"lengths must have shape (batch,) = ({batch_size},), got {tuple(lengths.shape)}"
        )
    if device is not None:
        device = torch.device(device)
        if lengths.device.type != "cpu" and lengths.device != device:
            where = "the CPU" if device.type == "cpu" else f"the CPU or on {device}"
            raise ValueError(
                f"lengths are on device {lengths.device} but the input is on {device}; "
                f"put lengths on {where}"
            )
    if lengths.numel() > 0:
        low = int(lengths.min())
        if low < 1:
            index = int(torch.argmin(lengths))
            raise ValueError(
                f"lengths must be >= 1 (empty sequences are not supported); "
                f"got lengths[{index}] = {low}"
            )
        high = int(lengths.max())
        if high > max_time:
            index = int(torch.argmax(lengths))
            raise ValueError(
                f"lengths[{index}] = {high} is longer than the sequence (T = {max_time} steps)"
            )
    return lengths.to(device=device, dtype=torch.int64)


def run_recurrence(
    cell: nn.Module,
    inputs: Tensor,
    state: State,
    lengths: Tensor | Sequence[int] | None = None,
    reverse: bool = False,
) -> tuple[Tensor, State]:
    """Run ``cell`` step by step over ``inputs``; return ``(outputs, final_state)``.

    Args:
        cell: any module with ``output, new_state = cell(x, state)``.
        inputs: ``(T, B, H_in)`` time-major.
        state: the initial state, a ``(B, H)`` tensor or a tuple of them.
        lengths: ``(B,)`` valid steps per sequence, or None when every sequence has ``T``.
        reverse: read each sequence from its own last valid step back to step 0.

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
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"run_recurrence: inputs must be (T, B, H_in), got {shape}")
    time_steps, batch_size = inputs.shape[0], inputs.shape[1]
    if time_steps < 1:
        raise ValueError("run_recurrence: the sequence is empty (T = 0)")
    steps = inputs.unbind(0)  # T x (B, H_in)
    outputs: list[Tensor | None] = [None] * time_steps

    if lengths is None:
        order = range(time_steps - 1, -1, -1) if reverse else range(time_steps)
        for t in order:
            outputs[t], state = cell(steps[t], state)
        return torch.stack(outputs), state  # type: ignore[arg-type]  # (T, B, H_out)

    lengths = check_lengths(lengths, batch_size, time_steps, inputs.device)
    max_len, min_len = int(lengths.max()), int(lengths.min())
    valid = torch.arange(max_len, device=inputs.device)[:, None] < lengths[None, :]  # (T', B)
    valid_steps = valid.unsqueeze(-1).unbind(0)  # T' x (B, 1)
    order = range(max_len - 1, -1, -1) if reverse else range(max_len)
    for t in order:
        if t < min_len:
            # Every sequence is still running: no masking needed.
            outputs[t], state = cell(steps[t], state)
            continue
        keep = valid_steps[t]  # (B, 1)
        # Zero padded inputs so garbage there (inf, nan) cannot leak through 0 * nan.
        out, new_state = cell(torch.where(keep, steps[t], 0.0), state)
        state = map_state(lambda new, old, keep=keep: torch.where(keep, new, old), new_state, state)
        outputs[t] = torch.where(keep, out, 0.0)  # (B, H_out)
    if max_len < time_steps:
        zeros = torch.zeros_like(outputs[0])  # (B, H_out)
        for t in range(max_len, time_steps):
            outputs[t] = zeros
    return torch.stack(outputs), state  # type: ignore[arg-type]  # (T, B, H_out)
