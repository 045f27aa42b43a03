"""Learner-level schedule tests: what the optimizer really used, batch by batch.

Values are read from the param groups at the moment ``optimizer.step()`` runs
(an optimizer step pre-hook), and compared with the SCHEDULES.md formulas
(re-implemented here, independently of ``clrfit.schedules``) or with torch's
own ``CyclicLR`` / ``OneCycleLR`` driven on a twin optimizer.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torch import nn

from clrfit import Learner, ModelData
from clrfit import schedules

REL = 1e-12

# ---------------------------------------------------------------------------- fixtures


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def sgd_wd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.0)


def adam(params, lr):
    return torch.optim.Adam(params, lr=lr)


def adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr)


def nadam(params, lr):
    return torch.optim.NAdam(params, lr=lr)


def radam(params, lr):
    return torch.optim.RAdam(params, lr=lr)


def rmsprop(params, lr):
    return torch.optim.RMSprop(params, lr=lr, momentum=0.5)


def adagrad(params, lr):
    return torch.optim.Adagrad(params, lr=lr)


OPTIMIZERS = {"SGD": sgd, "Adam": adam, "AdamW": adamw, "NAdam": nadam, "RAdam": radam, "RMSprop": rmsprop}
MOMENTUM_OPTIMIZERS = list(OPTIMIZERS)


class StepLog:
    """Every param group's lr, momentum and betas at the moment ``optimizer.step()`` runs."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[list[float | None]] = []
        self.betas2: list[list[Any]] = []
        self.handle = opt.register_step_pre_hook(self._hook)

    def _hook(self, opt, args, kwargs) -> None:
        self.lrs.append([g["lr"] for g in opt.param_groups])
        self.moms.append([_mom(g) for g in opt.param_groups])
        self.betas2.append([tuple(g["betas"][1:]) if "betas" in g else None for g in opt.param_groups])


def _mom(group: dict) -> float | None:
    if "betas" in group:
        return group["betas"][0]
    return group.get("momentum")


class Model(nn.Module):
    """Two linear layers: one layer group each when ``groups == 2``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Inert(Model):
    """The output depends only on ``anchor``, which is in no layer group: steps leave weights alone.

    Lets the tests run torch's own test cases (lrs 1..25, momenta 1..22) without the
    weights or the optimizer arithmetic blowing up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.anchor.expand(len(x), 3)


def make_learner(nb: int = 6, groups: int = 1, opt_fn: Callable = sgd, inert: bool = False, bs: int = 4) -> Learner:
    """A tiny learner with ``nb`` training batches per epoch."""
    torch.manual_seed(0)
    model = Inert() if inert else Model()
    x = torch.randn(nb * bs, 4)
    y = torch.randint(0, 3, (nb * bs,))
    data = ModelData.from_tensors(x, y, x[:bs], y[:bs], bs=bs, shuffle=False)
    if groups == 1:
        layer_groups = [list(model.a.parameters()) + list(model.b.parameters())] if inert else None
    else:
        layer_groups = [model.a, model.b]
    return Learner(model, data, opt_fn=opt_fn, layer_groups=layer_groups, progress=False, table=False)


def weights(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def assert_rel(actual: list[float], expected: list[float], what: str, rel: float = REL) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} values, expected {len(expected)}"
    for t, (a, e) in enumerate(zip(actual, expected)):
        assert math.isclose(a, e, rel_tol=rel, abs_tol=1e-300), f"{what} at iteration {t}: got {a!r}, expected {e!r}"


def column(rows: list[list[Any]], g: int) -> list[Any]:
    return [row[g] for row in rows]


# ---------------------------------------------------------------------------- contract formulas (SCHEDULES.md)


def sgdr_expected(lr: float, nb: int, cycle_len: int, cycle_mult: int, n_cycle: int) -> list[float]:
    n0 = nb * cycle_len
    out, i = [], 0
    for k in range(n_cycle):
        n_k = nb * cycle_len * cycle_mult**k
        for t in range(n_k):
            out.append(lr / 100 if i < n0 / 20 else lr / 2 * (1 + math.cos(math.pi * t / n_k)))
            i += 1
    return out


def clr_expected(lr: float, n: int, div: float, cut_div: float, moms=None, n_cycle: int = 1):
    c = math.floor(n / cut_div)
    lrs, ms = [], []
    for _ in range(n_cycle):
        for t in range(n):
            p = t / c if t <= c else 1 - (t - c) / (n - c)
            lrs.append(lr * (1 + p * (div - 1)) / div)
            if moms:
                ms.append(moms[0] - p * (moms[0] - moms[1]))
    return lrs, ms


def clr_beta_expected(lr: float, n: int, div: float, pct: float, moms=None, n_cycle: int = 1):
    c = int(n * (1 - pct / 100) / 2)
    lrs, ms = [], []
    for _ in range(n_cycle):
        for t in range(n):
            if t <= 2 * c:
                q = t / c if t <= c else 1 - (t - c) / c
                lrs.append(lr * (1 + q * (div - 1)) / div)
                if moms:
                    ms.append(moms[0] - q * (moms[0] - moms[1]))
            else:
                a = (t - 2 * c) / (n - 2 * c)
                lrs.append(lr * (1 - 0.99 * a) / div)
                if moms:
                    ms.append(moms[0])
    return lrs, ms


# ---------------------------------------------------------------------------- fit: SGDR


def assert_groups_match(log, lrs, moms, expected) -> None:
    """Every group's recorded lr (and momentum, or the untouched 0.9) equals ``expected(group_lr)``."""
    for g, lr in enumerate(lrs):
        exp_lrs, exp_moms = expected(lr)
        assert_rel(column(log.lrs, g), exp_lrs, f"group {g} lr")
        if moms:
            assert_rel(column(log.moms, g), exp_moms, f"group {g} momentum")
        else:
            assert column(log.moms, g) == [0.9] * len(exp_lrs)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_sgdr_cycle_mult_2_three_cycles_with_warmup(groups, opt_name):
    nb, cycle_len, cycle_mult, n_cycle = 8, 3, 2, 3
    learn = make_learner(nb, groups, OPTIMIZERS[opt_name])
    mom_before = [_mom(g) for g in learn.opt.param_groups]
    lrs = [0.1, 0.4][:groups] if groups == 2 else 0.4
    log = StepLog(learn.opt)
    learn.fit(lrs, n_cycle, cycle_len=cycle_len, cycle_mult=cycle_mult)
    # 3 + 6 + 12 epochs = ceil(L (1 - M^n) / (1 - M))
    assert learn.n_epochs == 21 and len(learn.sched.epochs) == 21
    group_lrs = [0.1, 0.4] if groups == 2 else [0.4]
    for g, lr in enumerate(group_lrs):
        expected = sgdr_expected(lr, nb, cycle_len, cycle_mult, n_cycle)
        assert len(expected) == 8 * 21
        assert_rel(column(log.lrs, g), expected, f"group {g} lr")
        assert_rel(column(learn.sched.group_lrs, g), expected, f"recorded group {g} lr")
    # warm-up: global i < N_0 / 20 = 1.2, i.e. the first two iterations use lr / 100
    assert column(log.lrs, groups - 1)[:2] == [0.4 / 100] * 2
    assert column(log.lrs, groups - 1)[2] != 0.4 / 100
    # SGDR leaves momentum exactly as the optimizer had it
    for row in log.moms:
        assert row == mom_before
    if groups == 2:
        for row in log.lrs:
            assert math.isclose(row[1] / row[0], 4.0, rel_tol=REL)


def test_fit_without_cycle_len_is_constant():
    learn = make_learner(nb=5)
    log = StepLog(learn.opt)
    learn.fit(0.03, 3)
    assert log.lrs == [[0.03]] * 15
    assert [m[0] for m in log.moms] == [0.9] * 15


# ---------------------------------------------------------------------------- fit: use_clr / use_clr_beta


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("use_clr", [(32, 5), (20, 5, 0.95, 0.85), (10, 3.5, 0.9, 0.8)])
def test_use_clr_matches_contract_over_two_cycles(use_clr, groups):
    nb, cycle_len, n_cycle = 7, 3, 2
    learn = make_learner(nb, groups, sgd)
    lrs = [0.02, 0.2] if groups == 2 else [0.2]
    log = StepLog(learn.opt)
    learn.fit(lrs if groups == 2 else lrs[0], n_cycle, cycle_len=cycle_len, use_clr=use_clr)
    n = nb * cycle_len
    moms = use_clr[2:] or None
    assert_groups_match(log, lrs, moms, lambda lr: clr_expected(lr, n, use_clr[0], use_clr[1], moms, n_cycle))
    # the second cycle repeats the first exactly; groups keep their ratio
    assert log.lrs[:n] == log.lrs[n:]
    if groups == 2:
        assert all(math.isclose(row[1] / row[0], 10.0, rel_tol=REL) for row in log.lrs)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("use_clr_beta", [(10, 10), (10, 13.68, 0.95, 0.85), (25, 40, 0.9, 0.8)])
def test_use_clr_beta_matches_contract_over_two_cycles(use_clr_beta, groups):
    nb, cycle_len, n_cycle = 9, 4, 2
    learn = make_learner(nb, groups, sgd)
    lrs = [0.05, 0.5] if groups == 2 else [0.5]
    log = StepLog(learn.opt)
    learn.fit(lrs if groups == 2 else lrs[0], n_cycle, cycle_len=cycle_len, use_clr_beta=use_clr_beta, wds=1e-4)
    n = nb * cycle_len
    moms = use_clr_beta[2:] or None
    assert_groups_match(log, lrs, moms, lambda lr: clr_beta_expected(lr, n, use_clr_beta[0], use_clr_beta[1], moms, n_cycle))
    assert log.lrs[:n] == log.lrs[n:]
    # lr goes lr/div -> lr -> lr/div -> lr/(100 div)
    last = column(log.lrs, groups - 1)
    assert math.isclose(max(last), lrs[-1], rel_tol=REL)
    assert last[0] == lrs[-1] / use_clr_beta[0]


@pytest.mark.parametrize("opt_name", MOMENTUM_OPTIMIZERS)
@pytest.mark.parametrize("kind", ["use_clr", "use_clr_beta"])
def test_cyclical_momentum_goes_to_momentum_or_beta1(opt_name, kind):
    nb, cycle_len = 6, 3
    learn = make_learner(nb, 2, OPTIMIZERS[opt_name])
    betas2_before = [tuple(g["betas"][1:]) if "betas" in g else None for g in learn.opt.param_groups]
    log = StepLog(learn.opt)
    values = (20, 5, 0.95, 0.85) if kind == "use_clr" else (10, 13.68, 0.95, 0.85)
    learn.fit([0.001, 0.003], 2, cycle_len=cycle_len, **{kind: values})
    formula = clr_expected if kind == "use_clr" else clr_beta_expected
    for g, lr in enumerate([0.001, 0.003]):
        exp_lrs, exp_moms = formula(lr, nb * cycle_len, values[0], values[1], values[2:], 2)
        assert_rel(column(log.lrs, g), exp_lrs, f"{opt_name} group {g} lr")
        assert_rel(column(log.moms, g), exp_moms, f"{opt_name} group {g} momentum")
        assert_rel(column(learn.sched.group_moms, g), exp_moms, f"{opt_name} recorded momentum")
    # betas[1] (and anything after it) is never touched
    assert all(row == betas2_before for row in log.betas2)
    assert all(math.isfinite(v.float().sum().item()) for v in weights(learn).values())


def test_momentum_and_lr_of_a_step_come_from_the_same_iteration():
    div, max_m, min_m = 20.0, 0.95, 0.85
    learn = make_learner(5, 1, adam)
    log = StepLog(learn.opt)
    learn.fit(0.01, 1, cycle_len=4, use_clr=(div, 4, max_m, min_m))
    assert len(log.lrs) == 20
    for t, (lr_row, mom_row) in enumerate(zip(log.lrs, log.moms)):
        p_from_lr = (lr_row[0] * div / 0.01 - 1) / (div - 1)
        p_from_mom = (max_m - mom_row[0]) / (max_m - min_m)
        assert math.isclose(p_from_lr, p_from_mom, rel_tol=1e-9, abs_tol=1e-12), t


def test_use_clr_wins_over_plain_cycle_len():
    nb, cycle_len = 5, 4
    learn = make_learner(nb)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=cycle_len, use_clr=(10, 4))
    exp_lrs, _ = clr_expected(0.1, nb * cycle_len, 10, 4)
    assert_rel(column(log.lrs, 0), exp_lrs, "lr")
    assert column(log.lrs, 0) != sgdr_expected(0.1, nb, cycle_len, 1, 1)

    learn = make_learner(nb)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=cycle_len, use_clr_beta=(10, 10))
    assert_rel(column(log.lrs, 0), clr_beta_expected(0.1, nb * cycle_len, 10, 10)[0], "lr")


def test_use_clr_with_cycle_mult_repeats_fixed_cycles_over_the_geometric_epochs():
    # fastai 0.7: the epoch count follows cycle_mult, every use_clr cycle lasts cycle_len epochs
    nb, cycle_len = 4, 2
    learn = make_learner(nb)
    log = StepLog(learn.opt)
    learn.fit(0.1, 2, cycle_len=cycle_len, cycle_mult=2, use_clr_beta=(10, 10, 0.95, 0.85))
    assert learn.n_epochs == 6
    exp_lrs, exp_moms = clr_beta_expected(0.1, nb * cycle_len, 10, 10, (0.95, 0.85), n_cycle=3)
    assert_rel(column(log.lrs, 0), exp_lrs, "lr")
    assert_rel(column(log.moms, 0), exp_moms, "momentum")


def test_accumulate_counts_optimizer_steps():
    learn = make_learner(nb=8)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), accumulate=3)
    n = math.ceil(8 / 3) * 2
    exp_lrs, exp_moms = clr_beta_expected(0.1, n, 10, 10, (0.95, 0.85))
    assert_rel(column(log.lrs, 0), exp_lrs, "lr")
    assert_rel(column(log.moms, 0), exp_moms, "momentum")


@pytest.mark.parametrize("kind", ["plain", "sgdr", "use_clr", "fit_cyclic_no_mom", "fit_one_cycle_no_mom"])
def test_momentumless_schedule_leaves_momentum_exactly(kind):
    for opt_fn, expected in [
        (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.77), 0.77),
        (lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.81, 0.97)), 0.81),
    ]:
        learn = make_learner(4, 2, opt_fn)
        log = StepLog(learn.opt)
        if kind == "plain":
            learn.fit(0.01, 2)
        elif kind == "sgdr":
            learn.fit(0.01, 2, cycle_len=1)
        elif kind == "use_clr":
            learn.fit(0.01, 1, cycle_len=2, use_clr=(10, 4))
        elif kind == "fit_cyclic_no_mom":
            learn.fit_cyclic(2, 0.001, 0.01, step_size_up=3, cycle_momentum=False)
        else:
            learn.fit_one_cycle(2, 0.01, cycle_momentum=False)
        assert len(log.moms) == 8
        assert all(row == [expected, expected] for row in log.moms)
        if expected == 0.81:
            assert all(row == [(0.97,), (0.97,)] for row in log.betas2)


def test_non_integer_cut_div_peaks_where_fastai_does():
    # fastai 0.7: cut_pt = nb // cut_div; 13 // 2.6 == 4.0 although 13 / 2.6 rounds to 5.0
    learn = make_learner(nb=13)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=1, use_clr=(10, 2.6, 0.95, 0.85))
    lrs, moms = column(log.lrs, 0), column(log.moms, 0)
    assert lrs.index(max(lrs)) == 4 and math.isclose(lrs[4], 0.1, rel_tol=REL)
    assert moms.index(min(moms)) == 4
    expected, _ = clr_expected(0.1, 13, 10, 2.6)
    assert expected.index(max(expected)) == 5  # SCHEDULES.md's floor(N / cut_div) would put it one later


def test_sgdr_large_cycle_mult_warms_up_each_cycle_like_fastai():
    # fastai 0.7 compares the global iteration with the current cycle's length / 20
    learn = make_learner(nb=4)
    log = StepLog(learn.opt)
    learn.fit(0.2, 2, cycle_len=1, cycle_mult=25)
    lrs = column(log.lrs, 0)
    assert len(lrs) == 4 + 100
    assert lrs[0] == 0.2 / 100 and lrs[1] != 0.2 / 100  # cycle 0: i < 4 / 20
    assert lrs[4:5] == [0.2 / 100]  # cycle 1 starts at i = 4 < 100 / 20 = 5: still warm-up
    assert math.isclose(lrs[5], 0.2 / 2 * (1 + math.cos(math.pi * 1 / 100)), rel_tol=REL)


# ---------------------------------------------------------------------------- fit_cyclic / fit_one_cycle vs torch


def torch_values(opt_fn: Callable, n_groups: int, make_scheduler: Callable, steps: int):
    """lrs and momenta that torch's scheduler puts in a twin optimizer's groups, step by step."""
    params = [nn.Parameter(torch.zeros(2)) for _ in range(n_groups)]
    opt = opt_fn([{"params": [p]} for p in params], 0.123)
    scheduler = make_scheduler(opt)
    lrs, moms = [], []
    for t in range(steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([_mom(g) for g in opt.param_groups])
        if t < steps - 1:  # torch would extrapolate (or divide by zero) one step past the end
            opt.step()  # no gradients: a no-op that keeps torch's call order
            scheduler.step()
    return lrs, moms


def run_against_torch(method: str, kwargs: dict, *, nb: int, epochs: int, groups: int, opt_fn: Callable = sgd,
                      inert: bool = True) -> tuple[Learner, StepLog]:
    learn = make_learner(nb, groups, opt_fn, inert=inert)
    mom_before = [_mom(g) for g in learn.opt.param_groups]
    before = weights(learn)
    log = StepLog(learn.opt)
    getattr(learn, method)(epochs, **kwargs)
    total = epochs * nb
    torch_cls = torch.optim.lr_scheduler.CyclicLR if method == "fit_cyclic" else torch.optim.lr_scheduler.OneCycleLR
    extra = {} if method == "fit_cyclic" else {"total_steps": total}
    exp_lrs, exp_moms = torch_values(opt_fn, groups, lambda opt: torch_cls(opt, **kwargs, **extra), total)
    assert len(log.lrs) == total and learn.iteration == total  # nothing past the last step
    assert len(learn.sched.epochs) == epochs
    for g in range(groups):
        assert_rel(column(log.lrs, g), column(exp_lrs, g), f"group {g} lr")
        assert_rel(column(learn.sched.group_lrs, g), column(exp_lrs, g), f"recorded group {g} lr")
        if kwargs.get("cycle_momentum", True):
            assert_rel(column(log.moms, g), column(exp_moms, g), f"group {g} momentum")
        else:
            assert column(log.moms, g) == [mom_before[g]] * total
    if inert:
        assert all(torch.equal(v, weights(learn)[k]) for k, v in before.items() if k != "anchor")
    return learn, log


# torch's own test cases (test/optim/test_lrscheduler.py), run through clrfit and compared with torch itself
TORCH_CYCLIC_CASES = {
    "triangular_one_lr": (dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=True, base_momentum=1,
                               max_momentum=5, mode="triangular"), 11, 1, 2),
    "triangular_one_lr_no_momentum": (dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False,
                                           mode="triangular"), 11, 1, 2),
    "triangular2_one_lr": (dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=True, base_momentum=1,
                                max_momentum=5, mode="triangular2"), 11, 2, 2),
    "exp_range_one_lr": (dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=True, base_momentum=1,
                              max_momentum=5, mode="exp_range", gamma=0.9), 13, 1, 2),
    "triangular_two_groups": (dict(base_lr=[1, 2], max_lr=[5, 6], step_size_up=4, cycle_momentum=True,
                                   base_momentum=[1, 2], max_momentum=[5, 6], mode="triangular"), 11, 1, 2),
    "triangular2_two_groups": (dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=4, cycle_momentum=True,
                                    base_momentum=[1, 3], max_momentum=[5, 7], mode="triangular2"), 11, 2, 2),
    "exp_range_two_groups": (dict(base_lr=[1, 5], max_lr=[5, 12], step_size_up=4, cycle_momentum=True,
                                  base_momentum=[1, 5], max_momentum=[5, 12], mode="exp_range", gamma=0.9),
                             13, 1, 2),
    "triangular_up4_down6": (dict(base_lr=1, max_lr=5, step_size_up=4, step_size_down=6, cycle_momentum=True,
                                  base_momentum=1, max_momentum=5, mode="triangular"), 11, 1, 2),
    "triangular2_up2_down6": (dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=2, step_size_down=6,
                                   cycle_momentum=True, base_momentum=[1, 3], max_momentum=[5, 7],
                                   mode="triangular2"), 8, 3, 2),
    "exp_range_up2_down6": (dict(base_lr=1, max_lr=5, step_size_up=2, step_size_down=6, cycle_momentum=True,
                                 base_momentum=1, max_momentum=5, mode="exp_range", gamma=0.9), 13, 1, 2),
}


@pytest.mark.parametrize("case", list(TORCH_CYCLIC_CASES))
def test_fit_cyclic_reproduces_torch_test_cases(case):
    kwargs, nb, epochs, groups = TORCH_CYCLIC_CASES[case]
    run_against_torch("fit_cyclic", kwargs, nb=nb, epochs=epochs, groups=groups)


def test_fit_cyclic_torch_cases_with_adam_use_beta1():
    # torch's test_cycle_lr_with_momentumless_optimizer (Adam, no momentum cycling) and the beta1 variant
    run_against_torch("fit_cyclic", dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False,
                                         mode="triangular"), nb=11, epochs=1, groups=2, opt_fn=adam)
    run_against_torch("fit_cyclic", dict(base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=True),
                      nb=11, epochs=1, groups=2, opt_fn=adam)


TORCH_ONE_CYCLE_CASES = {
    "linear_annealing": dict(max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22,
                             anneal_strategy="linear"),
    "linear_annealing_three_phases": dict(max_lr=25, div_factor=25, base_momentum=1, max_momentum=22,
                                          anneal_strategy="linear", pct_start=0.4, final_div_factor=4,
                                          three_phase=True),
    "cosine_annealing": dict(max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22),
}


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("case", list(TORCH_ONE_CYCLE_CASES))
def test_fit_one_cycle_reproduces_torch_test_cases(case, opt_name):
    # torch uses total_steps=10: 5 batches x 2 epochs
    run_against_torch("fit_one_cycle", TORCH_ONE_CYCLE_CASES[case], nb=5, epochs=2, groups=2,
                      opt_fn=OPTIMIZERS[opt_name])


def scale_half_per_cycle(x: float) -> float:
    return 0.5**x


def scale_slow_decay(x: float) -> float:
    return 1 / (1 + 0.01 * x)


CYCLIC_CASES = {
    "defaults_scalar": dict(base_lr=1e-3, max_lr=6e-3),
    "step_size_up_2nb_triangular2": dict(base_lr=1e-3, max_lr=6e-3, step_size_up=14, mode="triangular2"),
    "per_group_everything": dict(base_lr=[1e-4, 1e-3], max_lr=[1e-3, 1e-2], step_size_up=5, step_size_down=9,
                                 mode="exp_range", gamma=0.97, base_momentum=[0.7, 0.8],
                                 max_momentum=[0.9, 0.95]),
    "fractional_steps": dict(base_lr=0.01, max_lr=0.1, step_size_up=2.5, step_size_down=3.7),
    "scale_fn_cycle": dict(base_lr=0.01, max_lr=0.1, step_size_up=4, scale_fn=scale_half_per_cycle,
                           scale_mode="cycle"),
    "scale_fn_iterations": dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=scale_slow_decay,
                                scale_mode="iterations", base_momentum=0.85, max_momentum=0.99),
    "mode_ignored_with_scale_fn": dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=scale_slow_decay,
                                       mode="not-a-mode", scale_mode="iterations"),
    "no_momentum_cycling": dict(base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=False),
}


@pytest.mark.parametrize("opt_name", MOMENTUM_OPTIMIZERS)
@pytest.mark.parametrize("case", list(CYCLIC_CASES))
def test_fit_cyclic_equals_torch(case, opt_name):
    run_against_torch("fit_cyclic", CYCLIC_CASES[case], nb=7, epochs=6, groups=2,
                      opt_fn=OPTIMIZERS[opt_name], inert=False)


ONE_CYCLE_CASES = {
    "defaults": dict(max_lr=0.5),
    "three_phase": dict(max_lr=0.5, pct_start=0.3, three_phase=True),
    "every_parameter": dict(max_lr=[0.05, 0.5], pct_start=0.25, anneal_strategy="linear", cycle_momentum=True,
                            base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.99], div_factor=10.0,
                            final_div_factor=100.0, three_phase=False),
    "every_parameter_three_phase_cos": dict(max_lr=[0.05, 0.5], pct_start=0.4, anneal_strategy="cos",
                                            base_momentum=0.75, max_momentum=0.95, div_factor=5.0,
                                            final_div_factor=1e3, three_phase=True),
    "no_momentum_cycling": dict(max_lr=0.3, cycle_momentum=False),
    "pct_start_0": dict(max_lr=0.3, pct_start=0.0),
    "pct_start_1": dict(max_lr=0.3, pct_start=1.0),
}


@pytest.mark.parametrize("opt_name", MOMENTUM_OPTIMIZERS)
@pytest.mark.parametrize("case", list(ONE_CYCLE_CASES))
def test_fit_one_cycle_equals_torch(case, opt_name):
    run_against_torch("fit_one_cycle", ONE_CYCLE_CASES[case], nb=7, epochs=3, groups=2,
                      opt_fn=OPTIMIZERS[opt_name], inert=False)


def test_fit_one_cycle_produces_nothing_past_the_last_step():
    learn, log = run_against_torch("fit_one_cycle", dict(max_lr=0.5, three_phase=True), nb=4, epochs=3, groups=1)
    assert len(learn.sched.lrs) == 12 and learn.sched.iterations == list(range(12))
    schedule = schedules.one_cycle_schedule(1, 0.5, 12, three_phase=True)
    assert schedule(11) == (log.lrs[-1], log.moms[-1])
    with pytest.raises(ValueError, match="t must be in"):
        schedule(12)
    with pytest.raises(ValueError, match="n must be <= 12"):
        schedule.values(13)


# ---------------------------------------------------------------------------- preview == a real fit


PREVIEW_CASES = [
    # (preview kwargs, fit call, nb)
    (dict(lr=0.3, use_clr_beta=(10, 13.68, 0.95, 0.85), n_cycle=2), ("fit", (0.3, 2), dict(cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85))), 5),
    (dict(lr=0.3, use_clr=(20, 5, 0.95, 0.85)), ("fit", (0.3, 1), dict(cycle_len=2, use_clr=(20, 5, 0.95, 0.85))), 7),
    (dict(lr=0.3, use_clr=(32, 5)), ("fit", (0.3, 1), dict(cycle_len=2, use_clr=(32, 5))), 7),
    (dict(lr=0.3, cycle_mult=2, n_cycle=3), ("fit", (0.3, 3), dict(cycle_len=2, cycle_mult=2)), 6),
    (dict(cyclic=dict(epochs=3, base_lr=1e-3, max_lr=6e-3, step_size_up=8, mode="triangular2")),
     ("fit_cyclic", (3,), dict(base_lr=1e-3, max_lr=6e-3, step_size_up=8, mode="triangular2")), 6),
    (dict(one_cycle=dict(epochs=4, max_lr=0.5, pct_start=0.3, three_phase=True)),
     ("fit_one_cycle", (4,), dict(max_lr=0.5, pct_start=0.3, three_phase=True)), 6),
    (dict(one_cycle=dict(max_lr=0.5, cycle_momentum=False)),
     ("fit_one_cycle", (1,), dict(max_lr=0.5, cycle_momentum=False)), 9),
]


@pytest.mark.parametrize("case", range(len(PREVIEW_CASES)))
def test_preview_equals_a_real_fit(case):
    preview_kwargs, (method, args, kwargs), nb = PREVIEW_CASES[case]
    learn = make_learner(nb)
    log = StepLog(learn.opt)
    getattr(learn, method)(*args, **kwargs)
    iterations = nb * kwargs.get("cycle_len", 1)
    values = schedules.preview(iterations, **preview_kwargs)
    assert values.lrs == column(log.lrs, 0) == learn.sched.lrs
    if values.momentums is None:
        assert column(log.moms, 0) == [0.9] * len(log.moms)
    else:
        assert values.momentums == column(log.moms, 0) == learn.sched.momentums
    fig = values.plot()
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [values.lrs]


# ---------------------------------------------------------------------------- plot_lr


def test_plot_lr_shows_momentum_panel_when_it_varies():
    learn = make_learner(5)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 10, 0.95, 0.85))
    fig = learn.sched.plot_lr()
    assert len(fig.axes) == 2
    (lr_line,), (mom_line,) = fig.axes[0].lines, fig.axes[1].lines
    assert list(lr_line.get_xdata()) == list(range(15))
    assert list(lr_line.get_ydata()) == column(log.lrs, 0)
    assert list(mom_line.get_ydata()) == column(log.moms, 0)
    assert fig.axes[1].get_ylabel() == "momentum"
    # the seeds' picture: lr rises while momentum falls
    peak = column(log.lrs, 0).index(max(column(log.lrs, 0)))
    assert column(log.moms, 0)[peak] == min(column(log.moms, 0))


def test_plot_lr_single_panel_when_momentum_is_constant():
    learn = make_learner(5)
    learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 10))
    fig = learn.sched.plot_lr()
    assert len(fig.axes) == 1
    assert list(fig.axes[0].lines[0].get_ydata()) == learn.sched.lrs


def test_plot_lr_show_epochs_marks_epoch_boundaries():
    nb = 6
    learn = make_learner(nb)
    learn.fit(0.1, 1, cycle_len=4, use_clr=(10, 4, 0.95, 0.85))
    fig = learn.sched.plot_lr(show_epochs=True)
    for ax in fig.axes:
        vertical = [line for line in ax.lines[1:]]
        xs = [line.get_xdata()[0] for line in vertical]
        assert xs == [nb, 2 * nb, 3 * nb]
        assert all(line.get_xdata()[0] == line.get_xdata()[1] for line in vertical)
    assert len(learn.sched.plot_lr().axes[0].lines) == 1


# ---------------------------------------------------------------------------- bad input


BAD_INPUT = [
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(10, 4, 0.95)), ValueError, ["use_clr", "2 or 4", "3"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr_beta=(10, 10, 0.95)), ValueError, ["use_clr_beta", "2 or 4"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(1, 4)), ValueError, ["div", "> 1", "1.0"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(0.5, 4)), ValueError, ["div", "> 1", "0.5"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr_beta=(1, 10)), ValueError, ["use_clr_beta div", "> 1"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(10, 1)), ValueError, ["cut_div", "> 1", "1.0"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr_beta=(10, 0)), ValueError, ["pct", "(0, 100)", "0.0"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr_beta=(10, 100)), ValueError, ["pct", "(0, 100)", "100"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr_beta=(10, 10, 1.2, 0.85)), ValueError, ["max_mom", "[0, 1]", "1.2"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(10, 4, 0.95, -0.1)), ValueError, ["min_mom", "[0, 1]", "-0.1"]),
    ("fit", (0.1, 1), dict(cycle_len=1, use_clr=(10, 20)), ValueError, ["cut_div", "20", ">= 1"]),
    ("fit", (0.1, 1), dict(cycle_len=1, use_clr_beta=(10, 95)), ValueError, ["pct", "95", "C must be >= 1"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr=(10, 4), use_clr_beta=(10, 10)), ValueError, ["use_clr", "use_clr_beta", "both"]),
    ("fit", (0.1, 1), dict(use_clr=(10, 4)), ValueError, ["use_clr", "cycle_len"]),
    ("fit", (0.0, 1), dict(cycle_len=2), ValueError, ["lrs", "> 0", "0.0"]),
    ("fit", (-0.1, 1), dict(), ValueError, ["lrs", "> 0", "-0.1"]),
    ("fit", ([0.1, 0.2, 0.3], 1), dict(), ValueError, ["lrs", "2", "3 values"]),
    ("fit", (0.1, 1), dict(wds=[1e-4, 1e-4, 1e-4]), ValueError, ["wds", "2", "3 values"]),
    ("fit", (0.1, 1), dict(cycle_len=2, use_clr="10,4"), TypeError, ["use_clr", "'10,4'"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, mode="sawtooth"), ValueError, ["mode", "sawtooth", "triangular2"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, step_size_up=0), ValueError, ["step_size_up", "> 0", "0"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, step_size_down=-2), ValueError, ["step_size_down", ">= 0", "-2"]),
    ("fit_cyclic", (2,), dict(base_lr=-0.01, max_lr=0.1), ValueError, ["base_lr", ">= 0", "-0.01"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=[0.1, 0.2, 0.3]), ValueError, ["max_lr", "2", "3 values"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, base_momentum=-0.5), ValueError, ["base_momentum", ">= 0", "-0.5"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, scale_fn=3), TypeError, ["scale_fn", "callable"]),
    ("fit_cyclic", (2,), dict(base_lr=0.01, max_lr=0.1, scale_mode="epochs"), ValueError, ["scale_mode", "epochs"]),
    ("fit_one_cycle", (2,), dict(max_lr=0.1, pct_start=1.5), ValueError, ["pct_start", "[0, 1]", "1.5"]),
    ("fit_one_cycle", (2,), dict(max_lr=0.1, pct_start=-0.1), ValueError, ["pct_start", "[0, 1]", "-0.1"]),
    ("fit_one_cycle", (2,), dict(max_lr=-0.1), ValueError, ["max_lr", ">= 0", "-0.1"]),
    ("fit_one_cycle", (2,), dict(max_lr=[0.1]), ValueError, ["max_lr", "2", "1 values"]),
    ("fit_one_cycle", (2,), dict(max_lr=0.1, anneal_strategy="exp"), ValueError, ["anneal_strategy", "exp", "cos"]),
    ("fit_one_cycle", (2,), dict(max_lr=0.1, max_momentum=[0.9, -1.0]), ValueError, ["max_momentum[1]", ">= 0"]),
    ("fit_one_cycle", (2,), dict(max_lr=0.1, div_factor=0), ValueError, ["div_factor", "> 0"]),
    ("fit_one_cycle", (1,), dict(max_lr=0.1, pct_start=0.2), ValueError, ["pct_start", "zero length"]),
    ("fit_one_cycle", (0,), dict(max_lr=0.1), ValueError, ["epochs", ">= 1", "0"]),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_raises_before_weights_change(case):
    method, args, kwargs, exc, fragments = BAD_INPUT[case]
    learn = make_learner(5, 2)
    before = weights(learn)
    opt_state = learn.opt.state_dict()
    log = StepLog(learn.opt)
    with pytest.raises(exc) as info:
        getattr(learn, method)(*args, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert log.lrs == []
    after = weights(learn)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.opt.state_dict()["state"] == opt_state["state"]


@pytest.mark.parametrize("call", [
    lambda learn: learn.fit(0.1, 1, cycle_len=2, use_clr=(10, 4, 0.95, 0.85)),
    lambda learn: learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85)),
    lambda learn: learn.fit_cyclic(1, 0.01, 0.1, step_size_up=2),
    lambda learn: learn.fit_one_cycle(1, 0.1),
])
def test_momentum_schedule_on_optimizer_without_momentum_is_a_clear_error(call):
    learn = make_learner(5, 2, adagrad)
    before = weights(learn)
    log = StepLog(learn.opt)
    with pytest.raises(ValueError, match="Adagrad has neither 'momentum' nor 'betas'"):
        call(learn)
    assert log.lrs == []
    assert all(torch.equal(v, weights(learn)[k]) for k, v in before.items())


def test_momentumless_schedules_work_on_optimizer_without_momentum():
    learn = make_learner(5, 1, adagrad)
    log = StepLog(learn.opt)
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10))
    assert_rel(column(log.lrs, 0), clr_beta_expected(0.1, 10, 10, 10)[0], "lr")
    assert column(log.moms, 0) == [None] * 10


def test_numpy_and_0d_tensor_arguments_fit_like_plain_numbers():
    np = pytest.importorskip("numpy")
    calls = [
        (lambda l: l.fit_cyclic(2, 0.001, 0.01, step_size_up=3, base_momentum=0.8),
         lambda l: l.fit_cyclic(np.int64(2), np.float64(0.001), torch.tensor(0.01, dtype=torch.float64),
                                step_size_up=torch.tensor(3), base_momentum=np.float64(0.8))),
        (lambda l: l.fit_one_cycle(2, 0.5, pct_start=0.25),
         lambda l: l.fit_one_cycle(2, torch.tensor(0.5), pct_start=np.float32(0.25))),
        (lambda l: l.fit(0.1, 1, cycle_len=2, use_clr=(10, 4, 0.875, 0.75)),
         lambda l: l.fit(np.float64(0.1), np.int32(1), cycle_len=torch.tensor(2),
                         use_clr=torch.tensor([10.0, 4.0, 0.875, 0.75]))),
    ]
    for plain, odd in calls:
        logs = []
        for call in (plain, odd):
            learn = make_learner(nb=5)
            log = StepLog(learn.opt)
            call(learn)
            logs.append((log.lrs, log.moms))
        assert logs[0] == logs[1] and len(logs[0][0]) == 10
