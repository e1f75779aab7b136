"""The drop-ins are instances of torch.nn's classes (issue 9 item 4.5), and that costs none of
rnnkit's behaviour: state_dict names, initialisation, extras, pickling, conversions."""

import copy
import io

import pytest
import torch
from torch import nn

import rnnkit

PAIRS = [(rnnkit.RNN, nn.RNN), (rnnkit.GRU, nn.GRU), (rnnkit.LSTM, nn.LSTM)]


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_drop_ins_are_torch_instances(ours, theirs):
    module = ours(3, 5)
    assert isinstance(module, theirs)
    assert isinstance(module, nn.RNNBase)
    others = {cls for _, cls in PAIRS} - {theirs}
    assert not any(isinstance(module, other) for other in others)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_torch_base_bookkeeping_survives_conversion_pickling_and_assignment(ours, theirs):
    torch.manual_seed(3)
    reference = theirs(3, 5, 2, bidirectional=True)
    torch.manual_seed(3)
    module = ours(3, 5, 2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(module(x), reference(x))  # same draws, same outputs
    assert [n for n, _ in module.named_parameters()] == [
        n for n, _ in reference.named_parameters()
    ]
    # torch.nn.RNNBase's weak references follow .to(): pickling checks them.
    module.double()
    assert all(ref() is w for ref, w in zip(module._flat_weight_refs, module._flat_weights,
                                            strict=True))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x.double()), module(x.double()))
    torch.testing.assert_close(copy.deepcopy(module)(x.double()), module(x.double()))
    # Assigning a new weight goes through torch.nn.RNNBase.__setattr__ and is used at once.
    module.weight_hh_l0 = nn.Parameter(torch.zeros_like(module.weight_hh_l0))
    assert module._flat_weights[1] is module.weight_hh_l0
    assert module.all_weights[0][1] is module.weight_hh_l0


def test_rnnkit_extras_stay_on_a_torch_instance():
    lstm = rnnkit.LSTM(3, 4, peepholes=True, layer_norm=True, stateful=True)
    assert isinstance(lstm, nn.LSTM)
    names = dict(lstm.named_parameters())
    assert "weight_ci_l0" in names and "ln_ih_weight_l0" in names
    assert "peepholes=True" in repr(lstm) and "stateful=True" in repr(lstm)
    lstm(torch.randn(2, 2, 3))
    lstm.flatten_parameters()  # torch's cuDNN call: a no-op here
    assert lstm._state_store is not None


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:torch.quantize_per_tensor")
def test_quantize_dynamic_leaves_drop_ins_alone_and_runs():
    # torch.ao's dynamic quantization swaps modules by exact type: rnnkit's stay float (and
    # give the float result), the Linear after them is quantized.
    torch.manual_seed(0)
    model = nn.Sequential(rnnkit.LSTM(3, 5)).eval()
    head = nn.Linear(5, 2).eval()
    quantized = torch.ao.quantization.quantize_dynamic(
        nn.ModuleDict({"rnn": model[0], "head": head}), {nn.LSTM, nn.Linear}, dtype=torch.qint8
    )
    assert type(quantized["rnn"]) is rnnkit.LSTM
    assert type(quantized["head"]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    x = torch.randn(6, 2, 3)
    out, _ = quantized["rnn"](x)
    torch.testing.assert_close(out, model[0](x)[0])
    assert quantized["head"](out).shape == (6, 2, 2)
