"""The fused path against independent oracles.

Oracles: ``torch.nn`` modules with copied weights (padded and on a PackedSequence, which runs
torch's separate packed kernels), and each sequence run alone at its own length.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engine import dispatch, fused
from rnnkit.engine.lengths import reverse_index, reverse_within_lengths

# torch says once that oneDNN has no projection LSTM and it uses its own kernel: expected
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

T, B, I, H = 7, 5, 3, 4
LENGTHS = torch.tensor([7, 2, 5, 2, 1])


CONFIGS = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 2}),
    ("GRU", {}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
]


def torch_module(kind: str, num_layers: int, bidirectional: bool, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind]
    return cls(I, H, num_layers=num_layers, bidirectional=bidirectional, **kw).to(dtype)


def drop_in_copy(reference: nn.Module) -> nn.Module:
    """An rnnkit drop-in with the torch module's configuration and weights."""
    kind = type(reference).__name__
    kwargs = {"num_layers": reference.num_layers, "bidirectional": reference.bidirectional}
    if kind == "LSTM":
        kwargs["proj_size"] = reference.proj_size
    if kind == "RNN":
        kwargs["nonlinearity"] = reference.nonlinearity
    # engine="fused" pins the fused path (engine="auto" may prefer the compiled kernels)
    module = getattr(rnnkit, kind)(I, H, engine="fused", **kwargs)
    module.load_state_dict(reference.state_dict())
    return module.to(next(reference.parameters()).dtype)


def initial_state(module: nn.Module, batch: int, dtype) -> torch.Tensor | tuple:
    rows = module.num_layers * (2 if module.bidirectional else 1)
    out = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(rows, batch, out, generator=g, dtype=dtype)
    if module.mode == "LSTM":
        return h0, torch.randn(rows, batch, module.hidden_size, generator=g, dtype=dtype)
    return h0


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def select_batch(state, index):
    return tuple(s[:, index] for s in as_tuple(state))


def packed_oracle(module, x, hx, lengths):
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = module(packed, hx)
    out, _ = pad_packed_sequence(out, total_length=x.size(0))
    return out, state


def loss_of(out, state):
    g = torch.Generator().manual_seed(2)
    total = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in as_tuple(state):
        total = total + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return total


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_drop_in_equals_torch_with_gradients(kind, kw, num_layers, bidirectional):
    """rnnkit drop-in on the fused path == torch.nn, outputs, states and gradients."""
    reference = torch_module(kind, num_layers, bidirectional, **kw)
    module = drop_in_copy(reference)
    x = torch.randn(T, B, I, requires_grad=True)
    hx = initial_state(reference, B, torch.float32)
    out, state = dispatch.fused_forward(module, x, hx, None)
    ref_out, ref_state = reference(x, hx)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for a, b in zip(as_tuple(state), as_tuple(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss_of(out, state), [x, *module.parameters()])
    ref_grads = torch.autograd.grad(loss_of(ref_out, ref_state), [x, *reference.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_lengths_equal_packed_sequence_with_gradients(kind, kw, num_layers, bidirectional):
    """Variable lengths == torch.nn on a PackedSequence (float32, oneDNN vs packed kernels)."""
    reference = torch_module(kind, num_layers, bidirectional, **kw)
    module = drop_in_copy(reference)
    x = torch.randn(T, B, I, requires_grad=True)
    hx = initial_state(reference, B, torch.float32)
    leaves = [s.requires_grad_() for s in as_tuple(hx)]  # gradients reach the initial state
    out, state = dispatch.fused_forward(module, x, hx, LENGTHS)
    ref_out, ref_state = packed_oracle(reference, x, hx, LENGTHS)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for a, b in zip(as_tuple(state), as_tuple(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss_of(out, state), [x, *leaves, *module.parameters()])
    ref_grads = torch.autograd.grad(loss_of(ref_out, ref_state),
                                    [x, *leaves, *reference.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {}),
                                     ("RNN", {})], ids=lambda v: str(v))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_each_sequence_alone(kind, kw, bidirectional):
    """Each sequence's outputs and final state == running it alone at its own length."""
    module = torch_module(kind, 2, bidirectional, dtype=torch.float64, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    x[torch.arange(T)[:, None] >= LENGTHS[None, :]] = float("nan")  # padding must not leak
    hx = initial_state(module, B, torch.float64)
    out, state = fused.forward(module, x, hx, LENGTHS)
    for b, n in enumerate(LENGTHS.tolist()):
        alone = tuple(s.contiguous() for s in select_batch(hx, slice(b, b + 1)))
        ref_out, ref_state = module(x[:n, b:b + 1], alone if kind == "LSTM" else alone[0])
        torch.testing.assert_close(out[:n, b:b + 1], ref_out, atol=1e-12, rtol=0)
        assert bool((out[n:, b] == 0).all()), "outputs at padded steps must be zero"
        for a, r in zip(select_batch(state, slice(b, b + 1)), as_tuple(ref_state), strict=True):
            torch.testing.assert_close(a, r, atol=1e-12, rtol=0)


def test_full_lengths_and_short_max_length():
    """All lengths == T takes the single-call path; max(lengths) < T pads outputs with zeros."""
    module = torch_module("LSTM", 1, False)
    x = torch.randn(T, B, I)
    out_full, _ = fused.forward(module, x, None, torch.full((B,), T))
    torch.testing.assert_close(out_full, module(x)[0], atol=0, rtol=0)
    lengths = torch.tensor([3, 2, 3, 1, 3])
    out, (h, c) = fused.forward(module, x, None, lengths)
    assert bool((out[3:] == 0).all())
    ref_out, (ref_h, ref_c) = packed_oracle(module, x, None, lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(c, ref_c, atol=1e-6, rtol=0)


def test_dropout_between_layers_with_lengths():
    """Training dropout acts between layers (not on the last layer) and keeps padding zero."""
    torch.manual_seed(0)
    module = nn.LSTM(I, H, num_layers=2, dropout=0.5, bidirectional=True)
    x = torch.randn(T, B, I)
    module.eval()
    eval_out, _ = fused.forward(module, x, None, LENGTHS)
    torch.testing.assert_close(eval_out, packed_oracle(module, x, None, LENGTHS)[0],
                               atol=1e-5, rtol=0)
    module.train()
    train_out, _ = fused.forward(module, x, None, LENGTHS)
    assert not torch.allclose(train_out, eval_out)
    assert bool((train_out[torch.arange(T)[:, None] >= LENGTHS[None, :]] == 0).all())


def test_segments_and_reverse_index():
    assert fused.segments([7, 5, 5, 2]) == [(0, 2, 4), (2, 5, 3), (5, 7, 1)]
    assert fused.segments([3, 3]) == [(0, 3, 2)]
    index = reverse_index(torch.tensor([3, 1]), 4)
    assert index.T.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3]]
    x = torch.arange(8.0).reshape(4, 2, 1)
    twice = reverse_within_lengths(reverse_within_lengths(x, index), index)
    assert torch.equal(twice, x)


def test_lengths_errors():
    module = torch_module("GRU", 1, False)
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match="longer than the sequence"):
        fused.forward(module, x, None, torch.tensor([8, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"must be in \[1, T\]"):
        fused.forward(module, x, None, torch.tensor([0, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        fused.forward(module, x, None, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"inputs must be \(T, B, H_in\)"):
        fused.forward(module, x[0], None, None)


@pytest.mark.filterwarnings("ignore:rnnkit. precision='bf16'")
def test_bf16_precision_inference():
    """precision("bf16") runs in bfloat16, returns float32, stays near the float32 result."""
    module = torch_module("LSTM", 2, True).eval()
    x = torch.randn(T, B, I)
    with torch.no_grad():
        ref, (ref_h, _) = fused.forward(module, x, None, LENGTHS)
        with rnnkit.engine.precision("bf16"):
            assert fused.current_precision() == "bf16"
            out, (h, c) = fused.forward(module, x, None, LENGTHS)
            # the cached bf16 weights must follow an in-place update of the parameters
            module.weight_hh_l0.mul_(0.5)
            updated, _ = fused.forward(module, x, None, LENGTHS)
        module.weight_hh_l0.mul_(2.0)
    assert fused.current_precision() == "fp32"
    assert out.dtype == torch.float32 and h.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05
    assert (h - ref_h).abs().max() < 0.05
    assert not torch.allclose(updated, out)


def test_precision_errors():
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\)"):
        with rnnkit.engine.precision("fp16"):
            pass


def test_bf16_emulation_notice_once(monkeypatch):
    monkeypatch.setattr(fused, "_cpu_has_bf16", lambda: False)
    monkeypatch.setattr(fused, "_bf16_notice_given", False)
    module = torch_module("GRU", 1, False).eval()
    x = torch.randn(T, B, I)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), rnnkit.engine.precision("bf16"):
            fused.forward(module, x, None, None)
            fused.forward(module, x, None, None)
    notices = [w for w in caught if "emulates bfloat16" in str(w.message)]
    assert len(notices) == 1 and issubclass(notices[0].category, RuntimeWarning)


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("grad", [True, False])
def test_auto_path_equals_packed_torch(kind, kw, grad):
    """Whatever engine="auto" picks (fused or compiled, see PREFER_COMPILED_ON_CPU) equals
    torch.nn on a PackedSequence, in training and in inference, both directions."""
    reference = torch_module(kind, 2, True, **kw)
    module = drop_in_copy(reference)
    module.engine = "auto"
    x = torch.randn(T, B, I, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out, state = module(x, lengths=LENGTHS)
        ref_out, ref_state = packed_oracle(reference, x, None, LENGTHS)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for a, b in zip(as_tuple(state), as_tuple(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    if grad:
        grads = torch.autograd.grad(loss_of(out, state), [x, *module.parameters()])
        ref_grads = torch.autograd.grad(loss_of(ref_out, ref_state),
                                        [x, *reference.parameters()])
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_lengths_property(data):
    """Random batch, lengths, mode, depth and direction: fused == torch.nn on a
    PackedSequence (float64, so any disagreement is a logic error, not rounding)."""
    kind = data.draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    steps = data.draw(st.integers(1, 6))
    batch = data.draw(st.integers(1, 5))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, steps), min_size=batch,
                                              max_size=batch)))
    layers = data.draw(st.integers(1, 2))
    bidirectional = data.draw(st.booleans())
    module = torch_module(kind, layers, bidirectional, dtype=torch.float64)
    x = torch.randn(steps, batch, I, dtype=torch.float64)
    hx = initial_state(module, batch, torch.float64)
    out, state = fused.forward(module, x, hx, lengths)
    ref_out, ref_state = packed_oracle(module, x, hx, lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for a, b in zip(as_tuple(state), as_tuple(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
