"""Learning-rate suggestions from a range test: pure functions of ``(lrs, losses)``.

``lrs`` is the sweep (strictly increasing) and ``losses`` the loss at each lr,
normally the smoothed training loss of ``learn.sched``. Points whose lr or loss
is not finite (a diverged step) are dropped first. Slopes are taken with respect
to ``log10(lr)`` by a least-squares line through a small window of neighbours,
so a little noise does not move a suggestion far.

Each rule returns a learning rate, or raises :class:`SuggestionError` (a
``ValueError``) whose message says why the curve gives none: too few points, a
flat curve, or a loss that never falls. :func:`suggest` runs them all and never
raises for such curves; it returns :class:`Suggestions` with ``nan`` and a note
for each rule that gave no value.

- ``minimum``: the lr at the lowest loss, divided by 10 (none when the lowest
  loss is at the first lr: the sweep started too high to show a minimum).
- ``steep``: the lr where the loss falls fastest (most negative slope), on the
  way down to the minimum.
- ``valley``: the middle (in log lr) of the longest stretch over which the loss
  clearly descends (slope below ``-DESCENT_FRACTION`` x the steepest slope).
- ``clr_bounds``: Smith's rule for cyclical schedules. ``base_lr`` is where the
  loss starts to fall clearly (``BASE_FRACTION`` of the total fall is done);
  ``max_lr`` is where it stops improving (``TOP_FRACTION`` of the fall is done)
  or, if earlier, where it turns ragged (rises more than ``RAGGED_FRACTION`` of
  the fall above its lowest value so far).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

MIN_POINTS = 5
FLAT_TOLERANCE = 1e-6
DESCENT_FRACTION = 0.05
BASE_FRACTION = 0.1
TOP_FRACTION = 0.9
RAGGED_FRACTION = 0.05
CLEAR_FALL = 0.02


class SuggestionError(ValueError):
    """The curve gives no suggestion for this rule; the message says why."""


@dataclass(frozen=True)
class CLRBounds:
    """Bounds for a cyclical schedule: ``base_lr`` (low end), ``max_lr`` (high end), ``div = max_lr / base_lr``."""

    base_lr: float
    max_lr: float

    @property
    def div(self) -> float:
        """``max_lr / base_lr``, the ``div`` of ``use_clr`` / ``use_clr_beta`` (> 1 when the bounds exist)."""
        return self.max_lr / self.base_lr

    def __repr__(self) -> str:
        return f"CLRBounds(base_lr={self.base_lr:.3g}, max_lr={self.max_lr:.3g}, div={self.div:.3g})"


NO_BOUNDS = CLRBounds(math.nan, math.nan)


@dataclass(frozen=True)
class Suggestions:
    """The suggested learning rates of one range test (``nan`` where a rule gave none; ``notes`` says why)."""

    minimum: float
    steep: float
    valley: float
    clr_bounds: CLRBounds
    notes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """The suggestions as plain floats (``base_lr``, ``max_lr`` and ``div`` for the CLR bounds)."""
        b = self.clr_bounds
        return {"minimum": self.minimum, "steep": self.steep, "valley": self.valley,
                "base_lr": b.base_lr, "max_lr": b.max_lr, "div": b.div}

    def __str__(self) -> str:
        b = self.clr_bounds
        rows = [
            ("minimum", f"{self.minimum:.3g}", "lr at the lowest loss / 10"),
            ("steep", f"{self.steep:.3g}", "steepest fall of the loss"),
            ("valley", f"{self.valley:.3g}", "middle of the longest descent"),
            ("clr_bounds", f"base_lr={b.base_lr:.3g} max_lr={b.max_lr:.3g} div={b.div:.3g}",
             "Smith's CLR bounds"),
        ]
        if len(self.notes) == len(rows) and len(set(self.notes.values())) == 1:
            return f"LR suggestions: none: {self.notes['minimum']}"
        lines = ["LR suggestions:"]
        for name, value, meaning in rows:
            note = self.notes.get(name)
            lines.append(f"  {name:<11}" + (f"n/a: {note}" if note else f"{value}   ({meaning})"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Suggestions(minimum={self.minimum:.3g}, steep={self.steep:.3g}, valley={self.valley:.3g}, "
                f"clr_bounds={self.clr_bounds!r})")


# --------------------------------------------------------------------------- the rules


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The lr at the lowest loss, divided by 10."""
    lr, _, y = _curve(lrs, losses)
    return float(lr[_lowest_after_fall(lr, y)] / 10)


def suggest_steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The lr where the loss falls fastest with respect to ``log10(lr)``, before the minimum."""
    lr, x, y = _curve(lrs, losses)
    lowest = _lowest_after_fall(lr, y)
    slope = _slope(x, y)[: lowest + 1]
    i = int(np.argmin(slope))
    if slope[i] >= 0:
        raise SuggestionError("the loss never falls before its minimum; start the sweep at a lower start_lr")
    return float(lr[i])


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The middle, in log lr, of the longest stretch where the loss clearly descends."""
    lr, x, y = _curve(lrs, losses)
    slope = _slope(x, y)
    steepest = float(slope.min())
    if steepest >= 0:
        raise SuggestionError("the loss never descends over the sweep; start the sweep at a lower start_lr")
    start, end = _longest_run(slope < DESCENT_FRACTION * steepest, x)
    if end == start:
        raise SuggestionError("the loss descends at a single point only; run a longer sweep (more iterations)")
    return float(10 ** ((x[start] + x[end]) / 2))


def suggest_clr_bounds(lrs: Sequence[float], losses: Sequence[float]) -> CLRBounds:
    """Smith's CLR bounds: ``base_lr`` where the loss starts to fall clearly, ``max_lr`` where it stops improving or turns ragged."""
    lr, x, y = _curve(lrs, losses)
    lowest = _lowest_after_fall(lr, y)
    start_level = float(np.mean(y[: _half_window(len(y)) + 1]))
    fall = start_level - float(y[lowest])
    if fall <= CLEAR_FALL * float(np.ptp(y)):
        raise SuggestionError(
            f"the loss falls by only {fall:.3g} (from {start_level:.4g} to {float(y[lowest]):.4g}) before it rises; "
            "no clear descent: start the sweep at a lower start_lr or check the model and data"
        )
    base = int(np.argmax(y[: lowest + 1] <= start_level - BASE_FRACTION * fall))
    top = int(np.argmax(y[: lowest + 1] <= start_level - TOP_FRACTION * fall))
    stretch = y[base:top + 1]
    rises = np.nonzero(stretch > np.minimum.accumulate(stretch) + RAGGED_FRACTION * fall)[0]
    if rises.size:
        # The loss turned back up: the top is the best point reached before that.
        turn = base + int(rises[0])
        top = base + int(np.argmin(y[base:turn]))
    if top <= base:
        top = min(base + 1, len(lr) - 1)
        if top <= base:
            raise SuggestionError("the loss only falls at the last point; sweep to a higher end_lr")
    return CLRBounds(float(lr[base]), float(lr[top]))


RULES: dict[str, Callable[[Sequence[float], Sequence[float]], object]] = {
    "minimum": suggest_minimum,
    "steep": suggest_steep,
    "valley": suggest_valley,
    "clr_bounds": suggest_clr_bounds,
}


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> Suggestions:
    """Every rule on one curve; a rule that gives no value yields ``nan`` and a note."""
    values: dict[str, object] = {}
    notes: dict[str, str] = {}
    for name, rule in RULES.items():
        try:
            values[name] = rule(lrs, losses)
        except SuggestionError as err:
            values[name] = NO_BOUNDS if name == "clr_bounds" else math.nan
            notes[name] = str(err)
    return Suggestions(values["minimum"], values["steep"], values["valley"], values["clr_bounds"], notes)


# --------------------------------------------------------------------------- helpers


def _curve(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite points as arrays ``(lr, log10 lr, loss)``, after the checks every rule needs."""
    lr = np.asarray(lrs, dtype=np.float64).reshape(-1)
    y = np.asarray(losses, dtype=np.float64).reshape(-1)
    if lr.shape != y.shape:
        raise ValueError(f"lrs and losses must have the same length; got {lr.size} and {y.size}")
    keep = np.isfinite(lr) & (lr > 0) & np.isfinite(y)
    lr, y = lr[keep], y[keep]
    if lr.size < MIN_POINTS:
        raise SuggestionError(
            f"too few points: {lr.size} usable (finite, lr > 0) of {keep.size}; a suggestion needs at least "
            f"{MIN_POINTS}: run a longer sweep (num_it) or one that diverges later (lower end_lr)"
        )
    if np.any(np.diff(lr) <= 0):
        raise ValueError("lrs must be strictly increasing (the lrs of a range-test sweep)")
    if np.ptp(y) <= FLAT_TOLERANCE * max(float(np.abs(y).max()), 1e-12):
        raise SuggestionError(
            f"the loss is flat over the sweep ({y.min():.6g} .. {y.max():.6g}): widen the lr range "
            "or check that the model trains"
        )
    return lr, np.log10(lr), y


def _lowest_after_fall(lr: np.ndarray, y: np.ndarray) -> int:
    lowest = int(np.argmin(y))
    if lowest == 0:
        raise SuggestionError(
            f"the loss is lowest at the first lr ({lr[0]:.3g}) and never falls; start the sweep at a lower start_lr"
        )
    return lowest


def _half_window(n: int) -> int:
    return max(2, n // 50)


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d loss / d log10(lr) at each point: least-squares line through the point's neighbours."""
    n, h = len(x), _half_window(len(x))
    lo = np.clip(np.arange(n) - h, 0, n)
    hi = np.clip(np.arange(n) + h + 1, 0, n)
    xc = x - x.mean()

    def window_sum(v: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(v)])
        return c[hi] - c[lo]

    m = (hi - lo).astype(np.float64)
    sx, sy, sxx, sxy = window_sum(xc), window_sum(y), window_sum(xc * xc), window_sum(xc * y)
    return (m * sxy - sx * sy) / (m * sxx - sx * sx)


def _longest_run(mask: np.ndarray, x: np.ndarray) -> tuple[int, int]:
    """First and last index of the run of True values spanning the most log lr."""
    best, best_len, start = (0, 0), -1.0, None
    for i, flag in enumerate(list(mask) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            length = x[i - 1] - x[start]
            if length > best_len:
                best, best_len = (start, i - 1), length
            start = None
    return best
