"""Lengths, masks and layouts: turning what users pass into what drivers run on.

Every driver works on a time-major padded tensor ``(T, B, H)`` plus optional ``lengths``
``(B,)``. These helpers convert batch-first tensors and
:class:`torch.nn.utils.rnn.PackedSequence` into that form and back, build masks, reverse
each sequence within its own length and pick each sequence's last valid step.

Symbols: ``T`` padded length, ``B`` batch size, ``H`` features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.engine.lengths import (
    check_lengths,
    check_steps,
    last_steps,
    reverse_index,
    reverse_within_lengths,
)
from rnnkit.engine.loop import map_state, mask_to_lengths

__all__ = [
    "PackInfo",
    "carry_last_valid",
    "check_lengths",
    "last_valid_steps",
    "mask_to_lengths",
    "from_time_major",
    "gather_steps",
    "last_steps",
    "lengths_to_mask",
    "map_state",
    "reverse_padded",
    "to_time_major",
]


@dataclass(frozen=True)
class PackInfo:
    """What is needed to rebuild a PackedSequence exactly like the one that came in."""

    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


def lengths_to_mask(lengths: Tensor, max_time: int, batch_first: bool = False) -> Tensor:
    """Boolean mask, True at valid steps: ``(T, B)`` (or ``(B, T)`` when batch_first).

    Example:
        >>> lengths_to_mask(torch.tensor([3, 1]), 4).T.int().tolist()
        [[1, 1, 1, 0], [1, 0, 0, 0]]
    """
    steps = torch.arange(max_time, device=lengths.device)
    mask = steps[:, None] < lengths[None, :]  # (T, B)
    return mask.T if batch_first else mask


def valid_steps(
    time_steps: int, batch_size: int, lengths: Tensor | None, mask: Tensor | None,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """The time-major ``(T, B)`` validity of each step, or None when every step is valid."""
    if mask is not None:
        return mask
    if lengths is not None:
        return lengths_to_mask(lengths.to(device), time_steps)
    return None


def carry_last_valid(outputs: Tensor, valid: Tensor, reverse: bool = False) -> Tensor:
    """Keras' ``zero_output_for_mask=False``: a masked step repeats the last valid output.

    ``outputs (T, B, ...)`` time-major at their original positions, ``valid (T, B)``. Each
    masked step takes the output of the last valid step processed before it: the closest
    earlier one, or with ``reverse`` (a sequence read backwards) the closest later one;
    zeros before the first. Valid steps are unchanged.

    Example:
        >>> out = torch.tensor([1.0, 2.0, 0.0, 4.0, 0.0]).view(5, 1, 1)
        >>> valid = torch.tensor([[False], [True], [False], [True], [False]])
        >>> carry_last_valid(out, valid).view(-1).tolist()
        [0.0, 2.0, 2.0, 4.0, 4.0]
        >>> carry_last_valid(out, valid, reverse=True).view(-1).tolist()
        [2.0, 2.0, 4.0, 4.0, 0.0]
    """
    time_steps = outputs.shape[0]
    steps = torch.arange(time_steps, device=outputs.device)[:, None].expand_as(valid)  # (T, B)
    if reverse:
        source = torch.where(valid, steps, time_steps).flip(0).cummin(0).values.flip(0)
        found = source < time_steps
    else:
        source = torch.where(valid, steps, -1).cummax(0).values
        found = source >= 0
    index = source.clamp(0, time_steps - 1)
    index = index.view(*index.shape, *([1] * (outputs.dim() - 2))).expand_as(outputs)
    carried = outputs.gather(0, index)  # (T, B, ...)
    found = found.view(*found.shape, *([1] * (outputs.dim() - 2)))
    return torch.where(found, carried, torch.zeros((), dtype=outputs.dtype,
                                                   device=outputs.device))


def last_valid_steps(valid: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Each sequence's last processed valid step under ``valid (T, B)``: ``(steps, found)``.

    The highest valid step (``reverse``: the lowest); ``found (B,)`` is False for a sequence
    with no valid step at all (its step is 0 then).
    """
    time_steps = valid.shape[0]
    steps = torch.arange(time_steps, device=valid.device)[:, None].expand_as(valid)  # (T, B)
    if reverse:
        step = torch.where(valid, steps, time_steps).min(dim=0).values
        found = step < time_steps
    else:
        step = torch.where(valid, steps, -1).max(dim=0).values
        found = step >= 0
    return step.clamp(0, time_steps - 1), found


def reverse_padded(inputs: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of time-major ``inputs (T, B, ...)`` within its own length.

    Step ``t < lengths[b]`` goes to ``lengths[b] - 1 - t``; padded steps stay where they are.
    Applying it twice gives the input back.

    Example:
        >>> x = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 1)
        >>> reverse_padded(x, torch.tensor([4, 2]))[:, :, 0].T.tolist()
        [[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 2.0, 3.0]]
    """
    if lengths is None:
        return inputs.flip(0)
    return reverse_within_lengths(inputs, reverse_index(lengths.to(inputs.device),
                                                        inputs.shape[0]))  # (T, B, ...)


def gather_steps(outputs: Tensor, steps: Tensor) -> Tensor:
    """Pick ``outputs[steps[b], b]`` from time-major ``outputs (T, B, H)``; returns ``(B, H)``."""
    index = steps.to(outputs.device).view(1, -1, *([1] * (outputs.dim() - 2)))
    index = index.expand(1, *outputs.shape[1:])
    return outputs.gather(0, index).squeeze(0)  # (B, H)


def to_time_major(
    inputs: Tensor | PackedSequence,
    batch_first: bool,
    lengths: Tensor | Sequence[int] | None = None,
    *,
    name: str = "input",
) -> tuple[Tensor, Tensor | None, PackInfo | None]:
    """Normalise ``inputs`` to ``(T, B, H)`` plus validated lengths (or None).

    A PackedSequence is unpacked (its lengths are used; passing ``lengths`` as well is an
    error). A padded tensor must be 3-D; ``(B, T, H)`` when ``batch_first``.
    """
    if isinstance(inputs, PackedSequence):
        if lengths is not None:
            raise ValueError(
                f"{name}: lengths= cannot be combined with a PackedSequence "
                "(the packed sequence already carries its lengths)"
            )
        padded, packed_lengths = pad_packed_sequence(inputs, batch_first=False)  # (T, B, H)
        info = PackInfo(inputs.sorted_indices, inputs.unsorted_indices)
        return padded, packed_lengths.to(padded.device), info
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{name} must be a Tensor or a PackedSequence, got {type(inputs).__name__}"
        )
    if inputs.dim() != 3:
        layout = "(batch, time, features)" if batch_first else "(time, batch, features)"
        raise ValueError(f"{name} must be 3-D {layout}, got shape {tuple(inputs.shape)}")
    if batch_first:
        inputs = inputs.transpose(0, 1)  # (T, B, H)
    check_steps(inputs.shape[0], name)
    if lengths is not None:
        lengths = check_lengths(lengths, inputs.shape[1], inputs.shape[0], inputs.device)
    return inputs, lengths, None


def from_time_major(
    outputs: Tensor,
    batch_first: bool,
    lengths: Tensor | None,
    pack_info: PackInfo | None,
) -> Tensor | PackedSequence:
    """Inverse of :func:`to_time_major` for outputs ``(T, B, H)``.

    A PackedSequence is rebuilt with the input's own ``sorted_indices`` so that its ``data``
    rows line up with the input's, exactly as ``torch.nn.LSTM`` returns it.
    """
    if pack_info is None:
        return outputs.transpose(0, 1) if batch_first else outputs
    assert lengths is not None
    sorted_indices = pack_info.sorted_indices
    if sorted_indices is not None:
        outputs = outputs.index_select(1, sorted_indices.to(outputs.device))
        sorted_lengths = lengths.index_select(0, sorted_indices.to(lengths.device))
    else:
        sorted_lengths = lengths
    packed = pack_padded_sequence(outputs, sorted_lengths.cpu(), enforce_sorted=True)
    return PackedSequence(
        packed.data, packed.batch_sizes, sorted_indices, pack_info.unsorted_indices
    )


def normalise_with_mask(
    owner: str, inputs: Tensor | PackedSequence, batch_first: bool, lengths: Any, mask: Any
) -> tuple[Tensor, Tensor | None, Any, Tensor | None]:
    """``to_time_major`` plus Keras' ``mask (B, T)``: ``(padded, lengths, pack_info, gaps)``
    where a prefix mask has become ``lengths`` and a mask with gaps comes back time-major."""
    if mask is not None:
        if lengths is not None:
            raise ValueError(f"{owner}: pass either lengths= or mask=, not both")
        if isinstance(inputs, PackedSequence):
            raise ValueError(f"{owner}: mask= cannot be combined with a PackedSequence "
                             "(the packed sequence already carries its lengths)")
    padded, lengths, info = to_time_major(inputs, batch_first, lengths, name=f"{owner} input")
    gaps = None
    if mask is not None:
        lengths, gaps = mask_to_lengths(mask, padded.shape[1], padded.shape[0], padded.device,
                                        name=f"{owner} mask")
    return padded, lengths, info, gaps
