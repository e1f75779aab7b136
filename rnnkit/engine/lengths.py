"""The one rule for sequence lengths, checked in one place for every path.

Every driver and every engine path (``fused``, ``compiled``, ``loop``) runs these checks
before any computation, so a bad ``lengths`` gets the same error whichever path would run:

* a sequence has ``T >= 1`` steps: an empty input (``T = 0``) is an error, as in
  ``torch.nn`` ("Expected sequence length to be larger than 0");
* ``lengths`` holds one integer per sequence, each in ``[1, T]`` (``torch.nn``'s
  ``pack_padded_sequence`` also refuses a length of 0): a list of floats such as
  ``[5, 2.9]`` is refused, never truncated;
* ``lengths`` live on the CPU or on the input's device;
* an empty batch (``B = 0``) is accepted, as ``torch.nn`` accepts it.

Symbols: ``T`` padded length, ``B`` batch size.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from rnnkit.errors import DeviceError, ShapeError

__all__ = [
    "check_lengths",
    "check_steps",
    "last_steps",
    "reverse_index",
    "reverse_within_lengths",
    "unbatched_lengths",
]


def check_steps(steps: int, name: str = "input") -> None:
    """Raise the one error for an empty sequence (``T = 0``)."""
    if steps < 1:
        raise ShapeError(
            f"{name}: the sequence is empty (T = 0 time steps); a recurrence needs at least "
            f"one step (torch.nn: Expected sequence length to be larger than 0 in RNN)"
        )


def _as_tensor(lengths: Tensor | Sequence[int]) -> Tensor:
    if isinstance(lengths, Tensor):
        return lengths
    try:
        values = list(lengths)
    except TypeError as error:
        raise TypeError(
            f"lengths must be a 1-D integer tensor or a list of ints, got "
            f"{type(lengths).__name__}"
        ) from error
    for index, value in enumerate(values):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"lengths must hold integers, got lengths[{index}] = {value!r} "
                f"({type(value).__name__})"
            )
    return torch.as_tensor([int(v) for v in values], dtype=torch.int64)


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
        ValueError: wrong shape; :class:`~rnnkit.errors.ShapeError` (also a RuntimeError, as
            torch's) for a length outside ``[1, T]``; :class:`~rnnkit.errors.DeviceError`
            for lengths on another device.

    Example:
        >>> check_lengths([5, 2], batch_size=2, max_time=5).tolist()
        [5, 2]
    """
    lengths = _as_tensor(lengths)
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
            raise DeviceError(
                f"lengths are on device {lengths.device} but the input is on {device}; "
                f"put lengths on {where}"
            )
    if lengths.numel() > 0 and not torch.compiler.is_exporting():
        # (while torch.export records a graph the values are symbolic: an exported graph
        # takes lengths as an input, checked by rnnkit.export on the example only)
        low = int(lengths.min())
        if low < 1:
            index = int(torch.argmin(lengths))
            raise ShapeError(
                f"lengths must be in [1, T] (empty sequences are not supported, as in "
                f"torch.nn); got lengths[{index}] = {low}"
            )
        high = int(lengths.max())
        if high > max_time:
            index = int(torch.argmax(lengths))
            raise ShapeError(
                f"lengths[{index}] = {high} is longer than the sequence (T = {max_time} steps)"
            )
    return lengths.to(device=device, dtype=torch.int64)


def reverse_index(lengths: Tensor, steps: int) -> Tensor:
    """Index (T, B) that reverses each sequence within its own length; padding stays put.

    ``index[t, b] = lengths[b] - 1 - t`` for ``t < lengths[b]``, else ``t``. It is its own
    inverse, so the same gather maps outputs back to the original time positions.
    """
    t = torch.arange(steps, device=lengths.device).unsqueeze(1)  # (T, 1)
    flipped = lengths.unsqueeze(0) - 1 - t  # (T, B)
    return torch.where(flipped >= 0, flipped, t.expand_as(flipped))


def reverse_within_lengths(x: Tensor, index: Tensor) -> Tensor:
    """Time-major ``x (T, B, ...)`` gathered along time by a :func:`reverse_index`."""
    index = index.to(x.device).view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)  # (T, B, ...)


def last_steps(lengths: Tensor | None, steps: int, batch_size: int,
               device: torch.device | str | None = None, backwards: bool = False) -> Tensor:
    """``(B,)`` int64: the step each sequence processes last, ``lengths - 1`` (``T - 1``
    without lengths), or step 0 for a direction that reads backwards."""
    if backwards:
        return torch.zeros(batch_size, dtype=torch.int64, device=device)
    if lengths is None:
        return torch.full((batch_size,), steps - 1, dtype=torch.int64, device=device)
    return lengths.to(device=device, dtype=torch.int64) - 1


def unbatched_lengths(lengths: object, name: str = "input") -> Tensor:
    """``lengths`` for an unbatched ``(T, H_in)`` input: one length, as a ``(1,)`` tensor."""
    tensor = lengths if isinstance(lengths, Tensor) else None
    if tensor is None:
        if isinstance(lengths, numbers.Number):
            lengths = [lengths]
        tensor = _as_tensor(lengths)  # type: ignore[arg-type]
    if tensor.numel() != 1:
        raise ValueError(
            f"{name} is unbatched (T, H_in), one sequence, so lengths must be a single "
            f"length, got {tensor.numel()} lengths ({tuple(tensor.shape)}); pass a 3-D "
            f"batched input for several sequences"
        )
    return tensor.reshape(1)
