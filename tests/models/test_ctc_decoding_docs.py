"""The CTC decoding section of docs/recognition.md and the docstrings of
rnnkit.models.ctc_decoding run as written."""

import pytest

from tests.helpers import assert_doctests_pass, doc_sections, python_blocks, run_doc_block

BLOCKS = python_blocks(doc_sections("recognition.md", "Decoding CTC output"))


def test_section_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_section_example_runs(index, capsys):
    run_doc_block(BLOCKS[index], f"docs/recognition.md CTC decoding block {index}")


def test_docstring_examples():
    assert_doctests_pass("rnnkit.models.ctc_decoding")
    assert_doctests_pass("rnnkit.training.metrics")
