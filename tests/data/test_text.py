"""Text: vocabularies, language-model windows, stateful BPTT batches."""

import json
import os

import pytest
import torch

from rnnkit.data.text import (
    LanguageModelDataset,
    StatefulBatches,
    Vocabulary,
    batchify,
    bptt_batches,
)

SHAKESPEARE = "/work/shared/data/tinyshakespeare/input.txt"


def test_char_vocabulary_round_trip_and_unknowns():
    v = Vocabulary.build(["hello world"], level="char")
    assert v.itos[:2] == ["<pad>", "<unk>"] and v.pad_id == 0 and v.unk_id == 1
    assert v.itos[2] == "l"  # most frequent first
    assert v.decode(v.encode("hello")) == "hello"
    assert v.encode("hz") == [v["h"], v.unk_id]
    assert v.decode(v.encode("hz")) == "h<unk>"
    assert v.decode(torch.tensor([v["h"], 0, 0])) == "h"
    assert v.decode([v["h"], 0], skip_pad=False) == "h<pad>"
    with pytest.raises(IndexError, match="id 99 out of range for a vocabulary of"):
        v.decode([99])


def test_word_vocabulary_min_freq_max_size_lower():
    v = Vocabulary.build(["The cat", "the dog the end"], level="word", lower=True, min_freq=1)
    assert v.itos[2] == "the" and len(v) == 6
    v2 = Vocabulary.build(["a a b b c"], level="word", min_freq=2)
    assert v2.itos[2:] == ["a", "b"]
    v3 = Vocabulary.build(["a a b b c"], level="word", max_size=1)
    assert v3.itos[2:] == ["a"]
    assert v.encode("THE cow", as_tensor=True).tolist() == [2, 1]
    with pytest.raises(ValueError, match="level must be 'char' or 'word', got 'byte'"):
        Vocabulary.build(["x"], level="byte")
    with pytest.raises(ValueError, match="duplicate token 'a'"):
        Vocabulary(["a", "a"])


def test_save_load_json(tmp_path):
    v = Vocabulary.build(["héllo wörld"], level="char")
    path = tmp_path / "vocab.json"
    v.save(path)
    assert os.listdir(tmp_path) == ["vocab.json"]  # no temporary file left behind
    assert json.loads(path.read_text(encoding="utf-8"))["level"] == "char"
    w = Vocabulary.load(path)
    assert w.itos == v.itos and w.level == v.level
    assert w.encode("wörld") == v.encode("wörld")
    (tmp_path / "bad.json").write_text('{"tokens": []}')
    with pytest.raises(ValueError, match="bad.json: not an rnnkit vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not a vocabulary JSON file"):
        Vocabulary.load(tmp_path / "broken.json")


def test_language_model_dataset_targets_are_next_tokens():
    ids = list(range(100, 123))
    ds = LanguageModelDataset(ids, seq_len=5, stride=3)
    assert len(ds) == len(range(0, len(ids) - 5, 3))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == ids[3 * i: 3 * i + 5]
        assert y.tolist() == ids[3 * i + 1: 3 * i + 6]
    with pytest.raises(IndexError, match="window 6 out of range for 6 windows"):
        ds[6]
    with pytest.raises(ValueError, match="3 tokens are too few for one window of seq_len=5"):
        LanguageModelDataset([1, 2, 3], seq_len=5)


def test_batchify_matches_the_word_language_model_example():
    ids = torch.arange(23)
    data = batchify(ids, 4)
    # the PyTorch example: trim to a multiple of bsz, view(bsz, -1).t()
    nbatch = ids.size(0) // 4
    expected = ids.narrow(0, 0, nbatch * 4).view(4, -1).t().contiguous()
    assert torch.equal(data, expected) and data.shape == (5, 4)
    with pytest.raises(ValueError, match="3 tokens are too few for batch_size=2"):
        batchify([1, 2, 3], 2)


def test_bptt_batches_are_contiguous_and_cover_every_target():
    data = batchify(torch.arange(50), 3)  # (16, 3)
    xs, ys = zip(*bptt_batches(data, 5), strict=True)
    assert [x.shape[0] for x in xs] == [5, 5, 5]
    assert torch.equal(torch.cat(xs), data[:-1]) and torch.equal(torch.cat(ys), data[1:])
    xb, _ = next(bptt_batches(data, 5, batch_first=True))
    assert torch.equal(xb, xs[0].t())


def test_stateful_batches_epochs():
    ids = torch.arange(101)
    batches = StatefulBatches(ids, batch_size=4, bptt=6)
    a = list(batches)
    assert len(a) == len(batches) == 4
    assert [tuple(x.shape) for x, _ in a] == [(6, 4)] * 4
    shifted = StatefulBatches(ids, batch_size=4, bptt=6, random_offset=True, seed=1)
    firsts = set()
    for epoch in range(6):
        shifted.set_epoch(epoch)
        x, y = next(iter(shifted))
        assert torch.equal(y[:-1], x[1:])
        firsts.add(int(x[0, 0]))
    assert len(firsts) > 1


def test_tiny_shakespeare_char_vocab():
    if not os.path.exists(SHAKESPEARE):
        pytest.skip("tinyshakespeare not present")
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read(200_000)
    v = Vocabulary.build(text, level="char")
    ids = v.encode(text)
    assert v.decode(ids) == text and v.unk_id not in ids
    assert 40 < len(v) < 70
