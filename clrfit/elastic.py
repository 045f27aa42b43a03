"""Elastic resume: a checkpoint written on ``W`` ranks continues on ``W'`` ranks (1 included).

What makes it possible is the world-size-invariant data order
(:mod:`clrfit.loaders`): with per-rank batch ``b = G / W`` every rank takes its
slice of global batch ``j`` of the one permutation a single process draws, so the
position of a fit in its data is the same number on any world size: the epoch,
the optimizer steps done in it (``batch_index``), and the random state the
epoch's permutation is drawn from. Those are global, and a checkpoint already
stores them once (``counters``, ``epoch_rng_state``, ``loader_generators``).

What is per rank (``per_rank`` in the file): each rank's RNG streams, its
loaders' generators and its callback states (its own training losses). Under
the invariant order the ranks' random states agree (the sharding checks it), so
on another world size every rank continues rank 0's: :func:`own_state`.

What cannot be honoured, and is a ``ValueError`` naming both sides
(:func:`check_world_size`): a global batch ``b' * W'`` other than the
checkpoint's ``b * W`` (the sequence of global batches would change), a global
batch that ``W'`` ranks cannot split evenly, and a loader whose order depends on
the world size (a ``DistributedSampler`` of the user's own).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data.distributed import DistributedSampler

from .loaders import GlobalOrderSampler

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

#: Setup entries that may differ between the writing run and the resuming one when the global batch agrees.
ELASTIC_KEYS: tuple[str, ...] = ("world_size", "batch_size", "global_batch", "data_order")


def run_shape(learn: "Learner") -> dict[str, Any]:
    """``batch_size`` (per rank), ``global_batch`` (per rank x ranks) and ``data_order`` of a learner's training loader."""
    dl = learn.data.trn_dl
    batch_size = getattr(dl, "batch_size", None)
    world_size = learn.dist.world_size
    return {"batch_size": batch_size, "global_batch": None if batch_size is None else batch_size * world_size,
            "data_order": data_order(dl, world_size)}


def data_order(dl: Any, world_size: int) -> str:
    """``"global"`` when ``dl`` serves its share of the single-process order, else ``"per-world-size"``."""
    sampler = getattr(dl, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not isinstance(sampler, GlobalOrderSampler):
        return "per-world-size"  # torch's DistributedSampler: its shuffle depends on the number of replicas
    return "global"


def divisors(n: int) -> list[int]:
    """The world sizes that split a global batch of ``n`` evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_world_size(saved: dict[str, Any], now: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(saved, now)`` setups to compare, without the world-size entries when the change can be honoured.

    Same world size (or a checkpoint from before elastic resume): unchanged, so
    every entry is compared as before. Another world size: ``ValueError`` unless
    both runs draw the global order and ``now``'s global batch is the checkpoint's.
    """
    w_saved, w_now = saved.get("world_size"), now.get("world_size")
    if "global_batch" not in saved:  # written before elastic resume: compare what it holds, as it was compared then
        return saved, _without(now, ELASTIC_KEYS[1:])
    if w_saved == w_now:
        return saved, now
    g_saved, b_saved = saved["global_batch"], saved["batch_size"]
    g_now, b_now = now["global_batch"], now["batch_size"]
    where = f"the checkpoint was written by {w_saved} rank(s) and this run has {w_now}"
    for name, setup in (("the checkpoint's", saved), ("this run's", now)):
        if setup.get("data_order") != "global":
            raise ValueError(
                f"resume: {where}, but {name} training loader has a DistributedSampler of its own, whose order "
                f"depends on the number of ranks; resume with {w_saved} rank(s), or let clrfit shard a plain "
                "shuffled loader (its order is the same on any number of ranks)"
            )
    if g_saved is None or g_now is None:
        raise ValueError(f"resume: {where}, but the training loader has no batch_size, so the global batch is unknown")
    if g_saved % w_now:
        raise ValueError(
            f"resume: {where}; the checkpoint's global batch of {g_saved} ({b_saved} per rank x {w_saved}) cannot be "
            f"split evenly over {w_now} ranks (per-rank batch {g_saved}/{w_now} is not an integer); resume on a number "
            f"of ranks that divides {g_saved}: {', '.join(map(str, divisors(g_saved)))}"
        )
    if g_now != g_saved:
        raise ValueError(
            f"resume: {where}; its global batch is {g_saved} ({b_saved} per rank x {w_saved}) but this run's is "
            f"{g_now} ({b_now} per rank x {w_now}); with {w_now} rank(s) build the data with "
            f"bs={g_saved // w_now} per rank"
        )
    return _without(saved, ELASTIC_KEYS), _without(now, ELASTIC_KEYS)


def _without(setup: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in setup.items() if k not in keys}


def own_state(per_rank: list[dict[str, Any]] | None, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's entry of a checkpoint's ``per_rank`` list; rank 0's on another world size (None: nothing per rank)."""
    if not per_rank:
        return None
    return per_rank[rank] if len(per_rank) == world_size else per_rank[0]
