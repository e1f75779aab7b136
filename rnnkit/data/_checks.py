"""Argument checks shared by the rnnkit.data modules (one message for one mistake)."""

from __future__ import annotations

import numbers
from typing import Any


def int_arg(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; a float, str or bool is a TypeError (never truncated).

    Example:
        >>> int_arg("batch_size", 4)
        4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
