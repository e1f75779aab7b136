"""Train a small LSTM to predict the next value of a sine wave and print the loss falling."""

import math

import torch
from torch import nn

import rnnkit

torch.manual_seed(0)
steps = torch.linspace(0, 16 * math.pi, 2000)
wave = torch.sin(steps)
look_back = 20
windows = wave.unfold(0, look_back + 1, 1)  # (N, look_back + 1)
inputs, targets = windows[:, :-1, None], windows[:, -1:]  # (N, T, 1), (N, 1)


class Forecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = rnnkit.LSTM(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(x)  # (B, T, 32)
        return self.head(outputs[:, -1])  # (B, 1)


model = Forecaster()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(1, 11):
    permutation = torch.randperm(len(inputs))
    total = 0.0
    for start in range(0, len(inputs), 64):
        batch = permutation[start : start + 64]
        loss = nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    print(f"epoch {epoch:2d}  mse {total / len(inputs):.6f}")
