"""rnnkit.workflows: orchestration above the trainer and below the command line (a TOML run
configuration, fitting a forecaster on a CSV, the demo)."""
