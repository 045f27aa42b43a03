"""Cost of the reliability features per training iteration, relative to a fit with all of them off.

Variants, run on the same learner and alternating round by round:

- ``off``: ``on_nan="ignore"``, no checkpoint (no reliability callback at all);
- ``nan-check``: the default ``on_nan="raise"`` (divergence check after every loss read-back);
- ``restore``: ``on_nan="restore"`` (also a CPU copy of model and optimizer at the start of the fit);
- ``ckpt/epoch``: ``checkpoint=PATH`` (one atomic write with fsync at every epoch end);
- ``ckpt/10``, ``ckpt/1``: ``checkpoint_every=10`` / ``1`` iterations as well.

Prints ms per iteration per round, medians, ratios to ``off``, the checkpoint
size and the time of one write. Data and model: MNIST-1D (``clrfit.datasets.mnist1d``,
4000/1000 samples, batch 128: 32 steps per epoch) with ``clrfit.models.mnist1d_cnn``;
``--synthetic`` uses random data of the same shape.

    python benchmarks/checkpoint_cost.py [--epochs 2] [--rounds 5] [--threads 1] [--synthetic]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import add_common_args, mnist1d_learner  # benchmarks/ is on the path when a script runs

from clrfit import Learner
from clrfit.checkpoint import read_checkpoint

VARIANTS = {
    "off": dict(on_nan="ignore"),
    "nan-check": dict(),
    "restore": dict(on_nan="restore"),
    "ckpt/epoch": dict(checkpoint=True),
    "ckpt/10": dict(checkpoint=True, checkpoint_every=10),
    "ckpt/1": dict(checkpoint=True, checkpoint_every=1),
}


def time_fit(learn: Learner, epochs: int, options: dict, folder: Path) -> float:
    """Seconds per iteration of a 1cycle fit with ``options``."""
    options = dict(options)
    if options.pop("checkpoint", False):
        options["checkpoint"] = folder / "bench.ckpt"
    start = time.perf_counter()
    learn.fit(0.05, 1, cycle_len=epochs, use_clr_beta=(10, 10, 0.95, 0.85), **options)
    return (time.perf_counter() - start) / len(learn.sched.iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    add_common_args(parser)
    args = parser.parse_args()
    learn, described = mnist1d_learner(args)
    print(f"{described}, device {learn.device}, {args.epochs} epochs per fit")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        time_fit(learn, 1, VARIANTS["ckpt/epoch"], folder)  # warm-up
        rows: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            for name, options in VARIANTS.items():
                rows[name].append(time_fit(learn, args.epochs, options, folder))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f}" for k, v in rows.items()) + " ms/it")
        size = (folder / "bench.ckpt").stat().st_size
        n_saves = len(read_checkpoint(folder / "bench.ckpt")["callbacks"]["Recorder"]["iterations"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("median ms/it: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in med.items()))
    print("ratio to off: " + ", ".join(f"{k} {v / med['off']:.3f}" for k, v in med.items()))
    per_write = (med["ckpt/1"] - med["nan-check"]) * 1e3
    print(f"checkpoint file {size / 1e3:.0f} kB ({n_saves} iterations of history); "
          f"one write costs about {per_write:.2f} ms (ckpt/1 - nan-check, per iteration)")


if __name__ == "__main__":
    main()
