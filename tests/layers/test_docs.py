"""The examples in docs/layers.md and the docstrings of rnnkit.layers run as written."""

import pytest

from tests.helpers import assert_doctests_pass, doc_python_blocks, run_doc_block

BLOCKS = doc_python_blocks("layers.md")
MODULES = [
    "rnnkit.engine.loop",
    "rnnkit.layers.bidirectional",
    "rnnkit.layers.dropout",
    "rnnkit.layers.masking",
    "rnnkit.layers.recurrence",
    "rnnkit.layers.rnn",
    "rnnkit.layers.sequence",
    "rnnkit.layers.wrappers",
]


def test_docs_have_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys):
    run_doc_block(BLOCKS[index], f"docs/layers.md block {index}")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    assert_doctests_pass(name)
