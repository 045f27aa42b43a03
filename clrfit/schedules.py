"""Schedules: pure, picklable functions of the iteration index.

A schedule maps the index ``t`` of an optimizer step (counted from the start of
the fit, ``0 .. total-1``) to the learning rate of every param group and,
optionally, the momentum of every group (``None`` leaves momentum alone)::

    lrs, moms = schedule(t)

Schedules know nothing about optimizers or models, so they can be tested,
plotted and previewed without training (see :func:`preview`). The formulas are
those of ``SCHEDULES.md``; each class's docstring restates its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .validation import as_group_values, check_bool, check_choice, check_int, check_number

GroupValues = tuple[float, ...]


class Schedule:
    """Base class: ``schedule(t) -> (lrs per group, momentums per group or None)``."""

    #: Iterations the schedule is defined for (``None``: unbounded).
    total: int | None = None

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        raise NotImplementedError

    def position(self, t: int) -> tuple[int, int]:
        """``(cycle, iteration in cycle)`` of step ``t``."""
        return 0, t

    @property
    def has_momentum(self) -> bool:
        """Whether the schedule sets momentum."""
        return False

    def cycle_iterations(self, t: int) -> int:
        """Length in iterations of the cycle that step ``t`` belongs to."""
        return self.total or 1

    def values(self, n: int | None = None) -> "ScheduleValues":
        """Evaluate ``n`` iterations (default: ``total``) without any optimizer."""
        if n is None:
            if self.total is None:
                raise ValueError("n: this schedule is unbounded; pass the number of iterations to evaluate")
            n = self.total
        n = check_int("n", n, minimum=1)
        if self.total is not None and n > self.total:
            raise ValueError(f"n must be <= {self.total} (this schedule's iterations); got {n}")
        group_lrs, group_moms = [], []
        for t in range(n):
            lrs, moms = self(t)
            group_lrs.append(lrs)
            group_moms.append(moms)
        return ScheduleValues(group_lrs, group_moms if self.has_momentum else None, name=type(self).__name__)

    def plot(self, n: int | None = None):
        """Plot lr (and momentum when the schedule sets it) over ``n`` iterations; returns the Figure."""
        return self.values(n).plot()


@dataclass
class ScheduleValues:
    """A schedule evaluated over iterations: per-iteration lists of per-group values."""

    group_lrs: list[list[float]]
    group_moms: list[list[float]] | None = None
    name: str = ""

    @property
    def iterations(self) -> list[int]:
        """Iteration indices ``0 .. n-1``."""
        return list(range(len(self.group_lrs)))

    @property
    def lrs(self) -> list[float]:
        """The last group's lr at each iteration."""
        return [g[-1] for g in self.group_lrs]

    @property
    def momentums(self) -> list[float] | None:
        """The last group's momentum at each iteration (``None`` when not scheduled)."""
        return None if self.group_moms is None else [g[-1] for g in self.group_moms]

    def plot(self, title: str | None = None):
        """lr panel, plus a momentum panel when momentum is scheduled; returns the Figure."""
        from .plots import plot_lr_mom

        return plot_lr_mom(self.iterations, self.lrs, self.momentums, title=title or self.name)


# --------------------------------------------------------------------------- fastai 0.7 schedules


@dataclass
class ConstantLR(Schedule):
    """``lr_t = lr`` for ``total`` iterations; momentum untouched.

    ``cycle_iters`` (one epoch in ``fit``) only sets what counts as a cycle, for ``norm_wds``.
    """

    lrs: GroupValues
    total: int | None = None
    cycle_iters: int | None = None

    def position(self, t: int) -> tuple[int, int]:
        if self.cycle_iters is None:
            return 0, t
        return t // self.cycle_iters, t % self.cycle_iters

    def cycle_iterations(self, t: int) -> int:
        return self.cycle_iters or self.total or 1

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        return list(self.lrs), None


def _geometric_epochs(cycle_len: int, cycle_mult: int, n_cycle: int) -> int:
    if cycle_mult == 1:
        return cycle_len * n_cycle
    return math.ceil(cycle_len * (1 - cycle_mult**n_cycle) / (1 - cycle_mult))


@dataclass
class SGDR(Schedule):
    """Cosine annealing with warm restarts (fastai 0.7 ``CosAnneal``).

    Cycle ``k`` has ``N_k = nb * cycle_len * cycle_mult**k`` iterations. Global
    iterations ``i < N_0 / 20`` use ``lr / 100`` (warm-up); otherwise
    ``lr_t = lr / 2 * (1 + cos(pi * t / N_k))`` with ``t`` counted from the start
    of cycle ``k``.
    """

    lrs: GroupValues
    nb: int
    cycle_len: int
    cycle_mult: int = 1
    n_cycle: int = 1

    def __post_init__(self) -> None:
        self.cycle_lengths = [self.nb * self.cycle_len * self.cycle_mult**k for k in range(self.n_cycle)]
        self.total = sum(self.cycle_lengths)

    def position(self, t: int) -> tuple[int, int]:
        for k, n in enumerate(self.cycle_lengths):
            if t < n:
                return k, t
            t -= n
        # Past the planned cycles (never reached by a fit): keep restarting with the last length.
        n = self.cycle_lengths[-1]
        return len(self.cycle_lengths) - 1 + t // n + 1, t % n

    def cycle_iterations(self, t: int) -> int:
        k, _ = self.position(t)
        return self.cycle_lengths[min(k, len(self.cycle_lengths) - 1)]

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        if t < self.cycle_lengths[0] / 20:
            return [lr / 100 for lr in self.lrs], None
        k, t_in = self.position(t)
        n = self.cycle_iterations(t)
        return [lr / 2 * (1 + math.cos(math.pi * t_in / n)) for lr in self.lrs], None


class _RepeatedCycle(Schedule):
    """``n_cycle`` equal cycles of ``cycle_iters`` iterations, with optional ``moms`` (fastai 0.7's use_clr*)."""

    cycle_iters: int
    moms: tuple[float, float] | None

    @property
    def has_momentum(self) -> bool:
        return self.moms is not None

    def position(self, t: int) -> tuple[int, int]:
        return t // self.cycle_iters, t % self.cycle_iters

    def cycle_iterations(self, t: int) -> int:
        return self.cycle_iters


@dataclass
class CircularLR(_RepeatedCycle):
    """Slanted triangle per cycle (fastai 0.7 ``use_clr=(div, cut_div[, max_mom, min_mom])``).

    ``c = floor(N / cut_div)``; ``p = t / c`` for ``t <= c`` else ``1 - (t - c) / (N - c)``;
    ``lr_t = lr * (1 + p * (div - 1)) / div``; ``mom_t = max_mom - p * (max_mom - min_mom)``.
    Every cycle has the same length ``N``.
    """

    lrs: GroupValues
    cycle_iters: int
    div: float
    cut_div: float
    moms: tuple[float, float] | None = None
    n_cycle: int = 1

    def __post_init__(self) -> None:
        self.peak = math.floor(self.cycle_iters / self.cut_div)
        if self.peak < 1:
            raise ValueError(
                f"use_clr: cut_div={self.cut_div} puts the peak before the first iteration of a "
                f"{self.cycle_iters}-iteration cycle (floor(N / cut_div) must be >= 1); "
                "lower cut_div or lengthen the cycle"
            )
        self.total = self.cycle_iters * self.n_cycle

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        _, t = self.position(t)
        c, n = self.peak, self.cycle_iters
        p = t / c if t <= c else 1 - (t - c) / (n - c)
        lrs = [lr * (1 + p * (self.div - 1)) / self.div for lr in self.lrs]
        if self.moms is None:
            return lrs, None
        max_mom, min_mom = self.moms
        return lrs, [max_mom - p * (max_mom - min_mom)] * len(self.lrs)


@dataclass
class OneCycle(_RepeatedCycle):
    """The 1cycle policy (fastai 0.7 ``use_clr_beta=(div, pct[, max_mom, min_mom])``).

    ``C = int(N * (1 - pct / 100) / 2)``. Up (``t <= C``): ``lr * (1 + (t/C)(div-1)) / div``,
    ``mom = max - (t/C)(max - min)``. Down (``C < t <= 2C``): the same with
    ``1 - (t-C)/C`` in place of ``t/C``. Annihilation (``t > 2C``):
    ``lr * (1 - 0.99 a) / div`` with ``a = (t - 2C) / (N - 2C)``, ``mom = max``.
    """

    lrs: GroupValues
    cycle_iters: int
    div: float
    pct: float
    moms: tuple[float, float] | None = None
    n_cycle: int = 1

    def __post_init__(self) -> None:
        self.half = int(self.cycle_iters * (1 - self.pct / 100) / 2)
        if self.half < 1:
            raise ValueError(
                f"use_clr_beta: a {self.cycle_iters}-iteration cycle with pct={self.pct} gives "
                f"C = int(N * (1 - pct/100) / 2) = {self.half}; C must be >= 1: lengthen the cycle "
                "(cycle_len, or fewer accumulated batches) or lower pct"
            )
        self.total = self.cycle_iters * self.n_cycle

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        _, t = self.position(t)
        c, n, div = self.half, self.cycle_iters, self.div
        if t > 2 * c:
            a = (t - 2 * c) / (n - 2 * c)
            lrs = [lr * (1 - 0.99 * a) / div for lr in self.lrs]
            moms = None if self.moms is None else [self.moms[0]] * len(self.lrs)
            return lrs, moms
        p = t / c if t <= c else 1 - (t - c) / c
        lrs = [lr * (1 + p * (div - 1)) / div for lr in self.lrs]
        if self.moms is None:
            return lrs, None
        max_mom, min_mom = self.moms
        return lrs, [max_mom - p * (max_mom - min_mom)] * len(self.lrs)


# --------------------------------------------------------------------------- PyTorch-compatible schedules


def _no_scale(x: float) -> float:
    return 1.0


def _halving_scale(x: float) -> float:
    return 1 / (2.0 ** (x - 1))


@dataclass
class _ExpRangeScale:
    gamma: float

    def __call__(self, x: float) -> float:
        return self.gamma**x


@dataclass
class CyclicLR(Schedule):
    """Values of ``torch.optim.lr_scheduler.CyclicLR`` after ``t`` steps, per group.

    ``total = up + down``, ``cycle = floor(1 + t/total)``, ``x = 1 + t/total - cycle``,
    ``s = x / (up/total)`` if ``x <= up/total`` else ``(x - 1) / (up/total - 1)``;
    ``lr = base + (max - base) * s * scale``, ``mom = max_m - (max_m - base_m) * s * scale``,
    with ``scale`` 1 (triangular), ``1 / 2**(cycle-1)`` (triangular2), ``gamma**t``
    (exp_range) or ``scale_fn(cycle)`` / ``scale_fn(t)`` per ``scale_mode``.
    """

    base_lrs: GroupValues
    max_lrs: GroupValues
    step_size_up: float = 2000
    step_size_down: float | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Callable[[float], float] | None = None
    scale_mode: str = "cycle"
    cycle_momentum: bool = True
    base_moms: GroupValues | None = None
    max_moms: GroupValues | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if self.scale_fn is not None:
            self._scale, self._scale_mode = self.scale_fn, self.scale_mode
        elif self.mode == "triangular":
            self._scale, self._scale_mode = _no_scale, "cycle"
        elif self.mode == "triangular2":
            self._scale, self._scale_mode = _halving_scale, "cycle"
        else:
            self._scale, self._scale_mode = _ExpRangeScale(self.gamma), "iterations"

    @property
    def has_momentum(self) -> bool:
        return self.cycle_momentum

    def position(self, t: int) -> tuple[int, int]:
        cycle = math.floor(1 + t / self.total_size)
        return cycle - 1, t - math.ceil((cycle - 1) * self.total_size)

    def cycle_iterations(self, t: int) -> float:
        """``step_size_up + step_size_down`` (may be fractional, as in torch)."""
        return self.total_size

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        if x <= self.step_ratio:
            s = x / self.step_ratio
        else:
            s = (x - 1) / (self.step_ratio - 1)
        scale = self._scale(cycle if self._scale_mode == "cycle" else t)
        lrs = [base + (top - base) * s * scale for base, top in zip(self.base_lrs, self.max_lrs)]
        if not self.cycle_momentum:
            return lrs, None
        moms = [top - (top - base) * s * scale for base, top in zip(self.base_moms, self.max_moms)]
        return lrs, moms


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


@dataclass
class _Phase:
    end_step: float
    start_lr: str
    end_lr: str
    start_mom: str
    end_mom: str


@dataclass
class OneCycleLR(Schedule):
    """Values of ``torch.optim.lr_scheduler.OneCycleLR`` after ``t`` steps, per group.

    Phases (a table, not branches): two (warm up to ``max_lr`` over ``pct_start`` of the
    steps, then anneal to ``max_lr / div_factor / final_div_factor``) or, with
    ``three_phase``, three (up, back down to the initial lr, then annihilate).
    Momentum mirrors lr between ``max_momentum`` and ``base_momentum``.
    """

    max_lrs: GroupValues
    total: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    cycle_momentum: bool = True
    base_moms: GroupValues = (0.85,)
    max_moms: GroupValues = (0.95,)
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self) -> None:
        n = self.total
        if self.three_phase:
            self.phases = [
                _Phase(float(self.pct_start * n) - 1, "initial", "max", "max_m", "base_m"),
                _Phase(float(2 * self.pct_start * n) - 2, "max", "initial", "base_m", "max_m"),
                _Phase(n - 1, "initial", "min", "max_m", "max_m"),
            ]
        else:
            self.phases = [
                _Phase(float(self.pct_start * n) - 1, "initial", "max", "max_m", "base_m"),
                _Phase(n - 1, "max", "min", "base_m", "max_m"),
            ]
        self.anneal = _anneal_cos if self.anneal_strategy == "cos" else _anneal_linear
        self.points = []
        for g, top in enumerate(self.max_lrs):
            initial = top / self.div_factor
            self.points.append(
                {
                    "initial": initial,
                    "max": top,
                    "min": initial / self.final_div_factor,
                    "max_m": self.max_moms[g],
                    "base_m": self.base_moms[g],
                }
            )

    @property
    def has_momentum(self) -> bool:
        return self.cycle_momentum

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        if not 0 <= t < self.total:
            # torch would extrapolate one step past the end; the contract stops at the last step.
            raise ValueError(f"t must be in [0, {self.total - 1}] (total_steps={self.total}); got {t}")
        start = 0.0
        for i, phase in enumerate(self.phases):
            if t <= phase.end_step or i == len(self.phases) - 1:
                pct = (t - start) / (phase.end_step - start)
                break
            start = phase.end_step
        lrs = [self.anneal(p[phase.start_lr], p[phase.end_lr], pct) for p in self.points]
        if not self.cycle_momentum:
            return lrs, None
        return lrs, [self.anneal(p[phase.start_mom], p[phase.end_mom], pct) for p in self.points]


# --------------------------------------------------------------------------- range-test sweep


@dataclass
class LRSweep(Schedule):
    """LR range test sweep over ``total`` planned iterations.

    Exponential: ``lr_i = start * (end/start)**(i/(n-1))``; linear:
    ``lr_i = start + (end - start) * i / (n-1)``. Per-group ``start_lrs`` are all
    scaled alike (each group keeps its ratio to the last group).
    """

    start_lrs: GroupValues
    end_lr: float
    total: int
    linear: bool = False

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        start = self.start_lrs[-1]
        frac = t / (self.total - 1) if self.total > 1 else 0.0
        if self.linear:
            last = start + (self.end_lr - start) * frac
        else:
            last = start * (self.end_lr / start) ** frac
        return [last if s == start else s * (last / start) for s in self.start_lrs], None


# --------------------------------------------------------------------------- builders


def _check_mom_pair(name: str, values: Sequence[float]) -> tuple[float, float]:
    max_mom = check_number(f"{name} max_mom", values[0], minimum=0.0, maximum=1.0)
    min_mom = check_number(f"{name} min_mom", values[1], minimum=0.0, maximum=1.0)
    return max_mom, min_mom


def fit_schedule(
    lrs: Sequence[float],
    nb: int,
    n_cycle: int,
    cycle_len: int | None = None,
    cycle_mult: int = 1,
    use_clr: Sequence[float] | None = None,
    use_clr_beta: Sequence[float] | None = None,
) -> tuple[Schedule, int]:
    """The schedule and number of epochs for ``learn.fit``'s arguments (fastai 0.7 rules)."""
    n_cycle = check_int("n_cycle", n_cycle, minimum=1)
    cycle_mult = check_int("cycle_mult", cycle_mult, minimum=1)
    lrs = tuple(lrs)
    if use_clr is not None and use_clr_beta is not None:
        raise ValueError("use_clr and use_clr_beta: pass at most one of them (got both)")
    if cycle_len is None:
        if use_clr is not None or use_clr_beta is not None:
            name = "use_clr" if use_clr is not None else "use_clr_beta"
            raise ValueError(f"{name} needs cycle_len (epochs per cycle); got cycle_len=None")
        if cycle_mult != 1:
            raise ValueError(f"cycle_mult={cycle_mult} needs cycle_len; got cycle_len=None")
        return ConstantLR(lrs, total=nb * n_cycle, cycle_iters=nb), n_cycle
    cycle_len = check_int("cycle_len", cycle_len, minimum=1)
    n_epochs = _geometric_epochs(cycle_len, cycle_mult, n_cycle)
    cycle_iters = nb * cycle_len
    n_cycles_total = n_epochs // cycle_len
    if use_clr is not None:
        values = _check_tuple("use_clr", use_clr, "(div, cut_div) or (div, cut_div, max_mom, min_mom)")
        div = check_number("use_clr div", values[0], minimum=1.0, exclusive_min=True)
        cut_div = check_number("use_clr cut_div", values[1], minimum=1.0, exclusive_min=True)
        moms = _check_mom_pair("use_clr", values[2:]) if len(values) == 4 else None
        return CircularLR(lrs, cycle_iters, div, cut_div, moms, n_cycles_total), n_epochs
    if use_clr_beta is not None:
        values = _check_tuple("use_clr_beta", use_clr_beta, "(div, pct) or (div, pct, max_mom, min_mom)")
        div = check_number("use_clr_beta div", values[0], minimum=1.0, exclusive_min=True)
        pct = check_number("use_clr_beta pct", values[1], minimum=0.0, maximum=100.0, exclusive_min=True, exclusive_max=True)
        moms = _check_mom_pair("use_clr_beta", values[2:]) if len(values) == 4 else None
        return OneCycle(lrs, cycle_iters, div, pct, moms, n_cycles_total), n_epochs
    return SGDR(lrs, nb, cycle_len, cycle_mult, n_cycle), n_epochs


def _check_tuple(name: str, values: Any, allowed: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a tuple {allowed}; got {values!r}")
    if len(values) not in (2, 4):
        raise ValueError(f"{name} must have 2 or 4 values {allowed}; got {len(values)}: {tuple(values)!r}")
    return tuple(check_number(f"{name}[{i}]", v) for i, v in enumerate(values))


def cyclic_schedule(
    n_groups: int,
    base_lr: float | Sequence[float],
    max_lr: float | Sequence[float],
    step_size_up: float = 2000,
    step_size_down: float | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[float], float] | None = None,
    scale_mode: str = "cycle",
    cycle_momentum: bool = True,
    base_momentum: float | Sequence[float] = 0.8,
    max_momentum: float | Sequence[float] = 0.9,
    total: int | None = None,
) -> CyclicLR:
    """A :class:`CyclicLR` from ``torch.optim.lr_scheduler.CyclicLR``'s arguments, validated.

    Momentum bounds only have to be >= 0: like torch (whose own tests cycle momentum
    between 1 and 5), values above 1 are the caller's choice.
    """
    base = as_group_values("base_lr", base_lr, n_groups, positive=True)
    top = as_group_values("max_lr", max_lr, n_groups, positive=True)
    check_number("step_size_up", step_size_up, minimum=0.0, exclusive_min=True)
    if step_size_down is not None:
        check_number("step_size_down", step_size_down, minimum=0.0, exclusive_min=True)
    if scale_fn is None:
        check_choice("mode", mode, ("triangular", "triangular2", "exp_range"), extra=" (or pass scale_fn)")
    elif not callable(scale_fn):
        raise TypeError(f"scale_fn must be callable; got {scale_fn!r}")
    check_choice("scale_mode", scale_mode, ("cycle", "iterations"))
    check_number("gamma", gamma, minimum=0.0, exclusive_min=True)
    check_bool("cycle_momentum", cycle_momentum)
    base_m = top_m = None
    if cycle_momentum:
        base_m = as_group_values("base_momentum", base_momentum, n_groups, minimum=0.0)
        top_m = as_group_values("max_momentum", max_momentum, n_groups, minimum=0.0)
    return CyclicLR(base, top, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode,
                    bool(cycle_momentum), base_m, top_m, total)


def one_cycle_schedule(
    n_groups: int,
    max_lr: float | Sequence[float],
    total: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
    base_momentum: float | Sequence[float] = 0.85,
    max_momentum: float | Sequence[float] = 0.95,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> OneCycleLR:
    """A :class:`OneCycleLR` from ``torch.optim.lr_scheduler.OneCycleLR``'s arguments, validated.

    As in torch, momentum bounds only have to be >= 0.
    """
    top = as_group_values("max_lr", max_lr, n_groups, positive=True)
    total = check_int("total_steps (epochs * batches per epoch)", total, minimum=1)
    pct_start = check_number("pct_start", pct_start, minimum=0.0, maximum=1.0)
    check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
    check_number("div_factor", div_factor, minimum=0.0, exclusive_min=True)
    check_number("final_div_factor", final_div_factor, minimum=0.0, exclusive_min=True)
    check_bool("cycle_momentum", cycle_momentum)
    check_bool("three_phase", three_phase)
    base_m = as_group_values("base_momentum", base_momentum, n_groups, minimum=0.0)
    top_m = as_group_values("max_momentum", max_momentum, n_groups, minimum=0.0)
    sched = OneCycleLR(top, total, float(pct_start), anneal_strategy, bool(cycle_momentum), base_m, top_m,
                       float(div_factor), float(final_div_factor), bool(three_phase))
    # A phase of zero length divides by zero where an integer step lands on it (torch fails there too).
    edges = {0, total - 1}
    for phase in sched.phases:
        edges.update({math.floor(phase.end_step), math.floor(phase.end_step) + 1})
    for t in sorted(e for e in edges if 0 <= e < total):
        try:
            sched(t)
        except ZeroDivisionError:
            raise ValueError(
                f"pct_start={pct_start} with total_steps={total} gives a phase of zero length at step {t}; "
                "use more steps (epochs) or another pct_start"
            ) from None
    return sched


# --------------------------------------------------------------------------- previews

_CYCLIC_KEYS = ("epochs", "base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma", "scale_fn",
                "scale_mode", "cycle_momentum", "base_momentum", "max_momentum")
_ONE_CYCLE_KEYS = ("epochs", "max_lr", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
                   "max_momentum", "div_factor", "final_div_factor", "three_phase")


def preview(
    iterations: int,
    lr: float = 1.0,
    *,
    use_clr: Sequence[float] | None = None,
    use_clr_beta: Sequence[float] | None = None,
    cycle_mult: int = 1,
    n_cycle: int = 1,
    cyclic: dict | None = None,
    one_cycle: dict | None = None,
) -> ScheduleValues:
    """Evaluate a schedule without training; ``.plot()`` on the result draws it.

    ``iterations`` is the length of one cycle, as if ``fit(lr, n_cycle, cycle_len=1,
    cycle_mult=..., use_clr=..., use_clr_beta=...)`` ran on ``iterations`` batches per
    epoch (SGDR when neither ``use_clr`` nor ``use_clr_beta`` is given). ``cyclic`` holds
    ``fit_cyclic``'s keyword arguments and ``one_cycle`` those of ``fit_one_cycle``; for
    them ``iterations`` is one epoch and ``epochs`` (default 1) sets the length. Their
    learning rates come from the dict, so ``lr`` must then stay at its default.
    """
    iterations = check_int("iterations", iterations, minimum=1)
    if cyclic is not None and one_cycle is not None:
        raise ValueError("cyclic and one_cycle: pass at most one of them (got both)")
    torch_style = "cyclic" if cyclic is not None else "one_cycle" if one_cycle is not None else None
    if torch_style is None:
        lrs = _preview_lrs(lr)
        schedule, _ = fit_schedule(lrs, iterations, n_cycle, 1, cycle_mult, use_clr, use_clr_beta)
        return schedule.values()
    given = {"use_clr": use_clr, "use_clr_beta": use_clr_beta}
    extra = [name for name, value in given.items() if value is not None]
    extra += [f"cycle_mult={cycle_mult!r}"] if cycle_mult != 1 else []
    extra += [f"n_cycle={n_cycle!r}"] if n_cycle != 1 else []
    extra += [f"lr={lr!r}"] if lr != 1.0 else []
    if extra:
        raise ValueError(f"{torch_style}: do not combine it with {', '.join(extra)} (they belong to fit-style schedules)")
    if torch_style == "cyclic":
        kwargs = _preview_kwargs("cyclic", cyclic, _CYCLIC_KEYS, ("base_lr", "max_lr"))
        build = cyclic_schedule
    else:
        kwargs = _preview_kwargs("one_cycle", one_cycle, _ONE_CYCLE_KEYS, ("max_lr",))
        build = one_cycle_schedule
    epochs = check_int(f"{torch_style}['epochs']", kwargs.pop("epochs", 1), minimum=1)
    return build(_preview_groups(kwargs), total=epochs * iterations, **kwargs).values()


def _preview_lrs(lr: Any) -> tuple[float, ...]:
    if isinstance(lr, Sequence) and not isinstance(lr, (str, bytes)):
        return as_group_values("lr", lr, len(lr), positive=True)
    return (check_number("lr", lr, minimum=0.0, exclusive_min=True),)


def _preview_kwargs(name: str, values: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise TypeError(f"{name} must be a dict of keyword arguments; got {type(values).__name__}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise TypeError(f"{name}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in values]
    if missing:
        raise ValueError(f"{name} must hold {' and '.join(map(repr, missing))} (the fit needs them)")
    return dict(values)


def _preview_groups(kwargs: dict[str, Any]) -> int:
    """Number of layer groups implied by per-group lists in the arguments (1 when all are scalars)."""
    for value in kwargs.values():
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return len(value)
    return 1
