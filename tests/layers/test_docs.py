"""The examples in docs/layers.md and the docstrings of rnnkit.layers run as written."""

import warnings

import pytest

from tests.helpers import assert_doctests_pass, doc_python_blocks

BLOCKS = doc_python_blocks("layers.md")
MODULES = [
    "rnnkit.engine.loop",
    "rnnkit.layers.bidirectional",
    "rnnkit.layers.dropout",
    "rnnkit.layers.masking",
    "rnnkit.layers.recurrence",
    "rnnkit.layers.rnn",
    "rnnkit.layers.sequence",
]


def test_docs_have_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(BLOCKS[index], f"docs/layers.md block {index}", "exec"), {})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_doctests_pass(name)
