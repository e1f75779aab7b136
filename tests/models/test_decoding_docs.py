"""The decoding section of docs/seq2seq.md and the docstrings of rnnkit.models.decoding run
as written."""

import pytest

from tests.helpers import DOCS, assert_doctests_pass, python_blocks

HEADING = "## Decoding: greedy, sampling and beam search"


def decoding_section() -> str:
    text = (DOCS / "seq2seq.md").read_text(encoding="utf-8")
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start:] if end < 0 else text[start:end]


BLOCKS = python_blocks(decoding_section())


def test_section_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_section_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"docs/seq2seq.md decoding block {index}", "exec"), {})


def test_docstring_examples():
    assert_doctests_pass("rnnkit.models.decoding")
