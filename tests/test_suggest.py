"""LR suggestions: the rules on curves whose answers are known analytically, the notes when a curve has
no trustworthy answer (each note's claim checked against its curve), confidence, printing, bad input,
and the range test's divergence stop (SCHEDULES.md) that decides where a curve ends."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from clrfit import Learner, ModelData
from clrfit.lr_finder import RangeTestRecorder
from clrfit.schedules import fit_schedule
from clrfit.suggest import (
    BASE_FRACTION,
    MAX_DIV,
    MAX_SPREAD,
    MIN_DIV,
    MIN_POINTS,
    STEEP_FRACTION,
    TOP_FRACTION,
    VALLEY_FROM,
    VALLEY_TO,
    CLRBounds,
    combine_sweeps,
    SuggestionError,
    Suggestions,
    end_points,
    suggest,
    suggest_clr_bounds,
    suggest_minimum,
    suggest_steep,
    suggest_valley,
    warmup_points,
)

from curves import FALL, curve, decades

RULES = [suggest_minimum, suggest_steep, suggest_valley, suggest_clr_bounds]
X = np.linspace(-5, 1, 121)  # log10(lr): the default 1e-5 .. 10 sweep, 0.05 decade apart
LRS = 10**X
STEP = X[1] - X[0]
M, SIGMA = -1.5, 0.5


def dip(x):
    """A U in log-lr space: level 2, lowest (1.0) at M; a fraction f of the fall is done where exp(-u**2/2) = f."""
    return 2 - np.exp(-((x - M) ** 2) / (2 * SIGMA**2))


def done_at(fraction: float) -> float:
    """x, left of M, where the dip has done ``fraction`` of its fall."""
    return M - SIGMA * math.sqrt(-2 * math.log(fraction))


# --------------------------------------------------------------------------- the rules, noise-free


def test_minimum_is_the_middle_of_the_bottom_over_ten():
    # symmetric dip: the bottom's middle is the lowest point
    assert decades(suggest_minimum(LRS, dip(X), n_skip=0), 10**M / 10) <= STEP / 2


def test_steep_is_the_slope_weighted_centre_of_the_steep_stretch():
    fine = np.linspace(-5, M, 200_001)
    slope = -(M - fine) / SIGMA**2 * np.exp(-((fine - M) ** 2) / (2 * SIGMA**2))
    steep = slope <= STEEP_FRACTION * slope.min()
    centre = np.sum(slope[steep] * fine[steep]) / np.sum(slope[steep])
    assert abs(centre - (M - SIGMA)) < 0.15  # near the inflection, as "steepest" should be
    assert decades(suggest_steep(LRS, dip(X), n_skip=0), 10**centre) <= STEP


def test_valley_is_the_middle_of_the_descent():
    middle = (done_at(VALLEY_FROM) + done_at(VALLEY_TO)) / 2
    assert decades(suggest_valley(LRS, dip(X), n_skip=0), 10**middle) <= STEP / 2


def test_valley_on_a_piecewise_linear_curve():
    # flat to 1e-3, straight descent to 1e-1, then a rise: the descent's middle is 1e-2
    y = np.where(X < -3, 3.0, np.where(X < -1, 3.0 - (X + 3), 1.0 + 2 * (X + 1)))
    assert decades(suggest_valley(LRS, y, n_skip=0), 1e-2) <= STEP


def test_clr_bounds_follow_smiths_rule_on_the_dip():
    b = suggest_clr_bounds(LRS, dip(X), n_skip=0)
    assert decades(b.base_lr, 10 ** done_at(BASE_FRACTION)) <= STEP / 2
    assert decades(b.max_lr, 10 ** done_at(TOP_FRACTION)) <= STEP / 2
    assert b.div == pytest.approx(b.max_lr / b.base_lr) and b.div > 1


def test_clr_max_stops_where_the_curve_turns_ragged():
    # from 3 at 1e-4 down 1 per decade to 1.0 at 1e-2 (2/3 of the fall of 3), then a jump to 1.6 that stays for
    # 0.8 decade before the loss falls on to 0: ragged, so max_lr is the best point before the jump
    y = np.where(X < -4, 3.0, 3.0 - (X + 4))
    y = np.where(X >= -2, 1.6, y)
    y = np.where(X >= -1.2, 1.6 - (X + 1.2) * 2.5, y)
    y = np.where(X >= -0.56, (X + 0.56) * 3, y)
    b = suggest_clr_bounds(LRS, y, n_skip=0)
    assert -2.25 <= math.log10(b.max_lr) <= -1.95, b
    assert decades(b.base_lr, 10 ** (-4 + 3 * BASE_FRACTION)) <= STEP


def test_an_early_wobble_followed_by_most_of_the_fall_is_not_ragged():
    # a sag of 0.8 and a rise back that stays up for a decade, then the real descent of 3.2
    y = np.where(X < -4, 4.0, 4.0 - 0.8 * (X + 4))
    y = np.where(X >= -3, 3.2 + 0.6 * np.minimum(X + 3, 1), y)
    y = np.where(X >= -2, 3.8 - 1.6 * (X + 2), y)
    y = np.where(X >= -0.5, 1.4 + 10 * (X + 0.5), y)
    b = suggest_clr_bounds(LRS, y, n_skip=0)
    assert math.log10(b.max_lr) > -1.0  # near 90% of the whole fall, not at the wobble (-3)


def test_a_short_bump_that_the_loss_recovers_from_is_not_ragged():
    y = np.where(X < -4, 3.0, np.clip(3.0 - (X + 4), 0.0, None)) + np.where(X > -1, 3 * (X + 1), 0)
    smooth = suggest_clr_bounds(LRS, y, n_skip=0)
    bumped = suggest_clr_bounds(LRS, y + np.where((X > -1.8) & (X < -1.6), 1.0, 0), n_skip=0)
    assert decades(bumped.max_lr, smooth.max_lr) <= STEP and decades(bumped.base_lr, smooth.base_lr) <= STEP


def test_family_references_sit_where_the_curve_says():
    # the clean log curve of tests/curves.py: a logistic descent centred at 10**-2.5, width 0.25 decade
    centre, width = -2.5, 0.25
    s = suggest(*curve("clean", 300), n_boot=0)
    assert s.notes == {}
    assert decades(s.steep, 10**centre) <= 0.05
    assert decades(s.valley, 10**centre) <= 0.05
    half = width * math.log(9)  # a logistic goes from 10% to 90% in 2 * width * ln 9
    assert decades(s.clr_bounds.base_lr, 10 ** (centre - half)) <= 0.05
    assert decades(s.clr_bounds.max_lr, 10 ** (centre + half)) <= 0.05
    assert s.confidence["valley"].span == pytest.approx(2 * half, abs=0.05)


def test_a_constant_shift_or_negative_loss_changes_nothing():
    lrs, y = curve("clean", 100, noise=0.05, seed=3)
    shifted = suggest(lrs, y - 3.0, n_boot=0)  # the loss goes from -0.7 to -2.5: negative losses are allowed
    assert shifted.as_dict() == pytest.approx(suggest(lrs, y, n_boot=0).as_dict(), rel=1e-9)


def test_warm_up_points_are_skipped_as_the_plot_skips_them():
    assert [warmup_points(n) for n in (5, 20, 50, 100, 300, 500)] == [1, 2, 5, 10, 15, 25]
    assert [end_points(n) for n in (20, 100, 500)] == [1, 5, 5]
    lrs, y = curve("clean", 100)
    y = y.copy()
    y[:10] = 0.0  # a first smoothed point far below the rest, as a regression MLP's batch-4 loss can give
    s = suggest(lrs, y, n_boot=0)
    assert s.n_skip == 10 and s.as_dict() == pytest.approx(suggest(*curve("clean", 100), n_boot=0).as_dict())
    assert suggest(lrs, y, n_skip=0, n_boot=0).as_dict() != s.as_dict()


def test_nan_and_inf_points_are_dropped():
    y = dip(X)
    y[40] = np.nan
    y[-10:] = np.inf  # a diverged tail
    keep = np.isfinite(y)
    with_gaps = suggest(LRS, y, n_skip=0, n_boot=0)
    assert with_gaps.as_dict() == pytest.approx(suggest(LRS[keep], y[keep], n_skip=0, n_boot=0).as_dict())
    assert with_gaps.notes == {}
    assert "11 with a NaN/inf loss dropped" in str(with_gaps)
    blown = suggest(*curve("blowup", 100), n_boot=0)
    n_nan = int(np.isnan(curve("blowup", 100)[1]).sum())
    assert f"{n_nan} with a NaN/inf loss dropped" in str(blown) and "after the blow-up cut" in str(blown)


# --------------------------------------------------------------------------- no confident nonsense


def all_nan(s: Suggestions) -> bool:
    return all(math.isnan(v) for v in s.as_dict().values()) and set(s.notes) == {"minimum", "steep", "valley",
                                                                                   "clr_bounds"}


@pytest.mark.parametrize("n", [0, 1, 2, 4, MIN_POINTS - 1])
def test_too_short_curve_gives_a_message(n):
    for rule in RULES:
        with pytest.raises(SuggestionError, match="too few points"):
            rule(LRS[:n], dip(X)[:n])
    s = suggest(LRS[:n], dip(X)[:n])
    assert all_nan(s) and "too few points" in str(s)
    assert f"{n - warmup_points(n)} usable of {n}" in s.notes["minimum"]


def test_too_few_points_after_trimming_counts_what_was_dropped():
    lrs, y = LRS[::10][:10], dip(X[::10][:10]).copy()  # 10 points, 1 warm-up
    y[-2:] = np.nan
    s = suggest(lrs, y)
    assert all_nan(s)
    assert "too few points: 7 usable of 10 (1 skipped as warm-up, 2 with a NaN/inf loss)" in s.notes["valley"]


def test_all_nan_curve_gives_a_message():
    for rule in RULES:
        with pytest.raises(SuggestionError, match="too few points"):
            rule(LRS, np.full(X.size, np.nan))


def test_flat_curve_gives_a_message():
    for rule in RULES:
        with pytest.raises(SuggestionError, match="flat"):
            rule(LRS, np.full(X.size, 2.3))


def test_a_trained_model_whose_loss_only_rises_gets_an_accurate_note():
    lrs, y = curve("trained", 100, noise=0.01, seed=0)
    s = suggest(lrs, y)
    assert all_nan(s)
    note = s.notes["steep"]
    assert "never falls" in note and "trained already" in note
    rises, below = (float(v) for v in re.search(r"rises from lr (\S+) on.*starts to rise: (\S+)$", note).groups())
    low = float(np.min(y[10:]))
    # below the advised lr the loss is still at its low level; well above where it rises it is clearly higher
    assert np.all(y[10:][lrs[10:] <= below] < low + 0.05 * FALL)
    assert np.all(y[lrs >= rises * 10] > low + 0.1 * FALL) and below <= rises
    start = float(re.search(r"start_lr=(\S+)\)", note).group(1))
    assert start < lrs[0]
    for rule in RULES:
        with pytest.raises(SuggestionError, match="never falls"):
            rule(lrs, y)


def test_a_loss_that_barely_falls_before_rising_has_no_clear_descent():
    y = 2.3 - 0.001 * np.exp(-((X + 4) ** 2)) + np.where(X > -3, (X + 3) ** 2, 0)
    s = suggest(LRS, y)
    assert all_nan(s)
    fall, start = (float(v) for v in re.search(r"falls by at most (\S+) \(from (\S+)\)", s.notes["clr_bounds"]).groups())
    # the fall named is the curve's own fall before its lowest point, compared with its level, not its blow-up
    shown = y[warmup_points(X.size):]
    lowest = int(np.argmin(shown[X[warmup_points(X.size):] < -3]))
    actual = shown[: lowest + 1].max() - shown[lowest]
    assert actual <= fall <= 0.0011 and start == pytest.approx(2.3, rel=1e-3)  # "at most": true of the curve
    assert fall < 0.02 * start and np.ptp(y) > 10  # compared with its level, not with the rise after it
    assert "under 2% of its level" in s.notes["clr_bounds"]


def test_a_flat_loss_that_blows_up_is_no_descent_and_the_note_says_why():
    # a fresh model's validation loss over a short sweep: flat at 2.30, then a blow-up to 7e6
    lrs = np.logspace(-5, 1, 20)
    y = np.array([2.3044, 2.3025, 2.303, 2.3049, 2.3046, 2.3041, 2.3042, 2.305, 2.3049, 2.3047, 2.3045, 2.3033,
                  2.2947, 2.2972, 3.1513, 15.9495, 154.7484, 2107.2692, 340947.7618, 7344434.8702])
    s = suggest(lrs, y)
    assert all_nan(s)
    note = s.notes["valley"]
    assert "its running median never falls" in note  # true of this curve: a median of 5 stays at 2.30 or above
    median5 = np.median(np.lib.stride_tricks.sliding_window_view(y[2:16], 5), axis=1)
    assert np.all(np.diff(median5) >= -0.002)
    rises = float(re.search(r"rises from lr (\S+) on", note).group(1))
    assert np.all(y[lrs >= rises] > 2.31) and np.all(y[lrs < rises * 0.9] < 2.31)


def test_a_41_percent_fall_before_a_blow_up_is_a_clear_descent():
    # stop_dv=False: falls from 2.34 to 1.38, then blows up to 1e6 and NaN; the blow-up is not the reference
    y = 1.38 + 0.96 / (1 + np.exp((X + 2.5) / 0.2)) + np.where(X > -1, 10 ** ((X + 1) * 4) - 1, 0)
    y = np.where(y > 1e6, np.nan, y)
    s = suggest(LRS, y)
    assert "no clear descent" not in str(s) and "never falls" not in str(s)
    assert decades(s.valley, 10**-2.5) <= 0.05


def test_a_descent_in_a_single_step_gives_no_answer():
    y = np.where(X < -2.02, 2.3, 0.5) + np.where(X > 0, X, 0)  # the loss drops between two sweep points
    s = suggest(LRS, y)
    assert all_nan(s)
    a, b = (float(v) for v in re.search(r"between lr (\S+) and (\S+):", s.notes["valley"]).groups())
    j = int(np.argmax(y < 1.0))
    assert a == pytest.approx(LRS[j - 1], rel=1e-2) and b == pytest.approx(LRS[j], rel=1e-2)


@pytest.mark.parametrize("width, kind", [(0.06, "narrow"), (1.2, "wide")])
def test_div_out_of_range_comes_with_an_accurate_note(width, kind):
    x = np.linspace(-7, 1, 161)
    y = 2.3 - 1.8 / (1 + np.exp(-(x + 3) / width)) + np.where(x > -0.5, np.expm1((x + 0.5) * 3), 0)
    s = suggest(10**x, y)
    b = s.clr_bounds
    assert (b.div < MIN_DIV) if kind == "narrow" else (b.div > MAX_DIV)
    note = s.notes["clr_bounds"]
    assert f"div={b.div:.3g}" in note and not s.trusted("clr_bounds")
    span = float(re.search(r"(\d+\.\d+) decade", note).group(1))
    assert span == pytest.approx(math.log10(b.div), abs=0.01)
    assert f"max_lr={b.max_lr:.3g}" in note


def test_minimum_at_the_end_of_the_sweep_is_noted():
    y = 3 - (X + 5) / 2  # falls all the way: the lowest loss is at the last lr
    s = suggest(LRS, y)
    assert math.isfinite(s.minimum) and "still falling at the last lr (10)" in s.notes["minimum"]
    assert not s.trusted("minimum") and s.trusted("valley")


# --------------------------------------------------------------------------- confidence


def test_confidence_reports_span_noise_and_a_seeded_spread():
    lrs, y = curve("clean", 100, noise=0.05, seed=1)
    s = suggest(lrs, y, seed=7)
    c = s.confidence["valley"]
    assert c.span == pytest.approx(2 * 0.25 * math.log(9), abs=0.15)
    # uniform noise of +-5% of the fall has a standard deviation of 0.05 / sqrt(3) of it; smoothing keeps most
    assert 0.6 * 0.05 / math.sqrt(3) < c.noise < 1.2 * 0.05 / math.sqrt(3)
    assert all(0 < s.confidence[name].spread < MAX_SPREAD for name in s.confidence) and s.notes == {}
    assert suggest(lrs, y, seed=7).confidence == s.confidence
    assert suggest(lrs, y, seed=8).confidence != s.confidence
    # more noise, more spread
    noisier = suggest(*curve("clean", 100, noise=0.10, seed=1), seed=7)
    assert noisier.confidence["max_lr" if False else "clr_bounds"].spread > c.spread / 2
    assert noisier.confidence["clr_bounds"].noise > c.noise


def test_a_spread_over_half_a_decade_is_flagged_unstable():
    rng = np.random.default_rng(0)
    x = np.linspace(-5, 1, 60)
    # a shallow descent (0.5) over 3 decades under noise of +-0.12: its level crossings wander
    y = 2.3 - 0.5 / (1 + np.exp(-(x + 2) / 0.8)) + rng.uniform(-0.12, 0.12, x.size)
    s = suggest(10**x, y)
    unstable = [name for name, c in s.confidence.items() if c.unstable]
    assert unstable, s
    for name in unstable:
        assert "unstable" in s.notes[name] and not s.trusted(name)
        assert f"±{s.confidence[name].spread:.2f} decade" in s.notes[name] or "no value" in s.notes[name]
    stable = suggest(*curve("clean", 100, noise=0.02, seed=0))
    assert not any(c.unstable for c in stable.confidence.values()) and "unstable" not in str(stable)


# --------------------------------------------------------------------------- printing and bad input


def test_printed_forms_are_aligned_and_readable():
    s = suggest(LRS, dip(X))
    text = str(s)
    for name in ("minimum", "steep", "valley", "clr_bounds", "base_lr=", "max_lr=", "div=", "spread", "±"):
        assert name in text
    rows = text.splitlines()[1:6]
    assert len({row.index("±") if "±" in row else row.index("spread") for row in rows}) == 1  # one column
    meanings = ["meaning", "lr at the lowest", "steepest fall", "middle of the descent", "Smith's CLR"]
    assert len({row.index(m) for row, m in zip(rows, meanings)}) == 1  # the meaning column lines up too
    assert f"{s.steep:.3g}" in text and f"{s.clr_bounds.div:.3g}" in repr(s)
    assert f"first {warmup_points(X.size)} skipped as warm-up" in text
    assert repr(CLRBounds(1e-3, 1e-1)) == "CLRBounds(base_lr=0.001, max_lr=0.1, div=100)"
    flagged = suggest(LRS, 3 - (X + 5) / 2)
    assert "minimum" in flagged.notes and f"{flagged.minimum:.3g} !" in str(flagged) and "note minimum:" in str(flagged)


def test_validation_suggestions_print_beside_the_training_ones():
    train = suggest(*curve("clean", 100, noise=0.02))
    val = suggest(*curve("plateau", 100, noise=0.05))
    both = dataclasses.replace(train, val=val)
    text = str(both)
    assert "training loss" in text and "validation loss" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("valley"))
    assert row.index(f"{train.valley:.3g}") < row.index(f"{val.valley:.3g}")  # same row, side by side
    none = suggest(*curve("trained", 100))
    text = str(dataclasses.replace(train, val=none))
    assert "validation note (every rule): the loss never falls" in text


def test_bad_input_is_an_error_naming_it():
    with pytest.raises(ValueError, match="lrs and losses must have the same length; got 121 lrs and 120"):
        suggest(LRS, dip(X)[:-1])
    with pytest.raises(ValueError, match=r"strictly increasing.*lrs\[0\]"):
        suggest(LRS[::-1], dip(X))
    bad = LRS.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="lrs must be finite and > 0"):
        suggest(bad, dip(X))
    with pytest.raises(ValueError, match="lrs must be finite and > 0"):
        suggest(np.linspace(0, 1, 20), np.ones(20))
    with pytest.raises(ValueError, match="n_skip must be an int >= 0; got -1"):
        suggest(LRS, dip(X), n_skip=-1)
    with pytest.raises(TypeError, match="n_skip must be an int"):
        suggest(LRS, dip(X), n_skip=2.5)
    with pytest.raises(ValueError, match="n_boot must be an int >= 0"):
        suggest(LRS, dip(X), n_boot=-2)
    with pytest.raises(ValueError, match="name must be one of"):
        suggest(LRS, dip(X)).trusted("base_lr")


def test_random_curves_never_crash_and_bounds_are_valid_for_use_clr_beta():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 60))
        y = np.cumsum(rng.normal(0, 1, n)) * rng.choice([1e-9, 1.0, 1e6])
        y[rng.random(n) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
        s = suggest(np.logspace(-5, 1, n), y, n_boot=5)
        assert isinstance(s, Suggestions)
        b = s.clr_bounds
        if math.isfinite(b.div):
            assert b.div > 1 and b.base_lr < b.max_lr
            fit_schedule((b.max_lr,), 10, 1, cycle_len=3, use_clr_beta=(b.div, 10, 0.95, 0.85))
        if math.isfinite(b.div) and not MIN_DIV <= b.div <= MAX_DIV:
            assert "clr_bounds" in s.notes
        for name in ("minimum", "steep", "valley"):
            if not math.isfinite(getattr(s, name)):
                assert name in s.notes


# --------------------------------------------------------------------------- the divergence stop


class ScriptedLoss(nn.Module):
    """A real loss whose value is a script (plus 0 x the prediction, so backward runs): a curve on demand."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values, self.calls = values, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return pred.sum() * 0 + value


def sweep_of(values: list[float]) -> RangeTestRecorder:
    """``lr_find`` over one 40-batch epoch whose training losses are ``values``."""
    torch.manual_seed(0)
    x, y = torch.randn(320, 3), torch.randint(0, 2, (320,))
    learn = Learner(nn.Linear(3, 2), ModelData.from_tensors(x, y, bs=8), crit=ScriptedLoss(values),
                    progress=False, table=False)
    learn.lr_find(start_lr=1e-4, end_lr=1e-3)
    return learn.sched


def contract_stop(raw: list[float]) -> int | None:
    """SCHEDULES.md: index of the step that stops the sweep (NaN/inf, or smoothed > 4 x best after step 10)."""
    avg, best = 0.0, math.inf
    for k, value in enumerate(raw, start=1):
        avg = 0.98 * avg + 0.02 * value
        smooth = avg / (1 - 0.98**k)
        if not math.isfinite(value) or not math.isfinite(smooth) or smooth > 4 * best:
            return k - 1
        if k > 10:
            best = min(best, smooth)
    return None


def test_a_noisy_start_cannot_end_the_sweep():
    # step 1 is low, step 2 high: 4 x the best of step 1 is passed at step 2, but only steps after the 10th count
    values = [0.1] + [2.0] * 39
    rec = sweep_of(values)
    assert not rec.diverged and len(rec.raw_losses) == 40 and contract_stop(values) is None
    assert rec.losses[1] > 4 * rec.losses[0]  # the old rule (best from step 1) would have stopped here


@pytest.mark.parametrize("jump_at", [11, 12, 25])
def test_divergence_stops_at_the_step_the_contract_names(jump_at):
    values = [1.0] * jump_at + [500.0] * (40 - jump_at)
    expected = contract_stop(values)
    rec = sweep_of(values)
    assert expected is not None and expected >= 11  # never before step 12
    assert rec.diverged and len(rec.raw_losses) == expected + 1


def test_nan_or_inf_stops_the_sweep_at_once():
    for bad in (math.nan, math.inf):
        rec = sweep_of([1.0, 1.0, bad] + [1.0] * 37)
        assert rec.diverged and len(rec.raw_losses) == 3


def test_one_cycle_uses_only_trusted_suggestions():
    s = suggest(*curve("clean", 100, noise=0.02))
    assert s.one_cycle() == (s.clr_bounds.max_lr, s.clr_bounds.div, "clr_bounds")
    x = np.linspace(-7, 1, 161)
    wide = suggest(10**x, 2.3 - 1.8 / (1 + np.exp(-(x + 3) / 1.2)) + np.where(x > -0.5, np.expm1((x + 0.5) * 3), 0))
    assert wide.clr_bounds.div > MAX_DIV
    max_lr, div, how = wide.one_cycle(div=20)
    assert (max_lr, div) == (wide.clr_bounds.max_lr, 20.0) and "out of range" in how
    assert suggest(*curve("trained", 100)).one_cycle() is None
    with pytest.raises(ValueError, match="div must be a finite number > 1; got 1"):
        s.one_cycle(div=1)


def test_lr_find2_offers_the_rules_on_the_validation_loss_too():
    from clrfit.lr_finder import smooth_curve

    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, 0] > 0).long()
    learn = Learner(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)),
                    ModelData.from_tensors(x[:192], y[:192], x[192:], y[192:], bs=16), progress=False, table=False)
    s = learn.lr_find2(num_it=60)
    rec = learn.sched
    assert s.val is not None and s.val.as_dict() == pytest.approx(
        suggest(rec.lrs, smooth_curve(rec.val_losses)).as_dict(), nan_ok=True)
    assert s.as_dict() == pytest.approx(suggest(rec.lrs, rec.losses).as_dict(), nan_ok=True)
    assert "validation loss" in str(s)
    learn.lr_find()
    assert learn.sched.suggestions.val is None  # lr_find has no per-step validation


def test_combined_sweeps_report_the_median_and_the_spread_over_sweeps():
    sweeps = [suggest(*curve("clean", 100, noise=0.05, seed=seed), n_boot=0) for seed in range(5)]
    both = combine_sweeps(sweeps)
    for name in ("minimum", "steep", "valley"):
        logs = np.log10([getattr(s, name) for s in sweeps])
        assert math.log10(getattr(both, name)) == pytest.approx(np.median(logs))
        assert both.confidence[name].spread == pytest.approx(np.std(logs, ddof=1))
    maxes = np.log10([s.clr_bounds.max_lr for s in sweeps])
    assert math.log10(both.clr_bounds.max_lr) == pytest.approx(np.median(maxes))
    assert both.n_sweeps == 5 and "first sweep of 5" in str(both) and both.notes == {}
    assert combine_sweeps(sweeps[:1]) is sweeps[0]
    # sweeps that disagree by a decade are unstable; a rule most sweeps give no value for is nan, with a note
    far = [suggest(*curve("clean", 100)), suggest(10 * curve("clean", 100)[0], curve("clean", 100)[1])]
    mixed = combine_sweeps(far + [suggest(*curve("trained", 100))])
    assert "unstable" in mixed.notes["valley"] and mixed.confidence["valley"].spread > MAX_SPREAD
    none = combine_sweeps([suggest(*curve("trained", 100))] * 2 + far[:1])
    assert math.isnan(none.valley) and "in 2 of 3 sweeps: the loss never falls" in none.notes["valley"]
    with pytest.raises(TypeError, match="sweeps must be a non-empty sequence of Suggestions"):
        combine_sweeps([])


# --------------------------------------------------------------------------- the demo's choice


def test_demo_never_trains_with_a_flagged_suggestion(capsys):
    from clrfit.cli import _demo_bounds

    good = suggest(*curve("clean", 100, noise=0.02))
    assert _demo_bounds(good) == (good.clr_bounds.max_lr, good.clr_bounds.div)
    assert capsys.readouterr().out == ""
    x = np.linspace(-7, 1, 161)
    wide = suggest(10**x, 2.3 - 1.8 / (1 + np.exp(-(x + 3) / 1.2)) + np.where(x > -0.5, np.expm1((x + 0.5) * 3), 0))
    max_lr, div = _demo_bounds(wide)
    assert (max_lr, div) == (wide.clr_bounds.max_lr, 10.0)
    out = capsys.readouterr().out
    assert "flagged" in out and "div=10" in out
    assert _demo_bounds(suggest(*curve("trained", 100))) == (0.5, 10.0)
    assert "no trustworthy suggestion" in capsys.readouterr().out
