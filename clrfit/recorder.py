"""The recorder: what one fit (or range test) really used and measured.

``learn.sched`` is a :class:`Recorder`. Hyper-parameters are read back from the
optimizer's param groups when the step is done (``on_batch_end``), so they are
what the optimizer stepped with, whichever callback set them. Losses are kept on the device and read back in batches
(every ``flush_every`` = 32 steps on every device, at epoch end, and whenever a
list is read), so recording adds no per-step host sync (a CPU loss, which needs
none, is taken as a float at once and smoothed at the same points); the divergence guard
checks the losses at those same points (see :mod:`clrfit.checkpoint`).

A step is recorded whole (iteration, lrs, momentums and loss together, at
``on_batch_end``) or not at all: one cancelled before its loss existed adds
nothing, so the lists stay aligned and never hold a NaN for a cancelled step.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch

from .callback import Callback
from .optim import momentum_is_sgd, read_back

SMOOTHING = 0.98
#: A param group's lr and SGD momentum, read in C.
_LR, _MOMENTUM = operator.itemgetter("lr"), operator.itemgetter("momentum")


class Recorder(Callback):
    """History of the last fit: plain lists of floats, plus plots."""

    order = 50  # after the schedule (order 10); reads the step back at on_batch_end
    flush_every = 32

    def __init__(self) -> None:
        self.iterations: list[int] = []
        self.group_lrs: list[list[float]] = []
        self.group_moms: list[list[float | None]] = []
        self.raw_losses_: list[float] = []
        self.losses_: list[float] = []
        self.val_losses: list[float] = []
        self.rec_metrics: list[list[float]] = []
        self.metric_names: list[str] = []
        self.epochs: list[int] = []
        self.avg_loss = 0.0
        self._pending: list[torch.Tensor] | list[float] = []
        self._on_host = False  # a CPU fit: losses are read as floats at once (no sync to avoid)
        self._sgd_momentum = False  # every group's momentum is 'momentum' (set per fit)

    # ------------------------------------------------------------------ lists
    @property
    def lrs(self) -> list[float]:
        """Learning rate of the last param group at each iteration."""
        return [g[-1] for g in self.group_lrs]

    @property
    def momentums(self) -> list[float | None]:
        """Momentum (or ``betas[0]``) of the last param group at each iteration."""
        return [g[-1] for g in self.group_moms]

    @property
    def raw_losses(self) -> list[float]:
        """Unsmoothed training loss of each optimizer step."""
        self.flush()
        return self.raw_losses_

    @property
    def losses(self) -> list[float]:
        """Smoothed training loss: debiased EMA, ``beta = 0.98``."""
        self.flush()
        return self.losses_

    # ------------------------------------------------------------------ events
    def on_train_begin(self) -> None:
        from .plots import momentum_label

        self.momentum_label = momentum_label(self.learn.opt.param_groups[0])
        self._on_host = self.learn.device.type == "cpu"
        self._sgd_momentum = momentum_is_sgd(self.learn.opt.param_groups)

    def on_batch_end(self) -> None:
        if self.record_step():
            pending, loss = self._pending, self.learn.step_loss
            if not self._on_host:
                pending.append(loss.detach())
            else:  # a CPU fit reads each loss as it comes, as float32 like the device path's stacked read-back
                pending.append(loss.item() if loss.dtype is torch.float32 else _loss_value(loss))
            if len(pending) >= self.flush_every:
                self.flush()

    def record_step(self) -> bool:
        """Append this step's iteration, lrs and momentums if it has a loss; False for a step cancelled before.

        The lrs and momentums are read back from the param groups once the step is
        done: what the optimizer stepped with, whichever callback set them. A step
        is recorded whole or not at all, so every list keeps one entry per recorded
        step: one cancelled before its loss existed adds nothing, never a NaN or a
        repeated loss.
        """
        learn = self.learn
        if learn.step_loss is None:
            return False
        groups = learn.opt.param_groups
        self.iterations.append(learn.state.iteration)
        if self._sgd_momentum:  # what read_back reads, without its per-group branches
            self.group_lrs.append(list(map(float, map(_LR, groups))))
            self.group_moms.append(list(map(float, map(_MOMENTUM, groups))))
        else:
            lrs, moms = read_back(groups)
            self.group_lrs.append(lrs)
            self.group_moms.append(moms)
        return True

    def on_validate_end(self) -> None:
        self.metric_names = list(self.learn.metric_names)
        if self.learn.val_loss is not None:
            self.val_losses.append(self.learn.val_loss)
            self.rec_metrics.append(list(self.learn.val_metrics))

    def on_epoch_end(self) -> None:
        self.flush()
        self.epochs.append(len(self.iterations))

    def on_train_end(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Read pending device losses back to the host (one sync) and smooth them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if type(pending[0]) is float:  # read as they came (a CPU fit)
            self.add_losses(pending)
            return
        # Stack on the device and copy once: one host sync per flush, not one per loss.
        try:
            stacked = torch.stack(pending)  # the usual case: 0-d losses on one device
        except RuntimeError:  # losses of other shapes or on several devices
            stacked = None
        if stacked is None or stacked.shape != (len(pending),):
            stacked = torch.stack([p.detach().float().reshape(()).to(pending[0].device) for p in pending])
        self.add_losses(stacked.float().cpu().tolist())

    def add_loss(self, value: float) -> float:
        """Append one raw loss and its smoothed value; returns the smoothed value."""
        self.add_losses((value,))
        return self.losses_[-1]

    def add_losses(self, values: list[float] | tuple[float, ...]) -> None:
        """Append raw losses and their smoothed values (debiased EMA, ``beta = SMOOTHING``)."""
        beta, rest, avg, n, smoothed = SMOOTHING, 1 - SMOOTHING, self.avg_loss, len(self.raw_losses_), self.losses_
        for value in values:
            n += 1
            avg = beta * avg + rest * value
            smoothed.append(avg / (1 - beta ** n))
        self.avg_loss = avg
        self.raw_losses_.extend(values)

    @property
    def last_loss(self) -> float:
        """Smoothed loss of the last step (nan before the first)."""
        losses = self.losses
        return losses[-1] if losses else math.nan

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The whole history as plain lists (for checkpoints)."""
        self.flush()
        return {
            "iterations": list(self.iterations),
            "group_lrs": [list(g) for g in self.group_lrs],
            "group_moms": [list(g) for g in self.group_moms],
            "raw_losses": list(self.raw_losses_),
            "losses": list(self.losses_),
            "val_losses": list(self.val_losses),
            "rec_metrics": [list(m) for m in self.rec_metrics],
            "metric_names": list(self.metric_names),
            "epochs": list(self.epochs),
            "avg_loss": self.avg_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._pending = []
        self.iterations = list(state["iterations"])
        self.group_lrs = [list(g) for g in state["group_lrs"]]
        self.group_moms = [list(g) for g in state["group_moms"]]
        self.raw_losses_ = list(state["raw_losses"])
        self.losses_ = list(state["losses"])
        self.val_losses = list(state["val_losses"])
        self.rec_metrics = [list(m) for m in state["rec_metrics"]]
        self.metric_names = list(state["metric_names"])
        self.epochs = list(state["epochs"])
        self.avg_loss = float(state["avg_loss"])

    # ------------------------------------------------------------------ plots
    def plot_lr(self, show_epochs: bool = False, title: str | None = None):
        """lr per iteration, with a momentum panel when momentum varies; returns the Figure.

        ``show_epochs`` draws a vertical line at the first iteration of every epoch after the first.
        """
        from .plots import plot_lr_mom

        moms = self.momentums
        vary = bool(moms) and None not in moms and max(moms) != min(moms)
        # epochs holds the number of steps recorded when each epoch ended; the last one closes the plot.
        marks = [self.iterations[n] for n in self.epochs if n < len(self.iterations)] if show_epochs else None
        return plot_lr_mom(self.iterations, self.lrs, moms if vary else None, epoch_marks=marks, title=title,
                           mom_label=getattr(self, "momentum_label", "momentum"))

    def plot_loss(self, n_skip: int = 10, n_skip_end: int = 5):
        """Smoothed training loss per iteration (skipping the first/last few); returns the Figure."""
        from .plots import plot_series

        return plot_series(self.iterations, self.losses, n_skip, n_skip_end, xlabel="iteration", ylabel="loss (smoothed)")

    @property
    def plot(self):
        """Only a range test's recorder plots loss against lr: reading ``plot`` here says what to call instead."""
        # A property, so that hasattr(recorder, "plot") stays False for a fit's recorder.
        raise AttributeError(
            "learn.sched.plot() plots a range test's loss against the learning rate, and the last run was a fit: "
            "use learn.sched.plot_lr() (lr and momentum) or learn.sched.plot_loss() (training loss), "
            "or run learn.lr_find2() (or learn.lr_find()) first, then learn.sched.plot()"
        )

    def _ipython_display_(self) -> None:
        # A notebook cell ending in learn.fit(...) shows the epoch table fit printed and
        # nothing more; print(learn.sched) still gives the summary below.
        pass

    def __repr__(self) -> str:
        return f"Recorder({len(self.iterations)} iterations, {len(self.val_losses)} validations)"


def _loss_value(loss: torch.Tensor) -> float:
    """A host loss that is not float32, as the float the device path records (read back as float32)."""
    return float(loss.detach().float().reshape(()))
