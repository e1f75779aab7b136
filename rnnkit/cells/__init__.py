"""Cells: one time step each. See :mod:`rnnkit.cells.base` for the contract."""

from rnnkit.cells.base import RecurrentCell, State
from rnnkit.cells.elman import ElmanCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell

__all__ = ["RecurrentCell", "State", "ElmanCell", "LSTMCell", "GRUCell"]
