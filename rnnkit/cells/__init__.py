"""Cells: one time step each. See :mod:`rnnkit.cells.base` for the contract."""

from rnnkit.cells.base import RecurrentCell, State
from rnnkit.cells.elman import ElmanCell
from rnnkit.cells.grid_lstm import BidirectionalGridLSTMCell, GridLSTMCell
from rnnkit.cells.grouped_lstm import GroupedLSTMCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.indrnn import IndRNNCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.minimal import MinGRUCell, MinLSTMCell
from rnnkit.cells.multi import MultiCell
from rnnkit.cells.nas import NASCell
from rnnkit.cells.ugrnn import UGRNNCell

__all__ = [
    "RecurrentCell",
    "State",
    "ElmanCell",
    "LSTMCell",
    "GRUCell",
    "UGRNNCell",
    "NASCell",
    "GroupedLSTMCell",
    "IndRNNCell",
    "MinGRUCell",
    "MinLSTMCell",
    "MultiCell",
    "GridLSTMCell",
    "BidirectionalGridLSTMCell",
]
