"""docs/export.md runs as written, and its tables are rnnkit.export's tables."""

import doctest
import warnings

import pytest

from rnnkit.export import UNSUPPORTED, exportable_cells
from tests.helpers import DOCS, python_blocks

TEXT = (DOCS / "export.md").read_text()
BLOCKS = python_blocks(TEXT)


def table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, split into cells."""
    lines = TEXT.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return table[2:]  # past the header and its |---| line


def test_docs_have_an_example():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(BLOCKS[index], f"docs/export.md block {index}", "exec"), {})


def test_the_cell_table_is_exportable_cells():
    documented = [(cell, options, exportable == "yes", reason)
                  for cell, options, exportable, reason in table_rows("## Exportable cells")]
    assert documented == [(row.cell, row.options, row.exportable, row.reason)
                          for row in exportable_cells()]


def test_the_unsupported_table_is_unsupported():
    documented = table_rows("## What cannot be exported")
    assert [row[0].replace("`", "") for row in documented] == [
        row.what for row in UNSUPPORTED]
    for (_, _, error), row in zip(documented, UNSUPPORTED, strict=True):
        assert error.replace("`", "") in (row.error, "refused by export_onnx")


def test_docstring_examples():
    import rnnkit.export.onnx as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
