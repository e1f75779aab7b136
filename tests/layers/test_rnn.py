"""The drop-ins against torch.nn.RNN/LSTM/GRU with copied weights, and their errors."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import reference

TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
OURS = {"LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU, "RNN_TANH": rnnkit.RNN, "RNN_RELU": rnnkit.RNN}

# (num_layers, bidirectional, batch_first, proj_size, packed): a covering subset of the full
# product, every value of every factor appearing with every other at least once per mode.
CONFIGS = [
    (1, False, False, 0, False),
    (1, True, True, 0, True),
    (2, True, False, 2, False),
    (2, False, True, 0, True),
    (3, True, True, 2, True),
    (3, False, False, 2, False),
]


def make_pair(mode, engine="auto", **kwargs):
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if "RNN" in mode else {}
    torch.manual_seed(0)
    theirs = TORCH[mode](**kwargs, **extra)
    ours = OURS[mode](**kwargs, **extra, engine=engine)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def leaves(result):
    out, state = result
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_default_options_equal_torch(mode, config, engine):
    num_layers, bidirectional, batch_first, proj_size, packed = config
    if mode != "LSTM":
        proj_size = 0
    kwargs = dict(input_size=3, hidden_size=4, num_layers=num_layers,
                  bidirectional=bidirectional, batch_first=batch_first)
    if proj_size:
        kwargs["proj_size"] = proj_size
    theirs, ours = make_pair(mode, engine, **kwargs)
    torch.manual_seed(1)
    T, B = 5, 3
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3))
    directions = 2 if bidirectional else 1
    h_out = proj_size or 4
    h0 = torch.randn(num_layers * directions, B, h_out, requires_grad=True)
    c0 = torch.randn(num_layers * directions, B, 4, requires_grad=True)
    hx = (h0, c0) if mode == "LSTM" else h0
    lengths = torch.tensor([5, 2, 4])
    results, grads = [], []
    for module in (theirs, ours):
        xi = x.clone().requires_grad_(True)
        inputs = pack_padded_sequence(xi, lengths, batch_first=batch_first,
                                      enforce_sorted=False) if packed else xi
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = module(inputs, hx)
        tensors = leaves(result)
        loss = sum((t * torch.linspace(0.5, 1.5, t.numel()).view_as(t)).sum() for t in tensors)
        params = list(module.parameters())
        grads.append(torch.autograd.grad(loss, [xi, h0, c0, *params], allow_unused=True))
        results.append(result)
    if packed:
        for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(results[0][0], name), getattr(results[1][0], name))
    for want, got in zip(leaves(results[0]), leaves(results[1]), strict=True):
        assert want.shape == got.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for want, got in zip(*grads, strict=True):
        if want is None:
            assert got is None or got.eq(0).all()
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_parameters_names_and_initialisation_equal_torch(mode):
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    if mode == "LSTM":
        kwargs["proj_size"] = 3
    torch.manual_seed(7)
    theirs = TORCH[mode](**kwargs)
    torch.manual_seed(7)
    ours = OURS[mode](**kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(a, b)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert all(a is getattr(ours, n) for a, n in zip(ours._flat_weights,
                                                    ours._flat_weights_names, strict=True))
    for name in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.cell_options == {}
    assert repr(ours) == repr(theirs)


def test_unbatched_input_like_torch():
    theirs, ours = make_pair("GRU", input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(6, 3)
    h0 = torch.randn(2, 4)
    for hx in (None, h0):
        want_out, want_h = theirs(x, hx)
        got_out, got_h = ours(x, hx)
        assert got_out.shape == (6, 4) and got_h.shape == (2, 4)
        torch.testing.assert_close(got_out, want_out)
        torch.testing.assert_close(got_h, want_h)
    with pytest.raises(ValueError, match="for unbatched 2-D input, hx should also be 2-D"):
        ours(x, h0[:, None])
    with pytest.raises(ValueError, match="for batched 3-D input, hx should also be 3-D"):
        ours(x[:, None], h0)


def test_no_bias_and_dropout_at_eval_equal_torch():
    theirs, ours = make_pair("LSTM", input_size=3, hidden_size=4, num_layers=2, bias=False,
                             dropout=0.5)
    theirs.eval()
    ours.eval()
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    assert "bias_ih_l0" not in dict(ours.named_parameters())


def test_inter_layer_dropout_in_training_is_active_and_only_between_layers():
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, num_layers=2, dropout=0.5, engine="loop")
    x = torch.randn(5, 2, 3)
    first, _ = lstm(x)
    second, _ = lstm(x)
    assert not torch.allclose(first, second)  # active in training
    # between: exactly one dropout, on layer 0's output before layer 1 (oracle: two
    # one-layer torch.nn.LSTMs with the same weights and F.dropout in between)
    below, above = nn.LSTM(3, 4), nn.LSTM(4, 4)
    below.load_state_dict({k: getattr(lstm, k) for k in below.state_dict()})
    above.load_state_dict({k: getattr(lstm, k.replace("_l0", "_l1")) for k in above.state_dict()})
    torch.manual_seed(1)
    got, _ = lstm(x)
    torch.manual_seed(1)
    want, _ = above(F.dropout(below(x)[0], 0.5, training=True))
    torch.testing.assert_close(got, want)
    # only between: not on the input, not on the last layer's output, not in eval
    single = rnnkit.LSTM(3, 4, engine="loop")
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        dropped = rnnkit.LSTM(3, 4, dropout=0.5, engine="loop")
    dropped.load_state_dict(single.state_dict())
    assert torch.equal(dropped(x)[0], single(x)[0])
    lstm.eval()
    torch.testing.assert_close(lstm(x)[0], above(below(x)[0])[0])


def test_lengths_on_padded_input_equal_torch_packed():
    theirs, ours = make_pair("LSTM", input_size=3, hidden_size=4, num_layers=2,
                             bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([2, 6, 3])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    want_packed, (want_h, want_c) = theirs(packed)
    want, _ = nn.utils.rnn.pad_packed_sequence(want_packed, batch_first=True, total_length=6)
    got, (got_h, got_c) = ours(x, lengths=lengths)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_c, want_c)


def test_peephole_lstm_equals_numpy_reference():
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(3, 4, peepholes=True, cell_clip=2.0, engine="loop").double()
    assert lstm.cell_options == {"peepholes": True, "cell_clip": 2.0}
    assert {"weight_ci_l0", "weight_cf_l0", "weight_co_l0"} <= set(lstm.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out, (h, c) = lstm(x)
    params = {name[: -len("_l0")]: p.detach().numpy() for name, p in lstm.named_parameters()}
    hs, cache = reference.lstm_forward(x.numpy(), None, params, cell_clip=2.0)
    np.testing.assert_allclose(out.detach().numpy(), hs, atol=1e-10)
    np.testing.assert_allclose(h[0].detach().numpy(), hs[-1], atol=1e-10)


def test_gru_reset_before_equals_numpy_reference():
    torch.manual_seed(0)
    gru = rnnkit.GRU(3, 4, reset_after=False, bidirectional=True).double()
    assert gru.cell_options == {"reset_after": False}
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h_n = gru(x)
    for direction, suffix in ((0, "_l0"), (1, "_l0_reverse")):
        params = {name[: -len(suffix)]: p.detach().numpy()
                  for name, p in gru.named_parameters() if name.endswith(suffix)}
        inputs = x.numpy() if direction == 0 else x.numpy()[::-1]
        hs, _ = reference.gru_forward(np.ascontiguousarray(inputs), None, params,
                                      reset_after=False)
        if direction == 1:
            hs = hs[::-1]
        np.testing.assert_allclose(out[..., 4 * direction: 4 * direction + 4].detach().numpy(),
                                   hs, atol=1e-10)


def test_irnn_and_forget_bias_initialisation():
    rnn = rnnkit.RNN(3, 4, nonlinearity="relu", init="irnn")
    assert torch.equal(rnn.weight_hh_l0.detach(), torch.eye(4))
    assert rnn.cell_options == {} and rnn.init_options == {"init": "irnn"}
    lstm = rnnkit.LSTM(3, 4, forget_bias=1.0)
    assert lstm.bias_ih_l0[4:8].eq(1).all() and lstm.bias_hh_l0[4:8].eq(0).all()
    assert lstm.cell_options == {}


def test_layer_norm_parameters_live_on_the_module():
    lstm = rnnkit.LSTM(3, 4, num_layers=2, layer_norm=True)
    names = set(lstm.state_dict())
    assert {"ln_ih_weight_l0", "ln_c_bias_l1", "weight_ih_l1"} <= names
    assert lstm.ln_c_weight_l0.eq(1).all()
    out, _ = lstm(torch.randn(4, 2, 3))
    out.sum().backward()
    assert lstm.ln_ih_weight_l1.grad is not None


def test_module_conversions_reach_the_cells():
    gru = rnnkit.GRU(3, 4, layer_norm=True).double()
    out, h = gru(torch.randn(3, 2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
    # functional_call must substitute the parameters the cells use.
    params = {name: torch.zeros_like(p) for name, p in gru.named_parameters()}
    out, _ = torch.func.functional_call(gru, params, (torch.randn(3, 2, 3, dtype=torch.float64),))
    assert out.abs().max() == 0


def test_residual_adds_the_layer_input():
    torch.manual_seed(0)
    plain = rnnkit.GRU(3, 4, num_layers=2, engine="loop")
    residual = rnnkit.GRU(3, 4, num_layers=2, residual=True)
    residual.load_state_dict(plain.state_dict())
    assert residual.cell_options == {} and "residual=True" in repr(residual)
    x = torch.randn(5, 2, 3)
    first = nn.GRU(3, 4)
    first.load_state_dict({k[:-1] + "0": v for k, v in plain.state_dict().items()
                           if k.endswith("l0")})
    layer0, _ = first(x)
    second = nn.GRU(4, 4)
    second.load_state_dict({k[:-1] + "0": v for k, v in plain.state_dict().items()
                            if k.endswith("l1")})
    layer1, _ = second(layer0)
    torch.testing.assert_close(residual(x)[0], layer1 + layer0)
    with pytest.raises(ValueError, match="residual=True .* needs num_layers >= 2"):
        rnnkit.GRU(3, 4, residual=True)


def test_learnable_initial_state_is_used_and_trained():
    lstm = rnnkit.LSTM(2, 3, num_layers=2, learnable_initial_state=True)
    assert lstm.initial_h.shape == (2, 3) and lstm.initial_c.shape == (2, 3)
    with torch.no_grad():
        lstm.initial_h.fill_(0.5)
    x = torch.randn(4, 2, 2)
    out, _ = lstm(x)
    want, _ = lstm(x, (torch.full((2, 2, 3), 0.5), torch.zeros(2, 2, 3)))
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert lstm.initial_h.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m(torch.randn(2, 3, 4, 3)), ValueError, "expected input to be 2-D .* 4-D"),
        (lambda m: m(torch.randn(5, 2, 7)), ValueError, "Expected 3, got 7"),
        (lambda m: m(torch.randint(0, 3, (5, 2, 3))), TypeError, "must be floating point"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[6, 1]), ValueError,
         r"lengths\[0\] = 6 is longer than the sequence \(T = 5"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[0, 1]), ValueError,
         r"lengths must be in \[1, T\]"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[-2, 1]), ValueError,
         r"lengths must be in \[1, T\]"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([1, 2], device="meta")),
         ValueError, "lengths are on device meta but the input is on cpu"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[1, 2, 3]), ValueError,
         r"lengths must have shape \(batch,\) = \(2,\)"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4))),
         ValueError, r"expected h_0 of shape .* = \(1, 2, 4\), got \(1, 3, 4\)"),
        (lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), TypeError,
         r"hx must be a tuple \(h_0, c_0\)"),
        (lambda m: m(pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), lengths=[5, 3]),
         ValueError, "lengths= cannot be combined with a PackedSequence"),
        (lambda m: m(torch.randn(0, 2, 3)), ValueError, "empty"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(rnnkit.LSTM(3, 4))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: rnnkit.LSTM(3, 0), ValueError, "hidden_size must be greater than zero"),
        (lambda: rnnkit.LSTM(3, 4, proj_size=4), ValueError, "proj_size has to be smaller"),
        (lambda: rnnkit.LSTM(3, 4, dropout=1.5), ValueError, r"dropout should be a number"),
        (lambda: rnnkit.GRU(3, 4, engine="fast"), ValueError, "unknown engine 'fast'"),
        (lambda: rnnkit.RNN(3, 4, nonlinearity="gelu"), ValueError, "Unknown nonlinearity"),
        (lambda: rnnkit.RNN(3, 4, init="ortho"), ValueError, "init must be 'default' or 'irnn'"),
        (lambda: rnnkit.LSTM(3, 4, peepholes=True, engine="fused"), ValueError,
         "engine='fused' cannot run this LSTM: cell option peepholes=True"),
        (lambda: rnnkit.LSTM(3, 4, zoneout=(0.1, 0.2, 0.3)), ValueError,
         "zoneout takes one rate or one per state tensor"),
        (lambda: rnnkit.GRU(3, 4, recurrent_dropout=1.0), ValueError,
         r"recurrent_dropout must be in \[0, 1\)"),
        (lambda: rnnkit.LSTM(3, 4.0), TypeError, "hidden_size should be of type int"),
    ],
)
def test_constructor_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rnnkit.GRU(3, 4, dropout=0.2)


def test_factory_arguments_pickling_and_hx_device():
    import io

    gru = rnnkit.GRU(3, 4, num_layers=2, dtype=torch.float64, layer_norm=True)
    assert all(p.dtype == torch.float64 for p in gru.parameters())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    buffer = io.BytesIO()
    torch.save(gru, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x)[0], gru(x)[0])
    with torch.no_grad():
        loaded.weight_hh_l1.zero_()  # the copy's cells use the copy's parameters
    assert not torch.allclose(loaded(x)[0], gru(x)[0])
    with pytest.raises(ValueError, match="h_0 is on meta but the input is on cpu"):
        gru(x, torch.zeros(2, 2, 4, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match="h_0 dtype torch.float32 does not match input dtype"):
        gru(x, torch.zeros(2, 2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_lengths_on_the_cpu():
    theirs, ours = make_pair("LSTM", input_size=3, hidden_size=4, bidirectional=True)
    theirs, ours = theirs.cuda(), ours.cuda()
    x = torch.randn(5, 2, 3, device="cuda")
    lengths = torch.tensor([5, 3])
    got, _ = ours(x, lengths=lengths)
    want, _ = theirs(pack_padded_sequence(x, lengths, enforce_sorted=False))
    want, _ = nn.utils.rnn.pad_packed_sequence(want, total_length=5)
    torch.testing.assert_close(got, want)
    loop = OURS["LSTM"](3, 4, bidirectional=True, engine="loop").cuda()
    loop.load_state_dict(ours.state_dict())
    torch.testing.assert_close(loop(x, lengths=lengths.cuda())[0], want)
