"""The task and command-line sections of docs/seq2seq.md run as written (the model's and the
decoding's sections have runners of their own), and the seq2seq task module's docstrings."""

import pytest

from tests.helpers import DOCS, assert_doctests_pass, python_blocks

SECTIONS = ("Toy tasks", "From the command line", "Results: dates and addition")


def task_sections() -> str:
    parts = (DOCS / "seq2seq.md").read_text(encoding="utf-8").split("\n## ")
    return "\n".join(part for part in parts[1:] if part.startswith(SECTIONS))


BLOCKS = python_blocks(task_sections())


def test_the_sections_exist():
    text = task_sections()
    for title in SECTIONS:
        assert f"{title}" in text, title
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"docs/seq2seq.md task block {index}", "exec"), {})


@pytest.mark.parametrize("name", ["rnnkit.data.seq2seq_tasks", "rnnkit.workflows.seq2seq"])
def test_docstring_examples(name):
    pytest.importorskip("sacrebleu")
    assert_doctests_pass(name)
