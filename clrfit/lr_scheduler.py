"""``ScheduleLR``: any clrfit schedule as a ``torch.optim.lr_scheduler.LRScheduler``, for any training loop.

It follows torch's contract: the constructor writes step 0's values into the
optimizer, ``step()`` (after ``optimizer.step()``) advances to the next step,
``get_last_lr()`` gives what was last written. Each step sets every param
group's ``lr`` and, when the schedule sets momentum, ``momentum`` or
``betas[0]`` (``betas[1]`` is kept), exactly as ``learn.fit`` would for the same
arguments. Like torch's ``CyclicLR`` and ``OneCycleLR``, it writes momentum as a
side effect of computing the lrs, so ``SequentialLR`` and ``swa_utils.SWALR``
work with it as with torch's own schedulers.

The state is closed-form: ``state_dict()`` holds the step index and the
schedule's arguments (:func:`clrfit.schedules.arguments`), plain values that
``torch.load(..., weights_only=True)`` reads back; loading a state saved for
another schedule is refused.

Past the end: the ``step()`` that follows the last step (a loop calls it after
its last batch, as torch's ``OneCycleLR`` allows) keeps the last values; one
more raises with ``after_end="raise"`` (the default), while ``after_end="hold"``
keeps the last values for ever.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from . import schedules
from .optim import momentum_key, set_momentum
from .schedules import CYCLIC, EPOCHS, FIT, ONE_CYCLE, Schedule
from .validation import AFTER_END, ArgumentError, check_choice, check_int, escape, fail
_STATE_KEYS = {"step", "step_count", "after_end", "schedule"}


class ScheduleLR(LRScheduler):
    """Applies a :class:`clrfit.schedules.Schedule` to an optimizer, one value per ``step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, after_end: str = "raise") -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a clrfit.schedules.Schedule (e.g. from ScheduleLR.from_fit); "
                f"got {type(schedule).__name__}"
            )
        check_choice("after_end", after_end, AFTER_END)
        _check_fits(optimizer, schedule)
        self.schedule = schedule
        self.after_end = after_end
        super().__init__(optimizer)

    # ------------------------------------------------------------------ builders from the fit arguments
    @classmethod
    def from_fit(cls, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> "ScheduleLR":
        """The schedule of ``learn.fit(lrs, n_cycle, cycle_len, cycle_mult, use_clr, use_clr_beta)``.

        ``lr=`` is accepted for ``lrs=`` (one value or one per param group).
        """
        if "lr" in kwargs:
            if "lrs" in kwargs or args:
                raise TypeError("from_fit: pass the learning rate once, as lrs= (or its alias lr=), not both")
            kwargs["lrs"] = kwargs.pop("lr")
        return cls._build("from_fit", "fit", optimizer, *args, **kwargs)

    @classmethod
    def from_cyclic(cls, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> "ScheduleLR":
        """The schedule of ``learn.fit_cyclic(epochs, ...)``: torch's ``CyclicLR`` over ``epochs`` epochs."""
        return cls._build("from_cyclic", "fit_cyclic", optimizer, *args, **kwargs)

    @classmethod
    def from_one_cycle(cls, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> "ScheduleLR":
        """The schedule of ``learn.fit_one_cycle(epochs, ...)``: torch's ``OneCycleLR`` over ``epochs`` epochs."""
        return cls._build("from_one_cycle", "fit_one_cycle", optimizer, *args, **kwargs)

    @classmethod
    def _build(cls, name: str, method: str, optimizer: Any, *args: Any, **kwargs: Any) -> "ScheduleLR":
        a, steps, after_end = _bind(cls, name, optimizer, *args, **kwargs)
        schedule, _ = schedules.schedule_for(method, len(optimizer.param_groups), steps, **a)
        return cls(optimizer, schedule, after_end)

    # ------------------------------------------------------------------ torch's contract
    @property
    def total(self) -> int | None:
        """Steps the schedule defines (``None``: unbounded)."""
        return self.schedule.total

    def get_lr(self) -> list[float]:
        """The lrs of step ``last_epoch`` (and, as a side effect, its momentum in the groups)."""
        lrs, moms = self.schedule(self._index(self.last_epoch))
        if moms is not None:
            for group, mom in zip(self.optimizer.param_groups, moms):
                set_momentum(group, mom)
        return lrs

    def _get_closed_form_lr(self) -> list[float]:
        # Every step's value is a function of the index alone: step(epoch) and SequentialLR's restart use it.
        return self.get_lr()

    def step(self, epoch: int | None = None) -> None:
        """Advance to the next step (call it after ``optimizer.step()``) and write its values."""
        last_epoch, step_count = self.last_epoch, getattr(self, "_step_count", 0)
        try:
            super().step(epoch)
        except _PastTheEnd:
            self.last_epoch, self._step_count = last_epoch, step_count  # the refused step changes nothing
            raise

    def _index(self, step: int) -> int:
        total = self.schedule.total
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        if total is None or step < total:
            return step
        # step == total is the step() after a loop's last batch (torch's OneCycleLR allows it too)
        if self.after_end == "hold" or step == total:
            return total - 1
        raise _PastTheEnd(
            f"ScheduleLR: step() called past the end of the schedule ({total} steps; this would be step "
            f"{step}); make the schedule longer (epochs, n_cycle, steps_per_epoch) or pass after_end='hold' "
            "to keep the last values"
        )

    def state_dict(self) -> dict[str, Any]:
        """The step index and the schedule's arguments: plain values (``torch.load(weights_only=True)``)."""
        return {"step": self.last_epoch, "step_count": self._step_count, "after_end": self.after_end,
                "schedule": schedules.arguments(self.schedule)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go to the saved step, refusing a state saved for another schedule, and write its values."""
        if not isinstance(state_dict, dict) or set(state_dict) != _STATE_KEYS:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise fail("state_dict", escape(f"must be a ScheduleLR state with keys {sorted(_STATE_KEYS)}; got {keys}"))
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise fail("state_dict['step']", "must be an integer >= 0", step)
        saved, own = state_dict["schedule"], schedules.arguments(self.schedule)
        if saved != own:
            diffs = [f"{k}: {saved.get(k, '<absent>')!r} saved, {own.get(k, '<absent>')!r} here"
                     for k in sorted(set(saved) | set(own)) if saved.get(k, "<absent>") != own.get(k, "<absent>")]
            raise fail("state_dict", escape(f"was saved for another schedule ({'; '.join(diffs)}); "
                                            "build the ScheduleLR with the same arguments to resume"))
        after_end = check_choice("state_dict['after_end']", state_dict["after_end"], AFTER_END)
        total = self.schedule.total
        if after_end == "raise" and total is not None and step > total:
            raise fail("state_dict['step']", f"is {step}, past the end of the schedule ({total} steps) "
                                             "with after_end='raise'")
        self.after_end = after_end
        self.last_epoch, self._step_count = step, state_dict["step_count"]
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def __repr__(self) -> str:
        return f"ScheduleLR(step={self.last_epoch}, after_end={self.after_end!r}, schedule={self.schedule!r})"


class _PastTheEnd(ValueError):
    """A step past the end under ``after_end='raise'``; ``step()`` undoes torch's count before it propagates."""


def _check_fits(optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
    lrs, _ = schedule(0)
    n = len(optimizer.param_groups)
    if len(lrs) != n:
        raise ArgumentError(
            "schedule",
            f"{{schedule}}: it has {len(lrs)} param group value(s) but the {{optimizer}} has {n} param group(s); "
            "build the schedule with one lr per group (the from_* builders read the optimizer's groups)",
        )
    if schedule.has_momentum:
        lacking = [i for i, g in enumerate(optimizer.param_groups) if momentum_key(g) is None]
        if lacking:
            raise ArgumentError(
                "schedule",
                f"{{schedule}}: it sets momentum but {type(optimizer).__name__} has neither 'momentum' nor 'betas' "
                f"in param group(s) {escape(repr(lacking))}; use an optimizer with momentum (SGD, RMSprop, Adam, "
                "AdamW, ...) or a schedule without momentum (use_clr with 2 values, cycle_momentum=False)",
            )


_CLS = inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)
_OPTIMIZER = inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="torch.optim.Optimizer")
_STEPS = inspect.Parameter("steps_per_epoch", inspect.Parameter.KEYWORD_ONLY, annotation="int")
_AFTER_END = inspect.Parameter("after_end", inspect.Parameter.KEYWORD_ONLY, default="raise", annotation="str")
# Each builder takes exactly its fit method's schedule arguments, plus steps_per_epoch and after_end.
ScheduleLR.from_fit.__func__.__signature__ = FIT.signature(
    [_CLS, _OPTIMIZER], [_STEPS, _AFTER_END], return_annotation="ScheduleLR")
ScheduleLR.from_cyclic.__func__.__signature__ = CYCLIC.signature(
    [_CLS, _OPTIMIZER, EPOCHS], [_STEPS, _AFTER_END], return_annotation="ScheduleLR")
ScheduleLR.from_one_cycle.__func__.__signature__ = ONE_CYCLE.signature(
    [_CLS, _OPTIMIZER, EPOCHS], [_STEPS, _AFTER_END], return_annotation="ScheduleLR")


def _bind(cls: type, name: str, optimizer: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], int, str]:
    """The builder's arguments by name (defaults filled in), its steps_per_epoch and after_end, checked."""
    sig = getattr(cls, name).__func__.__signature__
    names = ", ".join(p for p in sig.parameters if p not in ("cls", "optimizer"))
    unknown = sorted(set(kwargs) - set(sig.parameters) - {"cls"})
    if unknown:
        raise TypeError(f"ScheduleLR.{name}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes optimizer, {names}")
    try:
        bound = sig.bind(cls, optimizer, *args, **kwargs)
    except TypeError as err:
        raise TypeError(f"ScheduleLR.{name}: {err}; it takes optimizer, {names}") from None
    bound.apply_defaults()
    a = dict(bound.arguments)
    del a["cls"]
    optimizer = a.pop("optimizer")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    steps = check_int("steps_per_epoch", schedules._scalar(a.pop("steps_per_epoch")), minimum=1)
    after_end = check_choice("after_end", a.pop("after_end"), AFTER_END)
    return a, steps, after_end


__all__ = ["ScheduleLR", "AFTER_END"]
