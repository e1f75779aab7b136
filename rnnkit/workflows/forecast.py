"""One call from a CSV to a trained forecaster, a forecast, a plot and a metrics table.

:func:`forecast_csv` is what ``rnnkit forecast DATA.csv --target COL`` runs::

    result = forecast_csv("airline.csv", target="Passengers", output="airline-run")
    print(result.table())          # held-out RMSE/MAE/MAPE/sMAPE/MASE vs the baselines

The rows are split in time order: the last ``horizon`` rows are the held-out tail (test),
the ``horizon`` rows before them validate (early stopping), the rest train. The forecaster's
scalers are fitted on the training rows only. The held-out tail is forecast from its origin
(all ``horizon`` steps at once, as a user would) and compared with seasonal naive,
persistence, drift and, when statsmodels is installed, SARIMA from the same origin. The
forecast past the end of the data starts from the last ``look_back`` rows.

Files written to ``output`` (each atomically):

* ``forecast.csv``: ``date`` (or ``step``), ``forecast`` and, for an ensemble,
  ``ensemble_min``/``ensemble_max`` (the spread of its members);
* ``holdout.csv``: the held-out tail, actual values beside every method's forecast;
* ``metrics.csv``: one row per method;
* ``forecast.png``: history, the fit on the held-out tail, and the forecast;
* the model, saved with :func:`rnnkit.save` (``config.json`` + ``model.safetensors``), so
  ``rnnkit.load(output)`` / ``rnnkit predict`` need nothing else.

Bad input raises :class:`ForecastInputError` with one line naming the problem (file, column,
line, first gap); the command line turns it into exit code 2.

The training loop is this module's own (not :class:`rnnkit.Trainer`): the loss lives in the
forecaster's scaled, differenced space (:meth:`Forecaster.training_loss`), each ensemble
member trains on its own loss, and the model is chosen by its validation RMSE in the user's
units after each epoch.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit._files import atomic_write
from rnnkit.data.timeseries import TimeSeries, make_windows
from rnnkit.errors import UsageError
from rnnkit.models import baselines
from rnnkit.models.forecaster import Forecaster, default_settings, future_dates

__all__ = ["ForecastInputError", "ForecastResult", "forecast_csv", "forecast_series",
           "predict_csv", "train_forecaster"]


class ForecastInputError(UsageError):
    """Input a forecast cannot run on (missing file or column, bad value, gap, too few rows).

    A :class:`rnnkit.errors.UsageError` (so a ``ValueError``): the message is one line that
    names the problem; ``rnnkit forecast`` prints it and exits with code 2.
    """


@dataclass
class ForecastResult:
    """What :func:`forecast_csv` / :func:`forecast_series` return."""

    model: Forecaster
    dates: np.ndarray | None
    forecast: np.ndarray  # (H,) past the end of the data
    spread: np.ndarray | None  # (2, H) ensemble min and max, or None
    holdout: dict[str, np.ndarray]  # "actual", "rnnkit", baselines...: (H,) each
    metrics: dict[str, dict[str, float]]  # method -> rmse, mae, mape, smape, mase
    output: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        """The held-out metrics as an aligned text table, best RMSE first."""
        names = ("rmse", "mae", "mape", "smape", "mase")
        rows = sorted(self.metrics.items(), key=lambda kv: kv[1]["rmse"])
        width = max(len("method"), *(len(m) for m in self.metrics))
        lines = [f"{'method':<{width}}  " + "  ".join(f"{n.upper():>8}" for n in names)]
        for method, values in rows:
            lines.append(f"{method:<{width}}  " + "  ".join(
                f"{values[n]:>8.3f}" for n in names))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- training
def _segments(values: np.ndarray, covariates: np.ndarray | None, length: int, end: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every run of ``length`` consecutive rows that ends before row ``end``: ``(W, S)``
    and covariates ``(W, S, C)``."""
    look = length - 1
    x, y, _ = make_windows(values, look_back=look, horizon=1, last_target=end)
    segments = np.concatenate([x[..., 0], y[..., 0]], axis=1)  # (W, S)
    cov = None
    if covariates is not None:
        cx, cy, _ = make_windows(covariates, look_back=look, horizon=1, last_target=end)
        cov = torch.as_tensor(np.concatenate([cx, cy], axis=1))  # (W, S, C)
    return torch.as_tensor(segments), cov


def _origin_forecast(model: Forecaster, values: np.ndarray, covariates: np.ndarray | None,
                     origin: int, members: bool = False) -> np.ndarray:
    """The model's ``H`` forecasts after row ``origin`` (rows before it are the past)."""
    L, H = model.look_back, model.horizon
    x = torch.as_tensor(values[None, origin - L:origin])
    c = None
    if covariates is not None:
        c = torch.as_tensor(covariates[None, origin - L:origin + H])
    with torch.no_grad():
        out = model.forward_members(x, c)[:, 0].double().numpy()  # (K, H)
    return out if members else out.mean(0)


def train_forecaster(model: Forecaster, values: np.ndarray, covariates: np.ndarray | None,
                     train_end: int, val_end: int, *, epochs: int = 300, lr: float = 5e-3,
                     batch_size: int = 32, patience: int = 60, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> int:
    """Fit ``model`` on rows ``[0, train_end)``; keep the epoch whose forecast of rows
    ``[train_end, val_end)`` from origin ``train_end`` has the lowest RMSE.

    ``values (N,)``, ``covariates (N + H, C)`` or None (rows past ``N`` are known future
    covariates). Adam, gradient norm clipped at 1, shuffled mini-batches from a generator
    seeded with ``seed``. Returns the chosen epoch (1-based).
    """
    segments, cov = _segments(values, covariates, model.segment_length, train_end)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    actual = values[train_end:val_end]
    best, best_epoch, best_state = math.inf, 0, None
    n = len(segments)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            loss = model.training_loss(segments[index], None if cov is None else cov[index])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        if len(actual):
            predicted = _origin_forecast(model, values, covariates, train_end)[:len(actual)]
            score = baselines.rmse(actual, predicted)
        else:
            score = float(loss.detach())
        if not np.isfinite(score):
            raise FloatingPointError(f"training diverged at epoch {epoch} (validation RMSE "
                                     f"{score}); try a smaller learning rate")
        if score < best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
        if log is not None and (epoch == 1 or epoch % 50 == 0):
            log(f"epoch {epoch:4d}  loss {float(loss.detach()):.4f}  validation RMSE {score:.3f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_epoch


# ----------------------------------------------------------------------------- the workflow
def _closest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        first = next(csv.reader(f), None)
    if not first:
        raise ForecastInputError(f"{path}: the file is empty; it needs a header row and data")
    return [h.strip() for h in first]


def _read(path: str | os.PathLike, target: str, date_column: str | None,
          exogenous: Sequence[str], fill: Any) -> TimeSeries:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ForecastInputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ForecastInputError(f"{path}: is a directory, not a CSV file")
    try:
        header = _header(path)
    except UnicodeDecodeError as e:
        raise ForecastInputError(f"{path}: not a UTF-8 text CSV ({e.reason})") from None
    for column, what in [(target, "target"), *((c, "exogenous") for c in exogenous),
                         *([(date_column, "date")] if date_column else [])]:
        if column not in header:
            raise ForecastInputError(f"{path}: no {what} column {column!r}"
                                     f"{_closest(column, header)}; columns: {', '.join(header)}")
    if date_column is None:
        date_column = "auto"
    try:
        series = TimeSeries.from_csv(path, date_column=date_column,
                                     value_columns=[target, *exogenous], fill=fill)
    except ValueError as e:
        message = str(e)
        if "--fill" not in message:
            message = message.replace("pass fill=", "pass --fill / fill=")
        raise ForecastInputError(message.replace("\n", " ")) from None
    return series


def forecast_csv(path: str | os.PathLike, target: str, date_column: str | None = None,
                 horizon: int | None = None, output: str | os.PathLike | None = "forecast",
                 fill: str | float | None = None, exogenous: Sequence[str] = (),
                 **options: Any) -> ForecastResult:
    """Train a forecaster on column ``target`` of the CSV at ``path`` and write its outputs.

    Args:
        path: CSV with a header row.
        target: the column to forecast.
        date_column: the dates (default: the first column when it holds dates); their step
            sets the seasonal period (monthly 12, daily 7, hourly 24, quarterly 4).
        horizon: steps to forecast (default: one period).
        output: directory for forecast.csv, holdout.csv, metrics.csv, forecast.png and the
            model (None: write nothing).
        fill: how to fill missing values and date gaps (``"ffill"``, ``"interpolate"`` or a
            number); by default they are errors.
        exogenous: more columns to feed the model (their future values must be known: the
            forecast past the end of the data holds their last value, see the docstring of
            :func:`forecast_series`).
        options: passed to :func:`forecast_series` (look_back, strategy, ensemble, epochs,
            seed, calendar, cell, hidden_size, ...).

    Raises:
        ForecastInputError: the input cannot be forecast; the message names why.
    """
    series = _read(path, target, date_column, list(exogenous), fill)
    return forecast_series(series, horizon=horizon, output=output, source=os.fspath(path),
                           date_column=date_column, **options)


def forecast_series(series: TimeSeries, horizon: int | None = None,
                    output: str | os.PathLike | None = None, *, look_back: int | None = None,
                    strategy: str = "direct", ensemble: int = 1, epochs: int = 300,
                    lr: float = 5e-3, batch_size: int = 32, patience: int = 60,
                    seed: int = 0, calendar: Sequence[str] | None = None,
                    period: int | None = None, log: bool | None = None,
                    seasonal_difference: bool | None = None, difference: bool = False,
                    cell: str = "lstm", hidden_size: int = 32, num_layers: int = 1,
                    sarima: bool = True, source: str = "the series",
                    date_column: str | None = None,
                    echo: Callable[[str], None] | None = None) -> ForecastResult:
    """:func:`forecast_csv` on a :class:`TimeSeries` whose first column is the target and
    whose other columns are exogenous inputs.

    Exogenous columns are inputs whose future is known in advance; past the end of the data
    this function holds each at its last value (give a longer CSV to do better).
    """
    import time

    started = time.perf_counter()
    values = series.values[:, 0].astype(np.float64)
    exog = series.values[:, 1:] if series.values.shape[1] > 1 else None
    n = len(values)
    settings = default_settings(series.dates, n, horizon)
    if period is not None:
        settings["period"] = int(period)
        settings["horizon"] = int(horizon) if horizon is not None else max(int(period), 1)
        settings["look_back"] = max(2 * int(period), 8)
        settings["seasonal_difference"] = int(period) > 1 and n >= 4 * int(period)
    H = settings["horizon"]
    if isinstance(H, bool) or H < 1:
        raise ForecastInputError(f"horizon must be a positive int, got {horizon!r}")
    if look_back is not None:
        settings["look_back"] = int(look_back)
    if seasonal_difference is not None:
        settings["seasonal_difference"] = bool(seasonal_difference)
    L, m = settings["look_back"], settings["period"]
    segment = L + (1 if strategy == "recursive" else H)
    need = segment + 2 * H
    if n < need:
        raise ForecastInputError(
            f"{source}: {n} rows are too few for look_back={L} + horizon={H}: training needs "
            f"{segment} rows before a validation part and a held-out tail of {H} rows each "
            f"({need} rows); pass a smaller horizon or look_back")
    test_start, val_start = n - H, n - 2 * H
    if log is None:
        log = bool(np.all(values[:val_start] > 0)) and bool(np.all(values > 0))
    if calendar and series.dates is None:
        raise ForecastInputError(f"{source}: calendar features need a date column")
    model = Forecaster(
        look_back=L, horizon=H, strategy=strategy, period=m,
        seasonal_difference=settings["seasonal_difference"], difference=difference, log=log,
        num_exogenous=0 if exog is None else exog.shape[1], calendar=calendar,
        freq=settings["freq"], cell=cell, hidden_size=hidden_size, num_layers=num_layers,
        ensemble=ensemble, seed=seed)
    model.adapt(values[:val_start], None if exog is None else exog[:val_start])

    # covariates for every row plus H future rows (dates from freq, exogenous held)
    covariates = None
    future = None
    if series.dates is not None and settings["freq"] is not None:
        future = future_dates(series.dates[-1], H, settings["freq"]).astype(series.dates.dtype)
    if model.covariate_width:
        all_dates = None if future is None else np.concatenate([series.dates, future])
        all_exog = None if exog is None else np.concatenate([exog, np.repeat(exog[-1:], H, 0)])
        covariates = model.covariates(all_dates, all_exog)
    torch.manual_seed(seed)
    chosen = train_forecaster(model, values, covariates, val_start, test_start, epochs=epochs,
                              lr=lr, batch_size=batch_size, patience=patience, seed=seed,
                              log=echo)

    # the held-out tail, every method from the same origin
    history, actual = values[:test_start], values[test_start:]
    holdout = {"actual": actual, "rnnkit": _origin_forecast(model, values, covariates,
                                                            test_start)}
    for name, method in baselines.BASELINES.items():
        if name == "seasonal_naive" and m < 2:
            continue
        holdout[name] = method(history, H, m)
    if sarima and baselines.sarima_available():
        try:
            holdout["sarima"] = baselines.sarima_forecast(history, H, m)
        except (ValueError, np.linalg.LinAlgError) as e:  # a short or odd series
            if echo is not None:
                echo(f"SARIMA skipped: {e}")
    metrics = {name: baselines.forecast_metrics(actual, forecast, history, max(m, 1))
               for name, forecast in holdout.items() if name != "actual"}

    # the future
    members = _origin_forecast(model, values, covariates, n,
                               members=True)
    forecast = members.mean(0)
    spread = np.stack([members.min(0), members.max(0)]) if ensemble > 1 else None
    result = ForecastResult(model=model, dates=future, forecast=forecast, spread=spread,
                            holdout=holdout, metrics=metrics, epochs=chosen)
    if output is not None:
        result.output = Path(output)
        result.files = _write_outputs(result, series, series.columns[0], date_column)
    result.seconds = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------- files
def _csv_rows(rows: list[list[Any]]) -> Callable[[Any], None]:
    def write(f: Any) -> None:
        writer = csv.writer(f)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return write


def _write_outputs(result: ForecastResult, series: TimeSeries, target_name: str,
                   date_column: str | None) -> dict[str, Path]:
    import rnnkit

    out = Path(result.output)
    out.mkdir(parents=True, exist_ok=True)
    H = len(result.forecast)
    files: dict[str, Path] = {}

    key = "date" if result.dates is not None else "step"
    labels = ([str(d) for d in result.dates] if result.dates is not None
              else list(range(len(series) + 1, len(series) + H + 1)))
    header = [key, "forecast"] + (["ensemble_min", "ensemble_max"]
                                  if result.spread is not None else [])
    rows: list[list[Any]] = [header]
    for i in range(H):
        row = [labels[i], float(result.forecast[i])]
        if result.spread is not None:
            row += [float(result.spread[0, i]), float(result.spread[1, i])]
        rows.append(row)
    files["forecast"] = atomic_write(out / "forecast.csv", _csv_rows(rows))

    n = len(series)
    tail = ([str(d) for d in series.dates[n - H:]] if series.dates is not None
            else list(range(n - H + 1, n + 1)))
    methods = list(result.holdout)
    rows = [[key, *methods]]
    for i in range(H):
        rows.append([tail[i], *(float(result.holdout[m][i]) for m in methods)])
    files["holdout"] = atomic_write(out / "holdout.csv", _csv_rows(rows))

    names = ("rmse", "mae", "mape", "smape", "mase")
    rows = [["method", *names]]
    for method, values in sorted(result.metrics.items(), key=lambda kv: kv[1]["rmse"]):
        rows.append([method, *(float(values[k]) for k in names)])
    files["metrics"] = atomic_write(out / "metrics.csv", _csv_rows(rows))

    files["plot"] = atomic_write(out / "forecast.png", _plot(result, series, target_name),
                                  binary=True)
    rnnkit.save(result.model, out, extra={
        "task": "forecast", "target": target_name, "exogenous": list(series.columns[1:]),
        "date_column": date_column,
        "last_date": None if series.dates is None else str(series.dates[-1]), "rows": n,
        "metrics": {method: {k: (None if math.isnan(v) else v) for k, v in values.items()}
                    for method, values in result.metrics.items()}})
    files["model"] = out
    return files


def _plot(result: ForecastResult, series: TimeSeries, target_name: str
          ) -> Callable[[Any], None]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, H = len(series), len(result.forecast)
    if series.dates is not None:
        x_hist = series.dates.astype("datetime64[D]")
        x_future = result.dates.astype("datetime64[D]")
    else:
        x_hist, x_future = np.arange(n), np.arange(n, n + H)
    fig = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x_hist, series.values[:, 0], color="black", lw=1.2, label="history")
    for name, style, color in (("seasonal_naive", ":", "tab:blue"),
                               ("sarima", "-.", "tab:green")):
        if name in result.holdout:
            ax.plot(x_hist[n - H:], result.holdout[name], ls=style, lw=1.2, color=color,
                    label=f"{name.replace('_', ' ')} on held-out tail "
                          f"(RMSE {result.metrics[name]['rmse']:.3g})")
    ax.plot(x_hist[n - H:], result.holdout["rnnkit"], color="tab:orange", lw=1.8,
            label=f"rnnkit on held-out tail (RMSE {result.metrics['rnnkit']['rmse']:.3g})")
    # the forecast line starts at the last observation so the two join up
    ax.plot(np.concatenate([x_hist[-1:], x_future]),
            np.concatenate([series.values[-1:, 0], result.forecast]), color="tab:red", lw=1.8,
            label="forecast")
    if result.spread is not None:
        ax.fill_between(x_future, result.spread[0], result.spread[1], color="tab:red",
                        alpha=0.2, label="ensemble spread")
    ax.axvline(x_hist[n - H], color="grey", lw=0.8, ls="--")
    ax.set_title(f"{target_name}: held-out tail and {H}-step forecast")
    ax.set_ylabel(target_name)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()

    def write(f: Any) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        f.write(buffer.getvalue())

    return write


# ----------------------------------------------------------------------------- predict
def predict_csv(run_dir: str | os.PathLike, path: str | os.PathLike,
                output: str | os.PathLike | None = None, fill: str | float | None = None
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Forecast the ``horizon`` steps after the end of the CSV at ``path`` with the
    forecaster that :func:`forecast_csv` saved in ``run_dir`` (what ``rnnkit predict`` runs).

    The CSV needs the same target (and exogenous) columns as the training one and at least
    ``look_back`` rows. Writes ``output`` (``date``/``step``, ``forecast`` and, for an
    ensemble, ``ensemble_min``/``ensemble_max``) when given. Returns ``(dates or None,
    forecast (H,), spread (2, H) or None)``.
    """
    from rnnkit.training.checkpoint import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(run_dir)
    except (CheckpointError, FileNotFoundError) as e:
        raise ForecastInputError(f"{run_dir}: not a forecast run directory ({e})") from None
    model, extra = checkpoint.model.eval(), checkpoint.extra or {}
    if not isinstance(model, Forecaster) or extra.get("task") != "forecast":
        raise ForecastInputError(f"{run_dir}: holds a {type(model).__name__}, not a forecaster "
                                 "written by rnnkit forecast")
    target, exogenous = extra["target"], list(extra.get("exogenous") or [])
    series = _read(path, target, extra.get("date_column"), exogenous, fill)
    n, L, H = len(series), model.look_back, model.horizon
    if n < L:
        raise ForecastInputError(f"{path}: {n} rows are too few; this forecaster reads the last "
                                 f"look_back={L} rows")
    values = series.values[:, 0]
    exog = series.values[:, 1:] if exogenous else None
    future_exog = None if exog is None else np.repeat(exog[-1:], H, 0)
    members = model.forecast(values, dates=series.dates, exogenous=exog,
                             future_exogenous=future_exog, members=True)  # (K, H)
    forecast = members.mean(0)
    spread = np.stack([members.min(0), members.max(0)]) if len(members) > 1 else None
    dates = None
    if series.dates is not None and model.freq is not None:
        dates = future_dates(series.dates[-1], H, model.freq)
    if output is not None:
        key = "date" if dates is not None else "step"
        labels = [str(d) for d in dates] if dates is not None else list(range(n + 1, n + H + 1))
        rows: list[list[Any]] = [[key, "forecast"] + (["ensemble_min", "ensemble_max"]
                                                      if spread is not None else [])]
        for i in range(H):
            rows.append([labels[i], float(forecast[i])] + (
                [float(spread[0, i]), float(spread[1, i])] if spread is not None else []))
        atomic_write(Path(output), _csv_rows(rows))
    return dates, forecast, spread
