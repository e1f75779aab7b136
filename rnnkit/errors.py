"""Exception classes shared by cells, drivers and the ``torch.nn`` drop-ins.

rnnkit's checks use the Python class that names the problem (a wrong shape is a
``ValueError``, a wrong dtype a ``TypeError``). ``torch.nn``'s RNNs raise other classes for the
same problems: ``RuntimeError`` for a wrong ``h_0``/``c_0`` shape, input size, batch size or an
empty sequence, ``ValueError`` for an input whose dtype is not the weights'. Code written for
``torch.nn`` catches torch's classes, so each class here derives from both: ``except
ValueError`` and ``except RuntimeError`` both catch a :class:`ShapeError`. Messages keep
rnnkit's wording and contain torch's phrase as well.

Example:
    >>> import torch, rnnkit
    >>> from rnnkit.errors import ShapeError
    >>> try:
    ...     rnnkit.GRU(3, 4)(torch.randn(5, 2, 7))
    ... except RuntimeError as error:       # what torch.nn.GRU raises here
    ...     print(isinstance(error, ShapeError), isinstance(error, ValueError))
    True True
"""

from __future__ import annotations


class ShapeError(ValueError, RuntimeError):
    """A tensor of the wrong shape: input size, batch size, state shape, zero time steps.

    ``ValueError`` (rnnkit's class for bad values) and ``RuntimeError`` (torch.nn's).
    """


class DTypeError(TypeError, ValueError, RuntimeError):
    """Tensors whose dtypes do not match: input vs. parameters, state vs. input.

    ``TypeError`` (rnnkit's class), ``ValueError`` (torch.nn's for an input that does not
    match the weights) and ``RuntimeError`` (torch.nn's for a state that does not match the
    input).
    """


class DeviceError(ValueError, RuntimeError):
    """Tensors on different devices (state vs. input, lengths vs. input).

    ``ValueError`` (rnnkit's class) and ``RuntimeError`` (torch.nn's).
    """


class UsageError(ValueError):
    """Bad input from the person running a command or workflow: a missing file or column, a
    non-numeric value (row and column named), too few rows, a gappy date column, a directory
    that is not a run directory, a bad configuration key (with the closest valid name).

    The ``rnnkit`` command prints its message as one line and exits with status 2 (no
    traceback); anything else that escapes a command is a bug and keeps its traceback.
    ``ValueError``, so code that calls the workflows from Python catches it as usual.
    """


__all__ = ["DTypeError", "DeviceError", "ShapeError", "UsageError"]
