"""ONNX export (rnnkit.export): parity with onnxruntime on a new batch size, length and lengths.

The oracles are independent of rnnkit: ``torch.nn.LSTM`` / ``torch.nn.GRU`` with the weights
copied, run on a PackedSequence (so padding cannot matter to them), and, for the other cells,
each sequence run alone without padding. Exports are slow (a few seconds per layer and
direction on a shared 2-core machine: torch.export traces every scan), so each test exports
one small model once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.export import (
    UNSUPPORTED,
    ExportCheckError,
    ExportError,
    UnsupportedExportError,
    example_inputs_for,
    export_onnx,
    export_run,
    exportable_cells,
)
from rnnkit.export import onnx as export_module

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def run_onnx(path, **inputs: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    feed = {name: value.numpy() for name, value in inputs.items() if name in wanted}
    return dict(zip(names, session.run(None, feed), strict=True))


def padded_batch(lengths: list[int], features: int, seed: int) -> torch.Tensor:
    """(B, T, F) with NaN at every padded step: padding must not reach any result."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), features, generator=generator)
    for row, length in enumerate(lengths):
        x[row, length:] = float("nan")
    return x


def packed_oracle(module: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    """torch.nn's own result on a PackedSequence: output (B, T, D*H) zero-padded, h_n..."""
    packed = pack_padded_sequence(torch.nan_to_num(x), lengths, batch_first=True,
                                  enforce_sorted=False)
    with torch.no_grad():
        out, state = module(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def test_saved_bidirectional_projected_lstm_matches_torch_nn_on_new_batch_and_lengths(tmp_path):
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, bidirectional=True, proj_size=2, batch_first=True)
    rnnkit.save(lstm, tmp_path / "run")

    written = export_run(tmp_path / "run", tmp_path / "lstm.onnx")  # what `rnnkit export` runs

    assert written == tmp_path / "lstm.onnx" and written.exists()
    oracle = torch.nn.LSTM(3, 4, bidirectional=True, proj_size=2, batch_first=True)
    oracle.load_state_dict(lstm.state_dict())
    lengths = torch.tensor([9, 1, 6, 3])  # batch 4 and 9 steps; the example had 2 and 5
    x = padded_batch(lengths.tolist(), 3, seed=1)
    got = run_onnx(written, input=x, lengths=lengths)
    out, (h_n, c_n) = packed_oracle(oracle, x, lengths)
    assert list(got) == ["output", "state_0", "state_1"]
    np.testing.assert_allclose(got["output"], out.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["state_0"], h_n.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["state_1"], c_n.numpy(), atol=1e-5)


def test_two_layer_gru_exports_as_scans_not_compiled_kernels_and_matches_torch_nn(
        tmp_path, monkeypatch):
    # On the CPU engine="auto" runs a torch-compatible GRU on rnnkit's compiled kernels
    # (dispatch.PREFER_COMPILED_ON_CPU) and engine="compiled" forces them; while exporting
    # neither may be recorded: every layer must run as one scan (an ONNX Scan).
    torch.manual_seed(0)
    gru = rnnkit.GRU(3, 4, num_layers=2, batch_first=True, engine="compiled")
    scans = []
    real_scan = rnnkit.engine.loop.run_scan

    def recording_scan(cell, *args, **kwargs):
        scans.append(type(cell).__name__)
        return real_scan(cell, *args, **kwargs)

    monkeypatch.setattr(rnnkit.engine.loop, "run_scan", recording_scan)
    path = export_onnx(gru, tmp_path / "gru.onnx", torch.randn(2, 5, 3),
                       lengths=torch.tensor([5, 2]))

    assert scans == ["GRUCell", "GRUCell"]
    assert gru.engine == "compiled" and gru.training  # the export left the module as it was
    oracle = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    oracle.load_state_dict(gru.state_dict())
    lengths = torch.tensor([2, 7, 1])
    x = padded_batch(lengths.tolist(), 3, seed=2)
    got = run_onnx(path, input=x, lengths=lengths)
    out, h_n = packed_oracle(oracle, x, lengths)
    np.testing.assert_allclose(got["output"], out.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["state"], h_n.numpy(), atol=1e-5)


def test_token_classifier_from_a_run_directory_matches_each_sequence_run_alone(tmp_path):
    # the task models (rnnkit.models) through `rnnkit export RUN_DIR`: token ids (B, T) in,
    # logits (B, C) out, lengths as an input; PyTorch on each sequence alone, unpadded, is
    # the oracle for the padded batch of another size and length
    from rnnkit.models import SequenceClassifier

    torch.manual_seed(0)
    model = SequenceClassifier(vocab_size=11, num_classes=3, hidden_size=5, cell="lstm")
    rnnkit.save(model, tmp_path / "run")
    path = export_run(tmp_path / "run", tmp_path / "classifier.onnx")

    lengths = [1, 8, 4]
    ids = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(4))
    got = run_onnx(path, input=ids, lengths=torch.tensor(lengths))["output"]  # (B, C)
    model.eval()
    with torch.no_grad():
        for row, length in enumerate(lengths):
            alone = model(ids[row:row + 1, :length])  # (1, C)
            np.testing.assert_allclose(got[row], alone[0].numpy(), atol=1e-5)


class _EveryCell(torch.nn.Module):
    """Every exportable row of the table, alternately over Recurrence (forward, then
    backward) and Fold, plus the RNN drop-in (ReLU); one export for all of them, since each
    export costs seconds per scan."""

    def __init__(self, rows) -> None:
        super().__init__()
        layers = []
        for index, row in enumerate(rows):
            cell = row.build(4, 4)
            if index % 2:
                layers.append(rnnkit.Fold(cell, batch_first=True))
            else:
                layers.append(rnnkit.Recurrence(cell, batch_first=True,
                                                go_backwards=index % 4 == 2))
        self.layers = torch.nn.ModuleList(layers)
        self.rnn = rnnkit.RNN(4, 3, nonlinearity="relu", batch_first=True)

    def forward(self, x, lengths):
        outputs = [layer(x, lengths=lengths).output for layer in self.layers]
        return (*outputs, self.rnn(x, lengths=lengths)[0])


@pytest.mark.slow
def test_every_exportable_row_of_the_table_matches_each_sequence_run_alone(tmp_path):
    rows = [row for row in exportable_cells() if row.exportable]
    torch.manual_seed(0)
    model = _EveryCell(rows)
    path = export_onnx(model, tmp_path / "cells.onnx", torch.randn(2, 5, 4),
                       lengths=torch.tensor([5, 3]))

    lengths = [7, 1, 4]
    x = padded_batch(lengths, 4, seed=3)
    got = list(run_onnx(path, input=x, lengths=torch.tensor(lengths)).values())
    assert len(got) == len(rows) + 1
    with torch.no_grad():
        for row_index, length in enumerate(lengths):
            alone = model(x[row_index:row_index + 1, :length],
                          lengths=torch.tensor([length]))  # no padding at all
            for name, onnx_out, torch_out in zip([r.name for r in rows] + ["RNN"], got, alone,
                                                 strict=True):
                is_fold = onnx_out.ndim == 2
                expected = torch_out[0].numpy()
                actual = onnx_out[row_index] if is_fold else onnx_out[row_index, :length]
                np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=name)
                if not is_fold:  # outputs past the length are zero
                    assert not onnx_out[row_index, length:].any(), name


def test_unfold_from_is_refused_with_the_reason_naming_it(tmp_path):
    model = _Generator()
    with pytest.raises(UnsupportedExportError) as refused:  # before torch.onnx runs
        export_onnx(model, tmp_path / "g.onnx", torch.randn(2, 5, 4), dynamic_time=False)
    assert "UnfoldFrom (at unfold) cannot be exported to ONNX: generation stops" in str(
        refused.value)
    assert not list(tmp_path.iterdir())


class _Generator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unfold = rnnkit.UnfoldFrom(rnnkit.GRUCell(4, 4), max_length=6, batch_first=True)

    def forward(self, x):
        return self.unfold(x[:, 0]).output


class _Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = rnnkit.Recurrence(rnnkit.GRUCell(4, 4), batch_first=True)

    def forward(self, x, mask):
        return self.layer(x, mask=mask).output


UNSUPPORTED_CALLS = {
    "UnfoldFrom (generation)": lambda: (_Generator(), torch.randn(2, 5, 4)),
    "mask= with gaps (Keras masks)": lambda: (
        _Masked(), (torch.randn(2, 5, 4), torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]).bool())),
}


@pytest.mark.slow
@pytest.mark.parametrize("row", [r for r in UNSUPPORTED if r.what in UNSUPPORTED_CALLS],
                         ids=lambda r: r.what)
def test_each_unsupported_row_fails_in_torch_onnx_with_the_documented_error(
        row, tmp_path, monkeypatch):
    model, inputs = UNSUPPORTED_CALLS[row.what]()
    monkeypatch.setattr(export_module, "UNEXPORTABLE", {})  # let torch.onnx try
    with pytest.raises(ExportError) as failed:
        export_onnx(model, tmp_path / "m.onnx", inputs, dynamic_time=False)
    assert row.error in str(failed.value)
    assert not list(tmp_path.iterdir())  # no file, no temporary left behind


def test_the_table_of_unsupported_things_is_covered():
    covered = set(UNSUPPORTED_CALLS) | {"stateful=True layers"}  # test_bad_calls below
    assert {row.what for row in UNSUPPORTED} == covered


class _Noisy(torch.nn.Module):
    """A model whose ONNX graph cannot agree with PyTorch: it draws random numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, batch_first=True)

    def forward(self, x):
        return self.lstm(x + torch.rand_like(x))[0]


def test_a_failed_check_writes_nothing_and_names_the_difference_and_shapes(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    with pytest.raises(ExportCheckError) as failed:
        export_onnx(_Noisy(), target, torch.randn(2, 5, 3), exporter="torchscript")

    message = str(failed.value)
    assert "ONNX output 'output' differs from PyTorch by up to" in message
    assert "(atol 0.0001) on inputs (2, 5, 3)" in message and "not written" in message
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_torchscript_exporter_serves_torch_compatible_layers_without_lengths_only(tmp_path):
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, batch_first=True)
    path = export_onnx(lstm, tmp_path / "ts.onnx", torch.randn(2, 5, 3), exporter="torchscript")
    x = torch.randn(3, 8, 3)
    with torch.no_grad():
        expected = torch.nn.LSTM(3, 4, batch_first=True).requires_grad_(False)
        expected.load_state_dict(lstm.state_dict())
        np.testing.assert_allclose(run_onnx(path, input=x)["output"], expected(x)[0].numpy(),
                                   atol=1e-5)
    with pytest.raises(ExportError, match="torchscript exporter.*could not export LSTM"):
        export_onnx(lstm, tmp_path / "ts_lengths.onnx", torch.randn(2, 5, 3),
                    lengths=torch.tensor([5, 2]), exporter="torchscript")


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda p: export_onnx(rnnkit.GRU(3, 4), p, torch.randn(5, 1, 3)), ValueError,
     "example's batch size is 1; a dynamic batch size needs an example with at least 2"),
    (lambda p: export_onnx(rnnkit.GRU(3, 4, batch_first=True, stateful=True), p,
                           torch.randn(2, 5, 3)), UnsupportedExportError,
     "GRU is stateful"),
    (lambda p: export_onnx(rnnkit.GRU(3, 4), p, torch.randn(5, 2, 3), exporter="jit"),
     ValueError, "exporter must be one of"),
    (lambda p: export_onnx(rnnkit.GRU(3, 4, batch_first=True), p, torch.randn(2, 5, 3),
                           lengths=[5, 6]), ValueError, r"lengths\[1\] = 6 is longer"),
])
def test_bad_calls_are_named_before_exporting(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


class _Tagger(torch.nn.Module):
    """Token ids in, one label per step out (no vocab_size attribute: found from its
    nn.Embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 3)
        self.gru = rnnkit.GRU(3, 4, batch_first=True)

    def forward(self, ids, lengths=None):
        return self.gru(self.embed(ids), lengths=lengths)[0]


def test_example_inputs_come_from_the_configuration():
    ids = example_inputs_for(_Tagger())
    assert ids.inputs[0].dtype == torch.int64 and tuple(ids.inputs[0].shape) == (2, 5)
    assert int(ids.inputs[0].max()) < 11 and ids.lengths.tolist() == [5, 3]
    assert ids.dynamic_time

    time_major = example_inputs_for(rnnkit.LSTM(3, 4))  # batch_first=False: (T, B, F)
    assert tuple(time_major.inputs[0].shape) == (5, 2, 3) and time_major.lengths is not None

    from rnnkit.models.forecaster import Forecaster

    window = example_inputs_for(Forecaster(look_back=24, horizon=3, period=12, seed=0))
    assert tuple(window.inputs[0].shape) == (2, 24) and bool((window.inputs[0] > 0).all())
    assert window.lengths is None and not window.dynamic_time

    with pytest.raises(ExportError, match="cannot tell the input of Identity"):
        example_inputs_for(torch.nn.Identity())


def test_a_fitted_forecaster_exports_and_matches_onnxruntime(tmp_path):
    # Forecaster._check reads its `fitted` buffer, which torch.export cannot branch on.
    from rnnkit.models.forecaster import Forecaster

    model = Forecaster(look_back=24, horizon=3, period=12, seed=0)
    t = np.arange(120, dtype=np.float64)
    model.adapt(100 + t + 10 * np.sin(2 * np.pi * t / 12)).eval()
    example = example_inputs_for(model)
    path = export_onnx(model, tmp_path / "forecaster.onnx", example.inputs,
                       lengths=example.lengths, dynamic_time=example.dynamic_time)
    windows = torch.linspace(100, 140, 5 * 24).reshape(5, 24).double()  # a new batch size
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    got = session.run(None, {name: windows.to(example.inputs[0].dtype).numpy()})[0]
    with torch.no_grad():
        expected = model(windows.to(example.inputs[0].dtype))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-5)
