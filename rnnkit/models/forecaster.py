r"""``Forecaster``: ``look_back`` values in, ``horizon`` values out, in the user's units.

Symbols: ``B`` batch, ``L`` = ``look_back``, ``H`` = ``horizon``, ``m`` seasonal period,
``E`` exogenous columns, ``C`` calendar columns, ``K`` ensemble members,
``k = m * seasonal_difference + difference`` steps that differencing consumes,
``T' = L - k`` steps the recurrent network reads.

What happens inside, for a window ``y[0:L]`` of the target (user's units):

1. ``log=True``: :math:`w_t = \log y_t`; else :math:`w_t = y_t`.
2. ``seasonal_difference=True``: :math:`s_t = w_t - w_{t-m}`; ``difference=True``:
   :math:`d_t = s_t - s_{t-1}`. Both need only the window itself, which is why ``look_back``
   is at least two periods.
3. A scaler fitted on the training part (``adapt``): :math:`z_t = (d_t - \mathrm{loc}) /
   \mathrm{scale}` (``"standard"``: mean and population std; ``"minmax"``: min and range).
   ``loc``/``scale`` are buffers, saved with the weights.
4. The recurrent network reads :math:`[z_t, c_{t+1}]` for the ``T'`` window steps, where
   :math:`c` are the scaled exogenous values and calendar features of the step it predicts.

   * ``strategy="recursive"`` (the one-to-many of an RNN that feeds its output back): a
     linear head predicts :math:`z_{t+1}` at every step (trained with teacher forcing on
     one-step targets); forecasting feeds each prediction back in as the next input.
   * ``strategy="direct"``: the last hidden state (with the covariates of the ``H`` future
     steps) goes through one linear head to all ``H`` future :math:`z` at once.
5. The predicted :math:`z` are un-scaled, integrated (cumulative sums of the differences,
   from the window's last values) and exponentiated, so ``forward`` returns ``(B, H)``
   in the units of its input.

``ensemble=K`` holds ``K`` independently initialised networks (seeds ``seed, seed + 1, ...``)
whose forecasts are averaged; :meth:`Forecaster.training_loss` trains each on its own loss.

Use :func:`default_settings` / :meth:`Forecaster.for_series` to choose the period from the
dates' frequency (monthly 12, quarterly 4, weekly 52, daily 7, hourly 24) and a look-back of
two periods. ``rnnkit.workflows.forecast.forecast_csv`` trains one from a CSV.

Example:
    >>> import numpy as np, torch, rnnkit
    >>> from rnnkit.models.forecaster import Forecaster
    >>> t = np.arange(60.0)
    >>> y = 100 + t + 10 * np.sin(2 * np.pi * t / 12)
    >>> model = Forecaster(look_back=24, horizon=6, period=12, seasonal_difference=True, seed=0)
    >>> model = model.adapt(y[:48])
    >>> out = model(torch.tensor(y[None, -24:]))      # (B, L) in, (B, H) out
    >>> out.shape
    torch.Size([1, 6])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.config import Configurable, dtype_from_name
from rnnkit.data.timeseries import (
    MinMaxScaler,
    StandardScaler,
    TimeSeries,
    _natural_step,
    calendar_features,
)
from rnnkit.models.backbone import Backbone
from rnnkit.summaries import SummaryMixin

__all__ = ["Forecaster", "default_settings", "future_dates", "seasonal_period"]

_STRATEGIES = ("recursive", "direct")
_SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler}


# ----------------------------------------------------------------------------- defaults
def _step(dates: Any) -> np.timedelta64 | None:
    d = TimeSeries.from_array(np.zeros(len(dates)), dates=dates).dates if not (
        isinstance(dates, np.ndarray) and np.issubdtype(dates.dtype, np.datetime64)) else dates
    return _natural_step(d, "auto")


def seasonal_period(dates: Any) -> tuple[int, str | None]:
    """``(period, freq)`` from the dates' most common step.

    Monthly -> 12, quarterly -> 4, yearly -> 1, weekly -> 52, daily -> 7 (day of week),
    hourly -> 24, minutes -> 60; ``freq`` is the step as a string (``"1M"``, ``"3M"``,
    ``"1D"``, ``"7D"``, ``"1h"``) that :func:`future_dates` steps by. Fewer than two dates:
    ``(1, None)``.

    Example:
        >>> seasonal_period(["1949-01", "1949-02", "1949-03"])
        (12, '1M')
    """
    step = _step(dates)
    if step is None:
        return 1, None
    unit, count = np.datetime_data(step.dtype)[0], int(step.astype(np.int64))
    count *= np.datetime_data(step.dtype)[1]
    if unit == "Y":
        unit, count = "M", 12 * count
    freq = f"{count}{unit}"
    seconds = {"W": 7 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
    if unit == "M":
        period = {1: 12, 3: 4, 6: 2}.get(count, 1)
    elif unit in seconds:
        span = count * seconds[unit]
        period = {7 * 86400: 52, 86400: 7, 3600: 24, 60: 60}.get(span, 1)
        if unit == "W":
            freq = f"{7 * count}D"
    else:
        period = 1
    return period, freq


def future_dates(last_date: Any, horizon: int, freq: str) -> np.ndarray:
    """The ``horizon`` dates after ``last_date``, ``freq`` apart (``"1M"``, ``"1D"``, ...).

    Example:
        >>> [str(d) for d in future_dates("1960-12", 2, "1M")]
        ['1961-01', '1961-02']
    """
    import re

    match = re.fullmatch(r"(\d+)([YMDhms])", str(freq))
    if match is None:
        raise ValueError(f"freq must look like '1M', '3M', '1D', '7D' or '1h', got {freq!r}")
    step = np.timedelta64(int(match.group(1)), match.group(2))
    last = np.datetime64(last_date) if not isinstance(last_date, np.datetime64) else last_date
    if match.group(2) in ("Y", "M"):
        last = last.astype(f"datetime64[{match.group(2)}]")
    return last + step * np.arange(1, int(horizon) + 1)


def default_settings(dates: Any = None, n: int | None = None, horizon: int | None = None
                     ) -> dict[str, Any]:
    """Forecaster arguments chosen from the data: ``period`` and ``freq`` from the dates'
    step, ``horizon`` one period (at least 1), ``look_back`` two periods (at least 8),
    ``seasonal_difference`` when there is a season and ``n`` rows hold at least four
    periods, and ``calendar=["month"]`` for sub-monthly data.

    Example:
        >>> s = default_settings(["1949-01", "1949-02", "1949-03"], n=144)
        >>> s["period"], s["look_back"], s["horizon"], s["seasonal_difference"]
        (12, 24, 12, True)
    """
    period, freq = (1, None) if dates is None else seasonal_period(dates)
    if horizon is None:
        horizon = period if period > 1 else 1
    look_back = max(2 * period, 8)
    seasonal = period > 1 and (n is None or n >= 4 * period)
    return {"period": period, "freq": freq, "horizon": int(horizon), "look_back": look_back,
            "seasonal_difference": seasonal, "difference": False}


# ----------------------------------------------------------------------------- the model
def _member_cell(cell: str | nn.Module, index: int) -> str | nn.Module:
    """Member ``index``'s cell: a name as is; an instance for member 0, fresh copies of its
    config (drawn under that member's seed) for the others."""
    if isinstance(cell, str) or index == 0:
        return cell
    return type(cell).from_config(cell.get_config())


class Forecaster(Configurable, SummaryMixin, nn.Module):
    """Recurrent forecaster with scaling and differencing inside (see the module docstring).

    Args:
        look_back: ``L`` past values each forecast reads.
        horizon: ``H`` values it forecasts.
        strategy: ``"recursive"`` (one step at a time, fed back) or ``"direct"`` (all at once).
        period: ``m``, the seasonal period (1: none).
        seasonal_difference: difference at lag ``m`` inside the model.
        difference: first difference inside the model (after the seasonal one).
        log: forecast the log of a positive series (multiplicative seasonality).
        scaler: ``"standard"``, ``"minmax"`` or None, fitted by :meth:`adapt` on training data.
        num_exogenous: ``E`` exogenous input columns (known in advance over the horizon).
        calendar: calendar features made from the dates (``["month"]``, ``["day_of_week"]``);
            see :func:`rnnkit.data.timeseries.calendar_features`.
        calendar_encoding: ``"cyclic"``, ``"onehot"`` or ``"integer"``.
        freq: the step between dates (``"1M"``, ``"1D"``), for :meth:`forecast_dates`.
        cell: any name of :data:`rnnkit.models.backbone.CELL_NAMES` (``"lstm"``, ``"gru"``,
            ``"elman"``, ``"indrnn"``, ...) or a cell instance with ``input_size = 1 + E + C``
            (copied for the other ensemble members).
        hidden_size, num_layers, dropout: of the recurrent network
            (:class:`~rnnkit.models.backbone.Backbone`).
        cell_options: more keyword arguments for the cell or drop-in layer.
        ensemble: ``K`` networks whose forecasts are averaged.
        seed: member ``i`` is initialised under ``torch.manual_seed(seed + i)``.
        dtype: parameter dtype.

    Shapes: ``forward(x (B, L) or (B, L, 1), covariates (B, L + H, E + C) or None)``
    -> ``(B, H)`` or ``(B, H, 1)`` (as the input). Covariates hold, for the window and the
    horizon rows, the exogenous values (user's units) then the calendar columns;
    :meth:`covariates` builds them.
    """

    def __init__(
        self,
        look_back: int,
        horizon: int = 1,
        *,
        strategy: str = "recursive",
        period: int = 1,
        seasonal_difference: bool = False,
        difference: bool = False,
        log: bool = False,
        scaler: str | None = "standard",
        num_exogenous: int = 0,
        calendar: Sequence[str] | None = None,
        calendar_encoding: str = "cyclic",
        freq: str | None = None,
        cell: str | nn.Module = "lstm",
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
        cell_options: dict[str, Any] | None = None,
        ensemble: int = 1,
        seed: int | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (("look_back", look_back, 1), ("horizon", horizon, 1),
                                 ("period", period, 1), ("num_exogenous", num_exogenous, 0),
                                 ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                                 ("ensemble", ensemble, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"Forecaster: {name} must be an int >= {low}, got {value!r}")
        if strategy not in _STRATEGIES:
            raise ValueError(f"Forecaster: strategy must be 'recursive' or 'direct', got "
                             f"{strategy!r}")
        if scaler is not None and scaler not in _SCALERS:
            raise ValueError(f"Forecaster: scaler must be 'standard', 'minmax' or None, got "
                             f"{scaler!r}")
        if seasonal_difference and period < 2:
            raise ValueError("Forecaster: seasonal_difference needs period >= 2")
        self.look_back, self.horizon, self.strategy = int(look_back), int(horizon), strategy
        self.period = int(period)
        self.seasonal_difference, self.difference, self.log = (bool(seasonal_difference),
                                                                 bool(difference), bool(log))
        self.consumed = self.period * self.seasonal_difference + self.difference  # k
        if self.look_back - self.consumed < 1:
            raise ValueError(
                f"Forecaster: look_back={look_back} leaves no step after differencing "
                f"(seasonal lag {self.period if seasonal_difference else 0} + first "
                f"{int(difference)}); use look_back >= {self.consumed + 1} (two periods: "
                f"{2 * self.period})")
        self.scaler_name = scaler
        self.num_exogenous = int(num_exogenous)
        self.calendar = list(calendar) if calendar else []
        self.calendar_encoding = calendar_encoding
        self.num_calendar = 0
        if self.calendar:
            probe = np.array(["2001-01-01"], dtype="datetime64[D]")
            self.num_calendar = calendar_features(probe, self.calendar, calendar_encoding
                                                  )[0].shape[1]
        self.freq = freq
        self.ensemble_size = int(ensemble)
        dtype = dtype_from_name(dtype, "Forecaster: dtype") if dtype is not None else None
        factory = {"dtype": dtype} if dtype is not None else {}
        width = self.num_exogenous + self.num_calendar  # C_total
        head_out = self.horizon if strategy == "direct" else 1
        members = []
        for i in range(self.ensemble_size):
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(int(seed) + i)
                rnn = Backbone(1 + width, hidden_size=None if isinstance(cell, nn.Module)
                               else hidden_size, cell=_member_cell(cell, i),
                               num_layers=num_layers, dropout=dropout,
                               cell_options=cell_options)
                head_in = rnn.output_size + (self.horizon * width if strategy == "direct"
                                             else 0)
                member = nn.ModuleDict({"rnn": rnn, "head": nn.Linear(head_in, head_out)})
                if dtype is not None:
                    member.to(dtype)
            members.append(member)
        self.members = nn.ModuleList(members)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("target_loc", torch.zeros(1, **factory))
        self.register_buffer("target_scale", torch.ones(1, **factory))
        self.register_buffer("exogenous_loc", torch.zeros(self.num_exogenous, **factory))
        self.register_buffer("exogenous_scale", torch.ones(self.num_exogenous, **factory))

    # ------------------------------------------------------------------ data helpers
    @classmethod
    def for_series(cls, series: TimeSeries | Any, horizon: int | None = None,
                   **overrides: Any) -> Forecaster:
        """A forecaster with :func:`default_settings` for ``series`` (a
        :class:`~rnnkit.data.timeseries.TimeSeries`, or an array without dates), ``log`` when
        every value is positive; ``overrides`` win."""
        ts = series if isinstance(series, TimeSeries) else TimeSeries.from_array(series)
        settings = default_settings(ts.dates, len(ts), horizon)
        settings["log"] = bool(np.all(ts.values[:, 0] > 0))
        settings.update(overrides)
        return cls(**settings)

    @property
    def segment_length(self) -> int:
        """Raw values per training sample: ``L + 1`` (recursive) or ``L + H`` (direct)."""
        return self.look_back + (1 if self.strategy == "recursive" else self.horizon)

    @property
    def covariate_width(self) -> int:
        return self.num_exogenous + self.num_calendar

    def covariates(self, dates: Any = None, exogenous: Any = None) -> np.ndarray | None:
        """``(N, E + C)`` covariate rows (exogenous values, then calendar features of
        ``dates``), or None when the model takes none."""
        parts = []
        if self.num_exogenous:
            if exogenous is None:
                raise ValueError(f"this Forecaster takes {self.num_exogenous} exogenous "
                                 "column(s); pass exogenous=")
            e = np.asarray(exogenous, dtype=np.float64)
            e = e[:, None] if e.ndim == 1 else e
            if e.ndim != 2 or e.shape[1] != self.num_exogenous:
                raise ValueError(f"exogenous must be (N, {self.num_exogenous}), got shape "
                                 f"{e.shape}")
            parts.append(e)
        if self.calendar:
            if dates is None:
                raise ValueError(f"this Forecaster uses calendar features {self.calendar}; "
                                 "pass dates=")
            parts.append(calendar_features(dates, self.calendar, self.calendar_encoding)[0])
        if not parts:
            return None
        if len(parts) == 2 and len(parts[0]) != len(parts[1]):
            raise ValueError(f"{len(parts[0])} exogenous rows but {len(parts[1])} dates")
        return np.concatenate(parts, axis=1)

    def forecast_dates(self, last_date: Any) -> np.ndarray:
        """The ``H`` dates after ``last_date`` (needs ``freq``)."""
        if self.freq is None:
            raise ValueError("this Forecaster has no freq, so it cannot date its forecast")
        return future_dates(last_date, self.horizon, self.freq)

    # ------------------------------------------------------------------ transforms
    def _pre(self, y: Tensor) -> Tensor:
        """Step 1: log (checked)."""
        if not self.log:
            return y
        if bool((y <= 0).any()):
            raise ValueError(f"Forecaster(log=True) needs positive values, got {y.min().item()}")
        return torch.log(y)

    def _differences(self, w: Tensor) -> Tensor:
        """Step 2 along the last axis: ``(B, S)`` -> ``(B, S - k)``."""
        if self.seasonal_difference:
            w = w[:, self.period:] - w[:, :-self.period]
        if self.difference:
            w = w[:, 1:] - w[:, :-1]
        return w

    def _scale(self, d: Tensor) -> Tensor:
        return (d - self.target_loc) / self.target_scale

    def _integrate(self, window: Tensor, z: Tensor) -> Tensor:
        """Inverse of steps 3, 2, 1 for the future: window ``(B, L)`` user units, ``z``
        ``(..., B, H)`` scaled differences -> ``(..., B, H)`` user units."""
        w = self._pre(window).to(z.dtype)  # (B, L)
        d = z * self.target_scale + self.target_loc  # (..., B, H)
        if self.difference:
            s_hist = w[:, self.period:] - w[:, :-self.period] if self.seasonal_difference else w
            d = s_hist[:, -1:] + torch.cumsum(d, dim=-1)  # undo the first difference
        if self.seasonal_difference:
            m = self.period
            values = list(w.unbind(-1))  # L tensors (B,)
            L = len(values)
            out = []
            for h in range(d.shape[-1]):
                previous = values[L + h - m] if h < m else out[h - m]
                out.append(previous + d[..., h])
            d = torch.stack(out, dim=-1)
        return torch.exp(d) if self.log else d

    def _scaled_covariates(self, c: Tensor) -> Tensor:
        if self.num_exogenous:
            e = (c[..., :self.num_exogenous] - self.exogenous_loc) / self.exogenous_scale
            c = torch.cat([e, c[..., self.num_exogenous:]], dim=-1)
        return c

    @torch.no_grad()
    def adapt(self, values: Any, exogenous: Any = None) -> Forecaster:
        """Fit the scalers on the training part (Keras' ``Normalization.adapt``): ``values``
        ``(N,)`` the target in the user's units, ``exogenous`` ``(N, E)``. Returns self."""
        y = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(y) < self.consumed + 2:
            raise ValueError(f"adapt needs at least {self.consumed + 2} values, got {len(y)}")
        w = self._pre(torch.as_tensor(y[None]))
        d = self._differences(w)[0].numpy()
        if self.scaler_name is not None:
            scaler = _SCALERS[self.scaler_name]().fit(d)
            loc, scale = ((scaler.mean, scaler.scale) if self.scaler_name == "standard"
                          else (scaler.data_min, scaler.data_range))
            self.target_loc.copy_(torch.as_tensor(loc))
            self.target_scale.copy_(torch.as_tensor(scale))
        if self.num_exogenous:
            if exogenous is None:
                raise ValueError(f"adapt: this Forecaster takes {self.num_exogenous} exogenous "
                                 "column(s); pass exogenous=")
            e = np.asarray(exogenous, dtype=np.float64)
            e = e[:, None] if e.ndim == 1 else e
            if e.shape != (len(y), self.num_exogenous):
                raise ValueError(f"adapt: exogenous must be ({len(y)}, {self.num_exogenous}), "
                                 f"got {e.shape}")
            scaler = StandardScaler().fit(e)
            self.exogenous_loc.copy_(torch.as_tensor(scaler.mean))
            self.exogenous_scale.copy_(torch.as_tensor(scaler.scale))
        self.fitted.fill_(True)
        return self

    # ------------------------------------------------------------------ checks
    def _check(self, x: Tensor, covariates: Tensor | None, length: int, what: str
               ) -> tuple[Tensor, Tensor | None]:
        # torch.export cannot branch on a buffer's value; an exported model was fitted
        if not torch.compiler.is_exporting() and not bool(self.fitted):
            raise RuntimeError("Forecaster: the scalers are not fitted; call "
                               "model.adapt(training_values) first (forecast_csv does)")
        if not isinstance(x, Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if x.dim() == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.dim() != 2 or x.shape[1] != length:
            raise ValueError(f"Forecaster: {what} must be (B, {length}) or (B, {length}, 1), "
                             f"got shape {tuple(x.shape)}")
        x = x.to(self.target_loc.dtype)
        width = self.covariate_width
        if width == 0:
            if covariates is not None:
                raise ValueError("Forecaster: got covariates, but the model has no exogenous "
                                 "or calendar inputs")
            return x, None
        need = length if what == "segments" else length + self.horizon
        if covariates is None:
            raise ValueError(f"Forecaster: covariates (B, {need}, {width}) are required "
                             f"({self.num_exogenous} exogenous + {self.num_calendar} calendar)")
        c = torch.as_tensor(covariates).to(x.dtype)
        if c.shape != (x.shape[0], need, width):
            raise ValueError(f"Forecaster: covariates must be (B={x.shape[0]}, {need}, "
                             f"{width}), got shape {tuple(c.shape)}")
        return x, self._scaled_covariates(c)

    # ------------------------------------------------------------------ the network
    def _inputs(self, z: Tensor, c: Tensor | None, first: int) -> Tensor:
        """``[z_t, c_{t+1}]`` for z's steps; z's step 0 sits at raw position ``first``."""
        z = z.unsqueeze(-1)  # (B, T', 1)
        if c is None:
            return z
        return torch.cat([z, c[:, first + 1:first + 1 + z.shape[1]]], dim=-1)  # (B, T', 1+C)

    def forward_members(self, x: Tensor, covariates: Tensor | None = None,
                        lengths: Tensor | None = None) -> Tensor:
        """Each member's forecast: ``(K, B, H)`` in the user's units."""
        L, H, k = self.look_back, self.horizon, self.consumed
        if lengths is not None and bool((torch.as_tensor(lengths) != L).any()):
            raise ValueError(f"Forecaster reads full windows of look_back={L} steps; got "
                             f"lengths {torch.as_tensor(lengths).tolist()}")
        x, c = self._check(x, covariates, L, "x")
        z = self._scale(self._differences(self._pre(x)))  # (B, T')
        inputs = self._inputs(z, c, k)  # (B, T', 1+C)
        outs = []
        for member in self.members:
            out, state = member["rnn"](inputs)  # (B, T', hidden)
            last = out[:, -1]  # (B, hidden)
            if self.strategy == "direct":
                if c is not None:
                    last = torch.cat([last, c[:, L:L + H].flatten(1)], dim=1)
                outs.append(member["head"](last))  # (B, H)
                continue
            step = member["head"](last)  # (B, 1)
            steps = [step]
            for h in range(1, H):
                feed = step.unsqueeze(1)  # (B, 1, 1)
                if c is not None:
                    feed = torch.cat([feed, c[:, L + h:L + h + 1]], dim=-1)  # (B, 1, 1+C)
                out, state = member["rnn"](feed, state=state)
                step = member["head"](out[:, -1])
                steps.append(step)
            outs.append(torch.cat(steps, dim=1))  # (B, H)
        return self._integrate(x, torch.stack(outs))  # (K, B, H)

    def example_input(self, batch_size: int = 2, steps: int | None = None) -> Any:
        """A batch for :meth:`summary`: ``look_back`` positive values per row (``steps`` is
        fixed by ``look_back``), and zero covariates when the model takes them."""
        dtype, device = self.target_loc.dtype, self.target_loc.device
        x = 10.0 + torch.rand(batch_size, self.look_back, dtype=dtype, device=device)
        if self.covariate_width == 0:
            return x
        return x, torch.zeros(batch_size, self.look_back + self.horizon, self.covariate_width,
                              dtype=dtype, device=device)

    def forward(self, x: Tensor, covariates: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """Forecast in the user's units, the mean over the ensemble: ``(B, H)`` for ``x (B, L)``,
        ``(B, H, 1)`` for ``x (B, L, 1)`` (the layout of
        :func:`~rnnkit.data.timeseries.prepare_windows`' targets)."""
        out = self.forward_members(x, covariates, lengths).mean(0)  # (B, H)
        return out.unsqueeze(-1) if isinstance(x, Tensor) and x.dim() == 3 else out

    def training_loss(self, segments: Tensor, covariates: Tensor | None = None) -> Tensor:
        """Mean squared error in the scaled, differenced space, averaged over members.

        ``segments (B, S)`` with ``S`` = :attr:`segment_length` raw values (window then
        targets), ``covariates (B, S, E + C)``. Recursive: one-step targets at every window
        step (teacher forcing); direct: the ``H`` targets after the window.
        """
        S, L = self.segment_length, self.look_back
        y, c = self._check(segments, covariates, S, "segments")
        z = self._scale(self._differences(self._pre(y)))  # (B, S - k)
        losses = []
        for member in self.members:
            if self.strategy == "recursive":
                out, _ = member["rnn"](self._inputs(z[:, :-1], c, self.consumed))
                prediction = member["head"](out)[..., 0]  # (B, S - k - 1)
                target = z[:, 1:]
            else:
                window = z[:, :L - self.consumed]
                out, _ = member["rnn"](self._inputs(window, c, self.consumed))
                last = out[:, -1]
                if c is not None:
                    last = torch.cat([last, c[:, L:L + self.horizon].flatten(1)], dim=1)
                prediction = member["head"](last)  # (B, H)
                target = z[:, -self.horizon:]
            losses.append(torch.mean((prediction - target) ** 2))
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ NumPy convenience
    @torch.no_grad()
    def forecast(self, history: Any, dates: Any = None, exogenous: Any = None,
                 future_exogenous: Any = None, members: bool = False) -> np.ndarray:
        """Forecast the ``H`` values after ``history`` (``(N,)``, N >= L, user's units).

        ``dates`` (N,) are needed for calendar features (future dates follow ``freq``);
        ``exogenous (N, E)`` and ``future_exogenous (H, E)`` for exogenous columns.
        Returns ``(H,)``, or ``(K, H)`` with ``members=True``.
        """
        y = np.asarray(history, dtype=np.float64).reshape(-1)
        L, H = self.look_back, self.horizon
        if len(y) < L:
            raise ValueError(f"forecast needs at least look_back={L} values, got {len(y)}")
        covariates = None
        if self.covariate_width:
            all_dates = None
            if self.calendar:
                if dates is None:
                    raise ValueError(f"this Forecaster uses calendar features {self.calendar}; "
                                     "pass dates=")
                d = np.asarray(TimeSeries.from_array(np.zeros(len(dates)), dates=dates).dates)
                freq = self.freq if self.freq is not None else seasonal_period(d)[1]
                if freq is None:
                    raise ValueError("forecast: cannot tell the step between the dates; build "
                                     "the Forecaster with freq= ('1M', '1D', ...)")
                ahead = future_dates(d[-1], H, freq).astype(d.dtype)
                all_dates = np.concatenate([d[-L:], ahead])
            ex = None
            if self.num_exogenous:
                if exogenous is None or future_exogenous is None:
                    raise ValueError("this Forecaster takes exogenous columns: pass exogenous= "
                                     f"(N, {self.num_exogenous}) and future_exogenous= "
                                     f"(H={H}, {self.num_exogenous})")
                past = np.asarray(exogenous, dtype=np.float64).reshape(len(y), -1)[-L:]
                future = np.asarray(future_exogenous, dtype=np.float64).reshape(H, -1)
                ex = np.concatenate([past, future])
            covariates = torch.as_tensor(self.covariates(all_dates, ex)[None])
        was_training = self.training
        self.eval()
        try:
            out = self.forward_members(torch.as_tensor(y[None, -L:]), covariates)[:, 0]
        finally:
            self.train(was_training)
        out = out.double().numpy()
        return out if members else out.mean(0)
