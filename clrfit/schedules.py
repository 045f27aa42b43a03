"""Schedules: pure, picklable functions of the iteration index, written as phase tables.

A schedule maps the index ``t`` of an optimizer step (counted from the start of
the fit, ``0 .. total-1``) to the learning rate of every param group and,
optionally, the momentum of every group (``None`` leaves momentum alone)::

    lrs, moms = schedule(t)

Schedules know nothing about optimizers or models, so they can be tested,
plotted and previewed without training (see :func:`preview`). The formulas are
those of ``SCHEDULES.md``; each class's docstring restates its own.

Most schedules are a table of :class:`Phase` rows (``print(schedule)`` shows it)
read by one evaluator, :func:`evaluate`: find the phase that holds ``t``, take
``pct``, the fraction of the phase done, and anneal lr and momentum between the
phase's two points (``constant``, ``linear``, ``cos`` or ``exp``). The fastai 0.7
schedules (constant, SGDR, ``use_clr``, ``use_clr_beta``) give lr as a multiple of
the ``lrs`` passed to ``fit`` (``lr * level / divisor``); torch's ``OneCycleLR``
and the range-test sweep give it directly. ``CyclicLR`` (a scaled triangle
wave, torch's formula) is the one schedule evaluated by its own formula.

Each torch scheduler's arguments (names, defaults, types) are written once, as
the fields of :class:`CyclicLR` and :class:`OneCycleLR`; :data:`CYCLIC` and
:data:`ONE_CYCLE` expose them as an ``inspect.Signature`` and as argument dicts
for the learner, the builders, :class:`clrfit.ScheduleLR`, checkpoints and the CLI
(:data:`FIT` does the same for ``learn.fit``'s schedule arguments).
:func:`arguments` gives any schedule's own arguments as plain, comparable values
(:func:`plain`, with callables named by :func:`callable_fingerprint`); checkpoints
compare a fit's arguments and schedule with the same two functions.

Numbers may be Python, numpy or 0-d tensor scalars: every builder turns them into
Python floats before checking them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import itertools
import math
import numbers
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .validation import FIT_METHODS as METHODS  # the learner methods whose schedule arguments schedule_for takes
from .validation import (ANNEAL_STRATEGIES, ANNEALS, CYCLIC_MODES, SCALE_MODES, ArgumentError,
                         ArgumentTypeError, as_group_values, check_bool, check_choice, check_int, check_number,
                         escape, fail)

GroupValues = tuple[float, ...]
#: A phase's point: one value for every group (scaled by the schedule) or one value per group.
Level = float | tuple[float, ...]


# --------------------------------------------------------------------------- phases and their evaluator


@dataclass(frozen=True)
class Phase:
    """One row of a phase table: steps up to ``last``, values annealed from ``lr[0]`` to ``lr[1]``.

    ``pct = (t - start) / (end - start)`` is the fraction of the phase done
    (``1 - pct`` when ``reverse``: the phase runs its points backwards, as fastai
    0.7's down ramps are written). Annealing from ``a`` to ``b``: ``constant`` is
    ``a``; ``linear`` is ``a + (b - a) * pct``; ``cos`` is
    ``b + (a - b) / 2 * (cos(angle) + 1)`` with ``angle = pi * pct``, or
    ``pi * (t - start) / (end - start)`` when ``fastai_angle`` (fastai 0.7 rounds it
    that way, torch the other); ``exp`` is ``a * (b / a) ** pct``.
    With a ``divisor``, lr points are multiples of the schedule's lrs:
    ``lr_g = lrs[g] * level / divisor``.
    """

    name: str
    start: float
    end: float
    last: float
    anneal: str
    lr: tuple[Level, Level]
    mom: tuple[Level, Level] | None = None
    divisor: float | None = None
    reverse: bool = False
    fastai_angle: bool = False


def anneal(kind: str, start: float, end: float, pct: float, angle: float | None = None) -> float:
    """The value ``pct`` of the way from ``start`` to ``end`` (see :class:`Phase` for each kind)."""
    return anneal_all(kind, start, end, [pct], None if angle is None else [angle])[0]


def anneal_all(kind: str, start: float, end: float, pcts: Sequence[float],
               angles: Sequence[float] | None = None) -> list[float]:
    """:func:`anneal` at every ``pcts[i]`` (cos: at ``angles[i]`` when given): the formulas' one owner."""
    if kind == "constant":
        return [start] * len(pcts)
    if kind == "linear":
        rise = end - start
        return [start + rise * pct for pct in pcts]
    if kind == "cos":
        half, cos, pi = (start - end) / 2.0, math.cos, math.pi
        if angles is None:
            return [end + half * (cos(pi * pct) + 1) for pct in pcts]
        return [end + half * (cos(angle) + 1) for angle in angles]
    if kind == "exp":
        ratio = end / start
        return [start * ratio ** pct for pct in pcts]
    raise ArgumentError("kind", escape(f"anneal must be one of {', '.join(map(repr, ANNEALS))}; got {kind!r}"))


def evaluate(phases: Sequence[Phase], t: float) -> tuple[Phase, Any, Any]:
    """``(phase, lr level, momentum level or None)`` at step ``t``: the first phase with ``t <= last``.

    A level is one float, or a list of per-group floats where the phase's points are per group.

    Past the last row the final phase goes on (its ``pct`` exceeds 1).
    """
    phase = _phase_at(phases, t)[0]
    lrs, moms = evaluate_phase(phase, [t])
    return phase, lrs[0], None if moms is None else moms[0]


def evaluate_phase(phase: Phase, ts: Sequence[float]) -> tuple[list[Any], list[Any] | None]:
    """The lr levels and momentum levels (None without momentum) of ``phase`` at the steps ``ts``, all in it."""
    kind = phase.anneal
    pcts, angles = [0.0] * len(ts), None
    if kind != "constant":
        start, length = phase.start, phase.end - phase.start
        if phase.reverse:
            pcts = [1 - (t - start) / length for t in ts]
        else:
            pcts = [(t - start) / length for t in ts]
        if phase.fastai_angle:
            pi = math.pi
            angles = [pi * (t - start) / length for t in ts]
    lrs = _anneal_points(kind, phase.lr, pcts, angles)
    return lrs, None if phase.mom is None else _anneal_points(kind, phase.mom, pcts, angles)


def _anneal_points(kind: str, points: tuple[Level, Level], pcts: list[float], angles: list[float] | None) -> list[Any]:
    a, b = points
    if type(a) is not tuple:
        return anneal_all(kind, a, b, pcts, angles)
    return _rows_of([anneal_all(kind, x, y, pcts, angles) for x, y in zip(a, b)])


def _divmods(t0: int, t1: int, n: int) -> list[tuple[int, int]]:
    """``(t // n, t % n)`` for ``t`` in ``t0 .. t1 - 1``: the positions of equal cycles of ``n`` steps."""
    return list(map(divmod, range(t0, t1), itertools.repeat(n)))


def _rows_of(columns: list[list[float]]) -> list[list[float]]:
    """Per-step rows (one value per group) from per-group columns (one value per step)."""
    return list(map(list, zip(*columns)))


def _per_group(values: list[float], n: int) -> list[list[float]]:
    """Each step's one value repeated for ``n`` groups."""
    return _rows_of([values] * n)


def _phase_at(phases: Sequence[Phase], t: float) -> tuple[Phase, float]:
    """The phase holding step ``t`` (the first with ``t <= last``) and the last step it holds."""
    for phase in phases:
        if t <= phase.last:
            return phase, phase.last
    return phases[-1], math.inf  # past the last row: the final phase goes on


class Schedule:
    """Base class: ``schedule(t) -> (lrs per group, momentums per group or None)``.

    A subclass either sets ``phases`` (a list of :class:`Phase`, read by
    :func:`evaluate`; ``period`` makes it repeat) or overrides ``__call__``.
    """

    #: Iterations the schedule is defined for (``None``: unbounded).
    total: int | None = None
    #: The phase table repeats every ``period`` steps (``None``: it covers the whole run).
    period: int | None = None
    phases: Sequence[Phase] = ()

    def __call__(self, t: int) -> tuple[list[float], list[float] | None]:
        self._check_steps(t, t)
        local = t % self.period if self.period else t
        return self._phase_rows(_phase_at(self._table(), local)[0], [local])[0]

    def span(self, t0: int, t1: int) -> list[tuple[list[float], list[float] | None]]:
        """``[self(t) for t in range(t0, t1)]``; a phase table is evaluated a phase at a time, which is cheaper."""
        if type(self).__call__ is not Schedule.__call__:  # a formula of its own
            return [self(t) for t in range(t0, t1)]
        phases, period, rows = self._table(), self.period, []
        if t1 > t0:
            self._check_steps(t0, t1 - 1)
        while t0 < t1:
            local = t0 % period if period else t0
            phase, last = _phase_at(phases, local)
            n = t1 - t0 if not period else min(t1 - t0, period - local)
            if last != math.inf:
                n = min(n, math.floor(last) - local + 1)
            rows += self._phase_rows(phase, range(local, local + n))
            t0 += n
        return rows

    def _table(self) -> Sequence[Phase]:
        if not self.phases:
            raise NotImplementedError(f"{type(self).__name__}: set phases or override __call__(t)")
        return self.phases

    def _phase_rows(self, phase: Phase, ts: Sequence[float]) -> list[tuple[list[float], list[float] | None]]:
        levels, moms = evaluate_phase(phase, ts)
        lrs = self._group_rows(levels, phase)
        if moms is None:
            return list(zip(lrs, [None] * len(lrs)))
        if moms and type(moms[0]) is not list:  # one momentum for every group
            moms = _per_group(moms, len(lrs[0]))
        return list(zip(lrs, moms))

    def _group_rows(self, levels: list[Any], phase: Phase) -> list[list[float]]:
        """Each step's per-group lrs from its level (multiples of ``lrs`` when the phase has a divisor)."""
        if phase.divisor is not None:
            divisor = phase.divisor
            return _rows_of([[lr * level / divisor for level in levels] for lr in self.lrs])
        return levels if levels and type(levels[0]) is list else _per_group(levels, 1)

    def _check_steps(self, first: int, last: int) -> None:
        """Raise for steps the schedule is not defined at (most schedules go on past their table)."""

    def _check_within(self, first: int, last: int, planned: str) -> None:
        if not (0 <= first and last < self.total):
            bad = first if not 0 <= first < self.total else self.total  # the first step outside
            raise ArgumentError("t", f"{{t}} must be in [0, {self.total - 1}] ({planned}); got {escape(str(bad))}")

    def position(self, t: int) -> tuple[int, int]:
        """``(cycle, iteration in cycle)`` of step ``t``."""
        return 0, t

    def positions(self, t0: int, t1: int) -> list[tuple[int, int]]:
        """``[self.position(t) for t in range(t0, t1)]``."""
        return [self.position(t) for t in range(t0, t1)]

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
                raise ArgumentError("n", "{n}: this schedule is unbounded; pass the number of iterations to evaluate")
            n = self.total
        n = check_int("n", _scalar(n), minimum=1)
        if self.total is not None and n > self.total:
            raise ArgumentError("n", f"{{n}} must be <= {self.total} (this schedule's iterations); got {n}")
        group_lrs, group_moms = [], []
        for t in range(n):
            lrs, moms = self(t)
            group_lrs.append(lrs)
            group_moms.append(moms)
        return ScheduleValues(group_lrs, group_moms if self.has_momentum else None, name=type(self).__name__)

    def plot(self, n: int | None = None):
        """Plot lr (and momentum when the schedule sets it) over ``n`` iterations; returns the Figure."""
        return self.values(n).plot()

    def describe(self) -> str:
        """The phase table as text (what ``print(schedule)`` shows)."""
        if not self.phases:
            return repr(self)
        return _phase_table(self._headline(), self.phases, self._display_lr, self.total if not self.period else self.period)

    def __str__(self) -> str:
        return self.describe()

    def _headline(self) -> str:
        total = "unbounded" if self.total is None else f"{self.total} steps"
        return f"{type(self).__name__}: {total}"

    def _display_lr(self, level: Level, phase: Phase) -> float:
        return self._group_rows([list(level) if isinstance(level, tuple) else level], phase)[0][-1]


def _phase_table(headline: str, phases: Sequence[Phase], lr_of: Callable[[Level, Phase], float],
                 length: int | None) -> str:
    rows = [("phase", "steps", "anneal", "lr", "momentum")]
    first = 0
    for phase in phases:
        last = phase.last if math.isfinite(phase.last) else (length - 1 if length else math.inf)
        last_step = math.floor(last)
        steps = f"{first}-{last_step}" if math.isfinite(last) else f"{first}-"
        a, b = phase.lr[::-1] if phase.reverse else phase.lr
        lr = _arrow(lr_of(a, phase), lr_of(b, phase), phase.anneal)
        mom = "-"
        if phase.mom is not None:
            ma, mb = phase.mom[::-1] if phase.reverse else phase.mom
            mom = _arrow(_last(ma), _last(mb), phase.anneal)
        rows.append((phase.name, steps, phase.anneal, lr, mom))
        first = last_step + 1
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([headline] + lines)


def _last(level: Level) -> float:
    return level[-1] if isinstance(level, tuple) else level


def _arrow(a: float, b: float, kind: str) -> str:
    return f"{a:.4g}" if kind == "constant" or a == b else f"{a:.4g} -> {b:.4g}"


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
        from .plots import plot_lr_mom  # matplotlib only when a picture is asked for

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

    def __post_init__(self) -> None:
        self.phases = [Phase("constant", 0, 0, math.inf, "constant", (1.0, 1.0), divisor=1.0)]

    def position(self, t: int) -> tuple[int, int]:
        if self.cycle_iters is None:
            return 0, t
        return t // self.cycle_iters, t % self.cycle_iters

    def positions(self, t0: int, t1: int) -> list[tuple[int, int]]:
        return super().positions(t0, t1) if self.cycle_iters is None else _divmods(t0, t1, self.cycle_iters)

    def cycle_iterations(self, t: int) -> int:
        return self.cycle_iters or self.total or 1

    def _phase_rows(self, phase: Phase, ts: list[float]) -> list[tuple[list[float], list[float] | None]]:
        return [(list(self.lrs), None) for _ in ts]  # the table's lr * 1 / 1, without the arithmetic


def _geometric_epochs(cycle_len: int, cycle_mult: int, n_cycle: int) -> int:
    if cycle_mult == 1:
        return cycle_len * n_cycle
    return math.ceil(cycle_len * (1 - cycle_mult**n_cycle) / (1 - cycle_mult))


@dataclass
class SGDR(Schedule):
    """Cosine annealing with warm restarts (fastai 0.7 ``CosAnneal``).

    Cycle ``k`` has ``N_k = nb * cycle_len * cycle_mult**k`` iterations and starts at
    global iteration ``S_k``. Warm-up: global iterations ``i < N_k / 20`` of cycle
    ``k`` use ``lr / 100`` (fastai compares the global iteration with the current
    cycle's length, so only the first cycle warms up unless ``cycle_mult > 20``);
    otherwise ``lr_t = lr / 2 * (1 + cos(pi * t / N_k))`` with ``t = i - S_k``
    counted from the start of cycle ``k`` (warm-up iterations count towards ``t``).
    """

    lrs: GroupValues
    nb: int
    cycle_len: int
    cycle_mult: int = 1
    n_cycle: int = 1

    def __post_init__(self) -> None:
        self.cycle_lengths = [self.nb * self.cycle_len * self.cycle_mult**k for k in range(self.n_cycle)]
        self.total = sum(self.cycle_lengths)
        self.phases = []
        begin = 0
        for k, n in enumerate(self.cycle_lengths):
            if begin < n / 20:
                # the last integer i with i < n / 20, within the cycle
                warm_last = min(math.ceil(n / 20) - 1, begin + n - 1)
                self.phases.append(Phase(f"warm-up {k}", begin, begin + n, warm_last, "constant", (1.0, 1.0),
                                         divisor=100.0))
            self.phases.append(Phase(f"cycle {k}", begin, begin + n, begin + n - 1, "cos", (1.0, 0.0),
                                     divisor=1.0, fastai_angle=True))
            begin += n

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

    def _check_steps(self, first: int, last: int) -> None:
        self._check_within(first, last, f"the planned {self.n_cycle} cycles")

    def _headline(self) -> str:
        return f"SGDR: {self.n_cycle} cycle(s), {self.total} steps (lr of the last group)"


@dataclass
class _RepeatedCycle(Schedule):
    """``n_cycle`` equal cycles of ``cycle_iters`` iterations, with optional ``moms`` (fastai 0.7's use_clr*).

    The fields every such cycle has; a subclass adds its own (then ``moms`` and
    ``n_cycle``) and writes one cycle's phase table in :meth:`_cycle`.
    """

    lrs: GroupValues
    cycle_iters: int
    div: float

    def __post_init__(self) -> None:
        self.total = self.cycle_iters * self.n_cycle
        self.period = self.cycle_iters
        self.phases = self._cycle(self.cycle_iters, self.div, None if self.moms is None else tuple(self.moms))

    def _cycle(self, n: int, div: float, mom: tuple[float, float] | None) -> list[Phase]:
        """The phases of a cycle of ``n`` steps, lr points as multiples of ``lr / div``, momentum points ``mom``."""
        raise NotImplementedError

    @property
    def has_momentum(self) -> bool:
        return self.moms is not None

    def position(self, t: int) -> tuple[int, int]:
        return t // self.cycle_iters, t % self.cycle_iters

    def positions(self, t0: int, t1: int) -> list[tuple[int, int]]:
        return _divmods(t0, t1, self.cycle_iters)

    def cycle_iterations(self, t: int) -> int:
        return self.cycle_iters

    def _headline(self) -> str:
        return (f"{type(self).__name__}: {self.n_cycle} cycle(s) of {self.cycle_iters} steps "
                f"(one cycle shown; lr of the last group)")


@dataclass
class CircularLR(_RepeatedCycle):
    """Slanted triangle per cycle (fastai 0.7 ``use_clr=(div, cut_div[, max_mom, min_mom])``).

    ``c = N // cut_div`` (Python's floor division, as fastai: ``13 // 2.6 == 4``);
    ``p = t / c`` for ``t <= c`` else ``1 - (t - c) / (N - c)``;
    ``lr_t = lr * (1 + p * (div - 1)) / div``; ``mom_t = max_mom - p * (max_mom - min_mom)``.
    Every cycle has the same length ``N``.
    """

    cut_div: float
    moms: tuple[float, float] | None = None
    n_cycle: int = 1

    def _cycle(self, n: int, div: float, mom: tuple[float, float] | None) -> list[Phase]:
        # fastai 0.7 writes nb // cut_div: with a float cut_div this can be one below floor(N / cut_div)
        self.peak = c = int(n // self.cut_div)
        if c < 1:
            raise ArgumentError(
                "use_clr",
                f"{{use_clr}}: cut_div={self.cut_div} puts the peak before the first iteration of a "
                f"{n}-iteration cycle (N // cut_div must be >= 1); lower cut_div or lengthen the cycle",
            )
        return [
            Phase("up", 0, c, c, "linear", (1.0, div), mom, divisor=div),
            Phase("down", c, n, math.inf, "linear", (1.0, div), mom, divisor=div, reverse=True),
        ]


@dataclass
class OneCycle(_RepeatedCycle):
    """The 1cycle policy (fastai 0.7 ``use_clr_beta=(div, pct[, max_mom, min_mom])``).

    ``C = int(N * (1 - pct / 100) / 2)``. Up (``t <= C``): ``lr * (1 + (t/C)(div-1)) / div``,
    ``mom = max - (t/C)(max - min)``. Down (``C < t <= 2C``): the same with
    ``1 - (t-C)/C`` in place of ``t/C``. Annihilation (``t > 2C``):
    ``lr * (1 - 0.99 a) / div`` with ``a = (t - 2C) / (N - 2C)``, ``mom = max``.
    """

    pct: float
    moms: tuple[float, float] | None = None
    n_cycle: int = 1

    def _cycle(self, n: int, div: float, mom: tuple[float, float] | None) -> list[Phase]:
        self.half = c = int(n * (1 - self.pct / 100) / 2)
        if c < 1:
            raise ArgumentError(
                "use_clr_beta",
                f"{{use_clr_beta}}: a {n}-iteration cycle with pct={self.pct} gives C = int(N * (1 - pct/100) / 2) "
                f"= {c}; C must be >= 1: lengthen the cycle (cycle_len, or fewer accumulated batches) or lower pct",
            )
        held = None if mom is None else (mom[0], mom[0])
        # 1 + (0.01 - 1) * a is exactly fastai's 1 - 0.99 * a: 0.01 - 1 rounds to -0.99
        return [
            Phase("up", 0, c, c, "linear", (1.0, div), mom, divisor=div),
            Phase("down", c, 2 * c, 2 * c, "linear", (1.0, div), mom, divisor=div, reverse=True),
            Phase("annihilation", 2 * c, n, math.inf, "linear", (1.0, 0.01), held, divisor=div),
        ]


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


def _as_groups(value: Any) -> Any:
    """A scalar as one group's tuple (a schedule built without the builder); tuples and None unchanged."""
    return (value,) if isinstance(value, numbers.Real) else value


def _arg(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A schedule field that is also a user-facing argument, with its one-line documentation."""
    return field(default=default, metadata={"doc": doc})


def _run_length(doc: str) -> Any:
    """A field that is not one of torch's arguments (the run's length, set by the fit)."""
    return field(default=None, metadata={"doc": doc, "argument": False})


@dataclass
class CyclicLR(Schedule):
    """Values of ``torch.optim.lr_scheduler.CyclicLR`` after ``t`` steps, per group.

    ``total = up + down``, ``cycle = floor(1 + t/total)``, ``x = 1 + t/total - cycle``,
    ``s = x / (up/total)`` if ``x <= up/total`` else ``(x - 1) / (up/total - 1)``;
    ``lr = base + (max - base) * s * scale``, ``mom = max_m - (max_m - base_m) * s * scale``,
    with ``scale`` 1 (triangular), ``1 / 2**(cycle-1)`` (triangular2), ``gamma**t``
    (exp_range) or ``scale_fn(cycle)`` / ``scale_fn(t)`` per ``scale_mode``.

    The fields are torch's arguments, in torch's order and with its defaults (the
    builder stores lrs and momenta as one value per group), plus ``total``.
    """

    base_lr: float | Sequence[float] = _arg(doc="lower lr bound (one value, or one per param group)")
    max_lr: float | Sequence[float] = _arg(doc="upper lr bound (one value, or one per param group)")
    step_size_up: float = _arg(2000, "iterations from base_lr up to max_lr")
    step_size_down: float | None = _arg(None, "iterations back down (None: step_size_up)")
    mode: str = _arg("triangular", "'triangular', 'triangular2' (amplitude halves each cycle) or 'exp_range'")
    gamma: float = _arg(1.0, "exp_range: the amplitude is multiplied by gamma**iteration")
    scale_fn: Callable[[float], float] | None = _arg(None, "custom amplitude scale (overrides mode)")
    scale_mode: str = _arg("cycle", "scale_fn takes the cycle number ('cycle') or the iteration ('iterations')")
    cycle_momentum: bool = _arg(True, "cycle momentum (betas[0] for Adam) inversely to lr")
    base_momentum: float | Sequence[float] = _arg(0.8, "lower momentum bound (at the lr peak)")
    max_momentum: float | Sequence[float] = _arg(0.9, "upper momentum bound (at base_lr)")
    total: int | None = _run_length("iterations of the run (None: unbounded)")

    def __post_init__(self) -> None:
        for name in ("base_lr", "max_lr", "base_momentum", "max_momentum"):
            setattr(self, name, _as_groups(getattr(self, name)))
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
        lrs = [base + (top - base) * s * scale for base, top in zip(self.base_lr, self.max_lr)]
        if not self.cycle_momentum:
            return lrs, None
        moms = [top - (top - base) * s * scale for base, top in zip(self.base_momentum, self.max_momentum)]
        return lrs, moms

    def describe(self) -> str:
        """One cycle as a two-row table: torch's triangle, its amplitude times the mode's scale."""
        up, down = self.step_ratio * self.total_size, self.total_size - self.step_ratio * self.total_size
        base, top = self.base_lr[-1], self.max_lr[-1]
        mom = (self.max_momentum[-1], self.base_momentum[-1]) if self.cycle_momentum else None
        phases = [Phase("up", 0, up, up, "linear", (base, top), mom),
                  # the next cycle starts at up + down
                  Phase("down", up, up + down, math.nextafter(up + down, 0), "linear", (top, base),
                        None if mom is None else mom[::-1])]
        scale = self.scale_fn.__name__ if self.scale_fn is not None else self.mode
        table = _phase_table(f"CyclicLR: cycles of {self.total_size:g} steps "
                             f"({'unbounded' if self.total is None else f'{self.total} steps'}; last group)",
                             phases, lambda level, phase: level, None)
        return f"{table}\namplitude (max - base) times scale: {scale} ({self._scale_mode})"


@dataclass
class OneCycleLR(Schedule):
    """Values of ``torch.optim.lr_scheduler.OneCycleLR`` after ``t`` steps, per group.

    Phases (a table, not branches): two (warm up to ``max_lr`` over ``pct_start`` of the
    steps, then anneal to ``max_lr / div_factor / final_div_factor``) or, with
    ``three_phase``, three (up, back down to the initial lr, then annihilate).
    Momentum mirrors lr between ``max_momentum`` and ``base_momentum``.

    The fields are torch's arguments with its defaults (``total`` stands for
    ``total_steps``; the builder stores lrs and momenta as one value per group).
    """

    max_lr: float | Sequence[float] = _arg(doc="peak lr (one value, or one per param group)")
    total: int = field(default=None, metadata={"doc": "total_steps: epochs * steps per epoch", "argument": False})
    pct_start: float = _arg(0.3, "fraction of the steps spent raising the lr")
    anneal_strategy: str = _arg("cos", "'cos' or 'linear' annealing within each phase")
    cycle_momentum: bool = _arg(True, "cycle momentum (betas[0] for Adam) inversely to lr")
    base_momentum: float | Sequence[float] = _arg(0.85, "momentum at the lr peak")
    max_momentum: float | Sequence[float] = _arg(0.95, "momentum at the start and the end")
    div_factor: float = _arg(25.0, "initial lr = max_lr / div_factor")
    final_div_factor: float = _arg(1e4, "final lr = initial lr / final_div_factor")
    three_phase: bool = _arg(False, "up, back down to the initial lr, then annihilate (instead of up, down)")

    def __post_init__(self) -> None:
        for name in ("max_lr", "base_momentum", "max_momentum"):
            setattr(self, name, _as_groups(getattr(self, name)))
        n = self.total
        initial = tuple(top / self.div_factor for top in self.max_lr)
        points = {"initial": initial, "max": tuple(self.max_lr),
                  "min": tuple(lr / self.final_div_factor for lr in initial),
                  "max_m": tuple(self.max_momentum), "base_m": tuple(self.base_momentum)}
        if self.three_phase:
            rows = [("up", float(self.pct_start * n) - 1, "initial", "max", "max_m", "base_m"),
                    ("down", float(2 * self.pct_start * n) - 2, "max", "initial", "base_m", "max_m"),
                    ("annihilation", n - 1, "initial", "min", "max_m", "max_m")]
        else:
            rows = [("up", float(self.pct_start * n) - 1, "initial", "max", "max_m", "base_m"),
                    ("down", n - 1, "max", "min", "base_m", "max_m")]
        self.phases, start = [], 0.0
        for i, (name, end, lr_a, lr_b, mom_a, mom_b) in enumerate(rows):
            last = math.inf if i == len(rows) - 1 else end
            mom = (points[mom_a], points[mom_b]) if self.cycle_momentum else None
            self.phases.append(Phase(name, start, end, last, self.anneal_strategy, (points[lr_a], points[lr_b]), mom))
            start = end

    @property
    def has_momentum(self) -> bool:
        return self.cycle_momentum

    def _check_steps(self, first: int, last: int) -> None:
        # torch would extrapolate one step past the end; the contract stops at the last step.
        self._check_within(first, last, f"total_steps={self.total}")


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

    def __post_init__(self) -> None:
        start = self.start_lrs[-1]
        kind = "constant" if self.total <= 1 else "linear" if self.linear else "exp"
        self.phases = [Phase("sweep", 0, self.total - 1, math.inf, kind, (start, self.end_lr))]

    def _group_rows(self, levels: list[Any], phase: Phase) -> list[list[float]]:
        start = self.start_lrs[-1]
        return _rows_of([levels if s == start else [s * (level / start) for level in levels] for s in self.start_lrs])

    def _headline(self) -> str:
        return f"LRSweep: {self.total} steps (lr of the last group)"


# --------------------------------------------------------------------------- argument specs


def _scalar(value: Any) -> Any:
    """A numpy scalar or 0-d array/tensor as the Python number it holds; anything else unchanged."""
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


_PLAIN_SCALARS = (bool, int, float, str)  # exact types, already plain


def plain(value: Any) -> Any:
    """A value as plain Python (bool, int, float, str, None, tuples, dicts): comparable, and safe to load.

    Sequences and arrays become tuples; a dataclass instance (a schedule) becomes
    ``{"type": "module.Class", field: value, ...}``; any other callable its
    :func:`callable_fingerprint`; anything else its ``repr``. Loadable with
    ``torch.load(weights_only=True)``: checkpoints store a fit's arguments and
    schedule this way and compare them on resume.
    """
    kind = type(value)
    if kind in _PLAIN_SCALARS or value is None:  # the usual case, checked first
        return value
    if kind is tuple:
        return tuple(plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": _qualified(type(value)),
                **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):  # numpy and torch values too
        items = value.tolist() if hasattr(value, "tolist") else value
        return tuple(plain(v) for v in items) if isinstance(items, (list, tuple)) else plain(items)
    if callable(value):
        return callable_fingerprint(value)
    return repr(value)


def callable_fingerprint(fn: Callable) -> str:
    """``module.qualname#<16 hex>`` of a function (code, constants, defaults, closure), partial or callable object.

    The hash covers the function's byte code, constants, referenced names,
    defaults and closure values (never an address), so the same function in a
    new process compares equal and an edited one does not.
    """
    if isinstance(fn, functools.partial):
        parts = (callable_fingerprint(fn.func), plain(fn.args), plain(fn.keywords))
        return f"partial({parts!r})"
    func = getattr(fn, "__func__", fn)  # a bound method hashes like its function
    code = getattr(func, "__code__", None)
    if code is None:  # a callable object: its class and its attributes
        attrs = plain(dict(vars(fn))) if hasattr(fn, "__dict__") else ()
        return f"{_qualified(type(fn))}{attrs!r}" if attrs else _qualified(type(fn))
    digest = hashlib.sha256()
    _hash_code(code, digest)
    digest.update(repr(plain(func.__defaults__ or ())).encode())
    for cell in func.__closure__ or ():
        try:
            digest.update(repr(plain(cell.cell_contents)).encode())
        except ValueError:  # an empty cell
            digest.update(b"<empty>")
    return f"{_qualified(func)}#{digest.hexdigest()[:16]}"


def _hash_code(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions: their code, not their address
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


@dataclass(frozen=True)
class ArgumentSpec:
    """One family of schedule arguments (names, defaults, annotations, docs), written once.

    ``signature()`` gives them as an ``inspect.Signature`` (with extra leading or
    trailing parameters), ``bind()`` turns a call's arguments into a full dict
    (defaults filled in), ``arguments()`` reads them back from a built schedule.
    """

    name: str
    parameters: tuple[inspect.Parameter, ...]
    docs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_fields(cls, name: str, schedule: type) -> "ArgumentSpec":
        """The argument fields of a schedule dataclass (those not marked ``argument: False``), in order."""
        params, docs = [], []
        for f in dataclasses.fields(schedule):
            if not f.init or not f.metadata.get("argument", True):
                continue
            default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=default, annotation=f.type))
            docs.append((f.name, f.metadata.get("doc", "")))
        return cls(name, tuple(params), tuple(docs))

    @property
    def names(self) -> tuple[str, ...]:
        """The argument names, in order."""
        return tuple(p.name for p in self.parameters)

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` for the arguments that have one."""
        return {p.name: p.default for p in self.parameters if p.default is not inspect.Parameter.empty}

    def doc(self, name: str) -> str:
        """The one-line documentation of argument ``name``."""
        return dict(self.docs)[name]

    def signature(self, before: Sequence[inspect.Parameter] = (), after: Sequence[inspect.Parameter] = (),
                  return_annotation: Any = inspect.Signature.empty) -> inspect.Signature:
        """These arguments between ``before`` and ``after`` (e.g. ``self, epochs`` and ``**options``)."""
        return inspect.Signature([*before, *self.parameters, *after], return_annotation=return_annotation)

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Every argument's value for this call, defaults filled in (``TypeError`` for a bad call)."""
        unknown = sorted(set(kwargs) - set(self.names))
        if unknown:
            raise TypeError(f"{self.name}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                            f"its arguments are {', '.join(self.names)}")
        try:
            bound = self.signature().bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{self.name}: {err}; its arguments are {', '.join(self.names)}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` divided into this family's arguments and the rest."""
        ours = {k: v for k, v in kwargs.items() if k in self.names}
        return ours, {k: v for k, v in kwargs.items() if k not in ours}

    def arguments(self, schedule: Schedule) -> dict[str, Any]:
        """The arguments a built schedule holds, as plain values."""
        return {name: plain(getattr(schedule, name)) for name in self.names}


#: ``torch.optim.lr_scheduler.CyclicLR``'s arguments (``learn.fit_cyclic`` after ``epochs``).
CYCLIC = ArgumentSpec.from_fields("fit_cyclic", CyclicLR)
#: ``torch.optim.lr_scheduler.OneCycleLR``'s arguments (``learn.fit_one_cycle`` after ``epochs``).
ONE_CYCLE = ArgumentSpec.from_fields("fit_one_cycle", OneCycleLR)

_P = inspect.Parameter
#: ``learn.fit``'s schedule arguments (fastai 0.7's names and defaults).
FIT = ArgumentSpec("fit", (
    _P("lrs", _P.POSITIONAL_OR_KEYWORD, annotation="float | Sequence[float]"),
    _P("n_cycle", _P.POSITIONAL_OR_KEYWORD, annotation="int"),
    _P("cycle_len", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="int | None"),
    _P("cycle_mult", _P.POSITIONAL_OR_KEYWORD, default=1, annotation="int"),
    _P("use_clr", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="Sequence[float] | None"),
    _P("use_clr_beta", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="Sequence[float] | None"),
), docs=(
    ("lrs", "learning rate: one value, or one per layer group (the peak of cyclical schedules)"),
    ("n_cycle", "number of cycles (epochs when cycle_len is None)"),
    ("cycle_len", "epochs per cycle; turns on SGDR, or the use_clr / use_clr_beta cycles"),
    ("cycle_mult", "SGDR: each cycle is cycle_mult times longer than the previous one"),
    ("use_clr", "(div, cut_div) or (div, cut_div, max_mom, min_mom): CircularLR"),
    ("use_clr_beta", "(div, pct) or (div, pct, max_mom, min_mom): the 1cycle policy"),
))
#: The leading argument of ``fit_cyclic`` / ``fit_one_cycle``.
EPOCHS = _P("epochs", _P.POSITIONAL_OR_KEYWORD, annotation="int")


def arguments(schedule: Schedule) -> dict[str, Any]:
    """A schedule's own arguments as plain values, with its class: what makes two schedules the same.

    Dataclass schedules give their fields; any other ``Schedule`` its public
    attributes. Values are :func:`plain` (callables such as ``scale_fn`` by their
    :func:`callable_fingerprint`). Loadable with ``torch.load(weights_only=True)``.
    """
    out: dict[str, Any] = {"schedule": _qualified(type(schedule))}
    if dataclasses.is_dataclass(schedule):
        out.update({f.name: plain(getattr(schedule, f.name)) for f in dataclasses.fields(schedule)})
    else:
        out.update({k: plain(v) for k, v in sorted(vars(schedule).items()) if not k.startswith("_")})
    return out


# --------------------------------------------------------------------------- builders


def _number(name: str, value: Any, **bounds: Any) -> float:
    return check_number(name, _scalar(value), **bounds)


def _integer(name: str, value: Any, **bounds: Any) -> int:
    return check_int(name, _scalar(value), **bounds)


def _flag(name: str, value: Any) -> bool:
    return check_bool(name, _scalar(value))


def _group_values(name: str, value: Any, n_groups: int, **bounds: Any) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        value = [_scalar(v) for v in value]
    return as_group_values(name, _scalar(value), n_groups, **bounds)


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
    n_cycle = _integer("n_cycle", n_cycle, minimum=1)
    cycle_mult = _integer("cycle_mult", cycle_mult, minimum=1)
    nb = _integer("nb (steps per epoch)", nb, minimum=1)
    lrs = tuple(float(_scalar(lr)) for lr in lrs)
    if use_clr is not None and use_clr_beta is not None:
        raise ArgumentError("use_clr_beta", "{use_clr} and {use_clr_beta}: pass at most one of them (got both)")
    if cycle_len is None:
        if use_clr is not None or use_clr_beta is not None:
            name = "use_clr" if use_clr is not None else "use_clr_beta"
            raise ArgumentError(name, f"{{{name}}} needs {{cycle_len}} (epochs per cycle); got {{cycle_len}}=None")
        if cycle_mult != 1:
            raise ArgumentError("cycle_mult",
                                f"{{cycle_mult}}={cycle_mult} needs {{cycle_len}}; got {{cycle_len}}=None")
        return ConstantLR(lrs, total=nb * n_cycle, cycle_iters=nb), n_cycle
    cycle_len = _integer("cycle_len", cycle_len, minimum=1)
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
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # a numpy array or a tensor of the values
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise fail(name, escape(f"must be a tuple {allowed}"), values, kind=ArgumentTypeError)
    if len(values) not in (2, 4):
        raise fail(name, escape(f"must have 2 or 4 values {allowed}; got {len(values)}: {tuple(values)!r}"))
    return tuple(_number(f"{name}[{i}]", v) for i, v in enumerate(values))


_N_GROUPS = _P("n_groups", _P.POSITIONAL_OR_KEYWORD, annotation="int")


def cyclic_schedule(n_groups: int, *args: Any, **kwargs: Any) -> CyclicLR:
    """A :class:`CyclicLR` from ``torch.optim.lr_scheduler.CyclicLR``'s arguments (:data:`CYCLIC`), validated.

    Accepts what torch accepts: lrs >= 0 (``base_lr=0`` included), ``step_size_down=0``
    (a sawtooth); momentum bounds only have to be >= 0 (torch's own
    tests cycle momentum between 1 and 5). ``total`` is the run's length.
    """
    a = _bind(cyclic_schedule, n_groups, *args, **kwargs)
    n_groups = a["n_groups"]
    base = _group_values("base_lr", a["base_lr"], n_groups, minimum=0.0)
    top = _group_values("max_lr", a["max_lr"], n_groups, minimum=0.0)
    up = _number("step_size_up", a["step_size_up"], minimum=0.0, exclusive_min=True)
    down = a["step_size_down"]
    if down is not None:
        down = _number("step_size_down", down, minimum=0.0)
    scale_fn, mode = a["scale_fn"], a["mode"]
    if scale_fn is None:
        check_choice("mode", mode, CYCLIC_MODES, extra=" (or pass scale_fn)")
    elif not callable(scale_fn):
        raise fail("scale_fn", "must be callable", scale_fn, kind=ArgumentTypeError)
    check_choice("scale_mode", a["scale_mode"], SCALE_MODES)
    gamma = _number("gamma", a["gamma"], minimum=0.0, exclusive_min=True)
    cycle_momentum = _flag("cycle_momentum", a["cycle_momentum"])
    base_m, top_m = plain(a["base_momentum"]), plain(a["max_momentum"])  # torch ignores them without cycling
    if cycle_momentum:
        base_m = _group_values("base_momentum", a["base_momentum"], n_groups, minimum=0.0)
        top_m = _group_values("max_momentum", a["max_momentum"], n_groups, minimum=0.0)
    total = a["total"]
    if total is not None:
        total = _integer("total", total, minimum=1)
    return CyclicLR(base, top, up, down, mode, gamma, scale_fn, a["scale_mode"], cycle_momentum, base_m, top_m, total)


def one_cycle_schedule(n_groups: int, *args: Any, **kwargs: Any) -> OneCycleLR:
    """A :class:`OneCycleLR` from ``torch.optim.lr_scheduler.OneCycleLR``'s arguments (:data:`ONE_CYCLE`), validated.

    ``total`` is torch's ``total_steps``. As in torch, ``max_lr`` may be 0 and momentum
    bounds only have to be >= 0.
    """
    a = _bind(one_cycle_schedule, n_groups, *args, **kwargs)
    n_groups = a["n_groups"]
    top = _group_values("max_lr", a["max_lr"], n_groups, minimum=0.0)
    total = _integer("total_steps (epochs * batches per epoch)", a["total"], minimum=1)
    pct_start = _number("pct_start", a["pct_start"], minimum=0.0, maximum=1.0)
    anneal_strategy = check_choice("anneal_strategy", a["anneal_strategy"], ANNEAL_STRATEGIES)
    div_factor = _number("div_factor", a["div_factor"], minimum=0.0, exclusive_min=True)
    final_div_factor = _number("final_div_factor", a["final_div_factor"], minimum=0.0, exclusive_min=True)
    cycle_momentum = _flag("cycle_momentum", a["cycle_momentum"])
    three_phase = _flag("three_phase", a["three_phase"])
    base_m = _group_values("base_momentum", a["base_momentum"], n_groups, minimum=0.0)
    top_m = _group_values("max_momentum", a["max_momentum"], n_groups, minimum=0.0)
    sched = OneCycleLR(top, total, pct_start, anneal_strategy, cycle_momentum, base_m, top_m,
                       div_factor, final_div_factor, three_phase)
    # A phase of zero length divides by zero where an integer step lands on it (torch fails there too).
    edges = {0, total - 1}
    for phase in sched.phases:
        edges.update({math.floor(phase.end), math.floor(phase.end) + 1})
    for t in sorted(e for e in edges if 0 <= e < total):
        try:
            sched(t)
        except ZeroDivisionError:
            raise ArgumentError(
                "pct_start",
                f"{{pct_start}}={escape(str(a['pct_start']))} with total_steps={total} gives a phase of zero length "
                f"at step {t}; use more steps (epochs) or another {{pct_start}}",
            ) from None
    return sched


def _bind(builder: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    names = list(builder.__signature__.parameters)
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"{builder.__name__}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(names)}")
    try:
        bound = builder.__signature__.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"{builder.__name__}: {err}") from None
    bound.apply_defaults()
    out = dict(bound.arguments)
    out["n_groups"] = _integer("n_groups", out["n_groups"], minimum=1)
    return out


_TOTAL = _P("total", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="int | None")
_TOTAL_STEPS = _P("total", _P.POSITIONAL_OR_KEYWORD, annotation="int")
# The builders' signatures are n_groups plus the schedule's fields in field order: torch's arguments and total.
cyclic_schedule.__signature__ = CYCLIC.signature([_N_GROUPS], [_TOTAL], return_annotation="CyclicLR")
one_cycle_schedule.__signature__ = inspect.Signature(
    [_N_GROUPS, ONE_CYCLE.parameters[0], _TOTAL_STEPS, *ONE_CYCLE.parameters[1:]], return_annotation="OneCycleLR")


def schedule_for(method: str, n_groups: int, steps_per_epoch: int, *args: Any, **kwargs: Any) -> tuple[Schedule, int]:
    """``(schedule, epochs)`` of ``learn.<method>(*args, **kwargs)``'s schedule arguments, checked.

    ``method`` is ``"fit"`` (:data:`FIT`), ``"fit_cyclic"`` or ``"fit_one_cycle"``
    (``epochs`` then :data:`CYCLIC` / :data:`ONE_CYCLE`); ``steps_per_epoch`` counts
    optimizer steps. The learner's fits and :class:`clrfit.ScheduleLR` both build
    their schedules here.
    """
    check_choice("method", method, METHODS)
    steps = _integer("steps_per_epoch", steps_per_epoch, minimum=1)
    n_groups = _integer("n_groups", n_groups, minimum=1)
    if method == "fit":
        a = FIT.bind(*args, **kwargs)
        lrs = _group_values("lrs", a["lrs"], n_groups, positive=True)
        return fit_schedule(lrs, steps, a["n_cycle"], a["cycle_len"], a["cycle_mult"], a["use_clr"], a["use_clr_beta"])
    spec, build = (CYCLIC, cyclic_schedule) if method == "fit_cyclic" else (ONE_CYCLE, one_cycle_schedule)
    a = ArgumentSpec(method, (EPOCHS, *spec.parameters)).bind(*args, **kwargs)
    epochs = _integer("epochs", a.pop("epochs"), minimum=1)
    return build(n_groups, **a, total=epochs * steps), epochs


# --------------------------------------------------------------------------- previews


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

    Args:
        iterations: iterations in one cycle (or one epoch for ``cyclic`` / ``one_cycle``), an integer >= 1.
        lr: the peak learning rate (> 0), or one per layer group.
        use_clr: ``(div, cut_div)`` or ``(div, cut_div, max_mom, min_mom)``, as in ``fit``.
        use_clr_beta: ``(div, pct)`` or ``(div, pct, max_mom, min_mom)``, as in ``fit``.
        cycle_mult: SGDR's cycle length multiplier (an integer >= 1).
        n_cycle: the number of cycles (an integer >= 1).
        cyclic: ``fit_cyclic``'s keyword arguments (a dict, ``epochs`` optional), or None.
        one_cycle: ``fit_one_cycle``'s keyword arguments (a dict, ``epochs`` optional), or None.
    """
    iterations = _integer("iterations", iterations, minimum=1)
    if cyclic is not None and one_cycle is not None:
        raise ArgumentError("one_cycle", "{cyclic} and {one_cycle}: pass at most one of them (got both)")
    torch_style = "cyclic" if cyclic is not None else "one_cycle" if one_cycle is not None else None
    if torch_style is None:
        lrs = _preview_lrs(lr)
        schedule, _ = fit_schedule(lrs, iterations, n_cycle, 1, cycle_mult, use_clr, use_clr_beta)
        return schedule.values()
    given = {"use_clr": use_clr, "use_clr_beta": use_clr_beta}
    extra = ["{" + name + "}" for name, value in given.items() if value is not None]  # {name}: a template field
    extra += [f"{{cycle_mult}}={escape(repr(cycle_mult))}"] if cycle_mult != 1 else []
    extra += [f"{{n_cycle}}={escape(repr(n_cycle))}"] if n_cycle != 1 else []
    extra += [f"{{lr}}={escape(repr(lr))}"] if lr != 1.0 else []
    if extra:
        raise ArgumentError(torch_style, f"{{{torch_style}}}: do not combine it with {', '.join(extra)} "
                                         "(they belong to fit-style schedules)")
    if torch_style == "cyclic":
        kwargs = _preview_kwargs("cyclic", cyclic, ("epochs", *CYCLIC.names), ("base_lr", "max_lr"))
        build = cyclic_schedule
    else:
        kwargs = _preview_kwargs("one_cycle", one_cycle, ("epochs", *ONE_CYCLE.names), ("max_lr",))
        build = one_cycle_schedule
    epochs = _integer(f"{torch_style}['epochs']", kwargs.pop("epochs", 1), minimum=1)
    return build(_preview_groups(kwargs), total=epochs * iterations, **kwargs).values()


def _preview_lrs(lr: Any) -> tuple[float, ...]:
    if isinstance(lr, Sequence) and not isinstance(lr, (str, bytes)):
        return _group_values("lr", lr, len(lr), positive=True)
    return (_number("lr", lr, minimum=0.0, exclusive_min=True),)


def _preview_kwargs(name: str, values: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise fail(name, f"must be a dict of keyword arguments; got {type(values).__name__}", kind=ArgumentTypeError)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ArgumentTypeError(name, f"{{{name}}}: unknown keys {escape(repr(unknown))}; "
                                      f"allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in values]
    if missing:
        raise fail(name, escape(f"must hold {' and '.join(map(repr, missing))} (the fit needs them)"))
    return dict(values)


def _preview_groups(kwargs: dict[str, Any]) -> int:
    """Number of layer groups implied by per-group lists in the arguments (1 when all are scalars)."""
    for value in kwargs.values():
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return len(value)
    return 1
