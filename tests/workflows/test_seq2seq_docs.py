"""The task and command-line sections of docs/seq2seq.md run as written (the model's and the
decoding's sections have runners of their own), and the seq2seq task module's docstrings."""

import pytest

from tests.helpers import assert_doctests_pass, doc_sections, python_blocks, run_doc_block

SECTIONS = ("Toy tasks", "From the command line", "Results: dates and addition")
TEXT = doc_sections("seq2seq.md", *SECTIONS)
BLOCKS = python_blocks(TEXT)


def test_the_sections_exist():
    for title in SECTIONS:
        assert f"## {title}" in TEXT, title
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_doc_block(BLOCKS[index], f"docs/seq2seq.md task block {index}")


@pytest.mark.parametrize("name", ["rnnkit.data.seq2seq_tasks", "rnnkit.workflows.seq2seq"])
def test_docstring_examples(name):
    pytest.importorskip("sacrebleu")
    assert_doctests_pass(name)
