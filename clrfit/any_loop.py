"""The LR range test for any model and optimizer: :func:`range_test`, outside clrfit's own training loop.

``range_test(model, optimizer, loss_fn, train_dl, val_dl=val_dl, num_it=100)`` runs
the same sweep, recorder, plots and suggestions as ``Learner.lr_find2`` (``lr_find2``
without per-step validation when ``val_dl`` is None): it wraps the objects you
already have in a :class:`clrfit.Learner` for the length of the sweep and calls the
one range-test implementation (:mod:`clrfit.lr_finder`), which puts everything back
bit for bit however the sweep ends: weights, buffers, gradients, train/eval modes,
the optimizer's state and hyper-parameters, the RNG states and the loaders'
generators. The model stays on its device.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .data import ModelData
from .learner import Learner
from .lr_finder import RangeTestRecorder, _check_sweep, _range_test
from .schedules import LRSweep
from .validation import ArgumentError, check_bool, check_int


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    train_dl: Any,
    val_dl: Any = None,
    start_lr: float | Sequence[float] = 1e-5,
    end_lr: float = 10,
    num_it: int = 100,
    linear: bool = False,
    stop_dv: bool = True,
    accumulate: int = 1,
    batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
    device: str | torch.device | None = None,
    metrics: Sequence[Callable] | None = None,
) -> RangeTestRecorder:
    """LR range test of ``model`` trained by ``optimizer`` on ``train_dl``; everything is restored afterwards.

    Args:
        model: the model to sweep (a ``torch.nn.Module``); left exactly as it was.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters; its state and
            param groups (lr, momentum, ...) are left exactly as they were.
        loss_fn: ``loss_fn(prediction, target) -> 0-d tensor``; ``clrfit.model_loss`` for a
            model that returns its own loss.
        train_dl: the training batches (a ``DataLoader`` or ``clrfit.loaders.TensorLoader``).
        val_dl: if given, the loss and metrics on the next validation batch are recorded
            after every step (as ``lr_find2``); None: training losses only.
        start_lr: the first step's lr (> 0), or one per param group.
        end_lr: the last step's lr (> start_lr).
        num_it: the number of steps of the sweep (>= 2), across epochs if needed.
        linear: a linear sweep instead of the exponential one.
        stop_dv: stop when the loss diverges (see docs/lr_finder.md).
        accumulate: micro-batches per sweep step (>= 1), as ``fit(accumulate=k)``.
        batch_fn: ``batch_fn(batch) -> (inputs, target)`` for batches that are not
            ``(x, y)``, ``(x1, ..., xn, y)`` or a dict.
        device: where batches go; default: the device of the model's parameters.
        metrics: functions ``metric(prediction, target)`` recorded on validation batches.

    Returns:
        The sweep's recorder: ``.plot()``, ``.lrs``, ``.losses``, ``.suggestions``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (prediction, target) -> loss; got {loss_fn!r}")
    own = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise ArgumentError("optimizer", f"{{optimizer}}: {foreign} of its parameters are not parameters of {{model}}; "
                                         "the range test restores only what the model holds, so pass the optimizer of "
                                         "this model")
    num_it = check_int("num_it", num_it, minimum=2)
    stop_dv = check_bool("stop_dv", stop_dv)
    accumulate = check_int("accumulate", accumulate, minimum=1)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    learn = Learner(model, ModelData(train_dl, val_dl), opt_fn=lambda groups, lr: optimizer, crit=loss_fn,
                    metrics=metrics, device=device, progress=False, table=False, batch_fn=batch_fn)
    if val_dl is not None:
        learn.lr_find2(start_lr=start_lr, end_lr=end_lr, num_it=num_it, linear=linear, stop_dv=stop_dv,
                       accumulate=accumulate)
    else:
        start_lrs, end_lr, linear = _check_sweep(learn, start_lr, end_lr, linear)
        n_epochs = math.ceil(num_it / learn._steps_per_epoch(accumulate))
        recorder = RangeTestRecorder(num_it, stop_dv=stop_dv, linear=linear)
        _range_test(learn, LRSweep(start_lrs, end_lr, num_it, linear), n_epochs, recorder, None, None, metrics,
                    accumulate=accumulate)
    return learn.sched
