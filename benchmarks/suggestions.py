"""How far the range-test suggestions can be trusted: the synthetic curve family and real sweeps.

Part 1, the curve family of ``tests/curves.py`` (kinds clean, plateau, bump, diverged, blowup; log and
linear sweeps; 20 to 500 points; uniform noise of 2, 5 and 10% of the fall over ``--seeds-curves``
seeds): per rule, the share of noisy curves whose suggestion is within 0.3 decades of the same curve's
noise-free answer, and the share with a note.

Part 2, real ``lr_find2`` sweeps (1e-5 .. 10) over ``--seeds`` seeds (model init and data order):
MNIST-1D CNN fresh, the same CNN after ``learn.fit(0.3, 2)`` (trained), a regression MLP with MSE
loss and batch 4, and the CNN with Adam; 20, 100 and 300 iterations. Per rule: the share of runs with
a note, the share with no value (nan), and the share within 0.3 decades of the median of the
300-iteration sweeps (the reference a user would get from the longest sweep).

    python benchmarks/suggestions.py [--seeds 3] [--seeds-curves 20] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the curve family lives with the tests
from curves import KINDS, LENGTHS, NOISE_LEVELS, SWEEPS, curve, decades  # noqa: E402

from clrfit import Learner, ModelData, accuracy  # noqa: E402
from clrfit.suggest import suggest  # noqa: E402

RULES = ("minimum", "steep", "valley", "base_lr", "max_lr")
NOTE_OF = {"minimum": "minimum", "steep": "steep", "valley": "valley", "base_lr": "clr_bounds", "max_lr": "clr_bounds"}
TOLERANCE = 0.3


def family(n_seeds: int, lengths: tuple[int, ...]) -> None:
    """Part 1: per noise level and length, over kinds and sweeps, the share within 0.3 decades and with a note."""
    print(f"Part 1: curve family ({len(KINDS)} kinds x {len(SWEEPS)} sweeps x {n_seeds} seeds per cell)")
    header = f"{'noise':>5} {'points':>6}  " + "  ".join(f"{r:>8}" for r in RULES) + "   notes (min/steep/valley/clr)"
    print(header)
    worst = {r: 1.0 for r in RULES}
    for noise in NOISE_LEVELS:
        for n in lengths:
            within = {r: 0 for r in RULES}
            noted = {r: 0 for r in ("minimum", "steep", "valley", "clr_bounds")}
            total = 0
            for sweep in SWEEPS:
                for kind in KINDS:
                    ref = suggest(*curve(kind, n, sweep), n_boot=0).as_dict()
                    cell = {r: 0 for r in RULES}
                    for seed in range(n_seeds):
                        s = suggest(*curve(kind, n, sweep, noise, seed))
                        d = s.as_dict()
                        for r in RULES:
                            hit = decades(d[r], ref[r]) <= TOLERANCE
                            within[r] += hit
                            cell[r] += hit
                        for name in noted:
                            noted[name] += name in s.notes
                        total += 1
                    for r in RULES:
                        worst[r] = min(worst[r], cell[r] / n_seeds)
            shares = "  ".join(f"{within[r] / total:>8.1%}" for r in RULES)
            notes = "/".join(f"{noted[k] / total:.0%}" for k in noted)
            print(f"{noise:>5.0%} {n:>6}  {shares}   {notes}")
    print("worst single cell (kind, sweep, length, noise): " + ", ".join(f"{r} {worst[r]:.0%}" for r in RULES))


# --------------------------------------------------------------------------- real sweeps


def mnist1d_learner(seed: int, adam: bool = False) -> Learner:
    from clrfit.datasets import mnist1d
    from clrfit.models import mnist1d_cnn

    torch.manual_seed(seed)
    opt_fn = (lambda params, lr=1e-3: torch.optim.Adam(params, lr=lr)) if adam else None
    data = mnist1d(bs=128, generator=torch.Generator().manual_seed(seed))
    return Learner(mnist1d_cnn(), data, opt_fn=opt_fn, metrics=[accuracy], progress=False, table=False)


def regression_learner(seed: int) -> Learner:
    g = torch.Generator().manual_seed(1000)
    x = torch.randn(640, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(640, 1, generator=g))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    data = ModelData.from_tensors(x[:512], y[:512], x[512:], y[512:], bs=4, val_bs=64,
                                  generator=torch.Generator().manual_seed(seed))
    return Learner(model, data, crit=nn.MSELoss(), progress=False, table=False)


def make(scenario: str, seed: int) -> Learner:
    if scenario == "cnn fresh":
        return mnist1d_learner(seed)
    if scenario == "cnn trained":
        learn = mnist1d_learner(seed)
        learn.fit(0.3, 2)
        return learn
    if scenario == "mlp mse bs4":
        return regression_learner(seed)
    if scenario == "cnn adam":
        return mnist1d_learner(seed, adam=True)
    raise ValueError(scenario)


def real_sweeps(n_seeds: int, iterations: tuple[int, ...]) -> None:
    """Part 2: real lr_find2 sweeps; notes, nan and agreement with the longest sweep's median."""
    print(f"\nPart 2: real lr_find2 sweeps (1e-5 .. 10), {n_seeds} seeds each")
    print(f"{'scenario':<12} {'num_it':>6}  " + "  ".join(f"{r:>16}" for r in RULES))
    print(f"{'':<12} {'':>6}  " + "  ".join(f"{'note/nan/within':>16}" for _ in RULES))
    for scenario in ("cnn fresh", "cnn trained", "mlp mse bs4", "cnn adam"):
        runs: dict[int, list] = {}
        for num_it in iterations:
            runs[num_it] = []
            for seed in range(n_seeds):
                learn = make(scenario, seed)
                start = time.perf_counter()
                s = learn.lr_find2(start_lr=1e-5, end_lr=10, num_it=num_it)
                runs[num_it].append((s, time.perf_counter() - start))
        longest = max(iterations)
        ref = {}
        for r in RULES:
            logs = [math.log10(s.as_dict()[r]) for s, _ in runs[longest] if math.isfinite(s.as_dict()[r])]
            ref[r] = 10 ** statistics.median(logs) if logs else math.nan
        for num_it in iterations:
            cells = []
            for r in RULES:
                ss = [s for s, _ in runs[num_it]]
                note = sum(NOTE_OF[r] in s.notes for s in ss) / len(ss)
                nan = sum(not math.isfinite(s.as_dict()[r]) for s in ss) / len(ss)
                within = sum(decades(s.as_dict()[r], ref[r]) <= TOLERANCE for s in ss) / len(ss)
                cells.append(f"{note:>4.0%}/{nan:>4.0%}/{within:>4.0%}")
            secs = statistics.median(t for _, t in runs[num_it])
            print(f"{scenario:<12} {num_it:>6}  " + "  ".join(f"{c:>16}" for c in cells) + f"   ({secs:.1f}s/sweep)")
        print(f"{'':<12} {'median':>6}  " + "  ".join(f"{ref[r]:>16.3g}" for r in RULES) + f"   (num_it={longest})")
        example = runs[longest][0][0]
        for name, note in example.notes.items():
            print(f"{'':<12} seed 0, num_it={longest}, {name}: {note[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per real sweep")
    parser.add_argument("--seeds-curves", type=int, default=20, help="seeds per synthetic curve")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="fewer lengths and seeds (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    lengths = (20, 100) if args.quick else LENGTHS
    family(5 if args.quick else args.seeds_curves, lengths)
    real_sweeps(1 if args.quick else args.seeds, (20, 100) if args.quick else (20, 100, 300))


if __name__ == "__main__":
    main()
