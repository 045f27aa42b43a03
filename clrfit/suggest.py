"""Learning-rate suggestions from a range test: pure functions of ``(lrs, losses)``.

``lrs`` is the sweep (strictly increasing, > 0) and ``losses`` the loss at each lr,
normally the smoothed training loss of ``learn.sched``. The rules look at what
the plot shows: the first ``n_skip`` points (warm-up, :func:`warmup_points`) are
left out, points with a NaN/inf loss are dropped, and everything is done in
``log10(lr)``.

The curve is first made robust to noise and to its own blow-up:

1. Divergence cut: once the loss, after its minimum, has risen back above the
   middle of its fall (a running median finds the fall, so one spike does not),
   the rest of the curve is a blow-up and is dropped; a curve with no clear fall
   is cut where it passes ``BLOW_UP`` x its starting level.
2. Smoothing: a least-squares quadratic through each point's ``2h+1`` neighbours
   (``h = max(2, round(n / 25))``). ``noise`` is the robust standard deviation
   of what the smoothing removed.
3. A clear descent is required: from its highest point before the minimum the
   smoothed loss must fall by more than ``CLEAR_NOISE`` x its noise and by more
   than ``CLEAR_FALL`` x its starting level, and its running median by more than
   ``CLEAR_FALL`` too. Otherwise every rule is ``nan`` and
   the note says whether the loss only rises (a trained model, or one that learns
   too little per step: the note gives the lr from which it rises) or is flat, and
   which of the tests the fall failed.

The rules, on the smoothed curve ``s`` falling by ``fall`` from ``s_top`` to its
minimum ``s_min``:

- ``minimum``: the middle (in log lr) of the bottom of the curve, where the
  smoothed loss is within ``MIN_BAND`` of the fall of its lowest value, / 10.
- ``steep``: where the loss falls fastest: the slope-weighted centre (in log lr)
  of the points between the top and the minimum whose slope is at least half the
  steepest (slopes by central differences over a fixed span of log lr).
- ``valley``: the middle, in log lr, of the descent, from where ``VALLEY_FROM``
  of the fall is done to where ``VALLEY_TO`` is done.
- ``clr_bounds``: Smith's rule. ``base_lr`` where ``BASE_FRACTION`` of the fall
  is done, ``max_lr`` where ``TOP_FRACTION`` is done or, if earlier, the best
  point before the loss turns ragged: once half the fall is done, it rises more
  than ``RAGGED_FRACTION`` of the fall (and 5 x the smoothed level's noise) above
  its lowest value so far and does not get back down within ``RAGGED_SPAN`` decade. ``div < MIN_DIV`` or ``> MAX_DIV`` comes
  with a note.

Level crossings are interpolated linearly between points. Each suggestion also
gets a :class:`Confidence`: the span of the descent in decades, the noise
relative to the fall, and a spread: half the 16-84 percentile range (in
decades) of the rule over ``n_boot`` block-bootstrap resamples of the smoothing
residuals (seeded, so repeatable). A spread above ``MAX_SPREAD`` adds an
"unstable" note. :func:`suggest` never raises on a curve that gives no answer;
the one-rule functions raise :class:`SuggestionError` with the note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .validation import ArgumentError, ArgumentTypeError, escape, fail

MIN_POINTS = 8
WARMUP_MAX = 10
CLEAR_NOISE = 3.0
CLEAR_FALL = 0.02
FLAT_TOLERANCE = 1e-9
VALLEY_FROM = 0.1
VALLEY_TO = 0.9
STEEP_FRACTION = 0.5
BASE_FRACTION = 0.1
TOP_FRACTION = 0.9
RAGGED_FRACTION = 0.1
RAGGED_NOISE = 5.0
RAGGED_SPAN = 0.5
MIN_BAND = 0.1
MIN_DIV = 3.0
BLOW_UP = 4.0
MAX_DIV = 1000.0
MAX_SPREAD = 0.5
N_BOOT = 40
MAX_FAILED_BOOT = 0.25
RULE_NAMES = ("minimum", "steep", "valley", "clr_bounds")
_MEANINGS = ("lr at the lowest loss / 10", "steepest fall of the loss", "middle of the descent",
             "Smith's CLR bounds")


class SuggestionError(ValueError):
    """The curve gives no suggestion for this rule; the message says why."""


def warmup_points(n: int) -> int:
    """How many first points of an ``n``-point sweep are warm-up, skipped by the plot and the rules.

    ``min(10, n // 10)`` (fastai's 10 for a sweep of 100 or more, fewer for a short one), but at least
    ``ceil(n / 20)``: the first 5% of a long sweep, whose smoothed loss still carries its first batches."""
    return max(min(WARMUP_MAX, n // 10), -(-n // 20))


def end_points(n: int) -> int:
    """How many last points of an ``n``-point sweep the plot leaves out by default: ``min(5, n // 20)``."""
    return min(5, n // 20)


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
class Confidence:
    """How far to trust one suggestion: descent span (decades), noise / fall, bootstrap spread (decades)."""

    span: float
    noise: float
    spread: float

    @property
    def unstable(self) -> bool:
        """True when resampling the curve moves the suggestion by more than ``MAX_SPREAD`` decades."""
        return not self.spread <= MAX_SPREAD


NO_CONFIDENCE = Confidence(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Suggestions:
    """The suggested learning rates of one range test (``nan`` where a rule gave none; ``notes`` says why or what to watch)."""

    minimum: float
    steep: float
    valley: float
    clr_bounds: CLRBounds
    notes: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, Confidence] = field(default_factory=dict)
    n_used: int = 0
    n_total: int = 0
    n_skip: int = 0
    n_dropped: int = 0
    val: "Suggestions | None" = None
    n_sweeps: int = 1

    def as_dict(self) -> dict[str, float]:
        """The suggestions as plain floats (``base_lr``, ``max_lr`` and ``div`` for the CLR bounds)."""
        b = self.clr_bounds
        return {"minimum": self.minimum, "steep": self.steep, "valley": self.valley,
                "base_lr": b.base_lr, "max_lr": b.max_lr, "div": b.div}

    def trusted(self, name: str) -> bool:
        """True when rule ``name`` gave a value with no note (no caution, not unstable): safe to train with."""
        if name not in RULE_NAMES:
            raise fail("name", f"must be one of {', '.join(RULE_NAMES)}", name)
        value = self.clr_bounds.max_lr if name == "clr_bounds" else getattr(self, name)
        return math.isfinite(value) and name not in self.notes

    def one_cycle(self, div: float = 25.0) -> tuple[float, float, str] | None:
        """``(max_lr, div, what was used)`` for ``use_clr_beta`` from trusted suggestions only; None if there is none.

        The CLR bounds when trusted; their ``max_lr`` with ``div`` when only their div is out of range
        (not unstable); else ``valley`` as a cautious peak with ``div``.
        """
        if not (isinstance(div, (int, float)) and not isinstance(div, bool) and div > 1 and math.isfinite(div)):
            raise fail("div", "must be a finite number > 1", div)
        b = self.clr_bounds
        if self.trusted("clr_bounds"):
            return b.max_lr, b.div, "clr_bounds"
        conf = self.confidence.get("clr_bounds", NO_CONFIDENCE)
        if math.isfinite(b.div) and not conf.unstable and not MIN_DIV <= b.div <= MAX_DIV:
            return b.max_lr, float(div), f"clr_bounds.max_lr with div={div:g} (the suggested div={b.div:.3g} is out of range)"
        if self.trusted("valley"):
            return self.valley, float(div), f"valley as the peak with div={div:g} (the CLR bounds are not trusted)"
        return None

    def _all_none(self) -> bool:
        return len(self.notes) == len(RULE_NAMES) and len(set(self.notes.values())) == 1

    def _summary(self) -> str:
        conf = next(iter(self.confidence.values()), NO_CONFIDENCE)
        text = f"{self.n_used} of {self.n_total} points"
        text += f" (first sweep of {self.n_sweeps}; values are medians, spreads over the sweeps)" if self.n_sweeps > 1 else ""
        text += f", first {self.n_skip} skipped as warm-up" if self.n_skip else ""
        text += f", {self.n_dropped} with a NaN/inf loss dropped" if self.n_dropped else ""
        cut = self.n_total - self.n_skip - self.n_dropped - self.n_used
        text += f", {cut} after the blow-up cut" if cut > 0 else ""
        if math.isfinite(conf.span):
            text += f"; descent over {conf.span:.2f} decades, noise {100 * conf.noise:.2g}% of the fall"
        return text

    def _cells(self) -> list[tuple[str, str]]:
        """Per rule, the value and its spread as text (a value with a note is marked ``!``)."""
        b = self.clr_bounds
        values = [f"{self.minimum:.3g}", f"{self.steep:.3g}", f"{self.valley:.3g}",
                  f"base_lr={b.base_lr:.3g} max_lr={b.max_lr:.3g} div={b.div:.3g}"]
        cells = []
        for name, value in zip(RULE_NAMES, values):
            spread = self.confidence.get(name, NO_CONFIDENCE).spread
            spread_text = "n/a" if math.isnan(spread) else ("inf" if math.isinf(spread) else f"±{spread:.2f} dec")
            cells.append((value + (" !" if name in self.notes else ""), spread_text))
        return cells

    def __str__(self) -> str:
        if self._all_none() and self.val is None:
            return f"LR suggestions ({', '.join(RULE_NAMES)}): none: {self.notes['minimum']}"
        sources = [("training loss", self)] + ([("validation loss", self.val)] if self.val is not None else [])
        lines = []
        for i, (label, s) in enumerate(sources):
            lines.append(("LR suggestions on the " if i == 0 else "           and on the ") + f"{label} ({s._summary()}):")
        columns = [s._cells() for _, s in sources]
        widths = [max(len(value) for value, _ in cells) for cells in columns]
        header = f"  {'rule':<11} "
        for (label, _), w in zip(sources, widths):
            header += f"{(label if len(sources) > 1 else 'value'):<{w}}  {'spread':<10} "
        lines.append(header + "meaning")
        for k, (name, meaning) in enumerate(zip(RULE_NAMES, _MEANINGS)):
            line = f"  {name:<11} "
            for cells, w in zip(columns, widths):
                value, spread = cells[k]
                line += f"{value:<{w}}  {spread:<10} "
            lines.append(line + meaning)
        for (label, s) in sources:
            prefix = "" if s is self else "validation "
            if s._all_none():
                lines.append(f"  {prefix}note (every rule): {s.notes['minimum']}")
                continue
            for name, note in s.notes.items():
                lines.append(f"  {prefix}note {name}: {note}")
        if any(s.notes for _, s in sources):
            lines.append("  (! = read the note before using the value)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Suggestions(minimum={self.minimum:.3g}, steep={self.steep:.3g}, valley={self.valley:.3g}, "
                f"clr_bounds={self.clr_bounds!r})")


# --------------------------------------------------------------------------- the public rules


def suggest(
    lrs: Sequence[float],
    losses: Sequence[float],
    n_skip: int | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Suggestions:
    """Every rule on one curve, with its confidence; a rule that gives no value yields ``nan`` and a note."""
    curve = _Curve.prepare(lrs, losses, n_skip)
    n_boot = _check_int("n_boot", n_boot, 0)
    seed = _check_int("seed", seed, 0)
    if isinstance(curve, str):
        note = curve
        return Suggestions(math.nan, math.nan, math.nan, NO_BOUNDS, {name: note for name in RULE_NAMES},
                           n_used=0, n_total=len(np.asarray(lrs).reshape(-1)), n_skip=_skip_of(lrs, n_skip))
    result = curve.rules(curve.y)
    notes = dict(result.notes)
    confidence: dict[str, Confidence] = {}
    if result.ok:
        spreads = curve.bootstrap(n_boot, seed) if n_boot else {}
        for name in RULE_NAMES:
            spread = spreads.get(name, math.nan)
            confidence[name] = Confidence(result.span, curve.noise / result.fall, spread)
            if n_boot and not spread <= MAX_SPREAD and math.isfinite(result.log_value(name)):
                how = (f"moves it by ±{spread:.2f} decade" if math.isfinite(spread)
                       else f"gives no value in over {100 * MAX_FAILED_BOOT:.0f}% of resamples")
                unstable = (f"unstable: resampling the curve's noise {how} (more than {MAX_SPREAD} decade allowed): "
                            "run a longer sweep (more num_it) or repeat it to see how much it varies")
                notes[name] = notes[name] + "; " + unstable if name in notes else unstable
    b = result.values["clr_bounds"]
    return Suggestions(
        10 ** result.values["minimum"] / 10, 10 ** result.values["steep"], 10 ** result.values["valley"],
        CLRBounds(10 ** b[0], 10 ** b[1]), notes, confidence,
        n_used=curve.n, n_total=curve.n_total, n_skip=curve.n_skip, n_dropped=curve.n_dropped,
    )


def combine_sweeps(sweeps: Sequence[Suggestions]) -> Suggestions:
    """One suggestion per rule from several sweeps: the median in log10(lr), its spread the sweeps' spread.

    ``spread`` is the standard deviation of log10 of the rule over the sweeps; above ``MAX_SPREAD`` the rule
    gets an "unstable" note. A rule with a note in more than half of the sweeps keeps the first such note; a
    rule with a value in half of the sweeps or fewer is ``nan``. ``val`` is combined the same way.
    """
    sweeps = list(sweeps)
    if not sweeps or not all(isinstance(s, Suggestions) for s in sweeps):
        raise TypeError(f"sweeps must be a non-empty sequence of Suggestions; got {sweeps!r}")
    if len(sweeps) == 1:
        return sweeps[0]
    k = len(sweeps)

    def column(name: str) -> np.ndarray:
        if name in ("base_lr", "max_lr"):
            return np.log10([getattr(s.clr_bounds, name) for s in sweeps])
        return np.log10([getattr(s, name) for s in sweeps])

    logs, spreads = {}, {}
    for name in ("minimum", "steep", "valley", "base_lr", "max_lr"):
        v = column(name)
        good = v[np.isfinite(v)]
        logs[name] = float(np.median(good)) if good.size > k / 2 else math.nan
        spreads[name] = float(np.std(good, ddof=1)) if good.size > max(1, k / 2) else math.inf
    if not logs["base_lr"] < logs["max_lr"]:
        logs["base_lr"] = logs["max_lr"] = math.nan
    spreads["clr_bounds"] = max(spreads.pop("base_lr"), spreads.pop("max_lr"))
    notes: dict[str, str] = {}
    confidence: dict[str, Confidence] = {}
    for name in RULE_NAMES:
        noted = [s.notes[name] for s in sweeps if name in s.notes]
        if len(noted) > k / 2:
            notes[name] = f"in {len(noted)} of {k} sweeps: {noted[0]}"
        spans = [s.confidence[name].span for s in sweeps if name in s.confidence]
        noise = [s.confidence[name].noise for s in sweeps if name in s.confidence]
        confidence[name] = Confidence(float(np.median(spans)) if spans else math.nan,
                                      float(np.median(noise)) if noise else math.nan, spreads[name])
        value = logs["max_lr"] if name == "clr_bounds" else logs[name]
        if math.isfinite(value) and confidence[name].unstable:
            unstable = (f"unstable: over {k} sweeps with different data orders it varies by ±{spreads[name]:.2f} "
                        f"decade (more than {MAX_SPREAD} allowed)" if math.isfinite(spreads[name])
                        else f"unstable: only some of the {k} sweeps give a value")
            notes[name] = notes[name] + "; " + unstable if name in notes else unstable
        elif not math.isfinite(value) and name not in notes:
            count = int(np.isfinite(column("max_lr" if name == "clr_bounds" else name)).sum())
            notes[name] = f"a value in only {count} of {k} sweeps: repeat with a longer sweep (more num_it)"
    vals = [s.val for s in sweeps]
    val = combine_sweeps(vals) if all(v is not None for v in vals) else None
    first = sweeps[0]
    return Suggestions(10 ** logs["minimum"], 10 ** logs["steep"], 10 ** logs["valley"],
                       CLRBounds(10 ** logs["base_lr"], 10 ** logs["max_lr"]), notes, confidence,
                       n_used=first.n_used, n_total=first.n_total, n_skip=first.n_skip, val=val,
                       n_sweeps=k)


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float], n_skip: int | None = None) -> float:
    """The lr at the lowest smoothed loss, divided by 10."""
    return 10 ** _one_rule("minimum", lrs, losses, n_skip) / 10


def suggest_steep(lrs: Sequence[float], losses: Sequence[float], n_skip: int | None = None) -> float:
    """Where the smoothed loss falls fastest with respect to ``log10(lr)``, before the minimum."""
    return 10 ** _one_rule("steep", lrs, losses, n_skip)


def suggest_valley(lrs: Sequence[float], losses: Sequence[float], n_skip: int | None = None) -> float:
    """The middle, in log lr, of the descent (from 5% to 95% of the fall)."""
    return 10 ** _one_rule("valley", lrs, losses, n_skip)


def suggest_clr_bounds(lrs: Sequence[float], losses: Sequence[float], n_skip: int | None = None) -> CLRBounds:
    """Smith's CLR bounds: ``base_lr`` where 10% of the fall is done, ``max_lr`` where 90% is done or it turns ragged."""
    base, top = _one_rule("clr_bounds", lrs, losses, n_skip)
    return CLRBounds(10**base, 10**top)


RULES: dict[str, Callable[..., object]] = {
    "minimum": suggest_minimum,
    "steep": suggest_steep,
    "valley": suggest_valley,
    "clr_bounds": suggest_clr_bounds,
}


def _one_rule(name: str, lrs: Sequence[float], losses: Sequence[float], n_skip: int | None):
    curve = _Curve.prepare(lrs, losses, n_skip)
    if isinstance(curve, str):
        raise SuggestionError(curve)
    result = curve.rules(curve.y)
    if not math.isfinite(result.log_value(name)):
        raise SuggestionError(result.notes[name])
    return result.values[name]


# --------------------------------------------------------------------------- the curve


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise fail(name, f"must be an int >= {minimum}; got {escape(repr(value))} ({type(value).__name__})",
                   kind=ArgumentTypeError)
    if value < minimum:
        raise fail(name, f"must be an int >= {minimum}; got {value}")
    return int(value)


def _skip_of(lrs: Sequence[float], n_skip: int | None) -> int:
    n = np.asarray(lrs).reshape(-1).size
    return warmup_points(n) if n_skip is None else min(n_skip, n)


def _half_window(n: int) -> int:
    return max(2, round(n / 25))


def _smoothing_operator(x: np.ndarray, h: int) -> np.ndarray:
    """The matrix ``S`` with ``S @ y`` the least-squares quadratic through each point's ``2h+1`` neighbours, at that point."""
    n = len(x)
    width = min(2 * h + 1, n)
    lo = np.clip(np.arange(n) - h, 0, n - width)  # windows keep their size at the ends
    idx = lo[:, None] + np.arange(width)[None, :]
    scale = np.maximum(x[idx[:, -1]] - x[idx[:, 0]], 1e-12)[:, None]
    u = (x[idx] - x[:, None]) / scale  # centred and scaled for a well-conditioned 3x3 solve
    design = np.stack([np.ones_like(u), u, u * u], axis=2)  # (n, width, 3)
    normal = np.einsum("nwi,nwj->nij", design, design)
    coef = np.linalg.solve(normal, design.transpose(0, 2, 1))  # (n, 3, width): coefficients per y value
    S = np.zeros((n, n))
    np.add.at(S, (np.repeat(np.arange(n), width), idx.ravel()), coef[:, 0, :].ravel())
    return S


def _running_median(y: np.ndarray, h: int) -> np.ndarray:
    pad = np.concatenate([np.full(h, y[0]), y, np.full(h, y[-1])])
    return np.median(np.lib.stride_tricks.sliding_window_view(pad, 2 * h + 1), axis=1)


def _robust_std(r: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


@dataclass
class _Result:
    values: dict  # rule -> log10 value (clr_bounds: (base, top)), nan when none
    notes: dict[str, str]
    ok: bool = False
    span: float = math.nan
    fall: float = math.nan

    def log_value(self, name: str) -> float:
        v = self.values[name]
        return v[1] if name == "clr_bounds" else v


def _no_result(note: str) -> _Result:
    return _Result({"minimum": math.nan, "steep": math.nan, "valley": math.nan, "clr_bounds": (math.nan, math.nan)},
                   {name: note for name in RULE_NAMES})


class _Curve:
    """A trimmed, cut curve in log10(lr) with its smoothing operators and noise level."""

    def __init__(self, lr: np.ndarray, y: np.ndarray, n_total: int, n_skip: int, n_dropped: int, cut: bool) -> None:
        self.lr, self.x, self.y = lr, np.log10(lr), y
        self.n, self.n_total, self.n_skip, self.n_dropped, self.cut = len(y), n_total, n_skip, n_dropped, cut
        self.h = _half_window(self.n)
        self.S = _smoothing_operator(self.x, self.h)
        self.residuals = y - self.S @ y
        self.noise = _robust_std(self.residuals)
        # standard deviation of the smoothed level from that noise (the rows of S weight the noise)
        self.level_noise = self.noise * float(np.sqrt(np.mean(np.sum(self.S**2, axis=1))))

    def _slope(self, s: np.ndarray) -> np.ndarray:
        """d s / d log10(lr) by central differences over a fixed span in log lr (one-sided at the ends).

        The span is the half-window of an evenly spaced sweep of the same range, so a linear sweep, whose
        points crowd at the top, gets slopes as steady as an exponential one."""
        x = self.x
        delta = self.h * (x[-1] - x[0]) / (self.n - 1)
        lo = np.maximum(x - delta, x[0])
        hi = np.minimum(x + delta, x[-1])
        return (np.interp(hi, x, s) - np.interp(lo, x, s)) / np.maximum(hi - lo, 1e-12)

    @staticmethod
    def _edge(s: np.ndarray, x: np.ndarray, i: int, step: int, target: float) -> float:
        """x where ``s`` crosses ``target`` between point ``i`` (at or below it) and its neighbour ``i + step``."""
        j = i + step
        if j < 0 or j >= len(s) or s[j] == s[i]:
            return float(x[i])
        t = (target - s[i]) / (s[j] - s[i])
        return float(x[i] + min(max(t, 0.0), 1.0) * (x[j] - x[i]))

    @classmethod
    def prepare(cls, lrs: Sequence[float], losses: Sequence[float], n_skip: int | None) -> "_Curve | str":
        """The curve ready for the rules, or the note saying why it gives none; bad input raises."""
        lr = np.asarray(lrs, dtype=np.float64).reshape(-1)
        y = np.asarray(losses, dtype=np.float64).reshape(-1)
        if lr.shape != y.shape:
            raise ArgumentError("losses", f"{{lrs}} and {{losses}} must have the same length; got {lr.size} lrs and "
                                          f"{y.size} losses")
        if not np.all(np.isfinite(lr) & (lr > 0)):
            bad = lr[~(np.isfinite(lr) & (lr > 0))][0]
            raise fail("lrs", "must be finite and > 0 (the lrs of a range-test sweep)", bad)
        if np.any(np.diff(lr) <= 0):
            i = int(np.nonzero(np.diff(lr) <= 0)[0][0])
            raise ArgumentError("lrs", f"{{lrs}} must be strictly increasing (the lrs of a range-test sweep); "
                                       f"got {{lrs}}[{i}]={lr[i]:.6g} then {{lrs}}[{i + 1}]={lr[i + 1]:.6g}")
        n_total = lr.size
        skip = warmup_points(n_total) if n_skip is None else _check_int("n_skip", n_skip, 0)
        lr, y = lr[skip:], y[skip:]
        finite = np.isfinite(y)
        n_dropped = int((~finite).sum())
        lr, y = lr[finite], y[finite]
        if lr.size < MIN_POINTS:
            why = []
            if skip:
                why.append(f"{min(skip, n_total)} skipped as warm-up")
            if n_dropped:
                why.append(f"{n_dropped} with a NaN/inf loss")
            detail = f" ({', '.join(why)})" if why else ""
            return (f"too few points: {lr.size} usable of {n_total}{detail}; a suggestion needs at least {MIN_POINTS}: "
                    "run a longer sweep (more num_it) or one that diverges later (lower end_lr)")
        y, cut = _cut_blow_up(y)
        lr = lr[: len(y)]
        if y.size < MIN_POINTS:
            return (f"too few points before the loss blows up: {y.size} of {n_total}; a suggestion needs at least "
                    f"{MIN_POINTS}: start the sweep lower (start_lr) or run more iterations (num_it)")
        return cls(lr, y, n_total, skip, n_dropped, cut)

    # ------------------------------------------------------------------ rules on one (possibly resampled) curve
    def rules(self, y: np.ndarray) -> _Result:
        """Every rule on ``y`` (the curve itself, or a bootstrap resample of it)."""
        s, x = self.S @ y, self.x
        g = self._slope(s)
        i_min = int(np.argmin(s))
        i_top = int(np.argmax(s[: i_min + 1]))
        # The highest and lowest smoothed values are biased outwards by noise (an extreme over many points);
        # take that expected excess off both, so that noise does not shift every level crossing.
        excess = self.level_noise * math.sqrt(2 * math.log(max(2.0, (i_min + 1) / (2 * self.h + 1))))
        fall = float(s[i_top] - s[i_min]) - 2 * excess
        level = float(s[i_top]) - excess
        scale = max(abs(level), abs(float(s[i_min])), 1e-300)
        # The running median must fall too: a quadratic through a sudden rise dips before it (ringing),
        # which is no descent of the loss.
        m = _running_median(y, self.h)
        m_min = int(np.argmin(m))
        median_fall = float(m[: m_min + 1].max() - m[m_min])
        if not (fall > CLEAR_NOISE * self.noise and fall > CLEAR_FALL * abs(level) and fall > FLAT_TOLERANCE * scale
                and median_fall > CLEAR_FALL * abs(level)):
            return _no_result(self._no_descent_note(s, fall, median_fall, level))

        def crossing(fraction: float) -> tuple[float, int]:
            """x where s falls through ``level - fraction * fall`` for the last time before its minimum, and the
            index just past it. Searching back from the minimum keeps a noise dip on a plateau from counting."""
            target = level - fraction * fall
            above = np.nonzero(s[i_top: i_min + 1] > target)[0]
            j = i_top + int(above[-1]) + 1
            t = (s[j - 1] - target) / (s[j - 1] - s[j])
            return float(x[j - 1] + t * (x[j] - x[j - 1])), j

        x_from, j_from = crossing(VALLEY_FROM)
        x_to, j_to = crossing(VALLEY_TO)
        # Smoothing spreads a step over a window, so whether the fall took one step is read off the curve itself.
        raw_min = int(np.argmin(y))
        above_from = np.nonzero(y[: raw_min + 1] > level - VALLEY_FROM * fall)[0]
        above_to = np.nonzero(y[: raw_min + 1] > level - VALLEY_TO * fall)[0]
        if above_from.size and above_to.size and above_from[-1] == above_to[-1] < raw_min:
            j = int(above_to[-1])
            note = (f"the loss falls by {fall:.3g} in a single step of the sweep, between lr {self.lr[j]:.3g} "
                    f"and {self.lr[j + 1]:.3g}: run a finer sweep (more num_it) over that range")
            return _no_result(note)
        x_base, _ = crossing(BASE_FRACTION)
        x_top, j_top = crossing(TOP_FRACTION)
        span = x_top - x_base

        # minimum: the middle of the bottom (within MIN_BAND of the fall above the lowest point), so that noise
        # on a flat floor does not move it from one end of the floor to the other
        floor = level - fall
        band = s <= floor + MIN_BAND * fall
        lo_b, hi_b = i_min, i_min
        while lo_b > 0 and band[lo_b - 1]:
            lo_b -= 1
        while hi_b < self.n - 1 and band[hi_b + 1]:
            hi_b += 1
        x_min = (self._edge(s, x, lo_b, -1, floor + MIN_BAND * fall)
                 + self._edge(s, x, hi_b, +1, floor + MIN_BAND * fall)) / 2

        # steep: slope-weighted centre of the steep stretch around the steepest point
        gd = g[i_top: i_min + 1]
        k = int(np.argmin(gd))
        if gd[k] < 0:
            # every steep point counts (not only the run around the steepest), so noise that splits the run
            # into pieces cannot move the answer to one piece
            w = np.where(gd <= STEEP_FRACTION * gd[k], -gd, 0.0)
            x_steep = float(np.sum(w * x[i_top: i_min + 1]) / np.sum(w))
        else:  # the fitted slope never turns negative although the level falls: use the middle of the fall
            x_steep = crossing(0.5)[0]

        # clr_bounds: stop early where the descent turns ragged, i.e. rises and stays up for RAGGED_SPAN decade.
        # Only once half the fall is done: a wobble early on, followed by most of the fall, is not the top.
        j_base = crossing(BASE_FRACTION)[1]
        j_half = i_top + int(np.argmax(s[i_top: i_min + 1] <= level - fall / 2))
        j_from = max(j_base, j_half)
        stretch = s[j_from: j_top + 1]
        low = np.minimum.accumulate(stretch)
        ragged = max(RAGGED_FRACTION * fall, RAGGED_NOISE * self.level_noise)  # noise alone must not trip it
        notes: dict[str, str] = {}
        turn = None
        for r in np.nonzero(stretch > low + ragged)[0]:
            k = j_from + int(r)
            later = (x > x[k]) & (x <= x[k] + RAGGED_SPAN)
            if not np.any(later & (s <= low[r])):
                turn = k
                break
        if turn is not None:
            x_top = float(x[j_from + int(np.argmin(s[j_from:turn]))]) if turn > j_from else x_base
        if i_min == self.n - 1 and not self.cut:
            notes["minimum"] = (f"the loss is still falling at the last lr ({self.lr[-1]:.3g}): the minimum may lie "
                                "beyond the sweep; sweep to a higher end_lr")
        values = {"minimum": x_min, "steep": x_steep, "valley": (x_from + x_to) / 2, "clr_bounds": (x_base, x_top)}
        div = 10 ** (x_top - x_base)
        if x_top <= x_base:
            values["clr_bounds"] = (math.nan, math.nan)
            notes["clr_bounds"] = (f"the loss rises again at lr {self.lr[turn]:.3g}, right where it starts to fall "
                                   f"(base_lr {10 ** x_base:.3g}), and stays up for {RAGGED_SPAN} decade: no range to "
                                   "cycle over; use a constant lr (valley) or run a longer sweep")
        elif div < MIN_DIV:
            notes["clr_bounds"] = (f"div={div:.3g} is below {MIN_DIV:g}: the loss goes from 10% to 90% of its fall "
                                   f"within {x_top - x_base:.2f} decade, too narrow a range to cycle over; prefer a "
                                   f"fixed div (10 to 25) with max_lr={10 ** x_top:.3g}")
        elif div > MAX_DIV:
            notes["clr_bounds"] = (f"div={div:.3g} is above {MAX_DIV:g}: the loss falls slowly over "
                                   f"{x_top - x_base:.2f} decades, so a cycle would spend most of its time at lrs "
                                   f"too small to help; prefer a fixed div (10 to 25) with max_lr={10 ** x_top:.3g}")
        return _Result(values, notes, ok=True, span=span, fall=fall)

    def _no_descent_note(self, s: np.ndarray, fall: float, median_fall: float, level: float) -> str:
        """What a curve without a clear descent shows (a loss that only rises, or a flat one), naming the test it failed."""
        low = np.minimum.accumulate(s)
        rise_total = float(s.max() - s.min())
        percent = f"{100 * CLEAR_FALL:g}% of its level"
        reasons = ([f"under {CLEAR_NOISE:g} x its noise ({self.noise:.2g})"] if not fall > CLEAR_NOISE * self.noise
                   else []) + ([f"under {percent}"] if not fall > CLEAR_FALL * abs(level) else [])
        if fall <= 0 and median_fall <= 0:
            how = ""
        elif reasons and fall > 0:
            how = f"it falls by at most {fall:.3g} (from {level:.4g}), {' and '.join(reasons)}"
        elif reasons:
            how = f"its running median falls by at most {median_fall:.3g} (from {level:.4g}), {' and '.join(reasons)}"
        elif median_fall > 0:  # the smoothed curve dips (ringing before a sudden rise) but the running median does not
            how = f"its running median falls by at most {median_fall:.3g} (from {level:.4g}), under {percent}"
        else:
            how = "its running median never falls: the smoothed curve dips only where the loss turns up sharply"
        threshold = max(CLEAR_NOISE * self.noise, CLEAR_FALL * max(abs(float(s[0])), 1e-300))
        near_low = np.nonzero(s - low <= threshold)[0]  # index 0 always is
        if near_low[-1] < len(s) - 1 and rise_total > threshold:
            start = int(near_low[-1]) + 1  # from here on the loss stays above its low: it rises for good
            # the last point still at the low level before the rise
            at = max(int(np.nonzero(s[: start + 1] - low[: start + 1] <= threshold / 2)[0][-1]), 0)
            return (f"the loss never falls over the sweep{f' ({how})' if how else ''} and rises from lr {self.lr[start]:.2g} on: "
                    f"the model looks trained already, or learns too little per step of this sweep to show a descent; "
                    f"sweep lower (start_lr={self.lr[0] / 100:.0e}), run more iterations (num_it), or pick an lr "
                    f"below where the loss starts to rise: {self.lr[at]:.2g}")
        return (f"the loss is flat over the sweep ({float(s.min()):.6g} .. {float(s.max()):.6g}{': ' + how if how else ''}): "
                "widen the lr range or check that the model trains")

    # ------------------------------------------------------------------ bootstrap
    def bootstrap(self, n_boot: int, seed: int) -> dict[str, float]:
        """Per rule, half the 16-84 percentile range (decades) over block-bootstrap resamples; inf if too many fail."""
        rng = np.random.default_rng(seed)
        s = self.S @ self.y
        block = min(self.h + 1, self.n)
        n_blocks = math.ceil(self.n / block)
        logs: dict[str, list[float]] = {name: [] for name in RULE_NAMES}
        base_logs: list[float] = []
        for _ in range(n_boot):
            starts = rng.integers(0, self.n - block + 1, n_blocks)
            r = self.residuals[(starts[:, None] + np.arange(block)[None, :]).ravel()[: self.n]]
            result = self.rules(s + r)
            for name in RULE_NAMES:
                logs[name].append(result.log_value(name))
            base_logs.append(result.values["clr_bounds"][0])
        out = {}
        for name in RULE_NAMES:
            out[name] = _spread(logs[name])
        out["clr_bounds"] = max(out["clr_bounds"], _spread(base_logs))
        return out


def _spread(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    good = v[np.isfinite(v)]
    if good.size < max(2, (1 - MAX_FAILED_BOOT) * v.size):
        return math.inf
    p16, p84 = np.percentile(good, [16, 84])
    return float((p84 - p16) / 2)


def _cut_blow_up(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """The curve before the point where, after its minimum, it rises back above the middle of its fall; and whether it was cut."""
    h = _half_window(y.size)
    m = _running_median(y, h)
    i_min = int(np.argmin(m))
    top = float(m[: i_min + 1].max())
    fall = top - float(m[i_min])
    noise = _robust_std(np.diff(y)) / math.sqrt(2)  # point-to-point noise; a trend barely adds to it
    if not (fall > CLEAR_NOISE * noise and fall > CLEAR_FALL * abs(top)):
        # No clear fall (a trained model only rises): a blow-up is a loss BLOW_UP x its starting level
        # (above it by 3 x its size, for a negative loss), dropped so that its scale cannot swamp the rest.
        start = float(np.median(y[: 2 * h + 1]))
        over = np.nonzero(y > start + (BLOW_UP - 1) * max(abs(start), noise))[0]
        return (y[: int(over[0])], True) if over.size else (y, False)
    # Once it has risen back through the middle of its fall the loss is diverging; dropping that point and
    # everything after keeps the blow-up from bending the smoothing of the bottom.
    cap = float(m[i_min]) + fall / 2
    over = np.nonzero(y[i_min:] > cap)[0]
    if not over.size:
        return y, False
    return y[: i_min + int(over[0])], True
