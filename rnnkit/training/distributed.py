"""Data parallel training under ``torchrun``: one process per device, gradients averaged.

:class:`DistributedContext` reads what ``torchrun`` (``python -m torch.distributed.run``)
puts in each process's environment and gives the trainer the few operations data parallelism
needs; outside ``torchrun`` (or with one process) every operation is a no-op, so the same
script runs alone or as ``torchrun --nproc_per_node=N script.py``.

===================  ==========================================================================
environment          meaning
===================  ==========================================================================
``RANK``             this process's index among all processes, ``0 .. WORLD_SIZE - 1``
``WORLD_SIZE``       number of processes over all machines
``LOCAL_RANK``       index on this machine: the GPU this process drives
``LOCAL_WORLD_SIZE`` processes on this machine
``GROUP_RANK``       this machine's index (``--node-rank``)
``MASTER_ADDR``      host and port of rank 0's store, where the processes meet
``MASTER_PORT``
===================  ==========================================================================

What each operation does when distributed:

* :meth:`DistributedContext.init` joins the process group: ``nccl`` when the process drives a
  CUDA device (``cuda:LOCAL_RANK``), ``gloo`` on the CPU.
* :meth:`DistributedContext.wrap_model` wraps the model in ``DistributedDataParallel``, which
  starts every rank from rank 0's weights and averages the gradients in ``backward``.
* :meth:`DistributedContext.shard` gives each rank its share of the data: a ``DataLoader`` is
  rebuilt over a ``DistributedSampler`` (shuffled like the original; ``batch_size`` stays per
  process, as in PyTorch), a ``Dataset`` gets a ``DistributedSampler``; an
  :class:`rnnkit.data.MinibatchSource` is read with ``num_data_partitions=WORLD_SIZE,
  partition_index=RANK`` (:meth:`partition`), CNTK's way: its minibatch size counts samples
  over all ranks.
* :meth:`DistributedContext.all_reduce` sums a tensor over the ranks (metric sums and counts,
  so the reported numbers are global); :meth:`any` agrees on a flag (stop, data exhausted).
* :attr:`DistributedContext.is_main` is True on rank 0 only: the one that writes and prints.

Example (no ``torchrun`` here, so nothing is distributed):
    >>> ctx = DistributedContext.from_env({})
    >>> ctx.enabled, ctx.rank, ctx.world_size, ctx.is_main
    (False, 0, 1, True)
    >>> import torch
    >>> ctx.all_reduce(torch.tensor([2.0, 3.0]))
    tensor([2., 3.])
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = ["DistributedContext", "ShardedBatchSampler", "unwrap_model"]

def _read_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r} must not be negative")
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ShardedBatchSampler(Sampler[list[int]]):
    """Every ``world_size``-th batch of another batch sampler, from ``rank`` on.

    For loaders whose batches come from their own batch sampler (length buckets such as
    :class:`rnnkit.data.BucketBatchSampler`), where a per-sample ``DistributedSampler`` would
    undo the bucketing. Each rank gets the same number of batches (the last
    ``len % world_size`` are dropped) so no rank waits for a gradient that never comes.
    ``set_epoch`` is passed on.
    """

    def __init__(self, batch_sampler: Any, world_size: int, rank: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.batch_sampler = batch_sampler
        self.world_size = world_size
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        limit = len(self) * self.world_size
        for index, batch in enumerate(self.batch_sampler):
            if index >= limit:
                break
            if index % self.world_size == self.rank:
                yield batch


@dataclass
class DistributedContext:
    """Where this process stands in a ``torchrun`` job; a no-op when not distributed.

    Build it with :meth:`from_env`; fields: ``rank``, ``world_size``, ``local_rank``,
    ``local_world_size``, ``node_rank``, ``master_addr``, ``master_port``, ``device`` (the
    device this process trains on) and ``backend`` (``"nccl"``/``"gloo"``, ``None`` when not
    distributed).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    _owns_group: bool = field(default=False, repr=False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, device: str | torch.device | None
                 = None, backend: str | None = None) -> DistributedContext:
        """Read torchrun's variables from ``env`` (default ``os.environ``).

        ``device``: the device to train on (default: ``cuda:LOCAL_RANK`` when CUDA is
        available, else the CPU); ``backend`` overrides the choice ``nccl`` (CUDA) / ``gloo``
        (CPU).
        """
        env = os.environ if env is None else env
        world_size = _read_int(env, "WORLD_SIZE", None)
        rank = _read_int(env, "RANK", None)
        if (world_size is None) != (rank is None):
            present, missing = ("WORLD_SIZE", "RANK") if rank is None else ("RANK", "WORLD_SIZE")
            raise ValueError(f"environment has {present} but not {missing}: start the script "
                             f"with torchrun, or set both")
        world_size = 1 if world_size is None else world_size
        rank = 0 if rank is None else rank
        if world_size < 1:
            raise ValueError(f"environment variable WORLD_SIZE={world_size} must be at least 1")
        if rank >= world_size:
            raise ValueError(f"environment variable RANK={rank} must be below "
                             f"WORLD_SIZE={world_size}")
        local_rank = _read_int(env, "LOCAL_RANK", 0)
        local_world_size = _read_int(env, "LOCAL_WORLD_SIZE", 1 if world_size == 1 else None)
        if local_world_size is None:
            local_world_size = world_size
        if local_rank >= max(local_world_size, 1):
            raise ValueError(f"environment variable LOCAL_RANK={local_rank} must be below "
                             f"LOCAL_WORLD_SIZE={local_world_size}")
        port = _read_int(env, "MASTER_PORT", None)
        distributed = world_size > 1
        if device is None:
            if torch.cuda.is_available() and backend != "gloo":
                device = torch.device("cuda", local_rank if distributed else
                                      torch.cuda.current_device())
            else:
                device = torch.device("cpu")
        device = torch.device(device)
        if distributed:
            # each process drives its own GPU: cuda:LOCAL_RANK, whatever index was asked for
            if device.type == "cuda" and (device.index is None or
                                          local_rank < torch.cuda.device_count()):
                device = torch.device("cuda", local_rank)
            if backend is None:
                backend = "nccl" if device.type == "cuda" else "gloo"
            if backend not in ("nccl", "gloo"):
                raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
            if backend == "nccl" and device.type != "cuda":
                raise ValueError(f"the nccl backend needs a CUDA device, this process trains on "
                                 f"{device}")
        else:
            backend = None
        return cls(rank=rank, world_size=world_size, local_rank=local_rank,
                   local_world_size=local_world_size, node_rank=_read_int(env, "GROUP_RANK", 0),
                   master_addr=env.get("MASTER_ADDR") or None, master_port=port, device=device,
                   backend=backend)

    # -- state ----------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """More than one process: gradients, data and metrics are shared."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs and prints."""
        return self.rank == 0

    @property
    def partition(self) -> dict[str, int]:
        """``MinibatchSource.next_minibatch`` keywords for this rank's share (CNTK's
        ``num_data_partitions``/``partition_index``)."""
        return {"num_data_partitions": self.world_size, "partition_index": self.rank}

    def init(self, timeout_s: float = 1800.0) -> DistributedContext:
        """Join the process group (once; a no-op when not distributed or already joined)."""
        if not self.enabled or dist.is_initialized():
            return self
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this torch build")
        if self.master_addr is None or self.master_port is None:
            raise ValueError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: start the "
                             "script with torchrun")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        self._owns_group = True
        return self

    def close(self) -> None:
        """Leave the process group if :meth:`init` joined it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # -- model and data -------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed (the model unchanged otherwise);
        the model should already be on :attr:`device`. ``ddp_kwargs`` go to DDP (e.g.
        ``find_unused_parameters=True`` for a model that skips parameters)."""
        if not self.enabled or isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        self.init()
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("DistributedDataParallel needs a model with trainable parameters")
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    def shard(self, data: Any, *, shuffle: bool | None = None, seed: int = 0,
              batch_size: int | None = None) -> Any:
        """This rank's share of ``data`` (``data`` itself when not distributed).

        * ``DataLoader``: the same loader over a ``DistributedSampler`` (shuffled when the
          original was, or as ``shuffle`` says; ``seed`` seeds the shuffle, equal on every
          rank; ``batch_size`` stays per process); a loader with its own batch sampler keeps
          its batches and deals them out (:class:`ShardedBatchSampler`).
        * ``Dataset``: a ``DataLoader(dataset, batch_size, sampler=DistributedSampler)``.
        * ``MinibatchSource``: returned as is; read it with ``**ctx.partition``.

        Every rank gets the same number of batches (``DistributedSampler`` repeats a few
        samples when the dataset does not divide evenly, as in PyTorch). Call
        :meth:`set_epoch` at the start of every epoch so each epoch shuffles anew.
        """
        if not self.enabled:
            return data
        if isinstance(data, DataLoader):
            return self._shard_loader(data, shuffle, seed)
        if isinstance(data, IterableDataset):
            raise TypeError("an IterableDataset cannot be sharded by index; split it by "
                            "torch.distributed.get_rank() inside its __iter__")
        if isinstance(data, Dataset):
            if batch_size is None:
                raise ValueError("shard(dataset) needs batch_size (samples per process)")
            sampler = DistributedSampler(data, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=bool(shuffle), seed=seed)
            return DataLoader(data, batch_size=batch_size, sampler=sampler)
        if hasattr(data, "next_minibatch"):
            return data
        raise TypeError(f"cannot shard {type(data).__name__}: give a DataLoader, a Dataset or "
                        f"a MinibatchSource")

    def _shard_loader(self, loader: DataLoader, shuffle: bool | None, seed: int) -> DataLoader:
        if isinstance(loader.dataset, IterableDataset):
            raise TypeError("a DataLoader over an IterableDataset cannot be sharded by index; "
                            "split the stream by torch.distributed.get_rank() in its __iter__")
        common = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator,
                      persistent_workers=loader.persistent_workers and loader.num_workers > 0)
        if loader.num_workers > 0:
            common["prefetch_factor"] = loader.prefetch_factor
        batch_sampler = loader.batch_sampler
        if batch_sampler is not None and not isinstance(batch_sampler, BatchSampler):
            sharded = ShardedBatchSampler(batch_sampler, self.world_size, self.rank)
            return DataLoader(loader.dataset, batch_sampler=sharded, **common)
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            return loader
        if not isinstance(sampler, (RandomSampler, SequentialSampler)):
            raise TypeError(f"cannot shard a DataLoader with a {type(sampler).__name__}: give "
                            f"it shuffle=True/False, or shard the data yourself")
        if shuffle is None:
            shuffle = isinstance(sampler, RandomSampler)
        drop_last = loader.drop_last if loader.batch_size is not None else False
        distributed = DistributedSampler(loader.dataset, num_replicas=self.world_size,
                                         rank=self.rank, shuffle=shuffle, seed=seed,
                                         drop_last=drop_last)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=distributed,
                          drop_last=drop_last, **common)

    def shard_feed(self, feed: Any) -> Any:
        """This rank's share of one of the trainer's feeds (:mod:`rnnkit.training.batches`).

        * a ``DataLoader``/``Dataset`` feed reads through a ``DistributedSampler`` (see
          :meth:`shard`); the feed calls ``set_epoch`` at every pass;
        * tensor data deals its batches out: rank ``r`` takes batches ``r, r + N, ...`` of
          the shuffled pass (every rank draws the same shuffle from the seed), and the last
          ``len % N`` batches of a pass are left out so every rank does as many updates;
        * a ``MinibatchSource`` is read with ``num_data_partitions``/``partition_index``;
          the ranks agree after each minibatch on the end of a sweep and of the data;
        * ``StatefulBatches`` carry each row's state from one batch to the next, which
          dealing batches out would break: refused (use a ``MinibatchSource`` with
          ``truncation_length`` instead).

        ``batch_size`` stays per process, as in PyTorch (the ranks together take N times as
        many samples per update); a ``MinibatchSource``'s size counts all ranks, as in CNTK.
        """
        if not self.enabled:
            return feed
        from rnnkit.training.batches import LoaderFeed, SourceFeed, StatefulFeed, TensorFeed
        if isinstance(feed, (_DealtFeed, _PartitionedSource)) or isinstance(
                getattr(feed, "source", None), _PartitionedSource):
            return feed
        if isinstance(feed, LoaderFeed):
            if feed.iterable:
                raise TypeError("a DataLoader over an IterableDataset cannot be sharded by "
                                "index; split the stream by torch.distributed.get_rank() in "
                                "its __iter__")
            feed.loader = self.shard(feed.loader, seed=feed.seed)
            return feed
        if isinstance(feed, SourceFeed):
            feed.source = _PartitionedSource(feed.source, self)
            return feed
        if isinstance(feed, TensorFeed):
            if feed.num_batches() < self.world_size:
                raise ValueError(f"the tensor data makes {feed.num_batches()} batches of "
                                 f"{feed.batch_size}, fewer than the {self.world_size} "
                                 f"processes: give a smaller batch_size")
            return _DealtFeed(feed, self.world_size, self.rank)
        if isinstance(feed, StatefulFeed):
            raise TypeError("StatefulBatches carry each row's state across batches and cannot "
                            "be split over processes; use a MinibatchSource with "
                            "truncation_length (partitioned by rank) for data parallel TBPTT")
        raise TypeError(f"cannot shard a {type(feed).__name__} over {self.world_size} "
                        f"processes")

    @staticmethod
    def set_epoch(data: Any, epoch: int) -> None:
        """Tell a sharded loader's sampler which epoch starts (its shuffle depends on it)."""
        loader = data
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    # -- collectives ----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over every rank (``"sum"`` or ``"max"``); a new tensor on the
        input's device and dtype. Every rank must call it, in the same order."""
        if not self.enabled:
            return tensor
        self.init()
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if op not in ops:
            raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
        # gloo reduces CPU tensors, nccl CUDA tensors; float64/int64 keep sums exact
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        work = tensor.detach().to(device=device, copy=True)
        if work.dtype == torch.bool:
            work = work.to(torch.int64)
        dist.all_reduce(work, op=ops[op])
        return work.to(device=tensor.device, dtype=tensor.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one (stop together)."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_reduce(torch.tensor([int(bool(flag))]), op="max")[0])

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. rank 0 has written a checkpoint)."""
        if self.enabled:
            self.init()
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


class _PartitionedSource:
    """A ``MinibatchSource`` read as one of ``world_size`` partitions (CNTK's
    ``num_data_partitions``/``partition_index``); after each minibatch the ranks agree on
    the end of a sweep and of the data, so none waits for a gradient that never comes."""

    def __init__(self, source: Any, ctx: DistributedContext) -> None:
        self._source = source
        self._ctx = ctx

    def next_minibatch(self, minibatch_size_in_samples: int, **kwargs: Any) -> Any:
        mb = self._source.next_minibatch(minibatch_size_in_samples,
                                         **{**kwargs, **self._ctx.partition})
        flags = torch.tensor([int(not mb), int(bool(mb) and mb.end_of_sweep)])
        empty, end_of_sweep = self._ctx.all_reduce(flags, op="max").tolist()
        if empty:  # another rank has run out: the data ends here for every rank
            return type(mb)({}, {})
        if end_of_sweep:
            for data in mb.values():
                data.end_of_sweep = True
        return mb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class _DealtFeed:
    """A tensor feed whose batches are dealt out: rank ``r`` gets batches ``r, r + N, ...``
    of each pass; an incomplete last round is left out. Position and state are the inner
    feed's (the same on every rank), so a checkpoint written by rank 0 resumes every rank."""

    def __init__(self, inner: Any, world_size: int, rank: int) -> None:
        self.inner = inner
        self.world_size = world_size
        self.rank = rank
        self.stateful = inner.stateful
        self.seed = inner.seed

    @property
    def exhausted(self) -> bool:
        return self.inner.exhausted

    @property
    def pass_index(self) -> int:
        return self.inner.pass_index

    @property
    def batch_index(self) -> int:
        return self.inner.batch_index // self.world_size

    def describe(self) -> str:
        # the same on every rank: a checkpoint written by rank 0 names the data all ranks read
        return self.inner.describe()

    def num_batches(self) -> int | None:
        n = self.inner.num_batches()
        return None if n is None else n // self.world_size

    def next_batch(self) -> Any:
        mine = None
        for turn in range(self.world_size):
            batch = self.inner.next_batch()
            if batch is None:  # the pass ended (an incomplete last round is left out)
                return None
            if turn == self.rank:
                mine = batch
        return mine

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.inner.load_state_dict(state)

    def restart(self) -> None:
        self.inner.restart()
