"""ImageToSequence: a padded batch of images of different widths equals each image alone
(losses, decodings, attention), the CNN grid and one decoder step against hand-written torch,
beam width 1 == greedy, training through rnnkit.Trainer, save/load, clear errors."""

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.models import ImageToSequence

V = 14  # <pad> <bos> <eos> <unk> + ten digit words
WIDTHS = [37, 20, 29]  # odd widths: the pools drop a partial window


def _model(**kwargs):
    options = dict(image_height=12, channels=(3, 5), pools=(2, 2), row_size=6,
                   embedding_dim=5, hidden_size=6)
    options.update(kwargs)
    return ImageToSequence(V, **options)


def _images(seed=0, widths=WIDTHS, height=12):
    g = torch.Generator().manual_seed(seed)
    alone = [torch.rand(height, w, generator=g) for w in widths]
    padded = torch.full((len(widths), height, max(widths)), 0.7)  # padding that is not zero
    for i, image in enumerate(alone):
        padded[i, :, :image.shape[1]] = image
    return alone, padded, torch.tensor(widths)


def _captions():
    target_in = torch.tensor([[1, 7, 5, 9], [1, 12, 0, 0], [1, 4, 4, 0]])
    target_out = torch.tensor([[7, 5, 9, 2], [12, 2, -100, -100], [4, 4, 2, -100]])
    return target_in, target_out, [4, 2, 3]


@pytest.mark.parametrize("row_encoder", ["lstm", "gru", None])
@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_a_padded_batch_gives_the_losses_of_each_image_alone(row_encoder, attention):
    torch.manual_seed(0)
    model = _model(row_encoder=row_encoder, attention=attention).eval()
    alone, padded, widths = _images()
    target_in, target_out, steps = _captions()
    logits = model(padded, target_in, widths)
    assert logits.shape == (3, 4, V)
    per_token = F.cross_entropy(logits.transpose(1, 2), target_out, reduction="none")
    for i, image in enumerate(alone):
        t = steps[i]
        own = model(image.unsqueeze(0), target_in[i:i + 1, :t])
        torch.testing.assert_close(logits[i, :t], own[0], rtol=1e-5, atol=1e-6)
        own_loss = F.cross_entropy(own[0], target_out[i, :t], reduction="none")
        torch.testing.assert_close(per_token[i, :t], own_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.loss(logits[i:i + 1], target_out[i:i + 1]),
                                   model.loss(own, target_out[i:i + 1, :t]))


@pytest.mark.parametrize("method,options", [("greedy", {}),
                                            ("beam", {"beam_width": 3, "n_best": 2})])
def test_a_padded_batch_gives_the_decodings_of_each_image_alone(method, options):
    torch.manual_seed(1)
    model = _model(cell="gru").eval()  # encode() in training would move the running stats
    alone, padded, widths = _images(seed=1)
    batch = model.decode(padded, widths, method=method, max_length=6, **options)
    encoded = model.encode(padded, widths)
    grid = model.attention_grid(batch.attention, encoded)  # (B, n, L, H', W')
    for i, image in enumerate(alone):
        own = model.decode(image.unsqueeze(0), method=method, max_length=6, **options)
        assert torch.equal(batch.tokens[i], own.tokens[0])
        assert torch.equal(batch.lengths[i], own.lengths[0])
        torch.testing.assert_close(batch.scores[i], own.scores[0])
        own_grid = model.attention_grid(own.attention, model.encode(image.unsqueeze(0)))[0]
        columns = own_grid.shape[-1]  # this image's grid width
        torch.testing.assert_close(grid[i, ..., :columns], own_grid)
        assert torch.all(grid[i, ..., columns:] == 0)  # padding is never attended


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_memory_is_the_cnn_grid_read_column_by_column(batch_norm):
    """Oracle: the convolutions written with torch.nn.functional on each image alone (batch
    norm in evaluation: the running statistics, drawn away from their init)."""
    torch.manual_seed(2)
    model = _model(row_encoder=None, pools=((2, 2), (3, 1)), batch_norm=batch_norm).eval()
    for norm in model.encoder.norms:
        with torch.no_grad():
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    alone, padded, widths = _images(seed=2)
    encoded = model.encode(padded, widths)
    conv1, conv2 = model.encoder.convolutions
    assert (encoded.grid_height, encoded.grid_width) == (12 // 2 // 3, max(WIDTHS) // 2)
    assert encoded.lengths.tolist() == [w // 2 for w in WIDTHS]

    def block(x, conv, index):
        x = F.conv2d(x, conv.weight, conv.bias, padding=1)
        if batch_norm:
            norm = model.encoder.norms[index]
            x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                             training=False, eps=norm.eps)
        return F.relu(x)

    for i, image in enumerate(alone):
        x = image.view(1, 1, 12, -1)
        x = F.max_pool2d(block(x, conv1, 0), 2)
        x = F.max_pool2d(block(x, conv2, 1), (3, 1))
        grid = x[0]  # (C', H', W')
        assert grid.shape == (5, 2, WIDTHS[i] // 2)
        # position s is (row s % H', column s // H')
        expected = grid.permute(2, 1, 0).reshape(-1, 5)  # (W' * H', C')
        size = expected.shape[0]
        torch.testing.assert_close(encoded.memory[i, :size], expected)
        assert torch.all(encoded.memory[i, size:] == 0)
        assert encoded.memory_mask[i].tolist() == [True] * size + \
            [False] * (encoded.memory.shape[1] - size)
        torch.testing.assert_close(encoded.summary[i], expected.mean(0))


def test_masked_batch_norm_with_every_column_inside_is_torchs_batch_norm():
    from rnnkit.models.image_to_sequence import MaskedBatchNorm2d

    torch.manual_seed(10)
    ours, reference = MaskedBatchNorm2d(4), torch.nn.BatchNorm2d(4)
    for _ in range(2):  # outputs, gradients and running statistics over two updates
        x = torch.randn(3, 4, 5, 7, requires_grad=True)
        out = ours(x, torch.ones(3, 1, 1, 7))
        expected = reference(x)
        torch.testing.assert_close(out, expected)
        weights = torch.randn_like(out)
        grad, = torch.autograd.grad((out * weights).sum(), x)
        expected_grad, = torch.autograd.grad((expected * weights).sum(), x)
        torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval()
    reference.eval()
    x = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(ours(x, torch.ones(2, 1, 1, 3)), reference(x))


def test_masked_batch_norm_counts_only_the_columns_inside_the_images():
    """Oracle: torch's BatchNorm2d on the images' inside columns laid side by side."""
    from rnnkit.models.image_to_sequence import MaskedBatchNorm2d, column_mask

    torch.manual_seed(11)
    ours, reference = MaskedBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    widths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 3, 5, 6) + 3.0 * (1 - column_mask(widths, 6))  # padding far off
    out = ours(x, column_mask(widths, 6))
    inside = torch.cat([x[i, :, :, :w] for i, w in enumerate(widths.tolist())], dim=-1)
    expected = reference(inside.unsqueeze(0))[0]  # (C, H, sum of widths)
    got = torch.cat([out[i, :, :, :w] for i, w in enumerate(widths.tolist())], dim=-1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)


def test_training_batch_statistics_ignore_the_padding():
    """In training the batch norm's statistics are those of the images' inside columns, so
    what fills the padding changes nothing."""
    torch.manual_seed(12)
    model = _model().train()
    _, padded, widths = _images(seed=12)
    target_in, _, _ = _captions()
    other = padded.clone()
    for i, w in enumerate(widths.tolist()):
        other[i, :, w:] = torch.rand(12, padded.shape[-1] - w) * 5
    torch.manual_seed(0)
    first = model(padded, target_in, widths)
    torch.manual_seed(0)
    second = model(other, target_in, widths)
    torch.testing.assert_close(first, second)


def test_the_row_encoder_is_a_bidirectional_lstm_along_each_grid_row():
    torch.manual_seed(3)
    model = _model(row_encoder="lstm", row_size=8).eval()
    alone, padded, widths = _images(seed=3)
    reference = torch.nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    reference.load_state_dict(model.encoder.row_encoder.drop_in.state_dict())
    plain = _model(row_encoder=None).eval()
    plain.encoder.convolutions.load_state_dict(model.encoder.convolutions.state_dict())
    plain.encoder.norms.load_state_dict(model.encoder.norms.state_dict())
    encoded = model.encode(padded, widths)
    for i, image in enumerate(alone):
        grid = plain.encode(image.unsqueeze(0)).memory[0]  # (W' * H', C'), column by column
        rows = grid.view(-1, 3, 5).transpose(0, 1)  # (H', W', C')
        out, _ = reference(rows)  # (H', W', 8)
        expected = out.transpose(0, 1).reshape(-1, 8)
        torch.testing.assert_close(encoded.memory[i, :expected.shape[0]], expected)


def test_one_decoder_step_equals_the_equations_written_in_torch():
    """Show, Attend and Tell with Luong's input feeding: LSTM on [E y; alpha_{t-1}], additive
    attention, alpha_t = tanh(W_c [h; c]), logits = W_o alpha_t + b_o; s_0 from the mean."""
    torch.manual_seed(4)
    model = _model()
    _, padded, widths = _images(seed=4)
    encoded = model.encode(padded, widths)
    decoder = model.decoder
    cell = torch.nn.LSTMCell(5 + 6, 6)
    cell.load_state_dict(decoder.cell.cell.state_dict())
    mechanism = decoder.cell.mechanism
    memory, mask = encoded.memory, encoded.memory_mask  # (B, S, M), (B, S)

    h0, c0 = torch.tanh(decoder.bridge(memory.sum(1) / mask.sum(1, keepdim=True))).split(6, -1)
    tokens = torch.tensor([1, 1, 1])
    x = torch.cat([decoder.embedding(tokens), torch.zeros(3, 6)], -1)  # no attention yet
    h, c = cell(x, (h0, c0))
    scores = (mechanism.v * torch.tanh(mechanism.memory_layer(memory)
                                       + mechanism.query_layer(h).unsqueeze(1))).sum(-1)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, S)
    context = (weights.unsqueeze(-1) * memory).sum(1)  # (B, M)
    alpha = torch.tanh(decoder.cell.attention_layer(torch.cat([h, context], -1)))
    expected = (alpha @ decoder.output.weight.T + decoder.output.bias).log_softmax(-1)

    state = model.initial_decoder_state(encoded)
    log_probs, state, attention = model.decoder_step(tokens, state, encoded)
    torch.testing.assert_close(log_probs, expected)
    torch.testing.assert_close(attention, weights)
    torch.testing.assert_close(state[0][0], h)
    torch.testing.assert_close(state[0][1], c)


def test_teacher_forcing_equals_stepping_the_decoder():
    torch.manual_seed(5)
    model = _model().eval()
    _, padded, widths = _images(seed=5)
    target_in, _, _ = _captions()
    logits = model(padded, target_in, widths)
    encoded = model.encode(padded, widths)
    state = model.initial_decoder_state(encoded)
    for t in range(target_in.shape[1]):
        log_probs, state, _ = model.decoder_step(target_in[:, t], state, encoded)
        torch.testing.assert_close(log_probs, logits[:, t].log_softmax(-1))


def test_beam_width_one_is_greedy_decoding():
    torch.manual_seed(6)
    model = _model().eval()
    _, padded, widths = _images(seed=6)
    greedy = model.decode(padded, widths, max_length=7)
    beam = model.decode(padded, widths, method="beam", beam_width=1, max_length=7)
    assert torch.equal(greedy.tokens, beam.tokens)
    assert torch.equal(greedy.lengths, beam.lengths)
    torch.testing.assert_close(greedy.scores, beam.scores.to(greedy.scores.dtype))
    torch.testing.assert_close(greedy.attention, beam.attention)
    grid = model.attention_grid(greedy.attention, model.encode(padded, widths))
    assert grid.shape == (3, 1, 7, 3, max(WIDTHS) // 4)
    live = torch.arange(7).view(1, 1, 7) < greedy.lengths.unsqueeze(-1)  # (B, 1, L)
    torch.testing.assert_close(grid.sum((-1, -2))[live], torch.ones(int(live.sum())))


def test_trains_through_the_trainer_and_saves_and_loads(tmp_path):
    torch.manual_seed(7)
    # two "classes" of images: a bright left half is captioned 4 5, a bright right half 6
    g = torch.Generator().manual_seed(7)
    images = torch.rand(64, 12, 24, generator=g) * 0.1
    right = torch.arange(64) % 2 == 1
    images[~right, :, :12] += 0.8
    images[right, :, 12:] += 0.8
    widths = torch.randint(16, 25, (64,), generator=g)
    for i, w in enumerate(widths.tolist()):
        images[i, :, w:] = 0
    target_in = torch.where(right.unsqueeze(1), torch.tensor([1, 6, 0]), torch.tensor([1, 4, 5]))
    target_out = torch.where(right.unsqueeze(1), torch.tensor([6, 2, -100]),
                             torch.tensor([4, 5, 2]))
    model = _model(dropout=0.1)
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", lr=2e-2, verbose=False)
    history = trainer.fit(((images, target_in, widths), target_out), epochs=6, batch_size=16)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        trainer_loss = trainer.evaluate(((images, target_in, widths), target_out))["loss"]
        torch.testing.assert_close(torch.tensor(trainer_loss),
                                   model.loss(model(images, target_in, widths), target_out),
                                   rtol=1e-5, atol=1e-6)
    rnnkit.save(model, tmp_path / "captioner")
    loaded = rnnkit.load(tmp_path / "captioner").eval()
    assert isinstance(loaded, ImageToSequence) and loaded.get_config() == model.get_config()
    torch.testing.assert_close(loaded(images, target_in, widths),
                               model(images, target_in, widths), rtol=0, atol=0)
    assert torch.equal(loaded.decode(images[:8], widths[:8], method="beam", beam_width=2).tokens,
                       model.decode(images[:8], widths[:8], method="beam", beam_width=2).tokens)


def test_grey_images_may_come_with_a_channel_axis_and_colour_images_need_one():
    torch.manual_seed(8)
    grey = _model().eval()
    _, padded, widths = _images(seed=8)
    target_in, _, _ = _captions()
    torch.testing.assert_close(grey(padded.unsqueeze(1), target_in, widths),
                               grey(padded, target_in, widths))
    colour = _model(in_channels=3).eval()
    logits = colour(padded.unsqueeze(1).expand(-1, 3, -1, -1), target_in, widths)
    assert logits.shape == (3, 4, V)


def test_scheduled_sampling_feeds_the_models_own_argmax():
    torch.manual_seed(9)
    model = _model(teacher_forcing_ratio=0.0).train()
    _, padded, widths = _images(seed=9)
    target_in, _, _ = _captions()
    sampled = model(padded, target_in, widths)
    # still training: the same batch gives the same batch-norm statistics
    state = model.initial_decoder_state(model.encode(padded, widths))
    tokens, expected = target_in[:, 0], []
    for _ in range(target_in.shape[1]):
        log_probs, state, _ = model.decoder_step(tokens, state)
        expected.append(log_probs)
        tokens = log_probs.argmax(-1)
    torch.testing.assert_close(sampled.log_softmax(-1), torch.stack(expected, 1))


@pytest.mark.parametrize("images,widths,error,message", [
    (torch.rand(2, 16, 30), None, ShapeError, "16 pixels high .* image_height=12"),
    (torch.rand(2, 2, 12, 30), None, ShapeError, "2 channel.* in_channels=1"),
    (torch.rand(12, 30), None, ShapeError, "add a batch axis"),
    (torch.randint(0, 255, (2, 12, 30), dtype=torch.uint8), None, DTypeError, "/ 255"),
    (torch.rand(2, 12, 3), None, ShapeError, "3 pixels wide .* >= 4"),
    (torch.rand(2, 12, 30), torch.tensor([30, 31]), ValueError, r"\[4, W=30\].*\[1\].*\[31\]"),
    (torch.rand(2, 12, 30), torch.tensor([30, 2]), ValueError, r"widths must lie in"),
    (torch.rand(2, 12, 30), torch.tensor([30.0, 20.0]), ShapeError, "integers"),
    (torch.rand(2, 12, 30), torch.tensor([30]), ShapeError, r"\(B,\) = \(2,\)"),
    (torch.full((2, 12, 30), float("nan")), None, ValueError, "NaN"),
    ("not an image", None, TypeError, "torch.Tensor"),
])
def test_bad_images_get_a_clear_error(images, widths, error, message):
    model = _model()
    target_in = torch.tensor([[1, 4], [1, 5]])
    with pytest.raises(error, match=message):
        model(images, target_in, widths)
    with pytest.raises(error, match=message):
        model.decode(images, widths)


def test_bad_captions_and_decoding_arguments_get_a_clear_error():
    model = _model()
    images = torch.rand(2, 12, 30)
    with pytest.raises(ValueError, match=r"id 14 at \(batch 1, step 1\)"):
        model(images, torch.tensor([[1, 4], [1, 14]]))
    with pytest.raises(ShapeError, match="2 images but target_in holds 3"):
        model(images, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beam_width do not apply to method='greedy'"):
        model.decode(images, beam_width=2)
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        model.decode(images, max_length=0)
    with pytest.raises(ShapeError, match="attention over 5 positions"):
        model.attention_grid(torch.rand(2, 5), model.encode(images))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(attention=None), ValueError, "attention must be one of"),
    (dict(pools=(2,)), ValueError, "one pool size per convolution block"),
    (dict(pools=(2, 0)), ValueError, "int >= 1 or a \\(height, width\\) pair"),
    (dict(pools=(4, 4)), ValueError, "shrink the height by 16"),
    (dict(row_size=7), ValueError, "row_size must be even"),
    (dict(channels=()), ValueError, "channels must list"),
    (dict(eos_id=1), ValueError, "must differ"),
    (dict(bos_id=14), ValueError, "outside the vocabulary"),
    (dict(image_height=0), ValueError, "image_height must be a positive int"),
    (dict(dropout=1.0), ValueError, "dropout must be a number in"),
])
def test_bad_configurations_get_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        _model(**kwargs)


def test_summary_lists_the_encoder_and_decoder_with_the_parameter_count():
    torch.manual_seed(13)
    model = _model()
    lines = []
    table = model.summary(print_fn=lines.append)
    assert table.total_params == sum(p.numel() for p in model.parameters())
    text = "\n".join(lines)
    assert "ImageToSequence" in text and "Conv2d" in text and "Decoder" in text
