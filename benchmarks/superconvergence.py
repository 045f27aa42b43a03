"""Super-convergence on MNIST-1D: epochs to a target validation accuracy, constant lr vs 1cycle.

Both sides train the ``--model`` (default ``clrfit.models.mnist1d_cnn()``; or the
MNIST-1D paper's CNN, with or without BatchNorm) with SGD (momentum 0.9) and L2
weight decay on ``clrfit.datasets.mnist1d()`` (4000 train / 1000 validation,
generated offline), over the same seeds, in one run:

* constant lr: ``learn.fit(lr, budget)`` for every lr of a small grid; the
  epochs a given lr needs is the first epoch at which *every* seed has reached
  the target; the best lr is the one needing fewest epochs.
* 1cycle: ``learn.fit(lr, 1, cycle_len=E, use_clr_beta=(10, 13.68, 0.95, 0.85))``
  for growing budgets ``E`` and a small grid of peak lrs; the epochs it needs is
  the smallest ``E`` whose *final* accuracy reaches the target on every seed
  (a 1cycle run has to be planned, so it is judged at its end only).

Prints, for each target, both epoch counts, the ratio 1cycle / constant, and the
accuracies each side ends with. The issue's target: ratio <= 1/4 at equal or
better final accuracy, over at least 3 seeds.

    python benchmarks/superconvergence.py                  # full run (minutes on 2 CPU cores)
    python benchmarks/superconvergence.py --quick          # smoke run
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from clrfit import Learner, accuracy
from clrfit.datasets import mnist1d
from clrfit.models import mnist1d_cnn

USE_CLR_BETA = (10, 13.68, 0.95, 0.85)


@dataclass
class Run:
    """Validation accuracy after each epoch of one training run."""

    kind: str
    lr: float
    seed: int
    epochs: int
    accs: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def first_epoch_reaching(self, target: float) -> int | None:
        """1-based epoch at which the accuracy first reaches ``target`` (None if never)."""
        return next((i + 1 for i, a in enumerate(self.accs) if a >= target), None)


def sgd(params, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (1cycle overrides the momentum with its own schedule)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def paper_cnn(batchnorm: bool = False, channels: int = 25) -> nn.Sequential:
    """The CNN shape of the MNIST-1D paper (Greydanus 2020): three stride-2 convolutions, a linear head.

    Its published accuracy on MNIST-1D is about 94%, the issue's target; with
    ``batchnorm`` a BatchNorm follows each convolution (not in the paper).
    """
    layers: list[nn.Module] = []
    for c_in, kernel in ((1, 5), (channels, 3), (channels, 3)):
        layers.append(nn.Conv1d(c_in, channels, kernel, stride=2, padding=1))
        layers += [nn.BatchNorm1d(channels)] if batchnorm else []
        layers.append(nn.ReLU())
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 5, 10))  # 40 -> 19 -> 10 -> 5 positions


MODELS = {
    "cnn1d": mnist1d_cnn,                               # clrfit's BatchNorm CNN, 6 conv layers, 97k parameters
    "paper-cnn": paper_cnn,                             # the paper's shape, no normalisation, 5k parameters
    "paper-cnn-bn": lambda: paper_cnn(batchnorm=True),  # the same with BatchNorm
}

_DATA = {}


def train(kind: str, lr: float, seed: int, epochs: int, wd: float, bs: int, threads: int, model: str) -> Run:
    """One run: constant ``lr`` for ``epochs`` epochs, or one 1cycle of ``epochs`` epochs peaking at ``lr``."""
    torch.set_num_threads(threads)
    if bs not in _DATA:
        _DATA[bs] = mnist1d(bs=bs)  # generated once, then read from clrfit's cache
    data = _DATA[bs]
    torch.manual_seed(seed)
    learn = Learner(MODELS[model](), data, opt_fn=sgd, metrics=[accuracy], progress=False, table=False)
    start = time.perf_counter()
    if kind == "constant":
        learn.fit(lr, epochs, wds=wd)
    else:
        learn.fit(lr, 1, cycle_len=epochs, use_clr_beta=USE_CLR_BETA, wds=wd)
    accs = [m[0] for m in learn.sched.rec_metrics]
    return Run(kind, lr, seed, epochs, accs, time.perf_counter() - start)


def constant_epochs(runs: list[Run], target: float) -> tuple[int | None, float | None]:
    """Epochs by which every seed reached ``target``, and the mean accuracy at that epoch."""
    firsts = [r.first_epoch_reaching(target) for r in runs]
    if None in firsts:
        return None, None
    epoch = max(firsts)
    return epoch, statistics.mean(r.accs[epoch - 1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn1d",
                        help="cnn1d: clrfit.models.mnist1d_cnn; paper-cnn(-bn): the MNIST-1D paper's CNN (+ BatchNorm)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", default="0.94,0.97,0.98", help="validation accuracies, the first is the main one")
    parser.add_argument("--constant-lrs", default="0.01,0.03,0.1,0.3")
    parser.add_argument("--constant-epochs", type=int, default=30, help="budget of each constant-lr run")
    parser.add_argument("--one-cycle-lrs", default="0.03,0.1,0.3,1.0", help="peak lrs of the 1cycle runs")
    parser.add_argument("--one-cycle-epochs", default="1,2,3,4,5,6,8,10,12", help="1cycle budgets to try, ascending")
    parser.add_argument("--wd", type=float, default=5e-4)
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest for this small CNN)")
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes (one per core)")
    parser.add_argument("--json", help="also write every run's accuracies here")
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny grids: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.constant_lrs, args.constant_epochs = 1, "0.1", 4
        args.one_cycle_lrs, args.one_cycle_epochs, args.targets = "0.3,1.0", "1,2", "0.5"
    targets = [float(t) for t in args.targets.split(",")]
    seeds = list(range(args.seeds))
    data = _DATA[args.bs] = mnist1d(bs=args.bs)
    nb = len(data.trn_dl)
    print(f"MNIST-1D {len(data.trn_ds)}/{len(data.val_ds)}, bs {args.bs} ({nb} steps/epoch), model {args.model}, "
          f"SGD momentum 0.9, wd {args.wd}, seeds {seeds}, torch {torch.__version__}, "
          f"{args.workers} worker(s) x {args.threads} thread(s)")
    started = time.perf_counter()

    pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) if args.workers > 1 else None

    def run_all(jobs: list[tuple[str, float, int, int]]) -> list[Run]:
        """Runs are independent and seeded, so running them in parallel changes no number."""
        full = [(*job, args.wd, args.bs, args.threads, args.model) for job in jobs]
        if pool is None:
            return [train(*job) for job in full]
        return list(pool.map(train, *zip(*full)))

    constant_lrs = [float(v) for v in args.constant_lrs.split(",")]
    jobs = [("constant", lr, s, args.constant_epochs) for lr in constant_lrs for s in seeds]
    results = iter(run_all(jobs))
    constant: dict[float, list[Run]] = {lr: [next(results) for _ in seeds] for lr in constant_lrs}
    for lr, runs in constant.items():
        print(f"constant lr {lr:<6g} first epoch >= target per seed: "
              + ", ".join(f"{t:.0%}: {[r.first_epoch_reaching(t) for r in runs]}" for t in targets)
              + f"; acc after {args.constant_epochs} epochs {statistics.mean(r.accs[-1] for r in runs):.4f}"
              + f" ({statistics.mean(r.seconds for r in runs):.1f}s/run)", flush=True)

    one_cycle: dict[tuple[float, int], list[Run]] = {}
    budgets = [int(v) for v in args.one_cycle_epochs.split(",")]
    active = [float(v) for v in args.one_cycle_lrs.split(",")]
    for epochs in budgets:
        results = iter(run_all([("1cycle", lr, s, epochs) for lr in active for s in seeds]))
        for lr in list(active):
            runs = one_cycle[(lr, epochs)] = [next(results) for _ in seeds]
            finals = [r.accs[-1] for r in runs]
            print(f"1cycle peak lr {lr:<5g} {epochs:>2} epochs: final acc per seed {[round(a, 4) for a in finals]}", flush=True)
            if min(finals) >= max(targets):
                active.remove(lr)  # longer cycles are not needed for any target
        if not active:
            break
    if pool is not None:
        pool.shutdown()

    summary = []
    for target in targets:
        best_const = None
        for lr, runs in constant.items():
            epoch, acc = constant_epochs(runs, target)
            if epoch is not None and (best_const is None or (epoch, -acc) < (best_const[1], -best_const[2])):
                best_const = (lr, epoch, acc, statistics.mean(r.accs[-1] for r in runs))
        best_cycle = None
        for (lr, epochs), runs in one_cycle.items():
            finals = [r.accs[-1] for r in runs]
            if min(finals) >= target:
                acc = statistics.mean(finals)
                if best_cycle is None or (epochs, -acc) < (best_cycle[1], -best_cycle[2]):
                    best_cycle = (lr, epochs, acc)
        row = {"target": target, "constant": best_const, "one_cycle": best_cycle}
        print(f"\ntarget {target:.0%} validation accuracy (every one of {len(seeds)} seeds):")
        if best_const is None:
            print(f"  constant lr: not reached within {args.constant_epochs} epochs by any lr of the grid")
        else:
            print(f"  constant lr {best_const[0]:g}: {best_const[1]} epochs (mean acc then {best_const[2]:.4f}; "
                  f"after {args.constant_epochs} epochs {best_const[3]:.4f})")
        if best_cycle is None:
            print(f"  1cycle: not reached with budgets up to {budgets[-1]} epochs")
        else:
            print(f"  1cycle peak lr {best_cycle[0]:g}: {best_cycle[1]} epochs (mean final acc {best_cycle[2]:.4f})")
        if best_const and best_cycle:
            ratio = best_cycle[1] / best_const[1]
            better = best_cycle[2] >= best_const[2]
            verdict = "met" if ratio <= 0.25 and better else "MISSED"
            row.update(ratio=ratio, accuracy_equal_or_better=better)
            print(f"  ratio 1cycle / constant = {best_cycle[1]}/{best_const[1]} = {ratio:.2f}; "
                  f"1cycle final acc {'>=' if better else '<'} constant's; target (<= 0.25, acc >=): {verdict}")
        summary.append(row)
    print(f"\ntotal time {time.perf_counter() - started:.0f}s")
    if args.json:
        runs = [vars(r) for rs in list(constant.values()) + list(one_cycle.values()) for r in rs]
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
