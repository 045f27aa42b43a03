"""Fast in-memory loading: :class:`TensorLoader`, whole-batch image transforms, and one data order for any world size.

:class:`TensorLoader` serves tensors that already sit in memory (CPU or GPU)
by slicing whole batches: per epoch it draws one permutation from its own
seeded ``torch.Generator`` (``.generator``), then each batch is one gather per
tensor, with no per-sample indexing or collation. It behaves like a
``DataLoader`` where clrfit and most user code look (``len()``, iteration,
``.dataset``, ``.batch_size``, ``.drop_last``, ``.sampler``, ``.generator``).

The data order of one epoch, on one process or on ``W`` ranks
(``global_batch_spans``): the permutation ``p`` of the ``n`` samples is cut into
global batches of ``G = W * batch_size`` samples. Rank ``r`` takes positions
``[r * batch_size, (r + 1) * batch_size)`` of every full global batch; a short
last global batch of ``L`` samples is split as evenly as possible (the first
``L % W`` ranks get one sample more), and ``drop_last`` drops it as one
process would. So the ranks' batch ``j`` together is exactly batch ``j`` of a
single process with batch ``G``, drawn from the same generator.
:class:`GlobalOrderSampler` applies the same rule to a torch ``DataLoader``,
drawing its permutation exactly as ``RandomSampler`` does.

Resuming: every epoch's order (and every random augmentation) is drawn from the
generator at the start of the epoch, so restoring the generator to that state
and skipping the batches already done replays the epoch bit for bit, which is
what ``clrfit.checkpoint`` does. ``state_dict()`` / ``load_state_dict()`` hold
the same thing (epoch, position, generator state) for code that prefers it.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .validation import LOADERS, check_bool, check_choice, check_int, check_number


def choose_loader(loader: str | None, num_workers: Any) -> str:
    """The loader that in-memory data gets: ``loader``, else ``"tensor"``, or ``"torch"`` when ``num_workers > 0``.

    Worker processes only exist for a torch ``DataLoader``, so asking for them
    (``num_workers > 0``) without naming a loader picks the DataLoader path;
    ``loader="tensor"`` with workers is a contradiction and raises.
    """
    num_workers = check_int("num_workers", num_workers, minimum=0)
    if loader is None:
        return "torch" if num_workers else "tensor"
    check_choice("loader", loader, LOADERS, " (or None: 'tensor', or 'torch' when num_workers > 0)")
    if loader == "tensor" and num_workers:
        raise ValueError(f"num_workers={num_workers} with loader='tensor': the tensor loader slices memory in the "
                         "training process and runs no workers; pass num_workers=0, or loader='torch' (or leave "
                         "loader=None) for a DataLoader with worker processes")
    return loader


# ---------------------------------------------------------------------- the data order


def global_batch_spans(n: int, batch_size: int, world_size: int = 1, rank: int = 0,
                       drop_last: bool = False) -> list[tuple[int, int]]:
    """``(start, end)`` positions in the epoch's order of each batch rank ``rank`` serves (module docstring)."""
    global_bs = batch_size * world_size
    spans = []
    for start in range(0, n, global_bs):
        size = min(global_bs, n - start)
        if size < global_bs and drop_last:
            break
        if size == global_bs:
            lo = start + rank * batch_size
            spans.append((lo, lo + batch_size))
            continue
        q, extra = divmod(size, world_size)
        lo = start + rank * q + min(rank, extra)
        spans.append((lo, lo + q + (rank < extra)))
    return spans


def check_last_batch(name: str, n: int, batch_size: int, world_size: int, drop_last: bool) -> None:
    """A short last global batch must give every rank at least one sample (an empty batch has no mean loss)."""
    last = n % (batch_size * world_size)
    if world_size > 1 and not drop_last and 0 < last < world_size:
        raise ValueError(
            f"{name}: {n} samples in global batches of {batch_size} x {world_size} ranks leave a last batch of "
            f"{last} sample(s), fewer than the {world_size} ranks, so some rank would get an empty batch; "
            "pass drop_last=True, or choose a batch size or sample count that leaves at least one sample per rank"
        )


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One int64 from ``generator`` (default: the global torch RNG), drawn the way torch's samplers draw seeds."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class GlobalOrderSampler(DistributedSampler):
    """This rank's share of the single-process order, for a torch ``DataLoader`` (module docstring).

    Shuffled, it draws the permutation exactly as ``RandomSampler`` does: from
    ``generator`` if given, else from a generator seeded with one draw from the
    global torch RNG, and it makes the same extra draw at exhaustion, so the
    generator and the global RNG advance as in one process. Ranks must start
    from the same RNG state (``shard_train_loader`` checks). It is a
    ``DistributedSampler`` so that code which recognises a sharded loader
    leaves it alone; ``set_epoch`` is accepted but the order comes from the
    generator, not from the epoch number.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, batch_size: int, shuffle: bool,
                 drop_last: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, drop_last=drop_last)
        self.batch_size, self.generator = batch_size, generator
        self.spans = global_batch_spans(len(dataset), batch_size, num_replicas, rank, drop_last)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        generator = self.generator
        if self.shuffle and generator is None:
            generator = torch.Generator()
            generator.manual_seed(draw_seed())
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else None
        for lo, hi in self.spans:
            yield from (order[lo:hi] if order is not None else range(lo, hi))
        if self.shuffle:
            torch.randperm(n, generator=generator)  # RandomSampler's trailing draw; keeps generators in step

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.spans)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample on exactly one rank, none repeated.

    Unlike ``DistributedSampler`` it never pads, so sums over ranks are exact
    totals; ranks may get different numbers of samples. For evaluation only.
    """

    def __init__(self, n_samples: int, world_size: int, rank: int) -> None:
        self.n_samples, self.world_size, self.rank = n_samples, world_size, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n_samples, self.world_size))


# ---------------------------------------------------------------------- whole-batch transforms


class ImageBatchTransform:
    """Whole-batch image pipeline on ``(B, C, H, W)``: random crop with zero padding, horizontal flip, then scale and normalise.

    ``padding=p`` pads every image with ``p`` zero pixels per side and crops a
    random ``H x W`` window; ``flip=True`` mirrors a random half of the images
    (each with probability 1/2). uint8 input is scaled to ``[0, 1]`` float32
    afterwards (so padding is black, as torchvision's ``RandomCrop(padding=p)``
    on uint8 images), then ``(x - mean) / std`` per channel if ``mean``/``std``
    are given. The random choices for an epoch are drawn in one go from the
    loader's generator (:meth:`draw`), so they are seeded, resumable and the
    same on every rank; the work runs on the device that holds the batch.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 padding: int = 0, flip: bool = False) -> None:
        self.padding = check_int("padding", padding, minimum=0)
        self.flip = check_bool("flip", flip)
        if (mean is None) != (std is None):
            raise ValueError(f"mean and std: pass both or neither; got mean={mean!r}, std={std!r}")
        self.mean = None if mean is None else tuple(check_number(f"mean[{i}]", m) for i, m in enumerate(mean))
        self.std = None if std is None else tuple(check_number(f"std[{i}]", s, minimum=0, exclusive_min=True)
                                                  for i, s in enumerate(std))
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std must have one value per channel each; got {len(self.mean)} and {len(self.std)}")
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def random(self) -> bool:
        """Whether the transform draws random choices (crop offsets or flips)."""
        return self.padding > 0 or self.flip

    def check_input(self, name: str, x: torch.Tensor) -> None:
        """``ValueError`` naming ``name`` unless ``x`` is a ``(N, C, H, W)`` image tensor this transform fits."""
        if x.ndim != 4:
            raise ValueError(f"{name}: ImageBatchTransform needs images of shape (N, C, H, W); got shape {tuple(x.shape)}")
        if self.mean is not None and len(self.mean) != x.shape[1]:
            raise ValueError(f"{name}: mean/std give {len(self.mean)} channel(s) but the images have {x.shape[1]}")
        if not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise ValueError(f"{name}: images must be uint8 or floating point; got {x.dtype}")

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Random choices for ``n`` positions: int64 ``(n, 3)`` = (row offset, column offset, flip), or None."""
        if not self.random:
            return None
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n, 1), generator=generator) if self.flip else torch.zeros(n, 1, dtype=torch.int64)
        return torch.cat([offsets, flips], dim=1)

    def __call__(self, x: torch.Tensor, choices: torch.Tensor | None = None) -> torch.Tensor:
        """The transformed batch; ``choices`` are this batch's rows of :meth:`draw` (on ``x``'s device)."""
        if choices is not None:
            x = self._crop_flip(x, choices)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255)
        if self.mean is not None:
            mean, std = self._tensors(x)
            x = (x - mean) / std
        return x

    def _crop_flip(self, x: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = choices[:, 0:1] + torch.arange(h, device=x.device)  # (B, H) rows of each window
        base = torch.arange(w, device=x.device)
        # A flipped window reads its columns right to left: crop and flip are one gather.
        cols = choices[:, 1:2] + torch.where(choices[:, 2:3].bool(), w - 1 - base, base)
        out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        out = out.permute(0, 3, 1, 2)  # advanced indexing put channels last: this is channels_last memory
        # On CUDA keep it (what the learner trains conv nets in); elsewhere the plain layout.
        return out if x.is_cuda else out.contiguous()

    def _tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._stats:
            shape = (1, -1, 1, 1)
            self._stats[key] = (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
                                torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape))
        return self._stats[key]

    def __repr__(self) -> str:
        return f"ImageBatchTransform(mean={self.mean}, std={self.std}, padding={self.padding}, flip={self.flip})"


# ---------------------------------------------------------------------- the tensor loader


class TensorLoader:
    """Batches of in-memory tensors (same first dimension) by slicing: a drop-in ``trn_dl`` / ``val_dl``.

    ``shuffle``: a new permutation every epoch, drawn from ``.generator``.
    With ``seed=None`` (default) each epoch first reseeds ``.generator`` with
    one draw from the global torch RNG, as ``RandomSampler`` does, so
    ``torch.manual_seed(s)`` before a fit reproduces its order, however often
    the loader was used before. With ``seed=s`` the generator is seeded once
    and its stream runs on from epoch to epoch, independent of the global RNG
    (and of anything else that draws from it, such as dropout);
    ``generator=g`` uses the caller's generator the same way. A loader that
    draws nothing (no shuffle, no random transform) has ``.generator = None``.
    ``drop_last`` drops a short last batch. ``device``: where the tensors (and so every batch) live; no
    copy happens per step when it is the training device. ``transform`` (e.g.
    :class:`ImageBatchTransform`) runs on each whole batch of the first tensor.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 64, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, device: str | torch.device | None = None,
                 transform: ImageBatchTransform | None = None, generator: torch.Generator | None = None) -> None:
        self.tensors = _check_tensors(tensors)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        if transform is not None and not isinstance(transform, ImageBatchTransform):
            raise TypeError(f"transform must be a clrfit.loaders.ImageBatchTransform or None; got {type(transform).__name__}")
        if transform is not None:
            transform.check_input("tensors[0]", self.tensors[0])
        self.transform = transform
        self.seed = None if seed is None else check_int("seed", seed, minimum=0, maximum=2**63 - 1)
        if generator is not None:
            if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
                raise TypeError(f"generator must be a CPU torch.Generator or None; got {generator!r}")
            if seed is not None:
                raise ValueError(f"pass seed or generator, not both; got seed={seed} and a generator")
            self.generator: torch.Generator | None = generator  # the caller's stream, as DataLoader(generator=g)
            self.seed = generator.initial_seed()
        elif self.draws:
            self.generator = torch.Generator().manual_seed(0 if seed is None else self.seed)
        else:
            self.generator = None  # nothing random to draw (as a DataLoader without shuffle has no generator)
        n = len(self.tensors[0])
        if self.drop_last and n < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} with drop_last=True leaves no batch of the {n} samples; "
                             f"pass batch_size <= {n} or drop_last=False")
        if device is not None:
            self.tensors = tuple(t.to(check_device("device", device)) for t in self.tensors)
        self.world_size, self.rank = 1, 0
        self.indices: torch.Tensor | None = None  # a fixed subset in fixed order (an evaluation shard)
        self._eval_shard: tuple[int, int] | None = None  # (world_size, rank) of an evaluation shard
        self.epoch = 0
        self._position = 0  # batches served in the epoch under way
        self._epoch_start: torch.Tensor | None = None
        self._resume_at: int | None = None

    # ------------------------------------------------------------------ DataLoader look-alikes
    @property
    def dataset(self) -> TensorDataset:
        """The tensors as a ``TensorDataset`` (no copy)."""
        return TensorDataset(*self.tensors)

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.tensors[0].device

    @property
    def draws(self) -> bool:
        """Whether an epoch draws anything (a shuffle or random transform choices)."""
        return self.shuffle or (self.transform is not None and self.transform.random)

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all ranks: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    @property
    def sampler(self) -> Sampler[int]:
        """The order as ``DataLoader.sampler`` shows it: a ``ShardSampler`` for an evaluation shard, else a view."""
        if self._eval_shard is not None:  # the same indices in the same order, so code that checks for one works
            return ShardSampler(len(self.tensors[0]), *self._eval_shard)
        return TensorLoaderOrder(self)

    @property
    def num_samples(self) -> int:
        """Samples this loader serves per epoch (on this rank)."""
        return sum(hi - lo for lo, hi in self._spans())

    def __len__(self) -> int:
        return len(self._spans())

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch number (kept in ``state_dict``); the order itself comes from ``.generator``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        start, self._resume_at = self._resume_at, None
        if start is None:  # a new epoch (else: the one load_state_dict restored, from its own generator state)
            start = 0
            if self.seed is None and self.draws and self.generator is not None:
                self.generator.manual_seed(draw_seed())
        self._epoch_start = None if self.generator is None else self.generator.get_state()
        self._position = start
        order, choices = self._draw(self.generator)
        device = self.device
        if order is not None and order.device != device:
            order = order.to(device, non_blocking=True)  # once per epoch
        if choices is not None and choices.device != device:
            choices = choices.to(device, non_blocking=True)
        for lo, hi in self._spans()[start:]:
            if order is None:
                batch = [t[lo:hi] for t in self.tensors]  # views: no copy
            else:
                idx = order[lo:hi]
                batch = [t.index_select(0, idx) for t in self.tensors]
            if self.transform is not None:
                batch[0] = self.transform(batch[0], None if choices is None else choices[lo:hi])
            self._position += 1
            yield tuple(batch)

    def _draw(self, generator: torch.Generator | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This epoch's order (None: identity) and transform choices, from ``generator``."""
        n = len(self.tensors[0])
        if self.indices is not None:
            order = self.indices
        else:
            order = torch.randperm(n, generator=generator) if self.shuffle else None
        n_positions = n if self.indices is None else len(self.indices)
        choices = self.transform.draw(n_positions, generator) if self.transform is not None else None
        return order, choices

    def _spans(self) -> list[tuple[int, int]]:
        n = len(self.tensors[0]) if self.indices is None else len(self.indices)
        key = (n, self.batch_size, self.world_size, self.rank, self.drop_last)
        if self.__dict__.get("_spans_key") != key:  # len() is asked often: compute once per layout
            self._spans_list, self._spans_key = global_batch_spans(*key), key
        return self._spans_list

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``position`` (batches served in the epoch under way) and the generator state it started from."""
        if 0 < self._position < len(self):
            start = None if self._epoch_start is None else self._epoch_start.clone()
            return {"epoch": self.epoch, "position": self._position, "generator": start}
        return {"epoch": self.epoch, "position": 0,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next iteration replays that epoch from ``position``.

        Mid-epoch the replay uses the saved generator state only (with
        ``seed=None`` it does not draw from the global RNG again). At an epoch
        boundary (``position`` 0) the next epoch starts as it would have.
        """
        if not isinstance(state, dict) or not {"epoch", "position", "generator"} <= set(state):
            raise ValueError(f"state must be a dict with epoch, position and generator (from state_dict()); got {state!r}")
        epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        position = check_int("state['position']", state["position"], minimum=0, maximum=len(self))
        g_state = state["generator"]
        if self.generator is None:
            if g_state is not None:
                raise ValueError("state['generator'] holds a generator state, but this loader draws nothing "
                                 "(no shuffle, no random transform) and has no generator")
        elif not isinstance(g_state, torch.Tensor) or g_state.dtype != torch.uint8:
            raise ValueError(f"state['generator'] must be a torch generator state (uint8 tensor); got {type(g_state).__name__}")
        else:
            self.generator.set_state(g_state)
        self.epoch = epoch
        self._resume_at = position or None

    # ------------------------------------------------------------------ copies
    def to(self, device: str | torch.device) -> "TensorLoader":
        """Move the tensors to ``device`` (in place); returns the loader."""
        device = check_device("device", device)
        self.tensors = tuple(t.to(device) for t in self.tensors)
        if self.indices is not None:
            self.indices = self.indices.to(device)
        return self

    def train_shard(self, world_size: int, rank: int, name: str = "trn_dl") -> "TensorLoader":
        """Rank ``rank``'s share of every global batch of ``world_size * batch_size`` (module docstring)."""
        check_last_batch(name, len(self.tensors[0]), self.batch_size, world_size, self.drop_last)
        if self.drop_last and len(self.tensors[0]) < self.batch_size * world_size:
            raise ValueError(f"{name}: drop_last=True with global batches of {self.batch_size} x {world_size} ranks "
                             f"leaves no batch of the {len(self.tensors[0])} samples")
        shard = self._copy()
        shard.world_size, shard.rank = world_size, rank
        return shard

    def eval_shard(self, world_size: int, rank: int) -> "TensorLoader":
        """Samples ``rank, rank + world_size, ...`` in order: every sample on exactly one rank, none repeated."""
        shard = self._copy()
        shard.indices = torch.arange(rank, len(self.tensors[0]), world_size, device=self.device)
        shard._eval_shard = (world_size, rank)
        shard.shuffle, shard.drop_last = False, False
        return shard

    def _copy(self) -> "TensorLoader":
        """A loader over the same tensors (no copy) with its own generator, in the same state as this one's."""
        other = object.__new__(TensorLoader)
        other.__dict__.update(self.__dict__)
        if self.generator is not None:
            other.generator = torch.Generator()
            other.generator.set_state(self.generator.get_state())
        other._epoch_start, other._resume_at, other._position = None, None, 0
        return other

    def __repr__(self) -> str:
        shape = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        shard = f", rank={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (f"TensorLoader({shape}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, device={self.device}{shard})")


class TensorLoaderOrder(Sampler[int]):
    """``TensorLoader.sampler``: the sample indices of an epoch, as a ``Sampler`` view of the loader."""

    def __init__(self, loader: TensorLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return self.loader.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to :meth:`TensorLoader.set_epoch`."""
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        """The indices the next epoch will serve, in order (drawn from a copy: the loader's generator is not advanced)."""
        preview = torch.Generator()
        if self.loader.generator is not None:
            preview.set_state(self.loader.generator.get_state())
        if self.loader.seed is None and self.loader.draws:
            preview.manual_seed(draw_seed(_copy_of_global_rng()))
        order, _ = self.loader._draw(preview)
        for lo, hi in self.loader._spans():
            yield from (range(lo, hi) if order is None else order[lo:hi].tolist())


# ---------------------------------------------------------------------- checks


def _copy_of_global_rng() -> torch.Generator:
    g = torch.Generator()
    g.set_state(torch.get_rng_state())
    return g


def _check_tensors(tensors: Sequence[Any]) -> tuple[torch.Tensor, ...]:
    if not tensors:
        raise ValueError("TensorLoader needs at least one tensor (e.g. TensorLoader(x, y, batch_size=64))")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor; got {type(t).__name__} (TensorLoader serves in-memory "
                            "tensors; wrap other datasets in a torch DataLoader, or ModelData.from_datasets)")
        if t.ndim == 0:
            raise ValueError(f"tensors[{i}] must have a leading sample dimension; got a 0-d tensor")
    lengths = [len(t) for t in tensors]
    if len(set(lengths)) > 1:
        raise ValueError(f"tensors must all have the same number of samples (first dimension); got {lengths}")
    if lengths[0] == 0:
        raise ValueError("tensors are empty (0 samples); a loader needs at least one sample")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors must be on one device; got {sorted(str(d) for d in devices)}")
    return tuple(tensors)


def check_device(name: str, device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists here; ``ValueError`` naming ``name`` and what is available."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a device name such as 'cpu' or 'cuda:0' (or a torch.device); got {device!r}")
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}={device!r} is not a torch device ({err}); available: {', '.join(available)}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available() or (d.index is not None and d.index >= torch.cuda.device_count()):
            raise ValueError(f"{name}={device!r}: no such CUDA device here; available: {', '.join(available)}")
        return d
    if d.type != "cpu":
        try:
            torch.empty(0, device=d)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"{name}={device!r} is not available here ({err}); available: {', '.join(available)}") from None
    return d
