"""Draw the schedule figures of docs/schedules.md from clrfit itself.

Run from the repository root: ``python docs/make_figures.py`` (writes
``docs/img/*.png``). Every schedule curve is a clrfit schedule evaluated without
any model or optimizer, so the pictures are exactly what ``fit`` would use. The
figures in ``TRAINED`` come from a short run on MNIST-1D (a few seconds on a CPU);
``--schedules-only`` skips them.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matplotlib.figure import Figure  # noqa: E402

from clrfit import schedules  # noqa: E402

IMG = ROOT / "docs" / "img"
DPI = 72
NB = 100  # batches per epoch in every picture


def save(fig: Figure, name: str) -> Path:
    """Write a small, reproducible PNG (no timestamps or version strings in it)."""
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / name
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def fit_values(n_cycle: int, cycle_len: int | None = None, cycle_mult: int = 1, **kwargs) -> schedules.ScheduleValues:
    """What ``learn.fit(1.0, n_cycle, cycle_len, cycle_mult, **kwargs)`` uses, ``NB`` batches per epoch."""
    schedule, _ = schedules.fit_schedule((1.0,), NB, n_cycle, cycle_len, cycle_mult, **kwargs)
    return schedule.values()


def panels(curves: list[tuple[str, list[float]]], ylabel: str, width: float = 6.4, row: float = 1.9) -> Figure:
    """One small panel per named curve, sharing the x axis."""
    fig = Figure(figsize=(width, row * len(curves)), layout="constrained")
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, ys) in zip(axes, curves):
        ax.plot(range(len(ys)), ys)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    axes[-1].set_xlabel("iteration")
    return fig


def overlay(curves: list[tuple[str, list[float]]], ylabel: str, title: str = "") -> Figure:
    """Several named curves on one panel."""
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    for label, ys in curves:
        ax.plot(range(len(ys)), ys, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


TRAINED = ("lr_find2.png",)


def trained_figures() -> list[Path]:
    """Figures that need training: the LR range test of the MNIST-1D CNN."""
    import torch

    from clrfit import Learner, accuracy, datasets, models

    torch.manual_seed(0)
    learn = Learner(models.mnist1d_cnn(), datasets.mnist1d(), metrics=[accuracy], progress=False, table=False)
    learn.lr_find2(start_lr=1e-4, end_lr=10, num_it=100)
    return [save(learn.sched.plot(), "lr_find2.png")]


def main(trained: bool = True) -> list[Path]:
    """Write every figure (those needing training only if ``trained``); returns their paths."""
    written = trained_figures() if trained else []
    written.append(save(fit_values(3).plot(title="fit(1.0, 3): constant lr"), "constant.png"))
    written.append(save(fit_values(3, cycle_len=1, cycle_mult=2).plot(
        title="fit(1.0, 3, cycle_len=1, cycle_mult=2): SGDR"), "sgdr.png"))
    written.append(save(fit_values(1, cycle_len=3, use_clr=(20, 5, 0.95, 0.85)).plot(
        title="fit(1.0, 1, cycle_len=3, use_clr=(20, 5, 0.95, 0.85))"), "use_clr.png"))
    written.append(save(overlay([
        ("use_clr=(20, 5)", fit_values(1, cycle_len=3, use_clr=(20, 5)).lrs),
        ("use_clr=(32, 5)", fit_values(1, cycle_len=3, use_clr=(32, 5)).lrs),
        ("use_clr=(10, 2)", fit_values(1, cycle_len=3, use_clr=(10, 2)).lrs),
    ], "learning rate", "use_clr=(div, cut_div): peak at N/cut_div, floor lr/div"), "use_clr_div.png"))
    written.append(save(fit_values(2, cycle_len=2, use_clr=(32, 5)).plot(
        title="fit(1.0, 2, cycle_len=2, use_clr=(32, 5)): two cycles"), "use_clr_cycles.png"))
    written.append(save(fit_values(1, cycle_len=10, use_clr_beta=(10, 13.68, 0.95, 0.85)).plot(
        title="fit(1.0, 1, cycle_len=10, use_clr_beta=(10, 13.68, 0.95, 0.85))"), "use_clr_beta.png"))

    common = dict(base_lr=0.1, max_lr=1.0, step_size_up=100, cycle_momentum=False)
    modes = [
        ("triangular", schedules.cyclic_schedule(1, mode="triangular", **common)),
        ("triangular2", schedules.cyclic_schedule(1, mode="triangular2", **common)),
        ("exp_range, gamma=0.995", schedules.cyclic_schedule(1, mode="exp_range", gamma=0.995, **common)),
        ("triangular, step_size_up=40, step_size_down=160",
         schedules.cyclic_schedule(1, 0.1, 1.0, step_size_up=40, step_size_down=160, cycle_momentum=False)),
    ]
    written.append(save(panels([(name, s.values(800).lrs) for name, s in modes], "lr"), "fit_cyclic_modes.png"))
    written.append(save(schedules.cyclic_schedule(1, 0.1, 1.0, step_size_up=100).values(400).plot(
        title="fit_cyclic(..., base_lr=0.1, max_lr=1.0, step_size_up=100): cycle_momentum=True"),
        "fit_cyclic_momentum.png"))
    written.append(save(schedules.one_cycle_schedule(1, 1.0, 1000).values().plot(
        title="fit_one_cycle(..., max_lr=1.0): 1000 steps, pct_start=0.3, cos"), "fit_one_cycle.png"))
    written.append(save(overlay([
        ("two phases, cos", schedules.one_cycle_schedule(1, 1.0, 1000).values().lrs),
        ("two phases, linear", schedules.one_cycle_schedule(1, 1.0, 1000, anneal_strategy="linear").values().lrs),
        ("three_phase=True", schedules.one_cycle_schedule(1, 1.0, 1000, three_phase=True).values().lrs),
    ], "learning rate", "fit_one_cycle variants"), "fit_one_cycle_variants.png"))
    return written


if __name__ == "__main__":
    for path in main(trained="--schedules-only" not in sys.argv[1:]):
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size // 1024} KiB")
