"""rnnkit.engine."""
