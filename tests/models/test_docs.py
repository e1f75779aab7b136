"""The examples in docs/models.md and the docstrings of rnnkit.models run as written."""

import pytest

from tests.helpers import assert_doctests_pass, doc_python_blocks, run_doc_block

BLOCKS = doc_python_blocks("models.md")
MODULES = [
    "rnnkit.models.backbone",
    "rnnkit.models.classifier",
    "rnnkit.models.language_model",
    "rnnkit.models.regressor",
    "rnnkit.models.tagger",
]


def test_docs_have_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys):
    run_doc_block(BLOCKS[index], f"docs/models.md block {index}")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    assert_doctests_pass(name)
