"""The lengths rule (rnnkit/engine/lengths.py): one rule, the same error on every path.

Rule: T >= 1 and every length an integer in [1, T] (torch.nn refuses T = 0 with "Expected
sequence length to be larger than 0" and pack_padded_sequence refuses a length of 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.cells import GRUCell
from rnnkit.engine import compiled, dispatch
from rnnkit.engine.lengths import check_lengths, unbatched_lengths
from rnnkit.layers import Bidirectional, Fold, Recurrence, Sequence


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (torch.tensor([5, 4]), ValueError, r"lengths\[0\] = 5 is longer than the sequence"),
        (torch.tensor([0, 2]), ValueError, r"lengths must be in \[1, T\].*lengths\[0\] = 0"),
        (torch.tensor([2, -1]), ValueError, r"lengths must be in \[1, T\].*lengths\[1\] = -1"),
        (torch.tensor([[1, 2]]), ValueError, r"lengths must have shape \(batch,\) = \(2,\)"),
        (torch.tensor([1, 2, 3]), ValueError, r"lengths must have shape"),
        (torch.tensor([1.0, 2.0]), TypeError, "lengths must hold integers"),
        ([4, 2.9], TypeError, r"lengths must hold integers, got lengths\[1\] = 2.9"),
        ([4, np.float32(2.0)], TypeError, r"lengths\[1\] = .*2\.0.* \(float32\)"),
        ([True, 2], TypeError, r"lengths\[0\] = True"),
        (["a", "b"], TypeError, r"lengths must hold integers, got lengths\[0\] = 'a'"),
        (3, TypeError, "lengths must be a 1-D integer tensor or a list of ints, got int"),
        (torch.tensor([1, 2], device="meta"), ValueError,
         r"lengths are on device meta but the input is on cpu; put lengths on the CPU$"),
    ],
)
def test_check_lengths_errors(lengths, error, match):
    with pytest.raises(error, match=match):
        check_lengths(lengths, batch_size=2, max_time=4, device="cpu")


def test_check_lengths_accepts_ints_of_any_kind_and_returns_int64():
    lengths = check_lengths([3, np.int64(1)], batch_size=2, max_time=3, device="cpu")
    assert lengths.dtype == torch.int64 and lengths.tolist() == [3, 1]
    assert check_lengths(torch.tensor([2], dtype=torch.int32), 1, 2).dtype == torch.int64


def test_other_device_wording_names_both_places():
    with pytest.raises(ValueError, match=r"on device meta but the input is on cuda; put "
                                         r"lengths on the CPU or on cuda$"):
        check_lengths(torch.tensor([1], device="meta"), 1, 1, device="cuda")


def test_unbatched_lengths():
    assert unbatched_lengths(3).tolist() == [3]
    assert unbatched_lengths([3]).tolist() == [3]
    with pytest.raises(ValueError, match=r"unbatched \(T, H_in\).*got 2 lengths"):
        unbatched_lengths([3, 2], "LSTM input")


def _engines():
    engines = ["loop"]
    if compiled.available()[0]:
        engines.append("compiled")
    return engines


def _layer_call(module):
    return lambda x, lengths: module(x, lengths=lengths)


def _drivers():
    """(name, callable(x, lengths)) for every path and driver that takes lengths."""
    torch.manual_seed(0)
    cases = []
    for engine in _engines():
        cell = GRUCell(3, 4)
        cases.append((f"run_recurrence[{engine}]", lambda x, lengths, c=cell, e=engine:
                      dispatch.run_recurrence(c, x, torch.zeros(x.shape[1], 4),
                                              lengths=lengths, engine=e)))
        cases.append((f"Recurrence[{engine}]",
                      _layer_call(Recurrence(GRUCell(3, 4), engine=engine))))
        cases.append((f"Fold[{engine}]", _layer_call(Fold(GRUCell(3, 4), engine=engine))))
    for engine in ("auto", "fused", "compiled", "loop"):
        if engine == "compiled" and "compiled" not in _engines():
            continue
        for kind in (rnnkit.LSTM, rnnkit.GRU):
            cases.append((f"{kind.__name__}[{engine}]", _layer_call(kind(3, 4, engine=engine))))
    cases.append(("Bidirectional", _layer_call(Bidirectional(GRUCell(3, 4)))))
    cases.append(("Sequence", _layer_call(Sequence(rnnkit.GRU(3, 4)))))
    cases.append(("explain", lambda x, lengths: rnnkit.engine.explain(
        rnnkit.GRU(3, 4), x, lengths=lengths)))
    return cases


DRIVERS = _drivers()


@pytest.mark.parametrize(("name", "call"), DRIVERS, ids=[name for name, _ in DRIVERS])
def test_one_rule_on_every_path(name, call):
    x = torch.randn(4, 2, 3)  # (T, B, H_in)
    call(x, torch.tensor([4, 1]))  # the boundaries 1 and T are valid
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T\].*lengths\[1\] = 0"):
        call(x, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 5 is longer than the sequence"):
        call(x, torch.tensor([5, 1]))
    with pytest.raises(TypeError, match=r"lengths must hold integers, got lengths\[1\] = 2.9"):
        call(x, [4, 2.9])
    with pytest.raises(ValueError, match=r"the sequence is empty \(T = 0 time steps\)"):
        call(torch.randn(0, 2, 3), None)
    with pytest.raises(ValueError, match=r"the sequence is empty \(T = 0 time steps\)"):
        call(torch.randn(0, 2, 3), torch.tensor([1, 1]))


def test_list_of_floats_is_not_truncated():
    # issue 16: lengths=[5, 2.9] ran as [5, 2]
    layer = Recurrence(GRUCell(3, 4))
    with pytest.raises(TypeError, match=r"lengths\[1\] = 2.9"):
        layer(torch.randn(5, 2, 3), lengths=[5, 2.9])


@pytest.mark.parametrize("make", [lambda: rnnkit.LSTM(3, 4), lambda: Recurrence(GRUCell(3, 4)),
                                  lambda: Fold(GRUCell(3, 4))])
def test_unbatched_input_with_lengths(make):
    layer = make()
    x = torch.randn(5, 3)  # (T, H_in): one sequence
    with pytest.raises(ValueError, match=r"unbatched \(T, H_in\), one sequence, so lengths must "
                                         r"be a single length, got 2 lengths"):
        layer(x, lengths=[3, 2])
    # one length runs: the same as the batched call of that sequence cut at its length
    out, state = layer(x, lengths=[3])
    batched_out, batched_state = layer(x[:3].unsqueeze(1))
    final = state[0] if isinstance(state, tuple) else state
    batched_final = batched_state[0] if isinstance(batched_state, tuple) else batched_state
    torch.testing.assert_close(final, batched_final.squeeze(-2))
    if isinstance(layer, Fold):
        torch.testing.assert_close(out, batched_out.squeeze(0))
    else:
        torch.testing.assert_close(out[:3], batched_out.squeeze(1))
        assert bool((out[3:] == 0).all())


def test_empty_batch_is_accepted_like_torch():
    # torch.nn.LSTM accepts B = 0 and returns empty outputs; every rnnkit path does too
    x = torch.randn(4, 0, 3)
    expected = torch.nn.GRU(3, 4)(x)[0].shape
    assert rnnkit.GRU(3, 4)(x)[0].shape == expected
    assert Recurrence(GRUCell(3, 4), engine="loop")(x)[0].shape == expected
    assert Fold(GRUCell(3, 4))(x)[0].shape == (0, 4)
