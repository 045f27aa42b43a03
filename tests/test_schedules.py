"""Pure schedules: formulas, torch equivalence, pickling and previews, without a model."""
from __future__ import annotations

import inspect
import io
import math
import pickle

import pytest
import torch
from torch import nn

import clrfit.schedules as schedules_module
from clrfit.schedules import (
    SGDR,
    CircularLR,
    ConstantLR,
    LRSweep,
    OneCycle,
    ScheduleValues,
    cyclic_schedule,
    fit_schedule,
    one_cycle_schedule,
    preview,
)

REL = 1e-12


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


# ---------------------------------------------------------------------------- fastai 0.7 schedules


def test_constant_lr():
    schedule, n_epochs = fit_schedule((0.1, 0.01), nb=5, n_cycle=3)
    assert isinstance(schedule, ConstantLR) and n_epochs == 3 and schedule.total == 15
    assert all(schedule(t) == ([0.1, 0.01], None) for t in range(15))
    assert [schedule.position(t) for t in (0, 4, 5, 14)] == [(0, 0), (0, 4), (1, 0), (2, 4)]
    assert schedule.cycle_iterations(7) == 5


@pytest.mark.parametrize("cycle_len, cycle_mult, n_cycle, epochs", [(1, 1, 4, 4), (2, 2, 3, 14), (1, 3, 3, 13), (3, 2, 1, 3)])
def test_sgdr_epochs_and_formula(cycle_len, cycle_mult, n_cycle, epochs):
    nb, lr = 10, 0.2
    schedule, n_epochs = fit_schedule((lr,), nb, n_cycle, cycle_len, cycle_mult)
    assert isinstance(schedule, SGDR)
    assert n_epochs == epochs == math.ceil(cycle_len * (1 - cycle_mult**n_cycle) / (1 - cycle_mult)) if cycle_mult > 1 else True
    assert n_epochs == epochs and schedule.total == epochs * nb
    n0 = nb * cycle_len
    i = 0
    for k in range(n_cycle):
        n_k = nb * cycle_len * cycle_mult**k
        for t in range(n_k):
            lrs, moms = schedule(i)
            expected = lr / 100 if i < n0 / 20 else lr / 2 * (1 + math.cos(math.pi * t / n_k))
            assert moms is None and close(lrs[0], expected), (i, lrs, expected)
            assert schedule.position(i) == (k, t) and schedule.cycle_iterations(i) == n_k
            i += 1
    assert i == schedule.total


def test_sgdr_warmup_counts_towards_t():
    schedule = SGDR((1.0,), nb=40, cycle_len=1)  # warm-up: i < 2
    assert schedule(0)[0] == schedule(1)[0] == [0.01]
    assert close(schedule(2)[0][0], 0.5 * (1 + math.cos(math.pi * 2 / 40)))


@pytest.mark.parametrize("n, div, cut_div", [(20, 32, 5), (21, 10, 3.5), (7, 2.5, 2), (100, 20, 8)])
def test_circular_lr_formula(n, div, cut_div):
    schedule = CircularLR((0.3, 0.03), n, div, cut_div, (0.95, 0.85), n_cycle=2)
    c = math.floor(n / cut_div)
    for i in range(2 * n):
        t = i % n
        p = t / c if t <= c else 1 - (t - c) / (n - c)
        lrs, moms = schedule(i)
        assert close(lrs[0], 0.3 * (1 + p * (div - 1)) / div) and close(lrs[1], 0.03 * (1 + p * (div - 1)) / div)
        assert close(moms[0], 0.95 - p * (0.95 - 0.85)) and moms[0] == moms[1]
    assert max(schedule(i)[0][0] for i in range(n)) == schedule(c)[0][0]


@pytest.mark.parametrize("n, div, pct", [(100, 10, 13.68), (40, 10, 10), (9, 25, 40), (1000, 10, 1)])
def test_one_cycle_formula(n, div, pct):
    schedule = OneCycle((0.8,), n, div, pct, (0.95, 0.85), n_cycle=2)
    c = int(n * (1 - pct / 100) / 2)
    assert schedule.total == 2 * n
    for i in range(2 * n):
        t = i % n
        lrs, moms = schedule(i)
        if t <= c:
            lr, mom = 0.8 * (1 + (t / c) * (div - 1)) / div, 0.95 - (t / c) * (0.95 - 0.85)
        elif t <= 2 * c:
            q = 1 - (t - c) / c
            lr, mom = 0.8 * (1 + q * (div - 1)) / div, 0.95 - q * (0.95 - 0.85)
        else:
            lr, mom = 0.8 * (1 - 0.99 * (t - 2 * c) / (n - 2 * c)) / div, 0.95
        assert close(lrs[0], lr) and close(moms[0], mom), (i, lrs, moms, lr, mom)
    # lr/div -> lr -> lr/div -> about lr/(100 div)
    assert close(schedule(c)[0][0], 0.8) and close(schedule(2 * c)[0][0], 0.8 / div)


def test_schedules_without_momentum_values_return_none():
    assert CircularLR((0.1,), 20, 10, 4)(3)[1] is None
    assert OneCycle((0.1,), 20, 10, 10)(3)[1] is None
    assert not OneCycle((0.1,), 20, 10, 10).has_momentum


# ---------------------------------------------------------------------------- torch-compatible schedules vs torch


def torch_run(scheduler_fn, n_groups: int, steps: int, opt_cls=torch.optim.SGD):
    params = [nn.Parameter(torch.zeros(1)) for _ in range(n_groups)]
    kwargs = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls([{"params": [p]} for p in params], lr=0.5, **kwargs)
    scheduler = scheduler_fn(opt)
    out = []
    for t in range(steps):
        groups = opt.param_groups
        out.append(([g["lr"] for g in groups], [g["betas"][0] if "betas" in g else g["momentum"] for g in groups]))
        if t < steps - 1:
            opt.step()
            scheduler.step()
    return out


def assert_matches_torch(schedule, expected, cycle_momentum: bool = True) -> None:
    for t, (lrs, moms) in enumerate(expected):
        got_lrs, got_moms = schedule(t)
        assert all(close(a, b) for a, b in zip(got_lrs, lrs)) and len(got_lrs) == len(lrs), (t, got_lrs, lrs)
        if cycle_momentum:
            assert all(close(a, b) for a, b in zip(got_moms, moms)), (t, got_moms, moms)
        else:
            assert got_moms is None


# torch's own CyclicLR test cases (test/optim/test_lrscheduler.py), checked against torch itself
TORCH_CYCLIC = [
    (dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1, max_momentum=5, mode="triangular"), 1, 11),
    (dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False, mode="triangular"), 1, 11),
    (dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1, max_momentum=5, mode="triangular2"), 1, 22),
    (dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1, max_momentum=5, mode="exp_range", gamma=0.9), 1, 13),
    (dict(base_lr=[1, 2], max_lr=[5, 6], step_size_up=4, base_momentum=[1, 2], max_momentum=[5, 6]), 2, 11),
    (dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=4, base_momentum=[1, 3], max_momentum=[5, 7], mode="triangular2"), 2, 22),
    (dict(base_lr=[1, 5], max_lr=[5, 12], step_size_up=4, base_momentum=[1, 5], max_momentum=[5, 12], mode="exp_range", gamma=0.9), 2, 13),
    (dict(base_lr=1, max_lr=5, step_size_up=4, step_size_down=6, base_momentum=1, max_momentum=5), 1, 11),
    (dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=2, step_size_down=6, base_momentum=[1, 3], max_momentum=[5, 7], mode="triangular2"), 2, 24),
    (dict(base_lr=1, max_lr=5, step_size_up=2, step_size_down=6, base_momentum=1, max_momentum=5, mode="exp_range", gamma=0.9), 1, 13),
]


@pytest.mark.parametrize("case", range(len(TORCH_CYCLIC)))
def test_cyclic_lr_equals_torch_on_torch_test_cases(case):
    kwargs, n_groups, steps = TORCH_CYCLIC[case]
    expected = torch_run(lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, **kwargs), n_groups, steps)
    schedule = cyclic_schedule(n_groups, **kwargs)
    assert_matches_torch(schedule, expected, kwargs.get("cycle_momentum", True))


def test_cyclic_lr_long_run_equals_torch():
    kwargs = dict(base_lr=[1e-4, 1e-3], max_lr=[6e-4, 6e-3], step_size_up=37, step_size_down=23.5,
                  mode="exp_range", gamma=0.999, base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95])
    expected = torch_run(lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, **kwargs), 2, 500, torch.optim.Adam)
    assert_matches_torch(cyclic_schedule(2, **kwargs), expected)


TORCH_ONE_CYCLE = [
    dict(max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22, total_steps=10, anneal_strategy="linear"),
    dict(max_lr=25, div_factor=25, base_momentum=1, max_momentum=22, total_steps=10, anneal_strategy="linear",
         pct_start=0.4, final_div_factor=4, three_phase=True),
    dict(max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22, total_steps=10),
    dict(max_lr=[0.1, 1.0], total_steps=997, pct_start=0.27, three_phase=True, div_factor=13.0),
    dict(max_lr=0.4, total_steps=3),
    dict(max_lr=0.4, total_steps=1),
]


@pytest.mark.parametrize("case", range(len(TORCH_ONE_CYCLE)))
def test_one_cycle_lr_equals_torch(case):
    kwargs = dict(TORCH_ONE_CYCLE[case])
    n_groups = len(kwargs["max_lr"]) if isinstance(kwargs["max_lr"], list) else 1
    steps = kwargs["total_steps"]
    expected = torch_run(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, **kwargs), n_groups, steps)
    total = kwargs.pop("total_steps")
    schedule = one_cycle_schedule(n_groups, total=total, **kwargs)
    assert_matches_torch(schedule, expected)
    with pytest.raises(ValueError, match="t must be in"):
        schedule(total)


def test_one_cycle_zero_length_phase_is_an_error_like_torch():
    # pct_start * total_steps = 1: the first phase ends at step 0 and torch divides by zero there
    with pytest.raises(ZeroDivisionError):
        torch_run(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=5, pct_start=0.2), 1, 2)
    with pytest.raises(ValueError, match=r"pct_start=0.2 with total_steps=5 gives a phase of zero length"):
        one_cycle_schedule(1, 0.1, 5, pct_start=0.2)


# ---------------------------------------------------------------------------- values, pickling


def module_scale(x: float) -> float:
    return 0.9**x


ALL_SCHEDULES = [
    ConstantLR((0.1, 0.2), total=10, cycle_iters=5),
    SGDR((0.1,), nb=5, cycle_len=2, cycle_mult=2, n_cycle=3),
    CircularLR((0.1,), 20, 10, 4, (0.95, 0.85), 2),
    OneCycle((0.1, 1.0), 40, 10, 13.68, (0.95, 0.85), 2),
    cyclic_schedule(1, 0.01, 0.1, step_size_up=4, mode="triangular2"),
    cyclic_schedule(2, 0.01, [0.1, 0.2], step_size_up=4, mode="exp_range", gamma=0.99),
    cyclic_schedule(1, 0.01, 0.1, step_size_up=4, scale_fn=module_scale, scale_mode="iterations"),
    one_cycle_schedule(2, [0.1, 0.3], 50, three_phase=True, anneal_strategy="linear"),
    LRSweep((1e-5, 1e-4), 10.0, 100),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedules_pickle_round_trip(schedule):
    copy = pickle.loads(pickle.dumps(schedule))
    assert type(copy) is type(schedule)
    n = schedule.total or 30
    assert [copy(t) for t in range(n)] == [schedule(t) for t in range(n)]


def test_lambda_scale_fn_is_the_users_choice():
    schedule = cyclic_schedule(1, 0.01, 0.1, step_size_up=4, scale_fn=lambda x: 1.0)
    assert schedule(4)[0] == [0.1]
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(schedule)


def test_values_and_bounds():
    schedule = OneCycle((0.1, 1.0), 40, 10, 10, (0.95, 0.85))
    values = schedule.values()
    assert isinstance(values, ScheduleValues)
    assert values.iterations == list(range(40))
    assert values.group_lrs == [schedule(t)[0] for t in range(40)]
    assert values.lrs == [schedule(t)[0][1] for t in range(40)]
    assert values.momentums == [schedule(t)[1][1] for t in range(40)]
    assert schedule.values(7).lrs == values.lrs[:7]
    with pytest.raises(ValueError, match="n must be <= 40"):
        schedule.values(41)
    with pytest.raises(ValueError, match="unbounded"):
        cyclic_schedule(1, 0.01, 0.1).values()
    assert len(cyclic_schedule(1, 0.01, 0.1).values(5).lrs) == 5


def test_lr_sweep():
    sweep = LRSweep((1e-4, 1e-3), 10.0, 11)
    for i in range(11):
        lrs, moms = sweep(i)
        assert moms is None
        assert close(lrs[1], 1e-3 * (10.0 / 1e-3) ** (i / 10))
        assert close(lrs[0] / lrs[1], 0.1)
    linear = LRSweep((1e-3,), 1.0, 5, linear=True)
    assert all(close(linear(i)[0][0], 1e-3 + (1.0 - 1e-3) * i / 4) for i in range(5))
    assert LRSweep((1e-3,), 1.0, 1)(0)[0] == [1e-3]


# ---------------------------------------------------------------------------- preview


def test_preview_signature_is_what_the_cli_calls():
    sig = inspect.signature(preview)
    assert list(sig.parameters) == ["iterations", "lr", "use_clr", "use_clr_beta", "cycle_mult", "n_cycle",
                                    "cyclic", "one_cycle"]
    kinds = {name: p.kind for name, p in sig.parameters.items()}
    assert kinds["iterations"] == kinds["lr"] == inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(kinds[k] == inspect.Parameter.KEYWORD_ONLY for k in list(sig.parameters)[2:])
    assert sig.parameters["lr"].default == 1.0 and sig.parameters["cycle_mult"].default == 1
    assert sig.parameters["n_cycle"].default == 1
    assert all(sig.parameters[k].default is None for k in ("use_clr", "use_clr_beta", "cyclic", "one_cycle"))


def test_preview_use_clr_beta_is_one_cycle_of_iterations():
    values = preview(use_clr_beta=(10, 13.68, 0.95, 0.85), iterations=1000)
    expected = OneCycle((1.0,), 1000, 10, 13.68, (0.95, 0.85)).values()
    assert values.lrs == expected.lrs and values.momentums == expected.momentums
    fig = values.plot()
    assert len(fig.axes) == 2
    assert list(fig.axes[0].lines[0].get_ydata()) == values.lrs
    assert list(fig.axes[1].lines[0].get_ydata()) == values.momentums
    assert list(fig.axes[1].lines[0].get_xdata()) == list(range(1000))


def test_preview_defaults_to_sgdr_and_repeats_cycles():
    values = preview(100, 0.5, cycle_mult=2, n_cycle=3)
    assert values.lrs == SGDR((0.5,), nb=100, cycle_len=1, cycle_mult=2, n_cycle=3).values().lrs
    assert len(values.lrs) == 700 and values.momentums is None
    assert len(values.plot().axes) == 1
    clr = preview(50, 0.1, use_clr=(10, 4), n_cycle=3)
    assert clr.lrs == CircularLR((0.1,), 50, 10, 4, n_cycle=3).values().lrs


def test_preview_cyclic_and_one_cycle():
    values = preview(30, cyclic=dict(epochs=2, base_lr=[0.01, 0.1], max_lr=[0.1, 1.0], step_size_up=7, mode="triangular2"))
    schedule = cyclic_schedule(2, [0.01, 0.1], [0.1, 1.0], step_size_up=7, mode="triangular2")
    assert values.group_lrs == [schedule(t)[0] for t in range(60)]
    assert values.momentums == [schedule(t)[1][1] for t in range(60)]
    values = preview(25, one_cycle=dict(max_lr=0.5, epochs=4, three_phase=True))
    assert values.lrs == one_cycle_schedule(1, 0.5, 100, three_phase=True).values().lrs


@pytest.mark.parametrize("kwargs, exc, fragment", [
    (dict(iterations=0), ValueError, "iterations"),
    (dict(iterations=10, lr=0), ValueError, "lr must be > 0"),
    (dict(iterations=10, use_clr=(10, 4, 0.9)), ValueError, "use_clr must have 2 or 4 values"),
    (dict(iterations=10, use_clr_beta=(10, 99)), ValueError, "C must be >= 1"),
    (dict(iterations=10, cyclic=dict(base_lr=0.1, max_lr=1.0), one_cycle=dict(max_lr=1.0)), ValueError, "at most one"),
    (dict(iterations=10, cyclic=dict(base_lr=0.1, max_lr=1.0), use_clr=(10, 4)), ValueError, "use_clr"),
    (dict(iterations=10, lr=0.3, one_cycle=dict(max_lr=1.0)), ValueError, "lr=0.3"),
    (dict(iterations=10, cyclic=dict(base_lr=0.1, max_lr=1.0, wds=1e-4)), TypeError, "unknown keys ['wds']"),
    (dict(iterations=10, cyclic=dict(max_lr=1.0)), ValueError, "'base_lr'"),
    (dict(iterations=10, one_cycle=dict(pct_start=0.3)), ValueError, "'max_lr'"),
    (dict(iterations=10, one_cycle=dict(max_lr=1.0, pct_start=2.0)), ValueError, "pct_start must be in [0, 1]"),
    (dict(iterations=10, cyclic=[0.1, 1.0]), TypeError, "cyclic must be a dict"),
])
def test_preview_bad_input(kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        preview(**kwargs)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------- builder errors


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(use_clr=(10, 4)), "use_clr needs cycle_len"),
    (dict(cycle_mult=2), "cycle_mult=2 needs cycle_len"),
    (dict(cycle_len=0), "cycle_len must be an integer >= 1"),
    (dict(cycle_len=1, n_cycle=0), "n_cycle must be an integer >= 1"),
    (dict(cycle_len=1, use_clr=(10, 4, 0.9, 1.5)), "use_clr min_mom must be in [0, 1]; got 1.5"),
    (dict(cycle_len=1, use_clr_beta=(10, 10, -0.9, 0.5)), "use_clr_beta max_mom must be in [0, 1]; got -0.9"),
    (dict(cycle_len=1, use_clr=(10, 11)), "use_clr: cut_div=11.0"),
])
def test_fit_schedule_errors(kwargs, fragment):
    args = dict(lrs=(0.1,), nb=10, n_cycle=kwargs.pop("n_cycle", 1))
    with pytest.raises(ValueError) as info:
        fit_schedule(**args, **kwargs)
    assert fragment in str(info.value)


def test_torch_style_momentum_bounds_follow_torch():
    # torch's own tests cycle momentum between 1 and 5; only negative values are refused
    assert cyclic_schedule(1, 1, 5, step_size_up=4, base_momentum=1, max_momentum=5)(0) == ([1.0], [5.0])
    with pytest.raises(ValueError, match="base_momentum must be >= 0; got -0.1"):
        cyclic_schedule(1, 0.1, 0.5, base_momentum=-0.1)
    with pytest.raises(TypeError, match="cycle_momentum must be True or False"):
        one_cycle_schedule(1, 0.1, 10, cycle_momentum="yes")


# ---------------------------------------------------------------------------- fastai 0.7, checked against its own rules


def fastai_circular_lrs(nb: int, div: float, cut_div: float, iterations: int) -> list[float]:
    """fastai 0.7 CircularLR.calc_lr as it runs: a cycle counter advanced after each value, peak nb // cut_div."""
    out, cycle_iter = [], 0
    for _ in range(iterations):
        cut = nb // cut_div
        pct = 1 - (cycle_iter - cut) / (nb - cut) if cycle_iter > cut else cycle_iter / cut
        out.append(1.0 * (1 + pct * (div - 1)) / div)
        cycle_iter += 1
        if cycle_iter == nb:
            cycle_iter = 0
    return out


def fastai_cos_anneal_lrs(nb: int, cycle_mult: int, iterations: int) -> list[float]:
    """fastai 0.7 CosAnneal.calc_lr as it runs: the warm-up test uses the current cycle's length."""
    out, cycle_iter = [], 0
    for iteration in range(iterations):
        if iteration < nb / 20:
            cycle_iter += 1
            out.append(1.0 / 100)
            continue
        value = 1.0 / 2 * (math.cos(math.pi * cycle_iter / nb) + 1)
        cycle_iter += 1
        if cycle_iter == nb:
            cycle_iter, nb = 0, nb * cycle_mult
        out.append(value)
    return out


@pytest.mark.parametrize("nb, use_clr", [(13, (10, 2.6)), (21, (10, 3.5)), (100, (32, 5)), (47, (7.5, 2.35)), (10, (4, 1.1))])
def test_circular_lr_peak_is_fastais_floor_division(nb, use_clr):
    schedule, _ = fit_schedule((1.0,), nb, 2, 1, use_clr=use_clr)
    assert schedule.peak == nb // use_clr[1]
    lrs = schedule.values().lrs
    expected = fastai_circular_lrs(nb, *use_clr, 2 * nb)
    assert all(close(a, b) for a, b in zip(lrs, expected)) and len(lrs) == len(expected)
    if nb == 13:  # the README's example: fastai peaks at t = 13 // 2.6 = 4, not at floor(13 / 2.6) = 5
        assert 13 / 2.6 == 5.0 and lrs.index(max(lrs)) == 4


@pytest.mark.parametrize("nb, cycle_mult, n_cycle", [(10, 30, 2), (40, 25, 3), (20, 2, 3), (7, 21, 2)])
def test_sgdr_warm_up_follows_the_current_cycle_length(nb, cycle_mult, n_cycle):
    schedule, _ = fit_schedule((1.0,), nb, n_cycle, 1, cycle_mult)
    lrs = schedule.values().lrs
    expected = fastai_cos_anneal_lrs(nb, cycle_mult, schedule.total)
    assert all(close(a, b) for a, b in zip(lrs, expected)) and len(lrs) == len(expected)
    if (nb, cycle_mult) == (10, 30):
        # cycle 1 (300 steps) starts at i = 10; i < 300 / 20 = 15 is still warm-up there
        assert lrs[10:15] == [0.01] * 5 and lrs[15] == 0.5 * (1 + math.cos(math.pi * 5 / 300))


# ---------------------------------------------------------------------------- phase tables


def test_phase_evaluator_anneals():
    from clrfit.schedules import Phase, anneal, evaluate

    assert anneal("linear", 2.0, 4.0, 0.25) == 2.5 and anneal("constant", 2.0, 4.0, 0.7) == 2.0
    assert anneal("exp", 1e-4, 1.0, 0.5) == 1e-4 * (1.0 / 1e-4) ** 0.5
    assert close(anneal("cos", 1.0, 0.0, 0.5), 0.5) and anneal("cos", 1.0, 0.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="anneal must be one of 'constant', 'linear', 'cos', 'exp'; got 'step'"):
        anneal("step", 1.0, 0.0, 0.5)
    table = [Phase("up", 0, 4, 4, "linear", (0.0, 1.0)), Phase("down", 4, 10, math.inf, "linear", (0.0, 1.0), reverse=True)]
    assert [evaluate(table, t)[1] for t in (0, 2, 4, 7, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert evaluate(table, 4)[0].name == "up" and evaluate(table, 5)[0].name == "down"
    # fastai's angle pi * done / length, torch's pi * (done / length): both kept, they round differently
    fastai = Phase("c", 0, 3, 3, "cos", (1.0, 0.0), fastai_angle=True)
    assert evaluate([fastai], 1)[1] == 0.5 * (math.cos(math.pi * 1 / 3) + 1)


def test_print_shows_the_phase_table():
    schedule, _ = fit_schedule((0.8,), 100, 1, 10, use_clr_beta=(10, 13.68, 0.95, 0.85))
    lines = str(schedule).splitlines()
    assert lines[0].startswith("OneCycle: 1 cycle(s) of 1000 steps")
    assert lines[1].split() == ["phase", "steps", "anneal", "lr", "momentum"]
    assert lines[2].split() == ["up", "0-431", "linear", "0.08", "->", "0.8", "0.95", "->", "0.85"]
    assert lines[3].split() == ["down", "432-862", "linear", "0.8", "->", "0.08", "0.85", "->", "0.95"]
    assert lines[4].split() == ["annihilation", "863-999", "linear", "0.08", "->", "0.0008", "0.95"]
    sgdr = str(SGDR((0.4,), nb=8, cycle_len=3, cycle_mult=2, n_cycle=2)).splitlines()
    assert [line.split()[:3] for line in sgdr[2:]] == [["warm-up", "0", "0-1"], ["cycle", "0", "2-23"], ["cycle", "1", "24-71"]]
    assert sgdr[2].split()[3:] == ["constant", "0.004", "-"]
    one = str(one_cycle_schedule(1, 0.5, 100, three_phase=True)).splitlines()
    assert [line.split()[:3] for line in one[2:]] == [["up", "0-29", "cos"], ["down", "30-58", "cos"],
                                                      ["annihilation", "59-99", "cos"]]
    cyclic = str(cyclic_schedule(1, 0.001, 0.006, step_size_up=14, mode="triangular2")).splitlines()
    assert cyclic[2].split()[:2] == ["up", "0-14"] and cyclic[3].split()[:2] == ["down", "15-27"]
    assert cyclic[-1].endswith("triangular2 (cycle)")
    assert str(LRSweep((1e-5,), 10.0, 100)).splitlines()[2].split() == ["sweep", "0-99", "exp", "1e-05", "->", "10", "-"]
    assert repr(schedule).startswith("OneCycle(lrs=(0.8,), cycle_iters=1000")  # still the dataclass repr


# ---------------------------------------------------------------------------- argument specs


def test_specs_are_torchs_parameter_lists():
    from clrfit.schedules import CYCLIC, FIT, ONE_CYCLE

    torch_cyclic = [p for p in inspect.signature(torch.optim.lr_scheduler.CyclicLR).parameters.values()
                    if p.name not in ("optimizer", "last_epoch")]
    assert [(p.name, p.default) for p in torch_cyclic] == [(p.name, p.default) for p in CYCLIC.parameters]
    torch_one = [p for p in inspect.signature(torch.optim.lr_scheduler.OneCycleLR).parameters.values()
                 if p.name not in ("optimizer", "last_epoch", "total_steps", "epochs", "steps_per_epoch")]
    assert [(p.name, p.default) for p in torch_one] == [(p.name, p.default) for p in ONE_CYCLE.parameters]
    assert FIT.names == ("lrs", "n_cycle", "cycle_len", "cycle_mult", "use_clr", "use_clr_beta")
    assert CYCLIC.defaults()["step_size_up"] == 2000 and "base_lr" not in CYCLIC.defaults()
    assert CYCLIC.bind(0.01, 0.1, mode="triangular2")["step_size_up"] == 2000
    assert "amplitude halves" in CYCLIC.doc("mode")
    with pytest.raises(TypeError, match="fit_cyclic: unknown argument.*'wds'"):
        CYCLIC.bind(0.01, 0.1, wds=1e-4)
    ours, rest = ONE_CYCLE.split(dict(max_lr=0.1, pct_start=0.2, accumulate=2))
    assert ours == dict(max_lr=0.1, pct_start=0.2) and rest == dict(accumulate=2)
    sig = inspect.signature(cyclic_schedule)
    assert list(sig.parameters) == ["n_groups", *CYCLIC.names, "total"]
    assert list(inspect.signature(one_cycle_schedule).parameters)[:3] == ["n_groups", "max_lr", "total"]
    built = cyclic_schedule(2, 0.01, [0.1, 0.2], step_size_up=4)
    assert CYCLIC.arguments(built)["max_lr"] == (0.1, 0.2) and CYCLIC.arguments(built)["base_momentum"] == (0.8, 0.8)


def _scale_v1(x: float) -> float:
    return 0.5**x


def test_arguments_tell_schedules_apart():
    from clrfit.schedules import arguments

    a = cyclic_schedule(1, 0.01, 0.1, step_size_up=4, scale_fn=module_scale)
    assert arguments(a) == arguments(cyclic_schedule(1, 0.01, 0.1, step_size_up=4, scale_fn=module_scale))
    assert arguments(a) != arguments(cyclic_schedule(1, 0.01, 0.1, step_size_up=4, scale_fn=_scale_v1))
    assert arguments(a)["scale_fn"].startswith("tests.test_schedules.module_scale#") or \
        arguments(a)["scale_fn"].startswith("test_schedules.module_scale#")

    def edited(x: float) -> float:  # same name as _scale_v1 once renamed, other code
        return 0.25**x

    edited.__qualname__ = _scale_v1.__qualname__
    edited.__module__ = _scale_v1.__module__
    assert arguments(cyclic_schedule(1, 0.01, 0.1, scale_fn=edited)) != arguments(cyclic_schedule(1, 0.01, 0.1, scale_fn=_scale_v1))
    assert arguments(OneCycle((0.1,), 40, 10, 10)) != arguments(CircularLR((0.1,), 40, 10, 10))
    buffer = io.BytesIO()
    torch.save(arguments(a), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == arguments(a)


# ---------------------------------------------------------------------------- what torch accepts


def test_numpy_and_tensor_scalars_everywhere():
    np = pytest.importorskip("numpy")
    plain, _ = fit_schedule((0.1,), 10, 2, 2, 1, use_clr_beta=(10, 13.68, 0.95, 0.85))
    odd, _ = fit_schedule((np.float64(0.1),), np.int64(10), torch.tensor(2), np.int32(2), torch.tensor(1),
                          use_clr_beta=np.array([10, 13.68, 0.95, 0.85]))
    assert odd == plain
    assert fit_schedule((0.1,), 10, 1, 2, use_clr=torch.tensor([10.0, 4.0]))[0] == fit_schedule((0.1,), 10, 1, 2, use_clr=(10, 4))[0]
    ref = cyclic_schedule(2, 0.01, [0.1, 0.5], step_size_up=4, step_size_down=2.5, gamma=0.5, mode="exp_range")
    got = cyclic_schedule(np.int64(2), torch.tensor(0.01, dtype=torch.float64), np.array([0.1, 0.5]),
                          step_size_up=torch.tensor(4), step_size_down=np.float64(2.5), gamma=torch.tensor(0.5),
                          mode="exp_range", cycle_momentum=np.bool_(True), base_momentum=[torch.tensor(0.8, dtype=torch.float64), 0.8])
    assert got == ref and [got(t) for t in range(20)] == [ref(t) for t in range(20)]
    got = one_cycle_schedule(1, torch.tensor(0.5), np.int64(30), pct_start=np.float64(0.25), three_phase=np.bool_(True))
    assert got == one_cycle_schedule(1, 0.5, 30, pct_start=0.25, three_phase=True)
    assert preview(torch.tensor(20), np.float64(0.5)).lrs == preview(20, 0.5).lrs


def test_torch_accepts_zero_base_lr_and_zero_step_size_down():
    schedule = cyclic_schedule(1, 0, 0.1, step_size_up=3, step_size_down=0)
    expected = torch_run(lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, 0, 0.1, step_size_up=3, step_size_down=0), 1, 12)
    assert_matches_torch(schedule, expected)
    assert schedule(0)[0] == [0.0]
    zero_peak = one_cycle_schedule(1, 0.0, 10)
    assert all(zero_peak(t)[0] == [0.0] for t in range(10))
    for bad, fragment in [(dict(base_lr=-1e-3), "base_lr must be >= 0"), (dict(step_size_down=-1), "step_size_down must be >= 0"),
                          (dict(step_size_up=0), "step_size_up must be > 0")]:
        with pytest.raises(ValueError, match=fragment):
            cyclic_schedule(1, **dict(dict(base_lr=0.0, max_lr=0.1), **bad))


def test_schedule_for_takes_the_fit_methods_schedule_arguments():
    from clrfit.schedules import schedule_for

    schedule, epochs = schedule_for("fit", 2, 10, [0.1, 0.2], 2, cycle_len=3, cycle_mult=2)
    assert schedule == fit_schedule((0.1, 0.2), 10, 2, 3, 2)[0] and epochs == 9
    schedule, epochs = schedule_for("fit_cyclic", 1, 10, 3, 0.01, 0.1, step_size_up=4)
    assert schedule == cyclic_schedule(1, 0.01, 0.1, step_size_up=4, total=30) and epochs == 3
    schedule, epochs = schedule_for("fit_one_cycle", 2, 7, epochs=2, max_lr=[0.1, 0.5], three_phase=True)
    assert schedule == one_cycle_schedule(2, [0.1, 0.5], 14, three_phase=True) and epochs == 2
    with pytest.raises(ValueError, match="method must be one of 'fit', 'fit_cyclic', 'fit_one_cycle'; got 'fit_sgdr'"):
        schedule_for("fit_sgdr", 1, 10, 0.1, 1)
    with pytest.raises(TypeError, match="fit_cyclic: unknown argument.*'accumulate'"):
        schedule_for("fit_cyclic", 1, 10, 3, 0.01, 0.1, accumulate=2)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1; got 0"):
        schedule_for("fit", 1, 0, 0.1, 1)
    with pytest.raises(ValueError, match="lrs must be a number or one value per layer group"):
        schedule_for("fit", 2, 10, [0.1, 0.2, 0.3], 1)


def test_a_schedule_without_phases_must_define_call():
    class Empty(schedules_module.Schedule):
        pass

    with pytest.raises(NotImplementedError, match="Empty: set phases or override"):
        Empty()(0)
    assert str(Empty()).startswith("<")  # no table to show: the default repr


def test_a_phase_table_of_your_own():
    # the example of docs/schedules.md
    from dataclasses import dataclass

    from clrfit.schedules import Phase, Schedule

    @dataclass
    class WarmupCosine(Schedule):
        lrs: tuple[float, ...]
        warmup: int
        total: int

        def __post_init__(self):
            self.phases = [Phase("warm-up", 0, self.warmup, self.warmup, "linear", (0.0, 1.0), divisor=1.0),
                           Phase("anneal", self.warmup, self.total - 1, math.inf, "cos", (1.0, 0.0), divisor=1.0)]

    schedule = WarmupCosine((0.1, 1.0), warmup=4, total=21)
    lrs = [schedule(t)[0] for t in range(21)]
    assert lrs[0] == [0.0, 0.0] and lrs[2] == [0.05, 0.5] and lrs[4] == [0.1, 1.0]
    assert close(lrs[12][1], 0.5) and lrs[20][1] == 0.0 and schedule(3)[1] is None
    assert str(schedule).splitlines()[2].split() == ["warm-up", "0-4", "linear", "0", "->", "1", "-"]


# ---------------------------------------------------------------------------- evaluating a run of steps


def _spans():
    from clrfit.schedules import CyclicLR, OneCycleLR

    return {
        "constant": ConstantLR((0.1, 0.3), total=40, cycle_iters=7),
        "sgdr": SGDR((0.2, 0.5), nb=7, cycle_len=1, cycle_mult=2, n_cycle=3),
        "circular (repeats)": CircularLR((0.1, 1.0), 13, 10, 2.6, (0.95, 0.85), n_cycle=3),
        "1cycle (repeats)": OneCycle((0.3, 0.8), 17, 10, 13.68, (0.95, 0.85), n_cycle=2),
        "1cycle no momentum": OneCycle((0.8,), 40, 10, 13.68, None),
        "torch 1cycle 3 phases": OneCycleLR(max_lr=(0.1, 1.0), total=45, pct_start=0.3, three_phase=True),
        "torch 1cycle linear": OneCycleLR(max_lr=0.5, total=33, anneal_strategy="linear"),
        "sweep exp": LRSweep((1e-4, 1e-3), 10.0, 30),
        "sweep linear": LRSweep((1e-3,), 1.0, 30, linear=True),
        "cyclic (own formula)": CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=5, mode="triangular2"),
    }


@pytest.mark.parametrize("name", list(_spans()))
def test_a_run_of_steps_is_each_step_bit_for_bit(name):
    """span(t0, t1) evaluates a phase at a time; every window gives schedule(t) exactly, across phases and repeats."""
    schedule = _spans()[name]
    total = schedule.total or 60
    single = [schedule(t) for t in range(total)]
    for width in (1, 4, 11, total):
        for t0 in range(0, total, max(1, width // 2)):
            t1 = min(total, t0 + width)
            assert schedule.span(t0, t1) == single[t0:t1], (name, t0, t1)
    assert schedule.span(5, 5) == []


def test_a_run_past_a_bounded_schedule_fails_at_the_first_step_outside():
    sgdr = SGDR((0.2,), nb=4, cycle_len=1, n_cycle=2)
    assert len(sgdr.span(0, 8)) == 8
    with pytest.raises(ValueError, match=r"t must be in \[0, 7\] \(the planned 2 cycles\); got 8$"):
        sgdr.span(6, 12)  # the first step outside, not the run's last
    with pytest.raises(ValueError, match=r"t must be in \[0, 7\].*got -1"):
        sgdr(-1)


def test_anneal_all_is_anneal_at_every_point():
    from clrfit.schedules import anneal, anneal_all

    pcts = [0.0, 0.1, 1 / 3, 0.5, 0.9, 1.0, 1.2]
    for kind in ("constant", "linear", "cos", "exp"):
        assert anneal_all(kind, 0.3, 0.01, pcts) == [anneal(kind, 0.3, 0.01, p) for p in pcts]
    angles = [math.pi * k / 7 for k in range(8)]
    assert anneal_all("cos", 1.0, 0.0, angles[:3], angles[:3]) == [anneal("cos", 1.0, 0.0, 0.0, a) for a in angles[:3]]
