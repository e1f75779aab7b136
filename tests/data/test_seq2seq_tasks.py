"""The seq2seq toy tasks: pairs checked against independent oracles (``datetime.strptime``,
Python's own arithmetic, slicing), seeded determinism, disjoint splits, the batch layout."""

from __future__ import annotations

import calendar
import datetime
import re

import pytest
import torch

from rnnkit.data.seq2seq_tasks import (
    BOS_ID,
    DATE_FORMATS,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Seq2SeqCollate,
    Seq2SeqDataset,
    UnknownCharactersError,
    char_vocabulary,
    make_splits,
    make_task,
)

# our format fields -> strptime's (which reads case-insensitively and needs no zero padding)
_STRPTIME = {"{d}": "%d", "{dd}": "%d", "{D}": "%d", "{m}": "%m", "{mm}": "%m", "{MON}": "%b",
             "{MONTH}": "%B", "{yy}": "%y", "{yyyy}": "%Y", "{WD}": "%a", "{WEEKDAY}": "%A"}


def _oracle_parse(source: str) -> datetime.date:
    """The date ``source`` writes, found by trying every format with ``strptime``."""
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", source, flags=re.IGNORECASE)
    found = set()
    for template in DATE_FORMATS:
        pattern = template
        for field, directive in _STRPTIME.items():
            pattern = pattern.replace(field, directive)
        try:
            parsed = datetime.datetime.strptime(text.lower(), pattern).date()
        except ValueError:
            continue
        if "%y" in pattern and parsed.year > 2049:  # strptime pivots at 69, the task at 50
            parsed = parsed.replace(year=parsed.year - 100)
        if "%A" in pattern or "%a" in pattern:   # strptime ignores the weekday: check it
            names = [calendar.day_name[parsed.weekday()], calendar.day_abbr[parsed.weekday()]]
            if not any(n.lower() in source.lower() for n in names):
                continue
        found.add(parsed)
    assert len(found) == 1, f"{source!r} parses as {found}"
    return found.pop()


def test_specials_come_first():
    vocab = make_task("dates").source_vocabulary
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (vocab.pad_id, vocab.unk_id) == (PAD_ID, UNK_ID) == (0, 3)
    assert vocab.stoi["<bos>"] == BOS_ID == 1 and vocab.stoi["<eos>"] == EOS_ID == 2


def test_dates_match_strptime_and_cover_the_formats():
    task = make_task("dates")
    pairs = task.pairs(3000, seed=1)
    sources = set()
    for source, target in pairs:
        assert _oracle_parse(source).isoformat() == target
        assert len(source) <= task.max_source_length and len(target) == 10
        sources.add(source)
    assert any(s.isupper() for s in sources) and any(s.islower() for s in sources)
    # the brief's examples are among the formats
    may3 = datetime.date(1997, 5, 3)
    from rnnkit.data.seq2seq_tasks import format_date
    written = {format_date(may3, f) for f in DATE_FORMATS}
    for example in ("3 May 1997", "May 3, 1997", "03/05/97", "Saturday, May 3, 1997",
                    "1997.05.03"):
        assert example in written


def test_addition_and_reversal_match_python():
    for source, target in make_task("addition").pairs(500, seed=2):
        a, b = source.split("+")
        assert 1 <= len(a) <= 3 and 1 <= len(b) <= 3
        assert int(target) == int(a) + int(b)
    lengths = set()
    for source, target in make_task("reversal", min_length=2, max_length=5).pairs(500, seed=3):
        assert target == source[::-1] and source.isalpha()
        lengths.add(len(source))
    assert lengths == {2, 3, 4, 5}


def test_seeded_and_repeatable():
    task = make_task("addition")
    assert task.pairs(50, seed=7) == make_task("addition").pairs(50, seed=7)
    assert task.pairs(50, seed=7) != task.pairs(50, seed=8)


@pytest.mark.parametrize("name", ["dates", "addition", "reversal"])
def test_held_out_splits_share_no_sample(name):
    task = make_task(name)
    splits = make_splits(task, num_train=2000, num_validation=100, num_test=300, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2000, 100, 300)

    def key(source, target):  # the underlying sample, computed independently of the task
        if name == "dates":
            return target
        if name == "addition":
            return tuple(int(x) for x in source.split("+"))
        return source

    train = {key(*p) for p in splits.train}
    validation = {key(*p) for p in splits.validation}
    test = {key(*p) for p in splits.test}
    assert len(test) == 300 and len(validation) == 100
    assert not train & test and not train & validation and not validation & test
    again = make_splits(make_task(name), 2000, 100, 300, seed=0)
    assert again.test == splits.test and again.train == splits.train


def test_too_small_a_task_is_refused():
    task = make_task("reversal", min_length=1, max_length=1)  # 26 sequences
    with pytest.raises(ValueError, match="26 distinct samples"):
        make_splits(task, num_train=10, num_test=30)
    with pytest.raises(ValueError, match="unknown seq2seq task 'date'.*'dates'"):
        make_task("date")
    with pytest.raises(ValueError, match="min_length"):
        make_task("reversal", min_length=5, max_length=2)


def test_unknown_characters_are_named_or_mapped():
    task = make_task("addition")
    src, tgt = task.source_vocabulary, task.target_vocabulary
    with pytest.raises(UnknownCharactersError) as error:
        Seq2SeqDataset([("12+5", "17"), ("1x+y5", "0")], src, tgt)
    message = str(error.value)
    assert "'x'" in message and "'y'" in message and "\n" not in message
    mapped = Seq2SeqDataset([("1x+5", "6")], src, tgt, unknown="map")
    assert mapped[0][0].tolist() == [src.stoi["1"], UNK_ID, src.stoi["+"], src.stoi["5"]]
    with pytest.raises(UnknownCharactersError, match="target vocabulary"):
        Seq2SeqDataset([("1+5", "six")], src, tgt, unknown="map")
    with pytest.raises(ValueError, match="non-empty"):
        Seq2SeqDataset([("", "0")], src, tgt)


def test_collate_builds_teacher_forcing_inputs_and_targets():
    vocab = char_vocabulary("abc")
    data = Seq2SeqDataset([("abc", "cba"), ("a", "a"), ("ab", "ba")], vocab, vocab)
    batch = Seq2SeqCollate()([data[i] for i in range(3)])
    source, target_in = batch["inputs"]
    target_out, lengths = batch["target"], batch["lengths"]
    assert lengths.tolist() == [3, 1, 2]
    assert source.shape == (3, 3) and target_in.shape == target_out.shape == (3, 4)
    for row, (src, tgt) in enumerate(data.pairs):
        ids = [vocab.stoi[c] for c in tgt]
        n = len(ids)
        assert source[row, : len(src)].tolist() == [vocab.stoi[c] for c in src]
        assert (source[row, len(src):] == PAD_ID).all()
        assert target_in[row, : n + 1].tolist() == [BOS_ID, *ids]
        assert (target_in[row, n + 1:] == PAD_ID).all()
        assert target_out[row, : n + 1].tolist() == [*ids, EOS_ID]
        assert (target_out[row, n + 1:] == -100).all()


def test_the_trainer_reads_the_batches():
    """rnnkit.Trainer takes the collate's dicts: ``model(source, target_in, lengths=...)``, and
    its loss is torch's cross-entropy over the real target tokens (the -100 padding left out)."""
    from torch import nn

    from rnnkit import Trainer

    vocab = char_vocabulary("abc")
    pairs = [("abc", "cba"), ("a", "a"), ("cab", "bac"), ("bb", "bb"), ("ca", "ac")]
    seen = []

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(vocab), 8)
            self.encoder = nn.GRU(8, 16, batch_first=True)
            self.decoder = nn.GRU(8, 16, batch_first=True)
            self.out = nn.Linear(16, len(vocab))

        def forward(self, source, target_in, lengths=None):
            seen.append(lengths)
            _, h = self.encoder(self.embed(source))
            y, _ = self.decoder(self.embed(target_in), h)
            return self.out(y)                                   # (B, T, V)

    torch.manual_seed(0)
    model = Tiny()
    loader = torch.utils.data.DataLoader(Seq2SeqDataset(pairs, vocab, vocab), batch_size=5,
                                         collate_fn=Seq2SeqCollate())
    trainer = Trainer(model, loss="sequence_cross_entropy", metrics=["accuracy"], verbose=False)
    result = trainer.evaluate(loader)
    batch = next(iter(loader))
    with torch.no_grad():
        logits = model(*batch["inputs"])
    expected = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                           batch["target"].reshape(-1), ignore_index=-100)
    assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert seen[0].tolist() == [3, 1, 3, 2, 2]
