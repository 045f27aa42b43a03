"""The data path: a hand-written loop over a DataLoader vs clrfit over a DataLoader vs clrfit over a TensorLoader.

Three ways to train the same model from the same initial weights on MNIST-1D
(4000 train / 1000 validation, batch 128, shuffled, 1cycle, SGD momentum,
validation with loss and accuracy after every epoch, validation batch 256 in
all three):

    (a) raw         a plain PyTorch loop over ``DataLoader(TensorDataset)``
    (b) dataloader  ``Learner.fit`` on ``ModelData.from_tensors(..., loader="torch")``
    (c) tensor      ``Learner.fit`` on ``ModelData.from_tensors(...)`` (the TensorLoader default)

for two models: a 40-32-10 MLP and ``clrfit.models.mnist1d_cnn``. Every run
builds its loaders (and learner) inside the timed region. Everything is one
process with one torch thread (``--threads``).

Noise. On a shared machine a single run can be 10-50% off, far more than the
1-3% the loader is worth on the CNN. So the script runs many short rounds;
each round runs the three paths of each model back to back, in an order that
cycles through all six permutations (every path in every position equally
often), and the per-round ratios b/a and c/a compare runs a few seconds apart.
It reports, over rounds, the median ratio of wall time and of process CPU time,
their quartiles (IQR), min-max, and a distribution-free 95% confidence interval
of the median (order statistics of the binomial), and the number of rounds.

Where the time goes (``--split-rounds``, run after the timed rounds): the same
runs with each loader's ``next()`` timed (a subclass that clocks its
iterator), giving per epoch the training-batch fetch, the validation-batch
fetch and the rest (model compute plus each path's loop: schedule, callbacks,
recorder, validation bookkeeping, setup). The split runs are not part of the
ratios above. The fetch times are small and so precise; the CNN's "rest" is
its compute and as noisy as the totals, but the MLP's "rest" difference
(tensor - raw) is clrfit's loop cost over the hand-written loop, which does not
depend on the model. With both models the script also prints a composed
estimate of the CNN's c/a: 1 + (the CNN runs' fetch difference + the MLP runs'
loop difference) / the CNN's raw epoch. It is an estimate from parts (it
assumes the compute is the same in all paths, which it is: same model, same
batches), not a measurement of c/a.

Accuracy: the final validation accuracy of each path, mean and range over
rounds (each round has its own seed). (a) and (b) draw the same shuffles
(``torch.manual_seed`` before each), so they end with identical weights; (c)
reseeds its own generator from the global RNG, so it draws other shuffles and
its accuracy differs only by the order.

    python benchmarks/data_path.py [--rounds 40] [--epochs 1] [--split-rounds 30] [--models mlp,cnn] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's clrfit, not an installed one

from clrfit import Learner, ModelData, accuracy  # noqa: E402
from clrfit.datasets import mnist1d_arrays  # noqa: E402
from clrfit.models import mnist1d_cnn  # noqa: E402

LR, DIV, PCT, MAX_MOM, MIN_MOM = 0.5, 10.0, 10.0, 0.95, 0.85
PATHS = ("raw", "dataloader", "tensor")
ORDERS = list(itertools.permutations(PATHS))  # round r runs ORDERS[r % 6]


def mlp() -> nn.Module:
    """The 40-32-10 MLP."""
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))


MODELS = {"mlp": mlp, "cnn": mnist1d_cnn}


def one_cycle(t: int, n: int) -> tuple[float, float]:
    """1cycle lr and momentum at step t of n (SCHEDULES.md), written out by hand for the raw loop."""
    c = int(n * (1 - PCT / 100) / 2)
    if t > 2 * c:
        return LR * (1 - 0.99 * (t - 2 * c) / (n - 2 * c)) / DIV, MAX_MOM
    p = t / c if t <= c else 1 - (t - c) / c
    return LR * (1 + p * (DIV - 1)) / DIV, MAX_MOM - p * (MAX_MOM - MIN_MOM)


def raw_fit(model: nn.Module, tensors, bs: int, epochs: int, wrap: Callable[[Any], Any] = lambda dl: dl) -> float:
    """(a): the plain loop over standard DataLoaders; returns the last validation accuracy."""
    x_trn, y_trn, x_val, y_val = tensors
    trn_dl = wrap(DataLoader(TensorDataset(x_trn, y_trn), batch_size=bs, shuffle=True))
    val_dl = wrap(DataLoader(TensorDataset(x_val, y_val), batch_size=2 * bs))
    opt = torch.optim.SGD(model.parameters(), lr=LR / DIV, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    n, t, acc = epochs * len(trn_dl), 0, 0.0
    for _ in range(epochs):
        model.train()
        for xb, yb in trn_dl:
            lr, mom = one_cycle(t, n)
            for g in opt.param_groups:
                g["lr"], g["momentum"] = lr, mom
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t += 1
        model.eval()
        with torch.no_grad():
            correct = total_loss = 0.0
            for xb, yb in val_dl:
                pred = model(xb)
                total_loss += crit(pred, yb) * len(yb)
                correct += (pred.argmax(-1) == yb).sum()
        acc = float(correct) / len(x_val)
    return acc


def learner_fit(model: nn.Module, tensors, bs: int, epochs: int, loader: str,
                wrap: Callable[[Any], Any] = lambda dl: dl) -> float:
    """(b) or (c): the same training through clrfit; returns the last validation accuracy."""
    data = ModelData.from_tensors(*tensors, bs=bs, loader=loader)
    data.trn_dl, data.val_dl = wrap(data.trn_dl), wrap(data.val_dl)
    learn = Learner(model, data, metrics=[accuracy], progress=False, table=False)
    learn.fit(LR, 1, cycle_len=epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM))
    return learn.sched.rec_metrics[-1][0]


def run(model_name: str, path: str, init_state: dict, tensors, bs: int, epochs: int, seed: int,
        wrap: Callable[[Any], Any] = lambda dl: dl) -> dict[str, Any]:
    """One training run (loaders built inside): wall and process CPU seconds, accuracy, the trained model."""
    model = MODELS[model_name]()
    model.load_state_dict(init_state)
    torch.manual_seed(seed)  # (a) and (b) draw the same shuffles; (c) reseeds its generator from it
    start, cpu_start = time.perf_counter(), time.process_time()
    if path == "raw":
        acc = raw_fit(model, tensors, bs, epochs, wrap)
    else:
        acc = learner_fit(model, tensors, bs, epochs, "torch" if path == "dataloader" else "tensor", wrap)
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu_start, "acc": acc, "model": model}


# ---------------------------------------------------------------------- where the time goes


class FetchClock:
    """Seconds spent in the ``next()`` of the loaders it wraps, by name (``train`` / ``val``)."""

    def __init__(self) -> None:
        self.seconds = {"train": 0.0, "val": 0.0}
        self._names: dict[int, str] = {}

    def wrapper(self) -> Callable[[Any], Any]:
        """``wrap(dl)`` for :func:`raw_fit` / :func:`learner_fit`: the first loader is ``train``, the second ``val``."""
        def wrap(dl: Any) -> Any:
            if dl is None:
                return dl
            self._names[id(dl)] = "train" if not self._names else "val"
            base = type(dl)
            dl.__class__ = type(f"Clocked{base.__name__}", (base,), {"__iter__": _clocked_iter(self, base)})
            return dl
        return wrap

    def name(self, dl: Any) -> str:
        return self._names[id(dl)]


def _clocked_iter(clock: FetchClock, base: type) -> Callable:
    def __iter__(self):
        name = clock.name(self)
        start = time.perf_counter()
        it = base.__iter__(self)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                clock.seconds[name] += time.perf_counter() - start
                return
            clock.seconds[name] += time.perf_counter() - start
            yield batch
            start = time.perf_counter()
    return __iter__


def split(model_name: str, init_state: dict, tensors, bs: int, epochs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per epoch of each path's total, training fetch, validation fetch and the rest."""
    parts: dict[str, dict[str, list[float]]] = {p: {"total": [], "train": [], "val": [], "rest": []} for p in PATHS}
    for r in range(rounds):
        for path in ORDERS[r % len(ORDERS)]:
            clock = FetchClock()
            result = run(model_name, path, init_state, tensors, bs, epochs, seed=1000 + r, wrap=clock.wrapper())
            total, train, val = result["wall"], clock.seconds["train"], clock.seconds["val"]
            for key, value in (("total", total), ("train", train), ("val", val), ("rest", total - train - val)):
                parts[path][key].append(1000 * value / epochs)
    return {p: {k: statistics.median(v) for k, v in parts[p].items()} for p in PATHS}


def loader_only_ms(tensors, bs: int, repeats: int = 20) -> dict[str, float]:
    """Median ms to iterate one epoch without a model: shuffled training and in-order validation, both loaders."""
    from clrfit.loaders import TensorLoader

    x, y, xv, yv = tensors
    loaders = {"dataloader train": DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True),
               "tensor train": TensorLoader(x, y, batch_size=bs, shuffle=True),
               "dataloader val": DataLoader(TensorDataset(xv, yv), batch_size=2 * bs),
               "tensor val": TensorLoader(xv, yv, batch_size=2 * bs)}
    out = {}
    for name, dl in loaders.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _batch in dl:
                pass
            times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times)
    return out


# ---------------------------------------------------------------------- statistics


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: order statistics ``k`` and ``n + 1 - k``; None if n < 6."""
    n = len(values)
    tail = (1 - level) / 2
    k, cdf = 0, 0.0
    while True:  # the largest k with P(Binomial(n, 1/2) <= k - 1) <= tail
        nxt = cdf + math.comb(n, k) / 2 ** n
        if nxt > tail:
            break
        cdf, k = nxt, k + 1
    if k == 0:
        return None
    xs = sorted(values)
    return xs[k - 1], xs[n - k]


def summary(values: list[float]) -> str:
    """``median (IQR q1-q3, min-max, 95% CI of the median lo-hi, n)``."""
    med = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (med, med, med)
    ci = median_ci(values)
    ci_text = f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
    return f"{med:.3f} (IQR {q1:.3f}-{q3:.3f}, range {min(values):.3f}-{max(values):.3f}{ci_text}, n={len(values)})"


def main() -> None:
    """Interleave the three paths for each model; print times, ratios, the split and accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds; each runs every (model, path) once (default 40)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1: short runs, many rounds)")
    parser.add_argument("--split-rounds", type=int, default=30,
                        help="extra rounds with the loaders' fetch timed (default 30)")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated, from mlp, cnn (default both)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-valid", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: choose from {', '.join(MODELS)}; got {args.models!r}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    tensors = tuple(torch.from_numpy(a) for a in mnist1d_arrays(args.n_train, args.n_valid))
    inits = {}
    for name in models:
        torch.manual_seed(0)
        inits[name] = MODELS[name]().state_dict()
        for path in PATHS:  # warm-up (allocator, kernels) outside the measurement
            run(name, path, inits[name], tensors, args.bs, 1, 0)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(m, p): [] for m in models for p in PATHS}
    same_ab = {m: True for m in models}
    for r in range(args.rounds):
        for name in models:
            order = ORDERS[r % len(ORDERS)]
            out = {p: run(name, p, inits[name], tensors, args.bs, args.epochs, seed=r) for p in order}
            for p in PATHS:
                results[name, p].append(out[p])
            same_ab[name] &= all(torch.equal(a, b) for a, b in zip(out["raw"]["model"].state_dict().values(),
                                                                   out["dataloader"]["model"].state_dict().values()))
            for p in PATHS:
                out[p].pop("model")
            print(f"round {r} {name} ({'-'.join(order)}): " + "  ".join(f"{p} {out[p]['wall']:.3f}s" for p in PATHS) +
                  f"  c/a {out['tensor']['wall'] / out['raw']['wall']:.3f}"
                  f"  (CPU {out['tensor']['cpu'] / out['raw']['cpu']:.3f})", flush=True)
    splits = {name: split(name, inits[name], tensors, args.bs, args.epochs, args.split_rounds)
              for name in models if args.split_rounds > 0}
    loader_ms = loader_only_ms(tensors, args.bs)
    load_end = os.getloadavg()

    steps = args.epochs * -(-args.n_train // args.bs)
    print(f"\n{datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end")
    print(f"{args.rounds} rounds x {args.epochs} epoch(s) ({steps} steps, bs {args.bs}, "
          f"{args.n_train}/{args.n_valid} samples), path order cycling through all 6 permutations")
    print("loader only, one epoch without a model (ms): " +
          "  ".join(f"{k} {v:.2f}" for k, v in loader_ms.items()))
    for name in models:
        med = {p: statistics.median(r["wall"] for r in results[name, p]) for p in PATHS}
        ratio = {(p, kind): [x[kind] / a[kind] for x, a in zip(results[name, p], results[name, "raw"])]
                 for p in PATHS[1:] for kind in ("wall", "cpu")}
        print(f"{name}  raw {med['raw']:.3f}s  dataloader {med['dataloader']:.3f}s  tensor {med['tensor']:.3f}s  "
              f"b/a {statistics.median(ratio['dataloader', 'wall']):.3f}  "
              f"c/a {statistics.median(ratio['tensor', 'wall']):.3f}  (medians of per-round ratios, wall)")
        for p, label in (("tensor", "c/a"), ("dataloader", "b/a")):
            for kind in ("wall", "cpu"):
                print(f"{name}  {label} {kind:4s} {summary(ratio[p, kind])}")
        if name in splits:
            s = splits[name]
            print(f"{name}  split, ms per epoch (median of {args.split_rounds} runs per path): "
                  "total = train fetch + val fetch + rest")
            for p in PATHS:
                print(f"{name}    {p:10s} total {s[p]['total']:8.2f}  train fetch {s[p]['train']:7.2f}  "
                      f"val fetch {s[p]['val']:6.2f}  rest {s[p]['rest']:8.2f}")
            print(f"{name}    tensor - raw: fetch {s['tensor']['train'] + s['tensor']['val'] - s['raw']['train'] - s['raw']['val']:+.2f}"
                  f"  rest {s['tensor']['rest'] - s['raw']['rest']:+.2f}  total {s['tensor']['total'] - s['raw']['total']:+.2f}")
        if name == "cnn" and "mlp" in splits and name in splits:
            s, m = splits["cnn"], splits["mlp"]
            fetch = s["tensor"]["train"] + s["tensor"]["val"] - s["raw"]["train"] - s["raw"]["val"]
            loop = m["tensor"]["rest"] - m["raw"]["rest"]
            raw_epoch = 1000 * statistics.median(r["wall"] for r in results["cnn", "raw"]) / args.epochs
            print(f"cnn    composed estimate of c/a: 1 + (fetch {fetch:+.2f} + clrfit loop (mlp rest) {loop:+.2f}) "
                  f"/ raw epoch {raw_epoch:.1f} ms = {1 + (fetch + loop) / raw_epoch:.3f}")
        accs = {p: [r["acc"] for r in results[name, p]] for p in PATHS}
        mean = {p: statistics.mean(accs[p]) for p in PATHS}
        spread = "  ".join(f"{p} {min(accs[p]):.3f}-{max(accs[p]):.3f}" for p in PATHS)
        print(f"{name} accuracy raw {mean['raw']:.4f} dataloader {mean['dataloader']:.4f} tensor {mean['tensor']:.4f}"
              f"  (mean over rounds; range {spread}; raw and dataloader identical weights every round: {same_ab[name]})")


if __name__ == "__main__":
    main()
