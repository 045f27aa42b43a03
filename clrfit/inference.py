"""Predictions: ``get_preds`` over a loader, ``predict`` for one batch, ``tta`` (test-time augmentation).

All three run the plain (un-wrapped) model in eval mode under ``torch.no_grad()``
and the learner's autocast, and put the model back in the mode it was in, even
on error. Outputs come back as float32 CPU tensors.

Distributed (``torchrun``): every rank predicts its shard of the loader
(:class:`clrfit.distributed.ShardSampler`: samples ``rank, rank + W, ...``,
none padded or repeated) with rank 0's buffers (BatchNorm statistics), and the
shards are gathered back so that every rank returns the whole set in dataset
order, exactly as a single process would.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .distributed import ShardSampler, shard_eval_loader
from .loaders import TensorLoader
from .runtime import call_model, move
from .validation import ArgumentError, check_bool, check_int, escape, fail

if TYPE_CHECKING:  # pragma: no cover
    from .data import Loader
    from .learner import Learner


def get_preds(learn: "Learner", dl: "Loader | None" = None, with_loss: bool = False) -> tuple[torch.Tensor, ...]:
    """Model outputs and targets over ``dl`` (default: the validation set), in dataset order.

    Returns ``(preds, targets)``, or ``(preds, targets, losses)`` with ``with_loss=True``
    (the loss of each sample: ``crit`` with ``reduction='none'``).
    """
    check_bool("with_loss", with_loss)
    dl = _loader(learn, dl, "dl")
    preds, targets, losses = [], [], []
    with _eval_mode(learn) as model:
        for batch in dl:
            xb, yb = learn.runtime.to_device(batch)  # split as the loop splits it (batch_fn, tuples, dicts)
            if not isinstance(yb, torch.Tensor):
                raise TypeError(f"get_preds needs batches whose target is a tensor; got {type(yb).__name__}")
            with learn.precision.autocast():
                pred = call_model(model, xb)
                loss = per_sample_loss(learn.crit, pred, yb) if with_loss else None
            preds.append(pred.detach().float().cpu())
            targets.append(yb.detach().cpu())
            if with_loss:
                losses.append(loss.detach().float().cpu())
    out = [_cat(preds), _cat(targets)] + ([_cat(losses)] if with_loss else [])
    out = _gather_in_order(learn, out)
    return tuple(out)


def predict(learn: "Learner", x: Any) -> torch.Tensor:
    """The model's outputs for one batch ``x`` (a tensor, or whatever the model takes), as a CPU tensor."""
    if isinstance(x, torch.Tensor) and x.ndim == 0:
        raise ArgumentError("x", f"predict: {{x}} must be a batch (leading sample dimension); got a 0-d tensor "
                                 f"{escape(repr(x))}")
    with _eval_mode(learn) as model:
        if learn.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            xb = x.to(learn.device, memory_format=torch.channels_last)
        else:
            xb = move(x, learn.device, non_blocking=False)
        with learn.precision.autocast():
            pred = call_model(model, xb)  # a tuple of inputs is model(*x), a dict model(**x)
    return pred.detach().float().cpu()


def tta(learn: "Learner", n: int = 4, dl: "Loader | None" = None, aug_dl: "Loader | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time augmentation as fastai 0.7's ``TTA``: class probabilities averaged over plain and augmented passes.

    The plain pass over ``dl`` (default: the validation set) counts ``ceil(n / 4)``
    times and each of the ``n`` passes over ``aug_dl`` (default: ``data.aug_dl``, the
    same images through the training transforms) once:
    ``probs = (ceil(n/4) * softmax(plain) + sum_i softmax(aug_i)) / (ceil(n/4) + n)``.
    Returns ``(probs, targets)``.
    """
    n = check_int("n", n, minimum=1)
    if aug_dl is None:
        aug_dl = getattr(learn.data, "aug_dl", None)
        if aug_dl is None:
            raise ArgumentError("aug_dl", "tta: the data has no {aug_dl} (validation images through the training "
                                          "transforms); build it with ModelData.from_folder / from_csv, or pass "
                                          "{aug_dl}=")
    elif not isinstance(aug_dl, DataLoader) and not hasattr(aug_dl, "eval_shard"):  # DataLoader or TensorLoader
        raise TypeError(f"aug_dl must be a torch DataLoader, a clrfit TensorLoader or None; got {type(aug_dl).__name__}")
    plain, targets = get_preds(learn, dl)
    repeats = math.ceil(n / 4)
    total = plain.softmax(dim=-1) * repeats
    for _ in range(n):
        aug, aug_targets = get_preds(learn, aug_dl)
        if aug.shape != plain.shape or not torch.equal(aug_targets, targets):
            raise ArgumentError("aug_dl", "tta: {aug_dl} must hold the same samples, in the same order, as {dl}; "
                                          f"got {len(aug_targets)} samples with other targets than the "
                                          f"{len(targets)} of {{dl}}")
        total += aug.softmax(dim=-1)
    return total / (repeats + n), targets


def per_sample_loss(crit: Any, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of each sample: ``crit`` with ``reduction='none'`` (averaged over any non-batch dims), else one call per sample."""
    if isinstance(getattr(crit, "reduction", None), str):
        unreduced = copy.copy(crit)
        unreduced.reduction = "none"
        loss = unreduced(pred, target)
        return loss.reshape(len(pred), -1).mean(dim=1) if loss.ndim > 1 else loss
    return torch.stack([crit(pred[i:i + 1], target[i:i + 1]).reshape(()) for i in range(len(pred))])


# ---------------------------------------------------------------------- helpers


def _loader(learn: "Learner", dl: Any, name: str) -> Any:
    if dl is None:
        dl = learn.data.val_dl
        if dl is None:
            raise ArgumentError(name, f"{{{name}}}=None: the data has no validation loader; "
                                      f"pass {{{name}}}= (a DataLoader)")
    elif not isinstance(dl, (DataLoader, TensorLoader)):
        raise TypeError(f"{name} must be a torch DataLoader, a clrfit TensorLoader or None; got {type(dl).__name__}")
    if learn.dist.enabled:
        dl = shard_eval_loader(dl, learn.dist.world_size, learn.dist.rank, name)
        # Both evaluation shards hold samples rank, rank + W, ...: the order _gather_in_order undoes.
        in_order = dl.indices is not None if isinstance(dl, TensorLoader) else isinstance(dl.sampler, ShardSampler)
        if not in_order:
            raise fail(f"{name}:", f"predictions are gathered in dataset order, which this loader's sharding "
                                   f"({type(dl.sampler).__name__}) does not keep; pass a plain (unshuffled) loader")
    return dl


class _eval_mode:
    """The plain model in eval mode under no_grad, with rank 0's buffers; its previous mode restored on exit."""

    def __init__(self, learn: "Learner") -> None:
        self.learn = learn

    def __enter__(self) -> torch.nn.Module:
        model = self.learn.model
        self.was_training = model.training
        self.modes = {m: m.training for m in model.modules()}  # e.g. frozen BatchNorm kept in eval mode
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        model.eval()
        self.learn.dist.broadcast_buffers(model)
        return model

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        for module, mode in self.modes.items():
            module.training = mode


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0)


def _gather_in_order(learn: "Learner", tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Under DDP, every rank's shard (``rank::world_size`` of the dataset) interleaved back into dataset order."""
    if not learn.dist.enabled:
        return tensors
    world = learn.dist.world_size
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, tensors)
    out = []
    for k in range(len(tensors)):
        parts = [shards[r][k] for r in range(world)]
        n = sum(len(p) for p in parts)
        full = torch.empty((n, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for r, part in enumerate(parts):
            full[r::world] = part
        out.append(full)
    return out
