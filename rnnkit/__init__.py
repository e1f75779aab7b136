"""rnnkit: recurrent neural networks on PyTorch."""

__version__ = "0.1.0"

# Each section is owned by one subpackage; add its exports once its module imports cleanly.
# --- cells ---
# --- layers ---
# --- engine ---
# --- data ---
