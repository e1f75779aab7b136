"""rnnkit.models."""

# --- forecaster (owner: forecaster) ---
from rnnkit.models.forecaster import Forecaster  # noqa: E402, F401
