"""The decoding section of docs/seq2seq.md and the docstrings of rnnkit.models.decoding run
as written."""

import pytest

from tests.helpers import assert_doctests_pass, doc_sections, python_blocks, run_doc_block

BLOCKS = python_blocks(doc_sections("seq2seq.md", "Decoding: greedy, sampling and beam search"))


def test_section_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_section_example_runs(index, capsys):
    run_doc_block(BLOCKS[index], f"docs/seq2seq.md decoding block {index}")


def test_docstring_examples():
    assert_doctests_pass("rnnkit.models.decoding")
