"""Layers: drivers that know time, the torch drop-ins, masking, stacking, dropout variants.

See ``docs/layers.md`` for a guided tour.
"""

from rnnkit.layers.attention import (
    AttentionWrapper,
    BahdanauAttention,
    LuongAttention,
)
from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.dropout import RecurrentDropoutCell, ZoneoutCell, variational_mask
from rnnkit.layers.masking import (
    check_lengths,
    gather_steps,
    lengths_to_mask,
    reverse_padded,
)
from rnnkit.layers.recurrence import Fold, Recurrence, Unfolded, UnfoldFrom
from rnnkit.layers.rnn import GRU, LSTM, RNN, RNNBase
from rnnkit.layers.sequence import Sequence
from rnnkit.layers.wrappers import (
    DeviceWrapper,
    DropoutWrapper,
    EmbeddingWrapper,
    InputProjectionWrapper,
    OutputProjectionWrapper,
    ResidualWrapper,
)

__all__ = [
    "AttentionWrapper",
    "BahdanauAttention",
    "LuongAttention",
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "Fold",
    "RNNBase",
    "Recurrence",
    "RecurrentDropoutCell",
    "Sequence",
    "UnfoldFrom",
    "Unfolded",
    "ZoneoutCell",
    "DeviceWrapper",
    "DropoutWrapper",
    "EmbeddingWrapper",
    "InputProjectionWrapper",
    "OutputProjectionWrapper",
    "ResidualWrapper",
    "check_lengths",
    "gather_steps",
    "lengths_to_mask",
    "reverse_padded",
    "variational_mask",
]
