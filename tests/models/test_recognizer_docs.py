"""The SequenceRecognizer, digit-string and training sections of docs/recognition.md run as
written and print what they say."""

import pytest
import torch

from tests.helpers import doc_sections, python_blocks, run_doc_block

SECTIONS = ("Recognizing sequences with CTC", "Digit strings", "Training a recognizer")
BLOCKS = python_blocks(doc_sections("recognition.md", *SECTIONS))


def test_there_are_blocks():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_doc_block(BLOCKS[index], f"docs/recognition.md recognizer block {index}")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    if index == 0:
        assert "(2, 7, 5) [7, 4]" in out and "tensor(True)" in out
        assert "needs 5 output frames" in out and "row 1 has 4" in out
        assert "targets[0][1] is the blank (0)" in out
    else:
        assert out.splitlines() == ["2", "8 True"]
