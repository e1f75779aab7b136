"""Pure step functions: ``x, state, weights -> output, new_state``. No module state.

Each function computes one time step of one cell family. Weight shapes and gate order are
documented per function; the core families use ``torch.nn``'s layout so that weights copied
from ``torch.nn.RNNCell/LSTMCell/GRUCell`` give the same results.
"""

from __future__ import annotations

# --- core cells: Elman, LSTM, GRU ---

# --- extra cells: UGRNN, NAS, grouped LSTM, IndRNN, minGRU, minLSTM ---

# --- the seed exercise API (rnn, init_rnn_state, lstm) ---
