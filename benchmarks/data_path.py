"""The data path: a hand-written loop over a DataLoader vs clrfit over a DataLoader vs clrfit over a TensorLoader.

Three ways to train the same model from the same initial weights on MNIST-1D
(4000 train / 1000 validation, batch 128, shuffled, 1cycle, SGD momentum,
validation with accuracy after every epoch):

    (a) raw         a plain PyTorch loop over ``DataLoader(TensorDataset)``
    (b) dataloader  ``Learner.fit`` on ``ModelData.from_tensors(..., loader="torch")``
    (c) tensor      ``Learner.fit`` on ``ModelData.from_tensors(...)`` (the TensorLoader default)

for two models: a 40-32-10 MLP and ``clrfit.models.mnist1d_cnn``. Each round
runs all six (model, path) pairs, rotating the order of the three paths, so
drifting machine load hits them alike; everything is one process. Per model it
prints the median wall time of each path, the medians of the per-round ratios
b/a and c/a (targets for c/a: <= 0.6 for the MLP, <= 0.98 for the CNN), the
same ratios of process CPU time (steadier when other jobs share the cores), and
the final validation accuracy of each path (mean and range over rounds, each round
has its own seed). (a) and (b) draw the same shuffles
(``torch.manual_seed`` before each), so they end with identical weights; (c)
reseeds its own generator from the global RNG, so it draws other shuffles and
its accuracy differs only by the order.

    python benchmarks/data_path.py [--rounds 5] [--epochs 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's clrfit, not an installed one

from clrfit import Learner, ModelData, accuracy  # noqa: E402
from clrfit.datasets import mnist1d_arrays  # noqa: E402
from clrfit.models import mnist1d_cnn  # noqa: E402

LR, DIV, PCT, MAX_MOM, MIN_MOM = 0.5, 10.0, 10.0, 0.95, 0.85
PATHS = ("raw", "dataloader", "tensor")


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


def raw_fit(model: nn.Module, tensors, bs: int, epochs: int) -> float:
    """(a): the plain loop over standard DataLoaders; returns the last validation accuracy."""
    x_trn, y_trn, x_val, y_val = tensors
    trn_dl = DataLoader(TensorDataset(x_trn, y_trn), batch_size=bs, shuffle=True)
    val_dl = DataLoader(TensorDataset(x_val, y_val), batch_size=2 * bs)
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


def learner_fit(model: nn.Module, tensors, bs: int, epochs: int, loader: str) -> float:
    """(b) or (c): the same training through clrfit; returns the last validation accuracy."""
    data = ModelData.from_tensors(*tensors, bs=bs, loader=loader)
    learn = Learner(model, data, metrics=[accuracy], progress=False, table=False)
    learn.fit(LR, 1, cycle_len=epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM))
    return learn.sched.rec_metrics[-1][0]


def timed(model_name: str, path: str, init_state: dict, tensors, bs: int, epochs: int,
          seed: int) -> tuple[float, float, nn.Module, float]:
    """Wall seconds of one training run (data loaders built inside), its accuracy, the trained model, CPU seconds."""
    model = MODELS[model_name]()
    model.load_state_dict(init_state)
    torch.manual_seed(seed)  # (a) and (b) draw the same shuffles; (c) reseeds its generator from it
    start, cpu_start = time.perf_counter(), time.process_time()
    if path == "raw":
        acc = raw_fit(model, tensors, bs, epochs)
    else:
        acc = learner_fit(model, tensors, bs, epochs, "torch" if path == "dataloader" else "tensor")
    return time.perf_counter() - start, acc, model, time.process_time() - cpu_start


def loader_only_ms(tensors, bs: int, repeats: int = 20) -> tuple[float, float]:
    """Median ms to iterate one shuffled training epoch, no model: DataLoader vs TensorLoader."""
    from clrfit.loaders import TensorLoader

    x, y = tensors[0], tensors[1]
    loaders = (DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True),
               TensorLoader(x, y, batch_size=bs, shuffle=True))
    out = []
    for dl in loaders:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _batch in dl:
                pass
            times.append(time.perf_counter() - start)
        out.append(1000 * statistics.median(times))
    return out[0], out[1]


def main() -> None:
    """Interleave the three paths for both models; print times, ratios and accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every (model, path) once (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-valid", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tensors = tuple(torch.from_numpy(a) for a in mnist1d_arrays(args.n_train, args.n_valid))
    inits = {}
    for name, build in MODELS.items():
        torch.manual_seed(0)
        inits[name] = build().state_dict()
        for path in PATHS:  # warm-up (allocator, kernels) outside the measurement
            timed(name, path, inits[name], tensors, args.bs, 1, 0)
    times = {(m, p): [] for m in MODELS for p in PATHS}
    ratios = {(m, p): [] for m in MODELS for p in PATHS[1:]}
    cpu_ratios = {(m, p): [] for m in MODELS for p in PATHS[1:]}
    accs: dict[tuple[str, str], list[float]] = {(m, p): [] for m in MODELS for p in PATHS}
    same_ab = {m: True for m in MODELS}
    for r in range(args.rounds):
        for name in MODELS:
            order = PATHS[r % 3:] + PATHS[:r % 3]
            results = {p: timed(name, p, inits[name], tensors, args.bs, args.epochs, seed=r) for p in order}
            for p in PATHS:
                times[name, p].append(results[p][0])
                accs[name, p].append(results[p][1])
            for p in PATHS[1:]:
                ratios[name, p].append(results[p][0] / results["raw"][0])
                cpu_ratios[name, p].append(results[p][3] / results["raw"][3])
            same_ab[name] &= all(torch.equal(a, b) for a, b in zip(results["raw"][2].state_dict().values(),
                                                                   results["dataloader"][2].state_dict().values()))
            print(f"round {r} {name}: " + "  ".join(f"{p} {results[p][0]:.3f}s" for p in PATHS) +
                  f"  c/a {results['tensor'][0] / results['raw'][0]:.3f}")
    dl_ms, tensor_ms = loader_only_ms(tensors, args.bs)
    steps = args.epochs * -(-args.n_train // args.bs)
    print(f"\n{args.rounds} rounds x {args.epochs} epochs ({steps} steps, bs {args.bs}, {args.n_train}/{args.n_valid} "
          f"samples), torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"loader only, one training epoch without a model: dataloader {dl_ms:.2f} ms  tensor {tensor_ms:.2f} ms")
    for name in MODELS:
        med = {p: statistics.median(times[name, p]) for p in PATHS}
        print(f"{name}  raw {med['raw']:.3f}s  dataloader {med['dataloader']:.3f}s  tensor {med['tensor']:.3f}s  "
              f"b/a {statistics.median(ratios[name, 'dataloader']):.3f}  c/a {statistics.median(ratios[name, 'tensor']):.3f}  "
              f"(CPU time: b/a {statistics.median(cpu_ratios[name, 'dataloader']):.3f}  "
              f"c/a {statistics.median(cpu_ratios[name, 'tensor']):.3f})")
        mean = {p: statistics.mean(accs[name, p]) for p in PATHS}
        spread = "  ".join(f"{p} {min(accs[name, p]):.3f}-{max(accs[name, p]):.3f}" for p in PATHS)
        print(f"{name} accuracy raw {mean['raw']:.4f} dataloader {mean['dataloader']:.4f} tensor {mean['tensor']:.4f}"
              f"  (mean over rounds; range {spread}; raw and dataloader identical weights every round: {same_ab[name]})")


if __name__ == "__main__":
    main()
