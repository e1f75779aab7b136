"""SequenceClassifier and SequenceRegressor against torch.nn modules with copied weights,
run on each unpadded sequence alone."""

import json

import pytest
import torch
from torch import nn

from rnnkit.config import deserialize, serialize
from rnnkit.data import Vocabulary
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.models import SequenceClassifier, SequenceRegressor

ATOL = 1e-6  # rnnkit's compiled GRU/RNN kernels vs torch.nn (docs/engine-compiled.md)
TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "elman": nn.RNN}


def _reference(model):
    """torch.nn RNN + Linear holding the model's weights."""
    backbone = model.backbone
    rnn = TORCH[backbone.cell_name](
        backbone.input_size, backbone.hidden_size, num_layers=backbone.num_layers,
        bidirectional=backbone.bidirectional, batch_first=True,
    )
    rnn.load_state_dict(backbone.drop_in.state_dict())
    head = nn.Linear(model.head.in_features, model.head.out_features)
    head.load_state_dict(model.head.state_dict())
    return rnn, head


def _padded(lengths, features=3, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), features)
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_classifier_equals_torch_rnn_and_linear_on_each_sequence(cell, bidirectional):
    torch.manual_seed(0)
    model = SequenceClassifier(3, 4, hidden_size=5, cell=cell, num_layers=2,
                               bidirectional=bidirectional).eval()
    rnn, head = _reference(model)
    x, lengths = _padded([6, 3, 1, 4])
    logits = model(x, lengths=lengths)
    assert logits.shape == (4, 4)
    for b, n in enumerate(lengths.tolist()):
        out, _ = rnn(x[b: b + 1, :n])  # (1, n, D*H), this sequence alone
        if bidirectional:
            last = torch.cat([out[0, -1, :5], out[0, 0, 5:]])  # forward end, backward start
        else:
            last = out[0, -1]
        torch.testing.assert_close(logits[b], head(last), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("cell", ["lstm", "indrnn"])
def test_padding_never_changes_the_logits(pooling, cell):
    torch.manual_seed(1)
    model = SequenceClassifier(3, 2, hidden_size=4, cell=cell, bidirectional=True,
                               pooling=pooling).eval()
    x, lengths = _padded([5, 2, 3])
    noisy = x.clone()
    for b, n in enumerate(lengths.tolist()):
        noisy[b, n:] = 1e3 * torch.randn_like(noisy[b, n:])
    torch.testing.assert_close(model(noisy, lengths), model(x, lengths), atol=0, rtol=0)
    alone = torch.cat([model(x[b: b + 1, :n]) for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(model(x, lengths), alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mean_and_max_pooling_over_valid_steps(pooling):
    torch.manual_seed(2)
    model = SequenceClassifier(3, 3, hidden_size=4, cell="gru", pooling=pooling).eval()
    rnn, head = _reference(model)
    x, lengths = _padded([4, 2])
    logits = model(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        out, _ = rnn(x[b: b + 1, :n])
        summary = out[0].mean(0) if pooling == "mean" else out[0].amax(0)
        torch.testing.assert_close(logits[b], head(summary), atol=ATOL, rtol=0)


def test_token_ids_through_the_embedding():
    torch.manual_seed(3)
    vocab = Vocabulary.build(["good film", "bad film"], level="word")
    model = SequenceClassifier(vocabulary=vocab, class_names=["neg", "pos"], hidden_size=6,
                               embedding_dim=5).eval()
    rnn, head = _reference(model)
    ids = torch.tensor([vocab.encode("good film"), vocab.encode("bad film")])
    expected = head(rnn(model.encoder.embedding(ids))[0][:, -1])
    torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)
    assert model.predict_names(ids) == [["neg", "pos"][i] for i in expected.argmax(-1)]
    config = json.loads(json.dumps(serialize(model)))
    assert config["config"]["vocabulary"]["tokens"] == vocab.itos[2:]
    twin = deserialize(config)
    assert twin.vocabulary.itos == vocab.itos and twin.class_names == ["neg", "pos"]


@pytest.mark.parametrize("cell", ["lstm", "min_gru"])
def test_config_round_trip_rebuilds_identical_outputs(cell):
    torch.manual_seed(4)
    model = SequenceClassifier(3, 5, hidden_size=4, cell=cell, num_layers=2, dropout=0.1,
                               bidirectional=True, pooling="mean",
                               class_names=list("abcde")).eval()
    blob = json.loads(json.dumps(serialize(model)))
    assert blob["class_name"] == "SequenceClassifier"
    twin = deserialize(blob).eval()
    twin.load_state_dict(model.state_dict())
    x, lengths = _padded([4, 1, 3])
    torch.testing.assert_close(twin(x, lengths), model(x, lengths), atol=0, rtol=0)
    assert twin.get_config() == model.get_config()


def test_probabilities_and_predictions():
    torch.manual_seed(5)
    model = SequenceClassifier(3, 4, hidden_size=4).eval()
    x, lengths = _padded([3, 2])
    logits = model(x, lengths)
    torch.testing.assert_close(model.predict_proba(x, lengths), logits.softmax(-1))
    assert model.predict(x, lengths).tolist() == logits.argmax(-1).tolist()
    with pytest.raises(ValueError, match="no class_names"):
        model.predict_names(x, lengths)


def test_tiny_and_odd_shapes():
    model = SequenceClassifier(1, 1, hidden_size=1)
    assert model(torch.randn(1, 1, 1)).shape == (1, 1)
    model(torch.randn(1, 1, 1), lengths=torch.tensor([1])).sum().backward()
    assert SequenceRegressor(2, 3, hidden_size=1, cell="nas")(torch.randn(1, 1, 2)).shape == (1, 3)


def test_bad_input_gets_a_readable_error():
    model = SequenceClassifier(3, 2, hidden_size=4)
    with pytest.raises(ShapeError, match=r"\(B, T, F\) with F = 3, got shape \(5, 3\)"):
        model(torch.randn(5, 3))
    with pytest.raises(ShapeError, match="4 features per step but the model was built with "
                                         "input_size=3"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(DTypeError, match="floating point, got torch.int64"):
        model(torch.ones(2, 5, 3, dtype=torch.int64))
    with pytest.raises(DTypeError, match="x is torch.float64 but the model's parameters are "
                                         "torch.float32"):
        model(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="empty"):
        model(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(2,\)"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([5, 4, 3]))
    with pytest.raises(ShapeError, match="longer than the sequence"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([6, 4]))
    with pytest.raises(TypeError, match="integers"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([5.0, 4.0]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0, 2.0, 3.0]])
    univariate = SequenceRegressor(1)
    with pytest.raises(ShapeError, match=r"x.unsqueeze\(-1\)"):
        univariate(torch.randn(4, 9))
    tokens = SequenceClassifier(vocab_size=10, num_classes=2)
    with pytest.raises(ValueError, match=r"token id 12 is outside the vocabulary \[0, 10\)"):
        tokens(torch.tensor([[1, 12]]))
    with pytest.raises(DTypeError, match="integers"):
        tokens(torch.randn(2, 3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="exactly one of them"):
        SequenceClassifier(3, 2, vocab_size=5)
    with pytest.raises(ValueError, match="exactly one of them"):
        SequenceClassifier(num_classes=2)
    with pytest.raises(ValueError, match="give num_classes or class_names"):
        SequenceClassifier(3)
    with pytest.raises(ValueError, match="3 class_names for 2 outputs"):
        SequenceClassifier(3, 2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="pooling must be one of last, mean, max"):
        SequenceClassifier(3, 2, pooling="first")
    with pytest.raises(ValueError, match="embedding_dim needs token inputs"):
        SequenceClassifier(3, 2, embedding_dim=4)
    with pytest.raises(ValueError, match="did you mean 'gru'"):
        SequenceClassifier(3, 2, cell="gur")


def test_regressor_equals_torch_gru_and_linear():
    torch.manual_seed(6)
    model = SequenceRegressor(3, 2, hidden_size=5, cell="gru", output_names=["lo", "hi"]).eval()
    rnn, head = _reference(model)
    x, lengths = _padded([5, 2, 4])
    y = model(x, lengths)
    assert y.shape == (3, 2)
    for b, n in enumerate(lengths.tolist()):
        out, _ = rnn(x[b: b + 1, :n])
        torch.testing.assert_close(y[b], head(out[0, -1]), atol=ATOL, rtol=0)
    twin = deserialize(json.loads(json.dumps(serialize(model)))).eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(x, lengths), y, atol=0, rtol=0)
    assert twin.output_names == ["lo", "hi"]


def test_regressor_learns_the_mean_of_a_sequence():
    """A few Adam steps fit y = mean(x) over the valid steps (the model can learn)."""
    torch.manual_seed(7)
    model = SequenceRegressor(1, 1, hidden_size=8, cell="gru", pooling="mean")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, lengths = torch.randn(32, 6, 1), torch.randint(1, 7, (32,))
    mask = torch.arange(6)[None, :] < lengths[:, None]
    target = (x[..., 0] * mask).sum(1, keepdim=True) / lengths[:, None]
    first = None
    for _ in range(60):
        loss = nn.functional.mse_loss(model(x, lengths), target)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.2 * first
