"""Character / sequence error rates: hand-computed values, torchmetrics' CharErrorRate on
strings, and CTCErrorRate through the trainer's Metrics and Trainer.evaluate."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from rnnkit.models.ctc_decoding import ctc_greedy_decode
from rnnkit.training.metrics import (
    Metrics,
    RecognitionMetrics,
    character_error_rate,
    edit_distance,
    edit_distance_counts,
    sequence_error_rate,
)


def test_hand_computed_rates():
    # "kitten" -> "sitting": 3 edits (k->s, e->i, +g), over the reference's 7 characters
    assert edit_distance("kitten", "sitting") == 3
    assert character_error_rate(["kitten"], ["sitting"]) == pytest.approx(3 / 7)
    # 3141 vs 3147: 1 substitution; 20 vs 205: 1 deletion; "" vs 9: 1; 55 vs "": 2 insertions
    predictions = [[3, 1, 4, 1], [2, 0], [], [5, 5]]
    references = [[3, 1, 4, 7], [2, 0, 5], [9], []]
    assert edit_distance_counts(predictions, references) == (1 + 1 + 1 + 2, 4 + 3 + 1 + 0)
    assert character_error_rate(predictions, references) == pytest.approx(5 / 8)
    assert sequence_error_rate(predictions, references) == 1.0
    assert sequence_error_rate([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    # tensors and tuples count as label sequences
    assert character_error_rate([torch.tensor([1, 2]), (3,)], [[1, 2], torch.tensor([3, 3])]) \
        == pytest.approx(1 / 4)


def test_no_reference_tokens():
    assert character_error_rate([[]], [[]]) == 0.0
    assert character_error_rate([[1]], [[]]) == math.inf
    assert math.isnan(sequence_error_rate([], []))


def test_character_error_rate_matches_torchmetrics_on_strings():
    from torchmetrics.text import CharErrorRate

    rng = random.Random(0)
    alphabet = "abc d"
    predictions = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
                   for _ in range(50)]
    references = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
                  for _ in range(50)]
    expected = float(CharErrorRate()(predictions, references))
    assert character_error_rate(predictions, references) == pytest.approx(expected, abs=1e-6)
    # label ids give the same answer as the characters they stand for
    ids = [[alphabet.index(ch) for ch in s] for s in predictions]
    ref_ids = [[alphabet.index(ch) for ch in s] for s in references]
    assert character_error_rate(ids, ref_ids) == pytest.approx(expected, abs=1e-6)


def test_recognition_metrics_accumulate_over_batches():
    predictions = [[1, 2, 3], [4], [], [7, 7, 7], [2, 2]]
    references = [[1, 2], [4], [5], [7, 1, 7], [2, 2]]
    metrics = RecognitionMetrics()
    assert all(math.isnan(v) for v in metrics.compute().values())
    metrics.update(predictions[:2], references[:2])
    metrics.update(predictions[2:], references[2:])
    assert metrics.compute() == {"cer": character_error_rate(predictions, references),
                                 "ser": sequence_error_rate(predictions, references)}
    assert RecognitionMetrics("ser").compute().keys() == {"ser"}
    metrics.reset()
    assert math.isnan(metrics.compute()["cer"])


def test_clear_errors():
    with pytest.raises(TypeError, match="not one str"):
        character_error_rate("abc", "abd")
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        sequence_error_rate([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="unknown recognition metric 'wer'"):
        RecognitionMetrics(["cer", "wer"])


# ----------------------------------------------------------------------------- CTCErrorRate
def one_hot_log_probs(paths, classes):
    return torch.nn.functional.one_hot(torch.tensor(paths), classes).double().log()


def test_ctc_error_rate_decodes_and_compares():
    from rnnkit.training.metrics import CTCErrorRate

    # paths decode to [1, 2], [2, 2] (a blank between) and, with length 2, [3]
    log_probs = one_hot_log_probs([[1, 1, 2, 0], [2, 0, 2, 2], [3, 3, 1, 1]], 4)
    target = torch.tensor([[1, 2, -1], [2, -1, -1], [3, 1, 1]])    # padded with -1
    lengths = torch.tensor([4, 4, 2])
    cer, ser = CTCErrorRate("cer"), CTCErrorRate("ser")
    for metric in (cer, ser):
        metric.update(log_probs, target, lengths=lengths)
    # edits: 0 + 1 (an extra 2) + 2 (two 1s missing) over 2 + 1 + 3 labels
    assert float(cer.compute()) == pytest.approx(3 / 6)
    assert float(ser.compute()) == pytest.approx(2 / 3)
    # a mask gives the lengths; a list of reference sequences works as the target
    masked = CTCErrorRate("cer")
    masked.update(log_probs, [[1, 2], [2], [3, 1, 1]], torch.arange(4) < lengths[:, None])
    assert float(masked.compute()) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="what must be 'cer' or 'ser'"):
        CTCErrorRate("wer")
    with pytest.raises(ValueError, match=r"2 targets for 3 rows"):
        CTCErrorRate().update(log_probs, target[:2])


def test_ctc_error_rate_through_the_trainer_metrics():
    from rnnkit.training.metrics import CTCErrorRate

    log_probs = one_hot_log_probs([[1, 1, 2, 0], [2, 0, 2, 2], [3, 3, 1, 1]], 4)
    target = torch.tensor([[1, 2, -1], [2, -1, -1], [3, 1, 1]])
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])
    metrics = Metrics([CTCErrorRate("cer"), CTCErrorRate("ser", name="sequence_errors")])
    assert metrics.names == ["cer", "sequence_errors"]
    assert all(math.isnan(v) for v in metrics.compute().values())
    metrics.update(log_probs[:2], target[:2], mask[:2])
    state = metrics.state_dict()
    metrics.update(log_probs[2:], target[2:], mask[2:])
    assert metrics.compute() == pytest.approx({"cer": 3 / 6, "sequence_errors": 2 / 3})
    # checkpoints restore the sums exactly; summing over two identical ranks keeps the rate
    resumed = Metrics([CTCErrorRate("cer"), CTCErrorRate("ser", name="sequence_errors")])
    resumed.load_state_dict(state)
    resumed.update(log_probs[2:], target[2:], mask[2:])
    assert resumed.compute() == metrics.compute()
    assert metrics.sync(lambda t: t * 2).compute() == pytest.approx(
        {"cer": 3 / 6, "sequence_errors": 2 / 3})


class TinyRecognizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, x, lengths=None):
        return torch.log_softmax(self.proj(x), -1)            # (B, T, C)


def ctc_loss(output, target, mask=None):
    lengths = mask.sum(1) if mask is not None else torch.full((output.shape[0],), output.shape[1])
    target_lengths = (target >= 0).sum(1)
    return nn.functional.ctc_loss(output.transpose(0, 1), target.clamp(min=0).long(), lengths,
                                  target_lengths, zero_infinity=True)


def test_ctc_error_rate_in_trainer_evaluate():
    from rnnkit.training import Trainer
    from rnnkit.training.metrics import CTCErrorRate

    torch.manual_seed(0)
    model = TinyRecognizer()
    x = torch.randn(6, 5, 3)
    lengths = torch.tensor([5, 3, 4, 5, 2, 1])
    target = torch.tensor([[1, 2], [3, -1], [1, 1], [2, 3], [1, -1], [2, -1]])
    trainer = Trainer(model, loss=ctc_loss, metrics=[CTCErrorRate("cer"), CTCErrorRate("ser")],
                      verbose=False)
    result = trainer.evaluate((x, target, lengths), batch_size=4)
    with torch.no_grad():
        decoded = ctc_greedy_decode(model(x), lengths)
    references = [[v for v in row if v >= 0] for row in target.tolist()]
    assert result["cer"] == pytest.approx(character_error_rate(decoded, references))
    assert result["ser"] == pytest.approx(sequence_error_rate(decoded, references))
