"""Seq2seq runs from a configuration: train, evaluate, predict, translate, the heat map, and
the one-line errors. The decoded metrics are checked against a greedy loop written here over
the model's own decoder_step (independent of rnnkit.models.decoding) and sacrebleu."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rnnkit.errors import UsageError
from rnnkit.workflows.config import parse_config
from rnnkit.workflows.seq2seq import evaluate_seq2seq, predict_seq2seq, translate
from rnnkit.workflows.train import evaluate_run, load_run, train_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
sacrebleu = pytest.importorskip("sacrebleu")


def tiny(attention="bahdanau", **data):
    return {"model": {"type": "seq2seq", "cell": "gru", "hidden_size": 16,
                      "bidirectional": True, "attention": attention,
                      "options": {"embedding_dim": 8}},
            "data": {"format": "seq2seq", "task": "reversal", "min_length": 2,
                     "max_length": 5, "num_samples": 160, "num_validation": 16,
                     "num_test": 24, "batch_size": 32, **data},
            "trainer": {"epochs": 1, "progress": "none", "lr": 0.01}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("seq2seq") / "run"
    train_run(parse_config(tiny()), directory, echo=None)
    yield directory
    torch.set_num_threads(threads)


def greedy(model, text, vocabularies, max_length):
    """A plain greedy loop over the model's decoder_step: the oracle for decode()."""
    source, target = vocabularies
    ids = torch.tensor([source.encode(text)])
    encoded = model.encode(ids, torch.tensor([ids.shape[1]]))
    state = model.initial_decoder_state(encoded)
    token, out = torch.tensor([1]), []
    with torch.no_grad():
        for _ in range(max_length):
            log_probs, state, _ = model.decoder_step(token, state, encoded)
            token = log_probs.argmax(-1)
            if int(token) == 2:
                break
            out.append(target.itos[int(token)])
    return "".join(out)


def test_the_run_directory_and_its_metrics(run_dir):
    from rnnkit.data import Vocabulary
    from rnnkit.data.seq2seq_tasks import make_splits, make_task

    for name in ("config.json", "model.safetensors", "source_vocab.json", "target_vocab.json",
                 "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert {"loss", "accuracy", "exact_match", "token_accuracy", "bleu"} <= set(saved)
    model, config = load_run(run_dir)
    vocabularies = (Vocabulary.load(run_dir / "source_vocab.json"),
                    Vocabulary.load(run_dir / "target_vocab.json"))
    assert vocabularies[0].itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    test = make_splits(make_task("reversal", min_length=2, max_length=5), 160, 16, 24,
                       seed=config.data.seed).test
    predictions = [greedy(model.eval(), s, vocabularies, 6) for s, _ in test]
    references = [t for _, t in test]
    exact = sum(p == r for p, r in zip(predictions, references, strict=True)) / len(test)
    assert saved["exact_match"] == pytest.approx(exact)
    bleu = sacrebleu.corpus_bleu(predictions, [references], tokenize="char").score
    assert saved["bleu"] == pytest.approx(bleu)
    again = evaluate_run(run_dir)
    for key in ("loss", "exact_match", "token_accuracy", "bleu"):
        assert again[key] == pytest.approx(saved[key]), key


def test_translate_greedy_beam_and_heat_map(run_dir, tmp_path):
    from rnnkit.data import Vocabulary

    model, _ = load_run(run_dir)
    vocabularies = (Vocabulary.load(run_dir / "source_vocab.json"),
                    Vocabulary.load(run_dir / "target_vocab.json"))
    result = translate(run_dir, "abcd", beam_width=1)
    assert result.texts == [greedy(model.eval(), "abcd", vocabularies, 6)]
    png = tmp_path / "attention.png"
    best = translate(run_dir, "abcd", beam_width=4, n_best=3, attention_png=png)
    assert len(best.texts) == 3 and len(set(best.texts)) == 3
    assert best.scores == sorted(best.scores, reverse=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = len(best.tokens[0])
    assert best.attention.shape == (steps, 4)
    torch.testing.assert_close(best.attention.sum(-1), torch.ones(steps))


def test_translate_errors_are_one_line(run_dir):
    with pytest.raises(UsageError, match=r"outside the source vocabulary: '1', 'A'"):
        translate(run_dir, "abA1")
    with pytest.raises(UsageError, match="max length must be an integer of at least 1, got 0"):
        translate(run_dir, "abc", max_length=0)
    with pytest.raises(UsageError, match="beam width must be an integer of at least 1, got 0"):
        translate(run_dir, "abc", beam_width=0)
    with pytest.raises(UsageError, match="n-best 3 exceeds the beam width 2"):
        translate(run_dir, "abc", beam_width=2, n_best=3)
    with pytest.raises(UsageError, match="empty input"):
        translate(run_dir, "")


def test_evaluate_and_predict_on_a_file(run_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("abc\tcba\nxy\tyx\n\nab\tba\n")
    metrics = evaluate_seq2seq(run_dir, str(pairs))
    assert 0.0 <= metrics["exact_match"] <= 1.0 and "bleu" in metrics
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tcba\nno tab here\n")
    with pytest.raises(UsageError, match=r"bad.tsv:2: expected SOURCE<TAB>TARGET"):
        evaluate_seq2seq(run_dir, str(bad))
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("ab7\t7ba\n")
    with pytest.raises(UsageError, match=r"unknown.tsv: 'ab7'.*'7'"):
        evaluate_seq2seq(run_dir, str(unknown))
    out = predict_seq2seq(run_dir, str(pairs), tmp_path / "out.csv")
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == ["abc", "xy", "ab"]
    assert rows[0]["prediction"] == translate(run_dir, "abc").texts[0]


def test_unknown_map_and_no_attention(tmp_path):
    torch.set_num_threads(1)
    config = parse_config(tiny(attention="none", unknown="map", num_samples=32))
    directory = tmp_path / "run"
    train_run(config, directory, echo=None)
    assert len(translate(directory, "ab?").texts) == 1   # '?' reads as <unk>
    with pytest.raises(UsageError, match="no attention"):
        translate(directory, "abc", attention_png=tmp_path / "a.png")


@pytest.mark.parametrize("change, message", [
    ({"data": {"task": None}}, "needs task"),
    ({"data": {"format": "mnist1d"}}, "type 'seq2seq' reads [data] format 'seq2seq'"),
    ({"data": {"task": "date"}}, "did you mean 'dates'"),
    ({"model": {"attention": "bahdanu"}}, "did you mean 'bahdanau'"),
    ({"decode": {"beam_width": 0}}, "decode.beam_width must be at least 1"),
    ({"decode": {"max_length": 0}}, "decode.max_length must be at least 1"),
    ({"data": {"min_length": 6}}, "min_length (6) exceeds data.max_length (5)"),
    ({"data": {"num_test": -1}}, "num_test must be at least 0"),
])
def test_configuration_errors(change, message):
    raw = tiny()
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
        raw[section] = {k: v for k, v in raw[section].items() if v is not None}
    if raw["data"]["format"] == "mnist1d":
        for key in ("task", "min_length", "max_length", "num_validation", "num_test"):
            raw["data"].pop(key)
    with pytest.raises(UsageError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_other_models_refuse_seq2seq_keys():
    base = {"model": {"type": "classifier"}, "data": {"format": "mnist1d"}}
    with pytest.raises(UsageError, match="model.attention applies to type 'seq2seq'"):
        parse_config({**base, "model": {"type": "classifier", "attention": "luong"}})
    with pytest.raises(UsageError, match=r"\[decode\] applies to model.type 'seq2seq'"):
        parse_config({**base, "decode": {"beam_width": 4}})
    with pytest.raises(UsageError, match="data.task applies to format seq2seq"):
        parse_config({**base, "data": {"format": "mnist1d", "task": "dates"}})
