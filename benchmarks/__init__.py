"""rnnkit benchmarks: `python -m benchmarks.run`."""
