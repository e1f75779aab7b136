"""rnnkit.training: the trainer, its losses, metrics, callbacks and checkpoints."""

# --- checkpoints (rnnkit/training/checkpoint.py) ---
from rnnkit.training.checkpoint import (  # noqa: E402, F401
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

# --- callbacks and progress (owner: callbacks) ---
# isort: split
from rnnkit.training.averaging import ExponentialMovingAverage  # noqa: E402, F401
from rnnkit.training.callbacks import (  # noqa: E402, F401
    Callback,
    CSVLogger,
    EarlyStopping,
    GradientFlowRecorder,
    LearningRateScheduler,
    ModelCheckpoint,
    NaNGuard,
    NonFiniteLossError,
    PlotCurves,
    TensorBoard,
)
from rnnkit.training.progress import ProgressBar, ProgressPrinter, TestConfig  # noqa: E402, F401

# --- trainer (rnnkit/training/{trainer,batches,losses,keras_loss,tbptt}.py) ---
# isort: split
from rnnkit.training.batches import Batch, SourceBatches  # noqa: E402, F401
from rnnkit.training.keras_loss import keras_crossentropy  # noqa: E402, F401
from rnnkit.training.losses import resolve_loss  # noqa: E402, F401
from rnnkit.training.trainer import History, NonFiniteError, Trainer  # noqa: E402, F401

# --- metrics (rnnkit/training/metrics.py) ---
# isort: split
from rnnkit.training.metrics import METRIC_NAMES, Metrics  # noqa: E402, F401

# --- optimizers (rnnkit/training/rmsprop.py) ---
# isort: split
from rnnkit.training.rmsprop import RMSprop  # noqa: E402, F401
