"""Dispatch: which path runs, every error message, the fallback notice and explain()."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.engine import EngineFallbackWarning, dispatch, explain, loop


@pytest.fixture
def no_compiler(monkeypatch):
    """The compiled kernels report that no C++ compiler is present."""
    monkeypatch.setattr(dispatch, "_compiled",
                        lambda: (None, "no C++ compiler found (tested)"))
    monkeypatch.setattr(dispatch, "_fallback_notice_given", False)


@pytest.fixture
def fake_compiled(monkeypatch):
    """Compiled kernels that serve GRUCell only and record their calls."""
    calls = []

    def supports(cell):
        if isinstance(cell, GRUCell):
            return True, ""
        return False, f"{type(cell).__name__} is not a GRU (tested)"

    def run_recurrence(cell, inputs, state, lengths=None, reverse=False):
        calls.append((type(cell).__name__, reverse))
        return loop.run_recurrence(cell, inputs, state, lengths=lengths, reverse=reverse)

    module = types.SimpleNamespace(available=lambda: (True, ""), supports=supports,
                                   run_recurrence=run_recurrence)
    monkeypatch.setattr(dispatch, "_compiled", lambda: (module, ""))
    monkeypatch.setattr(dispatch, "_fallback_notice_given", False)
    return calls


def gru_inputs():
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    return cell, torch.randn(6, 2, 3), torch.zeros(2, 4)


def test_unknown_engine_lists_valid_ones():
    cell, x, h = gru_inputs()
    with pytest.raises(ValueError, match="unknown engine 'fast'; valid engines are 'auto', "
                                         "'fused', 'compiled', 'scan', 'inductor', 'loop'"):
        dispatch.run_recurrence(cell, x, h, engine="fast")


def test_fused_on_a_cell_is_an_error():
    cell, x, h = gru_inputs()
    with pytest.raises(ValueError, match="engine='fused' applies to whole drop-in modules"):
        dispatch.run_recurrence(cell, x, h, engine="fused")


def test_bad_inputs_rank():
    cell, x, h = gru_inputs()
    with pytest.raises(ValueError, match=r"inputs must be a \(T, B, H_in\) tensor, got \(2, 3\)"):
        dispatch.run_recurrence(cell, x[0], h)


def test_loop_engine_equals_torch(no_compiler):
    """engine='loop' (and 'auto' without a compiler) == torch.nn.GRU with copied weights."""
    cell, x, h = gru_inputs()
    reference = nn.GRU(3, 4)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(cell.weight_ih)
        reference.weight_hh_l0.copy_(cell.weight_hh)
        reference.bias_ih_l0.copy_(cell.bias_ih)
        reference.bias_hh_l0.copy_(cell.bias_hh)
    ref_out, ref_h = reference(x, h[None])
    for engine in ("loop", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EngineFallbackWarning)
            out, final = dispatch.run_recurrence(cell, x, h, engine=engine)
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
        torch.testing.assert_close(final, ref_h[0], atol=1e-6, rtol=0)


def test_forced_compiled_without_compiler_says_why(no_compiler):
    cell, x, h = gru_inputs()
    with pytest.raises(RuntimeError, match=r"engine='compiled' cannot run this recurrence: "
                                           r"compiled kernels unavailable: no C\+\+ compiler"):
        dispatch.run_recurrence(cell, x, h, engine="compiled")


def test_fallback_notice_once_per_process(no_compiler):
    cell, x, h = gru_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dispatch.run_recurrence(cell, x, h)
        dispatch.run_recurrence(cell, x, h)
        dispatch.run_recurrence(cell, x, h, engine="loop")
    notices = [w for w in caught if issubclass(w.category, EngineFallbackWarning)]
    assert len(notices) == 1
    assert "no C++ compiler found" in str(notices[0].message)
    assert "eager Python loop" in str(notices[0].message)


def test_auto_routes_to_compiled_when_supported(fake_compiled):
    cell, x, h = gru_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback notice when the compiler is there
        dispatch.run_recurrence(cell, x, h, reverse=True)
        lstm = LSTMCell(3, 4)
        dispatch.run_recurrence(lstm, x, lstm.initial_state(2))  # unsupported -> loop
    assert fake_compiled == [("GRUCell", True)]
    assert dispatch.choose_path(cell, x) == ("compiled", "compiled kernels support GRUCell")
    path, reason = dispatch.choose_path(lstm, x)
    assert path == "loop" and "LSTMCell is not a GRU (tested)" in reason
    with pytest.raises(RuntimeError, match="compiled kernels do not support LSTMCell"):
        dispatch.run_recurrence(lstm, x, lstm.initial_state(2), engine="compiled")
    # CUDA (or any non-CPU) inputs never go to CPU kernels
    meta = x.to("meta")
    path, reason = dispatch.choose_path(cell, meta)
    assert path == "loop" and "inputs are on meta" in reason


def test_broken_compiled_module_falls_back(monkeypatch):
    """A compiled module whose available() raises must not break the loop path."""
    broken = types.SimpleNamespace(available=lambda: 1 / 0)
    import rnnkit.engine.compiled  # noqa: F401  (so that the attribute exists to replace)

    monkeypatch.setattr(rnnkit.engine, "compiled", broken)
    monkeypatch.setattr(dispatch, "_fallback_notice_given", True)
    cell, x, h = gru_inputs()
    path, reason = dispatch.choose_path(cell, x)
    assert path == "loop" and "ZeroDivisionError" in reason


# ----------------------------------------------------------------------------- modules


def test_fused_forward_choices():
    x = torch.randn(5, 2, 3)
    module = rnnkit.LSTM(3, 4)
    assert dispatch.fused_forward(module, x, None, None) is not None
    module.engine = "loop"
    assert dispatch.fused_forward(module, x, None, None) is None
    module.engine = "compiled"
    assert dispatch.fused_forward(module, x, None, None) is None
    peephole = rnnkit.LSTM(3, 4, peepholes=True)
    assert dispatch.fused_forward(peephole, x, None, None) is None
    # stateful and dropout_input keep the recurrence torch's: still fused
    assert dispatch.fused_decision(rnnkit.LSTM(3, 4, stateful=True), x)[0]
    assert dispatch.fused_decision(rnnkit.LSTM(3, 4, dropout_input=0.2), x)[0]


def test_auto_prefers_compiled_for_gru_and_elman_training(fake_compiled):
    """On CPU, engine="auto" sends modes torch has no oneDNN kernel for to the compiled
    kernels when they serve every cell (the fake serves GRUCell only)."""
    x = torch.randn(5, 2, 3)
    gru = rnnkit.GRU(3, 4, num_layers=2)
    use, reason = dispatch.fused_decision(gru, x)
    assert not use and "compiled kernels are faster for training" in reason
    with torch.no_grad():
        use, reason = dispatch.fused_decision(gru, x)
        assert not use and "faster for inference" in reason
        with rnnkit.engine.precision("bf16"):  # the compiled kernels have no bf16
            assert dispatch.fused_decision(gru, x)[0]
    assert dispatch.fused_decision(rnnkit.LSTM(3, 4), x)[0]  # oneDNN LSTM stays fused
    # the fake does not serve ElmanCell: the Elman RNN stays on the fused path
    assert dispatch.fused_decision(rnnkit.RNN(3, 4), x)[0]
    gru.engine = "fused"
    assert dispatch.fused_decision(gru, x)[0]  # forcing wins over the preference
    fake_compiled.clear()
    gru.engine = "auto"
    gru(x)
    assert fake_compiled == [("GRUCell", False), ("GRUCell", False)]


@pytest.mark.parametrize("make,option", [
    (lambda: rnnkit.LSTM(3, 4, peepholes=True), "cell option peepholes=True"),
    (lambda: rnnkit.LSTM(3, 4, layer_norm=True), "cell option layer_norm=True"),
    (lambda: rnnkit.GRU(3, 4, reset_after=False), "cell option reset_after=False"),
    (lambda: rnnkit.GRU(3, 4, recurrent_dropout=0.1), r"recurrent_dropout \(variational"),
    (lambda: rnnkit.RNN(3, 4, zoneout=0.1), r"zoneout is active \(zoneout=0.1\)"),
    (lambda: rnnkit.LSTM(3, 4, num_layers=2, residual=True), "residual connections"),
])
def test_forced_fused_names_the_blocking_option(make, option):
    module = make()
    module.engine = "fused"  # the drop-ins refuse this at construction; dispatch says why too
    with pytest.raises(ValueError, match=rf"engine='fused' cannot run this \w+: {option}"):
        dispatch.fused_forward(module, torch.randn(5, 2, 3), None, None)


def test_fused_decision_errors():
    module = nn.LSTM(3, 4)
    module.engine = "turbo"
    with pytest.raises(ValueError, match="unknown engine 'turbo'"):
        dispatch.fused_forward(module, torch.randn(5, 2, 3), None, None)
    with pytest.raises(ValueError, match="the fused path cannot run this module: Linear is not "
                                         "a torch-style RNN module"):
        from rnnkit.engine import fused

        fused.forward(nn.Linear(3, 4), torch.randn(5, 2, 3), None, None)


# ----------------------------------------------------------------------------- explain


def test_explain_fused_module_with_lengths():
    module = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    text = explain(module, torch.randn(2, 6, 3), torch.tensor([6, 3]))
    assert "input: T=6, B=2, H_in=3" in text  # batch_first honoured
    assert "path: fused for all 2 layer(s) x 2 direction(s)" in text
    assert "configuration equals torch.nn.LSTM" in text
    assert "torch._VF.lstm -> oneDNN LSTM primitive" in text
    assert "2 kernel call(s) per layer and direction" in text
    with rnnkit.engine.precision("bf16"):
        assert "precision: bf16" in explain(module, torch.randn(2, 6, 3))


def test_explain_layer_by_layer(no_compiler):
    module = rnnkit.GRU(3, 4, bidirectional=True, reset_after=False)
    text = explain(module, torch.randn(6, 2, 3))
    assert "fused path not used: not torch-compatible: cell option reset_after=False" in text
    assert "layer 0: GRUCell -> loop (compiled kernels unavailable: no C++ compiler" in text
    assert "layer 0 reverse: GRUCell -> loop" in text
    with rnnkit.engine.precision("bf16"):
        text = explain(module, torch.randn(6, 2, 3))
    # no compiler: no cell gets the compiled kernels' bf16 GEMMs (test_compiled_bf16.py)
    assert "the compiled kernels run 0 of 2 cell(s) with bf16 GEMMs, the other cells run in " \
           "their parameters' dtype" in text


def test_explain_cells_recurrences_and_packed(fake_compiled):
    x = torch.randn(6, 2, 3)
    assert "cell: GRUCell -> compiled (compiled kernels support GRUCell)" in explain(
        GRUCell(3, 4), x)
    text = explain(rnnkit.Recurrence(LSTMCell(3, 4), go_backwards=True), x)
    assert "backward: LSTMCell -> loop (compiled kernels do not support LSTMCell" in text
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4]))
    text = explain(nn.GRU(3, 4), packed)
    assert "PackedSequence, T=6, B=2" in text and "lengths in [4, 6], 2 distinct" in text
    module = rnnkit.GRU(3, 4)
    module.engine = "compiled"
    assert "fused path not used: engine='compiled' requested" in explain(module, x)


def test_explain_wrappers(fake_compiled):
    """Bidirectional and Sequence wrappers: explain says what each wrapped layer runs."""
    x = torch.randn(2, 6, 3)  # batch-first
    bi = rnnkit.Bidirectional(rnnkit.Recurrence(GRUCell(3, 4), batch_first=True))
    text = explain(bi, x, torch.tensor([6, 2]))
    assert "input: T=6, B=2, H_in=3" in text
    assert "forward layer: rnnkit.Recurrence" in text and "backward layer:" in text
    assert "backward: GRUCell -> compiled" in text
    text = explain(rnnkit.Sequence(rnnkit.LSTM(3, 4, batch_first=True)), x)
    assert "wrapped layer: rnnkit.LSTM(3, 4, batch_first=True)" in text
    assert "path: fused for all 1 layer(s)" in text


def test_explain_errors():
    module = rnnkit.LSTM(3, 4, peepholes=True)
    module.engine = "fused"
    # explain raises what the call raises (issue 16)
    for call in (lambda: explain(module, torch.randn(4, 1, 3)), lambda: module(
            torch.randn(4, 1, 3))):
        with pytest.raises(ValueError, match="engine='fused' cannot run this LSTM"):
            call()
    with pytest.raises(ValueError, match=r"LSTM: expected input to be 2-D \(unbatched\) or 3-D"):
        explain(module, torch.randn(4))
    with pytest.raises(TypeError, match="LSTM input must be a Tensor or a PackedSequence"):
        explain(module, [1, 2])
    with pytest.raises(ValueError, match="longer than the sequence"):
        explain(module, torch.randn(4, 1, 3), torch.tensor([5]))


def test_engine_doc_examples_run():
    """The examples in docs/engine.md run as written and print what the doc shows."""
    import doctest
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "engine.md"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the bf16-emulation notice
        result = doctest.testfile(str(doc), module_relative=False,
                                  optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


def test_warnings_point_at_the_callers_line(no_compiler):
    """Warnings are attributed to the user's line, whatever path inside rnnkit led there."""
    cell, x, h = gru_inputs()
    layer = rnnkit.Recurrence(cell)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)  # through Module.__call__, Recurrence and the engine
        rnnkit.LSTM(3, 4, dropout=0.5)  # through the drop-in constructors
    assert [w.filename for w in caught] == [__file__, __file__], [str(w.message) for w in caught]
