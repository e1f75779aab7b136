"""rnnkit: recurrent neural networks on PyTorch."""

__version__ = "0.1.0"

# Each section is owned by one subpackage; add its exports once its module imports cleanly.
# --- cells ---
from rnnkit.cells import (  # noqa: E402, F401
    BidirectionalGridLSTMCell,
    ElmanCell,
    GridLSTMCell,
    GroupedLSTMCell,
    GRUCell,
    IndRNNCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    MultiCell,
    NASCell,
    UGRNNCell,
)

# --- config: get_config / from_config, the registry (rnnkit.config) ---
from rnnkit.config import register_serializable  # noqa: E402, F401

# --- layers ---
from rnnkit.layers import (  # noqa: E402, F401
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    Fold,
    Recurrence,
    Sequence,
    UnfoldFrom,
)

# --- attention (owner: s2s-model) ---
# isort: split
from rnnkit.layers import AttentionWrapper, BahdanauAttention, LuongAttention  # noqa: E402, F401

# --- TF1 cell wrappers (owner: wrappers) ---
# isort: split
from rnnkit.layers import (  # noqa: E402, F401
    DeviceWrapper,
    DropoutWrapper,
    EmbeddingWrapper,
    InputProjectionWrapper,
    OutputProjectionWrapper,
    ResidualWrapper,
)

# --- model summaries: Keras' model.summary() table on torchinfo (owner: wrappers) ---
# isort: split
from rnnkit.summaries import summary  # noqa: E402, F401

# --- engine ---
# isort: split
from rnnkit import engine  # noqa: E402, F401
from rnnkit.engine import explain  # noqa: E402, F401

# --- data ---
# isort: split
from rnnkit import data, datasets  # noqa: E402, F401
from rnnkit.data import (  # noqa: E402, F401
    FULL_DATA_SWEEP,
    INFINITELY_REPEAT,
    CTFDeserializer,
    MinibatchSource,
    StreamDef,
    StreamDefs,
    write_ctf,
)

# --- models (task models: rnnkit.models) ---
# isort: split
from rnnkit import models  # noqa: E402, F401
from rnnkit.models import (  # noqa: E402, F401
    LanguageModel,
    SequenceClassifier,
    SequenceRegressor,
    SequenceTagger,
)

# isort: split
from rnnkit.models import Forecaster  # noqa: E402, F401  (owner: forecaster)

# --- seq2seq (owner: s2s-model) ---
# isort: split
from rnnkit.models import Seq2Seq  # noqa: E402, F401

# --- image to sequence (owner: img2seq) ---
# isort: split
from rnnkit.models import ImageToSequence  # noqa: E402, F401

# --- checkpoints: rnnkit.save / rnnkit.load for finished models (rnnkit.training.checkpoint) ---
# isort: split
from rnnkit.training.checkpoint import load, save  # noqa: E402, F401

# --- training ---
# isort: split
from rnnkit import training  # noqa: E402, F401
from rnnkit.training import Trainer  # noqa: E402, F401

# --- diagnostics: gradient_flow, plot_gradient_flow (owner: diagnostics) ---
# isort: split
from rnnkit import diagnostics  # noqa: E402, F401
