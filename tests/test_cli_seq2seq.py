"""`rnnkit train / evaluate / predict / translate` on a tiny seq2seq run, and the usage errors
of translate (exit status 2, one line on stderr, no traceback)."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.test_cli import ROOT, assert_usage_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
pytest.importorskip("sacrebleu")

TINY = ["--set", "model.hidden_size=16", "--set", "model.options={ embedding_dim = 8 }",
        "--set", "data.num_samples=96", "--set", "data.num_validation=8",
        "--set", "data.num_test=16", "--set", "trainer.epochs=1",
        "--set", "trainer.scheduler={}", "--set", "trainer.progress=none"]


@pytest.fixture(scope="module")
def dates_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("cli") / "dates"
    result = run("train", ROOT / "examples" / "configs" / "seq2seq_dates.toml", *TINY,
                 "--output", directory)
    assert result.exit_code == 0, result.output
    assert "exact_match" in result.output
    yield directory
    torch.set_num_threads(threads)


def test_translate_prints_hypotheses_and_writes_the_heat_map(dates_run, tmp_path):
    png = tmp_path / "may.png"
    result = run("translate", dates_run, "Saturday, May 3, 1997", "--beam-width", "3",
                 "--n-best", "2", "--attention-png", png)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and all("score" in line for line in lines[:2])
    scores = [float(line.rsplit("score", 1)[1]) for line in lines[:2]]
    assert scores[0] >= scores[1]
    assert lines[2] == f"wrote {png}" and png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_and_predict(dates_run, tmp_path):
    result = run("evaluate", dates_run)
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["loss", "accuracy", "exact_match", "token_accuracy", "bleu"]
    out = tmp_path / "p.csv"
    assert run("predict", dates_run, "-o", out).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and set(rows[0]) == {"sample", "source", "prediction", "score"}


@pytest.mark.parametrize("args, fragments", [
    (["3 Mayq 1997"], ["outside the source vocabulary", "'q'"]),
    (["3 May 1997", "--max-length", "0"], ["max length must be an integer of at least 1"]),
    (["3 May 1997", "--beam-width", "0"], ["beam width must be an integer of at least 1"]),
    (["3 May 1997", "--n-best", "2"], ["n-best 2 exceeds the beam width 1"]),
])
def test_translate_usage_errors(dates_run, args, fragments):
    assert_usage_error(run("translate", dates_run, *args), *fragments)


def test_translate_needs_a_seq2seq_run(tmp_path):
    assert_usage_error(run("translate", tmp_path / "missing", "x"), "no such run directory")
