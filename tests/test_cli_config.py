"""rnnkit.workflows.config: the TOML run configuration, --set overrides, closest-name errors."""

from __future__ import annotations

import dataclasses

import pytest

from rnnkit.errors import UsageError
from rnnkit.workflows.config import (
    SECTIONS,
    DataConfig,
    ModelConfig,
    TrainerConfig,
    load_config,
    parse_config,
    parse_override,
)

MINIMAL = {"model": {"type": "classifier"}, "data": {"format": "mnist1d"}}


def write(tmp_path, text: str, name: str = "run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_fill_every_key():
    config = parse_config(MINIMAL)
    assert config.model == ModelConfig(type="classifier")
    assert config.data == DataConfig(format="mnist1d")
    assert config.trainer == TrainerConfig()
    assert config.model.cell == "lstm" and config.data.batch_size == 32


def test_to_dict_round_trips():
    config = parse_config(MINIMAL, overrides=["model.cell_options.layer_norm=true",
                                              "trainer.metrics=accuracy"])
    again = parse_config(config.to_dict())
    assert again == config
    assert again.model.cell_options == {"layer_norm": True}
    assert again.trainer.metrics == ["accuracy"]  # one string becomes a list


def test_load_config_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", '[model]\ntype = "regressor"\n[data]\nformat = "csv"\n'
                 'path = "series.csv"\ntarget = "y"\n')
    config = load_config(path)
    assert config.data.path == str(tmp_path / "sub" / "series.csv")
    assert config.data.target == ["y"]
    assert config.source == str(path)


def test_set_paths_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, '[model]\ntype = "language_model"\n[data]\nformat = "text"\n'
                 'path = "/elsewhere/a.txt"\n')
    config = load_config(path, ["data.path=b.txt"])
    assert config.data.path == str(tmp_path / "b.txt")


@pytest.mark.parametrize("text, parts, value", [
    ("trainer.lr=0.001", ["trainer", "lr"], 0.001),
    ("trainer.lr=1e-3", ["trainer", "lr"], 1e-3),
    ("model.hidden_size=64", ["model", "hidden_size"], 64),
    ("model.bidirectional=true", ["model", "bidirectional"], True),
    ("model.cell=lstm", ["model", "cell"], "lstm"),
    ('model.cell="gru"', ["model", "cell"], "gru"),
    ("data.splits=[0.7, 0.3]", ["data", "splits"], [0.7, 0.3]),
    ("trainer.metrics = accuracy", ["trainer", "metrics"], "accuracy"),
    ("data.streams.x={ field = 'x', shape = 1 }", ["data", "streams", "x"],
     {"field": "x", "shape": 1}),
    ("data.path=a=b.csv", ["data", "path"], "a=b.csv"),  # only the first '=' splits
])
def test_parse_override_reads_toml_values(text, parts, value):
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text, message", [
    ("trainer.lr", "expected SECTION.KEY=VALUE"),
    ("lr=0.1", "expected SECTION.KEY=VALUE"),
    ("trainer.=0.1", "expected SECTION.KEY=VALUE"),
    ("trainer.lr=", "no value after '='"),
    ("trainer.metrics=[accuracy", "is not a valid TOML value"),
])
def test_parse_override_refuses_bad_syntax(text, message):
    with pytest.raises(UsageError, match=message):
        parse_override(text)


def test_set_types_follow_the_schema():
    config = parse_config(MINIMAL, overrides=["trainer.lr=1", "model.dropout=0"])
    assert isinstance(config.trainer.lr, float) and config.trainer.lr == 1.0
    assert isinstance(config.model.dropout, float)
    with pytest.raises(UsageError, match=r"model.hidden_size must be an integer, got 'big'"):
        parse_config(MINIMAL, overrides=["model.hidden_size=big"])
    with pytest.raises(UsageError, match=r"model.hidden_size must be an integer, got 1.5"):
        parse_config(MINIMAL, overrides=["model.hidden_size=1.5"])
    with pytest.raises(UsageError, match=r"model.bidirectional must be true or false"):
        parse_config(MINIMAL, overrides=["model.bidirectional=1"])


@pytest.mark.parametrize("overrides, message", [
    (["modle.cell=gru"], r"no section \[modle\]; did you mean 'model'\?"),
    (["model.hiden_size=3"], r"\[model\] has no key 'hiden_size'; did you mean 'hidden_size'\?"),
    (["trainer.learning_rate=3"], r"\[trainer\] has no key 'learning_rate'"),
    (["model.cell.x=3"], r"model.cell is not a table"),
])
def test_set_names_the_closest_key(overrides, message):
    with pytest.raises(UsageError, match=message):
        parse_config(MINIMAL, overrides=overrides)


@pytest.mark.parametrize("raw, message", [
    ({"model": {"type": "classifier", "hiden_size": 3}, "data": {"format": "mnist1d"}},
     r"^\[model\] has no key 'hiden_size'; did you mean 'hidden_size'\?$"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d", "batchsize": 3}},
     r"did you mean 'batch_size'\?"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d"}, "trainer": {"epoch": 3}},
     r"\[trainer\] has no key 'epoch'; did you mean 'epochs'\?"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d"}, "traner": {}},
     r"unknown section \[traner\]; did you mean 'trainer'\?"),
    ({"model": {"type": "clasifier"}, "data": {"format": "mnist1d"}},
     r"model.type = 'clasifier' is not one of .*; did you mean 'classifier'\?"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist"}},
     r"data.format = 'mnist' is not one of csv, ctf, idx, mnist1d, seq2seq, text; did you mean "
     r"'mnist1d'\?"),
    ({"model": {"hidden_size": 3}, "data": {"format": "mnist1d"}}, r"\[model\] needs type"),
    ({"model": {"type": "classifier"}}, r"needs a \[data\] section"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d", "seq_len": 5}},
     r"data.seq_len applies to format text, not 'mnist1d'"),
    ({"model": {"type": "classifier"}, "data": {"format": "csv"}}, r"format 'csv' needs path"),
    ({"model": {"type": "regressor"}, "data": {"format": "csv", "path": "a.csv"}},
     r"needs target"),
    ({"model": {"type": "regressor"}, "data": {"format": "ctf", "path": "a.ctf"}},
     r"format 'ctf' needs streams"),
    ({"model": {"type": "regressor"},
      "data": {"format": "ctf", "path": "a", "streams": {"x": {"field": "x", "shape": 1}},
               "input_map": {"input": "x"}}}, r"data.input_map needs target"),
    ({"model": {"type": "module"}, "data": {"format": "mnist1d"}}, r"needs class_name"),
    ({"model": {"type": "language_model"}, "data": {"format": "mnist1d"}},
     r"reads format 'text'"),
    ({"model": {"type": "classifier", "hidden_size": 0}, "data": {"format": "mnist1d"}},
     r"model.hidden_size must be at least 1, got 0"),
    ({"model": {"type": "classifier", "dropout": 1.0}, "data": {"format": "mnist1d"}},
     r"model.dropout must be in \[0, 1\)"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d", "splits": [0.8, 0.4]}},
     r"data.splits sum to 1.2 > 1"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d"}, "trainer": {"lr": 0}},
     r"trainer.lr must be positive"),
    ({"model": {"type": "classifier"}, "data": {"format": "mnist1d"},
      "trainer": {"precision": "fp16"}}, r"trainer.precision = 'fp16' is not one of fp32, bf16"),
    ({"model": "classifier", "data": {"format": "mnist1d"}}, r"\[model\] must be a table"),
])
def test_bad_configurations_name_the_key(raw, message):
    with pytest.raises(UsageError, match=message):
        parse_config(raw)


def test_load_config_reports_bad_toml_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match=r"nope.toml: no such file"):
        load_config(tmp_path / "nope.toml")
    bad = write(tmp_path, "[model\ntype = 1\n")
    with pytest.raises(UsageError, match=r"run.toml: not valid TOML: .*line 1"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[model]")
    with pytest.raises(UsageError, match=r"not valid TOML"):
        load_config(binary)


def test_every_field_is_documented_and_typed():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata["doc"], f"{cls.__name__}.{f.name} has no doc"
            assert f.metadata["kind"] in {"bool", "int", "float", "str", "path", "str-list",
                                          "float-list", "table"}
