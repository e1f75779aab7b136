"""rnnkit.layers."""
