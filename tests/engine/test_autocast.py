"""Recurrences under torch.autocast run in float32 outside the autocast region (engine/autocast.py).

Oracle: torch.nn with copied weights, run in float32 without autocast on the same input (a bfloat16
input, as an upstream autocast op makes, is widened to float32 first). On CPUs without
AVX512-bf16/AMX, torch.nn.LSTM itself fails under CPU bf16 autocast, which is why rnnkit does not
hand the recurrence to autocast.
"""

import pytest
import torch

import rnnkit


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_drop_ins_under_bf16_autocast_equal_float32_torch(mode, with_lengths, input_dtype):
    torch.manual_seed(0)
    ours = getattr(rnnkit, mode)(3, 4, num_layers=2, batch_first=True)
    theirs = getattr(torch.nn, mode)(3, 4, num_layers=2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 3).to(input_dtype)
    lengths = torch.tensor([5, 2, 1]) if with_lengths else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ours(x, lengths=lengths)
    assert out.dtype == torch.float32
    for b in range(3):
        n = 5 if lengths is None else int(lengths[b])
        expected, _ = theirs(x[b:b + 1, :n].float())
        torch.testing.assert_close(out[b:b + 1, :n], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("driver", ["fold", "recurrence", "bidirectional"])
def test_cell_drivers_under_bf16_autocast(driver):
    torch.manual_seed(0)
    cell = rnnkit.GRUCell(3, 4)
    module = {"fold": lambda: rnnkit.Fold(cell), "recurrence": lambda: rnnkit.Recurrence(cell),
              "bidirectional": lambda: rnnkit.Bidirectional(rnnkit.Recurrence(cell))}[driver]()
    x = torch.randn(5, 2, 3, requires_grad=True)  # (T, B, H_in)
    expected = module(x.detach())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_trainer_bf16_trains_an_rnnkit_model():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkit.LSTM(3, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):  # x: (B, T, 3)
            return self.head(self.rnn(x)[0][:, -1])  # (B, 2)

    x, y = torch.randn(16, 4, 3), torch.randint(0, 2, (16,))
    trainer = rnnkit.Trainer(Net(), loss="cross_entropy", precision="bf16", verbose=False)
    history = trainer.fit((x, y), epochs=2, batch_size=8)
    assert all(torch.isfinite(torch.tensor(history.history["loss"])))
