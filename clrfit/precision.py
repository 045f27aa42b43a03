"""Numeric precision of the training step: fp32, fp16 (autocast + GradScaler) or bf16 (autocast).

Weights, gradients and optimizer state stay float32 in every mode; autocast
runs the forward pass and the loss in the low-precision type.

A step that the fp16 gradient scaler skips (inf/nan gradients) still counts as
one iteration: the learner advances ``learn.iteration`` once per optimizer step
attempted, so the schedule's length and values never depend on overflow events.
The skipped step leaves the weights and optimizer state untouched and halves the
loss scale.

Host syncs: bf16 and fp32 add none. ``GradScaler.step`` reads its inf check back
to the host once per step (it must decide whether to call ``optimizer.step()``),
unless the optimizer consumes the scale itself (``fused=True`` SGD/Adam/AdamW on
CUDA); prefer bf16, or a fused optimizer under fp16, where every microsecond counts.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .validation import PRECISIONS, ArgumentError, check_bool, check_choice


def resolve_precision(fp16: bool, precision: str | None) -> str:
    """The precision name from ``Learner``'s ``fp16`` flag and ``precision`` argument."""
    check_bool("fp16", fp16)
    if precision is not None:
        aliases = {"16": "fp16", "float16": "fp16", "bfloat16": "bf16", "32": "fp32", "float32": "fp32"}
        precision = aliases.get(str(precision), precision)
        check_choice("precision", precision, PRECISIONS)
        if fp16 and precision != "fp16":
            raise ArgumentError("precision",
                                f"{{fp16}}=True conflicts with {{precision}}={precision!r}; pass one of them")
        return precision
    return "fp16" if fp16 else "fp32"


class Precision:
    """Autocast context, backward and optimizer step for one precision."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = check_choice("precision", name, PRECISIONS)
        self.device = device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        if self.scaler is None:  # nothing to scale: the hot loop calls these with no branch
            self.backward, self.step = _backward, _step

    def autocast(self):
        """Context manager for the forward pass and loss."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (scaled under fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping or inspecting them); once per step."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()``, through the scaler under fp16 (which skips the update when a gradient is inf/nan)."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()

    @property
    def loss_scale(self) -> float:
        """The fp16 loss scale (1.0 without a scaler); reading it is a host sync, so not for the hot loop."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without one), for checkpoints."""
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, device={self.device})"


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def _step(opt: torch.optim.Optimizer) -> None:
    opt.step()
