"""Numeric precision of the training step: fp32, fp16 (autocast + GradScaler) or bf16 (autocast).

A step that the fp16 gradient scaler skips (inf/nan gradients) still counts as
one iteration: the schedule advances exactly once per optimizer step attempted,
so the schedule's length and values never depend on overflow events.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .validation import check_choice

PRECISIONS = ("fp32", "fp16", "bf16")


def resolve_precision(fp16: bool, precision: str | None) -> str:
    """The precision name from ``Learner``'s ``fp16`` flag and ``precision`` argument."""
    if not isinstance(fp16, bool):
        raise TypeError(f"fp16 must be True or False; got {fp16!r}")
    if precision is not None:
        aliases = {"16": "fp16", "float16": "fp16", "bfloat16": "bf16", "32": "fp32", "float32": "fp32"}
        precision = aliases.get(str(precision), precision)
        check_choice("precision", precision, PRECISIONS)
        if fp16 and precision != "fp16":
            raise ValueError(f"fp16=True conflicts with precision={precision!r}; pass one of them")
        return precision
    return "fp16" if fp16 else "fp32"


class Precision:
    """Autocast context, backward and optimizer step for one precision."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """Context manager for the forward pass and loss."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (scaled under fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping or inspecting them)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()``, through the scaler under fp16 (which may skip the update)."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
