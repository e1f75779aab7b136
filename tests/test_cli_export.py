"""`rnnkit export RUN_DIR --format onnx`: a trained run to an ONNX file that onnxruntime runs
like PyTorch on a batch size and length the export never saw; usage errors in one line."""

from __future__ import annotations

import pytest
import torch

from tests.test_cli import assert_usage_error, run
from tests.test_cli_train import CTF_CONFIG, write_ctf_regression

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_export_a_trained_run_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    write_ctf_regression(tmp_path / "train.ctf", 30, seed=0)
    write_ctf_regression(tmp_path / "test.ctf", 10, seed=1)
    config = tmp_path / "ctf.toml"
    config.write_text(CTF_CONFIG.replace("epochs = 2", "epochs = 1"))
    run_dir = tmp_path / "run"
    assert run("train", config, "-o", run_dir).exit_code == 0
    out = tmp_path / "model.onnx"
    result = run("export", run_dir, "--format", "onnx", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output

    # independent of the exporter's own check: a new batch size, length and lengths
    import rnnkit

    model = rnnkit.load(run_dir)
    x = torch.randn(3, 9, 1, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([9, 4, 6])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {}
    for item in session.get_inputs():
        feeds[item.name] = (lengths.numpy() if "length" in item.name else x.numpy())
    (onnx_out, *_) = session.run(None, feeds)
    with torch.no_grad():
        expected = model(x, lengths=lengths)
    assert torch.allclose(torch.as_tensor(onnx_out), expected, atol=1e-4)


@pytest.mark.parametrize("args, fragments", [
    (["export", "{tmp}"], ["is not a run directory"]),
    (["export", "{tmp}/nothing"], ["no such run directory"]),
    (["export", "{tmp}", "--format", "tflite"], ["'tflite' is not 'onnx'"]),
])
def test_export_usage_errors(args, fragments, tmp_path):
    assert_usage_error(run(*(a.format(tmp=tmp_path) for a in args)), *fragments)
