"""Cost of an LR range test per iteration, relative to a plain training iteration on the same data.

``lr_find2`` does one training step plus one validation batch (forward only) per
iteration, reads the loss back every step, and snapshots/restores the learner
once; a plain iteration is one training step of the same learner
(``learn.train(..., validate=False)``). Both run on the same learner, alternating
round by round; the script prints each round and the median seconds per
iteration and ratios (target: ``lr_find2 / plain <= 2``). ``hand`` is a
hand-written PyTorch sweep doing the same work per iteration as ``lr_find2``
(set the lr, one training step, one validation batch with loss and accuracy,
both losses read back to decide whether to stop) on a copy of the model, with
no snapshot: ``lr_find2 / hand`` is the range test's own cost (target <= 1.1).

Data and model: MNIST-1D (``clrfit.datasets.mnist1d``, 4000/1000 samples,
batch 128, so a validation batch is 256 samples) with ``clrfit.models.mnist1d_cnn``;
``--synthetic`` uses random data of the same shape instead.

    python benchmarks/lr_find_cost.py [--num-it 100] [--rounds 5] [--threads N] [--synthetic]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch

from _common import add_common_args, mnist1d_learner  # benchmarks/ is on the path when a script runs

from clrfit import Learner, accuracy
from clrfit.schedules import ConstantLR


def time_plain(learn: Learner, n: int) -> float:
    """Seconds per plain training iteration over ``n`` iterations."""
    epochs = -(-n // len(learn.data.trn_dl))
    schedule = ConstantLR((1e-3,) * learn.n_groups, total=epochs * len(learn.data.trn_dl))
    start = time.perf_counter()
    learn.train(schedule, epochs, validate=False)
    return (time.perf_counter() - start) / (epochs * len(learn.data.trn_dl))


def time_finder(learn: Learner, n: int, validate: bool) -> float:
    """Seconds per range-test iteration (snapshot and restore included)."""
    start = time.perf_counter()
    if validate:
        learn.lr_find2(start_lr=1e-5, end_lr=1.0, num_it=n, stop_dv=False)
    else:
        learn.lr_find(start_lr=1e-5, end_lr=1.0)
    steps = len(learn.sched.iterations)
    assert steps == (n if validate else len(learn.data.trn_dl)), steps
    return (time.perf_counter() - start) / steps


def time_hand(learn: Learner, n: int) -> float:
    """Seconds per iteration of a hand-written exponential sweep with one validation batch per step."""
    model = copy.deepcopy(learn.model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    train_batches = itertools.cycle(learn.data.trn_dl)
    val_batches = itertools.cycle(learn.data.val_dl)
    start = time.perf_counter()
    for i in range(n):
        for g in opt.param_groups:
            g["lr"] = 1e-5 * (1.0 / 1e-5) ** (i / (n - 1))
        xb, yb = next(train_batches)
        model.train()
        loss = crit(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            xv, yv = next(val_batches)
            pred = model(xv)
            stats = torch.stack([loss.detach().double(), crit(pred, yv).double(),
                                 (pred.argmax(-1) == yv).double().mean()]).tolist()
        if stats[0] != stats[0]:  # the stop decision needs the values on the host every step
            break
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-it", type=int, default=96, help="iterations per timed run (default 96: 3 epochs)")
    add_common_args(parser)
    args = parser.parse_args()
    learn, described = mnist1d_learner(args, metrics=[accuracy])
    print(f"{described}, device {learn.device}")
    time_plain(learn, len(learn.data.trn_dl))  # warm-up
    time_finder(learn, 10, validate=True)
    rows = {"plain": [], "lr_find": [], "lr_find2": [], "hand": []}
    for r in range(args.rounds):
        rows["plain"].append(time_plain(learn, args.num_it))
        rows["lr_find"].append(time_finder(learn, args.num_it, validate=False))
        rows["lr_find2"].append(time_finder(learn, args.num_it, validate=True))
        rows["hand"].append(time_hand(learn, args.num_it))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms/it" for k, v in rows.items())
              + f", lr_find2/plain {rows['lr_find2'][-1] / rows['plain'][-1]:.2f}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    per_round = [f / p for f, p in zip(rows["lr_find2"], rows["plain"])]
    print(f"median ms/it: plain {med['plain'] * 1e3:.2f}, lr_find {med['lr_find'] * 1e3:.2f}, "
          f"lr_find2 {med['lr_find2'] * 1e3:.2f}, hand {med['hand'] * 1e3:.2f}")
    print(f"ratio lr_find/plain {med['lr_find'] / med['plain']:.2f}; lr_find2/plain {med['lr_find2'] / med['plain']:.2f} "
          f"(median of per-round ratios {statistics.median(per_round):.2f}, target <= 2)")
    per_round_hand = [f / h for f, h in zip(rows["lr_find2"], rows["hand"])]
    print(f"ratio lr_find2/hand {med['lr_find2'] / med['hand']:.3f} (median of per-round ratios "
          f"{statistics.median(per_round_hand):.3f}, target <= 1.1)")


if __name__ == "__main__":
    main()
