"""rnnkit.summary and the task models' .summary() (rnnkit/summaries.py).

Oracles: the seed's Keras table (``../shared/seeds/001_*.txt``: ``SimpleRNN(16, relu)`` on
28x28 inputs + ``Dense(10)`` + softmax: 720 + 170 + 0 = 890 parameters; Keras 3.15's own
``count_params`` gives the same numbers), parameter counts worked out by hand from the layer
shapes, ``sum(p.numel())`` over each module's parameters, and the shapes a plain forward
pass returns, called module by module without the summary's hooks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.layers import DropoutWrapper, Recurrence, Sequence


class KerasSimpleRNNCell(nn.Module):
    """Keras' ``SimpleRNNCell``: ``h = act(x W + h U + b)``, one bias (torch's layout has two)."""

    def __init__(self, input_size: int, units: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, units
        self.state_size = self.output_size = units
        self.kernel = nn.Parameter(torch.randn(input_size, units) * 0.1)
        self.recurrent_kernel = nn.Parameter(torch.randn(units, units) * 0.1)
        self.bias = nn.Parameter(torch.zeros(units))

    def forward(self, x, h):
        h = torch.relu(x @ self.kernel + h @ self.recurrent_kernel + self.bias)
        return h, h


def seed_model() -> nn.Sequential:
    """The seed's Keras model: SimpleRNN(16, relu, input (28, 28)), Dense(10), softmax."""
    return nn.Sequential(Sequence(KerasSimpleRNNCell(28, 16)), nn.Linear(16, 10),
                         nn.Softmax(dim=-1))


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def shape_of(text: str) -> tuple[int, ...]:
    """``"(B=2, T=28, F=16)"`` or ``"(2, 10)"`` -> the tuple of sizes."""
    return tuple(int(v) for v in re.findall(r"(?:=|\(|, )(\d+)", text.split(" state")[0]))


def test_the_seeds_keras_table():
    model = seed_model()
    x = torch.randn(2, 28, 28)
    result = rnnkit.summary(model, x, print_fn=None)
    assert [(r.name, r.type, r.params) for r in result.rows] == [
        ("0", "Sequence", 28 * 16 + 16 * 16 + 16),  # 720, as the seed prints
        ("1", "Linear", 16 * 10 + 10),  # 170
        ("2", "Softmax", 0),
    ]
    assert (result.total_params, result.trainable_params, result.non_trainable_params) == (
        890, 890, 0)
    assert result.total_params == numel(model)
    # output shapes: what the layers return when called one by one (no hooks)
    with torch.no_grad():
        features = model[0](x)
        logits = model[1](features)
    assert result.rows[0].output == "(B=2, F=16)" and shape_of(result.rows[0].output) == tuple(
        features.shape)
    assert shape_of(result.rows[1].output) == tuple(logits.shape) == (2, 10)
    text = str(result)
    for line in ("Layer (type)", "Output Shape", "Param #", "Total params: 890",
                 "Trainable params: 890", "Non-trainable params: 0"):
        assert line in text
    assert re.search(r"^0 \(Sequence\)\s+\(B=2, F=16\)\s+720$", text, re.MULTILINE)
    assert repr(result) == ("ModelSummary(model='Sequential', rows=3, total_params=890, "
                            "trainable_params=890)")


def test_torch_layout_counts_two_biases():
    """rnnkit.RNN keeps torch's b_ih and b_hh: 16 more than Keras' SimpleRNN."""
    model = nn.Sequential(Sequence(rnnkit.RNN(28, 16, nonlinearity="relu", batch_first=True)),
                          nn.Linear(16, 10))
    result = rnnkit.summary(model, input_size=(3, 28, 28), print_fn=None)
    assert result.rows[0].params == 28 * 16 + 16 * 16 + 2 * 16 == 736
    assert result.total_params == 906 == numel(model)
    assert result.rows[0].output == "(B=3, F=16)"


def test_recurrent_rows_show_time_major_outputs_and_named_states():
    model = nn.Sequential()
    model.add_module("rnn", Recurrence(LSTMCell(3, 4)))  # time-major
    x = torch.randn(5, 2, 3)
    printed = []
    result = rnnkit.summary(model, x, print_fn=printed.append)
    (row,) = result.rows
    out, (h, c) = model.rnn(x)
    assert row.output == "(T=5, B=2, F=4)" and shape_of(row.output) == tuple(out.shape)
    assert row.state == "state h (B=2, 4), c (B=2, 4)"
    assert tuple(h.shape) == tuple(c.shape) == (2, 4)
    assert row.params == numel(model.rnn) == 4 * 4 * (3 + 4) + 2 * 16
    assert printed == [str(result)]
    assert "(recursive)" not in printed[0] and "LSTMCell" not in printed[0]


def test_a_recurrent_layer_alone_is_one_row():
    layer = rnnkit.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    result = rnnkit.summary(layer, torch.randn(2, 7, 3), print_fn=None)
    (row,) = result.rows
    out, (h_n, c_n) = layer(torch.randn(2, 7, 3))
    assert (row.name, row.type) == ("LSTM", "LSTM")
    assert shape_of(row.output) == tuple(out.shape) == (2, 7, 10)
    assert row.state == "state h_n (L*D=4, B=2, H=5), c_n (L*D=4, B=2, H=5)"
    assert tuple(h_n.shape) == (4, 2, 5)
    assert row.params == result.total_params == numel(layer)


MODELS = {
    "classifier": lambda: rnnkit.models.SequenceClassifier(
        5, 3, hidden_size=6, cell="indrnn", num_layers=2, bidirectional=True),
    "classifier_tokens": lambda: rnnkit.models.SequenceClassifier(
        None, 3, vocab_size=11, hidden_size=6, cell="gru"),
    "regressor": lambda: rnnkit.models.SequenceRegressor(4, 2, hidden_size=5, cell="min_lstm"),
    "tagger": lambda: rnnkit.models.SequenceTagger(4, 3, hidden_size=5),
    "language_model": lambda: rnnkit.models.LanguageModel(
        vocabulary=rnnkit.data.Vocabulary.build("abcdef"), hidden_size=8, num_layers=2,
        tie_weights=True),
    "forecaster": lambda: rnnkit.models.Forecaster(8, 3, period=4, hidden_size=4, seed=0).adapt(
        np.arange(10.0, 40.0)),
    "seq2seq": lambda: rnnkit.models.Seq2Seq(9, 7, embedding_dim=3, hidden_size=4,
                                             attention="luong"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_task_models_summarise_themselves(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    result = model.summary(print_fn=None)
    assert result.total_params == numel(model)  # tied weights counted once
    assert result.trainable_params == numel(model)
    for row in result.rows:  # each row: the module and everything under it
        assert row.params == numel(model.get_submodule(row.path)), row
    # the output row is what the model returns on the example it builds
    example = model.example_input()
    args = example if isinstance(example, tuple) else (example,)
    model.eval()
    with torch.no_grad():
        output = model(*args)
    first = output[0] if isinstance(output, tuple) else output
    assert str(tuple(first.shape)).replace(",)", ")") in result.output_description
    assert "Total params: " + f"{numel(model):,}" in str(result)


def test_backbone_rows_match_a_forward_by_hand():
    model = MODELS["classifier"]()
    x = torch.randn(3, 9, 5)
    result = model.summary(x, print_fn=None)
    rows = {row.path: row for row in result.rows}
    with torch.no_grad():
        outputs, state = model.backbone(model.encoder(x))
        first, first_state = model.backbone.layers[0](x)
    assert shape_of(rows["backbone"].output) == tuple(outputs.shape) == (3, 9, 12)
    assert shape_of(rows["backbone.layers.0"].output) == tuple(first.shape)
    assert rows["backbone.layers.0"].state == "state fw/h (B=3, 6), bw/h (B=3, 6)"
    assert [tuple(t.shape) for t in first_state] == [(3, 6), (3, 6)]
    assert rows["backbone.layers.0"].name == "layers.0" and rows["backbone.layers.0"].depth == 2
    assert "backbone.layers" not in rows  # the ModuleList container itself: no row
    shallow = model.summary(x, depth=1, print_fn=None)
    assert [row.path for row in shallow.rows] == ["encoder", "backbone", "drop", "head"]


def test_frozen_parameters_are_non_trainable():
    model = seed_model()
    model[1].requires_grad_(False)
    result = rnnkit.summary(model, input_size=(1, 28, 28), print_fn=None)
    assert (result.trainable_params, result.non_trainable_params) == (720, 170)
    assert "Non-trainable params: 170" in str(result)


def test_modes_and_carried_state_are_left_as_they_were():
    layer = rnnkit.GRU(3, 4, batch_first=True, stateful=True)
    wrapped = DropoutWrapper(GRUCell(4, 4), output_keep_prob=0.5).eval()
    model = nn.Sequential(Sequence(layer, return_sequences=True), Sequence(wrapped))
    model.train()
    wrapped.eval()
    layer(torch.randn(2, 5, 3))
    carried = [t.clone() for t in layer._state_store.state]
    rnnkit.summary(model, torch.randn(2, 5, 3), print_fn=None)
    assert model.training and layer.training and not wrapped.training
    assert all(torch.equal(a, b) for a, b in zip(layer._state_store.state, carried,
                                                 strict=True))


def test_a_step_loop_in_the_model_is_one_row_with_its_call_count():
    model = MODELS["seq2seq"]()
    result = model.summary(steps=5, print_fn=None)
    cell = {row.path: row for row in result.rows}["decoder.cell"]
    assert cell.calls == 5 and cell.type == "AttentionWrapper"
    assert cell.state.startswith("state cell_state/h (B=2, 4), cell_state/c (B=2, 4)")
    assert "x5 calls" in str(result)
    assert not any(row.path.startswith("decoder.cell.") for row in result.rows)


def test_clear_errors():
    model = seed_model()
    with pytest.raises(ValueError, match="give example_input .* or input_size"):
        rnnkit.summary(model, print_fn=None)
    with pytest.raises(RuntimeError, match="the forward pass of Sequential on the example "
                                           "input failed"):
        rnnkit.summary(model, torch.randn(2, 28, 5), print_fn=None)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        rnnkit.summary(model, torch.randn(2, 28, 28), depth=0, print_fn=None)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        rnnkit.summary(lambda x: x, torch.randn(2, 3))
    unfitted = rnnkit.models.Forecaster(8, 3, period=4, hidden_size=4, seed=0)
    with pytest.raises(RuntimeError, match="adapt"):
        unfitted.summary(print_fn=None)


def test_the_table_in_the_docs_is_what_summary_prints():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    printed = text.split("prints, for the classifier:\n\n```\n", 1)[1].split("\n```", 1)[0]
    model = rnnkit.SequenceClassifier(28, 10, hidden_size=16, cell="gru", num_layers=2)
    assert str(model.summary(print_fn=None)) == printed
