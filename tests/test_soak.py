"""Soak: 200 fits, range tests, interrupts, resumes and divergences in random (seeded) order.

After every cycle: the recorded schedule is the contract's (computed with
``clrfit.schedules``), interrupted-and-resumed runs equal uninterrupted ones, and
nothing leaked (open file descriptors, temporary files, threads).
"""
from __future__ import annotations

import copy
import math
import os
import random
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from clrfit import Callback, Learner, ModelData
from conftest import InterruptAt
from clrfit.checkpoint import DivergenceError, read_checkpoint
from clrfit.schedules import LRSweep, cyclic_schedule, fit_schedule, one_cycle_schedule
from clrfit.serialization import get_rng_states, set_rng_states

N_CYCLES = 200
SEED = 20240601


def tiny_data() -> ModelData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    return ModelData.from_tensors(x[:24], y[:24], x[24:], y[24:], bs=8)  # 3 shuffled training batches


def tiny_learner(adam: bool, data: ModelData, state: dict | None = None) -> Learner:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    opt_fn = (lambda params, lr: torch.optim.Adam(params, lr=lr)) if adam else None
    learn = Learner(model, data, opt_fn=opt_fn, progress=False, table=False)
    if state is not None:
        learn.model.load_state_dict(state["model"])
        learn.opt.load_state_dict(state["opt"])
    return learn


def state_of(learn: Learner) -> dict:
    return {"model": copy.deepcopy(learn.model.state_dict()), "opt": copy.deepcopy(learn.opt.state_dict())}


def weights_equal(learn: Learner, state: dict) -> bool:
    return all(torch.equal(v, state["model"][k]) for k, v in learn.model.state_dict().items())


class PoisonAt(Callback):
    def __init__(self, k: int) -> None:
        self.k = k

    def on_loss(self) -> None:
        if self.learn.iteration == self.k:
            self.learn.loss = self.learn.loss * math.nan


# ---------------------------------------------------------------------- random valid arguments


def random_fit(rng: random.Random, nb: int):
    """(method name, kwargs, expected schedule values) for a random valid fit."""
    while True:
        kind = rng.choice(["fit", "fit", "fit_cyclic", "fit_one_cycle"])
        accumulate = rng.choice([1, 1, 2])
        steps = math.ceil(nb / accumulate)
        options = dict(accumulate=accumulate)
        if rng.random() < 0.3:
            options["wds"] = rng.choice([1e-4, 1e-3])
        try:
            if kind == "fit":
                lr = 10 ** rng.uniform(-2, -0.7)
                cycle_len = rng.choice([None, 1, 2])
                kwargs = dict(lrs=lr, n_cycle=rng.choice([1, 2]), cycle_len=cycle_len,
                              cycle_mult=rng.choice([1, 2]) if cycle_len else 1)
                if cycle_len and rng.random() < 0.6:
                    moms = rng.choice([(), (0.95, 0.85)])
                    if rng.random() < 0.5:
                        kwargs["use_clr"] = (rng.uniform(2, 20), rng.uniform(1.5, 4), *moms)
                    else:
                        kwargs["use_clr_beta"] = (rng.uniform(2, 20), rng.uniform(5, 30), *moms)
                schedule, n_epochs = fit_schedule((lr,), steps, kwargs["n_cycle"], cycle_len, kwargs["cycle_mult"],
                                                  kwargs.get("use_clr"), kwargs.get("use_clr_beta"))
            elif kind == "fit_cyclic":
                base = 10 ** rng.uniform(-3, -2)
                kwargs = dict(epochs=rng.choice([1, 2]), base_lr=base, max_lr=base * rng.uniform(2, 10),
                              step_size_up=rng.randint(1, 5), step_size_down=rng.choice([None, 2, 3]),
                              mode=rng.choice(["triangular", "triangular2", "exp_range"]), gamma=rng.uniform(0.9, 1.0),
                              cycle_momentum=rng.random() < 0.7)
                n_epochs = kwargs["epochs"]
                schedule = cyclic_schedule(1, **{k: v for k, v in kwargs.items() if k != "epochs"},
                                           total=n_epochs * steps)
            else:
                kwargs = dict(epochs=rng.choice([1, 2, 3]), max_lr=10 ** rng.uniform(-2, -1),
                              pct_start=rng.uniform(0.2, 0.5), anneal_strategy=rng.choice(["cos", "linear"]),
                              three_phase=rng.random() < 0.3, div_factor=rng.uniform(5, 30))
                n_epochs = kwargs["epochs"]
                schedule = one_cycle_schedule(1, **{k: v for k, v in kwargs.items() if k != "epochs"},
                                              total=n_epochs * steps)
        except ValueError:
            continue  # e.g. a 1cycle too short for its pct: draw again
        total = n_epochs * steps
        return kind, {**kwargs, **options}, schedule.values(total), steps


def check_schedule(learn: Learner, expected, n: int, steps: int, interrupted: bool = False) -> None:
    """The first ``n`` recorded steps are the contract's values, in order, one per iteration."""
    rec = learn.sched
    assert rec.iterations == list(range(n))
    assert rec.group_lrs == expected.group_lrs[:n]
    if expected.group_moms is not None:
        assert rec.group_moms == expected.group_moms[:n]
    else:
        assert len({tuple(m) for m in rec.group_moms}) <= 1  # momentum left alone
    assert len(rec.raw_losses) == n and all(math.isfinite(v) for v in rec.raw_losses)
    cut_short = [n] if interrupted and n % steps else []  # an interrupted epoch still marks where it ended
    assert rec.epochs == [steps * (e + 1) for e in range(n // steps)] + cut_short


# ---------------------------------------------------------------------- leaks


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count file descriptors")
def test_soak(tmp_path):
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _soak(tmp_path)
    finally:
        torch.set_num_threads(threads_before)


def _soak(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    data = tiny_data()
    learners = {"sgd": tiny_learner(False, data), "adam": tiny_learner(True, data)}
    folder = tmp_path / "ckpts"
    counts: dict[str, int] = {}
    baseline = None
    for cycle in range(N_CYCLES):
        name = rng.choice(sorted(learners))
        learn = learners[name]
        action = rng.choice(["fit", "fit", "lr_find", "lr_find2", "interrupt_resume", "interrupt_resume", "diverge"])
        counts[action] = counts.get(action, 0) + 1
        ckpt = folder / f"c{cycle}.ckpt"
        if action == "fit":
            kind, kwargs, expected, steps = random_fit(rng, len(learn.data.trn_dl))
            if rng.random() < 0.5:
                kwargs.update(checkpoint=ckpt, checkpoint_every=rng.choice([None, 1, 2, 5]))
            getattr(learn, kind)(**kwargs)
            check_schedule(learn, expected, len(expected.group_lrs), steps)
            if "checkpoint" in kwargs:
                assert read_checkpoint(ckpt)["counters"]["iteration"] == len(expected.group_lrs)
        elif action in ("lr_find", "lr_find2"):
            before = state_of(learn)
            start, end = 10 ** rng.uniform(-5, -3), 10 ** rng.uniform(-1, 1)
            linear = rng.random() < 0.3
            if action == "lr_find":
                learn.lr_find(start_lr=start, end_lr=end, linear=linear)
                n_planned = len(learn.data.trn_dl)
            else:
                n_planned = rng.randint(2, 10)
                learn.lr_find2(start_lr=start, end_lr=end, num_it=n_planned, linear=linear, stop_dv=rng.random() < 0.5)
            sweep = LRSweep((start,), end, n_planned, linear).values()
            n = len(learn.sched.iterations)
            assert 1 <= n <= n_planned and learn.sched.group_lrs == sweep.group_lrs[:n]
            assert weights_equal(learn, before)  # a range test leaves the learner as it was
        elif action == "interrupt_resume":
            kind, kwargs, expected, steps = random_fit(rng, len(learn.data.trn_dl))
            total = len(expected.group_lrs)
            k = rng.randrange(total)
            start_state, start_rng = state_of(learn), get_rng_states()
            kwargs.update(checkpoint=ckpt, checkpoint_every=rng.choice([None, 1, 3]))
            with pytest.raises(KeyboardInterrupt):
                getattr(learn, kind)(**kwargs, callbacks=[InterruptAt(k)])
            check_schedule(learn, expected, k + 1, steps, interrupted=True)
            assert read_checkpoint(ckpt)["counters"]["iteration"] == k + 1
            getattr(learn, kind)(**{**kwargs, "resume": True})
            check_schedule(learn, expected, total, steps)
            # the same fit, never interrupted, from the same start
            reference = tiny_learner(name == "adam", data, start_state)
            set_rng_states(start_rng)
            getattr(reference, kind)(**{k: v for k, v in kwargs.items() if not k.startswith("checkpoint")})
            assert reference.sched.raw_losses == learn.sched.raw_losses
            assert all(torch.equal(v, reference.model.state_dict()[n]) for n, v in learn.model.state_dict().items())
        else:  # diverge: a NaN loss at step k, restored
            kind, kwargs, expected, steps = random_fit(rng, len(learn.data.trn_dl))
            k = rng.randrange(len(expected.group_lrs))
            before = state_of(learn)
            with_file = rng.random() < 0.5
            if with_file:
                kwargs.update(checkpoint=ckpt, checkpoint_every=rng.choice([1, 2]))
            with pytest.raises(DivergenceError) as info:
                getattr(learn, kind)(**kwargs, callbacks=[PoisonAt(k)], on_nan="restore")
            assert info.value.iteration == k and info.value.lr == expected.group_lrs[k][-1]
            if with_file and ckpt.exists():
                saved = read_checkpoint(ckpt)
                assert saved["counters"]["iteration"] <= k
                assert all(torch.equal(v, saved["model"][n]) for n, v in learn.model.state_dict().items())
            else:
                assert weights_equal(learn, before)
        # nothing leaked
        if cycle == 10:
            baseline = (open_fds(), threading.active_count())
        if baseline is not None:
            assert open_fds() <= baseline[0], f"cycle {cycle} ({action}) leaked file descriptors"
            assert threading.active_count() <= baseline[1], f"cycle {cycle} ({action}) leaked threads"
        if folder.exists():
            assert all(p.suffix == ".ckpt" and not p.name.startswith(".") for p in folder.iterdir()), list(folder.iterdir())
    assert sum(counts.values()) == N_CYCLES and len(counts) == 5, counts
