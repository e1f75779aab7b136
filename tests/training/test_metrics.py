"""rnnkit.training.metrics against independent oracles: NumPy brute force over the counted
elements (and scikit-learn where it is installed), hand-computed values for the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchmetrics

from rnnkit.errors import ShapeError
from rnnkit.training.metrics import METRIC_NAMES, Metrics
from tests.helpers import assert_doctests_pass

CLASS_NAMES = ["accuracy", "f1", "confusion_matrix", "perplexity", "bits_per_character"]
VALUE_NAMES = ["mse", "rmse", "mae", "mape"]


# ------------------------------------------------------------------------------ NumPy oracles
def np_log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_class_metrics(scores: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Brute force over counted rows: scores (N, C) float64, target (N,) ints."""
    pred = scores.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(target, pred, strict=True):
        confusion[t, p] += 1
    f1s = []
    for c in sorted(set(target.tolist()) | set(pred.tolist())):  # scikit-learn's default labels
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    nll = -np_log_softmax(scores)[np.arange(len(target)), target]
    return {"accuracy": float(np.mean(pred == target)), "f1": float(np.mean(f1s)),
            "confusion_matrix": confusion.tolist(),
            "perplexity": float(np.exp(nll.mean())),
            "bits_per_character": float(nll.mean() / np.log(2.0))}


def np_value_metrics(out: np.ndarray, tgt: np.ndarray) -> dict:
    err = out - tgt
    return {"mse": float(np.mean(err ** 2)), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "mae": float(np.mean(np.abs(err))),
            "mape": float(np.mean(np.abs(err) / np.maximum(np.abs(tgt), 1.17e-6)))}


def assert_matches(got: dict, expected: dict, rtol: float = 1e-5) -> None:
    for name, value in expected.items():
        if isinstance(value, list):
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=rtol, abs=1e-6), name


def length_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]   # (B, T)


# -------------------------------------------------------------------------- classification
def test_per_sample_classification_matches_brute_force_over_batches():
    g = torch.Generator().manual_seed(0)
    metrics = Metrics(CLASS_NAMES)
    all_scores, all_target = [], []
    for batch in (7, 5, 1):                                    # batch 1 included
        scores = torch.randn(batch, 4, generator=g)            # (B, C)
        target = torch.randint(0, 4, (batch,), generator=g)    # (B,)
        metrics.update(scores, target)
        all_scores.append(scores.double().numpy())
        all_target.append(target.numpy())
    expected = np_class_metrics(np.concatenate(all_scores), np.concatenate(all_target), 4)
    assert_matches(metrics.compute(), expected)


def test_per_step_padding_never_counts():
    g = torch.Generator().manual_seed(1)
    lengths, steps, classes = [5, 2, 3], 5, 3
    mask = length_mask(lengths, steps)
    scores = torch.randn(3, steps, classes, generator=g)            # (B, T, C)
    target = torch.randint(0, classes, (3, steps), generator=g)     # (B, T)
    # garbage in the padding: confidently wrong scores and an out-of-range class id
    scores[~mask] = torch.tensor([50.0, -50.0, -50.0])
    target[~mask] = 2
    metrics = Metrics(CLASS_NAMES)
    metrics.update(scores, target, mask)
    m = mask.numpy()
    expected = np_class_metrics(scores.double().numpy()[m], target.numpy()[m], classes)
    assert_matches(metrics.compute(), expected)
    assert sum(map(sum, metrics.compute()["confusion_matrix"])) == sum(lengths)


def test_ignore_index_targets_never_count():
    scores = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])     # (1, 3, 2)
    target = torch.tensor([[0, -100, 1]])                              # the middle one ignored
    metrics = Metrics(["accuracy", "perplexity"])
    metrics.update(scores, target)
    nll = -np_log_softmax(np.array([[2.0, 0.0], [2.0, 0.0]]))[[0, 1], [0, 1]]
    assert metrics.compute()["accuracy"] == 0.5
    assert metrics.compute()["perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-9)


def test_sequence_output_with_per_sample_target_scores_the_last_valid_step():
    g = torch.Generator().manual_seed(2)
    lengths = [4, 1, 2]
    mask = length_mask(lengths, 4)
    scores = torch.randn(3, 4, 5, generator=g)                      # (B, T, C)
    target = torch.randint(0, 5, (3,), generator=g)                 # (B,)
    metrics = Metrics(["accuracy", "confusion_matrix"])
    metrics.update(scores, target, mask)
    last = scores.double().numpy()[np.arange(3), np.array(lengths) - 1]
    assert_matches(metrics.compute(), {k: v for k, v in np_class_metrics(
        last, target.numpy(), 5).items() if k in ("accuracy", "confusion_matrix")})


def test_one_class_present_hand_computed():
    # every target is class 0; predictions are 0, 0, 2 -> accuracy 2/3; F1 over the labels seen
    # (0 and 2, as scikit-learn): class 0: tp 2, fn 1 -> 0.8; class 2: tp 0 -> 0; macro 0.4
    scores = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 2.0]])
    metrics = Metrics(["accuracy", "f1", "confusion_matrix"])
    metrics.update(scores, torch.zeros(3, dtype=torch.long))
    got = metrics.compute()
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(0.4)
    assert got["confusion_matrix"] == [[2, 0, 1], [0, 0, 0], [0, 0, 0]]
    # all right on a single class: F1 is 1, not diluted by the absent classes
    metrics = Metrics(["f1"])
    metrics.update(scores[:1], torch.zeros(1, dtype=torch.long))
    assert metrics.compute()["f1"] == 1.0


def test_binary_logit_and_one_hot_targets():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])           # (B, 1): class 1 iff > 0
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    metrics = Metrics(["accuracy", "perplexity"])
    metrics.update(logits, target)
    z, y = logits.squeeze(1).double().numpy(), target.double().numpy()
    bce = np.mean(np.logaddexp(0, z) - y * z)                         # binary cross-entropy
    assert metrics.compute()["accuracy"] == pytest.approx(0.75)
    assert metrics.compute()["perplexity"] == pytest.approx(math.exp(bce), rel=1e-9)
    one_hot = Metrics(["accuracy"])
    one_hot.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert one_hot.compute()["accuracy"] == 0.5


def test_against_sklearn_when_installed():
    metrics_module = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(40, 6, generator=g)
    target = torch.randint(0, 4, (40,), generator=g)                 # classes 4, 5 never true
    ours = Metrics(["accuracy", "f1", "confusion_matrix"])
    ours.update(scores, target)
    pred = scores.argmax(1).numpy()
    got = ours.compute()
    assert got["accuracy"] == pytest.approx(metrics_module.accuracy_score(target, pred))
    assert got["f1"] == pytest.approx(metrics_module.f1_score(target, pred, average="macro"))
    assert got["confusion_matrix"] == metrics_module.confusion_matrix(
        target, pred, labels=range(6)).tolist()


# ------------------------------------------------------------------------------ regression
def test_regression_per_step_masked_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    lengths = [3, 6, 1, 6]
    mask = length_mask(lengths, 6)
    out = torch.randn(4, 6, 2, generator=g)                         # (B, T, D)
    tgt = torch.randn(4, 6, 2, generator=g) + 3.0
    out[~mask] = 1e6                                                # padding garbage
    metrics = Metrics(VALUE_NAMES)
    metrics.update(out[:2], tgt[:2], mask[:2])
    metrics.update(out[2:], tgt[2:], mask[2:])
    m = mask.numpy()
    assert_matches(metrics.compute(),
                   np_value_metrics(out.double().numpy()[m], tgt.double().numpy()[m]))


def test_regression_per_sample_shapes_and_last_step():
    g = torch.Generator().manual_seed(5)
    out = torch.randn(5, 1, generator=g)                            # (B, 1) vs target (B,)
    tgt = torch.randn(5, generator=g)
    metrics = Metrics(VALUE_NAMES)
    metrics.update(out, tgt)
    assert_matches(metrics.compute(), np_value_metrics(out.squeeze(1).numpy(), tgt.numpy()))
    # (B, T, D) output with a per-sample (B, D) target: the last valid step of each row
    seq = torch.randn(3, 4, 2, generator=g)
    target = torch.randn(3, 2, generator=g)
    mask = length_mask([2, 4, 3], 4)
    metrics = Metrics(["mse"])
    metrics.update(seq, target, mask)
    last = seq.numpy()[np.arange(3), np.array([1, 3, 2])]
    assert_matches(metrics.compute(), {"mse": np_value_metrics(last, target.numpy())["mse"]})


# ---------------------------------------------------------------------- language models
def test_perplexity_and_bpc_from_summed_cross_entropy_with_padding():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 7, generator=g)                      # (B, T, V)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    mask = length_mask([5, 2], 5)
    metrics = Metrics(["perplexity", "bpc"])
    metrics.update((logits, "state"), ids, mask)                    # (output, state) tuples too
    nll = -np_log_softmax(logits.double().numpy())[mask.numpy()][
        np.arange(7), ids.numpy()[mask.numpy()]]
    got = metrics.compute()
    assert got["perplexity"] == pytest.approx(np.exp(nll.sum() / 7), rel=1e-9)
    assert got["bpc"] == pytest.approx(nll.sum() / 7 / np.log(2), rel=1e-9)
    # uniform scores over V classes: perplexity V, log2(V) bits
    uniform = Metrics(["perplexity", "bits_per_character"])
    uniform.update(torch.zeros(1, 3, 8), torch.tensor([[1, 5, 7]]))
    assert uniform.compute() == pytest.approx({"perplexity": 8.0, "bits_per_character": 3.0})


# ---------------------------------------------------------------------- state and lifecycle
def test_state_dict_resumes_mid_epoch_exactly(tmp_path):
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(4, 3, 3, generator=g), torch.randint(0, 3, (4, 3), generator=g),
                length_mask([3, 1, 2, 3], 3)) for _ in range(4)]
    names = CLASS_NAMES
    whole = Metrics(names)
    for batch in batches:
        whole.update(*batch)
    first = Metrics(names)
    for batch in batches[:2]:
        first.update(*batch)
    path = tmp_path / "metrics.pt"
    torch.save(first.state_dict(), path)
    resumed = Metrics(names)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    for batch in batches[2:]:
        resumed.update(*batch)
    assert resumed.compute() == whole.compute()                    # bit-identical
    value = Metrics(VALUE_NAMES)
    value.update(torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g))
    copy = Metrics(VALUE_NAMES)
    copy.load_state_dict(value.state_dict())
    assert copy.compute() == value.compute()
    with pytest.raises(ValueError, match="metrics state holds"):
        Metrics(["mse"]).load_state_dict(value.state_dict())


def test_reset_and_empty_epoch():
    assert math.isnan(Metrics(["mse"]).compute()["mse"])
    metrics = Metrics(["accuracy", "confusion_matrix"])
    got = metrics.compute()
    assert math.isnan(got["accuracy"]) and got["confusion_matrix"] == []
    metrics.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert metrics.compute()["accuracy"] == 1.0
    metrics.reset()
    metrics.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert metrics.compute()["accuracy"] == 0.0
    # a batch that is all padding adds nothing
    metrics.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.long),
                   torch.zeros(1, 2, dtype=torch.bool))
    assert metrics.compute()["confusion_matrix"] == [[0, 0], [1, 0]]


def test_sync_sums_the_accumulators_of_every_rank():
    g = torch.Generator().manual_seed(8)
    batches = [(torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g))
               for _ in range(2)]
    names = ["accuracy", "f1", "confusion_matrix", "perplexity"]
    whole = Metrics(names)
    ranks = [Metrics(names), Metrics(names)]
    for batch, rank in zip(batches, ranks, strict=True):
        whole.update(*batch)
        rank.update(*batch)
    # all_reduce over two ranks, played in one process: rank 1's reduce inputs are recorded,
    # then each of rank 0's calls returns its tensor plus rank 1's matching one
    recorded: list[torch.Tensor] = []
    ranks[1].sync(lambda t: recorded.append(t.clone()) or t)
    partner = iter(recorded)
    ranks[0].sync(lambda t: t + next(partner))
    assert next(partner, None) is None                              # same calls on both ranks
    assert_matches(ranks[0].compute(), whole.compute(), rtol=1e-12)


def test_custom_torchmetrics_metric_gets_counted_elements():
    mask = torch.tensor([[True, False]])
    metrics = Metrics([torchmetrics.MeanSquaredError()])
    assert metrics.names == ["mean_squared_error"]
    metrics.update(torch.tensor([[2.0, 100.0]]), torch.tensor([[0.0, 0.0]]), mask)
    assert metrics.compute() == {"mean_squared_error": 4.0}        # the padded 100 never counts


# ---------------------------------------------------------------------------- bad input
def test_bad_name_is_one_line_with_the_closest_match():
    with pytest.raises(ValueError) as info:
        Metrics(["accuracy", "acuracy"])
    message = str(info.value)
    assert "\n" not in message
    assert "'acuracy'" in message and "did you mean 'accuracy'" in message
    for name in METRIC_NAMES:
        assert name in message
    with pytest.raises(ValueError, match="did you mean 'perplexity'"):
        Metrics(["perplexty"])
    with pytest.raises(ValueError, match="listed twice"):
        Metrics(["mse", "mse"])


def test_shape_and_class_errors_name_the_problem():
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(5,\)"):
        Metrics(["accuracy"]).update(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(4, 2\)"):
        Metrics(["mse"]).update(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="target class 3 is outside 0..2"):
        Metrics(["accuracy"]).update(torch.randn(2, 3), torch.tensor([0, 3]))
    metrics = Metrics(["f1"])
    metrics.update(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="earlier batches had 3"):
        metrics.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="metric 'accuracy' needs class scores.*'mse'"):
        Metrics(["accuracy"], loss_name="mse")
    with pytest.raises(ValueError, match="metric 'mae' needs values.*'cross_entropy'"):
        Metrics(["mae"], loss_name="cross_entropy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_match_cpu():
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(3, 4, 5, generator=g)
    target = torch.randint(0, 5, (3, 4), generator=g)
    mask = length_mask([4, 2, 1], 4)
    cpu, gpu = Metrics(CLASS_NAMES), Metrics(CLASS_NAMES)
    cpu.update(scores, target, mask)
    gpu.update(scores.cuda(), target.cuda(), mask.cuda())
    assert_matches(gpu.compute(), cpu.compute())
    restored = Metrics(CLASS_NAMES)
    restored.load_state_dict(gpu.state_dict())
    assert_matches(restored.compute(), cpu.compute())


def test_docstring_examples_run():
    assert_doctests_pass("rnnkit.training.metrics")
