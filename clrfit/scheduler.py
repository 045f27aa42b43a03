"""The callback that applies a schedule to the optimizer's param groups.

At the start of every optimizer step it takes ``schedule(learn.iteration)``
(evaluated ``AHEAD`` steps at a time with ``schedule.span``, which reads a phase
table a run of steps at once; a schedule is a pure function of the step, so this
changes no value) and writes each group's lr and, when the schedule has one, momentum (``momentum``
or ``betas[0]``). It also applies weight decay: L2 through the groups'
``weight_decay`` by default, or, with ``decoupled=True`` (``use_wd_sched``),
``p -= wd_t * lr_t * p`` just before the optimizer step (:class:`DecoupledWeightDecay`, present only then).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .callback import Callback
from .optim import momentum_is_sgd, momentum_key, set_momentum
from .schedules import Schedule


#: Steps evaluated at once (never past the fit's planned steps).
AHEAD = 256


class ParamScheduler(Callback):
    """Writes ``schedule(iteration)`` into the param groups before each step; sets L2 weight decay once."""

    order = 10

    def __init__(self, schedule: Schedule, wds: Sequence[float] | None = None, decoupled: bool = False) -> None:
        self.schedule = schedule
        self.wds = None if wds is None else tuple(wds)
        self.decoupled = decoupled
        self._first, self._rows, self._positions = 0, [], []  # of steps _first, _first + 1, ...
        self._sgd_momentum = False  # every group's momentum is 'momentum' (not 'betas'): set per fit

    def check(self, opt: torch.optim.Optimizer) -> None:
        """Raise ``ValueError`` if ``opt`` cannot take this schedule (called before any step)."""
        name = type(opt).__name__
        if self.schedule.has_momentum and any(momentum_key(g) is None for g in opt.param_groups):
            raise ValueError(
                f"momentum: this schedule sets momentum but {name} has neither 'momentum' nor 'betas' "
                "in its param groups; use an optimizer with momentum (SGD, RMSprop, Adam, AdamW, NAdam, RAdam, ...) "
                "or a schedule without momentum values (e.g. cycle_momentum=False, use_clr with 2 values)"
            )
        lrs, _ = self.schedule(0)
        if len(lrs) != len(opt.param_groups):
            raise ValueError(
                f"lrs: the schedule has {len(lrs)} layer group values but the optimizer has "
                f"{len(opt.param_groups)} param groups; pass one value per group"
            )
        if self.wds is not None and not self.decoupled and any("weight_decay" not in g for g in opt.param_groups):
            raise ValueError(
                f"wds={list(self.wds)!r}: {name} has no 'weight_decay' in its param groups, so L2 weight decay "
                "cannot be set; pass use_wd_sched=True (decoupled) or an optimizer with weight_decay"
            )

    def on_train_begin(self) -> None:
        self.check(self.learn.opt)
        self._first, self._rows, self._positions = 0, [], []
        self._sgd_momentum = momentum_is_sgd(self.learn.opt.param_groups)
        if self.wds is not None:
            # Like lr, wds are written into the groups and stay there after the fit.
            for group, wd in zip(self.learn.opt.param_groups, self.wds):
                if not self.decoupled:
                    group["weight_decay"] = wd
                elif "weight_decay" in group:
                    group["weight_decay"] = 0.0

    def on_batch_begin(self) -> None:
        state, groups = self.learn.state, self.learn.opt.param_groups
        i = state.iteration - self._first
        if not 0 <= i < len(self._rows):
            self._evaluate_from(state.iteration)
            i = 0
        lrs, moms = self._rows[i]
        state.cycle, state.iter_in_cycle = self._positions[i]
        if moms is None:
            for group, lr in zip(groups, lrs):
                group["lr"] = lr
        elif self._sgd_momentum:  # the common case, written without a call per group
            for group, lr, mom in zip(groups, lrs, moms):
                group["lr"], group["momentum"] = lr, mom
        else:
            for group, lr, mom in zip(groups, lrs, moms):
                group["lr"] = lr
                set_momentum(group, mom)

    def _evaluate_from(self, t: int) -> None:
        """The values of steps ``t`` to ``t + AHEAD - 1``, stopping at the fit's last planned step (at least step ``t``)."""
        learn = self.learn
        end = max(t + 1, min(t + AHEAD, learn.n_epochs * learn.steps_per_epoch))
        self._first, self._rows = t, self.schedule.span(t, end)
        self._positions = self.schedule.positions(t, end)


class DecoupledWeightDecay(Callback):
    """``use_wd_sched=True``: ``p -= wd_t * lr_t * p`` for every parameter with a gradient, just before the step.

    ``wd_t`` is the group's ``wds`` value, divided by the square root of the
    current cycle's length with ``norm_wds`` and multiplied by
    ``wds_sched_mult(learn)`` when given; ``lr_t`` is the group's lr this step.
    """

    order = 10  # with the schedule, before the recorder

    def __init__(self, schedule: Schedule, wds: Sequence[float], norm_wds: bool = False,
                 wds_sched_mult: Callable[..., float] | None = None) -> None:
        self.schedule = schedule
        self.wds = tuple(wds)
        self.norm_wds = norm_wds
        self.wds_sched_mult = wds_sched_mult
        self.current_wds: list[float] | None = None

    def on_batch_begin(self) -> None:
        wds = list(self.wds)
        if self.norm_wds:
            scale = math.sqrt(self.schedule.cycle_iterations(self.learn.iteration))
            wds = [wd / scale for wd in wds]
        if self.wds_sched_mult is not None:
            mult = float(self.wds_sched_mult(self.learn))
            wds = [wd * mult for wd in wds]
        self.current_wds = wds

    @torch.no_grad()
    def on_backward_end(self) -> None:
        if self.current_wds is None:
            return
        for group, wd in zip(self.learn.opt.param_groups, self.current_wds):
            if wd == 0:
                continue
            factor = wd * group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_add_(params, torch._foreach_mul(params, -factor))
