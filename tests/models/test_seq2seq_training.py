"""rnnkit.Trainer fits a Seq2Seq: reversal of length-5 sequences over a 6-symbol alphabet is
learned to a high exact match in about a hundred updates (with attention)."""

import torch

import rnnkit
from rnnkit.models import Seq2Seq

PAD, BOS, EOS = 0, 1, 2


def _reversal(n, seed):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(3, 9, (n, 5), generator=g)  # symbols 3..8
    target = source.flip(1)
    target_in = torch.cat([torch.full((n, 1), BOS), target], 1)  # (n, 6)
    target_out = torch.cat([target, torch.full((n, 1), EOS)], 1)  # (n, 6)
    return source, target_in, target_out


def _greedy(model, source, steps):
    """Arg-max decoding through decoder_step (the oracle is the gold reversal)."""
    with torch.no_grad():
        encoded = model.encode(source)
        state = model.initial_decoder_state(encoded)
        tokens, out = torch.full((source.shape[0],), BOS), []
        for _ in range(steps):
            log_probs, state, _ = model.decoder_step(tokens, state, encoded)
            tokens = log_probs.argmax(-1)
            out.append(tokens)
    return torch.stack(out, 1)


def test_trainer_learns_reversal_with_attention():
    torch.manual_seed(0)
    source, target_in, target_out = _reversal(1000, seed=0)
    model = Seq2Seq(9, 9, embedding_dim=16, hidden_size=32, cell="gru", attention="bahdanau")
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", lr=1e-2, verbose=False,
                             seed=0, label_smoothing=0.0)
    lengths = torch.full((1000,), 5)
    history = trainer.fit(((source, target_in), target_out, lengths), epochs=3, batch_size=32)
    assert history.history["loss"][-1] < 0.3
    model.eval()
    test_source, _, test_out = _reversal(200, seed=1)
    exact = (_greedy(model, test_source, 6) == test_out).all(1).float().mean()
    assert exact >= 0.95


def test_trainer_loss_equals_the_models_own_masked_loss_with_label_smoothing():
    torch.manual_seed(1)
    source = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    target_in = torch.tensor([[1, 6, 5, 4], [1, 8, 7, 0]])  # as long as the source
    target_out = torch.tensor([[6, 5, 4, 2], [8, 7, 2, -100]])
    model = Seq2Seq(9, 9, embedding_dim=4, hidden_size=6, label_smoothing=0.1).eval()
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", label_smoothing=0.1,
                             verbose=False)
    result = trainer.evaluate(((source, target_in), target_out, lengths), batch_size=2)
    with torch.no_grad():
        expected = model.loss(model(source, target_in, lengths=lengths), target_out)
    assert abs(result["loss"] - float(expected)) < 1e-6


def test_bf16_autocast_training_runs_the_decoder_steps_in_float32():
    torch.manual_seed(2)
    source, target_in, target_out = _reversal(8, seed=2)
    model = Seq2Seq(9, 9, embedding_dim=4, hidden_size=6, attention="luong_general")
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", precision="bf16",
                             verbose=False)
    history = trainer.fit(((source, target_in), target_out, torch.full((8,), 5)), epochs=1,
                          batch_size=8)
    assert torch.isfinite(torch.tensor(history.history["loss"])).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(source, target_in)
    with torch.no_grad():
        plain = model(source, target_in)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, plain, rtol=0.05, atol=0.05)
