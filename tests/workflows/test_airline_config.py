"""examples/configs/airline.toml: a valid run configuration whose [model] builds the
Forecaster and whose [data] splits hold out the last year, as rnnkit forecast does."""

from pathlib import Path

from rnnkit.data.timeseries import chronological_split
from rnnkit.models.forecaster import Forecaster
from rnnkit.workflows.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "airline.toml"


def test_airline_config_builds_the_forecaster():
    config = load_config(CONFIG)
    assert config.model.type == "forecaster" and Path(config.data.path).is_file()
    model = Forecaster(**config.model.options, cell=config.model.cell,
                       hidden_size=config.model.hidden_size, num_layers=config.model.num_layers)
    assert (model.look_back, model.horizon) == (config.data.look_back, config.data.horizon)
    train, val, test = chronological_split(144, *config.data.splits)
    assert (train.stop, val.stop - val.start, test.stop - test.start) == (120, 12, 12)
