"""`rnnkit train / evaluate / predict / generate / explain` end to end on tiny generated data,
and their usage errors (exit status 2, one line on stderr, no traceback)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from rnnkit.data import write_ctf
from tests.test_cli import assert_usage_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_ctf_regression(path, count: int, seed: int) -> None:
    """Sequences of 3..8 values of a line with a random slope; the target is the next value."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(count):
        steps, slope = int(rng.integers(3, 9)), float(rng.uniform(-1, 1))
        values = slope * np.arange(steps + 1) / 8
        sequences.append({"x": values[:steps, None], "y": [[values[steps]]]})
    write_ctf(path, sequences)


CTF_CONFIG = """
[model]
type = "regressor"
cell = "gru"
hidden_size = 8

[data]
format = "ctf"
path = "train.ctf"
test = "test.ctf"
batch_size = 40
streams.x = { field = "x", shape = 1 }
streams.y = { field = "y", shape = 1 }
input_map = { input = "x", target = "y" }

[trainer]
lr = 0.02
epochs = 2
progress = "none"
metrics = ["rmse"]
"""


@pytest.fixture
def ctf_config(tmp_path):
    write_ctf_regression(tmp_path / "train.ctf", 60, seed=0)
    write_ctf_regression(tmp_path / "test.ctf", 20, seed=1)
    path = tmp_path / "ctf.toml"
    path.write_text(CTF_CONFIG)
    return path


@pytest.fixture
def text_config(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 20)
    path = tmp_path / "lm.toml"
    path.write_text('[model]\ntype = "language_model"\nhidden_size = 12\n'
                    '[data]\nformat = "text"\npath = "corpus.txt"\nseq_len = 16\n'
                    'batch_size = 8\nsplits = [0.8, 0.1, 0.1]\n'
                    '[trainer]\nlr = 0.02\nepochs = 2\nprogress = "none"\n')
    return path


def test_train_evaluate_predict_on_ctf(ctf_config, tmp_path):
    run_dir = tmp_path / "run"
    result = run("train", ctf_config, "--output", run_dir)
    assert result.exit_code == 0, result.output
    assert "saved the model to" in result.output
    for name in ("config.json", "model.safetensors", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["extra"]["run"]["model"]["cell"] == "gru"
    test_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]

    # evaluate on the test file = the test metrics written at the end of training
    result = run("evaluate", run_dir, tmp_path / "test.ctf")
    assert result.exit_code == 0, result.output
    shown = dict(line.split() for line in result.output.splitlines())
    assert float(shown["rmse"]) == pytest.approx(test_metrics["rmse"], rel=1e-5)

    # predict: one row per test sequence, in file order, equal to the model's own output
    out = tmp_path / "predictions.csv"
    result = run("predict", run_dir, tmp_path / "test.ctf", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["sample", "output_0"] and len(rows) == 21
    import rnnkit
    from rnnkit.data import read_ctf

    model = rnnkit.load(run_dir)
    first = read_ctf(tmp_path / "test.ctf", _streams())[0]["x"]
    with torch.no_grad():
        expected = model(torch.as_tensor(first, dtype=torch.float32)[None])
    assert float(rows[1][1]) == pytest.approx(float(expected), abs=1e-5)


def _streams():
    from rnnkit.data import StreamDef, StreamDefs

    return StreamDefs(x=StreamDef(field="x", shape=1), y=StreamDef(field="y", shape=1))


def test_train_a_language_model_and_generate(text_config, tmp_path):
    run_dir = tmp_path / "lm"
    result = run("train", text_config, "--output", run_dir, "--set", "trainer.epochs=1")
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output  # the test split's metrics
    one = run("generate", run_dir, "--prompt", "to be", "--length", "30", "--seed", "3")
    two = run("generate", run_dir, "--prompt", "to be", "--length", "30", "--seed", "3")
    assert one.exit_code == 0, one.output
    text = one.output.rstrip("\n")
    assert text.startswith("to be") and len(text) == len("to be") + 30
    assert one.output == two.output  # the same seed gives the same text
    greedy = run("generate", run_dir, "--prompt", "to", "--length", "5", "--temperature", "0")
    assert greedy.exit_code == 0 and len(greedy.output.rstrip("\n")) == 7


def test_train_mnist1d_classifier_and_predict_classes(tmp_path):
    run_dir = tmp_path / "mnist1d"
    result = run("train", _example("mnist1d_classifier"), "--output", run_dir,
                 "--set", "data.num_samples=200", "--set", "model.hidden_size=8",
                 "--set", "trainer.epochs=1", "--set", "trainer.progress=none")
    assert result.exit_code == 0, result.output
    out = tmp_path / "classes.csv"
    result = run("predict", run_dir, "-o", out)  # the run's own test split
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0][:2] == ["sample", "prediction"] and len(rows[0]) == 12
    probabilities = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert [int(row[1]) for row in rows[1:]] == probabilities.argmax(1).tolist()


def test_resume_continues_a_run(ctf_config, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run("train", ctf_config, "-o", whole).exit_code == 0
    assert run("train", ctf_config, "-o", parts, "--set", "trainer.epochs=1").exit_code == 0
    first_epoch = list(csv.DictReader((parts / "history.csv").open()))
    result = run("train", ctf_config, "-o", parts, "--resume")
    assert result.exit_code == 0, result.output
    history = list(csv.DictReader((parts / "history.csv").open()))
    assert [int(row["epoch"]) for row in history] == [0, 1]
    assert history[0] == first_epoch[0]  # epoch 0 was not trained again (its timing is kept)
    import rnnkit

    a, b = rnnkit.load(whole).state_dict(), rnnkit.load(parts).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run


def test_explain_names_the_path_of_each_layer(ctf_config):
    result = run("explain", ctf_config, "--set", "model.num_layers=2")
    assert result.exit_code == 0, result.output
    assert "SequenceRegressor (regressor)" in result.output
    assert "rnnkit.GRU(1, 8, num_layers=2" in result.output and "path:" in result.output
    result = run("explain", ctf_config, "--set", "model.cell=indrnn")
    # compiled where the kernels are built (IndRNN plugs into them), else the Python loop
    assert re.search(r"IndRNNCell -> (compiled|loop)", result.output), result.output


def _example(name: str):
    from tests.test_cli import ROOT

    return ROOT / "examples" / "configs" / f"{name}.toml"


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, fragments", [
    (["train", "missing.toml"], ["missing.toml: no such file"]),
    (["train", "{ctf}", "--set", "trainer.lr"], ["--set 'trainer.lr': expected SECTION.KEY=VALUE"]),
    (["train", "{ctf}", "--set", "model.hiden_size=3"],
     ["[model] has no key 'hiden_size'; did you mean 'hidden_size'?"]),
    (["train", "{ctf}", "--set", "model.hidden_size=big"],
     ["model.hidden_size must be an integer, got 'big'"]),
    (["train", "{ctf}", "--set", "model.cell=lstn"], ["lstm"]),
    (["train", "{ctf}", "--set", "data.path=nope.ctf"], ["nope.ctf: no such file"]),
    (["train", "{ctf}", "--set", "data.input_map.target=z"], ["'z' is not a stream"]),
    (["train", "{ctf}", "--resume", "-o", "{tmp}/fresh"], ["holds no checkpoint"]),
    (["train", "{bad_key}"], ["[trainer] has no key 'learning_rate'; did you mean"]),
    (["train", "{bad_toml}"], ["not valid TOML"]),
    (["train", "{bad_ctf}"], ["bad.ctf", "line 2"]),
    (["evaluate", "{tmp}"], ["is not a run directory"]),
    (["evaluate", "{tmp}/nothing"], ["no such run directory"]),
    (["predict", "{tmp}", "x.csv"], ["is not a run directory"]),
    (["generate", "{tmp}", "--prompt", "a"], ["is not a run directory"]),
    (["explain", "{bad_key}"], ["did you mean 'lr'?"]),
    (["generate", "{tmp}"], ["Missing option '--prompt'"]),
])
def test_usage_errors(args, fragments, ctf_config, tmp_path):
    (tmp_path / "bad_key.toml").write_text(CTF_CONFIG.replace("lr = 0.02", "learning_rate = 1"))
    (tmp_path / "bad_toml.toml").write_text("[model\n")
    (tmp_path / "bad.ctf").write_text("0 |x 1 |y 2\n0 |x one\n")
    (tmp_path / "bad_ctf.toml").write_text(CTF_CONFIG.replace("train.ctf", "bad.ctf"))
    names = {"ctf": ctf_config, "tmp": tmp_path, "bad_key": tmp_path / "bad_key.toml",
             "bad_toml": tmp_path / "bad_toml.toml", "bad_ctf": tmp_path / "bad_ctf.toml"}
    assert_usage_error(run(*(a.format(**names) for a in args)), *fragments)


def test_a_run_is_never_overwritten(ctf_config, tmp_path):
    run_dir = tmp_path / "run"
    assert run("train", ctf_config, "-o", run_dir, "--set", "trainer.epochs=1").exit_code == 0
    assert_usage_error(run("train", ctf_config, "-o", run_dir), "already holds a run",
                       "--resume")
    assert_usage_error(run("generate", run_dir, "--prompt", "a"), "not a LanguageModel")


def test_every_example_config_runs_a_few_steps(tmp_path):
    """Every configuration in examples/configs/ loads, and trains for a tiny number of steps
    with overrides that shrink it."""
    from tests.test_cli import ROOT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    shrink = {
        "mnist1d_classifier": ["data.num_samples=120", "model.hidden_size=4"],
        "shakespeare_char_lm": [f"data.path={corpus}", "data.seq_len=16", "model.hidden_size=8",
                                "model.num_layers=1", "trainer.epoch_size=16"],
        "cntk_ctf_regression": ["trainer.epoch_size=200", "model.hidden_size=4"],
        "airline": ["trainer.epochs=2"],
    }
    configs = sorted((ROOT / "examples" / "configs").glob("*.toml"))
    assert {"mnist1d_classifier", "shakespeare_char_lm", "cntk_ctf_regression"} <= {
        c.stem for c in configs}
    for config in configs:
        overrides = [*shrink.get(config.stem, []), "trainer.epochs=1", "trainer.progress=none"]
        args = ["train", config, "-o", tmp_path / config.stem]
        for override in overrides:
            args += ["--set", override]
        result = run(*args)
        assert result.exit_code == 0, (config.stem, result.output)
        assert (tmp_path / config.stem / "model.safetensors").is_file(), config.stem


def test_trainer_section_covers_every_trainer_and_fit_option():
    """Every argument of rnnkit.Trainer and its fit is a [trainer] key, except the objects a
    TOML file cannot hold (the model, callbacks) and what the run itself decides."""
    import inspect

    import rnnkit
    from rnnkit.workflows.config import TrainerConfig

    keys = set(TrainerConfig.__dataclass_fields__)
    decided_by_the_run = {"self", "model", "callbacks", "verbose", "train", "validation",
                          "checkpoint_dir", "resume", "batch_size", "shuffle"}
    for function in (rnnkit.Trainer.__init__, rnnkit.Trainer.fit):
        for name in inspect.signature(function).parameters:
            assert name in keys or name in decided_by_the_run, f"[trainer] lacks {name}"


def test_a_scheduler_by_name(ctf_config, tmp_path):
    result = run("train", ctf_config, "-o", tmp_path / "run", "--set",
                 "trainer.scheduler={ name = 'StepLR', step_size = 1, gamma = 0.5 }")
    assert result.exit_code == 0, result.output
    lrs = [float(row["lr"]) for row in csv.DictReader((tmp_path / "run" / "history.csv").open())]
    assert lrs[1] == pytest.approx(lrs[0] / 2) and lrs[0] == pytest.approx(0.02)  # halved per epoch
    assert_usage_error(run("train", ctf_config, "--set", "trainer.scheduler.name=StepLr"),
                       "did you mean 'StepLR'?")


def test_train_on_idx_files(tmp_path):
    """MNIST-style IDX files (images read row by row) through format = "idx"."""
    from rnnkit.data import write_idx

    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("t10k", 12)):
        labels = rng.integers(0, 3, count).astype(np.uint8)
        images = (rng.integers(0, 60, (count, 28, 28)) + 60 * labels[:, None, None]).astype(
            np.uint8)  # the class sets the brightness
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    config = tmp_path / "idx.toml"
    config.write_text('[model]\ntype = "classifier"\nhidden_size = 8\n'
                      '[data]\nformat = "idx"\npath = "."\nbatch_size = 8\n'
                      '[trainer]\nepochs = 1\nprogress = "none"\n')
    result = run("train", config, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output  # the test split (t10k files) was evaluated
    assert_usage_error(run("train", config, "-o", tmp_path / "other", "--set",
                           f"data.path={tmp_path / 'empty'}"), "empty")


def test_a_tagger_on_ctf_labels_each_step(tmp_path):
    """A label per step (a sparse CTF stream): the tagger learns the sign of the first
    feature, and predict writes one row per real step (none for the padding)."""
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(60):
        x = rng.standard_normal((int(rng.integers(3, 9)), 2))
        sequences.append({"x": x, "tag": [int(v > 0) for v in x[:, 0]]})
    write_ctf(tmp_path / "tags.ctf", sequences, sparse={"tag": 2})
    config = tmp_path / "tagger.toml"
    config.write_text('[model]\ntype = "tagger"\nhidden_size = 8\n'
                      '[data]\nformat = "ctf"\npath = "tags.ctf"\ntest = "tags.ctf"\n'
                      'batch_size = 50\nstreams.x = { field = "x", shape = 2 }\n'
                      'streams.tag = { field = "tag", shape = 2, is_sparse = true }\n'
                      'input_map = { input = "x", target = "tag" }\n'
                      '[trainer]\nlr = 0.05\nepochs = 3\nprogress = "none"\n')
    result = run("train", config, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] > 0.8  # chance is 0.5
    out = tmp_path / "tags.csv"
    assert run("predict", tmp_path / "run", tmp_path / "tags.ctf", "-o", out).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == sum(len(s["x"]) for s in sequences)
    right = sum(int(r["prediction"]) == sequences[int(r["sample"])]["tag"][int(r["step"])]
                for r in rows)
    assert right / len(rows) > 0.8
