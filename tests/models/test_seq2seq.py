"""Seq2Seq: padding never changes a sequence's logits, teacher forcing equals stepping the
decoder, scheduled sampling, gradients (finite differences), tiny shapes, errors, configs."""

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.cells import IndRNNCell
from rnnkit.models import Seq2Seq
from rnnkit.models.seq2seq import ATTENTIONS

ATTENTION_CHOICES = [*ATTENTIONS, None]


def _model(attention="bahdanau", **kwargs):
    options = dict(embedding_dim=6, hidden_size=8, attention=attention)
    options.update(kwargs)
    return Seq2Seq(11, 9, **options)


def _batch():
    source = torch.tensor([[4, 5, 6, 7, 8], [9, 10, 3, 0, 0], [5, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])
    target_in = torch.tensor([[1, 3, 4, 5], [1, 6, 0, 0], [1, 7, 8, 0]])
    target_lengths = [4, 2, 3]
    return source, lengths, target_in, target_lengths


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn"])
def test_a_padded_batch_equals_each_sequence_run_alone(attention, cell):
    torch.manual_seed(0)
    model = _model(attention, cell=cell, encoder_layers=2, decoder_layers=2).eval()
    source, lengths, target_in, target_lengths = _batch()
    logits = model(source, target_in, lengths=lengths)
    assert logits.shape == (3, 4, 9)
    for i in range(3):
        s, t = int(lengths[i]), target_lengths[i]
        alone = model(source[i:i + 1, :s], target_in[i:i + 1, :t])
        torch.testing.assert_close(logits[i, :t], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
def test_teacher_forced_forward_equals_stepping_decoder_step(attention):
    torch.manual_seed(1)
    model = _model(attention, input_feeding=attention != "luong_general").eval()
    source, lengths, target_in, _ = _batch()
    logits = model(source, target_in, lengths=lengths)
    encoded = model.encode(source, lengths)
    state = model.initial_decoder_state(encoded)
    for t in range(target_in.shape[1]):
        log_probs, state, weights = model.decoder_step(target_in[:, t], state, encoded)
        torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], -1))
        if attention is None:
            assert weights is None
        else:
            assert weights.shape == (3, 5)
            torch.testing.assert_close(weights.sum(-1), torch.ones(3))
            assert torch.all(weights[~encoded.memory_mask] == 0)


def test_decoder_step_follows_a_state_reordered_on_dim_0():
    """What beam search does: repeat and reorder every state tensor with index_select."""
    torch.manual_seed(2)
    model = _model("luong_concat").eval()
    source, lengths, _, _ = _batch()
    encoded = model.encode(source, lengths)
    state = model.initial_decoder_state(encoded)
    order = torch.tensor([2, 2, 0, 1, 0])

    def select(tree):
        if isinstance(tree, tuple):
            return tuple(select(part) for part in tree)
        return tree.index_select(0, order)

    tokens = torch.tensor([1, 1, 1])
    full, _, _ = model.decoder_step(tokens, state, encoded)
    picked, _, _ = model.decoder_step(tokens[order], select(state), encoded)
    torch.testing.assert_close(picked, full[order])


def test_scheduled_sampling_feeds_the_models_own_argmax():
    torch.manual_seed(3)
    model = _model("bahdanau", teacher_forcing_ratio=0.0)
    source, lengths, target_in, _ = _batch()
    model.train()
    sampled = model(source, target_in, lengths=lengths)
    # oracle: a greedy loop through decoder_step, starting from the gold first token
    state = model.initial_decoder_state(model.encode(source, lengths))
    tokens, expected = target_in[:, 0], []
    for _ in range(target_in.shape[1]):
        log_probs, state, _ = model.decoder_step(tokens, state)
        expected.append(log_probs)
        tokens = log_probs.argmax(-1)
    torch.testing.assert_close(F.log_softmax(sampled, -1), torch.stack(expected, 1))
    # evaluation always feeds the gold tokens
    model.eval()
    teacher = Seq2Seq.from_config({**model.get_config(), "teacher_forcing_ratio": 1.0})
    teacher.load_state_dict(model.state_dict())
    teacher.eval()
    torch.testing.assert_close(model(source, target_in, lengths=lengths),
                               teacher(source, target_in, lengths=lengths))


def test_scheduled_sampling_mixes_gold_and_own_tokens_at_the_given_rate():
    torch.manual_seed(4)
    model = _model("luong", teacher_forcing_ratio=0.5).train()
    with torch.no_grad():  # the model's own arg-max is always token 0
        model.decoder.output.weight.zero_()
        model.decoder.output.bias.copy_(torch.arange(9, 0, -1).float())
    fed = []
    original = model.decoder.forward

    def spy(tokens, state):
        fed.append(tokens.clone())
        return original(tokens, state)

    model.decoder.forward = spy
    source = torch.randint(3, 11, (400, 3))
    target_in = torch.full((400, 3), 8)  # gold token 8 everywhere
    with torch.no_grad():
        model(source, target_in)
    later = torch.stack(fed[1:])  # steps 1 and 2: (2, 400)
    assert set(later.unique().tolist()) == {0, 8}
    gold_share = float((later == 8).float().mean())
    assert 0.45 < gold_share < 0.55  # 800 Bernoulli(0.5) draws: 2.8 standard deviations


def test_gradcheck_float64_on_a_tiny_model():
    torch.manual_seed(5)
    model = Seq2Seq(5, 5, embedding_dim=2, hidden_size=2, cell="gru",
                    attention="bahdanau").double()
    source = torch.tensor([[3, 4, 0], [4, 3, 3]])
    lengths = torch.tensor([2, 3])
    target_in = torch.tensor([[1, 3], [1, 4]])
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_(True)

    def run(vector):  # every parameter in one vector: a handful of forwards in fast mode
        values = vector.split([s.numel() for s in shapes])
        params = {n: v.view(s) for n, v, s in zip(names, values, shapes, strict=True)}
        logits = torch.func.functional_call(model, params, (source, target_in),
                                            {"lengths": lengths})
        return logits.log_softmax(-1)

    assert torch.autograd.gradcheck(run, (flat,), fast_mode=True)


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
def test_tiny_shapes_hidden_one_batch_one_source_length_one(attention):
    torch.manual_seed(6)
    model = Seq2Seq(4, 4, embedding_dim=1, hidden_size=1, bidirectional_encoder=False,
                    attention=attention)
    logits = model(torch.tensor([[3]]), torch.tensor([[1]]), lengths=torch.tensor([1]))
    assert logits.shape == (1, 1, 4) and torch.isfinite(logits).all()


def test_loss_ignores_padding_and_smooths_labels():
    torch.manual_seed(7)
    model = _model(label_smoothing=0.1)
    logits = torch.randn(2, 3, 9)
    target = torch.tensor([[3, 4, 2], [5, 2, -100]])
    keep = target != -100
    expected = F.cross_entropy(logits[keep], target[keep], label_smoothing=0.1)
    torch.testing.assert_close(model.loss(logits, target), expected)


def test_a_cell_instance_sets_the_encoder_and_the_decoders_cells():
    torch.manual_seed(8)
    cell = IndRNNCell(6, 5)
    model = Seq2Seq(11, 9, embedding_dim=6, cell=cell, attention="luong_general",
                    decoder_layers=2)
    assert any(module is cell for module in model.encoder.modules())
    decoder_cells = [m for m in model.decoder.modules() if isinstance(m, IndRNNCell)]
    assert [(c.input_size, c.hidden_size) for c in decoder_cells] == [(6 + 5, 5), (5, 5)]
    assert model.encoder.memory_size == 10  # the instance's 5 units, both directions
    source, lengths, target_in, _ = _batch()
    assert model(source, target_in, lengths=lengths).shape == (3, 4, 9)
    twin = rnnkit.config.deserialize(rnnkit.config.serialize(model))
    twin.load_state_dict(model.state_dict())
    model.eval()
    twin.eval()
    torch.testing.assert_close(twin(source, target_in, lengths=lengths),
                               model(source, target_in, lengths=lengths), rtol=0, atol=0)


def test_save_and_load_rebuild_the_model(tmp_path):
    torch.manual_seed(9)
    model = _model("luong_concat", dropout=0.1, teacher_forcing_ratio=0.8).eval()
    rnnkit.save(model, tmp_path / "s2s")
    loaded = rnnkit.load(tmp_path / "s2s").eval()
    assert isinstance(loaded, Seq2Seq) and loaded.teacher_forcing_ratio == 0.8
    source, lengths, target_in, _ = _batch()
    torch.testing.assert_close(loaded(source, target_in, lengths=lengths),
                               model(source, target_in, lengths=lengths), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(source_vocab_size=0), "source_vocab_size must be a positive int"),
    (dict(target_vocab_size=2), r"eos_id=2 is outside the target vocabulary \[0, 2\)"),
    (dict(eos_id=9), r"eos_id=9 is outside the target vocabulary \[0, 9\)"),
    (dict(bos_id=-1), "bos_id=-1 is outside"),
    (dict(bos_id=2, eos_id=2), "must differ"),
    (dict(pad_id=1), "must differ"),
    (dict(pad_id=10), "outside the target vocabulary"),
    (dict(attention="cosine"), "attention must be one of"),
    (dict(teacher_forcing_ratio=1.5), r"teacher_forcing_ratio must be a number in \[0, 1\]"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(hidden_size=7), "hidden_size must be even"),
    (dict(cell="lstn"), "did you mean 'lstm'"),
])
def test_bad_constructor_arguments_get_one_line_errors(kwargs, message):
    options = dict(source_vocab_size=11, target_vocab_size=9, hidden_size=8)
    options.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message) as info:
        Seq2Seq(options.pop("source_vocab_size"), options.pop("target_vocab_size"), **options)
    assert "\n" not in str(info.value)


def test_bad_inputs_name_the_offending_ids_and_positions():
    model = _model()
    source, lengths, target_in, _ = _batch()
    bad = source.clone()
    bad[1, 2] = 11
    bad[2, 0] = -3
    with pytest.raises(ValueError, match=r"id 11 at \(batch 1, step 2\), id -3 at \(batch 2, "
                                         r"step 0\)"):
        model(bad, target_in, lengths=lengths)
    wrong = target_in.clone()
    wrong[0, 3] = 9
    with pytest.raises(ValueError, match=r"target_in holds ids outside the vocabulary \[0, 9\)"
                                         r": id 9 at \(batch 0, step 3\)"):
        model(source, wrong, lengths=lengths)
    with pytest.raises(ValueError, match="lengths"):
        model(source, target_in, lengths=torch.tensor([6, 1, 1]))
    with pytest.raises(rnnkit.errors.ShapeError, match="add a batch axis"):
        model(source[0], target_in, lengths=lengths)
    with pytest.raises(rnnkit.errors.DTypeError, match="integer token ids"):
        model(source.float(), target_in, lengths=lengths)
    with pytest.raises(rnnkit.errors.ShapeError, match="holds 3 sequences but target_in holds 2"):
        model(source, target_in[:2], lengths=lengths)
