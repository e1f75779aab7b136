"""The seed's "namaskar" example (issue 13, row 6): read 7 letters, predict the 8th.

The word is n-a-m-a-s-k-a-r over the vocabulary {n, a, m, s, k, r}. After "a" the next letter
is "m", "s" or "r" depending on *which* "a" it is, so one letter of context is not enough: the
hidden state has to carry what came before. The network is the seed's own Elman RNN,

    h_t = tanh(W_xh x_t + W_hh h_{t-1} + b),    y_t = W_hy h_t + c,

with one-hot letters ``x_t``: ``rnnkit.RNN`` (tanh) and a linear read-out, trained by
``rnnkit.Trainer`` to predict each next letter. It then reads "namaska" and prints, step by
step, the hidden state, how far it moved, and what the network expects next; the three "a"
steps end in three different states, which is how it knows the 8th letter is "r". Finally
``rnnkit.diagnostics.gradient_flow`` shows how much each step's state matters for that last
prediction. About 10 seconds on a laptop core:

    python examples/namaskar.py [--results docs/results/namaskar.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import gradient_flow

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import add_arguments, machine, write_results  # noqa: E402

WORD = "namaskar"
VOCAB = ["n", "a", "m", "s", "k", "r"]       # the seed's vocabulary, in its order


def one_hot(text: str) -> torch.Tensor:
    """``(1, len(text), 6)``: one one-hot row per letter."""
    ids = torch.tensor([VOCAB.index(c) for c in text])
    return nn.functional.one_hot(ids, len(VOCAB)).float()[None]


class Elman(nn.Module):
    """The seed's RNN: hidden states ``(B, T, H)`` from ``rnnkit.RNN``, next-letter logits."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.rnn = rnnkit.RNN(len(VOCAB), hidden, nonlinearity="tanh", batch_first=True)
        self.read_out = nn.Linear(hidden, len(VOCAB))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden, _ = self.rnn(x, lengths=lengths)   # (B, T, H)
        return self.read_out(hidden)               # (B, T, 6)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=8)
    args = parser.parse_args(argv)
    start, cpu_start = time.perf_counter(), time.process_time()

    # training pairs: each prefix letter -> the next one (teacher forcing over the word)
    inputs = one_hot(WORD[:-1])                                          # (1, 7, 6)
    targets = torch.tensor([[VOCAB.index(c) for c in WORD[1:]]])         # (1, 7)
    torch.manual_seed(args.seed)
    model = Elman(args.hidden)
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", optimizer="adam", lr=0.05,
                             metrics=["accuracy"], seed=args.seed, verbose=False)
    epochs = 20 if args.tiny else 150
    history = trainer.fit((inputs, targets), epochs=epochs, batch_size=1)

    model.eval()
    with torch.no_grad():
        hidden, _ = model.rnn(inputs)                                    # (1, 7, H)
        probs = model.read_out(hidden).softmax(-1)[0]                    # (7, 6)
    print(f"trained {epochs} updates on '{WORD}': loss {history.history['loss'][-1]:.4f}, "
          f"accuracy {history.history['accuracy'][-1]:.2f}\n")
    print("step  reads  hidden state h_t" + " " * (7 * args.hidden - 16)
          + "  |h_t - h_t-1|  expects next")
    previous = torch.zeros(args.hidden)
    for t, letter in enumerate(WORD[:-1]):
        h = hidden[0, t]
        guess = int(probs[t].argmax())
        state = " ".join(f"{v:+.2f}" for v in h.tolist())
        print(f"{t + 1:>4}  {letter:>5}  [{state}]  {float((h - previous).norm()):>12.2f}  "
              f"{VOCAB[guess]} ({float(probs[t, guess]):.2f})")
        previous = h
    a_steps = [t for t, c in enumerate(WORD[:-1]) if c == "a"]
    distances = {f"h{i + 1}-h{j + 1}": round(float((hidden[0, i] - hidden[0, j]).norm()), 3)
                 for k, i in enumerate(a_steps) for j in a_steps[k + 1:]}
    print(f"\nthe three 'a' steps ({', '.join(str(t + 1) for t in a_steps)}) end in different "
          f"states (distances {', '.join(f'{k} {v:.2f}' for k, v in distances.items())}):")
    print("the state remembers which 'a' it is, so it can say m, s or r after it.")

    prediction = VOCAB[int(probs[-1].argmax())]
    confidence = float(probs[-1].max())
    print(f"\nafter '{WORD[:-1]}' the 8th letter is predicted to be '{prediction}' "
          f"(p = {confidence:.3f}); the word says '{WORD[-1]}'.")

    # how much each step's hidden state matters for the last prediction: ||dL/dh_t||
    def last_letter_loss(logits, target):
        return nn.functional.cross_entropy(logits[:, -1], target[:, -1])

    flow = gradient_flow(model, (inputs, targets), loss=last_letter_loss)["layer 1"]
    print("influence of each step on that prediction, ||dL/dh_t||: "
          + ", ".join(f"{c}{t + 1} {v:.1e}" for t, (c, v) in
                      enumerate(zip(WORD[:-1], flow.tolist(), strict=True))))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    host = machine()
    print(f"\n{wall:.1f} s wall, {cpu:.1f} s of CPU on {host}")

    result = {"cpu_s": round(cpu, 1), "prediction": prediction, "probability": round(confidence, 4),
              "a_state_distances": distances, "gradient_flow": [round(v, 6) for v in
                                                                flow.tolist()]}
    if args.results:
        write_results(
            args.results, row=6, task="namaskar: predict the 8th letter after 7",
            metric="predicted 8th letter",
            ours=f"'{prediction}' (p = {confidence:.3f})", anchor="— (the seed's illustration)",
            target="a 30-second (CPU) example that prints the prediction and the per-step "
                   "hidden-state story",
            # 30 seconds of CPU: on a shared box the wall clock measures the neighbours
            met=None if args.tiny else (prediction == WORD[-1] and cpu < 30),
            settings=(f"rnnkit.RNN(6, {args.hidden}, tanh) + Linear read-out, one-hot letters, "
                      f"Adam lr 0.05, {epochs} updates on the word"
                      + (" (--tiny)" if args.tiny else "")),
            seeds=[args.seed], wall_s=round(wall, 1), machine=host, details=result)
    return result


if __name__ == "__main__":
    main()
