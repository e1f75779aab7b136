"""examples/configs/airline.toml: a valid run configuration whose [model] options are what
forecast_csv takes (rnnkit train hands a forecaster config to it)."""

from pathlib import Path

from rnnkit.models.forecaster import Forecaster
from rnnkit.workflows.config import load_config
from rnnkit.workflows.forecast import forecast_csv

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "airline.toml"


def test_airline_config_runs_through_forecast_csv():
    config = load_config(CONFIG)
    assert config.model.type == "forecaster" and Path(config.data.path).is_file()
    options = {**config.model.options, "ensemble": 1}  # one member is enough to check keys
    result = forecast_csv(config.data.path, target=config.data.target[0],
                          date_column=config.data.date_column, output=None, epochs=2,
                          lr=config.trainer.lr, batch_size=config.data.batch_size,
                          seed=config.trainer.seed, cell=config.model.cell,
                          hidden_size=config.model.hidden_size, sarima=False, **options)
    model = result.model
    assert isinstance(model, Forecaster)
    assert (model.look_back, model.horizon, model.period, model.log) == (24, 12, 12, True)
    assert [str(d) for d in result.dates[:1]] == ["1961-01"]
