"""The examples of the model's sections of docs/seq2seq.md and the docstrings of the seq2seq
modules run as written (the decoding and task sections have runners of their own)."""

import warnings

import pytest

from tests.helpers import DOCS, assert_doctests_pass, python_blocks

SECTIONS = ("Architecture", "Attention", "Training", "The step interface", "Errors",
            "Differences from")


def model_sections() -> str:
    parts = (DOCS / "seq2seq.md").read_text(encoding="utf-8").split("\n## ")
    return "\n".join(part for part in parts[1:] if part.startswith(SECTIONS))


BLOCKS = python_blocks(model_sections())
MODULES = ["rnnkit.layers.attention", "rnnkit.models.seq2seq"]


def test_docs_have_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(BLOCKS[index], f"docs/seq2seq.md block {index}", "exec"), {})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_doctests_pass(name)
