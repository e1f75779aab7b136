"""SequenceRecognizer and ctc_loss: CTC against brute force and a NumPy forward algorithm,
padded batches against rows alone, clear errors, the trainer, save/load."""

import itertools
import math

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.errors import ShapeError
from rnnkit.models.recognizer import (
    PAD_LOG_PROB,
    RecognizerOutput,
    SequenceRecognizer,
    ctc_loss,
    ctc_min_frames,
)
from tests.helpers import assert_doctests_pass


def random_log_probs(batch, frames, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(batch, frames, classes, generator=g, dtype=torch.float64),
                             dim=-1)


def brute_force_nll(log_probs, labels, blank):
    """-log of the summed probability of every frame path that collapses to ``labels``
    (merge repeats, drop blanks): the definition of CTC, enumerated (Graves et al. 2006, eq. 3)."""
    probs = np.exp(log_probs)
    frames, classes = probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=frames):
        collapsed = [c for t, c in enumerate(path) if c != blank and (t == 0 or c != path[t - 1])]
        if collapsed == list(labels):
            total += float(np.prod(probs[np.arange(frames), path]))
    return -math.log(total)


def forward_algorithm_nll(log_probs, labels, blank):
    """-log p(labels) by the CTC forward (alpha) recursion in log space, in NumPy
    (Graves et al. 2006, eqs. 6-8; as in Graves' thesis, ch. 7)."""
    ext = [blank]
    for label in labels:
        ext += [label, blank]
    frames, n = log_probs.shape[0], len(ext)
    alpha = np.full(n, -np.inf)
    alpha[0] = log_probs[0, blank]
    if n > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, frames):
        new = np.full(n, -np.inf)
        for s in range(n):
            terms = [alpha[s]]
            if s >= 1:
                terms.append(alpha[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = np.logaddexp.reduce(terms) + log_probs[t, ext[s]]
        alpha = new
    return -np.logaddexp(alpha[-1], alpha[-2] if n > 1 else -np.inf)


@pytest.mark.parametrize("labels", [[], [1], [2, 1], [1, 1], [2, 2, 1]])
@pytest.mark.parametrize("blank", [0, 2])
def test_ctc_loss_equals_brute_force_sum_over_alignments(labels, blank):
    classes, frames = 3, 5
    labels = [c if c != blank else 0 for c in labels] if blank == 2 else labels
    if blank in labels:
        pytest.skip("blank among labels")
    log_probs = random_log_probs(1, frames, classes, seed=len(labels) + 7 * blank)
    got = ctc_loss(log_probs, [labels], blank=blank, reduction="none")
    expected = brute_force_nll(log_probs[0].numpy(), labels, blank)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-9)


def test_ctc_loss_equals_numpy_forward_algorithm_on_a_padded_batch():
    classes = 6
    log_probs = random_log_probs(4, 11, classes, seed=3)
    rows = [[1, 2, 3], [4, 4, 4, 5], [5], [2, 3, 2, 3, 1]]
    frames = torch.tensor([11, 9, 3, 10])
    targets = torch.full((4, 5), -1)
    for b, row in enumerate(rows):
        targets[b, :len(row)] = torch.tensor(row)
    got = ctc_loss(log_probs, targets, frames, reduction="none")
    expected = [forward_algorithm_nll(log_probs[b, :int(frames[b])].numpy(), rows[b], 0)
                for b in range(4)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert float(ctc_loss(log_probs, targets, frames)) == pytest.approx(np.mean(expected))
    assert float(ctc_loss(log_probs, targets, frames, reduction="sum")) == pytest.approx(
        np.sum(expected))
    # -100 padding (the trainer's ignore index) and explicit target_lengths mean the same
    np.testing.assert_allclose(
        ctc_loss(log_probs, targets.masked_fill(targets < 0, -100), frames,
                 reduction="none").numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(
        ctc_loss(log_probs, targets.clamp(min=1), frames, [3, 4, 1, 5],
                 reduction="none").numpy(), expected, rtol=1e-9)


def test_min_frames_count_the_blanks_between_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2]) == 4
    assert ctc_min_frames(torch.tensor([3, 3, 3])) == 5


def test_a_target_exactly_as_long_as_allowed_is_finite():
    # [1, 1, 2, 2] needs 4 labels + 2 blanks = 6 frames (1 _ 1 2 _ 2): 6 is enough, 5 is not
    log_probs = random_log_probs(1, 6, 3)
    assert math.isfinite(float(ctc_loss(log_probs, [[1, 1, 2, 2]])))
    with pytest.raises(ValueError, match="needs 6 output frames"):
        ctc_loss(log_probs[:, :5], [[1, 1, 2, 2]], blank=0)


def inputs(batch=4, steps=40, features=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, features, generator=g)


@pytest.mark.parametrize("cell, conv, depth, norm", [
    ("lstm", (), 1, False), ("gru", (4,), 1, False), ("indrnn", (3, 5), 1, False),
    ("lstm", (4, 6), 1, False), ("lstm", (4, 6), 2, False), ("gru", (3, 5), 2, True),
    ("lstm", (4,), 1, True)])
def test_padded_batch_gives_each_row_what_it_gives_alone(cell, conv, depth, norm):
    torch.manual_seed(0)
    model = SequenceRecognizer(12, 5, hidden_size=8, cell=cell, num_layers=2, conv_channels=conv,
                               conv_depth=depth, conv_batch_norm=norm)
    if norm:  # running statistics away from the initial 0 / 1, so that using them shows
        model.train()
        model(inputs(steps=40) * 3.0 + 1.0, torch.tensor([40, 31, 22, 9]))
    model.eval()
    lengths = torch.tensor([40, 23, 17, 8])
    x = inputs()
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 100.0  # garbage padding must not leak into any row
    targets = torch.tensor([[1, 2, 2], [3, -1, -1], [4, 1, -1], [2, -1, -1]])
    out = model(x, lengths)
    assert out.lengths.tolist() == (lengths // 2 ** len(conv)).tolist()
    assert out.log_probs.shape == (4, 40 // 2 ** len(conv), 5)
    losses = model.loss(out, targets, reduction="none")
    decoded = model.decode(x, lengths)
    beam = model.decode(x, lengths, method="beam", beam_width=3)
    for b, n in enumerate(lengths.tolist()):
        alone = model(x[b:b + 1, :n])
        keep = int(alone.lengths[0])
        assert keep == int(out.lengths[b])
        torch.testing.assert_close(out.log_probs[b, :keep], alone.log_probs[0], atol=1e-5,
                                   rtol=1e-5)
        # the padded frames read as certain blanks
        assert (out.log_probs[b, keep:, 0] == 0).all()
        assert (out.log_probs[b, keep:, 1:] == PAD_LOG_PROB).all()
        row = targets[b:b + 1]
        torch.testing.assert_close(losses[b:b + 1], model.loss(alone, row, reduction="none"),
                                   atol=1e-5, rtol=1e-5)
        assert decoded[b] == model.decode(x[b:b + 1, :n])[0]
        assert beam[b] == model.decode(x[b:b + 1, :n], method="beam", beam_width=3)[0]


def test_greedy_decode_is_the_best_path_collapsed():
    model = SequenceRecognizer(3, 4, hidden_size=4, num_layers=1, blank=3)
    # a forward that returns fixed scores: best path 1 1 3 1 2 2 3 0 -> [1, 1, 2, 0]
    path = [1, 1, 3, 1, 2, 2, 3, 0]
    scores = torch.full((1, 8, 4), -5.0)
    scores[0, torch.arange(8), torch.tensor(path)] = 0.0
    model.forward = lambda x, lengths=None: RecognizerOutput(scores, torch.tensor([8]))
    assert model.decode(torch.zeros(1, 8, 3)) == [[1, 1, 2, 0]]


def test_learns_a_tiny_task_through_the_trainer():
    """Frames showing labels 1-3 for 2-3 steps each, separated by blanks or not: the trainer
    fits the recognizer with its own loss, and the mask it hands the loss follows
    output_lengths when a front end halves time."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    xs, ys, lengths = [], [], []
    for _ in range(48):
        labels = torch.randint(1, 4, (int(torch.randint(1, 4, (1,), generator=g)),),
                               generator=g)
        frames = []
        for label in labels.tolist():
            frames += [label] * 3 + [0] * int(torch.randint(0, 3, (1,), generator=g))
        x = torch.nn.functional.one_hot(torch.tensor(frames), 4).float() * 3
        xs.append(x + 0.1 * torch.randn(x.shape, generator=g))
        ys.append(labels.tolist())
        lengths.append(len(frames))
    steps = max(lengths)
    x = torch.zeros(48, steps, 4)
    y = torch.full((48, 3), -1)
    for b in range(48):
        x[b, :lengths[b]] = xs[b]
        y[b, :len(ys[b])] = torch.tensor(ys[b])
    lengths = torch.tensor(lengths)
    model = SequenceRecognizer(4, 4, hidden_size=16, num_layers=1, conv_channels=(8,))
    seen = []

    def loss(output, target, mask=None):
        seen.append(mask.sum(1))
        return model.loss(output, target, mask=mask)

    trainer = rnnkit.Trainer(model, loss=loss, lr=2e-2, verbose=False, seed=0)
    before = trainer.evaluate((x, y, lengths), batch_size=16)["loss"]
    trainer.fit((x, y, lengths), epochs=20, batch_size=16)
    seen.clear()
    after = trainer.evaluate((x, y, lengths), batch_size=16)["loss"]
    assert torch.equal(torch.cat(seen), lengths // 2)  # the mask follows output_lengths
    assert after < before / 4
    decoded = model.decode(x, lengths)
    assert sum(d == r for d, r in zip(decoded, ys, strict=True)) >= 44


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(2)
    model = SequenceRecognizer(12, 5, hidden_size=6, cell="gru", blank=4, conv_channels=(3,))
    model.eval()
    rnnkit.save(model, tmp_path / "rec")
    loaded = rnnkit.load(tmp_path / "rec")
    assert type(loaded) is SequenceRecognizer and loaded.blank == 4
    x, lengths = inputs(), torch.tensor([40, 30, 20, 10])
    torch.testing.assert_close(loaded(x, lengths).log_probs, model(x, lengths).log_probs,
                               atol=0, rtol=0)
    assert loaded.decode(x, lengths) == model.decode(x, lengths)


def test_loss_errors_are_clear():
    log_probs = random_log_probs(2, 6, 4)
    with pytest.raises(ValueError, match=r"targets\[1\] has 3 labels with 2 adjacent repeats, "
                                          r"which CTC needs 5 output frames .* row 1 has 4"):
        ctc_loss(log_probs, [[1], [2, 2, 2]], [6, 4])
    with pytest.raises(ValueError, match=r"targets\[0\]\[1\] is the blank \(0\)"):
        ctc_loss(log_probs, torch.tensor([[1, 0], [1, 2]]))
    with pytest.raises(ValueError, match=r"targets\[1\]\[0\] is the blank \(3\)"):
        ctc_loss(log_probs, [[1], [3]], blank=3)
    with pytest.raises(ValueError, match=r"class id 4, outside \[0, 4\)"):
        ctc_loss(log_probs, [[1], [4]])
    with pytest.raises(ValueError, match=r"targets\[0\] has a label at position 2 after padding"):
        ctc_loss(log_probs, torch.tensor([[1, -1, 2], [1, 2, 3]]))
    with pytest.raises(ShapeError, match=r"targets must be \(B, L\) = \(2, L\)"):
        ctc_loss(log_probs, torch.tensor([[1, 2]]))
    with pytest.raises(ShapeError, match="3 target sequences for a batch of 2"):
        ctc_loss(log_probs, [[1], [2], [3]])
    with pytest.raises(TypeError, match="targets must be integer class ids"):
        ctc_loss(log_probs, torch.ones(2, 2))
    with pytest.raises(ShapeError, match=r"log_probs must be \(B, T', C\)"):
        ctc_loss(log_probs[0], [[1]])
    with pytest.raises(ShapeError, match=r"output_lengths must lie in \[1, T'=6\]"):
        ctc_loss(log_probs, [[1], [2]], [7, 3])
    with pytest.raises(ShapeError, match=r"output_lengths must be \(2,\) integers"):
        ctc_loss(log_probs, [[1], [2]], [6])
    with pytest.raises(ShapeError, match=r"target_lengths must lie in \[0, 1\]"):
        ctc_loss(log_probs, torch.tensor([[1], [2]]), None, [1, 2])
    with pytest.raises(ValueError, match=r"blank must be a class id in \[0, 4\)"):
        ctc_loss(log_probs, [[1], [2]], blank=4)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ctc_loss(log_probs, [[1], [2]], reduction="batchmean")


def test_model_errors_are_clear():
    with pytest.raises(ValueError, match=r"blank must be a class id in \[0, num_classes=5\)"):
        SequenceRecognizer(12, 5, blank=5)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SequenceRecognizer(12, 1)
    with pytest.raises(ValueError, match="conv_channels must be a sequence of positive ints"):
        SequenceRecognizer(12, 5, conv_channels=(4, 0))
    with pytest.raises(ValueError, match="needs input_size >= 8"):
        SequenceRecognizer(6, 5, conv_channels=(2, 2, 2))
    model = SequenceRecognizer(12, 5, hidden_size=4, conv_channels=(2, 2))
    with pytest.raises(ShapeError, match="a row of 3 frames is too short for the 2 conv blocks"):
        model(inputs(steps=10), torch.tensor([10, 3, 5, 9]))
    with pytest.raises(ShapeError, match="built with input_size=12"):
        model(inputs(features=11))
    with pytest.raises(ShapeError, match="does not match the"):
        model.loss(random_log_probs(4, 10, 5).float(), [[1]] * 4, mask=torch.ones(4, 9))
    with pytest.raises(ShapeError, match="log_probs have 6 classes, the model 5"):
        model.loss(random_log_probs(4, 10, 6).float(), [[1]] * 4)
    with pytest.raises(ValueError, match="method must be 'greedy' or 'beam'"):
        model.decode(inputs(), method="viterbi")
    with pytest.raises(ValueError, match="apply to method='beam'"):
        model.decode(inputs(), lm_weight=0.5)


def test_doctests():
    assert_doctests_pass("rnnkit.models.recognizer")


def test_summary_lists_the_front_end_encoder_and_head(capsys):
    model = SequenceRecognizer(12, 5, hidden_size=6, num_layers=1, conv_channels=(3,))
    table = model.summary()
    assert table.total_params == sum(p.numel() for p in model.parameters())
    text = str(table)
    for row in ("frontend (_ConvFrontEnd)", "backbone (Backbone)", "head (Linear)",
                "(2, 8, 5)"):
        assert row in text


def test_masked_batch_norm_equals_torch_batch_norm_over_the_valid_frames_only():
    from rnnkit.models.recognizer import MaskedBatchNorm2d
    torch.manual_seed(0)
    ours, oracle = MaskedBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.uniform_(-1.0, 1.0)
    oracle.load_state_dict(ours.state_dict())
    lengths = torch.tensor([7, 4, 2])
    h = torch.randn(3, 3, 5, 7) * 2.0 + 0.5  # (B, C, F, T)
    h[1, :, :, 4:] = 50.0  # padding: must not move the statistics
    h[2, :, :, 2:] = -50.0
    valid = torch.arange(7)[None, :] < lengths[:, None]  # (B, T)
    for _ in range(2):  # twice: the running statistics are updated as torch's
        out = ours(h, valid)
        # torch's batch norm over the valid frames alone, laid side by side along time
        joined = torch.cat([h[b:b + 1, :, :, :n] for b, n in enumerate(lengths.tolist())], dim=3)
        expected = oracle(joined)
        got = torch.cat([out[b:b + 1, :, :, :n] for b, n in enumerate(lengths.tolist())], dim=3)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.running_mean, oracle.running_mean)
        torch.testing.assert_close(ours.running_var, oracle.running_var)
    assert int(ours.num_batches_tracked) == 2
    # without padding: BatchNorm2d itself; in eval mode: the running statistics
    full = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(ours(full, torch.ones(2, 6, dtype=torch.bool)), oracle(full),
                               atol=1e-5, rtol=1e-5)
    ours.eval()
    oracle.eval()
    keep = valid[:, None, None, :]
    torch.testing.assert_close(ours(h, valid), oracle(h) * keep)  # padding out: zeros
    assert (ours.train()(h, valid)[~keep.expand_as(h)] == 0).all()


@pytest.mark.parametrize("affine, channels_last, relu", [
    (True, False, False), (True, True, False), (False, False, False), (True, True, True),
    (True, False, True), (False, True, True)])
def test_masked_batch_norm_gradients_equal_torch_batch_norm_over_the_valid_frames(
        affine, channels_last, relu):
    from rnnkit.models.recognizer import MaskedBatchNorm2d
    torch.manual_seed(1)
    ours, oracle = MaskedBatchNorm2d(3, affine=affine), torch.nn.BatchNorm2d(3, affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 2.0)
            ours.bias.uniform_(-1.0, 1.0)
    oracle.load_state_dict(ours.state_dict())
    lengths = [6, 3, 1]
    h = torch.randn(3, 3, 4, 6) * 1.5 - 0.7  # (B, C, F, T)
    for b, n in enumerate(lengths):
        h[b, :, :, n:] = 30.0
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    valid = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    upstream = torch.randn(3, 3, 4, 6)  # any gradient, padded frames included
    if channels_last:
        upstream = upstream.contiguous(memory_format=torch.channels_last)
    ours_h = h.clone().requires_grad_()
    got = ours(ours_h, valid, relu=relu)
    (got * upstream).sum().backward()
    if channels_last:  # the maps stay channels-last both ways (the conv front end's layout)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert ours_h.grad.is_contiguous(memory_format=torch.channels_last)
    # the oracle: torch's batch norm (and ReLU) over the valid frames alone, side by side
    # along time
    pieces = [h[b:b + 1, :, :, :n].clone().requires_grad_() for b, n in enumerate(lengths)]
    out = oracle(torch.cat(pieces, dim=3))
    out = torch.relu(out) if relu else out
    joined = torch.cat([got[b:b + 1, :, :, :n] for b, n in enumerate(lengths)], 3)
    torch.testing.assert_close(joined, out, atol=1e-5, rtol=1e-5)
    assert (got[~valid[:, None, None, :].expand_as(got)] == 0).all()
    (out * torch.cat([upstream[b:b + 1, :, :, :n] for b, n in enumerate(lengths)], 3)
     ).sum().backward()
    for b, n in enumerate(lengths):
        torch.testing.assert_close(ours_h.grad[b, :, :, :n], pieces[b].grad[0], atol=1e-5,
                                   rtol=1e-5)
        assert (ours_h.grad[b, :, :, n:] == 0).all()  # padding: a constant 0 out
    if affine:
        torch.testing.assert_close(ours.weight.grad, oracle.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.bias.grad, oracle.bias.grad, atol=1e-5, rtol=1e-5)


def test_masked_batch_norm_passes_gradcheck():
    from rnnkit.models.recognizer import _MaskedBatchNormFunction
    torch.manual_seed(2)
    h = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.empty(2, dtype=torch.float64).uniform_(0.5, 2.0).requires_grad_()
    bias = torch.empty(2, dtype=torch.float64).uniform_(-1.0, 1.0).requires_grad_()
    keep = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]],
                        dtype=torch.float64)[:, None, None, :]  # (B, 1, 1, T)
    torch.autograd.gradcheck(
        lambda x, w, b: _MaskedBatchNormFunction.apply(x, keep, w, b, 1e-5)[0],
        (h, weight, bias))
    # with the ReLU, and with the channels-last mask (B, C, 1, T) the front end passes
    keep_c = keep.expand(-1, 2, -1, -1).contiguous(memory_format=torch.channels_last)
    for mask in (keep, keep_c):
        torch.autograd.gradcheck(
            lambda x, w, b, mask=mask: _MaskedBatchNormFunction.apply(x, mask, w, b, 1e-5,
                                                                      True)[0],
            (h, weight, bias))


def test_frame_mask_matches_the_maps_layout_and_zeroes_the_same_frames():
    from rnnkit.models.recognizer import _frame_mask
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    plain = torch.randn(2, 3, 5, 4)
    last = plain.contiguous(memory_format=torch.channels_last)
    assert _frame_mask(valid, plain).shape == (2, 1, 1, 4)
    mask = _frame_mask(valid, last)
    assert mask.shape == (2, 3, 1, 4) and mask.is_contiguous(memory_format=torch.channels_last)
    expected = plain * valid[:, None, None, :]  # plain torch broadcasting as the oracle
    torch.testing.assert_close(plain * _frame_mask(valid, plain), expected, rtol=0, atol=0)
    torch.testing.assert_close(last * mask, expected, rtol=0, atol=0)


def test_front_end_options_count_their_layers_and_check_their_arguments():
    plain = SequenceRecognizer(12, 5, hidden_size=4, num_layers=1, conv_channels=(3, 5))
    deep = SequenceRecognizer(12, 5, hidden_size=4, num_layers=1, conv_channels=(3, 5),
                              conv_depth=2, conv_batch_norm=True)
    assert len(plain.frontend.convs) == 2 and plain.frontend.norms is None
    assert [tuple(c.weight.shape) for c in deep.frontend.convs] == [
        (3, 1, 3, 3), (3, 3, 3, 3), (5, 3, 3, 3), (5, 5, 3, 3)]
    assert all(c.bias is None for c in deep.frontend.convs) and len(deep.frontend.norms) == 4
    out = deep(torch.randn(2, 16, 12), torch.tensor([16, 9]))
    assert out.lengths.tolist() == [4, 2] and out.log_probs.shape == (2, 4, 5)
    with pytest.raises(ValueError, match="conv_depth must be an int >= 1"):
        SequenceRecognizer(12, 5, conv_channels=(3,), conv_depth=0)
    with pytest.raises(TypeError, match="conv_batch_norm must be True or False"):
        SequenceRecognizer(12, 5, conv_channels=(3,), conv_batch_norm=1)
