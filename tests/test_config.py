"""get_config / from_config (rnnkit.config): every rnnkit cell and layer, every option, rebuilt
from its JSON config alone gives the same config, the same parameters and, with the original's
weights loaded, the same outputs. The round trip is Keras' own layer test
(``keras/src/testing/test_case.py``, ``run_class_serialization_test``: ``cls.from_config(
layer.get_config())`` must give the same config, and so must a JSON round trip)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import rnnkit
from rnnkit.cells import (
    ElmanCell,
    GroupedLSTMCell,
    GRUCell,
    IndRNNCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    MultiCell,
    NASCell,
    RecurrentCell,
    UGRNNCell,
)
from rnnkit.config import deserialize, register_serializable, registered_classes, serialize
from rnnkit.layers import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    Fold,
    Recurrence,
    RecurrentDropoutCell,
    Sequence,
    UnfoldFrom,
    ZoneoutCell,
)
from rnnkit.layers.attention import AttentionWrapper, BahdanauAttention, LuongAttention
from rnnkit.models.forecaster import Forecaster
from rnnkit.models.seq2seq import Decoder, Encoded, Encoder, Seq2Seq

T, B, I, H = 4, 3, 3, 4

# id -> a module built with the option(s) under test. Extend it when a class or an argument
# is added: test_every_registered_class_is_covered fails until the class has a row.
CASES = {
    "elman": lambda: ElmanCell(I, H),
    "elman_relu_irnn_nobias": lambda: ElmanCell(I, H, nonlinearity="relu", bias=False,
                                                init="irnn"),
    "elman_float64": lambda: ElmanCell(I, H, dtype=torch.float64),
    "lstm": lambda: LSTMCell(I, H),
    "lstm_nobias_no_forget_bias": lambda: LSTMCell(I, H, bias=False, forget_bias=None),
    "lstm_peepholes_proj_clip": lambda: LSTMCell(I, H, peepholes=True, proj_size=2,
                                                 cell_clip=2.5, forget_bias=0.5),
    "lstm_coupled_layer_norm": lambda: LSTMCell(I, H, coupled_gates=True, peepholes=True,
                                                layer_norm=True),
    "gru": lambda: GRUCell(I, H),
    "gru_reset_before_layer_norm_nobias": lambda: GRUCell(I, H, bias=False, reset_after=False,
                                                          layer_norm=True),
    "gru_layer_norm": lambda: GRUCell(I, H, layer_norm=True),
    "ugrnn": lambda: UGRNNCell(I, H),
    "ugrnn_nobias_forget": lambda: UGRNNCell(I, H, bias=False, forget_bias=np.float32(0.5)),
    "nas": lambda: NASCell(I, H),
    "nas_proj_nobias": lambda: NASCell(I, H, proj_size=2, bias=False),
    "grouped_lstm": lambda: GroupedLSTMCell(6, 4, groups=2),
    "grouped_lstm_nobias": lambda: GroupedLSTMCell(6, 6, groups=3, bias=False,
                                                   forget_bias=None),
    "indrnn": lambda: IndRNNCell(I, H),
    "indrnn_tanh_nobias_max": lambda: IndRNNCell(I, H, nonlinearity="tanh", bias=False,
                                                 recurrent_max_abs=1.5),
    "min_gru": lambda: MinGRUCell(I, H),
    "min_lstm_nobias": lambda: MinLSTMCell(I, H, bias=False),
    "multi_cell": lambda: MultiCell([LSTMCell(I, H, proj_size=2), GRUCell(2, H),
                                     ZoneoutCell(NASCell(H, H), 0.1)]),
    "recurrence_multi_cell": lambda: Recurrence(MultiCell([ElmanCell(I, H), MinGRUCell(H, H)])),
    "recurrent_dropout_cell": lambda: RecurrentDropoutCell(GRUCell(I, H), 0.25),
    "zoneout_cell": lambda: ZoneoutCell(LSTMCell(I, H), (0.1, 0.3)),
    # TF1's cell wrappers (rnnkit/layers/wrappers.py)
    "embedding_wrapper": lambda: rnnkit.EmbeddingWrapper(GRUCell(I, H), 7, I),
    "input_projection_wrapper": lambda: rnnkit.InputProjectionWrapper(
        LSTMCell(H, H), H, activation="tanh", input_size=I),
    "output_projection_wrapper": lambda: rnnkit.OutputProjectionWrapper(GRUCell(I, H), 2, "relu"),
    "residual_wrapper": lambda: rnnkit.ResidualWrapper(MultiCell([GRUCell(I, I),
                                                                  GRUCell(I, I)])),
    "dropout_wrapper": lambda: rnnkit.DropoutWrapper(
        LSTMCell(I, H), 0.9, 0.8, 0.7, variational_recurrent=True, input_size=I, seed=5),
    "device_wrapper": lambda: rnnkit.DeviceWrapper(ElmanCell(I, H), "cpu"),
    "recurrence": lambda: Recurrence(LSTMCell(I, H)),
    "recurrence_options": lambda: Recurrence(
        GRUCell(I, H), go_backwards=True, initial_state=0.25, return_full_state=True,
        batch_first=True, stateful=True, engine="loop",
    ),
    "recurrence_tensor_state_learnable": lambda: Recurrence(
        LSTMCell(I, H), initial_state=(torch.full((H,), 0.5), torch.linspace(-1, 1, H)),
        learnable_initial_state=True,
    ),
    "recurrence_batch_state": lambda: Recurrence(ElmanCell(I, H),
                                                 initial_state=torch.randn(B, H)),
    "recurrence_wrapped_cells": lambda: Recurrence(
        ZoneoutCell(RecurrentDropoutCell(LSTMCell(I, H), 0.5), 0.2)
    ),
    "fold": lambda: Fold(NASCell(I, H, proj_size=3), go_backwards=True),
    "unfold_from": lambda: UnfoldFrom(GRUCell(I, I), max_length=5),
    "unfold_from_head": lambda: UnfoldFrom(
        LSTMCell(I, H), head=nn.Sequential(nn.Linear(H, I), nn.Tanh(), nn.Dropout(0.1)),
        max_length=3, batch_first=True,
    ),
    "bidirectional_cell": lambda: Bidirectional(GRUCell(I, H), batch_first=True),
    "bidirectional_layers": lambda: Bidirectional(
        Recurrence(LSTMCell(I, H)), merge_mode="sum", backward_layer=Recurrence(LSTMCell(I, H)),
    ),
    "bidirectional_lstm_none": lambda: Bidirectional(LSTM(I, H), merge_mode=None),
    "sequence": lambda: Sequence(GRUCell(I, H)),
    "sequence_bidirectional": lambda: Sequence(
        Bidirectional(LSTMCell(I, H), merge_mode="ave"), return_sequences=True,
        return_state=True,
    ),
    "rnn": lambda: RNN(I, H),
    "rnn_options": lambda: RNN(
        I, H, num_layers=2, nonlinearity="relu", bias=False, batch_first=True, dropout=0.3,
        bidirectional=True, init="irnn", stateful=True, recurrent_dropout=0.2,
        dropout_input=0.1, zoneout=0.1, residual=True, learnable_initial_state=True,
        engine="loop",
    ),
    "rnn_float64": lambda: RNN(I, H, dtype=torch.float64),
    "lstm_layer": lambda: LSTM(I, H),
    "lstm_layer_options": lambda: LSTM(
        I, H, num_layers=2, proj_size=2, bidirectional=True, peepholes=True,
        coupled_gates=True, cell_clip=3.0, layer_norm=True, forget_bias=1.0,
        zoneout=(0.1, 0.2),
    ),
    "gru_layer": lambda: GRU(I, H, num_layers=2, dropout=np.float32(0.5)),
    "gru_layer_options": lambda: GRU(I, H, reset_after=False, layer_norm=True, engine="compiled"),
    # task models (adapted: their fitted scalers are buffers, loaded with the weights)
    "forecaster_recursive": lambda: Forecaster(
        8, 3, period=4, seasonal_difference=True, log=True, hidden_size=H, seed=0
    ).adapt(np.arange(10.0, 30.0)),
    "forecaster_direct_ensemble": lambda: Forecaster(
        6, 2, strategy="direct", difference=True, scaler="minmax", cell="gru", ensemble=2,
        hidden_size=H, dtype=torch.float64,
    ).adapt(np.arange(10.0, 30.0)),
    # task models (rnnkit.models; inputs batch-first)
    "backbone_cells": lambda: rnnkit.models.Backbone(
        I, H, cell="indrnn", num_layers=2, bidirectional=True, dropout=0.1,
        cell_options={"recurrent_max_abs": 2.0},
    ),
    "backbone_instance": lambda: rnnkit.models.Backbone(I, cell=UGRNNCell(I, H), num_layers=2),
    "sequence_classifier": lambda: rnnkit.models.SequenceClassifier(
        I, 3, hidden_size=H, cell="gru", bidirectional=True, pooling="max",
        class_names=["a", "b", "c"],
    ),
    "sequence_regressor": lambda: rnnkit.models.SequenceRegressor(I, 2, hidden_size=H,
                                                                  cell="min_lstm"),
    "sequence_tagger": lambda: rnnkit.models.SequenceTagger(I, 2, hidden_size=H,
                                                            tag_names=["x", "y"]),
    "language_model": lambda: rnnkit.models.LanguageModel(
        vocabulary=rnnkit.data.Vocabulary.build("abcd"), hidden_size=H, num_layers=2,
        tie_weights=True, cell_options={"layer_norm": True},
    ),
    # attention and seq2seq (called by call_seq2seq below)
    "bahdanau": lambda: BahdanauAttention(H, I, 5, normalize=True),
    "luong_concat": lambda: LuongAttention(H, I, score="concat"),
    "attention_wrapper": lambda: AttentionWrapper(
        GRUCell(I + 2, H), LuongAttention(H, I, score="general"), attention_layer_size=2,
        attention_activation="tanh", alignment_history=True,
    ),
    "encoder": lambda: Encoder(7, embedding_dim=3, hidden_size=H, cell="gru", num_layers=2),
    "decoder": lambda: Decoder(6, H, embedding_dim=3, hidden_size=H, attention="luong_concat"),
    "seq2seq": lambda: Seq2Seq(7, 6, embedding_dim=3, hidden_size=H, attention="bahdanau",
                               teacher_forcing_ratio=0.5, label_smoothing=0.1),
    "seq2seq_no_attention": lambda: Seq2Seq(7, 6, embedding_dim=3, hidden_size=H, cell="gru",
                                            attention=None, bidirectional_encoder=False),
    # issue 14: grid cells (input 4 = two windows of 2), recognition and captioning models
    "grid_lstm": lambda: rnnkit.GridLSTMCell(4, H, feature_size=2, frequency_skip=2,
                                             peepholes=True, coupled_gates=True),
    "bidirectional_grid_lstm": lambda: rnnkit.BidirectionalGridLSTMCell(
        4, H, feature_size=2, frequency_skip=2),
    "sequence_recognizer": lambda: rnnkit.models.SequenceRecognizer(
        I, 5, hidden_size=H, num_layers=1, cell="gru", blank=4),
    "sequence_recognizer_conv": lambda: rnnkit.models.SequenceRecognizer(
        4, 5, hidden_size=H, num_layers=1, conv_channels=(2,)),
    "image_encoder": lambda: rnnkit.models.ImageEncoder(8, channels=(2, 3), pools=(2, 2),
                                                        row_encoder="gru", row_size=H),
    "image_to_sequence": lambda: rnnkit.models.ImageToSequence(
        7, image_height=8, channels=(2,), pools=(2,), row_encoder=None, embedding_dim=3,
        hidden_size=H, attention="luong_general", dropout=0.1),
}

ABSTRACT = {"RecurrentCell", "CellWrapper", "RNNBase", "AttentionMechanism"}


def call_seq2seq(module: nn.Module, generator: torch.Generator) -> object | None:
    """One forward of an attention or seq2seq module; None for any other module."""
    memory = torch.randn(B, T, I, generator=generator)  # (B, S, M)
    lengths = torch.tensor([T, 2, 1])
    source = torch.randint(3, 7, (B, T), generator=generator)  # (B, S)
    if isinstance(module, (BahdanauAttention, LuongAttention)):
        keys = module.prepare(memory)
        return module(torch.randn(B, H, generator=generator), keys, memory_mask=source > 3)
    if isinstance(module, AttentionWrapper):
        state = module.initial_state(B, memory=memory, memory_lengths=lengths)
        return module(torch.randn(B, module.input_size, generator=generator), state)
    if isinstance(module, Encoder):
        return tuple(module(source, lengths))
    if isinstance(module, Decoder):
        encoded = Encoded(memory=torch.randn(B, T, H, generator=generator),
                          memory_mask=torch.arange(T) < lengths[:, None], lengths=lengths,
                          summary=torch.randn(B, H, generator=generator))
        return module(torch.randint(0, 6, (B,), generator=generator), module.initial_state(encoded))
    if isinstance(module, Seq2Seq):
        return module(source, torch.randint(0, 6, (B, 5), generator=generator), lengths)
    images = torch.rand(B, 8, 6, generator=generator)  # (B, H, W), widths 6, 4, 4
    if isinstance(module, rnnkit.models.ImageEncoder):
        encoded = module(images, torch.tensor([6, 4, 4]))
        return [t for t in encoded if isinstance(t, Tensor)]
    if isinstance(module, rnnkit.models.ImageToSequence):
        return module(images, torch.randint(0, 7, (B, 5), generator=generator),
                      torch.tensor([6, 4, 4]))
    if isinstance(module, rnnkit.models.SequenceRecognizer):
        return tuple(module(torch.randn(B, T, module_input_size(module), generator=generator),
                            torch.tensor([T, 2, 2])))  # conv blocks halve time: >= 2 frames
    return None


def module_input_size(module: nn.Module) -> int:
    return module.get_config()["input_size"]


def call(module: nn.Module) -> object:
    """One forward of ``module`` on a fixed input of the shape it expects."""
    generator = torch.Generator().manual_seed(0)
    result = call_seq2seq(module, generator)
    if result is not None:
        return result
    if hasattr(module, "reset_states"):  # stateful: every call starts afresh
        module.reset_states()
    dtype = next(module.parameters()).dtype
    if isinstance(module, Forecaster):  # (B, look_back) positive values in, (B, horizon) out
        return module(10 + torch.rand(B, module.look_back, generator=generator, dtype=dtype))
    if isinstance(module, rnnkit.models.LanguageModel):  # token ids (B, T)
        return module(torch.randint(0, module.vocab_size, (B, T), generator=generator))
    if isinstance(module, UnfoldFrom):
        return module(torch.randn(B, I, generator=generator, dtype=dtype))
    if isinstance(module, rnnkit.EmbeddingWrapper):  # one token id per sequence
        return module(torch.randint(0, 7, (B, 1), generator=generator), module.initial_state(B))
    if hasattr(module, "state_size"):  # a cell or a cell wrapper: one step
        x = torch.randn(B, module.input_size, generator=generator, dtype=dtype)
        return module(x, module.initial_state(B, dtype=dtype))
    return module(torch.randn(T, B, I, generator=generator, dtype=dtype))


def flatten(result: object) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if result is None:
        return []
    return [t for part in result for t in flatten(part)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case):
    original = CASES[case]()
    config = original.get_config()
    text = json.dumps(serialize(original))  # JSON-serialisable, nested modules included
    rebuilt = type(original).from_config(config)
    again = deserialize(json.loads(text))
    for twin in (rebuilt, again):
        assert type(twin) is type(original)
        assert twin.get_config() == json.loads(json.dumps(config))
        assert [(n, p.shape, p.dtype) for n, p in twin.named_parameters()] == [
            (n, p.shape, p.dtype) for n, p in original.named_parameters()
        ]
        assert list(twin.state_dict()) == list(original.state_dict())
        twin.load_state_dict(original.state_dict())
        original.eval()
        twin.eval()
        expected, got = flatten(call(original)), flatten(call(twin))
        assert len(expected) == len(got)
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_every_registered_class_is_covered():
    covered = {type(factory()).__name__ for factory in CASES.values()}
    rnnkit_classes = {
        name for name, cls in registered_classes().items() if cls.__module__.startswith("rnnkit")
    }
    missing = rnnkit_classes - ABSTRACT - covered
    assert not missing, f"add a get_config round-trip row to CASES for {sorted(missing)}"


def test_config_holds_the_constructor_arguments_with_defaults():
    config = LSTMCell(I, H, proj_size=2).get_config()
    assert config == {
        "input_size": I, "hidden_size": H, "bias": True, "forget_bias": 1.0,
        "peepholes": False, "coupled_gates": False, "proj_size": 2, "cell_clip": None,
        "layer_norm": False, "dtype": "float32",
    }
    # rnnkit-only keyword options of the drop-ins (their **options) are top-level keys too
    config = GRU(I, H, stateful=True).get_config()
    assert config["stateful"] is True and config["reset_after"] is True
    assert "device" not in config


def test_dtype_follows_the_parameters_and_device_is_omitted():
    cell = GRUCell(I, H, device="cpu").double()
    config = cell.get_config()
    assert config["dtype"] == "float64" and "device" not in config
    assert GRUCell.from_config(config).weight_ih.dtype == torch.float64


def test_numpy_numbers_become_json_numbers():
    config = ZoneoutCell(GRUCell(np.int64(I), H), np.float32(0.25)).get_config()
    assert config["p"] == 0.25 and type(config["p"]) is float
    assert config["cell"]["config"]["input_size"] == I
    json.dumps(config)


def test_a_subclass_records_its_own_arguments_not_its_super_call():
    class Square(LSTMCell):
        def __init__(self, size: int) -> None:
            super().__init__(size, size, peepholes=True)

    assert Square(3).get_config() == {"size": 3}
    assert Square.from_config({"size": 3}).peepholes is True


# ------------------------------------------------------------------ a user's own cell
@register_serializable(name="tests.CounterCell")
class CounterCell(RecurrentCell):
    """A user cell that opts in: deriving from RecurrentCell gives it get_config/from_config."""

    def __init__(self, input_size: int, hidden_size: int, scale: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = self.output_size = hidden_size
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(hidden_size, input_size))

    def forward(self, x, state=None):
        state = self.prepare_call(x, state)
        h = torch.tanh(x @ self.weight.T * self.scale + state)
        return h, h


def test_a_registered_user_cell_round_trips_inside_rnnkit_layers():
    layer = Bidirectional(Recurrence(CounterCell(I, H, scale=0.5)), merge_mode="concat")
    blob = json.loads(json.dumps(serialize(layer)))
    assert blob["config"]["layer"]["config"]["cell"] == {
        "class_name": "tests.CounterCell",
        "config": {"input_size": I, "hidden_size": H, "scale": 0.5},
    }
    twin = deserialize(blob)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(twin(x)[0], layer(x)[0], rtol=0, atol=0)


def test_register_serializable_refuses_a_taken_name_and_a_class_without_config():
    with pytest.raises(ValueError, match="'LSTMCell' is already taken by rnnkit.cells.lstm"):

        @register_serializable(name="LSTMCell")
        class Other(RecurrentCell):
            pass

    with pytest.raises(TypeError, match="Plain needs get_config"):

        @register_serializable
        class Plain(nn.Module):
            pass


# ------------------------------------------------------------------ errors
class UnregisteredCell(nn.Module):
    state_size = output_size = hidden_size = H
    input_size = I

    def forward(self, x, h):
        return h, h


@pytest.mark.parametrize(
    "build, error, words",
    [
        pytest.param(
            lambda: deserialize({"class_name": "NoSuchCell", "config": {}}),
            ValueError, r"unknown class_name 'NoSuchCell'.*register_serializable",
            id="unknown_class_name",
        ),
        pytest.param(
            lambda: deserialize({"class_name": "os.system", "config": {"command": "ls"}}),
            ValueError, r"unknown class_name 'os.system'", id="never_imports_a_name",
        ),
        pytest.param(
            lambda: LSTMCell.from_config({"input_size": 3, "hiden_size": 4}),
            ValueError, r"LSTMCell.from_config: unknown key 'hiden_size'; LSTMCell takes .*"
                        r"hidden_size", id="unknown_key",
        ),
        pytest.param(
            lambda: LSTMCell.from_config({"input_size": 3}),
            ValueError, r"LSTMCell.from_config: missing required key 'hidden_size'",
            id="missing_key",
        ),
        pytest.param(
            lambda: LSTM.from_config({"input_size": 3, "hidden_size": 4, "stateful_": True}),
            ValueError, r"LSTM.from_config: unknown key 'stateful_'", id="unknown_option_key",
        ),
        pytest.param(
            lambda: deserialize({"class_name": "Recurrence", "config": {
                "cell": {"class_name": "GRUCell", "config": {"input_size": 3, "size": 4}}}}),
            ValueError, r"GRUCell.from_config: unknown key 'size'", id="bad_nested_key",
        ),
        pytest.param(
            lambda: deserialize({"class_name": "Recurrence", "config": {
                "cell": {"class_name": "GRUCel", "config": {}}}}),
            ValueError, r"Recurrence.from_config: key 'cell': unknown class_name 'GRUCel'",
            id="bad_nested_class_name",
        ),
        pytest.param(
            lambda: GRUCell.from_config({"input_size": 3, "hidden_size": 4, "dtype": "flot32"}),
            ValueError, r"GRUCell.from_config: key 'dtype': unknown dtype 'flot32'",
            id="bad_dtype",
        ),
        pytest.param(
            lambda: GRUCell.from_config(serialize(GRUCell(3, 4))),
            ValueError, r"GRUCell.from_config: got a serialized object .*deserialize",
            id="whole_serialized_object_to_from_config",
        ),
        pytest.param(
            lambda: deserialize({"config": {}}),
            ValueError, r"deserialize: expected a dict with exactly the keys 'class_name' and "
                        r"'config', got keys \['config'\]", id="not_serialized",
        ),
        pytest.param(
            lambda: Recurrence(UnregisteredCell()).get_config(),
            TypeError, r"Recurrence.get_config: argument cell is a UnregisteredCell, which is "
                       r"not registered: decorate the class with rnnkit.register_serializable",
            id="unregistered_cell",
        ),
        pytest.param(
            lambda: UnfoldFrom(GRUCell(3, 3), until=lambda y: y[:, 0] > 0).get_config(),
            TypeError, r"UnfoldFrom.get_config: argument until is a function .* cannot be "
                       r"written to a config", id="lambda_argument",
        ),
        pytest.param(
            lambda: Recurrence(type("MyGRU", (GRUCell,), {})(3, 4)).get_config(),
            TypeError, r"argument cell is a MyGRU, which is not registered",
            id="unregistered_subclass_of_an_rnnkit_cell",
        ),
        pytest.param(
            lambda: UnfoldFrom(GRUCell(3, 3), head=nn.GRUCell(3, 3)).get_config(),
            TypeError, r"UnfoldFrom.get_config: argument head is a torch.nn.GRUCell; the torch.nn "
                       r"modules a config can hold are torch.nn.Dropout, torch.nn.Identity",
            id="unsupported_torch_module",
        ),
        pytest.param(
            lambda: serialize(3), TypeError, r"serialize: expected an nn.Module, got int",
            id="serialize_non_module",
        ),
    ],
)
def test_bad_configs_give_errors_that_name_the_problem(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_top_level_export():
    assert rnnkit.register_serializable is register_serializable
