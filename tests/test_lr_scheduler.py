"""ScheduleLR: clrfit's schedules as a torch LRScheduler, step for step what ``learn.fit*`` applies.

Values are read from the param groups at the moment ``optimizer.step()`` runs (a
step pre-hook), in a learner fit and in a plain loop on a twin optimizer, and
compared exactly. torch's own schedulers (OneCycleLR, SequentialLR, SWALR) are
driven side by side where the contract says ScheduleLR behaves like them.
"""
from __future__ import annotations

import inspect
import io
import math
import pickle
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from clrfit import Learner, ModelData, schedules
from clrfit.lr_scheduler import ScheduleLR

torch.set_num_threads(1)


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def adam(params, lr):
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.97))


OPTIMIZERS = {"SGD": sgd, "Adam": adam}


class StepLog:
    """Every group's lr, momentum (or betas[0]) and betas[1] when ``optimizer.step()`` runs."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []
        self.beta2: list[list[Any]] = []
        opt.register_step_pre_hook(self._hook)

    def _hook(self, opt, args, kwargs) -> None:
        self.lrs.append([g["lr"] for g in opt.param_groups])
        self.moms.append([g["betas"][0] if "betas" in g else g.get("momentum") for g in opt.param_groups])
        self.beta2.append([g["betas"][1] if "betas" in g else None for g in opt.param_groups])


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def make_learner(nb: int, groups: int, opt_fn: Callable) -> Learner:
    torch.manual_seed(0)
    model = Model()
    x, y = torch.randn(nb * 4, 4), torch.randint(0, 3, (nb * 4,))
    data = ModelData.from_tensors(x, y, x[:4], y[:4], bs=4, shuffle=False)
    layer_groups = [model.a, model.b] if groups == 2 else None
    return Learner(model, data, opt_fn=opt_fn, layer_groups=layer_groups, progress=False, table=False)


def twin_optimizer(opt_fn: Callable, groups: int) -> torch.optim.Optimizer:
    """An optimizer with ``groups`` param groups whose steps change nothing (no gradients)."""
    params = [nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    return opt_fn([{"params": [p]} for p in params], 0.123)


def run_plain_loop(opt: torch.optim.Optimizer, sched: ScheduleLR, steps: int) -> StepLog:
    log = StepLog(opt)
    for _ in range(steps):
        opt.step()
        sched.step()
    return log


NB = 5


def slow_decay(x: float) -> float:
    return 1 / (1 + 0.05 * x)


# (name, learner call, ScheduleLR builder with the same arguments); lrs given per group count
FLAVOURS: dict[str, tuple[Callable, Callable]] = {
    "constant": (lambda l, lr: l.fit(lr, 2),
                 lambda o, lr: ScheduleLR.from_fit(o, lr, 2, steps_per_epoch=NB)),
    "sgdr": (lambda l, lr: l.fit(lr, 3, cycle_len=1, cycle_mult=2),
             lambda o, lr: ScheduleLR.from_fit(o, lr, 3, cycle_len=1, cycle_mult=2, steps_per_epoch=NB)),
    "use_clr_2": (lambda l, lr: l.fit(lr, 2, cycle_len=2, use_clr=(10, 2.6)),
                  lambda o, lr: ScheduleLR.from_fit(o, lrs=lr, n_cycle=2, cycle_len=2, use_clr=(10, 2.6),
                                                    steps_per_epoch=NB)),
    "use_clr_4": (lambda l, lr: l.fit(lr, 1, cycle_len=3, use_clr=(20, 5, 0.95, 0.85)),
                  lambda o, lr: ScheduleLR.from_fit(o, lr, 1, cycle_len=3, use_clr=(20, 5, 0.95, 0.85),
                                                    steps_per_epoch=NB)),
    "use_clr_beta_2": (lambda l, lr: l.fit(lr, 2, cycle_len=2, use_clr_beta=(10, 10)),
                       lambda o, lr: ScheduleLR.from_fit(o, lr, 2, cycle_len=2, use_clr_beta=(10, 10),
                                                         steps_per_epoch=NB)),
    "use_clr_beta_4": (lambda l, lr: l.fit(lr, 1, cycle_len=4, use_clr_beta=(10, 13.68, 0.95, 0.85)),
                       lambda o, lr: ScheduleLR.from_fit(o, lr, 1, cycle_len=4,
                                                         use_clr_beta=(10, 13.68, 0.95, 0.85), steps_per_epoch=NB)),
    "fit_cyclic_triangular": (lambda l, lr: l.fit_cyclic(3, 0.001, lr, step_size_up=4),
                              lambda o, lr: ScheduleLR.from_cyclic(o, 3, 0.001, lr, step_size_up=4, steps_per_epoch=NB)),
    "fit_cyclic_triangular2": (lambda l, lr: l.fit_cyclic(3, 0, lr, step_size_up=2, step_size_down=3.5,
                                                          mode="triangular2"),
                               lambda o, lr: ScheduleLR.from_cyclic(o, 3, 0, lr, step_size_up=2, step_size_down=3.5,
                                                                    mode="triangular2", steps_per_epoch=NB)),
    "fit_cyclic_exp_range": (lambda l, lr: l.fit_cyclic(3, 0.001, lr, step_size_up=3, mode="exp_range", gamma=0.97,
                                                        base_momentum=0.8, max_momentum=0.95),
                             lambda o, lr: ScheduleLR.from_cyclic(o, 3, 0.001, lr, step_size_up=3, mode="exp_range",
                                                                  gamma=0.97, base_momentum=0.8, max_momentum=0.95,
                                                                  steps_per_epoch=NB)),
    "fit_cyclic_scale_fn": (lambda l, lr: l.fit_cyclic(3, 0.001, lr, step_size_up=4, scale_fn=slow_decay,
                                                       scale_mode="iterations"),
                            lambda o, lr: ScheduleLR.from_cyclic(o, 3, 0.001, lr, step_size_up=4, scale_fn=slow_decay,
                                                                 scale_mode="iterations", steps_per_epoch=NB)),
    "fit_cyclic_no_momentum": (lambda l, lr: l.fit_cyclic(2, 0.001, lr, step_size_up=3, cycle_momentum=False),
                               lambda o, lr: ScheduleLR.from_cyclic(o, 2, 0.001, lr, step_size_up=3,
                                                                    cycle_momentum=False, steps_per_epoch=NB)),
    "fit_one_cycle": (lambda l, lr: l.fit_one_cycle(3, lr),
                      lambda o, lr: ScheduleLR.from_one_cycle(o, 3, lr, steps_per_epoch=NB)),
    "fit_one_cycle_three_phase": (lambda l, lr: l.fit_one_cycle(4, lr, pct_start=0.25, anneal_strategy="linear",
                                                                three_phase=True, div_factor=10.0),
                                  lambda o, lr: ScheduleLR.from_one_cycle(o, 4, lr, pct_start=0.25,
                                                                          anneal_strategy="linear", three_phase=True,
                                                                          div_factor=10.0, steps_per_epoch=NB)),
}


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_values_equal_what_the_learner_applies(flavour, opt_name, groups):
    fit_call, build = FLAVOURS[flavour]
    lr = [0.01, 0.04] if groups == 2 else 0.04
    learn = make_learner(NB, groups, OPTIMIZERS[opt_name])
    fit_log = StepLog(learn.opt)
    fit_call(learn, lr)
    opt = twin_optimizer(OPTIMIZERS[opt_name], groups)
    sched = build(opt, lr)
    assert isinstance(sched, LRScheduler) and sched.total == len(fit_log.lrs) == learn.iteration
    log = run_plain_loop(opt, sched, sched.total)
    assert log.lrs == fit_log.lrs
    assert log.moms == fit_log.moms
    assert log.beta2 == fit_log.beta2  # betas[1] kept
    if opt_name == "Adam":
        assert all(row == [0.97] * groups for row in log.beta2)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_sweep_equals_lr_find2(opt_name):
    learn = make_learner(NB, 2, OPTIMIZERS[opt_name])
    log = StepLog(learn.opt)
    learn.lr_find2(start_lr=[1e-5, 1e-4], end_lr=1.0, num_it=12, stop_dv=False)
    assert len(log.lrs) == 12
    opt = twin_optimizer(OPTIMIZERS[opt_name], 2)
    sched = ScheduleLR(opt, schedules.LRSweep((1e-5, 1e-4), 1.0, 12))
    assert run_plain_loop(opt, sched, 12).lrs == log.lrs


# ---------------------------------------------------------------------------- torch's contract


def test_constructor_sets_step_zero_and_step_advances():
    opt = twin_optimizer(sgd, 2)
    sched = ScheduleLR.from_fit(opt, [0.1, 0.3], 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), steps_per_epoch=5)
    schedule = sched.schedule
    assert sched.last_epoch == 0
    assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr() == schedule(0)[0] == [0.01, 0.03]
    assert [g["momentum"] for g in opt.param_groups] == [0.95, 0.95]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.123, 0.123]  # torch's bookkeeping, untouched
    opt.step()
    sched.step()
    assert sched.last_epoch == 1 and sched.get_last_lr() == schedule(1)[0]
    assert [g["momentum"] for g in opt.param_groups] == schedule(1)[1]


def test_past_the_end_raises_or_holds():
    opt = twin_optimizer(sgd, 1)
    sched = ScheduleLR.from_one_cycle(opt, 1, 0.5, steps_per_epoch=6)
    last = sched.schedule(5)
    run_plain_loop(opt, sched, 6)  # the step() after the last batch is allowed and keeps the last values
    assert sched.last_epoch == 6 and sched.get_last_lr() == last[0] and opt.param_groups[0]["momentum"] == last[1][0]
    opt.step()
    with pytest.raises(ValueError, match=r"past the end of the schedule \(6 steps.*after_end='hold'"):
        sched.step()
    assert sched.last_epoch == 6 and sched.get_last_lr() == last[0]  # the failed step changed nothing

    opt = twin_optimizer(sgd, 1)
    held = ScheduleLR.from_one_cycle(opt, 1, 0.5, steps_per_epoch=6, after_end="hold")
    log = run_plain_loop(opt, held, 10)
    assert log.lrs[5:] == [last[0]] * 5 and held.last_epoch == 10


def test_state_dict_is_closed_form_and_loads_with_weights_only():
    def build(opt):
        return ScheduleLR.from_cyclic(opt, 4, [0.001, 0.01], [0.01, 0.1], step_size_up=3, mode="triangular2",
                                      steps_per_epoch=5)

    opt = twin_optimizer(adam, 2)
    reference = run_plain_loop(opt, build(opt), 20)

    opt = twin_optimizer(adam, 2)
    sched = build(opt)
    first = run_plain_loop(opt, sched, 7)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["sched"]["step"] == 7 and saved["sched"]["schedule"]["mode"] == "triangular2"

    opt2 = twin_optimizer(adam, 2)
    resumed = build(opt2)
    resumed.load_state_dict(saved["sched"])  # values of step 7 written straight away
    assert resumed.last_epoch == 7 and resumed.get_last_lr() == reference.lrs[7]
    opt2.load_state_dict(saved["opt"])
    rest = run_plain_loop(opt2, resumed, 13)
    assert first.lrs + rest.lrs == reference.lrs and first.moms + rest.moms == reference.moms
    assert pickle.loads(pickle.dumps(resumed.schedule)) == resumed.schedule


def scale_a(x: float) -> float:
    return 0.5**x


def scale_b(x: float) -> float:
    return 0.25**x


@pytest.mark.parametrize("other, fragment", [
    (dict(max_lr=0.2), "max_lr: (0.1,) saved, (0.2,) here"),
    (dict(scale_fn=scale_b), "scale_fn"),
    (dict(step_size_up=5), "step_size_up"),
])
def test_state_dict_from_another_schedule_is_refused(other, fragment):
    base = dict(base_lr=0.01, max_lr=0.1, step_size_up=4, scale_fn=scale_a)
    opt = twin_optimizer(sgd, 1)
    saved = ScheduleLR.from_cyclic(opt, 2, **base, steps_per_epoch=5).state_dict()
    opt2 = twin_optimizer(sgd, 1)
    sched = ScheduleLR.from_cyclic(opt2, 2, **dict(base, **other), steps_per_epoch=5)
    with pytest.raises(ValueError, match="saved for another schedule") as info:
        sched.load_state_dict(saved)
    assert fragment in str(info.value)
    assert sched.last_epoch == 0


def test_a_fit_schedule_and_a_custom_one_differ_in_state():
    opt = twin_optimizer(sgd, 1)
    saved = ScheduleLR.from_fit(opt, 0.1, 1, cycle_len=2, steps_per_epoch=5).state_dict()
    sched = ScheduleLR(twin_optimizer(sgd, 1), schedules.ConstantLR((0.1,), total=10))
    with pytest.raises(ValueError, match="schedule: 'clrfit.schedules.SGDR' saved, 'clrfit.schedules.ConstantLR' here"):
        sched.load_state_dict(saved)
    with pytest.raises(ValueError, match="keys"):
        sched.load_state_dict({"last_epoch": 3})


def run_sequential(schedulers: Callable, milestones: list[int], steps: int) -> StepLog:
    opt = twin_optimizer(sgd, 2)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, schedulers(opt), milestones=milestones)
    log = StepLog(opt)
    for _ in range(steps):
        opt.step()
        seq.step()
    return log


def test_sequential_lr_runs_each_schedule_from_its_step_zero():
    first = schedules.one_cycle_schedule(2, [0.1, 0.3], 8)
    second = schedules.one_cycle_schedule(2, [0.05, 0.2], 10, pct_start=0.5)
    log = run_sequential(lambda o: [ScheduleLR(o, first), ScheduleLR(o, second)], [8], 18)
    assert log.lrs == [first(t)[0] for t in range(8)] + [second(t)[0] for t in range(10)]
    assert log.moms == [first(t)[1] for t in range(8)] + [second(t)[1] for t in range(10)]
    # torch's OneCycleLR keeps its bounds in the shared param groups, so two of them cannot be chained;
    # a ScheduleLR keeps them in the schedule.


def test_sequential_lr_after_torchs_warmup():
    one_cycle = schedules.one_cycle_schedule(2, [0.1, 0.3], 12)
    log = run_sequential(lambda o: [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
                                    ScheduleLR(o, one_cycle)], [4], 16)
    opt = twin_optimizer(sgd, 2)
    warmup = run_plain_loop(opt, torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4), 4)
    assert log.lrs[:4] == warmup.lrs
    assert log.lrs[4:] == [one_cycle(t)[0] for t in range(12)]


def test_swalr_takes_over_like_after_torchs_own():
    def run(make):
        opt = twin_optimizer(sgd, 1)
        sched = make(opt)
        log = StepLog(opt)
        for _ in range(6):
            opt.step()
            sched.step()
        swa = torch.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=3)
        for _ in range(5):
            opt.step()
            swa.step()
        return log

    ours = run(lambda o: ScheduleLR.from_one_cycle(o, 2, 0.5, steps_per_epoch=4))
    theirs = run(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=8))
    assert len(ours.lrs) == 11
    for a, b in zip(ours.lrs, theirs.lrs):
        assert math.isclose(a[0], b[0], rel_tol=1e-12), (ours.lrs, theirs.lrs)
    assert ours.lrs[-1] == [0.01]


# ---------------------------------------------------------------------------- the single argument spec


def test_builders_take_exactly_the_learners_schedule_arguments():
    def schedule_params(fn, spec):
        """``fn``'s parameters that belong to ``spec`` (the fits also take training options), in order."""
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name in spec.names]

    def spec_params(spec):
        return [(p.name, p.default) for p in spec.parameters]

    for method, builder, spec in [(Learner.fit, ScheduleLR.from_fit, schedules.FIT),
                                  (Learner.fit_cyclic, ScheduleLR.from_cyclic, schedules.CYCLIC),
                                  (Learner.fit_one_cycle, ScheduleLR.from_one_cycle, schedules.ONE_CYCLE)]:
        assert schedule_params(method, spec) == spec_params(spec), method.__name__
        assert schedule_params(builder, spec) == spec_params(spec), builder.__name__
    # the builders take nothing else but the optimizer, epochs, steps_per_epoch and after_end
    for builder, spec, lead in [(ScheduleLR.from_fit, schedules.FIT, ["optimizer"]),
                                (ScheduleLR.from_cyclic, schedules.CYCLIC, ["optimizer", "epochs"]),
                                (ScheduleLR.from_one_cycle, schedules.ONE_CYCLE, ["optimizer", "epochs"])]:
        assert list(inspect.signature(builder).parameters) == [*lead, *spec.names, "steps_per_epoch", "after_end"]
    for name in ("fit_cyclic", "fit_one_cycle"):
        assert list(inspect.signature(getattr(Learner, name)).parameters)[1] == "epochs"
    torch_cyclic = inspect.signature(torch.optim.lr_scheduler.CyclicLR).parameters
    for p in schedules.CYCLIC.parameters:
        assert torch_cyclic[p.name].default == p.default or p.default is inspect.Parameter.empty, p.name
    torch_one = inspect.signature(torch.optim.lr_scheduler.OneCycleLR).parameters
    for p in schedules.ONE_CYCLE.parameters:
        assert torch_one[p.name].default == p.default or p.default is inspect.Parameter.empty, p.name


# ---------------------------------------------------------------------------- numbers torch accepts


def test_numpy_and_0d_tensor_scalars_are_plain_numbers():
    opt = twin_optimizer(sgd, 1)
    plain = run_plain_loop(opt, ScheduleLR.from_one_cycle(opt, 2, 0.5, pct_start=0.25, steps_per_epoch=5), 10)
    opt = twin_optimizer(sgd, 1)
    odd = ScheduleLR.from_one_cycle(opt, np.int64(2), torch.tensor(0.5), pct_start=np.float32(0.25),
                                    div_factor=torch.tensor(25), steps_per_epoch=torch.tensor(5))
    assert run_plain_loop(opt, odd, 10).lrs == plain.lrs
    opt = twin_optimizer(sgd, 1)
    clr = ScheduleLR.from_fit(opt, np.float64(0.1), np.int32(1), cycle_len=torch.tensor(2),
                              use_clr=torch.tensor([10.0, 4.0, 0.875, 0.75]), steps_per_epoch=5)
    assert clr.schedule == schedules.CircularLR((0.1,), 10, 10.0, 4.0, (0.875, 0.75), 1)


def test_base_lr_zero_is_torchs_cyclic_lr():
    opt = twin_optimizer(sgd, 1)
    ours = run_plain_loop(opt, ScheduleLR.from_cyclic(opt, 2, 0, 0.1, step_size_up=3, step_size_down=0,
                                                      steps_per_epoch=5), 10)
    opt = twin_optimizer(sgd, 1)
    torch_sched = torch.optim.lr_scheduler.CyclicLR(opt, 0, 0.1, step_size_up=3, step_size_down=0)
    theirs = run_plain_loop(opt, torch_sched, 10)
    assert all(math.isclose(a[0], b[0], rel_tol=1e-12, abs_tol=1e-300) for a, b in zip(ours.lrs, theirs.lrs))
    assert ours.lrs[0] == [0.0]


# ---------------------------------------------------------------------------- bad input


def lrs_of(opt):
    return [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("make, exc, fragments", [
    (lambda o: ScheduleLR(o, schedules.ConstantLR((0.1,), total=4)), ValueError,
     ["schedule", "1 param group value", "2 param group"]),
    (lambda o: ScheduleLR(o, "use_clr"), TypeError, ["schedule must be a clrfit.schedules.Schedule", "str"]),
    (lambda o: ScheduleLR(o, schedules.ConstantLR((0.1, 0.1), total=4), after_end="wrap"), ValueError,
     ["after_end", "'raise', 'hold'", "'wrap'"]),
    (lambda o: ScheduleLR.from_fit(o, 0.1, 1, steps_per_epoch=0), ValueError, ["steps_per_epoch", ">= 1", "0"]),
    (lambda o: ScheduleLR.from_fit(o, 0.1, 1), TypeError, ["from_fit", "steps_per_epoch"]),
    (lambda o: ScheduleLR.from_fit(o, lr=0.1, lrs=0.1, n_cycle=1, steps_per_epoch=5), TypeError, ["from_fit", "lrs=", "lr=", "not both"]),
    (lambda o: ScheduleLR.from_fit(o, [0.1, 0.2, 0.3], 1, steps_per_epoch=5), ValueError, ["lrs", "3 values"]),
    (lambda o: ScheduleLR.from_cyclic(o, 1, 0.01, 0.1, mode="saw", steps_per_epoch=5), ValueError, ["mode", "'saw'"]),
    (lambda o: ScheduleLR.from_one_cycle(o, 0, 0.1, steps_per_epoch=5), ValueError, ["epochs", ">= 1"]),
    (lambda o: ScheduleLR.from_one_cycle(o, 1, 0.1, total_steps=5, steps_per_epoch=5), TypeError, ["total_steps"]),
    (lambda o: ScheduleLR("sgd", schedules.ConstantLR((0.1,))), TypeError, ["optimizer", "str"]),
])
def test_bad_input_is_refused_before_the_optimizer_changes(make, exc, fragments):
    opt = twin_optimizer(sgd, 2)
    before = lrs_of(opt)
    with pytest.raises(exc) as info:
        make(opt)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert lrs_of(opt) == before and "initial_lr" not in opt.param_groups[0]


def test_momentum_schedule_on_an_optimizer_without_momentum():
    opt = torch.optim.Adagrad([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="Adagrad has neither 'momentum' nor 'betas' in param group"):
        ScheduleLR.from_one_cycle(opt, 1, 0.1, steps_per_epoch=10)
    assert opt.param_groups[0]["lr"] == 0.1
    sched = ScheduleLR.from_one_cycle(opt, 1, 0.1, cycle_momentum=False, steps_per_epoch=10)  # no momentum: fine
    assert sched.get_last_lr() == sched.schedule(0)[0] and math.isclose(sched.get_last_lr()[0], 0.1 / 25)


def test_loading_a_state_past_the_end_follows_after_end():
    opt = twin_optimizer(sgd, 1)
    held = ScheduleLR.from_fit(opt, 0.1, 1, cycle_len=1, use_clr=(10, 4), steps_per_epoch=8, after_end="hold")
    run_plain_loop(opt, held, 12)
    state = held.state_dict()
    assert state["step"] == 12
    fresh = ScheduleLR.from_fit(twin_optimizer(sgd, 1), 0.1, 1, cycle_len=1, use_clr=(10, 4), steps_per_epoch=8)
    fresh.load_state_dict(state)  # the saved after_end='hold' comes with it
    assert fresh.after_end == "hold" and fresh.get_last_lr() == held.schedule(7)[0]
    state["after_end"] = "raise"
    other = ScheduleLR.from_fit(twin_optimizer(sgd, 1), 0.1, 1, cycle_len=1, use_clr=(10, 4), steps_per_epoch=8)
    with pytest.raises(ValueError, match=r"step'\] is 12, past the end of the schedule \(8 steps\)"):
        other.load_state_dict(state)
    assert other.after_end == "raise" and other.last_epoch == 0


def test_tensor_lr_groups_are_filled_in_place():
    # torch lets Adam take a tensor lr (for capturable / compiled steps); torch's schedulers fill it in place
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01))
    lr_tensor = opt.param_groups[0]["lr"]
    sched = ScheduleLR.from_one_cycle(opt, 1, 0.1, steps_per_epoch=5)
    run_plain_loop(opt, sched, 3)
    assert opt.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(sched.schedule(3)[0][0])
    assert opt.param_groups[0]["betas"][0] == sched.schedule(3)[1][0]


def test_the_issue_example_with_lr_equals_lrs():
    """``from_fit(opt, steps_per_epoch=..., lr=0.8, ...)`` as users write it: ``lr`` is an alias of ``lrs``."""
    a, b = twin_optimizer(sgd, 1), twin_optimizer(sgd, 1)
    one = ScheduleLR.from_fit(a, steps_per_epoch=7, lr=0.8, n_cycle=1, cycle_len=10, use_clr_beta=(10, 13.68, 0.95, 0.85))
    two = ScheduleLR.from_fit(b, 0.8, 1, cycle_len=10, use_clr_beta=(10, 13.68, 0.95, 0.85), steps_per_epoch=7)
    for _ in range(70):
        assert lrs_of(a) == lrs_of(b) and [g["momentum"] for g in a.param_groups] == [g["momentum"] for g in b.param_groups]
        a.step(); b.step(); one.step(); two.step()
