"""The examples in docs/data.md run as written."""

import os
import re

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "data.md")


def test_docs_examples_run(capsys):
    if not os.path.exists(DOC):
        pytest.skip("docs/data.md not present")
    with open(DOC, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/data.md block {i}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "sparse stream 'label' expects index:value" in out and "line 2, column 24" in out
    assert "tensor([[115.0000]])" in out
    assert "[[[1.5, 2.0], [3.0, 4e+44]], [[5.0, 0.0]]]" in out
