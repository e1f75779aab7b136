"""Airline passengers: one-step-ahead and 24-month forecasts against SARIMA (issue 13, row 3).

Box and Jenkins' monthly totals 1949-1960 (thousands). The first 96 months train (the last
12 of them choose the epoch), the last 48 test. Anchors: the Keras tutorial's LSTM (test RMSE
47.5, about persistence), seasonal naive (42.3) and the airline model SARIMA(0,1,1)(0,1,1)12
(14.1), all one step ahead; SARIMA's 24-month forecast from the end of 1958 (42.0). Seasonal
naive, persistence and SARIMA (statsmodels) are measured here, in the same run. Target: test
RMSE <= 20 one step ahead::

    python examples/airline_passengers.py
    python examples/airline_passengers.py --results docs/results/airline_passengers.json
    python examples/airline_passengers.py --tiny        # seconds (CI)

The model is ``rnnkit.Forecaster`` (what ``rnnkit demo`` and ``rnnkit forecast`` train): it
takes the log, differences at lag 12 and scales inside, reads 24 months and forecasts the next
12 at once; an ensemble of 5 LSTMs (hidden 16), Adam 2e-3. One step ahead is the first month of the
forecast from each test origin (the actual values before it as inputs); 24 months ahead is two
12-month forecasts, the second reading the first.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import _results
import numpy as np
import torch

import rnnkit
from rnnkit.models import baselines
from rnnkit.workflows.forecast import train_forecaster

TRAIN, TEST, PERIOD, ORIGIN_1958 = 96, 48, 12, 120


def forecast_from(model: rnnkit.Forecaster, history: np.ndarray, horizon: int) -> np.ndarray:
    """``horizon`` months after ``history``: the model's 12-month forecasts, fed back."""
    values = list(history)
    while len(values) < len(history) + horizon:
        window = torch.as_tensor(np.asarray(values[-model.look_back:])[None])
        with torch.no_grad():
            values += model(window)[0].double().tolist()
    return np.asarray(values[len(history):len(history) + horizon])


def sarima(y: np.ndarray, fit_end: int):
    """The airline model on log passengers, fitted to ``y[:fit_end]`` (statsmodels)."""
    try:
        from statsmodels.tsa.statespace.sarimax import SARIMAX
    except ImportError:
        raise SystemExit("airline_passengers: SARIMA needs statsmodels: "
                         "pip install 'rnnkit[reproduce]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # statsmodels' convergence chatter
        return SARIMAX(np.log(y[:fit_end]), order=(0, 1, 1),
                       seasonal_order=(0, 1, 1, PERIOD)).fit(disp=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--strategy", choices=("direct", "recursive"), default="direct")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    _results.add_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.epochs, args.seeds = 3, args.seeds[:1]
    started = time.perf_counter()
    y = rnnkit.datasets.airline().values[:, 0].astype(np.float64)    # (144,)
    actual = y[TRAIN:]
    rmse = baselines.rmse

    # peers, one step ahead over the 48 test months
    one_step = {
        "persistence": y[TRAIN - 1:-1],
        "seasonal_naive": y[TRAIN - PERIOD:-PERIOD],
    }
    fitted = sarima(y, TRAIN)
    filtered = fitted.append(np.log(y[TRAIN:]), refit=False)   # parameters fixed, data in
    one_step["sarima"] = np.exp(filtered.predict(start=TRAIN, end=len(y) - 1))
    multi = {"sarima": np.exp(sarima(y, ORIGIN_1958).forecast(24)),
             "sarima_fit_to_1956": np.exp(fitted.append(np.log(y[TRAIN:ORIGIN_1958]),
                                                        refit=False).forecast(24)),
             "seasonal_naive": np.tile(y[ORIGIN_1958 - PERIOD:ORIGIN_1958], 2)}

    # rnnkit: the Forecaster, one ensemble per seed
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = rnnkit.Forecaster(look_back=24, horizon=12, strategy=args.strategy,
                                  period=PERIOD, seasonal_difference=True, log=True,
                                  cell=args.cell, hidden_size=args.hidden,
                                  ensemble=args.ensemble, seed=seed)
        model.adapt(y[:TRAIN - PERIOD])
        epoch = train_forecaster(model, y, None, TRAIN - PERIOD, TRAIN, epochs=args.epochs,
                                 lr=args.lr, patience=60, seed=seed)
        steps = np.array([forecast_from(model, y[:t], 1)[0] for t in range(TRAIN, len(y))])
        ahead = forecast_from(model, y[:ORIGIN_1958], 24)
        runs.append({"seed": seed, "epoch": epoch, "one_step_rmse": rmse(actual, steps),
                     "multi_step_24_rmse": rmse(y[ORIGIN_1958:], ahead),
                     "one_step": steps.round(2).tolist(), "multi_step_24": ahead.round(2).tolist()})
        print(f"seed {seed}: one-step test RMSE {runs[-1]['one_step_rmse']:.2f}, 24 months "
              f"from 1958 {runs[-1]['multi_step_24_rmse']:.2f} (epoch {epoch})", flush=True)

    ours = float(np.mean([r["one_step_rmse"] for r in runs]))
    ours_multi = float(np.mean([r["multi_step_24_rmse"] for r in runs]))
    peers = {name: rmse(actual, f) for name, f in one_step.items()}
    peers_multi = {name: rmse(y[ORIGIN_1958:], f) for name, f in multi.items()}
    print(f"one step ahead, test RMSE: rnnkit {ours:.2f} (mean of {len(runs)} seeds); "
          + ", ".join(f"{k} {v:.2f}" for k, v in peers.items()))
    print(f"24 months from 1958, RMSE: rnnkit {ours_multi:.2f}; "
          + ", ".join(f"{k} {v:.2f}" for k, v in peers_multi.items()))
    if args.results:
        _results.write_results(
            args.results, row=3, task="airline passengers (96 months train, 48 test)",
            metric="one-step-ahead test RMSE (24-month RMSE from 1958)",
            ours=round(ours, 2),
            anchor=(f"measured here: SARIMA(0,1,1)(0,1,1)12 {peers['sarima']:.1f}, seasonal "
                    f"naive {peers['seasonal_naive']:.1f}, persistence {peers['persistence']:.1f}; "
                    "published: Keras tutorial LSTM 47.5, SARIMA 14.1; 24 months: rnnkit "
                    f"{ours_multi:.1f} vs SARIMA {peers_multi['sarima']:.1f} (published 42.0)"),
            target="one-step test RMSE <= 20; 24-month forecast from 1958 reported vs SARIMA",
            met=None if args.tiny else ours <= 20.0,
            settings=(f"Forecaster: ensemble of {args.ensemble} {args.cell.upper()}"
                      f"({args.hidden}), look_back 24, 12-month {args.strategy} forecasts, "
                      f"log + lag-12 difference + scaling inside, Adam {args.lr:g}, "
                      f"batch 32, up to {args.epochs} epochs, epoch chosen on the last 12 "
                      f"training months" + (" (tiny)" if args.tiny else "")),
            seeds=list(args.seeds), wall_s=round(time.perf_counter() - started, 1),
            details={"one_step_rmse": {"rnnkit": ours, **peers},
                     "multi_step_24_rmse_from_1958": {"rnnkit": ours_multi, **peers_multi},
                     "runs": runs, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
