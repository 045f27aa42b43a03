"""Write notebooks/06_clrfit_in_your_loop.ipynb from the cell sources below (no outputs).

Run from the repository root: ``python tools/make_notebook_06.py`` (writes it);
``--check`` exits 1 when the committed notebook differs from what this script
generates. ``tests/test_notebook_06.py`` executes it in a real kernel and checks
its numbers. Like the other notebooks, cells tagged ``plot`` display a picture
and the last cell, tagged ``table``, prints the results table whose header is
stored in the metadata (``clrfit.table_header``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NAME = "06_clrfit_in_your_loop"
PATH = ROOT / "notebooks" / f"{NAME}.ipynb"
COLUMNS = ["recipe", "optimizer steps", "peak lr at step", "max |lr used - schedule|", "max |momentum used - schedule|"]

CELLS = [
    ("md", """\
# clrfit's schedules in your own training loop

`clrfit.ScheduleLR` is a `torch.optim.lr_scheduler.LRScheduler`: any clrfit schedule
(fastai 0.7's `use_clr`, `use_clr_beta`, SGDR, or torch's `CyclicLR` / `OneCycleLR`
values) drives the optimizer of a loop you wrote, or of Lightning. It sets the
learning rate and the momentum (`betas[0]` for Adam) of every param group, exactly as
`learn.fit` would with the same arguments.

Two recipes, each checked against the schedule: a plain PyTorch loop and a Lightning
`Trainer`. The pictures show what the optimizer really used, read back from its
param groups at every `optimizer.step()`. Small synthetic data; CPU, a few seconds."""),
    ("code", """\
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from clrfit import ScheduleLR, schedules

torch.set_num_threads(1)  # tiny models: more threads only add overhead
torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :3].sum(1) > 0).long() + (x[:, 3:6].sum(1) > 0).long()
train_dl = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))


class Used:
    \"\"\"lr and momentum of the first param group each time optimizer.step() runs.\"\"\"

    def __init__(self, opt):
        self.lrs, self.moms = [], []
        opt.register_step_pre_hook(self.record)

    def record(self, opt, args, kwargs):
        group = opt.param_groups[0]
        self.lrs.append(group["lr"])
        self.moms.append(group["betas"][0] if "betas" in group else group["momentum"])"""),
    ("md", """\
## A plain loop

`ScheduleLR.from_fit` takes the schedule arguments of `learn.fit` plus
`steps_per_epoch`. Its constructor sets step 0's values; call `sched.step()` after
every `optimizer.step()`. Here: Smith's 1cycle with cyclical momentum,
`use_clr_beta=(10, 13.68, 0.95, 0.85)`, over one 8-epoch cycle."""),
    ("code", """\
model = make_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sched = ScheduleLR.from_fit(opt, 0.4, 1, cycle_len=8, use_clr_beta=(10, 13.68, 0.95, 0.85),
                            steps_per_epoch=len(train_dl))
plain = Used(opt)
losses = []
for epoch in range(8):
    for xb, yb in train_dl:
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.item())
print(f"{len(plain.lrs)} steps, mean loss of the first epoch {sum(losses[:16]) / 16:.3f}, "
      f"of the last {sum(losses[-16:]) / 16:.3f}")
print(sched.schedule)  # the schedule's phase table"""),
    ("code", """\
used_plain = schedules.ScheduleValues([[lr] for lr in plain.lrs], [[m] for m in plain.moms])
used_plain.plot(title="plain loop: what SGD used (use_clr_beta)")""", ["plot"]),
    ("md", """\
## Lightning

Return the scheduler from `configure_optimizers` with `"interval": "step"` so Lightning
calls `step()` after every optimizer step. Here torch's `OneCycleLR` values
(`ScheduleLR.from_one_cycle`, the arguments of `learn.fit_one_cycle`) with Adam:
the momentum goes to `betas[0]`."""),
    ("code", """\
import warnings

import lightning


class Module(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_model()

    def training_step(self, batch, batch_idx):
        xb, yb = batch
        return F.cross_entropy(self.net(xb), yb)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        self.used = Used(opt)
        self.sched = ScheduleLR.from_one_cycle(opt, 4, 0.01, steps_per_epoch=len(train_dl))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}


module = Module()
trainer = lightning.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Lightning's advice about DataLoader workers
    trainer.fit(module, train_dl)
print(f"{len(module.used.lrs)} steps with Lightning")"""),
    ("code", """\
used_lightning = schedules.ScheduleValues([[lr] for lr in module.used.lrs], [[m] for m in module.used.moms])
used_lightning.plot(title="Lightning: what Adam used (OneCycleLR values, betas[0])")""", ["plot"]),
    ("md", """\
## Check: used = scheduled

Each recipe's recorded values against the schedule evaluated on its own
(`schedule.values()`, no optimizer): the differences are exactly zero."""),
    ("code", """\
def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\\n".join(lines)


rows = []
for name, used, scheduler in [("plain loop", plain, sched), ("Lightning", module.used, module.sched)]:
    planned = scheduler.schedule.values()
    rows.append([name, len(used.lrs), planned.lrs.index(max(planned.lrs)),
                 max(abs(a - b) for a, b in zip(used.lrs, planned.lrs)),
                 max(abs(a - b) for a, b in zip(used.moms, planned.momentums))])
print(markdown_table(COLUMNS, rows))""", ["table"]),
]


def build() -> nbformat.NotebookNode:
    """The notebook, output-free, with stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "clrfit": {"table_header": "| " + " | ".join(COLUMNS) + " |"},
    }
    columns_line = f"COLUMNS = {COLUMNS!r}\n\n\n"
    for i, spec in enumerate(CELLS):
        kind, source = spec[0], spec[1]
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(columns_line + source if "table" in (spec[2] if len(spec) > 2 else []) else source)
        cell.id = f"nb06-{i:02d}"
        if len(spec) > 2:
            cell.metadata["tags"] = list(spec[2])
        nb.cells.append(cell)
    return nb


def render() -> str:
    """The notebook's file contents."""
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the notebook, or with ``--check`` report whether the committed one is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed notebook is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text(encoding="utf-8") != text:
            print(f"{PATH.relative_to(ROOT)} is out of date: run python tools/make_notebook_06.py", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
