"""docs/cli.md runs as written: every `$ rnnkit ...` line of its console blocks (with the
output shown under it, when there is one) and every Python block, in a scratch folder that
sees the repository's examples/."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import cli
from tests.helpers import python_blocks
from tests.test_cli import ROOT

DOC = ROOT / "docs" / "cli.md"
TEXT = DOC.read_text()
CONSOLE = re.findall(r"```console\n(.*?)```", TEXT, flags=re.S)
PYTHON = python_blocks(TEXT)
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def commands() -> list[tuple[str, list[str]]]:
    """``(command line, expected output lines)`` in the order of the page."""
    found = []
    for block in CONSOLE:
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            line, *output = chunk.rstrip("\n").split("\n")
            found.append((line, output))
    return found


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "rnnkit").mkdir()  # the shipped airline.csv at its place in the repository
    (tmp_path / "rnnkit" / "data").symlink_to(ROOT / "rnnkit" / "data")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_the_page_documents_every_command():
    assert len(commands()) >= 10 and PYTHON
    for name in cli.commands:
        assert f"rnnkit {name}" in TEXT, name


def test_console_examples_run(scratch):
    runner = CliRunner()
    for line, output in commands():
        args = shlex.split(line)
        assert args[0] == "rnnkit", line
        if "shakespeare" in line and not CORPUS.is_file():
            continue  # the corpus lives in the project's shared data, beside the checkout
        if args[1] == "export" and importlib.util.find_spec("onnxruntime") is None:
            continue  # the onnx extra is not installed
        result = runner.invoke(cli, args[1:], catch_exceptions=False)
        expect_error = bool(output) and output[0].startswith("Error:")
        assert result.exit_code == (2 if expect_error else 0), (line, result.output)
        for expected in output:
            assert expected in result.output, (line, expected, result.output)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_examples_run(index, scratch):
    exec(compile(PYTHON[index], f"docs/cli.md python block {index}", "exec"), {})


def test_the_keys_tables_name_every_configuration_key():
    from rnnkit.workflows.config import SECTIONS

    for name, cls in SECTIONS.items():
        section = TEXT.split(f"`[{name}]`", 1)[1]
        for field in cls.__dataclass_fields__:
            assert f"`{field}`" in section, f"docs/cli.md does not describe {name}.{field}"
