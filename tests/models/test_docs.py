"""The examples in docs/models.md and the docstrings of rnnkit.models run as written."""

import warnings

import pytest

from tests.helpers import assert_doctests_pass, doc_python_blocks

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(BLOCKS[index], f"docs/models.md block {index}", "exec"), {})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_doctests_pass(name)
