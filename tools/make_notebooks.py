"""Write notebooks/*.ipynb from the cell sources below (no outputs, no execution counts).

Run from the repository root: ``python tools/make_notebooks.py`` (writes the
notebooks); ``--check`` exits 1 when a committed notebook differs from what this
script generates. Edit the notebooks here, not in Jupyter, so the committed files
stay output-free and diffs stay readable.

Cells tagged ``plot`` must display at least one image, and the cell tagged
``table`` must print the notebook's results table, whose header line is stored
in the notebook metadata (``clrfit.table_header``); ``tests/test_notebooks.py``
executes every notebook and checks both.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

# --------------------------------------------------------------------------- shared cells

FLAG = '''\
# False: the built-in MNIST-1D data and a small 1-D CNN (CPU, about a minute).
# True: CIFAR-10 and ResNet-56 as in the papers (downloads CIFAR-10; needs a GPU).
USE_CIFAR10 = False
CIFAR10_PATH = "data"'''

TABLE_HELPER = '''\
def markdown_table(header, rows):
    """Rows as a Markdown table (plain text: no pandas needed)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\\n".join(lines)'''


def table_header(columns: list[str]) -> str:
    """The first line ``markdown_table`` prints for these columns."""
    return "| " + " | ".join(columns) + " |"


# --------------------------------------------------------------------------- 01 quickstart

QUICKSTART_COLUMNS = ["epoch", "lr (last batch)", "momentum (last batch)", "val_loss", "accuracy"]

QUICKSTART = [
    ("md", """\
# clrfit quick start

The whole workflow in a few cells: data, a `Learner`, an LR range test
(`lr_find2`) to pick the learning rate, a 1cycle fit with cyclical momentum
(`use_clr_beta`), and the plots that show what the optimizer really did.

Runs on CPU in about a minute with the built-in MNIST-1D data (40-sample 1-D
signals, 10 classes, generated offline). Set `USE_CIFAR10 = True` to run the same
cells on CIFAR-10 with ResNet-56 on a GPU."""),
    ("code", FLAG),
    ("code", '''\
import torch
from clrfit import Learner, accuracy, datasets, models

torch.manual_seed(0)
if USE_CIFAR10:
    data = datasets.cifar10(CIFAR10_PATH, bs=128, download=True, num_workers=4)
    make_model, EPOCHS = models.resnet56, 30
else:
    torch.set_num_threads(1)  # this small CNN gains nothing from more threads, and on a busy CPU they slow it down
    data = datasets.mnist1d(bs=128)
    make_model, EPOCHS = models.mnist1d_cnn, 10
data'''),
    ("md", """\
## The learner

`Learner(model, data)` owns the model, the data and the optimizer. Defaults are
those of fastai 0.7: SGD with momentum 0.9 and cross-entropy loss; `metrics` are
computed on the validation set after every epoch."""),
    ("code", '''\
learn = Learner(make_model(), data, metrics=[accuracy])
learn'''),
    ("md", """\
## LR range test

`lr_find2` trains for `num_it` iterations while the learning rate grows
exponentially from `start_lr` to `end_lr`, evaluating one validation batch after
every step. It stops early when the loss diverges, and afterwards puts the model,
the optimizer and the random state back exactly as they were. It returns
suggestions; `learn.sched.plot()` draws the loss against the learning rate."""),
    ("code", '''\
suggestion = learn.lr_find2(start_lr=1e-4, end_lr=10, num_it=100)   # prints the suggestions'''),
    ("code", "learn.sched.plot()", ["plot"]),
    ("md", """\
`clr_bounds` applies Leslie Smith's rule: `base_lr` where the loss starts to fall,
`max_lr` where it stops improving, and `div = max_lr / base_lr`. These are the two
numbers a cyclical schedule needs."""),
    ("code", '''\
bounds = suggestion.clr_bounds
print(f"base_lr={bounds.base_lr:.3g}  max_lr={bounds.max_lr:.3g}  div={bounds.div:.3g}")'''),
    ("md", """\
## 1cycle with cyclical momentum

`use_clr_beta=(div, pct, max_mom, min_mom)`: over one cycle of `cycle_len`
epochs the learning rate climbs from `max_lr / div` to `max_lr` and back, then
spends the last `pct` percent of the cycle falling to `max_lr / (100 * div)`;
momentum moves the other way, from `max_mom` down to `min_mom` and back.
`wds` adds weight decay."""),
    ("code", '''\
torch.manual_seed(0)
learn = Learner(make_model(), data, metrics=[accuracy])
learn.fit(bounds.max_lr, 1, cycle_len=EPOCHS, use_clr_beta=(bounds.div, 10, 0.95, 0.85), wds=1e-4)'''),
    ("md", """\
`learn.sched` recorded the learning rate and momentum each step really used
(read back from the optimizer), so these plots are ground truth, not a
re-computation of the formula."""),
    ("code", "learn.sched.plot_lr(show_epochs=True)", ["plot"]),
    ("code", "learn.sched.plot_loss()", ["plot"]),
    ("md", "## Results"),
    ("code", TABLE_HELPER + '''

sched = learn.sched
rows = []
for epoch, end in enumerate(sched.epochs):
    rows.append([epoch, sched.lrs[end - 1], sched.momentums[end - 1], sched.val_losses[epoch], sched.rec_metrics[epoch][0]])
print(markdown_table(''' + repr(QUICKSTART_COLUMNS) + ''', rows))''', ["table"]),
]

# --------------------------------------------------------------------------- 02 use_clr

USE_CLR_COLUMNS = ["schedule", "epochs", "best accuracy", "final accuracy", "final val_loss"]

USE_CLR = [
    ("md", """\
# Understanding `use_clr=(div, cut_div)`

fastai 0.7's CircularLR is a *slanted triangle*. For a cycle of `N` iterations
(`cycle_len` epochs of `nb` batches):

- the peak is at `c = floor(N / cut_div)`: with `cut_div = 5` the learning rate
  grows for the first 1/5 of the cycle and falls for the other 4/5;
- it grows from `lr / div` to `lr` (the `lr` passed to `fit`), then falls back
  towards `lr / div`, so the minimum learning rate is `lr / div`;
- with four values, `use_clr=(div, cut_div, max_mom, min_mom)`, momentum is the
  mirror image: `max_mom` at both ends, `min_mom` at the peak.

Every picture here comes from `clrfit.schedules.preview(iterations, lr, ...)`,
which evaluates the schedule of one `iterations`-long cycle without a model (as
`fit(lr, n_cycle, cycle_len=1, ...)` on `iterations` batches per epoch); the
comparison at the end trains."""),
    ("code", FLAG),
    ("code", '''\
import matplotlib.pyplot as plt
import torch
from clrfit import Learner, accuracy, datasets, models, schedules

if USE_CIFAR10:
    data = datasets.cifar10(CIFAR10_PATH, bs=128, download=True, num_workers=4)
    make_model, LR, EPOCHS = models.resnet56, 0.8, 31
else:
    torch.set_num_threads(1)  # this small CNN gains nothing from more threads, and on a busy CPU they slow it down
    data = datasets.mnist1d(bs=128)
    make_model, LR, EPOCHS = models.mnist1d_cnn, 0.5, 7
nb = len(data.trn_dl)
print(f"{nb} batches per epoch")'''),
    ("md", """\
## The (20, 5) and (32, 5) examples

Both peak at one fifth of the cycle; `div` only sets how low the ends go:
`lr / 20` or `lr / 32`. Here `lr = 1` and the cycle is 1000 iterations, so the
peak is at iteration 200."""),
    ("code", '''\
fig, ax = plt.subplots(figsize=(7, 3.5))
for div, cut_div in [(20, 5), (32, 5)]:
    values = schedules.preview(1000, lr=1.0, use_clr=(div, cut_div))
    ax.plot(values.iterations, values.lrs, label=f"use_clr=({div}, {cut_div}): min lr = 1/{div} = {1 / div:.4f}")
    peak = max(range(1000), key=lambda t: values.lrs[t])
    print(f"use_clr=({div}, {cut_div}): peak at iteration {peak} (N / cut_div = {1000 // cut_div}), "
          f"lr {values.lrs[0]:.4f} -> {values.lrs[peak]:.4f} -> {values.lrs[-1]:.4f}")
ax.axvline(200, color="0.6", linestyle="--", linewidth=0.8)
ax.set_xlabel("iteration"); ax.set_ylabel("learning rate"); ax.legend()
ax.set_title("1/5 of the cycle growing, 4/5 descending")
plt.show()''', ["plot"]),
    ("md", """\
## cut_div moves the peak; momentum mirrors the learning rate

`cut_div = 2` gives a symmetric triangle, `cut_div = 10` a steeper climb. With
four values the preview has a momentum panel too."""),
    ("code", '''\
fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
for ax, cut_div in zip(axes, [2, 5, 10]):
    values = schedules.preview(1000, lr=1.0, use_clr=(10, cut_div))
    ax.plot(values.iterations, values.lrs)
    ax.set_title(f"use_clr=(10, {cut_div})"); ax.set_xlabel("iteration")
axes[0].set_ylabel("learning rate")
plt.show()''', ["plot"]),
    ("code", "schedules.preview(1000, lr=1.0, use_clr=(20, 5, 0.95, 0.85)).plot()", ["plot"]),
    ("md", """\
## One cycle or several

`fit(lr, n_cycle, cycle_len=L, use_clr=...)` repeats the same triangle
`n_cycle` times, each `L` epochs long. The same six epochs as one cycle, two
cycles of three epochs, or three cycles of two:"""),
    ("code", '''\
fig, ax = plt.subplots(figsize=(7, 3.5))
for n_cycle, cycle_len in [(1, 6), (2, 3), (3, 2)]:
    values = schedules.preview(cycle_len * nb, lr=1.0, n_cycle=n_cycle, use_clr=(32, 5))
    ax.plot(values.iterations, values.lrs, label=f"fit(lr, {n_cycle}, cycle_len={cycle_len}, use_clr=(32, 5))")
ax.set_xlabel("iteration"); ax.set_ylabel("learning rate"); ax.legend(fontsize=8)
plt.show()''', ["plot"]),
    ("md", """\
## CircularLR against cosine annealing (SGDR), same budget

SGDR (`cycle_len` without `use_clr`) anneals with a cosine and restarts; its
first 5% of the first cycle runs at `lr / 100` as a warm-up. We give each
schedule the same number of epochs and the same peak learning rate, and
compare validation accuracy after every epoch."""),
    ("code", '''\
budget = EPOCHS
runs = {
    "SGDR: cycle_len=1, cycle_mult=2": dict(n_cycle=3, cycle_len=1, cycle_mult=2),
    f"SGDR: one cycle of {budget}": dict(n_cycle=1, cycle_len=budget),
    f"use_clr=(32, 5): one cycle of {budget}": dict(n_cycle=1, cycle_len=budget, use_clr=(32, 5)),
    f"use_clr=(32, 5): {budget} cycles of 1": dict(n_cycle=budget, cycle_len=1, use_clr=(32, 5)),
}
if USE_CIFAR10:  # 1 + 2 + 4 + 8 + 16 = 31 epochs of SGDR
    runs["SGDR: cycle_len=1, cycle_mult=2"] = dict(n_cycle=5, cycle_len=1, cycle_mult=2)

results = {}
for name, kwargs in runs.items():
    torch.manual_seed(0)
    learn = Learner(make_model(), data, metrics=[accuracy], progress=False, table=False)
    n_cycle = kwargs.pop("n_cycle")
    learn.fit(LR, n_cycle, **kwargs)
    results[name] = learn.sched
    accs = [m[0] for m in learn.sched.rec_metrics]
    print(f"{name:45s} {len(accs)} epochs, final accuracy {accs[-1]:.3f}")'''),
    ("code", '''\
fig, (ax_lr, ax_acc) = plt.subplots(1, 2, figsize=(12, 3.8))
for name, sched in results.items():
    ax_lr.plot(sched.iterations, sched.lrs, label=name)
    ax_acc.plot(range(1, len(sched.rec_metrics) + 1), [m[0] for m in sched.rec_metrics], marker="o", label=name)
ax_lr.set_xlabel("iteration"); ax_lr.set_ylabel("learning rate (recorded)")
ax_acc.set_xlabel("epoch"); ax_acc.set_ylabel("validation accuracy"); ax_acc.legend(fontsize=8)
plt.show()''', ["plot"]),
    ("md", """\
## Results

All four runs see the same data, in the same order, for the same number of
epochs, with the same peak learning rate; only the shape of the schedule
differs: how the learning rate gets to its peak (SGDR jumps there after its
warm-up, CircularLR climbs), how long it stays high, and whether it restarts.
Which shape wins depends on the problem and the budget; in clrfit each is a
one-argument change, and the recorded curves show exactly what every run did."""),
    ("code", TABLE_HELPER + '''

rows = []
for name, sched in results.items():
    accs = [m[0] for m in sched.rec_metrics]
    rows.append([name, len(accs), max(accs), accs[-1], sched.val_losses[-1]])
print(markdown_table(''' + repr(USE_CLR_COLUMNS) + ''', rows))''', ["table"]),
]

# --------------------------------------------------------------------------- 03 momentum / 1cycle

MOMENTUM_COLUMNS = ["optimizer", "lr schedule", "momentum", "final accuracy", "final val_loss"]

MOMENTUM = [
    ("md", """\
# Cyclical momentum and the 1cycle policy

Leslie Smith (2018) found that momentum should move *against* the learning
rate: high momentum while the learning rate is small, low momentum at the peak.
fastai 0.7 writes this as `use_clr_beta=(div, pct, max_mom, min_mom)`.

This notebook compares, with SGD and with Adam (where "momentum" is `betas[0]`):

1. a constant learning rate with constant momentum,
2. 1cycle with constant momentum (`use_clr_beta=(div, pct)`),
3. 1cycle with cyclical momentum (`use_clr_beta=(div, pct, 0.95, 0.85)`),

and then uses `lr_find2(wds=...)` to choose the weight decay."""),
    ("code", FLAG),
    ("code", '''\
import functools
import matplotlib.pyplot as plt
import torch
from clrfit import Learner, accuracy, datasets, models

if USE_CIFAR10:
    data = datasets.cifar10(CIFAR10_PATH, bs=128, download=True, num_workers=4)
    make_model, EPOCHS, SEEDS = models.resnet56, 30, [0]
else:
    torch.set_num_threads(1)  # this small CNN gains nothing from more threads, and on a busy CPU they slow it down
    data = datasets.mnist1d(bs=128)
    make_model, EPOCHS, SEEDS = models.mnist1d_cnn, 8, [0, 1]

def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)

def adam(params, lr):
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))

# Peak learning rates (from a range test on each optimizer) and the constant baseline's lr.
SETTINGS = {"SGD": dict(opt_fn=sgd, max_lr=1.0, constant_lr=0.1),
            "Adam": dict(opt_fn=adam, max_lr=1e-2, constant_lr=1e-3)}'''),
    ("md", """\
## Choosing weight decay with `lr_find2(wds=...)`

Smith's recipe: run the range test once per candidate weight decay and keep the
one whose loss goes lowest and stays stable to the largest learning rate.
Each test leaves the learner untouched, so they can run back to back."""),
    ("code", '''\
torch.manual_seed(0)
learn = Learner(make_model(), data, metrics=[accuracy], opt_fn=sgd, progress=False, table=False)
finder = {}
for wd in [1e-5, 1e-4, 1e-3, 1e-2]:
    learn.lr_find2(start_lr=1e-3, end_lr=10, num_it=60, wds=wd)
    finder[wd] = (list(learn.sched.lrs), list(learn.sched.losses))

fig, ax = plt.subplots(figsize=(7, 3.5))
for wd, (lrs, losses) in finder.items():
    ax.plot(lrs[5:], losses[5:], label=f"wds={wd:g}")
ax.set_xscale("log"); ax.set_xlabel("learning rate"); ax.set_ylabel("training loss (smoothed)")
ax.legend(); ax.set_title("lr_find2 for several weight decays")
plt.show()''', ["plot"]),
    ("code", '''\
best_wd = min(finder, key=lambda wd: min(finder[wd][1]))
print("lowest smoothed loss per weight decay:")
for wd, (lrs, losses) in finder.items():
    print(f"  wds={wd:g}: {min(losses):.4f} at lr {lrs[losses.index(min(losses))]:.3g}")
print(f"chosen: wds={best_wd:g}")'''),
    ("md", """\
## The comparison

Same model, data order, epochs and weight decay for every run; only the
learning-rate and momentum schedules change. Each run is repeated over the
seeds in `SEEDS` and averaged."""),
    ("code", '''\
VARIANTS = [  # (lr schedule, momentum, fit keyword arguments given the peak lr)
    ("constant", "constant 0.9", lambda top, const: dict(lrs=const, n_cycle=EPOCHS)),
    ("1cycle", "constant 0.9", lambda top, const: dict(lrs=top, n_cycle=1, cycle_len=EPOCHS, use_clr_beta=(10, 10))),
    ("1cycle", "cyclical 0.95-0.85", lambda top, const: dict(lrs=top, n_cycle=1, cycle_len=EPOCHS,
                                                             use_clr_beta=(10, 10, 0.95, 0.85))),
]

results, curves = [], {}
for opt_name, setting in SETTINGS.items():
    for schedule, momentum, make_kwargs in VARIANTS:
        accs, losses = [], []
        for seed in SEEDS:
            torch.manual_seed(seed)
            learn = Learner(make_model(), data, metrics=[accuracy], opt_fn=setting["opt_fn"], progress=False, table=False)
            learn.fit(wds=best_wd, **make_kwargs(setting["max_lr"], setting["constant_lr"]))
            accs.append(learn.sched.rec_metrics[-1][0])
            losses.append(learn.sched.val_losses[-1])
        curves[(opt_name, schedule, momentum)] = learn.sched
        results.append([opt_name, schedule, momentum, sum(accs) / len(accs), sum(losses) / len(losses)])
        print(f"{opt_name:5s} {schedule:9s} {momentum:19s} accuracy {results[-1][3]:.3f}")'''),
    ("md", """\
What the optimizer used in the last seed's runs: with Adam, `betas[0]` follows
the momentum schedule exactly as SGD's `momentum` does."""),
    ("code", '''\
fig, axes = plt.subplots(2, 2, figsize=(12, 5), sharex=True)
styles = ["-", "--", ":"]  # the curves overlap where two runs share a schedule
for col, opt_name in enumerate(SETTINGS):
    runs = [(key, sched) for key, sched in curves.items() if key[0] == opt_name]
    for style, ((_, schedule, momentum), sched) in zip(styles, runs):
        label = f"{schedule}, momentum {momentum}"
        axes[0, col].plot(sched.iterations, sched.lrs, linestyle=style, linewidth=2, label=label)
        axes[1, col].plot(sched.iterations, sched.momentums, linestyle=style, linewidth=2, label=label)
    axes[0, col].set_title(f"{opt_name}: learning rate")
    axes[1, col].set_title(f"{opt_name}: " + ("betas[0]" if opt_name == "Adam" else "momentum"))
    axes[1, col].set_xlabel("iteration")
axes[0, 0].legend(fontsize=8)
plt.show()''', ["plot"]),
    ("md", "Validation accuracy after each epoch (last seed):"),
    ("code", '''\
fig, ax = plt.subplots(figsize=(7, 3.5))
for (opt_name, schedule, momentum), sched in curves.items():
    ax.plot(range(1, len(sched.rec_metrics) + 1), [m[0] for m in sched.rec_metrics], marker="o",
            label=f"{opt_name}, {schedule}, {momentum}")
ax.set_xlabel("epoch"); ax.set_ylabel("validation accuracy"); ax.legend(fontsize=7)
plt.show()''', ["plot"]),
    ("md", """\
## Results (mean over seeds)

On MNIST-1D 1cycle beats a constant learning rate clearly, with SGD and with
Adam. Cyclical momentum matters much less here; Smith's argument for it is
that it lets the learning rate go higher without destabilising training, which
shows up in the range test (and on CIFAR-10) more than in a short run like
this one."""),
    ("code", TABLE_HELPER + '''

print(markdown_table(''' + repr(MOMENTUM_COLUMNS) + ''', results))''', ["table"]),
]

# --------------------------------------------------------------------------- 04 CLR modes

MODES_COLUMNS = ["mode", "base_lr", "max_lr", "max abs diff vs torch", "final accuracy"]

MODES = [
    ("md", """\
# The CLR modes of Smith (2015): `fit_cyclic` and PyTorch's `CyclicLR`

`learn.fit_cyclic(epochs, base_lr, max_lr, step_size_up, step_size_down, mode, gamma,
scale_fn, scale_mode, cycle_momentum, base_momentum, max_momentum)` takes exactly
the arguments of `torch.optim.lr_scheduler.CyclicLR` and produces exactly its
values. This notebook draws each mode, checks it against torch's own scheduler
driven on a dummy optimizer, trains with each, and picks `base_lr` and `max_lr`
with the LR range test."""),
    ("code", FLAG),
    ("code", '''\
import matplotlib.pyplot as plt
import torch
from torch.optim.lr_scheduler import CyclicLR as TorchCyclicLR
from clrfit import Learner, accuracy, datasets, models, schedules

if USE_CIFAR10:
    data = datasets.cifar10(CIFAR10_PATH, bs=128, download=True, num_workers=4)
    make_model, EPOCHS, GAMMA = models.resnet56, 24, 0.9999   # 391 steps per epoch
else:
    torch.set_num_threads(1)  # this small CNN gains nothing from more threads, and on a busy CPU they slow it down
    data = datasets.mnist1d(bs=128)
    make_model, EPOCHS, GAMMA = models.mnist1d_cnn, 8, 0.999    # 32 steps per epoch
nb = len(data.trn_dl)


def torch_cyclic(n, **kwargs):
    """lr and momentum torch's CyclicLR holds after t = 0 .. n-1 calls of step(), on a dummy SGD."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=kwargs["base_lr"], momentum=0.9)
    sched = TorchCyclicLR(opt, **kwargs)
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


def clrfit_cyclic(n, **kwargs):
    """The same values from clrfit's schedule (what fit_cyclic uses), evaluated without any optimizer."""
    values = schedules.preview(n, cyclic=kwargs)
    return values.lrs, values.momentums'''),
    ("md", """\
## The three modes, and torch's values on top

- `triangular`: the same triangle every cycle;
- `triangular2`: the amplitude halves every cycle;
- `exp_range`: the amplitude is multiplied by `gamma**iteration`, so `gamma`
  must be close to 1 (here 0.998 over 1200 iterations).

The dashed black line is torch; the assertion checks every value."""),
    ("code", '''\
N = 1200
MODE_ARGS = {
    "triangular": dict(mode="triangular"),
    "triangular2": dict(mode="triangular2"),
    "exp_range (gamma=0.998)": dict(mode="exp_range", gamma=0.998),
    "step_size_up=50, step_size_down=250": dict(step_size_up=50, step_size_down=250),
}
fig, axes = plt.subplots(len(MODE_ARGS), 2, figsize=(12, 2.2 * len(MODE_ARGS)), sharex=True)
for row, (name, extra) in enumerate(MODE_ARGS.items()):
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=150) | extra
    ours_lr, ours_mom = clrfit_cyclic(N, **kwargs)
    torch_lr, torch_mom = torch_cyclic(N, **kwargs)
    diff = max(max(abs(a - b) for a, b in zip(ours_lr, torch_lr)), max(abs(a - b) for a, b in zip(ours_mom, torch_mom)))
    assert diff < 1e-12, (name, diff)
    axes[row, 0].plot(ours_lr, label="clrfit"); axes[row, 0].plot(torch_lr, "k--", linewidth=0.8, label="torch")
    axes[row, 1].plot(ours_mom, color="C1"); axes[row, 1].plot(torch_mom, "k--", linewidth=0.8)
    axes[row, 0].set_ylabel("lr"); axes[row, 1].set_ylabel("momentum")
    axes[row, 0].set_title(f"{name}: max |clrfit - torch| = {diff:.1e}", fontsize=9)
axes[0, 0].legend(fontsize=8)
axes[-1, 0].set_xlabel("iteration"); axes[-1, 1].set_xlabel("iteration")
plt.show()''', ["plot"]),
    ("md", """\
A custom `scale_fn` works the same way; `scale_mode` says whether it receives the
cycle number or the iteration."""),
    ("code", '''\
kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=100, scale_fn=lambda x: 1 / (1 + 0.002 * x), scale_mode="iterations")
ours_lr, _ = clrfit_cyclic(N, **kwargs)
torch_lr, _ = torch_cyclic(N, **kwargs)
assert max(abs(a - b) for a, b in zip(ours_lr, torch_lr)) < 1e-12
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.plot(ours_lr, label="clrfit"); ax.plot(torch_lr, "k--", linewidth=0.8, label="torch")
ax.set_title("scale_fn=1 / (1 + 0.002 x), scale_mode='iterations'"); ax.set_xlabel("iteration"); ax.legend()
plt.show()''', ["plot"]),
    ("md", """\
## The LR range test bounds rule

Smith's rule: run the range test, take `base_lr` where the loss (or accuracy)
starts to improve and `max_lr` where it stops improving or turns ragged; use a
step size of 2 to 10 epochs. `lr_find2` applies the rule and returns the bounds
as `clr_bounds`. Smith's original test was linear; `linear=True` gives that."""),
    ("code", '''\
torch.manual_seed(0)
learn = Learner(make_model(), data, metrics=[accuracy], progress=False, table=False)
suggestion = learn.lr_find2(start_lr=1e-3, end_lr=1, num_it=4 * nb, linear=True)
bounds = suggestion.clr_bounds
print(suggestion)
learn.sched.plot(n_skip=2)''', ["plot"]),
    ("md", """\
## Training with `fit_cyclic`

Each mode with those bounds and `step_size_up = 2 * nb` (two epochs up, two
down); `exp_range` with `gamma` chosen so the amplitude decays over the run but
does not vanish (`gamma**iterations` is its scale). The learning rates and momenta recorded from the optimizer during the
fit are compared with torch's values for the same arguments."""),
    ("code", '''\
rows, fits = [], {}
for mode, extra in [("triangular", {}), ("triangular2", {}), ("exp_range", dict(gamma=GAMMA))]:
    kwargs = dict(base_lr=bounds.base_lr, max_lr=bounds.max_lr, step_size_up=2 * nb, mode=mode) | extra
    torch.manual_seed(0)
    learn = Learner(make_model(), data, metrics=[accuracy], progress=False, table=False)
    learn.fit_cyclic(EPOCHS, **kwargs)
    torch_lr, torch_mom = torch_cyclic(len(learn.sched.lrs), **kwargs)
    diff = max(max(abs(a - b) for a, b in zip(learn.sched.lrs, torch_lr)),
               max(abs(a - b) for a, b in zip(learn.sched.momentums, torch_mom)))
    assert diff < 1e-12, (mode, diff)
    fits[mode] = learn.sched
    rows.append([mode, bounds.base_lr, bounds.max_lr, f"{diff:.1e}", learn.sched.rec_metrics[-1][0]])
fits["triangular2"].plot_lr(show_epochs=True)''', ["plot"]),
    ("code", '''\
fig, ax = plt.subplots(figsize=(7, 3.2))
for mode, sched in fits.items():
    ax.plot(range(1, len(sched.rec_metrics) + 1), [m[0] for m in sched.rec_metrics], marker="o", label=mode)
ax.set_xlabel("epoch"); ax.set_ylabel("validation accuracy"); ax.legend()
plt.show()''', ["plot"]),
    ("md", "## Results"),
    ("code", TABLE_HELPER + '''

print(markdown_table(''' + repr(MODES_COLUMNS) + ''', rows))''', ["table"]),
]

# --------------------------------------------------------------------------- 05 super-convergence

SUPER_COLUMNS = ["schedule", "epochs", "judged", "reaches target at epoch", "best accuracy", "final accuracy"]

SUPER = [
    ("md", """\
# Super-convergence: 1cycle against a step schedule

Smith and Topin (2018) trained ResNet-56 on CIFAR-10 to about 92-93% accuracy
with one cycle of ~10,000 iterations, where the usual piecewise-constant
schedule (lr 0.1, divided by 10 twice; He et al. 2016) needed ~64,000-80,000.
fastai 0.7 wrote the 1cycle run as
`learn.fit(0.8, 1, cycle_len=95, use_clr_beta=(10, 13.68, 0.95, 0.85), wds=1e-4)`.

The comparison that matters is *epochs to accuracy*:

- the step schedule is one long run; it counts from the first epoch whose
  validation accuracy reaches the target (generous to it: accuracy may dip again);
- a 1cycle run is planned for a budget of `E` epochs and judged at its end, so
  we train several budgets and take the smallest one whose final accuracy
  reaches the target.

With `USE_CIFAR10 = True` (on a GPU) this notebook runs Smith's experiment with
ResNet-56. By default it runs the same comparison at small scale on MNIST-1D."""),
    ("code", FLAG),
    ("code", '''\
from dataclasses import dataclass
import matplotlib.pyplot as plt
import torch
from clrfit import Learner, accuracy, datasets, models, schedules

if USE_CIFAR10:
    data = datasets.cifar10(CIFAR10_PATH, bs=128, download=True, num_workers=4)
    make_model, TARGET = models.resnet56, 0.92
    ONE_CYCLE = dict(lr=0.8, budgets=[20, 35, 50], use_clr_beta=(10, 13.68, 0.95, 0.85))
    STEP = dict(lr=0.1, epochs=160, milestones=(80, 120))      # lr / 10 at epochs 80 and 120 (He et al.)
else:
    torch.set_num_threads(1)  # this small CNN gains nothing from more threads, and on a busy CPU they slow it down
    data = datasets.mnist1d(bs=128)
    make_model, TARGET = models.mnist1d_cnn, 0.97
    ONE_CYCLE = dict(lr=0.3, budgets=[2, 3, 4, 6, 8], use_clr_beta=(10, 13.68, 0.95, 0.85))
    STEP = dict(lr=0.1, epochs=24, milestones=(12, 18))
WD = 1e-4
nb = len(data.trn_dl)'''),
    ("md", """\
## A step schedule is a few lines

A schedule is any `clrfit.schedules.Schedule`: a pure function from the
iteration to the learning rate of every parameter group (and optionally the
momentum). `learn.train(schedule, n_epochs)` runs it. The 1cycle peak (0.3 on
MNIST-1D) is about where the LR range test of notebook 01 says the loss stops
improving (`clr_bounds.max_lr`); the step schedule uses the classic 0.1."""),
    ("code", '''\
@dataclass
class StepLR(schedules.Schedule):
    """lr * factor**k after the k-th milestone epoch; momentum untouched."""

    lr: float
    nb: int
    milestones: tuple
    factor: float = 0.1

    def __call__(self, t):
        k = sum(t // self.nb >= m for m in self.milestones)
        return [self.lr * self.factor**k], None


step = StepLR(STEP["lr"], nb, STEP["milestones"])
step.plot(STEP["epochs"] * nb)''', ["plot"]),
    ("md", "## The runs"),
    ("code", '''\
def accuracies(sched):
    return [m[0] for m in sched.rec_metrics]


def first_epoch_reaching(accs, target):
    """First epoch (1-based) whose validation accuracy reaches ``target``; None if never."""
    return next((i + 1 for i, a in enumerate(accs) if a >= target), None)


torch.manual_seed(0)
learn = Learner(make_model(), data, metrics=[accuracy], progress=False, table=False)
learn.train(step, STEP["epochs"], wds=WD)
step_sched = learn.sched
print(f"step schedule: {STEP['epochs']} epochs, final accuracy {accuracies(step_sched)[-1]:.3f}")

one_cycle = {}
for budget in ONE_CYCLE["budgets"]:
    torch.manual_seed(0)
    learn = Learner(make_model(), data, metrics=[accuracy], progress=False, table=False)
    learn.fit(ONE_CYCLE["lr"], 1, cycle_len=budget, use_clr_beta=ONE_CYCLE["use_clr_beta"], wds=WD)
    one_cycle[budget] = learn.sched
    print(f"1cycle, {budget} epochs: final accuracy {accuracies(learn.sched)[-1]:.3f}")

step_epochs = first_epoch_reaching(accuracies(step_sched), TARGET)
cycle_epochs = next((b for b in ONE_CYCLE["budgets"] if accuracies(one_cycle[b])[-1] >= TARGET), None)
print(f"epochs to {TARGET:.0%}: step schedule {step_epochs}, 1cycle {cycle_epochs}")'''),
    ("md", "## Epochs to accuracy"),
    ("code", '''\
fig, (ax_acc, ax_lr) = plt.subplots(1, 2, figsize=(12, 4))
step_accs = accuracies(step_sched)
ax_acc.plot(range(1, len(step_accs) + 1), step_accs, marker=".", color="C0",
            label="step schedule, accuracy after each epoch")
finals = [accuracies(one_cycle[b])[-1] for b in ONE_CYCLE["budgets"]]
ax_acc.plot(ONE_CYCLE["budgets"], finals, marker="o", color="C3", label="1cycle of E epochs, accuracy at its end")
ax_acc.axhline(TARGET, color="0.5", linestyle="--", linewidth=0.8, label=f"target {TARGET:.0%}")
for epochs, color in [(step_epochs, "C0"), (cycle_epochs, "C3")]:
    if epochs is not None:
        ax_acc.axvline(epochs, color=color, linestyle=":", linewidth=1.2)
ax_acc.set_ylim(max(0.0, TARGET - 0.2), 1.0)
ax_acc.set_xlabel("epochs"); ax_acc.set_ylabel("validation accuracy"); ax_acc.legend(fontsize=8, loc="lower right")
ax_acc.set_title("epochs to accuracy")

ax_lr.plot([i / nb for i in step_sched.iterations], step_sched.lrs, color="C0", label="step schedule")
shown = cycle_epochs or ONE_CYCLE["budgets"][-1]
ax_lr.plot([i / nb for i in one_cycle[shown].iterations], one_cycle[shown].lrs, color="C3", label=f"1cycle, {shown} epochs")
ax_lr.set_xlabel("epoch"); ax_lr.set_ylabel("learning rate (recorded)"); ax_lr.legend(fontsize=8)
plt.show()''', ["plot"]),
    ("code", "one_cycle[shown].plot_lr(show_epochs=True)", ["plot"]),
    ("md", """\
At this small scale the gap is smaller than Smith's ~8x on CIFAR-10: this
BatchNorm CNN learns MNIST-1D quickly even at a constant learning rate.
`benchmarks/superconvergence.py` repeats the comparison over three seeds and
grids of learning rates and budgets; its numbers are in
[benchmarks/RESULTS.md](../benchmarks/RESULTS.md)."""),
    ("code", TABLE_HELPER + '''

rows = [[f"step: lr {STEP['lr']}, /10 at {STEP['milestones']}", STEP["epochs"], "first epoch reaching it",
         step_epochs or "never", max(step_accs), step_accs[-1]]]
for budget, sched in one_cycle.items():
    accs = accuracies(sched)
    rows.append([f"1cycle: peak lr {ONE_CYCLE['lr']}", budget, "at its end",
                 budget if accs[-1] >= TARGET else "never", max(accs), accs[-1]])
print(f"target accuracy {TARGET:.0%}; epochs to target: step {step_epochs}, 1cycle {cycle_epochs}")
print(markdown_table(''' + repr(SUPER_COLUMNS) + ''', rows))''', ["table"]),
]

BOOKS = {
    "01_quickstart": (QUICKSTART, QUICKSTART_COLUMNS),
    "02_understanding_use_clr": (USE_CLR, USE_CLR_COLUMNS),
    "03_cyclical_momentum_and_1cycle": (MOMENTUM, MOMENTUM_COLUMNS),
    "04_clr_modes": (MODES, MODES_COLUMNS),
    "05_superconvergence": (SUPER, SUPER_COLUMNS),
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with deterministic cell ids and no outputs."""
    cells, columns = BOOKS[name]
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "clrfit": {"table_header": table_header(columns)},
    }
    for i, spec in enumerate(cells):
        kind, source = spec[0], textwrap.dedent(spec[1]).strip("\n")
        tags = list(spec[2]) if len(spec) > 2 else []
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"c{i:02d}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The file text of notebook ``name``."""
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write every notebook, or with ``--check`` report stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook differs")
    args = parser.parse_args(argv)
    stale = []
    for name in BOOKS:
        path = NOTEBOOKS / f"{name}.ipynb"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            NOTEBOOKS.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote notebooks/{path.name}")
    if stale:
        print("out of date (run python tools/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
