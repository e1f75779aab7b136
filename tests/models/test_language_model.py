"""LanguageModel: forward against torch.nn modules with copied weights, state carried across
calls, greedy decoding by hand, the sampling distribution on fixed logits, reproducible
seeds, the config (with its vocabulary) round trip, perplexity and bits per character."""

import json
import math

import pytest
import torch
from torch import nn

from rnnkit.config import deserialize, serialize
from rnnkit.data import Vocabulary
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.models import (
    LanguageModel,
    bits_per_character,
    next_token_distribution,
    perplexity,
)

ATOL = 1e-6
TEXT = "to be or not to be, that is the question"


def _torch_twin(model):
    """torch.nn Embedding + LSTM + Linear holding the model's weights."""
    embedding = nn.Embedding(model.vocab_size, model.encoder.features)
    embedding.load_state_dict(model.embedding.state_dict())
    backbone = model.backbone
    lstm = nn.LSTM(backbone.input_size, backbone.hidden_size, backbone.num_layers,
                   batch_first=True)
    lstm.load_state_dict(backbone.drop_in.state_dict())
    if model.decoder is None:
        def decoder(h):
            return h @ embedding.weight.T + model.decoder_bias
    else:
        decoder = nn.Linear(backbone.output_size, model.vocab_size)
        decoder.load_state_dict(model.decoder.state_dict())
    return embedding, lstm, decoder


@pytest.mark.parametrize("tie_weights", [False, True])
def test_forward_equals_embedding_lstm_linear_and_state_carries(tie_weights):
    torch.manual_seed(0)
    model = LanguageModel(20, embedding_dim=6, hidden_size=6, num_layers=2,
                          tie_weights=tie_weights).eval()
    embedding, lstm, decoder = _torch_twin(model)
    ids = torch.randint(0, 20, (3, 7))
    logits, (h, c) = model(ids)
    out, (h_n, c_n) = lstm(embedding(ids))
    torch.testing.assert_close(logits, decoder(out), atol=ATOL, rtol=0)
    torch.testing.assert_close(h, h_n, atol=ATOL, rtol=0)  # torch's (L, B, H)
    first, state = model(ids[:, :4])
    second, _ = model(ids[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=ATOL, rtol=0)
    names = dict(model.named_parameters())
    assert ("decoder.weight" in names) != tie_weights


def test_lengths_pick_each_sequences_final_state():
    torch.manual_seed(1)
    model = LanguageModel(10, hidden_size=4, cell="gru").eval()
    ids, lengths = torch.randint(0, 10, (2, 6)), torch.tensor([6, 3])
    logits, state = model(ids, lengths=lengths)
    alone, alone_state = model(ids[1:, :3])
    torch.testing.assert_close(logits[1, :3], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(state[:, 1], alone_state[:, 0], atol=ATOL, rtol=0)


def test_greedy_generation_equals_argmax_by_hand():
    torch.manual_seed(2)
    model = LanguageModel(12, hidden_size=8).eval()
    embedding, lstm, decoder = _torch_twin(model)
    prompt = [3, 5, 7]
    expected = list(prompt)
    with torch.no_grad():  # the whole text re-read every step: no state handling at all
        for _ in range(10):
            out, _ = lstm(embedding(torch.tensor([expected])))
            expected.append(int(decoder(out[0, -1]).argmax()))
    assert model.generate(prompt, 10, top_k=1) == expected
    assert model.generate(prompt, 10, temperature=0) == expected
    batch = model.generate(torch.tensor([prompt, prompt]), 10, top_k=1)
    assert batch.shape == (2, 13) and batch[1].tolist() == expected
    assert model.generate(torch.tensor(prompt), 0).tolist() == prompt


def test_top_p_keeps_the_nucleus_on_fixed_logits():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    # nucleus 0.7: {0.5, 0.3} reaches 0.8 >= 0.7, renormalised
    expected = torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8])
    torch.testing.assert_close(next_token_distribution(logits, top_p=0.7), expected)
    # exactly reached: 0.5 + 0.3 = 0.8
    torch.testing.assert_close(next_token_distribution(logits, top_p=0.8), expected)
    # one token above: 0.5 alone when p <= 0.5, the most likely always stays
    torch.testing.assert_close(next_token_distribution(logits, top_p=0.4),
                               torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(next_token_distribution(logits, top_p=1e-6),
                               torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(next_token_distribution(logits, top_p=1.0), probs)
    # top-k, then temperature: softmax(log p / T) = p^(1/T) normalised
    torch.testing.assert_close(next_token_distribution(logits, top_k=2), expected)
    sharp = probs ** 2 / (probs ** 2).sum()
    torch.testing.assert_close(next_token_distribution(logits, temperature=0.5), sharp)
    batch = next_token_distribution(torch.stack([logits, logits.flip(0)]), top_p=0.7)
    torch.testing.assert_close(batch[1], expected.flip(0))


def test_sampled_frequencies_follow_the_nucleus():
    """Draws from a model whose next-token logits are fixed (a bias only) follow the
    nucleus distribution: 4000 draws, each frequency within 4 standard errors."""
    model = LanguageModel(4, hidden_size=2).eval()
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(torch.tensor([0.05, 0.5, 0.15, 0.3]).log())
    draws = model.generate(torch.zeros(1, dtype=torch.int64), 4000, top_p=0.7, seed=0)[1:]
    counts = torch.bincount(draws, minlength=4).double() / 4000
    expected = torch.tensor([0.0, 0.625, 0.0, 0.375], dtype=torch.float64)
    error = 4 * math.sqrt(0.625 * 0.375 / 4000)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] - expected[1]) < error


def test_a_seed_makes_generation_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    vocab = Vocabulary.build(TEXT, level="char")
    model = LanguageModel(vocabulary=vocab, hidden_size=8).train()
    before = torch.get_rng_state()
    first = model.generate("to ", 40, temperature=1.5, seed=11)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.generate("to ", 40, temperature=1.5, seed=11) == first
    assert model.generate("to ", 40, temperature=1.5, seed=12) != first
    assert first.startswith("to ") and len(first) == 43
    assert set(first) <= set(TEXT)  # neither <pad> nor <unk> is ever drawn
    assert model.training  # generate restores the mode


def test_config_round_trip_with_vocabulary_generates_the_same_text():
    torch.manual_seed(4)
    vocab = Vocabulary.build(TEXT, level="char")
    model = LanguageModel(vocabulary=vocab, hidden_size=8, cell="indrnn", num_layers=2,
                          tie_weights=True, dropout=0.2)
    blob = json.loads(json.dumps(serialize(model)))
    assert blob["config"]["vocabulary"]["format"] == "rnnkit.Vocabulary"
    twin = deserialize(blob)
    twin.load_state_dict(model.state_dict())
    assert twin.vocabulary.itos == vocab.itos
    assert twin.generate("that", 30, top_k=3, seed=5) == model.generate("that", 30, top_k=3,
                                                                          seed=5)


def test_word_level_generation_joins_with_spaces():
    vocab = Vocabulary.build(TEXT, level="word")
    model = LanguageModel(vocabulary=vocab, hidden_size=4)
    text = model.generate("to be", 5, seed=0)
    assert text.startswith("to be ") and len(text.split()) == 7


def test_perplexity_and_bits_per_character():
    assert perplexity(math.log(65)) == pytest.approx(65)
    assert bits_per_character(math.log(2) * 1.5) == pytest.approx(1.5)
    assert LanguageModel.bits_per_character(torch.tensor(math.log(4))) == pytest.approx(2)
    with pytest.raises(ValueError, match="finite"):
        perplexity(float("nan"))


def test_tiny_shapes():
    model = LanguageModel(1, hidden_size=1, embedding_dim=1)
    logits, _ = model(torch.zeros(1, 1, dtype=torch.int64))
    assert logits.shape == (1, 1, 1)
    logits.sum().backward()


def test_bad_input_and_arguments():
    vocab = Vocabulary.build("abc", level="char")
    model = LanguageModel(vocabulary=vocab, hidden_size=4)
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['z'\]"):
        model.generate("abz", 3)
    with pytest.raises(ValueError, match="empty"):
        model.generate("", 3)
    with pytest.raises(ValueError, match="length must be an int >= 0"):
        model.generate("a", -1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate("a", 3, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        model.generate("a", 3, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", 3, temperature=-1)
    with pytest.raises(TypeError, match="needs a model built with a vocabulary"):
        LanguageModel(5).generate("abc", 3)
    with pytest.raises(ShapeError, match=r"token ids \(B, T\)"):
        model(torch.zeros(2, 3, 1, dtype=torch.int64))
    with pytest.raises(DTypeError, match="integers"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="tie_weights=True"):
        LanguageModel(5, hidden_size=4, embedding_dim=3, tie_weights=True)
    with pytest.raises(ValueError, match="vocab_size=7 but the vocabulary holds 5"):
        LanguageModel(7, vocabulary=vocab)
    with pytest.raises(ValueError, match="one entry per layer"):
        LanguageModel(5, hidden_size=4, cell="nas")(torch.tensor([[1]]), state=[1, 2])
