"""A character language model on tiny shakespeare, trained for a few minutes on a CPU.

It beats the text's character bigram baseline (add-one smoothing, fitted on the training
split) on the validation split, reports both in nats and bits per character, and writes
text from a prompt::

    python examples/char_lm_shakespeare.py                       # about 3 minutes, 2 cores
    python examples/char_lm_shakespeare.py --minutes 1 --hidden 128
    python examples/char_lm_shakespeare.py --data path/to/input.txt --save runs/shakespeare

The data is Karpathy's tiny shakespeare (``input.txt`` of char-rnn, 1,115,394 characters);
the first 90% trains, the last 10% validates (as nanoGPT's ``shakespeare_char``). Training:
an LSTM (1 x 256 by default) under ``rnnkit.Trainer`` with truncated BPTT over
``rnnkit.data.StatefulBatches`` (the state carried between windows), Adam, gradient clipping,
for a wall-clock budget.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import rnnkit
from rnnkit.data import StatefulBatches, Vocabulary, batchify
from rnnkit.training import Callback

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (
    ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt",
    ROOT / "data" / "tinyshakespeare" / "input.txt",
    Path("/work/shared/data/tinyshakespeare/input.txt"),
)


def find_text(path: str | None) -> Path:
    """The tiny shakespeare file: ``--data``, ``$RNNKIT_TINY_SHAKESPEARE`` or a usual place."""
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get("RNNKIT_TINY_SHAKESPEARE"):
        candidates = [Path(os.environ["RNNKIT_TINY_SHAKESPEARE"])]
    else:
        candidates = list(CANDIDATES)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise SystemExit(
        f"char_lm_shakespeare: tiny shakespeare not found (looked in {looked}). Download it "
        f"from {URL} and pass --data PATH (or set RNNKIT_TINY_SHAKESPEARE)."
    )


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` prints it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def split(text: str, fraction: float = 0.9) -> tuple[str, str]:
    cut = int(len(text) * fraction)
    return text[:cut], text[cut:]


def bigram_log_probs(train_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``log P(next | previous)`` ``(V, V)`` from the training ids' bigram counts with add-one
    (Laplace) smoothing over the ``vocab_size`` ids."""
    counts = torch.ones(vocab_size, vocab_size, dtype=torch.float64)
    pairs = train_ids[:-1] * vocab_size + train_ids[1:]
    counts += torch.bincount(pairs, minlength=vocab_size * vocab_size).view(
        vocab_size, vocab_size).double()
    return (counts / counts.sum(dim=1, keepdim=True)).log()


@torch.no_grad()
def evaluate(model: rnnkit.LanguageModel, ids: torch.Tensor, bigram: torch.Tensor,
             streams: int = 16, bptt: int = 256) -> tuple[float, float]:
    """Mean cross-entropy (nats per character) of the model and of the bigram table on the
    same (input, next character) pairs: ``streams`` contiguous streams read with the state
    carried across windows, every target counted once."""
    model.eval()
    data = batchify(ids, streams)  # (T, B)
    model_sum = bigram_sum = 0.0
    count = 0
    state = None
    for start in range(0, data.shape[0] - 1, bptt):
        inputs = data[start: start + bptt].t()  # (B, L)
        targets = data[start + 1: start + 1 + bptt].t()  # (B, L)
        inputs = inputs[:, : targets.shape[1]]
        logits, state = model(inputs, state=state)  # (B, L, V)
        model_sum += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).double(), targets.flatten(), reduction="sum"))
        bigram_sum += float(-bigram[inputs.flatten(), targets.flatten()].sum())
        count += targets.numel()
    return model_sum / count, bigram_sum / count


class Budget(Callback):
    """Stops training once ``seconds`` of wall time have passed or after ``updates``
    optimizer steps (whichever comes first; None: no limit)."""

    def __init__(self, seconds: float, updates: int | None = None) -> None:
        self.seconds = seconds
        self.updates = updates
        self.start = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_batch_end(self, trainer, logs) -> None:
        if time.perf_counter() - self.start > self.seconds or (
            self.updates is not None and trainer.global_step >= self.updates
        ):
            trainer.stop_training = True


def run(text: str, *, hidden: int = 256, layers: int = 1, embedding: int = 64,
        batch_size: int = 32, bptt: int = 100, lr: float = 3e-3, minutes: float = 3.0,
        max_updates: int | None = None, max_epochs: int = 100, prompt: str = "ROMEO:",
        length: int = 300, temperature: float = 0.8, seed: int = 0, save: str | None = None,
        log=print) -> dict:
    """Train, evaluate against the bigram baseline and generate; returns the figures."""
    torch.manual_seed(seed)
    train_text, val_text = split(text)
    vocab = Vocabulary.build(train_text, level="char")
    train_ids = torch.tensor(vocab.encode(train_text))
    val_ids = torch.tensor(vocab.encode(val_text))
    bigram = bigram_log_probs(train_ids, len(vocab))
    model = rnnkit.LanguageModel(vocabulary=vocab, embedding_dim=embedding, hidden_size=hidden,
                                 num_layers=layers)
    batches = StatefulBatches(train_ids, batch_size=batch_size, bptt=bptt, batch_first=True,
                              random_offset=True, seed=seed)
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", lr=lr, clip_grad_norm=1.0,
                             callbacks=[Budget(minutes * 60, max_updates)], seed=seed,
                             verbose=False)
    log(f"{len(text):,} characters ({len(train_text):,} train, {len(val_text):,} validation), "
        f"{len(vocab)} symbols; LSTM {layers}x{hidden}, {batch_size} streams x {bptt} steps, "
        f"{len(batches)} updates per epoch, budget {minutes:g} min")
    started = time.perf_counter()
    history = trainer.fit(batches, epochs=max_epochs)
    train_seconds = time.perf_counter() - started
    val_nats, bigram_nats = evaluate(model, val_ids, bigram)
    sample = model.generate(prompt, length, temperature=temperature, seed=seed)
    figures = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "updates": trainer.global_step,
        "epochs": len(history.epochs),
        "train_seconds": train_seconds,
        "train_loss": history.history["loss"][-1],
        "val_nats": val_nats,
        "val_bpc": val_nats / math.log(2),
        "bigram_nats": bigram_nats,
        "bigram_bpc": bigram_nats / math.log(2),
        "sample": sample,
    }
    log(f"trained {trainer.global_step} updates in {train_seconds:.0f} s "
        f"({figures['cpu']}, {figures['threads']} threads)")
    log(f"validation: LSTM {val_nats:.3f} nats/char = {figures['val_bpc']:.3f} bits/char; "
        f"bigram (add-one) {bigram_nats:.3f} nats/char = {figures['bigram_bpc']:.3f} bits/char")
    log(f"--- {prompt!r} at temperature {temperature}:\n{sample}\n---")
    if save is not None:
        rnnkit.save(model, save)
        log(f"saved to {save}: rnnkit.load({save!r}).generate('ROMEO:', 200)")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="tiny shakespeare input.txt")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--max-updates", type=int, help="stop after this many updates")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a busy shared machine intra-op threads "
                             "stall; try 2+ on an idle one)")
    parser.add_argument("--save", help="save the trained model to this directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = find_text(args.data).read_text(encoding="utf-8")
    figures = run(text, hidden=args.hidden, layers=args.layers, batch_size=args.batch_size,
                  bptt=args.bptt, lr=args.lr, minutes=args.minutes,
                  max_updates=args.max_updates, prompt=args.prompt,
                  length=args.length, temperature=args.temperature, seed=args.seed,
                  save=args.save)
    return 0 if figures["val_nats"] < figures["bigram_nats"] else 1


if __name__ == "__main__":
    sys.exit(main())
