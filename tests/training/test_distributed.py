"""rnnkit.training.distributed: torchrun's environment, the no-op path, sharding, and a real
two-process gloo run under ``torchrun`` whose weights match one process on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from rnnkit.data import BucketBatchSampler
from rnnkit.training.distributed import DistributedContext, ShardedBatchSampler, unwrap_model
from tests.helpers import assert_doctests_pass, python_blocks
from tests.training import ddp_script

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}


# ------------------------------------------------------------------------------ environment
def test_torchrun_environment_is_read():
    ctx = DistributedContext.from_env(TORCHRUN_ENV, device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, ctx.node_rank) == \
        (1, 4, 1, 2, 0)
    assert (ctx.master_addr, ctx.master_port) == ("10.0.0.7", 29500)
    assert ctx.enabled and not ctx.is_main
    assert ctx.backend == "gloo" and ctx.device == torch.device("cpu")
    assert ctx.partition == {"num_data_partitions": 4, "partition_index": 1}
    second_node = DistributedContext.from_env({**TORCHRUN_ENV, "RANK": "2", "LOCAL_RANK": "0",
                                               "GROUP_RANK": "1"}, device="cpu")
    assert (second_node.rank, second_node.local_rank, second_node.node_rank) == (2, 0, 1)


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "0"}, "has RANK but not WORLD_SIZE"),
    ({"WORLD_SIZE": "2"}, "has WORLD_SIZE but not RANK"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"},
     "LOCAL_RANK=3 must be below LOCAL_WORLD_SIZE=2"),
])
def test_inconsistent_environment_is_one_line_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message) as info:
        DistributedContext.from_env(env, device="cpu")
    assert "\n" not in str(info.value)


def test_backend_choice():
    with pytest.raises(ValueError, match="nccl backend needs a CUDA device"):
        DistributedContext.from_env(TORCHRUN_ENV, device="cpu", backend="nccl")
    with pytest.raises(ValueError, match="backend must be 'nccl' or 'gloo'"):
        DistributedContext.from_env(TORCHRUN_ENV, device="cpu", backend="mpi")
    # one process under torchrun is not distributed
    single = DistributedContext.from_env({"RANK": "0", "WORLD_SIZE": "1"}, device="cpu")
    assert not single.enabled and single.backend is None


def test_not_distributed_everything_is_a_no_op():
    ctx = DistributedContext.from_env({})
    assert not ctx.enabled and ctx.is_main and ctx.backend is None
    model = torch.nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=2)
    assert ctx.init() is ctx
    assert ctx.wrap_model(model) is model and unwrap_model(model) is model
    assert ctx.shard(loader) is loader
    value = torch.tensor([1.5, 2.0])
    assert ctx.all_reduce(value) is value
    assert ctx.any(True) and not ctx.any(False)
    ctx.barrier()
    ctx.set_epoch(loader, 3)                                # a plain loader has no epoch
    assert ctx.partition == {"num_data_partitions": 1, "partition_index": 0}
    assert not torch.distributed.is_initialized()


# -------------------------------------------------------------------------------- sharding
def ranks(world_size: int) -> list[DistributedContext]:
    # sharding needs no process group: the sampler takes the rank and world size directly
    return [DistributedContext.from_env({"RANK": str(r), "WORLD_SIZE": str(world_size)},
                                        device="cpu") for r in range(world_size)]


def indices(loader: DataLoader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


def test_sharded_loader_splits_the_data_evenly_and_reshuffles_per_epoch():
    data = TensorDataset(torch.arange(12))
    sequential = DataLoader(data, batch_size=2)
    shards = [ctx.shard(sequential) for ctx in ranks(2)]
    got = [indices(s) for s in shards]
    # rank r takes samples r, r + 2, ...: batch k of the two ranks together is the single
    # process's batch k at twice the batch size, which is what makes DDP equal full-batch SGD
    assert got == [[[0, 2], [4, 6], [8, 10]], [[1, 3], [5, 7], [9, 11]]]
    shuffled = DataLoader(data, batch_size=3, shuffle=True)
    contexts = ranks(3)
    epochs = []
    for epoch in (0, 1):
        shards = [ctx.shard(shuffled, seed=5) for ctx in contexts]
        for ctx, shard in zip(contexts, shards, strict=True):
            ctx.set_epoch(shard, epoch)
        flat = [sorted(i for b in indices(s) for i in b) for s in shards]
        assert sorted(sum(flat, [])) == list(range(12))       # a partition of the data
        assert all(len(f) == 4 for f in flat)
        epochs.append(flat)
    assert epochs[0] != epochs[1]


def test_dataset_and_uneven_sizes():
    data = TensorDataset(torch.arange(5))
    shards = [ctx.shard(data, batch_size=2) for ctx in ranks(2)]
    sizes = [sum(len(b) for b in indices(s)) for s in shards]
    assert sizes == [3, 3]                              # PyTorch pads by repeating a sample
    with pytest.raises(ValueError, match="needs batch_size"):
        ranks(2)[0].shard(data)
    with pytest.raises(TypeError, match="cannot shard list"):
        ranks(2)[0].shard([1, 2, 3])


def test_batch_sampler_loaders_keep_their_batches():
    lengths = [5, 1, 3, 2, 4, 6, 2, 1, 3]
    bucket = BucketBatchSampler(lengths, batch_size=2, shuffle=False)
    loader = DataLoader(TensorDataset(torch.arange(9)), batch_sampler=bucket)
    whole = [list(b) for b in bucket]
    shards = [ctx.shard(loader) for ctx in ranks(2)]
    got = [indices(s) for s in shards]
    assert len(got[0]) == len(got[1]) == len(whole) // 2
    assert got[0] == whole[0:len(whole) // 2 * 2:2] and got[1] == whole[1:len(whole) // 2 * 2:2]
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        ShardedBatchSampler(bucket, 2, 2)


def test_docstring_examples_run():
    assert_doctests_pass("rnnkit.training.distributed")


# ----------------------------------------------------------------------- torchrun, 2 ranks
# what a machine says when torchrun cannot start processes that talk over local sockets
CANNOT_START = ("RendezvousConnectionError", "RendezvousTimeoutError", "Network is unreachable",
                "Cannot assign requested address", "Address family not supported",
                "Operation not permitted", "Permission denied")


def run_torchrun(out: Path, per_rank_batch: int, epochs: int, ctf: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torchrun cannot start: this torch build has no torch.distributed/gloo")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(Path(ddp_script.__file__)), str(out),
               str(per_rank_batch), str(epochs), str(ctf)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        reason = next((line.strip() for line in text.splitlines()
                       if any(marker in line for marker in CANNOT_START)), None)
        if reason is not None:
            pytest.skip(f"torchrun cannot start here: {reason[:200]}")
        pytest.fail(f"torchrun exited with {proc.returncode}:\n{text[-4000:]}")


def single_process_on_the_combined_batch(form: str, batch: int, epochs: int, seed: int
                                         ) -> tuple[dict, dict[str, list[float]]]:
    """The oracle: a plain torch loop, one process, batches of both ranks' samples together
    (tensors in order; the loader in DistributedSampler's order: randperm seeded seed+epoch)."""
    x, y = ddp_script.make_data()
    if form == "source":  # the CTF file: the first 8 sequences, one sweep, in order
        x, y, epochs = x[:8], y[:8], 1
    model = ddp_script.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    history: dict[str, list[float]] = {"loss": [], "mae": []}
    for epoch in range(epochs):
        if form in ("tensors", "source"):
            order = torch.arange(len(x))
        else:
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        squared = absolute = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            out = model(x[idx])
            loss = (out - y[idx]).square().mean()
            squared += float(loss.detach()) * out.numel()
            absolute += float((out - y[idx]).detach().abs().sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history["loss"].append(squared / y.numel())
        history["mae"].append(absolute / y.numel())
    return model.state_dict(), history


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_on_the_combined_batch(tmp_path):
    per_rank, epochs = 2, 3
    ctf = tmp_path / "data" / "train.ctf"
    ctf.parent.mkdir()
    ddp_script.write_ctf(ctf)
    out = tmp_path / "out"
    out.mkdir()
    run_torchrun(out, per_rank, epochs, ctf)
    results = json.loads((out / "results.json").read_text())
    for form in ("tensors", "loader", "source"):
        got = results[form]
        assert (got["world_size"], got["backend"], got["ddp"]) == \
            (2, "gloo", "DistributedDataParallel")
        assert got["main_processes"] == 1                       # only rank 0 is the main one
        weights, history = single_process_on_the_combined_batch(form, 2 * per_rank, epochs, 3)
        trained = torch.load(out / f"{form}.pt", weights_only=True)
        for name, value in weights.items():
            torch.testing.assert_close(trained[name], value, atol=1e-5, rtol=0, msg=name)
        # the reported epoch loss and metric cover both ranks' samples
        for key in ("loss", "mae"):
            assert got["history"][key] == pytest.approx(history[key], abs=1e-5), (form, key)
    # resumed from a checkpoint in the middle of the last epoch: the weights of the run
    # that was not interrupted (the interrupted epoch's reported loss covers rank 0's batches
    # before the interruption, so only the epochs before it are compared)
    resumed = results["resumed"]
    assert resumed["steps"] == 12 and resumed["crash_step"] == 10   # 4 updates per epoch
    assert resumed["updates_after_resume"] == 2                     # it went on, not afresh
    weights, history = single_process_on_the_combined_batch("tensors", 2 * per_rank, epochs, 3)
    trained = torch.load(out / "resumed.pt", weights_only=True)
    for name, value in weights.items():
        torch.testing.assert_close(trained[name], value, atol=1e-5, rtol=0, msg=name)
    assert resumed["history"]["loss"][:-1] == pytest.approx(history["loss"][:-1], abs=1e-5)
    # only rank 0 wrote: one results file and the weight files
    assert sorted(p.name for p in out.iterdir()) == ["loader.pt", "results.json", "resumed.pt",
                                                     "source.pt", "tensors.pt"]


def test_docs_section_examples_run(capsys):
    """The python blocks of docs/training.md's "Data parallel (torchrun)" section run as
    written (in one process, where every distributed step is a no-op)."""
    text = (REPO / "docs" / "training.md").read_text()
    section = text.split("## Data parallel (torchrun)", 1)[1].split("\n## ", 1)[0]
    blocks = python_blocks(section)
    assert len(blocks) == 2
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/training.md data parallel block {index}", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert printed[0].startswith("0 1 None ")            # rank 0 of 1, no backend
    assert [line[:11] for line in printed[1:3]] == ["0 accuracy ", "1 accuracy "]
