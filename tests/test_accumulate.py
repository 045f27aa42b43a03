"""Gradient accumulation: one optimizer step per ``accumulate`` micro-batches, schedules count steps."""
from __future__ import annotations

import math

import pytest
import torch

from clrfit import Callback

from conftest import make_data, make_learner, make_model

LR, DIV, PCT, MAX_MOM, MIN_MOM = 0.3, 10.0, 10.0, 0.95, 0.85


def fit_clr_beta(learn, **options):
    """One 2-epoch 1cycle (``use_clr_beta``) with the constants above; returns the recorder."""
    return learn.fit(LR, 1, cycle_len=2, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM), **options)


def one_cycle_expected(n: int) -> tuple[list[float], list[float]]:
    """lr and momentum of ``use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM)`` over one cycle of ``n`` steps (docs/schedules.md)."""
    c = int(n * (1 - PCT / 100) / 2)
    lrs, moms = [], []
    for t in range(n):
        if t <= 2 * c:
            p = t / c if t <= c else 1 - (t - c) / c
            lrs.append(LR * (1 + p * (DIV - 1)) / DIV)
            moms.append(MAX_MOM - p * (MAX_MOM - MIN_MOM))
        else:
            a = (t - 2 * c) / (n - 2 * c)
            lrs.append(LR * (1 - 0.99 * a) / DIV)
            moms.append(MAX_MOM)
    return lrs, moms


class MicroBatchCount(Callback):
    """Counts forward passes (``on_loss``) and optimizer steps (``on_step_end``)."""

    def __init__(self) -> None:
        self.losses = self.steps = 0

    def on_loss(self) -> None:
        self.losses += 1

    def on_step_end(self) -> None:
        self.steps += 1


def pair(k: int, micro_bs: int = 4, n_trn: int = 96):
    """A learner with micro-batches of ``micro_bs`` (to accumulate k) and one with k-times-larger batches."""
    small = make_learner(data=make_data(n_trn=n_trn, bs=micro_bs, shuffle=False), model=make_model())
    big = make_learner(data=make_data(n_trn=n_trn, bs=micro_bs * k, shuffle=False), model=make_model())
    return small, big


@pytest.mark.parametrize("k", [2, 4])
def test_use_clr_beta_schedule_counts_optimizer_steps(k):
    small, big = pair(k)
    rec_small = small.fit(LR, 1, cycle_len=2, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM), accumulate=k)
    rec_big = big.fit(LR, 1, cycle_len=2, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM))
    nb = math.ceil(96 / (4 * k))
    assert small.nb == big.nb == nb
    assert rec_small.iterations == rec_big.iterations == list(range(2 * nb))
    expected_lrs, expected_moms = one_cycle_expected(2 * nb)
    assert rec_small.lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert rec_small.momentums == pytest.approx(expected_moms, rel=1e-12)
    assert rec_small.lrs == rec_big.lrs and rec_small.momentums == rec_big.momentums
    assert rec_small.epochs == rec_big.epochs == [nb, 2 * nb]
    assert len(rec_small.raw_losses) == 2 * nb


def test_fit_one_cycle_matches_torch_over_optimizer_steps():
    k = 3
    small, big = pair(k)
    rec_small = small.fit_one_cycle(2, 0.5, accumulate=k)
    rec_big = big.fit_one_cycle(2, 0.5)
    total = 2 * math.ceil(96 / (4 * k))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=total)
    expected_lrs, expected_moms = [], []
    for _ in range(total):
        expected_lrs.append(opt.param_groups[0]["lr"])
        expected_moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    assert rec_small.lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert rec_small.momentums == pytest.approx(expected_moms, rel=1e-12)
    assert rec_small.lrs == rec_big.lrs and rec_small.iterations == rec_big.iterations == list(range(total))


@pytest.mark.parametrize("k", [2, 4])
def test_weights_and_losses_match_the_big_batch_run(k):
    small, big = pair(k)
    small.fit(LR, 1, cycle_len=2, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM), accumulate=k)
    big.fit(LR, 1, cycle_len=2, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM))
    for p_small, p_big in zip(small.model.parameters(), big.model.parameters()):
        torch.testing.assert_close(p_small, p_big, rtol=1e-5, atol=1e-6)
    # The recorded loss of a step is the mean over its micro-batches: the big batch's mean loss.
    assert small.sched.raw_losses == pytest.approx(big.sched.raw_losses, rel=1e-5)
    assert small.sched.val_losses == pytest.approx(big.sched.val_losses, rel=1e-5)


def test_each_micro_batch_backpropagates_loss_over_k():
    k = 4
    small, big = pair(k)
    grads = {}

    class Grab(Callback):
        def __init__(self, key):
            self.key = key

        def on_backward_end(self):
            if self.learn.iteration == 0:
                grads[self.key] = [p.grad.clone() for p in self.learn.model.parameters()]

    small.fit(LR, 1, accumulate=k, callbacks=[Grab("small")])
    big.fit(LR, 1, callbacks=[Grab("big")])
    for g_small, g_big in zip(grads["small"], grads["big"]):
        torch.testing.assert_close(g_small, g_big, rtol=1e-5, atol=1e-7)


def test_ragged_last_step_and_event_counts():
    # 10 micro-batches with accumulate=4: steps of 4, 4 and 2 micro-batches.
    learn = make_learner(data=make_data(n_trn=40, bs=4, shuffle=False))
    counter = MicroBatchCount()
    rec = learn.fit(0.1, 2, accumulate=4, callbacks=[counter])
    assert learn.nb == 3
    assert counter.losses == 2 * 10 and counter.steps == 2 * 3
    assert rec.iterations == list(range(6)) and learn.iteration == 6


@pytest.mark.parametrize("bad", [0, -2])
def test_accumulate_below_one_is_an_error_before_training(bad):
    learn = make_learner()
    before = [p.clone() for p in learn.model.parameters()]
    for call in (lambda: learn.fit(0.1, 1, accumulate=bad),
                 lambda: learn.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10), accumulate=bad),
                 lambda: learn.fit_one_cycle(1, 0.1, accumulate=bad),
                 lambda: learn.fit_cyclic(1, 0.01, 0.1, accumulate=bad)):
        with pytest.raises(ValueError, match=rf"accumulate must be an integer >= 1; got {bad}"):
            call()
    with pytest.raises(TypeError, match="accumulate must be an integer"):
        learn.fit(0.1, 1, accumulate=1.5)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert learn.iteration == 0
