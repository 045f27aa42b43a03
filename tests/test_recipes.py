"""The docs/anywhere.md recipes, run with the real libraries: a plain loop, accumulation with AMP, Lightning.

Each records what the optimizer really used (a step pre-hook on the optimizer)
and compares it with the schedule's own values, step by step.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from clrfit import schedules
from clrfit.lr_scheduler import ScheduleLR

torch.set_num_threads(1)


def data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class Used:
    """(scheduler step index, lr, momentum) of group 0 each time ``optimizer.step()`` really runs."""

    def __init__(self, opt: torch.optim.Optimizer, sched_ref: list) -> None:
        self.rows: list[tuple[int, float, float]] = []
        self.sched_ref = sched_ref
        opt.register_step_pre_hook(self._hook)

    def _hook(self, opt, args, kwargs) -> None:
        g = opt.param_groups[0]
        self.rows.append((self.sched_ref[0].last_epoch, g["lr"], g["betas"][0] if "betas" in g else g["momentum"]))


def test_plain_loop_recipe():
    model, dl = mlp(), DataLoader(data(), batch_size=8)  # 6 batches per epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = ScheduleLR.from_fit(opt, 0.5, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85),
                                steps_per_epoch=len(dl))
    used = Used(opt, [sched])
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for epoch in range(3):
        for xb, yb in dl:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(loss.item())
    values = sched.schedule.values()
    assert [r[0] for r in used.rows] == list(range(18))
    assert [r[1] for r in used.rows] == values.lrs and [r[2] for r in used.rows] == values.momentums
    assert max(values.lrs) == values.lrs[7] and math.isclose(values.lrs[7], 0.5, rel_tol=1e-12)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accumulation_and_amp_skipped_steps_advance_once_per_attempt():
    """bf16 autocast, a GradScaler whose third step finds an inf and is skipped: the schedule still moves on."""
    model, dl = mlp(), DataLoader(data(), batch_size=4)  # 12 micro-batches per epoch
    accumulate, epochs = 3, 2
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = ScheduleLR.from_one_cycle(opt, epochs, 0.01, steps_per_epoch=len(dl) // accumulate)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    used = Used(opt, [sched])
    attempts = skipped = 0
    for epoch in range(epochs):
        for i, (xb, yb) in enumerate(dl):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(xb), yb)
            scaler.scale(loss / accumulate).backward()
            if (i + 1) % accumulate:
                continue
            if attempts == 2:  # an overflow, as fp16 would produce: the scaler skips this optimizer step
                next(model.parameters()).grad[0, 0] = math.inf
                skipped = attempts
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            sched.step()  # once per attempt, taken or skipped
            attempts += 1
    assert attempts == 8 == sched.total and sched.last_epoch == 8
    assert scaler.get_scale() == 2.0**9  # the skip halved the scale once
    taken = [t for t in range(8) if t != skipped]
    schedule = sched.schedule
    assert [r[0] for r in used.rows] == taken
    assert [r[1] for r in used.rows] == [schedule(t)[0][0] for t in taken]
    assert [r[2] for r in used.rows] == [schedule(t)[1][0] for t in taken]
    assert all(g["betas"][1] == 0.999 for g in opt.param_groups)


@pytest.mark.slow  # importing Lightning takes seconds
def test_lightning_recipe_interval_step():
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            self.used: list[tuple[float, float]] = []
            self.scheduler: ScheduleLR | None = None

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            opt.register_step_pre_hook(
                lambda o, a, k: self.used.append((o.param_groups[0]["lr"], o.param_groups[0]["momentum"])))
            self.scheduler = ScheduleLR.from_fit(opt, 0.3, 1, cycle_len=2, use_clr=(10, 2.6, 0.95, 0.85),
                                                 steps_per_epoch=6)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler, "interval": "step"}}

    module = Module()
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", devices=1, enable_checkpointing=False,
                                logger=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on DataLoader workers
        trainer.fit(module, DataLoader(data(), batch_size=8))
    values = module.scheduler.schedule.values()
    assert len(module.used) == 12 and module.scheduler.last_epoch == 12
    assert [u[0] for u in module.used] == values.lrs
    assert [u[1] for u in module.used] == values.momentums
    assert values.lrs.index(max(values.lrs)) == 12 // 2.6 == 4
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert schedules.arguments(module.scheduler.schedule)["cut_div"] == 2.6
