"""Intra-op threads and ``learn.fit`` speed on CPU: one thread against more, on a quiet and a busy machine.

For each built-in model (the MNIST-1D CNN on MNIST-1D-shaped data, ResNet-20 on
CIFAR-shaped data) it times ``learn.fit`` over the same steps with each thread
count in ``--threads`` (default: 1 and torch's default, one per core), in
interleaved rounds (A B A B ...) so that load changes hit every setting alike,
and prints the median time per step and its ratio to one thread. ``--busy N``
starts N processes that spin on the CPU for the whole run, as other jobs on a
shared machine do. Run from the repository root, e.g.::

    python benchmarks/threads.py                 # the machine as it is
    python benchmarks/threads.py --busy 2        # with two competing processes
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from clrfit import Learner, ModelData  # noqa: E402
from clrfit.models import mnist1d_cnn, resnet20  # noqa: E402
from clrfit.threads import recommended_threads  # noqa: E402


def _spin(stop: "multiprocessing.synchronize.Event") -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _learner(model_name: str, n_steps: int, bs: int) -> Learner:
    g = torch.Generator().manual_seed(0)
    shape = (1, 40) if model_name == "cnn1d" else (3, 32, 32)
    n = n_steps * bs
    x, y = torch.randn(n + bs, *shape, generator=g), torch.randint(0, 10, (n + bs,), generator=g)
    data = ModelData.from_tensors(x[:n], y[:n], x[n:], y[n:], bs=bs, shuffle=False)
    torch.manual_seed(0)
    model = mnist1d_cnn() if model_name == "cnn1d" else resnet20()
    return Learner(model, data, progress=False, table=False, device="cpu")


def time_per_step(learn: Learner, threads: int, n_steps: int) -> float:
    """Seconds per optimizer step of one ``learn.fit`` epoch on ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    learn.fit(0.01, 1)
    return (time.perf_counter() - start) / n_steps


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one table per model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn1d,resnet20", help="comma-separated: cnn1d, resnet20")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and torch's default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed fit")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--busy", type=int, default=0, help="CPU-spinning processes to run alongside")
    args = parser.parse_args(argv)

    default_threads = torch.get_num_threads()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, default_threads})
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"torch {torch.__version__}; {os.cpu_count()} cores; torch's default {default_threads} threads; "
              f"{args.busy} spinning processes; 1-min load {load:.2f}; {args.rounds} interleaved rounds of "
              f"{args.steps} steps, batch {args.bs}")
        for model_name in args.models.split(","):
            learn = _learner(model_name, args.steps, args.bs)
            n_params = sum(p.numel() for p in learn.model.parameters())
            time_per_step(learn, 1, args.steps)  # warm-up: first-call allocations, lazy inits
            times: dict[int, list[float]] = {t: [] for t in counts}
            for _ in range(args.rounds):
                for t in counts:
                    times[t].append(time_per_step(learn, t, args.steps))
            base = statistics.median(times[1]) if 1 in times else None
            policy = recommended_threads(n_params, "cpu", default=default_threads)
            print(f"\n{model_name} ({n_params:,} parameters; clrfit.threads recommends {policy})")
            print(f"{'threads':>8} {'ms/step':>9} {'min':>8} {'max':>8} {'vs 1 thread':>12}")
            for t in counts:
                med = statistics.median(times[t])
                ratio = f"{med / base:.2f}x" if base else "-"
                print(f"{t:>8} {med * 1e3:>9.2f} {min(times[t]) * 1e3:>8.2f} {max(times[t]) * 1e3:>8.2f} {ratio:>12}")
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
