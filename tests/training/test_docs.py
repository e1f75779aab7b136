"""The examples in docs/training.md run as written, in order, in one namespace."""

import os
import re
import warnings

import torch

from tests.helpers import doc_python_blocks

BLOCKS = doc_python_blocks("training.md")


def test_docs_have_examples():
    assert len(BLOCKS) >= 10


def test_docs_examples_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                      # the first block chdirs to its own folder
    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)
    namespace: dict = {}
    cwd = os.getcwd()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, block in enumerate(BLOCKS):
                exec(compile(block, f"docs/training.md block {i}", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "'val_accuracy', 'val_loss']" in out
    assert "\n3.2e-05\n" in out                      # Keras's RMSprop step on a tiny gradient
    assert "input 0 holds nan at index (5, 5, 0)" in out
    assert " average      since    average      since      examples" in out
    assert "Finished Epoch[1 of 2]: [Training] loss = " in out
    assert re.search(r"Finished Evaluation \[1\]: Minibatch\[1-\d+\]: metric = \S+% \* 200;", out)
    assert re.search(r"^Epoch 2/2 - .* - loss: ", out, flags=re.M)
    assert "[0, 1, 2]\n['curves.png', 'history.csv', 'step-" in out
