"""Where training runs: this process's rank and device, DDP under ``torchrun``, data sharding, collectives.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every method is
a cheap no-op, so the learner calls them unconditionally.

Under ``torchrun`` (see ``docs/distributed.md``) :func:`from_environment`
checks the rendezvous variables, joins the process group (NCCL when CUDA is
present, gloo otherwise) and pins this process to GPU ``LOCAL_RANK``. The
learner then

- wraps the model in ``DistributedDataParallel`` (:meth:`DistributedContext.wrap`),
  which broadcasts rank 0's weights at construction and averages gradients;
- splits every global batch of the training loader across ranks, from the one
  order a single process would draw (:func:`shard_train_loader`: every rank gets
  the same number of batches, so every rank computes the same schedule), and the
  validation loader over :class:`ShardSampler` (each sample on exactly one rank,
  no padding), see :meth:`DistributedContext.shard_data`;
- validates the unwrapped model on its shard with rank 0's buffers (BatchNorm
  statistics) and sums loss and metric totals over ranks, so every rank gets the
  exact full-set values;
- prints, plots and writes files on rank 0 only (``learn.is_main_process``).

Nothing here assumes one node: ``RANK`` decides rank-0 duties, ``LOCAL_RANK``
the device.
"""
from __future__ import annotations

import atexit
import datetime
import contextlib
import copy
import hashlib
import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .loaders import GlobalOrderSampler, ShardSampler, TensorLoader, check_last_batch

if TYPE_CHECKING:  # pragma: no cover
    from .data import ModelData

#: Environment variables ``torchrun`` sets that a distributed run cannot start without.
RENDEZVOUS_VARIABLES: tuple[str, ...] = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK")

#: Seed of the training ``DistributedSampler``: identical on every rank, so shards are disjoint.
SAMPLER_SEED = 0


class DistributedContext:
    """Rank, world size and the collective operations the learner needs."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0, backend: str | None = None) -> None:
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.backend = backend

    @property
    def enabled(self) -> bool:
        """True when running with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that prints, plots and writes files)."""
        return self.rank == 0

    @property
    def collective_device(self) -> torch.device:
        """Device of the small tensors exchanged by :meth:`any_rank` (NCCL needs them on the GPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ model and data
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to train with: ``DistributedDataParallel`` around ``model`` when distributed."""
        if not self.enabled:
            return model
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError(
                f"device={str(device)!r} under torchrun, but the process group uses NCCL (GPU only); train on the GPU "
                "(leave device=None), or call torch.distributed.init_process_group('gloo') before building the Learner"
            )
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard_data(self, data: "ModelData") -> "ModelData":
        """``data`` with its loaders split across ranks (a shallow copy; ``data`` itself is left alone)."""
        if not self.enabled:
            return data
        sharded = copy.copy(data)
        sharded.trn_dl = shard_train_loader(data.trn_dl, self.world_size, self.rank, "trn_dl")
        if data.val_dl is not None:
            sharded.val_dl = shard_eval_loader(data.val_dl, self.world_size, self.rank, "val_dl")
        return sharded

    # ------------------------------------------------------------------ collectives
    def no_sync(self, model: nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-batches that are not the last."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place when distributed)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one: a decision all ranks agree on.

        Used wherever one rank's observation must stop every rank at the same
        step (e.g. an LR finder's divergence test), since a rank that stops alone
        leaves the others waiting in a collective forever. One tiny all-reduce
        (a host sync) per call when distributed; free otherwise.
        """
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.collective_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()


# ---------------------------------------------------------------------- environment


def from_environment() -> DistributedContext:
    """The context ``torchrun`` describes in the environment; joins the process group when distributed.

    ``WORLD_SIZE`` absent or 1: a single-process context (no process group).
    Otherwise ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``LOCAL_RANK`` must
    be set (``torchrun`` sets them all); a missing one is a ``ValueError``
    naming it, raised before anything is trained. The backend is NCCL when CUDA
    is available, gloo otherwise; a process group the script already
    initialised is reused.
    """
    world_size = _env_int("WORLD_SIZE", "1", minimum=1)
    if world_size == 1:
        return DistributedContext()
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for a distributed run, but the environment variable(s) "
            f"{', '.join(missing)} are not set; launch with torchrun (it sets {', '.join(RENDEZVOUS_VARIABLES)} "
            "and WORLD_SIZE), or set them yourself, or unset WORLD_SIZE for a single process"
        )
    rank = _env_int("RANK", minimum=0)
    local_rank = _env_int("LOCAL_RANK", minimum=0)
    if rank >= world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}); got RANK={rank}")
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} asks for a distributed run, but this torch build has no torch.distributed")
    if dist.is_initialized():
        if (dist.get_world_size(), dist.get_rank()) != (world_size, rank):
            raise ValueError(
                f"the initialised process group (world size {dist.get_world_size()}, rank {dist.get_rank()}) "
                f"disagrees with WORLD_SIZE={world_size}, RANK={rank}"
            )
        return DistributedContext(world_size, rank, local_rank, dist.get_backend())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank)
    atexit.register(_destroy_process_group)
    return DistributedContext(world_size, rank, local_rank, backend)


def _env_int(name: str, default: str | None = None, minimum: int = 0) -> int:
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}; got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}; got {value}")
    return value


#: How long a rank waits at exit for the others before tearing its process group down anyway.
EXIT_BARRIER_TIMEOUT_S = 60


def _destroy_process_group() -> None:
    """At interpreter exit: meet the other ranks, then destroy the process group.

    Tearing a gloo group down while a peer is still finishing its last
    collective can abort the process ("terminate called without an active
    exception", seen about one exit in ten on a busy CPU). A monitored barrier
    first lets every rank finish; its timeout keeps a rank whose peer crashed
    from waiting forever.
    """
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=EXIT_BARRIER_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - torch raises several types here
            pass  # a peer is gone: nothing left to wait for
    dist.destroy_process_group()


# ---------------------------------------------------------------------- sharding


def shard_train_loader(dl: DataLoader | TensorLoader, world_size: int, rank: int,
                       name: str = "trn_dl") -> DataLoader | TensorLoader:
    """Rank ``rank``'s share of every global batch of the one order a single process would draw.

    ``dl``'s ``batch_size`` is the per-rank batch; the global batch is
    ``world_size * batch_size`` (see :mod:`clrfit.loaders` and
    ``docs/distributed.md``, "Data order"). Shuffled or not, the ranks' batch
    ``j`` together is batch ``j`` of one process with the global batch: a
    :class:`~clrfit.loaders.TensorLoader` is sharded with its generator's
    state, a torch ``DataLoader`` is rebuilt over a
    :class:`~clrfit.loaders.GlobalOrderSampler` that draws the permutation as
    ``RandomSampler`` does. Under an initialised process group the ranks'
    random states are compared first: ranks that would draw different orders
    are a ``ValueError``. A loader already over a ``DistributedSampler`` (or an
    already sharded ``TensorLoader``) is returned unchanged.
    """
    if isinstance(dl, TensorLoader):
        if dl.world_size > 1 or dl.indices is not None:
            return dl
        if dl.draws and dl.seed is None:  # each epoch's seed comes from the global torch RNG
            _check_ranks_agree(name, torch.get_rng_state(), "the global torch RNG (torch.manual_seed)")
        elif dl.draws:
            _check_ranks_agree(name, dl.generator.get_state(), "its generator")
        return dl.train_shard(world_size, rank, name)
    if isinstance(dl.sampler, DistributedSampler):
        return dl
    shuffle = _is_shuffled(dl, name)
    check_last_batch(name, len(dl.dataset), dl.batch_size, world_size, dl.drop_last)
    generator = dl.sampler.generator if shuffle else None
    if generator is not None:
        _check_ranks_agree(name, generator.get_state(), "its generator")
    elif shuffle:  # the permutation's seed comes from the global torch RNG
        _check_ranks_agree(name, torch.get_rng_state(), "the global torch RNG (torch.manual_seed)")
    sampler = GlobalOrderSampler(dl.dataset, world_size, rank, dl.batch_size, shuffle, dl.drop_last, generator)
    return DataLoader(dl.dataset, sampler=sampler, **_loader_options(dl))


def shard_eval_loader(dl: DataLoader | TensorLoader, world_size: int, rank: int,
                      name: str = "val_dl") -> DataLoader | TensorLoader:
    """``dl`` over samples ``rank, rank + W, ...``: each sample evaluated on exactly one rank, in order."""
    if isinstance(dl, TensorLoader):
        if dl.shuffle:
            raise ValueError(f"{name}: a shuffled TensorLoader cannot be an evaluation loader; pass shuffle=False")
        return dl if dl.world_size > 1 or dl.indices is not None else dl.eval_shard(world_size, rank)
    if isinstance(dl.sampler, (DistributedSampler, ShardSampler)):
        return dl
    _is_shuffled(dl, name)
    sampler = ShardSampler(len(dl.dataset), world_size, rank)
    return DataLoader(dl.dataset, sampler=sampler, **_loader_options(dl))


def _check_ranks_agree(name: str, state: torch.Tensor, source: str) -> None:
    """Under a process group, every rank must hold the same random state: else their orders differ (an error on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, hashlib.sha1(state.cpu().numpy().tobytes()).hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ValueError(
            f"{name}: rank(s) {differ} hold a different random state in {source} than rank 0, so the ranks would "
            "draw different data orders; seed every rank alike before building the data and the Learner "
            "(torch.manual_seed(seed), the same seed on every rank), or give the loader a seeded generator"
        )


def _is_shuffled(dl: DataLoader, name: str) -> bool:
    if isinstance(dl.dataset, IterableDataset):
        raise ValueError(
            f"{name}: an IterableDataset cannot be sharded across ranks by clrfit; "
            "have the dataset yield only this rank's samples and give the loader a DistributedSampler-like split yourself"
        )
    if dl.batch_size is None or type(dl.batch_sampler) is not BatchSampler:
        raise ValueError(
            f"{name}: a loader with a custom batch_sampler cannot be re-sharded; build it over a "
            "torch.utils.data.distributed.DistributedSampler yourself and clrfit will use it as it is"
        )
    if isinstance(dl.sampler, RandomSampler):
        if dl.sampler.replacement or dl.sampler._num_samples is not None:
            raise ValueError(f"{name}: a RandomSampler with replacement or num_samples cannot be sharded; "
                             "give the loader a DistributedSampler yourself")
        return True
    if isinstance(dl.sampler, SequentialSampler):
        return False
    raise ValueError(
        f"{name}: cannot shard a loader with sampler {type(dl.sampler).__name__} across ranks; "
        "use shuffle=True/False, or build it over a DistributedSampler yourself"
    )


def _loader_options(dl: DataLoader) -> dict:
    """Everything that defines ``dl`` except its dataset and sampler."""
    options = dict(
        batch_size=dl.batch_size, drop_last=dl.drop_last, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
        pin_memory=dl.pin_memory, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
        multiprocessing_context=dl.multiprocessing_context, generator=dl.generator,
    )
    if dl.num_workers > 0:
        options.update(prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers)
    if getattr(dl, "pin_memory_device", ""):
        options["pin_memory_device"] = dl.pin_memory_device
    return options


# ---------------------------------------------------------------------- memory layout


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to train ``model`` in channels_last layout: on CUDA, for models with 2-d convolutions."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
