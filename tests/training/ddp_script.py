"""Run by tests/training/test_distributed.py under ``torchrun --nproc_per_node=2``: the same
Trainer script a user would write, trained on tensors and on a shuffled DataLoader.

Usage: ddp_script.py OUT_DIR PER_RANK_BATCH EPOCHS CTF_FILE

The MinibatchSource form reads CTF_FILE (written by :func:`write_ctf`) in minibatches of
``2 * PER_RANK_BATCH`` sequences over both ranks, one sweep.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit
from rnnkit.data import CTFDeserializer, MinibatchSource, StreamDef, StreamDefs
from rnnkit.training import SourceBatches, list_checkpoints

torch.set_num_threads(1)


class TinyRegressor(nn.Module):
    """GRU over (B, T, 3) -> Linear on the last step -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)          # (B, T, 4)
        return self.head(out[:, -1])  # (B, 2)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, 3, generator=g), torch.randn(16, 2, generator=g)


def write_ctf(path: Path) -> None:
    """The first 8 samples of :func:`make_data` as CTF: 5 steps of |x, one |y per sequence."""
    x, y = make_data()
    lines = []
    for s in range(8):
        for t in range(x.shape[1]):
            row = f"{s} |x " + " ".join(repr(float(v)) for v in x[s, t])
            if t == 0:
                row += " |y " + " ".join(repr(float(v)) for v in y[s])
            lines.append(row)
    path.write_text("\n".join(lines) + "\n")


def make_source(path: Path, per_rank_batch: int, world_size: int) -> SourceBatches:
    source = MinibatchSource(CTFDeserializer(str(path), StreamDefs(
        x=StreamDef(shape=3), y=StreamDef(shape=2))), randomize=False, max_sweeps=1)
    steps = 5  # samples per sequence: a minibatch of N sequences is 5 N samples
    return SourceBatches(source, minibatch_size=steps * per_rank_batch * world_size,
                         input_map={"x": "x", "target": "y"})


def make_model() -> TinyRegressor:
    torch.manual_seed(0)
    return TinyRegressor()


def main(out: Path, batch: int, epochs: int, ctf: Path) -> None:
    x, y = make_data()
    results = {}
    for form in ("tensors", "loader", "source"):
        model = make_model()
        trainer = rnnkit.Trainer(model, loss="mse", optimizer="sgd", lr=0.5, metrics=["mae"],
                                 seed=3, verbose=False)
        if form == "tensors":
            history = trainer.fit((x, y), epochs=epochs, batch_size=batch, shuffle=False)
        elif form == "loader":
            loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
            history = trainer.fit(loader, epochs=epochs)
        else:  # one sweep: a single epoch, whatever `epochs` asks
            source = make_source(ctf, batch, trainer.distributed.world_size)
            history = trainer.fit(source, epochs=epochs)
        ctx = trainer.distributed
        mains = int(ctx.all_reduce(torch.tensor([int(trainer.is_main_process)]))[0])
        if trainer.is_main_process:
            results[form] = {"history": history.history, "world_size": ctx.world_size,
                             "backend": ctx.backend, "ddp": type(trainer._ddp_model).__name__,
                             "main_processes": mains}
            torch.save(model.state_dict(), out / f"{form}.pt")
    resumed = resume_mid_epoch(out, x, y, batch, epochs)
    if resumed is not None:
        results["resumed"] = resumed
    if results:
        (out / "results.json").write_text(json.dumps(results))


def resume_mid_epoch(out: Path, x: torch.Tensor, y: torch.Tensor, batch: int, epochs: int
                     ) -> dict | None:
    """Train with a checkpoint after every update, drop the newest checkpoints as if the job
    had died in the middle of the last epoch, and resume from there in a new Trainer."""
    run_dir = out / "run"

    forwards: list[int] = []

    def trainer() -> rnnkit.Trainer:
        model = make_model()
        model.register_forward_pre_hook(lambda module, args: forwards.append(1))
        return rnnkit.Trainer(model, loss="mse", optimizer="sgd", lr=0.5, metrics=["mae"],
                              seed=3, verbose=False)

    first = trainer()
    first.fit((x, y), epochs=epochs, batch_size=batch, shuffle=False, checkpoint_dir=run_dir,
              keep_last=None, checkpoint_every=1)
    ctx = first.distributed
    updates_per_epoch = first.global_step // epochs
    crash_step = first.global_step - updates_per_epoch // 2
    if ctx.is_main:
        for path in list_checkpoints(run_dir):
            if int(path.name.split("-")[1]) > crash_step:
                shutil.rmtree(path)
    ctx.barrier()  # the other ranks read the run directory once rank 0 has trimmed it
    forwards.clear()
    second = trainer()
    second.fit((x, y), epochs=epochs, batch_size=batch, shuffle=False, checkpoint_dir=run_dir,
               resume=True, keep_last=None, checkpoint_every=1)
    ctx.barrier()
    if not ctx.is_main:
        return None
    shutil.rmtree(run_dir)
    torch.save(second.model.state_dict(), out / "resumed.pt")
    return {"history": second.history.history, "crash_step": crash_step,
            "steps": second.global_step, "updates_after_resume": len(forwards)}


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
