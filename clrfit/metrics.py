"""Metrics: functions ``metric(preds, targets) -> 0-d tensor``, averaged over a batch.

The learner weights each batch by its size, so the epoch value is the mean over
all validation samples. Metrics stay on the device; nothing here syncs.
"""
from __future__ import annotations

from typing import Any

import torch


def accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max class equals the target."""
    return (preds.argmax(dim=-1) == targets).float().mean()


def error_rate(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - accuracy``."""
    return 1 - accuracy(preds, targets)


def metric_name(metric) -> str:
    """Column name of a metric: its ``__name__`` (or class name)."""
    return getattr(metric, "__name__", type(metric).__name__)


def model_loss(preds: Any, targets: Any = None) -> torch.Tensor:
    """The loss a model computed itself (pass as ``crit=model_loss``): ``preds.loss``, ``preds["loss"]`` or ``preds[0]``.

    For models that take the labels and return their loss, as Hugging Face models
    do with a dict batch holding ``labels``.
    """
    loss = getattr(preds, "loss", None)
    if loss is None and isinstance(preds, dict):
        loss = preds.get("loss")
    if loss is None and isinstance(preds, (tuple, list)) and preds:
        loss = preds[0]
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise TypeError(
            "crit=model_loss: the model's output must carry its loss as a 0-d tensor (output.loss, output['loss'] "
            f"or output[0]); got {type(preds).__name__}"
        )
    return loss
