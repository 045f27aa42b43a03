"""LR suggestions on synthetic curves whose answers are known analytically."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clrfit.schedules import fit_schedule
from clrfit.suggest import (
    BASE_FRACTION,
    DESCENT_FRACTION,
    RAGGED_FRACTION,
    TOP_FRACTION,
    CLRBounds,
    SuggestionError,
    Suggestions,
    suggest,
    suggest_clr_bounds,
    suggest_minimum,
    suggest_steep,
    suggest_valley,
)

RULES = [suggest_minimum, suggest_steep, suggest_valley, suggest_clr_bounds]
X = np.linspace(-5, 1, 121)  # log10(lr): the default 1e-5 .. 10 sweep, 0.05 decade apart
LRS = 10**X
STEP = X[1] - X[0]
M, SIGMA = -1.5, 0.5


def dip(x):
    """A U in log-lr space: level 2, lowest (1.0) at M; steepest descent at the inflection M - SIGMA."""
    return 2 - np.exp(-((x - M) ** 2) / (2 * SIGMA**2))


def decades(a: float, b: float) -> float:
    return abs(math.log10(a) - math.log10(b))


def test_minimum_is_lr_at_lowest_loss_over_ten():
    assert decades(suggest_minimum(LRS, dip(X)), 10**M / 10) <= STEP / 2


def test_steep_is_at_the_inflection_before_the_minimum():
    assert decades(suggest_steep(LRS, dip(X)), 10 ** (M - SIGMA)) <= 2 * STEP


def test_valley_is_the_middle_of_the_longest_clear_descent():
    # Analytic derivative on a fine grid: where it is below DESCENT_FRACTION x its minimum.
    fine = np.linspace(-5, 1, 200_001)
    deriv = (fine - M) / SIGMA**2 * np.exp(-((fine - M) ** 2) / (2 * SIGMA**2))
    descending = fine[deriv < DESCENT_FRACTION * deriv.min()]
    middle = (descending.min() + descending.max()) / 2
    assert decades(suggest_valley(LRS, dip(X)), 10**middle) <= 2 * STEP


def test_valley_on_a_piecewise_linear_curve():
    # flat to 1e-3, straight descent to 1e-1, then a rise: the descent's middle is 1e-2
    y = np.where(X < -3, 3.0, np.where(X < -1, 3.0 - (X + 3), 1.0 + 2 * (X + 1)))
    assert decades(suggest_valley(LRS, y), 1e-2) <= STEP


def test_clr_bounds_follow_smiths_rule_on_the_dip():
    # The dip's fall is 1: base where 10% of it is done, max where 90% is done.
    # 2 - exp(-u**2 / 2) has fallen by f where exp(-u**2 / 2) = f, u = |x - M| / SIGMA.
    u_base = math.sqrt(-2 * math.log(BASE_FRACTION))
    u_top = math.sqrt(-2 * math.log(TOP_FRACTION))
    b = suggest_clr_bounds(LRS, dip(X))
    assert decades(b.base_lr, 10 ** (M - u_base * SIGMA)) <= STEP
    assert decades(b.max_lr, 10 ** (M - u_top * SIGMA)) <= STEP
    assert b.div == pytest.approx(b.max_lr / b.base_lr) and b.div > 1


def test_clr_max_stops_where_the_curve_turns_ragged():
    # straight descent from 1e-4 to 1e-1 with a bump at 1e-2 rising above RAGGED_FRACTION of the fall
    y = np.where(X < -4, 3.0, np.clip(3.0 - (X + 4), 0.0, None)) + np.where(X > -1, 3 * (X + 1), 0)
    bump = (X > -2) & (X < -1.8)
    y = y + np.where(bump, 3 * 2 * RAGGED_FRACTION, 0)
    b = suggest_clr_bounds(LRS, y)
    assert decades(b.max_lr, 10**-2) <= 2 * STEP
    assert decades(b.base_lr, 10 ** (-4 + 3 * BASE_FRACTION)) <= STEP


def test_noisy_curve_moves_suggestions_little():
    rng = np.random.default_rng(0)
    clean = suggest(LRS, dip(X))
    for _ in range(5):
        noisy = suggest(LRS, dip(X) + rng.normal(0, 0.005, X.size))
        assert noisy.notes == {}
        for name in ("minimum", "steep", "valley", "base_lr", "max_lr"):
            assert decades(noisy.as_dict()[name], clean.as_dict()[name]) <= 0.3, name


def test_nan_and_inf_points_are_dropped():
    y = dip(X)
    y[40] = np.nan
    y[-10:] = np.inf  # a diverged tail
    keep = np.isfinite(y)
    with_gaps = suggest(LRS, y)
    assert with_gaps.as_dict() == pytest.approx(suggest(LRS[keep], y[keep]).as_dict())
    assert with_gaps.notes == {}


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_too_short_curve_gives_a_message(n):
    for rule in RULES:
        with pytest.raises(SuggestionError, match="too few points"):
            rule(LRS[:n], dip(X)[:n])
    s = suggest(LRS[:n], dip(X)[:n])
    assert math.isnan(s.minimum) and math.isnan(s.clr_bounds.div)
    assert "too few points" in str(s) and set(s.notes) == {"minimum", "steep", "valley", "clr_bounds"}


def test_all_nan_curve_gives_a_message():
    for rule in RULES:
        with pytest.raises(SuggestionError, match="too few points"):
            rule(LRS, np.full(X.size, np.nan))


def test_flat_curve_gives_a_message():
    for rule in RULES:
        with pytest.raises(SuggestionError, match="flat"):
            rule(LRS, np.full(X.size, 2.3))


def test_rising_curve_has_no_descent():
    for rule in RULES:
        with pytest.raises(SuggestionError, match="never (falls|descends)"):
            rule(LRS, 1 + X**2 / 100 + X / 10 + 1)


def test_falling_curve():
    y = 3 - (X + 5) / 2  # falls all the way: the minimum is at the last lr
    assert suggest_minimum(LRS, y) == pytest.approx(LRS[-1] / 10)
    b = suggest_clr_bounds(LRS, y)
    assert b.div > 1
    assert decades(b.max_lr, 10 ** (-5 + 6 * TOP_FRACTION)) <= STEP


def test_loss_that_barely_falls_before_rising_gives_no_clr_bounds():
    y = 2.3 - 0.001 * np.exp(-((X + 4) ** 2)) + np.where(X > -3, (X + 3) ** 2, 0)
    with pytest.raises(SuggestionError, match="no clear descent"):
        suggest_clr_bounds(LRS, y)


def test_bad_input_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="lrs and losses"):
        suggest(LRS, dip(X)[:-1])
    with pytest.raises(ValueError, match="strictly increasing"):
        suggest(LRS[::-1], dip(X))


def test_random_curves_never_crash_and_bounds_are_valid_for_use_clr_beta():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 60))
        y = np.cumsum(rng.normal(0, 1, n)) * rng.choice([1e-9, 1.0, 1e6])
        y[rng.random(n) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
        s = suggest(np.logspace(-5, 1, n), y)
        assert isinstance(s, Suggestions)
        b = s.clr_bounds
        if "clr_bounds" not in s.notes:
            assert math.isfinite(b.div) and b.div > 1 and b.base_lr < b.max_lr
            fit_schedule((b.max_lr,), 10, 1, cycle_len=3, use_clr_beta=(b.div, 10, 0.95, 0.85))
        for name in ("minimum", "steep", "valley"):
            assert math.isfinite(getattr(s, name)) != (name in s.notes)


def test_printed_forms_are_readable():
    s = suggest(LRS, dip(X))
    text = str(s)
    for name in ("minimum", "steep", "valley", "clr_bounds", "base_lr=", "max_lr=", "div="):
        assert name in text
    assert f"{s.steep:.3g}" in text and f"{s.clr_bounds.div:.3g}" in repr(s)
    assert repr(CLRBounds(1e-3, 1e-1)) == "CLRBounds(base_lr=0.001, max_lr=0.1, div=100)"
