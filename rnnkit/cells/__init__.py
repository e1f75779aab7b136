"""Cells: one time step each. See :mod:`rnnkit.cells.base` for the contract."""

from rnnkit.cells.base import RecurrentCell, State

__all__ = ["RecurrentCell", "State"]
