"""Truncated BPTT: the trainer against hand-written loops that detach the state at the same
cuts (PyTorch word_language_model's repackage_hidden), and gradients that never cross a cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
from rnnkit.data import (
    CTFDeserializer,
    MinibatchSource,
    StatefulBatches,
    StreamDef,
    StreamDefs,
    write_ctf,
)
from rnnkit.training import Trainer
from rnnkit.training.batches import Batch
from rnnkit.training.tbptt import StateCarrier, split_time
from tests.helpers import assert_doctests_pass


class Stepper(nn.Module):
    """Per-step regression with an explicit state: ``(B, T, F) -> (B, T, 1), h``."""

    def __init__(self, inputs=2, hidden=5):
        super().__init__()
        self.rnn = rnnkit.GRU(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, lengths=None, state=None):
        y, h = self.rnn(x, state, lengths=lengths)  # (B, T, H), (1, B, H)
        return self.head(y), h


def _data(n=6, steps=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 2, generator=g)
    return x, x.cumsum(1)[..., :1] * 0.3  # a target that needs memory


def _twins(seed=0):
    torch.manual_seed(seed)
    a = Stepper()
    b = Stepper()
    b.load_state_dict(a.state_dict())
    return a, b


def _assert_same(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def _manual(model, x, y, k, batch_size, lr=0.05):
    """SGD with TBPTT(k, k) by hand: each batch starts from zeros, the state is detached
    between chunks."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        h = None
        for t in range(0, xb.shape[1], k):
            out, h = model(xb[:, t:t + k], state=h)
            opt.zero_grad()
            F.mse_loss(out, yb[:, t:t + k]).backward()
            opt.step()
            h = h.detach()


@pytest.mark.parametrize("k", [9, 4, 1])
def test_trainer_tbptt_equals_the_hand_written_loop(k):
    x, y = _data()
    model, twin = _twins()
    trainer = Trainer(model, optimizer="sgd", lr=0.05, tbptt=k, verbose=False)
    trainer.fit((x, y), epochs=1, batch_size=4, shuffle=False)
    _manual(twin, x, y, k, 4)
    _assert_same(model, twin)
    assert trainer.global_step == 2 * -(-9 // k)


def test_k_equal_to_t_is_full_bptt():
    x, y = _data()
    model, twin = _twins(1)
    Trainer(model, optimizer="sgd", lr=0.05, tbptt=9, verbose=False).fit(
        (x, y), epochs=1, batch_size=6, shuffle=False)
    # full BPTT on a model that ignores the state machinery
    opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    opt.zero_grad()
    F.mse_loss(twin(x)[0], y).backward()
    opt.step()
    _assert_same(model, twin)


def test_no_gradient_crosses_a_cut():
    x, y = _data(n=3, steps=8)
    model = Stepper()
    x = x.clone().requires_grad_()
    batch = Batch((x,), y, None, None, 3)
    first, second = split_time(batch, 4)
    carrier = StateCarrier()
    out1, h1 = model(*first.inputs)
    carrier.update(first, h1)
    out2, _ = model(*second.inputs, state=carrier.state_for(second))
    F.mse_loss(out2, second.target).backward()
    assert torch.count_nonzero(x.grad[:, :4]) == 0  # chunk 1's inputs get nothing
    assert torch.count_nonzero(x.grad[:, 4:]) > 0
    # the same loss with the state not detached does reach chunk 1: the check can fail
    x.grad = None
    out2, _ = model(*second.inputs, state=h1)
    F.mse_loss(out2, second.target).backward()
    assert torch.count_nonzero(x.grad[:, :4]) > 0
    # and the carried state is the model's state at the cut, value for value
    torch.testing.assert_close(carrier.state_for(second), h1.detach())


def test_padded_rows_stop_counting_inside_their_chunk():
    x, y = _data(n=3, steps=8)
    lengths = torch.tensor([8, 3, 5])
    chunks = split_time(Batch((x,), y, lengths, None, 3), 4)
    assert [c.lengths.tolist() for c in chunks] == [[4, 3, 4], [4, 1, 1]]
    assert chunks[1].mask(4).sum(1).tolist() == [4, 0, 1]  # row 1 has no step left
    with pytest.raises(ValueError, match="per-step targets"):
        split_time(Batch((x,), torch.zeros(3, 1), None, None, 3), 4)


class TinyLM(nn.Module):
    def __init__(self, vocab=11, hidden=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.rnn = nn.LSTM(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids, lengths=None, state=None):  # ids: (B, T)
        y, state = self.rnn(self.embed(ids), state)  # (B, T, H)
        return self.head(y), state  # (B, T, V)


def test_stateful_batches_carry_the_state_across_windows():
    ids = torch.randint(0, 11, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    data = StatefulBatches(ids, batch_size=4, bptt=10)
    torch.manual_seed(0)
    model, twin = TinyLM(), TinyLM()
    twin.load_state_dict(model.state_dict())
    Trainer(model, loss="sequence_cross_entropy", optimizer="sgd", lr=0.5, tbptt=5,
            verbose=False).fit(data, epochs=1)
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    state = None
    for x, y in data:  # (L, B) windows of the word_language_model example
        x, y = x.t(), y.t()
        for t in range(0, x.shape[1], 5):
            out, state = twin(x[:, t:t + 5], state=state)
            opt.zero_grad()
            F.cross_entropy(out.reshape(-1, 11), y[:, t:t + 5].reshape(-1)).backward()
            opt.step()
            state = tuple(s.detach() for s in state)
    _assert_same(model, twin)


class Counter(nn.Module):
    """Output at each step = steps seen in this sequence so far (state = the count)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x, lengths=None, state=None):  # x: (B, T, 1) of ones
        b, t = x.shape[:2]
        start = torch.zeros(b, 1) if state is None else state
        out = start[:, None] + torch.cumsum(x * self.scale, 1)  # (B, T, 1)
        last = (lengths - 1) if lengths is not None else torch.full((b,), t - 1)
        return out, out[torch.arange(b), last]  # (B, T, 1), (B, 1)


def test_minibatch_source_slots_carry_and_reset_where_sequences_start(tmp_path):
    lengths = [3, 5, 2, 4, 1, 6, 3]
    write_ctf(tmp_path / "c.ctf", [{"x": np.ones((n, 1)), "pos": np.arange(1, n + 1)[:, None]}
                                   for n in lengths])
    source = MinibatchSource(CTFDeserializer(tmp_path / "c.ctf", StreamDefs(
        x=StreamDef(shape=1), pos=StreamDef(shape=1))), truncation_length=2,
        randomization_window_in_chunks=0, max_sweeps=1)
    data = rnnkit.training.SourceBatches(source, 4, input_map={"x": source.streams.x,
                                                               "target": source.streams.pos})
    trainer = Trainer(Counter(), loss="mse", verbose=False)
    # the output equals each step's position in its own sequence only if every row starts
    # from its slot's carried count, and from zero where its sequence starts
    assert trainer.evaluate(data)["loss"] == 0.0
    predicted = trainer.predict(data)
    assert predicted.max().item() == max(lengths)


def test_doctests():
    assert_doctests_pass("rnnkit.training.tbptt")
