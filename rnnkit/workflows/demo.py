"""``rnnkit demo``: the main job on built-in data, in about a minute on two CPU cores.

It trains a :class:`~rnnkit.models.forecaster.Forecaster` on the airline passengers series
(Box & Jenkins, 144 months, shipped with rnnkit), forecasts the held-out last year from the
end of 1959, prints its RMSE beside seasonal naive, persistence and (when statsmodels is
installed) SARIMA from the same origin, forecasts 1961, writes the plot, the forecast and the
model to ``output_dir``, and says where to go next::

    from rnnkit.workflows.demo import run_demo
    result = run_demo("rnnkit-demo")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from rnnkit.workflows.forecast import ForecastResult, forecast_series

__all__ = ["run_demo"]


def run_demo(output_dir: str | os.PathLike = "rnnkit-demo", *, seed: int = 0,
             echo: Callable[[str], None] = print, **options: Any) -> ForecastResult:
    """Forecast airline passengers and report against the baselines; returns the result.

    ``options`` go to :func:`~rnnkit.workflows.forecast.forecast_series` (``epochs``,
    ``ensemble``, ``strategy``, ...).
    """
    import torch

    import rnnkit

    started = time.perf_counter()
    series = rnnkit.datasets.airline()
    echo("rnnkit demo: forecasting monthly airline passengers (thousands), 1949-1960")
    echo(f"  {len(series)} months; the last 12 (1960) are held out, the 12 before them "
         "validate, the rest train")
    settings = {"strategy": "direct", "ensemble": 3, "epochs": 150, "patience": 40,
                "hidden_size": 32, **options}
    echo(f"  training an LSTM forecaster ({settings['ensemble']} seeds, look-back 24 months, "
         f"log + seasonal difference inside) on {torch.get_num_threads()} CPU thread(s)...")
    result = forecast_series(series, output=output_dir, seed=seed, **settings)
    metrics = result.metrics
    echo("")
    echo("Held-out 1960, forecast 12 months ahead from December 1959 (passengers, thousands):")
    echo(result.table())
    ours, naive = metrics["rnnkit"]["rmse"], metrics["seasonal_naive"]["rmse"]
    verdict = "beats" if ours < naive else "does NOT beat"
    echo("")
    echo(f"rnnkit RMSE {ours:.1f} {verdict} seasonal naive {naive:.1f} "
         f"(persistence {metrics['persistence']['rmse']:.1f}"
         + (f", SARIMA {metrics['sarima']['rmse']:.1f}" if "sarima" in metrics else
            "; pip install rnnkit[forecast] adds SARIMA") + ").")
    first, last = result.dates[0], result.dates[-1]
    echo(f"Forecast {first} .. {last}: " + ", ".join(f"{v:.0f}" for v in result.forecast))
    echo("")
    echo(f"Wrote {output_dir}/: forecast.png (history, held-out fit, forecast), forecast.csv, "
         "holdout.csv, metrics.csv and the model (config.json, model.safetensors).")
    echo(f"Done in {time.perf_counter() - started:.0f} s.")
    echo("")
    echo("Next:")
    echo("  rnnkit forecast your.csv --target COLUMN        # the same on your own series")
    echo(f"  rnnkit predict {output_dir} your.csv -o out.csv   # reuse this model")
    echo("  rnnkit train examples/configs/airline.toml     # every option in one TOML file")
    echo("  docs/models.md (Forecaster), docs/cli.md        # the library and the command")
    return result
