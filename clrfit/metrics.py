"""Metrics: functions ``metric(preds, targets) -> 0-d tensor``, averaged over a batch.

The learner weights each batch by its size, so the epoch value is the mean over
all validation samples. Metrics stay on the device; nothing here syncs.
"""
from __future__ import annotations

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
