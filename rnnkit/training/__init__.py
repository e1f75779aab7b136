"""rnnkit.training."""

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
