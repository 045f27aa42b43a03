"""Checkpoints and divergence handling (placeholder wiring; see issue 5)."""
from __future__ import annotations

from .callback import Callback


def checkpoint_callbacks(checkpoint, checkpoint_every, resume, on_nan) -> list[Callback]:
    """Callbacks for ``checkpoint=``/``resume=``/``on_nan=``."""
    if checkpoint is not None:
        raise NotImplementedError("checkpoint= is not implemented yet")
    return []
