"""Backbone: every cell name builds, runs forward and backward; the drop-in path equals
torch.nn with copied weights; the state continues a sequence exactly."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, UGRNNCell
from rnnkit.models import CELL_NAMES, Backbone

ATOL = 1e-6  # rnnkit's compiled GRU/RNN kernels vs torch.nn (docs/engine-compiled.md)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_every_cell_name_runs_forward_and_backward(name, bidirectional):
    torch.manual_seed(0)
    net = Backbone(4, hidden_size=4, cell=name, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(3, 5, 4, requires_grad=True)
    lengths = torch.tensor([5, 2, 1])
    out, state = net(x, lengths=lengths)
    assert out.shape == (3, 5, net.output_size)
    assert net.output_size == 4 * (2 if bidirectional else 1)
    assert torch.all(out[1, 2:] == 0) and torch.all(out[2, 1:] == 0)  # zero at padding
    out.square().sum().backward()
    assert x.grad is not None and torch.all(x.grad[1, 2:] == 0)  # padding gets no gradient
    assert x.grad[0].abs().sum() > 0
    for name_, param in net.named_parameters():
        assert param.grad is not None, name_
    assert net.uses_drop_in == (name in ("lstm", "gru", "elman", "rnn_relu", "irnn"))


def test_unknown_cell_name_is_one_line_with_the_closest_match():
    with pytest.raises(ValueError) as info:
        Backbone(3, cell="lstn")
    message = str(info.value)
    assert "\n" not in message
    assert "'lstn'" in message and "did you mean 'lstm'" in message
    for name in CELL_NAMES:
        assert name in message
    with pytest.raises(ValueError, match="did you mean 'min_gru'"):
        Backbone(3, cell="mingru")
    with pytest.raises(TypeError, match="cell must be one of"):
        Backbone(3, cell=3)
    assert Backbone(3, cell="GRU").cell_name == "gru"  # case and dashes are forgiven


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_layers"):
        Backbone(3, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        Backbone(3, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        Backbone(3, hidden_size=0)
    with pytest.raises(ValueError, match="set by the model"):
        Backbone(3, cell="lstm", cell_options={"batch_first": False})
    with pytest.raises(TypeError, match="cell 'gru'"):
        Backbone(3, cell="gru", cell_options={"peepholes": True})
    with pytest.raises(ValueError, match="groups"):
        Backbone(3, cell="grouped_lstm")  # 3 features do not split into 2 groups
    with pytest.raises(ValueError, match="input_size is 5"):
        Backbone(3, cell=GRUCell(5, 4))
    with pytest.raises(ValueError, match="hidden_size=8 but the cell has hidden_size=4"):
        Backbone(3, hidden_size=8, cell=GRUCell(3, 4))
    with pytest.raises(TypeError, match="not a recurrent cell"):
        Backbone(3, cell=nn.Linear(3, 4))


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_cell_options_reach_the_cells():
    net = Backbone(4, hidden_size=6, cell="indrnn", num_layers=2,
                   cell_options={"recurrent_max_abs": 0.5, "nonlinearity": "tanh"})
    for layer in net.layers:
        assert layer.cell.recurrent_max_abs == 0.5 and layer.cell.nonlinearity == "tanh"
    lstm = Backbone(4, hidden_size=6, cell="lstm", cell_options={"proj_size": 3})
    assert lstm.output_size == 3 and lstm(torch.randn(2, 3, 4))[0].shape == (2, 3, 3)
    assert Backbone(4, cell="irnn").drop_in.nonlinearity == "relu"


@pytest.mark.parametrize(
    "name, torch_class, options",
    [("lstm", nn.LSTM, {}), ("gru", nn.GRU, {}), ("elman", nn.RNN, {}),
     ("rnn_relu", nn.RNN, {"nonlinearity": "relu"})],
)
def test_drop_in_path_equals_torch_nn_with_copied_weights(name, torch_class, options):
    torch.manual_seed(1)
    net = Backbone(3, hidden_size=5, cell=name, num_layers=2, bidirectional=True)
    reference = torch_class(3, 5, num_layers=2, bidirectional=True, batch_first=True, **options)
    reference.load_state_dict(net.drop_in.state_dict())
    x = torch.randn(2, 6, 3)
    out, state = net(x)
    expected, h_n = reference(x)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # the state is torch's (L*D, B, H)
    expected_h = h_n[0] if name == "lstm" else h_n
    got_h = state[0] if name == "lstm" else state
    torch.testing.assert_close(got_h, expected_h, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru", "indrnn", "nas"])
def test_state_continues_the_sequence(name):
    torch.manual_seed(2)
    net = Backbone(3, hidden_size=4, cell=name, num_layers=2)
    x = torch.randn(2, 7, 3)
    whole, final = net(x)
    first, state = net(x[:, :3])
    second, state = net(x[:, 3:], state=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=ATOL, rtol=0)
    for got, expected in zip(_leaves(state), _leaves(final), strict=True):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    zeros = net.initial_state(2)
    torch.testing.assert_close(net(x, state=zeros)[0], whole, atol=0, rtol=0)


def _leaves(tree):
    if isinstance(tree, (tuple, list)):
        return [leaf for part in tree for leaf in _leaves(part)]
    return [tree]


def test_cell_stack_equals_the_cells_stepped_by_hand():
    torch.manual_seed(3)
    net = Backbone(3, hidden_size=4, cell="ugrnn", num_layers=2)
    x = torch.randn(2, 5, 3)
    out, _ = net(x)
    h = [torch.zeros(2, 4), torch.zeros(2, 4)]
    steps = []
    for t in range(5):
        inputs = x[:, t]
        for index, layer in enumerate(net.layers):
            inputs, h[index] = layer.cell(inputs, h[index])
        steps.append(inputs)
    torch.testing.assert_close(out, torch.stack(steps, dim=1), atol=1e-6, rtol=0)


def test_a_cell_instance_is_layer_one_and_its_config_builds_the_others():
    cell = UGRNNCell(3, 6, forget_bias=0.5)
    net = Backbone(3, cell=cell, num_layers=3)
    assert net.layers[0].cell is cell and net.hidden_size == 6
    for layer in net.layers[1:]:
        assert isinstance(layer.cell, UGRNNCell)
        assert layer.cell.input_size == 6 and layer.cell.forget_bias == 0.5
    assert net(torch.randn(2, 4, 3))[0].shape == (2, 4, 6)
    config = net.get_config()
    assert config["cell"]["class_name"] == "UGRNNCell"
    twin = Backbone.from_config(config)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(twin(x)[0], net(x)[0], atol=0, rtol=0)


def test_dropout_only_in_training_and_between_layers():
    torch.manual_seed(4)
    net = Backbone(3, hidden_size=8, cell="indrnn", num_layers=2, dropout=0.5)
    x = torch.randn(2, 4, 3)
    net.eval()
    first, second = net(x)[0], net(x)[0]
    assert torch.equal(first, second)
    net.train()
    assert not torch.equal(net(x)[0], first)
    single = Backbone(3, hidden_size=8, cell="indrnn", num_layers=1, dropout=0.5).train()
    assert torch.equal(single(x)[0], single(x)[0])  # one layer: nothing between


def test_odd_sizes_run():
    net = Backbone(1, hidden_size=1, cell="lstm")
    out, _ = net(torch.randn(1, 1, 1))
    assert out.shape == (1, 1, 1)
    assert rnnkit.models.Backbone is Backbone
