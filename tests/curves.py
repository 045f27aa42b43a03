"""A family of synthetic range-test curves (smoothed losses) for the suggestion rules' tests and benchmark.

Each curve is a smooth function of ``x = log10(lr)``: a plateau at ``HIGH``, a
logistic descent of ``FALL`` centred at ``centre`` with width ``width``, a floor
``HIGH - FALL`` and an exponential blow-up after ``blow``. Kinds:

- ``clean``: that curve over the whole sweep (the loss rises steeply at the end).
- ``plateau``: a long plateau before a later descent.
- ``bump``: an early bump of 30% of the fall in the first 5% of points (a warm
  or trained model's first batches).
- ``diverged``: cut at the first point whose loss exceeds 4 x the floor, as a
  sweep with ``stop_dv=True`` ends.
- ``blowup``: ``stop_dv=False``: a blow-up to 1e6, then NaN.
- ``trained``: the loss only rises (an already-trained model): no answer.

Sweeps: ``log`` (1e-5 .. 10, exponential) and ``linear`` (1e-3 .. 1, linear).
Noise: uniform on ``[-level, +level] x FALL``, seeded.
"""
from __future__ import annotations

import numpy as np

HIGH, FALL = 2.3, 1.8
KINDS = ("clean", "plateau", "bump", "diverged", "blowup")
SWEEPS = {
    # start, end, linear, descent centre and width (decades), blow-up start
    "log": (1e-5, 10.0, False, -2.5, 0.25, -0.6),
    "linear": (1e-3, 1.0, True, -0.7, 0.2, -0.2),
}
LENGTHS = (20, 50, 100, 300, 500)
NOISE_LEVELS = (0.02, 0.05, 0.10)


def sweep_lrs(n: int, sweep: str = "log") -> np.ndarray:
    """The ``n`` lrs of a sweep, as the range test computes them."""
    start, end, linear = SWEEPS[sweep][:3]
    i = np.arange(n)
    if linear:
        return start + (end - start) * i / (n - 1)
    return start * (end / start) ** (i / (n - 1))


def shape(x: np.ndarray, centre: float, width: float, blow: float, rate: float = 0.12) -> np.ndarray:
    """Plateau, logistic descent, floor, exponential blow-up: the noise-free loss at ``x = log10(lr)``."""
    descent = FALL / (1 + np.exp(-(x - centre) / width))
    return HIGH - descent + 0.3 * np.expm1(np.clip((x - blow) / rate, 0, 60))


def curve(kind: str, n: int, sweep: str = "log", noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(lrs, losses)`` of one curve of the family; ``noise`` is the uniform amplitude as a fraction of the fall."""
    lrs = sweep_lrs(n, sweep)
    x = np.log10(lrs)
    _, _, _, centre, width, blow = SWEEPS[sweep]
    if kind == "plateau":
        centre, blow = centre + 0.6 * (blow - centre) / 1.5, blow + 0.1
    if kind == "trained":
        y = HIGH - FALL + 0.05 * np.expm1(np.clip((x - centre) / 0.4, 0, 8))
    else:
        y = shape(x, centre, width, blow, rate=0.06 if kind == "blowup" else 0.12)
    if kind == "bump":
        y[: max(1, n // 20)] += 0.3 * FALL
    rng = np.random.default_rng(seed)
    y = y + rng.uniform(-noise, noise, n) * FALL
    if kind == "diverged":
        # SCHEDULES.md's stop: 4 x the best loss, the best counted only after the 10th step
        best = np.minimum.accumulate(np.where(np.arange(n) >= 10, y, np.inf))
        over = np.nonzero(y[1:] > 4 * best[:-1])[0]
        end = int(over[0]) + 2 if over.size else n
        lrs, y = lrs[:end], y[:end]
    if kind == "blowup":
        y = np.minimum(y, 1e6)
        big = np.nonzero(y >= 1e6)[0]
        if big.size:
            y[big[0] + 1:] = np.nan
    return lrs, y


def decades(a: float, b: float) -> float:
    """Distance between two lrs in decades (inf if either is nan)."""
    if not (a > 0 and b > 0):
        return float("inf")
    return abs(float(np.log10(a)) - float(np.log10(b)))
