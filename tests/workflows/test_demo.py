"""run_demo: the airline demo end to end (short training here; `rnnkit demo` trains fully)."""

import rnnkit
from rnnkit.models.forecaster import Forecaster
from rnnkit.workflows.demo import run_demo


def test_demo_reports_against_the_baselines_and_writes_its_files(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", echo=lines.append, epochs=3, patience=3, ensemble=1,
                      sarima=False)
    text = "\n".join(lines)
    for name in ("rnnkit", "seasonal_naive", "persistence"):
        assert name in result.metrics and name in text
    ours, naive = result.metrics["rnnkit"]["rmse"], result.metrics["seasonal_naive"]["rmse"]
    assert f"rnnkit RMSE {ours:.1f}" in text and f"seasonal naive {naive:.1f}" in text
    assert "Next:" in text and "rnnkit forecast" in text
    for name in ("forecast.png", "forecast.csv", "holdout.csv", "metrics.csv"):
        assert (tmp_path / "demo" / name).is_file()
    assert isinstance(rnnkit.load(tmp_path / "demo"), Forecaster)
    assert [str(d) for d in result.dates[:2]] == ["1961-01", "1961-02"]
