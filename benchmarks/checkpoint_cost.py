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

import torch

from clrfit import Learner, ModelData
from clrfit.checkpoint import read_checkpoint

VARIANTS = {
    "off": dict(on_nan="ignore"),
    "nan-check": dict(),
    "restore": dict(on_nan="restore"),
    "ckpt/epoch": dict(checkpoint=True),
    "ckpt/10": dict(checkpoint=True, checkpoint_every=10),
    "ckpt/1": dict(checkpoint=True, checkpoint_every=1),
}


def make_learner(synthetic: bool, bs: int) -> Learner:
    """MNIST-1D CNN learner (SGD momentum 0.9, fp32, CPU unless CUDA is available)."""
    from clrfit.models import mnist1d_cnn

    if synthetic:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(5000, 1, 40, generator=g), torch.randint(0, 10, (5000,), generator=g)
        data = ModelData.from_tensors(x[:4000], y[:4000], x[4000:], y[4000:], bs=bs)
    else:
        from clrfit.datasets import mnist1d

        data = mnist1d(bs=bs)
    torch.manual_seed(0)
    return Learner(mnist1d_cnn(), data, progress=False, table=False)


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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of MNIST-1D")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    learn = make_learner(args.synthetic, args.bs)
    print(f"{learn.data!r}, mnist1d_cnn; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {learn.device}, {args.epochs} epochs per fit")
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
