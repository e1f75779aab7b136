"""The examples of the image-to-sequence section of docs/recognition.md and the docstrings of
rnnkit.models.image_to_sequence run as written."""

import pytest

from tests.helpers import assert_doctests_pass, doc_sections, python_blocks, run_doc_block

BLOCKS = python_blocks(doc_sections("recognition.md", "Image to sequence"))


def test_the_section_has_examples():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_doc_block(BLOCKS[index], f"docs/recognition.md image-to-sequence block {index}")


def test_docstring_examples():
    assert_doctests_pass("rnnkit.models.image_to_sequence")
