"""rnnkit.models."""
