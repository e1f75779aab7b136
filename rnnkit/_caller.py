"""Warnings that point at the user's line, not at rnnkit's insides.

A fixed ``stacklevel`` is right for one call path only: the same notice can be reached from
``rnnkit.LSTM(...)``, from a ``Recurrence`` inside a user's model or from
``dispatch.run_recurrence``. :func:`warn` counts the frames instead, up to the first one
outside rnnkit and ``torch.nn``'s module machinery (``Module.__call__``).
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # .../rnnkit/
_TORCH_MODULES = os.sep + os.path.join("torch", "nn", "modules") + os.sep


def _inside(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE) or _TORCH_MODULES in path


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first line outside rnnkit that led here."""
    frame = sys._getframe(1)  # warn's caller: stacklevel 2 of warnings.warn
    level = 2
    while frame is not None and _inside(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
