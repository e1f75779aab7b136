"""What examples/seq2seq_dates.py and seq2seq_addition.py share: train a Seq2Seq on a toy
task with and without attention on the same budget, and score the held-out split.

``run(task_name, ...)`` trains one model per attention setting with ``rnnkit.Trainer`` on the
task's training pairs, decodes the held-out test pairs (greedy, or beam search) and scores
them with exact match, token accuracy and BLEU. Timing: the wall time, and the process's
CPU time (on a shared box the CPU time is close to what the same run takes alone on an idle
core; the wall time includes the waiting for other people's work).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

import rnnkit
from rnnkit.data.seq2seq_tasks import Seq2SeqCollate, Seq2SeqDataset, make_splits, make_task
from rnnkit.training.metrics import SequenceMetrics


def decode(model: torch.nn.Module, sources: list[str], task: Any, *, beam_width: int = 1,
           batch_size: int = 500) -> list[str]:
    """The model's best output for each source string."""
    src, tgt = task.source_vocabulary, task.target_vocabulary
    method = {"method": "greedy"} if beam_width == 1 else {"method": "beam",
                                                           "beam_width": beam_width}
    outputs = []
    model.eval()
    for start in range(0, len(sources), batch_size):
        chunk = [torch.tensor(src.encode(s)) for s in sources[start: start + batch_size]]
        lengths = torch.tensor([len(c) for c in chunk])
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)          # (B, S)
        with torch.no_grad():
            hyps = model.decode(padded, lengths, max_length=task.max_target_length + 1,
                                **method)
        for tokens, length in zip(hyps.tokens[:, 0], hyps.lengths[:, 0], strict=True):
            ids = tokens[: int(length)].tolist()
            outputs.append(tgt.decode([i for i in ids if i > 3]))  # drop <pad>/<bos>/<eos>
    return outputs


def train_one(task: Any, splits: Any, attention: str | None, *, hidden: int, embedding: int,
              batch_size: int, epochs: int, lr: float, seed: int, beam_width: int,
              log: Any = print) -> dict[str, Any]:
    """Train one Seq2Seq; its held-out scores and timings."""
    torch.manual_seed(seed)
    model = rnnkit.models.Seq2Seq(len(task.source_vocabulary), len(task.target_vocabulary),
                                  embedding_dim=embedding, hidden_size=hidden, cell="gru",
                                  bidirectional_encoder=True, attention=attention)
    train = torch.utils.data.DataLoader(
        Seq2SeqDataset(splits.train, task.source_vocabulary, task.target_vocabulary),
        batch_size=batch_size, shuffle=True, collate_fn=Seq2SeqCollate())
    scheduler = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
        opt, max_lr=lr, total_steps=epochs * len(train))
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", lr=lr, clip_grad_norm=1.0,
                             scheduler=scheduler, scheduler_interval="step", seed=seed,
                             verbose=False)
    wall, cpu = time.perf_counter(), time.process_time()
    history = trainer.fit(train, epochs=epochs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sources, references = zip(*splits.test, strict=True)
    predictions = decode(model, list(sources), task, beam_width=beam_width)
    metrics = SequenceMetrics(tokenize="char")
    metrics.update(predictions, list(references))
    scores = metrics.compute()
    wrong = [(s, p, r) for s, p, r in zip(sources, predictions, references, strict=True)
             if p != r]
    name = attention or "none"
    log(f"attention {name:>8}: exact match {scores['exact_match']:.4f}, token accuracy "
        f"{scores['token_accuracy']:.4f}, BLEU {scores['bleu']:.2f}; {trainer.global_step} "
        f"updates in {wall:.0f} s wall, {cpu:.0f} s CPU; train loss "
        f"{history.history['loss'][-1]:.4f}")
    for source, predicted, reference in wrong[:5]:
        log(f"    {source!r} -> {predicted!r} (expected {reference!r})")
    return {"attention": name, **{k: round(v, 6) for k, v in scores.items()},
            "errors": len(wrong), "test_pairs": len(references),
            "updates": trainer.global_step, "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_train_loss": round(history.history["loss"][-1], 6),
            "wrong_examples": [list(w) for w in wrong[:5]]}


def run(task_name: str, *, num_train: int, num_test: int, hidden: int, embedding: int,
        batch_size: int, epochs: int, lr: float, seed: int = 0, beam_width: int = 1,
        attentions: tuple[str | None, ...] = ("bahdanau", None), threads: int | None = None,
        log: Any = print, **task_options: Any) -> dict[str, Any]:
    """Train with each attention setting on the same data and budget."""
    if threads is not None:
        torch.set_num_threads(threads)
    task = make_task(task_name, **task_options)
    splits = make_splits(task, num_train=num_train, num_test=num_test, seed=seed)
    log(f"{task_name}: {num_train} training pairs, {num_test} held-out test pairs (no "
        f"sample shared), e.g. {splits.train[0][0]!r} -> {splits.train[0][1]!r}; GRU "
        f"encoder (bidirectional) and decoder, hidden {hidden}, batch {batch_size}, "
        f"{epochs} epochs, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    return {"models": [train_one(task, splits, attention, hidden=hidden, embedding=embedding,
                                 batch_size=batch_size, epochs=epochs, lr=lr, seed=seed,
                                 beam_width=beam_width, log=log)
                       for attention in attentions]}
