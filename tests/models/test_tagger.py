"""SequenceTagger: per-step logits equal torch.nn RNN + Linear on each sequence alone."""

import json

import pytest
import torch
from torch import nn

from rnnkit.config import deserialize, serialize
from rnnkit.data import Vocabulary
from rnnkit.errors import ShapeError
from rnnkit.models import SequenceTagger

ATOL = 1e-6


@pytest.mark.parametrize("cell, torch_class", [("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_tagger_per_step_equals_torch_bidirectional_rnn_and_linear(cell, torch_class):
    torch.manual_seed(0)
    model = SequenceTagger(3, 4, hidden_size=5, cell=cell, bidirectional=True,
                           num_layers=2).eval()
    rnn = torch_class(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    rnn.load_state_dict(model.backbone.drop_in.state_dict())
    head = nn.Linear(10, 4)
    head.load_state_dict(model.head.state_dict())
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 2, 4])
    logits = model(x, lengths)
    assert logits.shape == (3, 6, 4)
    for b, n in enumerate(lengths.tolist()):
        expected = head(rnn(x[b: b + 1, :n])[0])[0]  # (n, C), the sequence alone
        torch.testing.assert_close(logits[b, :n], expected, atol=ATOL, rtol=0)
        assert torch.all(logits[b, n:] == 0)  # padded steps are zero


def test_padding_never_changes_valid_steps_and_predict_trims():
    torch.manual_seed(1)
    model = SequenceTagger(2, 3, hidden_size=4, cell="min_lstm", bidirectional=True,
                           tag_names=["B", "I", "O"]).eval()
    x, lengths = torch.randn(2, 5, 2), torch.tensor([5, 3])
    noisy = x.clone()
    noisy[1, 3:] = 100.0
    torch.testing.assert_close(model(noisy, lengths), model(x, lengths), atol=0, rtol=0)
    tags = model.predict(x, lengths)
    assert [len(row) for row in tags] == [5, 3]
    assert tags[1] == model(x, lengths)[1, :3].argmax(-1).tolist()
    names = model.predict_names(x, lengths)
    assert names[1] == [["B", "I", "O"][i] for i in tags[1]]


def test_word_tagger_round_trips_with_its_vocabulary():
    torch.manual_seed(2)
    vocab = Vocabulary.build(["the cat sat", "a dog ran"], level="word")
    model = SequenceTagger(vocabulary=vocab, tag_names=["DET", "NOUN", "VERB"],
                           hidden_size=4).eval()
    ids = torch.tensor([vocab.encode("the cat sat"), vocab.encode("a dog ran")])
    twin = deserialize(json.loads(json.dumps(serialize(model)))).eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(ids), model(ids), atol=0, rtol=0)
    assert twin.vocabulary.encode("the dog sat") == vocab.encode("the dog sat")
    assert twin.tag_names == ["DET", "NOUN", "VERB"]


def test_tiny_shapes_and_errors():
    model = SequenceTagger(1, 1, hidden_size=1)
    assert model(torch.randn(1, 1, 1)).shape == (1, 1, 1)
    with pytest.raises(ShapeError, match="a single sequence"):
        SequenceTagger(vocab_size=5, num_tags=2)(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="give num_tags or tag_names"):
        SequenceTagger(3)
    with pytest.raises(ValueError, match="duplicates"):
        SequenceTagger(3, tag_names=["A", "A"])
