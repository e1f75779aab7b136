"""The examples of the model's sections of docs/seq2seq.md and the docstrings of the seq2seq
modules run as written (the decoding and task sections have runners of their own)."""

import pytest

from tests.helpers import assert_doctests_pass, doc_sections, python_blocks, run_doc_block

BLOCKS = python_blocks(doc_sections("seq2seq.md", "Architecture", "Attention", "Training",
                                    "The step interface", "Errors", "Differences from"))
MODULES = ["rnnkit.layers.attention", "rnnkit.models.seq2seq"]


def test_docs_have_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_doc_block(BLOCKS[index], f"docs/seq2seq.md block {index}")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    assert_doctests_pass(name)
