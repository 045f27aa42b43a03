"""ParamScheduler: weight decay (L2 and decoupled), optimizer checks, restoring state.

The model is linear with an MSE loss in float64, so the gradient is known in
closed form and every parameter update can be checked against the formula.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clrfit import Callback, Learner, ModelData
from clrfit.scheduler import ParamScheduler
from clrfit.schedules import ConstantLR, OneCycle, fit_schedule

N_SAMPLES, BS = 8, 2  # 4 batches per epoch


def linear_learner(opt_fn=None) -> Learner:
    """``y = x w + b`` in float64, layer groups ``[w]`` and ``[b]``, MSE loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 3, generator=g, dtype=torch.float64)
    y = torch.randn(N_SAMPLES, 1, generator=g, dtype=torch.float64)
    ds = TensorDataset(x, y)
    data = ModelData(DataLoader(ds, batch_size=BS, shuffle=False), DataLoader(ds, batch_size=N_SAMPLES))
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    opt_fn = opt_fn or (lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.0))
    return Learner(model, data, opt_fn=opt_fn, crit=nn.MSELoss(), layer_groups=[[model.weight], [model.bias]],
                   progress=False, table=False)


class StepCapture(Callback):
    """Weights and gradients after backward (before any decay), and weights after the step."""

    order = 5  # before ParamScheduler (10) applies decoupled weight decay

    def __init__(self) -> None:
        self.before: list[dict] = []
        self.after: list[dict] = []

    def on_backward_end(self) -> None:
        m = self.learn.model
        self.before.append({
            "w": m.weight.detach().clone(), "b": m.bias.detach().clone(),
            "gw": m.weight.grad.clone(), "gb": m.bias.grad.clone(),
            "x": self.learn.xb.clone(), "y": self.learn.yb.clone(),
            "lrs": [g["lr"] for g in self.learn.opt.param_groups],
            "l2": [g.get("weight_decay") for g in self.learn.opt.param_groups],
            "iteration": self.learn.iteration,
        })

    def on_step_end(self) -> None:
        m = self.learn.model
        self.after.append({"w": m.weight.detach().clone(), "b": m.bias.detach().clone()})


def analytic_grads(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dw and d/db of mean((x w^T + b - y)^2)."""
    r = s["x"] @ s["w"].T + s["b"] - s["y"]
    n = r.numel()
    return (2 / n) * (r.T @ s["x"]), (2 / n) * r.sum().reshape(1)


def assert_tensor_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-12) -> None:
    torch.testing.assert_close(actual, expected, rtol=rel, atol=1e-15)


def check_updates(cap: StepCapture, wd_of_step, decoupled: bool) -> None:
    """Each step: ``p -= wd_t lr_t p`` then ``p -= lr_t g`` (decoupled), or ``p -= lr_t (g + wd p)`` (L2)."""
    assert cap.before and len(cap.before) == len(cap.after)
    for t, (s, a) in enumerate(zip(cap.before, cap.after)):
        gw, gb = analytic_grads(s)
        assert_tensor_rel(s["gw"], gw)
        assert_tensor_rel(s["gb"], gb)
        for i, (name, grad) in enumerate([("w", gw), ("b", gb)]):
            p, lr, wd = s[name], s["lrs"][i], wd_of_step(t)[i]
            if decoupled:
                assert s["l2"][i] in (0.0, None)
                expected = (p - wd * lr * p) - lr * grad
            else:
                assert s["l2"][i] == wd
                expected = p - lr * (grad + wd * p)
            assert_tensor_rel(a[name], expected)


@pytest.mark.parametrize("wds", [1e-2, [5e-2, 1e-3]])
def test_l2_weight_decay_through_param_groups(wds):
    learn = linear_learner()
    cap = StepCapture()
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10), wds=wds, callbacks=[cap])
    per_group = [wds, wds] if isinstance(wds, float) else wds
    assert len(cap.before) == 8
    check_updates(cap, lambda t: per_group, decoupled=False)


@pytest.mark.parametrize("wds", [1e-1, [2e-1, 5e-2]])
def test_decoupled_weight_decay_uses_the_current_lr(wds):
    learn = linear_learner()
    cap = StepCapture()
    learn.fit(0.5, 1, cycle_len=2, use_clr_beta=(10, 10), wds=wds, use_wd_sched=True, callbacks=[cap])
    per_group = [wds, wds] if isinstance(wds, float) else wds
    # the lr changes every step, so decay with a stale lr would not match
    assert len({s["lrs"][0] for s in cap.before}) > 4
    check_updates(cap, lambda t: per_group, decoupled=True)


def test_norm_wds_divides_by_sqrt_of_the_current_cycle_length():
    learn = linear_learner()
    cap = StepCapture()
    # SGDR with cycle_mult=2: cycles of 4 then 8 iterations
    learn.fit(0.3, 2, cycle_len=1, cycle_mult=2, wds=[0.2, 0.1], use_wd_sched=True, norm_wds=True, callbacks=[cap])
    assert len(cap.before) == 12

    def wd(t):
        n = 4 if t < 4 else 8
        return [0.2 / math.sqrt(n), 0.1 / math.sqrt(n)]

    check_updates(cap, wd, decoupled=True)


def test_norm_wds_without_cycle_len_normalises_per_epoch():
    learn = linear_learner()
    cap = StepCapture()
    learn.fit(0.1, 3, wds=0.3, use_wd_sched=True, norm_wds=True, callbacks=[cap])
    check_updates(cap, lambda t: [0.3 / math.sqrt(4)] * 2, decoupled=True)


def test_norm_wds_with_use_clr_beta_and_fit_one_cycle():
    learn = linear_learner()
    cap = StepCapture()
    learn.fit(0.1, 2, cycle_len=2, use_clr_beta=(10, 10), wds=0.3, use_wd_sched=True, norm_wds=True, callbacks=[cap])
    check_updates(cap, lambda t: [0.3 / math.sqrt(8)] * 2, decoupled=True)

    learn = linear_learner()
    cap = StepCapture()
    learn.fit_one_cycle(3, 0.1, cycle_momentum=False, wds=0.3, use_wd_sched=True, norm_wds=True, callbacks=[cap])
    check_updates(cap, lambda t: [0.3 / math.sqrt(12)] * 2, decoupled=True)

    learn = linear_learner()
    cap = StepCapture()
    learn.fit_cyclic(2, 0.01, 0.1, step_size_up=3, step_size_down=2.5, cycle_momentum=False, wds=0.3,
                     use_wd_sched=True, norm_wds=True, callbacks=[cap])
    check_updates(cap, lambda t: [0.3 / math.sqrt(5.5)] * 2, decoupled=True)


def test_wds_sched_mult_receives_the_learner_each_step():
    learn = linear_learner()
    cap = StepCapture()
    seen = []

    def mult(lrn: Learner) -> float:
        assert lrn is learn
        seen.append(lrn.iteration)
        return 1 + lrn.iteration / 4

    learn.fit(0.2, 1, cycle_len=3, use_clr=(10, 3), wds=[0.1, 0.05], use_wd_sched=True, norm_wds=True,
              wds_sched_mult=mult, callbacks=[cap])
    assert seen == list(range(12))
    check_updates(cap, lambda t: [w / math.sqrt(12) * (1 + t / 4) for w in (0.1, 0.05)], decoupled=True)


def test_decoupled_weight_decay_with_adamw_style_optimizer_and_momentum():
    # with momentum/Adam the step itself is torch's; the decay before it is p *= (1 - wd lr)
    learn = linear_learner(lambda params, lr: torch.optim.Adam(params, lr=lr))
    cap = StepCapture()
    twin = torch.optim.Adam([nn.Parameter(torch.zeros(1, 3, dtype=torch.float64)),
                             nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=1.0)
    learn.fit(0.01, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), wds=0.1, use_wd_sched=True, callbacks=[cap])
    for s, a in zip(cap.before, cap.after):
        gw, gb = analytic_grads(s)
        betas = learn.sched.group_moms[s["iteration"]]
        for i, (p, grad) in enumerate(zip(twin.param_groups[0]["params"], (gw, gb))):
            with torch.no_grad():
                p.copy_(s["w"] if i == 0 else s["b"])
                p.mul_(1 - 0.1 * s["lrs"][i])
            p.grad = grad
        for i, g in enumerate(twin.param_groups):
            g["lr"] = s["lrs"][i]
            g["betas"] = (betas[i], 0.999)
        twin.step()
        assert_tensor_rel(a["w"], twin.param_groups[0]["params"][0].detach())
        assert_tensor_rel(a["b"], twin.param_groups[0]["params"][1].detach())


def test_wds_stay_in_the_groups_and_none_keeps_them():
    learn = linear_learner(lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.004))
    cap = StepCapture()
    learn.fit(0.1, 1, callbacks=[cap])  # wds=None: the optimizer's own weight decay
    assert all(s["l2"] == [0.004, 0.004] for s in cap.before)
    learn.fit(0.1, 1, wds=[0.1, 0.2])
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0.1, 0.2]
    learn.fit(0.1, 1, wds=0.1, use_wd_sched=True)
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(wds=-1e-4), ["wds", ">= 0", "-0.0001"]),
    (dict(wds=[1e-4]), ["wds", "2", "1 values"]),
    (dict(norm_wds=True, wds=1e-4), ["norm_wds", "use_wd_sched=True"]),
    (dict(wds_sched_mult=lambda learn: 1.0, wds=1e-4), ["wds_sched_mult", "use_wd_sched=True"]),
    (dict(use_wd_sched=True), ["use_wd_sched", "wds"]),
    (dict(wds=1e-4, use_wd_sched=True, wds_sched_mult=2.0), ["wds_sched_mult", "callable"]),
])
def test_bad_weight_decay_arguments(kwargs, fragments):
    learn = linear_learner()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises((ValueError, TypeError)) as info:
        learn.fit(0.1, 1, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())


class PlainSGD(torch.optim.Optimizer):
    """An optimizer with no 'weight_decay', 'momentum' or 'betas' in its groups."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def test_l2_on_optimizer_without_weight_decay_is_an_error_but_decoupled_works():
    learn = linear_learner(PlainSGD)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"wds=\[0.1, 0.1\]: PlainSGD has no 'weight_decay'"):
        learn.fit(0.1, 1, wds=0.1)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())
    cap = StepCapture()
    learn.fit(0.1, 1, cycle_len=2, use_clr=(10, 3), wds=0.1, use_wd_sched=True, callbacks=[cap])
    for s, a in zip(cap.before, cap.after):
        gw, _ = analytic_grads(s)
        assert_tensor_rel(a["w"], (s["w"] - 0.1 * s["lrs"][0] * s["w"]) - s["lrs"][0] * gw)


def test_check_rejects_group_count_mismatch_and_missing_momentum():
    learn = linear_learner(PlainSGD)
    with pytest.raises(ValueError, match="1 layer group values but the optimizer has 2"):
        ParamScheduler(ConstantLR((0.1,), total=4)).check(learn.opt)
    with pytest.raises(ValueError, match="momentum: this schedule sets momentum but PlainSGD"):
        ParamScheduler(OneCycle((0.1, 0.1), 10, 10.0, 10.0, (0.95, 0.85))).check(learn.opt)
    ParamScheduler(OneCycle((0.1, 0.1), 10, 10.0, 10.0)).check(learn.opt)  # no momentum: fine


def test_param_scheduler_sets_cycle_counters():
    learn = linear_learner()

    class Counters(Callback):
        order = 20
        seen: list = []

        def on_batch_begin(self) -> None:
            self.seen.append((self.learn.iteration, self.learn.cycle, self.learn.iter_in_cycle))

    cb = Counters()
    learn.fit(0.1, 2, cycle_len=1, cycle_mult=2, callbacks=[cb])
    assert cb.seen == [(i, 0, i) for i in range(4)] + [(4 + i, 1, i) for i in range(8)]


def test_only_a_decoupled_weight_decay_fit_has_a_handler_between_backward_and_step():
    """A default fit fires nothing at on_backward_end; use_wd_sched adds the one callback that works there."""
    learn = linear_learner()
    learn.fit(0.1, 1, wds=1e-2)  # L2: written into the groups once, nothing per step
    assert learn._handlers["on_backward_end"] == ()
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [1e-2, 1e-2]
    learn.fit(0.1, 1, wds=1e-2, use_wd_sched=True)
    assert [type(h.__self__).__name__ for h in learn._handlers["on_backward_end"]] == ["DecoupledWeightDecay"]
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0.0, 0.0]


def test_values_evaluated_ahead_are_the_schedules_at_every_step(monkeypatch):
    """The schedule is taken AHEAD steps at a time; chunk boundaries (here every 3 steps) change no value or counter."""
    import clrfit.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "AHEAD", 3)
    learn = linear_learner(lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))

    class Counters(Callback):
        order = 20  # after the schedule set this step's counters
        seen: list = []

        def on_batch_begin(self) -> None:
            self.seen.append((self.learn.cycle, self.learn.iter_in_cycle))

    learn.fit([0.1, 0.4], 2, cycle_len=1, use_clr=(10, 3, 0.95, 0.85), callbacks=[Counters()])
    schedule, _ = fit_schedule((0.1, 0.4), 4, 2, 1, use_clr=(10, 3, 0.95, 0.85))
    values = schedule.values()
    assert learn.sched.group_lrs == values.group_lrs and learn.sched.group_moms == values.group_moms
    assert Counters.seen == [(t // 4, t % 4) for t in range(8)]


def test_the_recorder_reads_back_what_the_optimizer_stepped_with():
    """A callback changing lr after the schedule (here between backward and step) is what the history shows."""
    learn = linear_learner()

    class Halve(Callback):
        order = 20

        def on_backward_end(self) -> None:
            for g in self.learn.opt.param_groups:
                g["lr"] = g["lr"] / 2

    learn.fit(0.2, 1, callbacks=[Halve()])
    assert learn.sched.group_lrs == [[0.1, 0.1]] * 4


@pytest.mark.parametrize("opt", ["sgd", "rmsprop", "adam"])
def test_momentum_written_and_read_back_for_every_optimizer_layout(opt):
    """SGD/RMSprop ``momentum`` (written and read without set_momentum/read_back) and Adam ``betas[0]``, per group;
    a callback's change after the schedule is what the history shows, and ``betas[1]`` is left alone."""
    make = {"sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5),
            "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr, momentum=0.5),
            "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.5, 0.99))}[opt]
    learn = linear_learner(make)
    key = "betas" if opt == "adam" else "momentum"

    class Nudge(Callback):  # after the schedule: group 1's momentum one step behind
        order = 20

        def on_batch_begin(self) -> None:
            group = self.learn.opt.param_groups[1]
            if key == "betas":
                group["betas"] = (group["betas"][0] - 0.01, group["betas"][1])
            else:
                group["momentum"] -= 0.01

    learn.fit([0.1, 0.2], 2, cycle_len=1, use_clr=(10, 3, 0.95, 0.85), callbacks=[Nudge()])
    schedule, _ = fit_schedule((0.1, 0.2), 4, 2, 1, use_clr=(10, 3, 0.95, 0.85))
    values = schedule.values()
    assert learn.sched.group_lrs == values.group_lrs
    assert [m[0] for m in learn.sched.group_moms] == [m[0] for m in values.group_moms]
    assert [m[1] for m in learn.sched.group_moms] == [m[1] - 0.01 for m in values.group_moms]
    assert all(type(v) is float for row in learn.sched.group_moms + learn.sched.group_lrs for v in row)
    if opt == "adam":
        assert [g["betas"][1] for g in learn.opt.param_groups] == [0.99, 0.99]
