"""``Learner(..., strategy="fsdp")``: PyTorch's FSDP2 (``fully_shard``) instead of DDP, with sharded checkpoints.

Under ``torchrun`` :class:`FSDPRuntime` shards the model's parameters, gradients
and optimizer state over the ranks instead of replicating them: every direct
child module that owns parameters becomes one FSDP unit (its parameters are
all-gathered just before its forward and backward and freed after), then the root
(what is left). Rank 0's initial weights are broadcast first, as DDP does, so
the ranks start from one model whatever their seeds. Everything else is what the
DDP path does (see ``docs/distributed.md``): the same global data order, the same
schedule on every rank, accumulation (the gradient reduce-scatter runs on the last
micro-batch only: ``set_requires_gradient_sync``), fp16 / bf16 autocast (fp16
through ``ShardedGradScaler``, whose inf check is agreed on by every rank), and
range tests whose losses are all-reduced, so every rank gets one answer.

Two things differ because every forward pass is a collective:

- validation: every rank must run the same number of forward passes, so a rank
  whose shard has fewer batches runs extra :class:`PaddingBatch` es whose
  results count zero (:class:`EvenBatches`); the totals stay exact. A loader
  passed to ``learn.validate(dl)`` yourself must give every rank as many batches.
- checkpoints: the model and optimizer state go through
  ``torch.distributed.checkpoint`` (every rank writes its shards to
  ``<checkpoint>.dcp-<iteration>/``, the checkpoint file names that folder), so a
  checkpoint reshards on load: it resumes on another number of ranks, or in one
  process without FSDP (:func:`model_state`, :func:`load_model_state`).

In one process (no ``WORLD_SIZE`` > 1) ``strategy="fsdp"`` trains the plain model,
as ``"ddp"`` does.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistributedContext
from .runtime import Runtime
from .validation import STRATEGIES, check_choice

if TYPE_CHECKING:  # pragma: no cover
    from .data import ModelData
    from .learner import Learner


def make_runtime(strategy: str, model: nn.Module, device: str | torch.device | None, precision: str,
                 batch_fn: Callable[[Any], tuple[Any, Any]] | None = None) -> Runtime:
    """The runtime for ``strategy``: ``"ddp"`` (replicate the model, the default) or ``"fsdp"`` (shard it)."""
    check_choice("strategy", strategy, STRATEGIES)
    kind = FSDPRuntime if strategy == "fsdp" else Runtime
    return kind(model, device, precision, batch_fn)


class FSDPRuntime(Runtime):
    """A :class:`~clrfit.runtime.Runtime` whose model is sharded with ``fully_shard`` when distributed."""

    def __init__(self, model: nn.Module, device: str | torch.device | None, precision: str,
                 batch_fn: Callable[[Any], tuple[Any, Any]] | None = None) -> None:
        super().__init__(model, device, precision, batch_fn)
        self.dist = FSDPContext(self.dist.world_size, self.dist.rank, self.dist.local_rank, self.dist.backend)
        self._new_params: dict[int, nn.Parameter] = {}
        if self.dist.enabled and self.precision.scaler is not None:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler  # lazy: seconds to import

            # Each rank sees only its shards' gradients: the inf check must be agreed on, or ranks would disagree on skipping.
            self.precision.scaler = ShardedGradScaler(self.device.type)

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and, when distributed, shard it (its parameters are replaced by sharded ones)."""
        model = super().place(model)
        if not self.dist.enabled:
            return model
        from torch.distributed.fsdp import fully_shard  # lazy: seconds to import, needed only here

        old = {name: p for name, p in model.named_parameters()}
        with torch.no_grad():  # one starting model on every rank, as DDP makes it
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, src=0)
        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
        new = dict(model.named_parameters())
        self._new_params = {id(p): new[name] for name, p in old.items()}
        return model

    def regroup(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Param groups built before sharding, with each parameter replaced by its sharded successor."""
        if not self._new_params:
            return groups
        return [{**g, "params": [self._new_params.get(id(p), p) for p in g["params"]]} for g in groups]

    def prepare(self, model: nn.Module) -> None:
        """The sharded model trains and evaluates itself: there is no separate wrapper."""
        self.model = self.wrapped = model

    def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient reduce-scatter on accumulation micro-batches that are not the last."""
        if not self.dist.enabled:
            return super().micro_step(model, last)
        return _gradient_sync(self.model, last)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Any, crit: Callable, metrics: Sequence[Callable]) -> torch.Tensor:
        """As :meth:`Runtime.evaluate`; a :class:`PaddingBatch` runs the forward pass (a collective) and counts zero."""
        if isinstance(batch, PaddingBatch):
            xb, yb = self.to_device(batch.batch)
            self.forward(model, xb, yb, crit)
            return torch.zeros(2 + len(metrics), device=self.device, dtype=torch.float64)
        return super().evaluate(model, batch, crit, metrics)


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class FSDPContext(DistributedContext):
    """:class:`~clrfit.distributed.DistributedContext` whose validation loader gives every rank the same batch count."""

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model itself: ``fully_shard`` already made it distributed."""
        return model

    def shard_data(self, data: "ModelData") -> "ModelData":
        """As DDP shards it, with the validation loader padded to the most batches any rank has."""
        sharded = super().shard_data(data)
        if self.enabled and sharded.val_dl is not None:
            sharded.val_dl = EvenBatches(sharded.val_dl, self.max_over_ranks(len(sharded.val_dl)))
        return sharded

    def max_over_ranks(self, n: int) -> int:
        """The largest ``n`` of any rank (one tiny all-reduce, on the GPU under NCCL)."""
        value = torch.tensor([n], dtype=torch.int64, device=self.collective_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())


class PaddingBatch:
    """A batch a rank evaluates only so that every rank runs the same forward passes; it counts zero."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch


class EvenBatches:
    """``dl``'s batches, then copies of its first one marked :class:`PaddingBatch` up to ``n_batches``."""

    def __init__(self, dl: Any, n_batches: int) -> None:
        self.dl, self.n_batches = dl, n_batches

    def __len__(self) -> int:
        return self.n_batches

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, sampler...: the loader's own
        if name == "dl":
            raise AttributeError(name)
        return getattr(self.dl, name)

    def __iter__(self) -> Iterator[Any]:
        first = None
        served = 0
        for batch in self.dl:
            first = batch if first is None else first
            served += 1
            yield batch
        if served < self.n_batches and first is None:  # this rank's shard is empty
            first = _one_sample(self.dl)
        for _ in range(self.n_batches - served):
            yield PaddingBatch(first)


def _one_sample(dl: Any) -> Any:
    """A batch of the dataset's first sample, for a rank whose shard is empty."""
    sample = dl.dataset[0]
    if isinstance(sample, dict):
        return {k: torch.as_tensor(v).unsqueeze(0) for k, v in sample.items()}
    return tuple(torch.as_tensor(v).unsqueeze(0) for v in sample)


# ---------------------------------------------------------------------- checkpoints


def is_sharded(learn: "Learner") -> bool:
    """Whether the learner's model is sharded (FSDP under torchrun): its state is written with DCP."""
    return isinstance(learn.runtime, FSDPRuntime) and learn.dist.enabled


def refuse_sharded(learn: "Learner", what: str) -> None:
    """``ValueError`` for ``what`` (a plain state-dict file) when the model is sharded: each rank holds only its shards."""
    if is_sharded(learn):
        raise ValueError(
            f"{what} writes a plain state dict, but under strategy='fsdp' each rank holds only its shards of the model; "
            "use fit(..., checkpoint=PATH), which writes sharded checkpoints that load on any number of ranks"
        )


def model_state(learn: "Learner", path: Path, iteration: int) -> dict[str, Any]:
    """What a checkpoint file holds for model and optimizer: the state dicts, or, sharded, the DCP folder it wrote.

    Sharded, every rank writes its shards to ``<path>.dcp-<iteration>/`` (a new
    folder, so the file on disk keeps naming a complete one until it is replaced).
    """
    if not is_sharded(learn):
        return {"model": learn.model.state_dict(), "opt": learn.opt.state_dict()}
    import torch.distributed.checkpoint as dcp  # lazy: seconds to import, needed only for sharded state
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = path.with_name(f"{path.name}.dcp-{iteration}")
    model_sd, opt_sd = get_state_dict(learn.model, learn.opt)
    dcp.save({"model": model_sd, "opt": opt_sd}, checkpoint_id=str(folder))
    return {"model": {}, "opt": {}, "sharded": folder.name}


def remove_old_shards(path: Path, keep: str | None) -> None:
    """Delete the DCP folders of ``path`` other than ``keep`` (rank 0, after the file naming ``keep`` is written)."""
    for folder in path.parent.glob(f"{path.name}.dcp-*"):
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def load_model_state(learn: "Learner", state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's model and optimizer state: plain state dicts, or the DCP folder it names (resharded)."""
    folder = state.get("sharded")
    if not folder:
        learn.model.load_state_dict(state["model"])
        learn.opt.load_state_dict(state["opt"])
        return
    import torch.distributed.checkpoint as dcp  # lazy: seconds to import, needed only for sharded state
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, opt_sd = get_state_dict(learn.model, learn.opt)  # this run's layout: DCP reads into it
    target = {"model": model_sd, "opt": opt_sd}
    dcp.load(target, checkpoint_id=str(path.with_name(folder)))
    set_state_dict(learn.model, learn.opt, model_state_dict=target["model"], optim_state_dict=target["opt"])
