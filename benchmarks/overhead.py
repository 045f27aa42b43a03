"""Overhead of ``learn.fit`` over a hand-written PyTorch loop doing the same work.

Same model (the MNIST-1D CNN), same initial weights, same DataLoader and seed,
same epochs and the same 1cycle lr/momentum values set every step; both
validate (loss and accuracy) after each epoch. Runs alternate (learner, raw,
raw, learner, ...) so drifting machine load hits both alike. Prints the median
of the per-pair wall-time ratios learner / raw (target: <= 1.05 on CPU), the
same for process CPU time (steadier when other jobs share the cores), and
whether both ended with identical weights (they should: the work is the same).

``--interleaved``: one process, one model per loop built once, and ``--rounds``
rounds that each run one short fit through three loops, rotating which goes
first: ``learn.fit``, the hand-written loop, and the hand-written loop clearing
gradients as clrfit's step does (``p.grad = None`` for each parameter instead of
``opt.zero_grad()``, whose profiler range costs more than the loop on a CPU).
Prints the median microseconds per optimizer step of each loop, the learner's
difference to each hand-written one and the medians of the per-round ratios:
over the first, what a user's loop gains or loses by moving to clrfit; over the
second, the framework's own cost. ``--model mlp`` is a 40-32-10 MLP, where framework cost dominates;
``--model cnn`` the MNIST-1D CNN.

``--instructions``: count the machine instructions (valgrind's cachegrind, ``I refs``)
of four runs of this script, each in its own process: the shared warm-up only,
the warm-up plus ``--fits`` fits of ``learn.fit``, and the warm-up plus ``--fits``
fits of each hand-written loop. The differences, per optimizer step, are what each loop costs,
C, Python and torch included, independent of machine load (the timings on a
shared 2-core machine move by 10-20 % between runs of the same code); their
ratio is the overhead ratio at a fixed instructions-per-cycle. The runs go
without address-space randomisation (``setarch -R``), which makes them repeat. ``CLRFIT_CHECKOUT``
(or ``--checkout DIR``) measures another checkout's clrfit: before and after.
A run repeats to a few thousand instructions, but a process's total also moves by
up to ~13 million with where clrfit is imported from (the same code measured from
two folders), mostly outside the fits; hence 30 fits by default (4,800 steps: a
few thousand per step), and before/after comparisons from folders of one path length.

``--opcodes``: count the Python bytecode instructions each loop executes for
one fit (``sys.settrace`` with opcode events), per optimizer step, and which
functions account for the learner's extra ones. The count does not depend on
machine load, so it shows a change in the framework's own Python work even
where timings are too noisy to; it leaves out time spent inside C calls.

    python benchmarks/overhead.py [--runs 7] [--epochs 5]
    python benchmarks/overhead.py --interleaved --model mlp --rounds 41 --threads 1
    python benchmarks/overhead.py --opcodes --model mlp --epochs 2
    python benchmarks/overhead.py --instructions --model mlp [--checkout DIR]   # needs valgrind; ~7 min
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# The checkout's clrfit, not an installed one (CLRFIT_CHECKOUT: another checkout's, for --instructions).
sys.path.insert(0, os.environ.get("CLRFIT_CHECKOUT") or str(Path(__file__).resolve().parents[1]))

from clrfit import Learner, accuracy  # noqa: E402
from clrfit.datasets import mnist1d  # noqa: E402
from clrfit.models import mnist1d_cnn  # noqa: E402

LR, DIV, PCT, MAX_MOM, MIN_MOM = 0.5, 10.0, 10.0, 0.95, 0.85


def one_cycle(t: int, n: int) -> tuple[float, float]:
    """1cycle lr and momentum at step t of n (docs/schedules.md), written out by hand for the raw loop."""
    c = int(n * (1 - PCT / 100) / 2)
    if t > 2 * c:
        return LR * (1 - 0.99 * (t - 2 * c) / (n - 2 * c)) / DIV, MAX_MOM
    p = t / c if t <= c else 1 - (t - c) / c
    return LR * (1 + p * (DIV - 1)) / DIV, MAX_MOM - p * (MAX_MOM - MIN_MOM)


def raw_fit(model: nn.Module, data, epochs: int, direct_clear: bool = False) -> list[float]:
    """The plain PyTorch loop: SGD momentum 0.9, per-step lr/momentum, validation each epoch.

    It clears gradients with ``opt.zero_grad(set_to_none=True)``, as users write it;
    ``direct_clear`` sets them to None in a loop instead, as clrfit's step does
    (``clrfit.optim.clear_grads``), so the difference to it is the framework's own cost.
    """
    opt = torch.optim.SGD(model.parameters(), lr=LR / DIV, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    n = epochs * len(data.trn_dl)
    t = 0
    accs = []
    params = list(model.parameters())
    for _ in range(epochs):
        model.train()
        for xb, yb in data.trn_dl:
            lr, mom = one_cycle(t, n)
            for g in opt.param_groups:
                g["lr"], g["momentum"] = lr, mom
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
            if direct_clear:
                for p in params:
                    p.grad = None
            else:
                opt.zero_grad(set_to_none=True)
            t += 1
        model.eval()
        with torch.no_grad():
            correct = total_loss = 0.0
            for xb, yb in data.val_dl:
                pred = model(xb)
                total_loss += crit(pred, yb) * len(yb)
                correct += (pred.argmax(-1) == yb).sum()
        accs.append(float(correct) / len(data.val_ds))
    return accs


def mlp() -> nn.Module:
    """The 40-32-10 MLP on MNIST-1D's 40 inputs (framework cost dominates its step)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))


def learner_fit(model: nn.Module, data, epochs: int) -> list[float]:
    """The same training through clrfit (progress bar and table off)."""
    learn = Learner(model, data, metrics=[accuracy], progress=False, table=False)
    learn.fit(LR, 1, cycle_len=epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM))
    return [m[0] for m in learn.sched.rec_metrics]


def timed(fn, init_state: dict, data, epochs: int, seed: int) -> tuple[float, float, nn.Module, list[float]]:
    """Wall and process CPU seconds of one training run, the trained model and its accuracies."""
    model = mnist1d_cnn()
    model.load_state_dict(init_state)
    torch.manual_seed(seed)  # same shuffling order for both loops
    start, cpu_start = time.perf_counter(), time.process_time()
    accs = fn(model, data, epochs)
    return time.perf_counter() - start, time.process_time() - cpu_start, model, accs


def interleaved(args: argparse.Namespace) -> None:
    """In one process, rotate a fit of each loop round by round; print us/step and ratios."""
    torch.manual_seed(0)
    data = mnist1d(bs=args.bs)
    build = mlp if args.model == "mlp" else mnist1d_cnn
    raw_model, direct_model, learn_model = build(), build(), build()
    direct_model.load_state_dict(raw_model.state_dict())
    learn_model.load_state_dict(raw_model.state_dict())
    learn = Learner(learn_model, data, metrics=[accuracy], progress=False, table=False)
    steps = args.epochs * len(data.trn_dl)
    loops = {
        "learner": lambda: learn.fit(LR, 1, cycle_len=args.epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM)),
        "raw": lambda: raw_fit(raw_model, data, args.epochs),
        "raw, direct clear": lambda: raw_fit(direct_model, data, args.epochs, direct_clear=True),
    }
    names = list(loops)
    for fn in loops.values():  # warm-up (allocator, kernels) outside the measurement
        fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:  # each loop first, second and third equally often
            torch.manual_seed(r)  # same shuffling order for every loop
            start, cpu_start = time.perf_counter(), time.process_time()
            loops[name]()
            times[name].append((time.perf_counter() - start) / steps * 1e6)
            cpu[name].append((time.process_time() - cpu_start) / steps * 1e6)
    us = {name: statistics.median(t) for name, t in times.items()}
    print(f"interleaved: model {args.model}, {args.rounds} rounds x {args.epochs} epochs ({steps} steps + "
          f"validation each epoch), bs {args.bs}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("median us/step: " + ", ".join(f"{name} {us[name]:.1f}" for name in names))
    for base in ("raw", "raw, direct clear"):
        ratio = statistics.median(a / b for a, b in zip(times["learner"], times[base]))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu["learner"], cpu[base]))
        print(f"learner over {base}: {us['learner'] - us[base]:+.1f} us/step (median learner - median {base}); "
              f"median ratio {ratio:.3f}, median CPU-time ratio {cpu_ratio:.3f}")


def opcode_counts(fn: Callable[[], None]) -> Counter:
    """Python bytecode instructions executed by ``fn()``, per ``file:function``."""
    counts: Counter = Counter()

    def trace(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_code.co_firstlineno}"] += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return counts


def opcodes(args: argparse.Namespace) -> None:
    """Print the Python instructions per step of ``learn.fit`` and of the hand-written loop, and the top differences."""
    torch.manual_seed(0)
    data = mnist1d(bs=args.bs)
    build = mlp if args.model == "mlp" else mnist1d_cnn
    raw_model, learn_model = build(), build()
    learn = Learner(learn_model, data, metrics=[accuracy], progress=False, table=False)
    steps = args.epochs * len(data.trn_dl)
    loops = {"learner": lambda: learn.fit(LR, 1, cycle_len=args.epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM)),
             "raw": lambda: raw_fit(raw_model, data, args.epochs)}
    for fn in loops.values():  # first calls import and build lazily; count a later one
        fn()
    counts = {name: opcode_counts(fn) for name, fn in loops.items()}
    per_step = {name: sum(c.values()) / steps for name, c in counts.items()}
    print(f"opcodes: model {args.model}, {args.epochs} epochs ({steps} steps + validation each epoch), bs {args.bs}")
    print(f"Python instructions per step: learner {per_step['learner']:.0f}, raw {per_step['raw']:.0f}, "
          f"framework {per_step['learner'] - per_step['raw']:.0f}")
    extra = Counter({k: v - counts["raw"].get(k, 0) for k, v in counts["learner"].items()})
    for where, n in extra.most_common(15):
        print(f"  {n / steps:7.1f}  {where}")


def instructions(args: argparse.Namespace) -> None:
    """Machine instructions per step of each loop, from three cachegrind runs of this script (see above)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", MPLBACKEND="Agg")
    if args.checkout:
        env["CLRFIT_CHECKOUT"] = str(Path(args.checkout).resolve())
    common = ["--model", args.model, "--epochs", str(args.epochs), "--bs", str(args.bs)]
    # Without address randomisation the counts repeat to ~1e-7; with it, pointer-keyed hash tables
    # (pybind11's instance registry, for one) move them by up to 1 % of the step between runs.
    no_aslr = ["setarch", os.uname().machine, "-R"] if shutil.which("setarch") else []
    procs = {}
    for name, fits in (("warm-up only", 0), ("learner", args.fits), ("raw", args.fits), ("direct", args.fits)):
        command = [*no_aslr, "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                   sys.executable, __file__, "--count-child", name, "--fits", str(fits), *common]
        procs[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    refs, steps = {}, 0
    for name, proc in procs.items():
        out, _ = proc.communicate()
        found = re.search(r"I\s+refs:\s+([\d,]+)", out)
        if proc.returncode or found is None:
            raise SystemExit(f"{name}: cachegrind run failed (exit {proc.returncode}):\n{out[-3000:]}")
        refs[name] = int(found.group(1).replace(",", ""))
        steps = max(steps, int(re.search(r"^steps (\d+)$", out, re.M).group(1)))
    learner, raw, direct = (refs[k] - refs["warm-up only"] for k in ("learner", "raw", "direct"))
    where = args.checkout or env.get("CLRFIT_CHECKOUT") or "this checkout"
    print(f"instructions: model {args.model}, clrfit from {where}, {args.fits} fits x {args.epochs} epochs "
          f"({steps} steps + validation each epoch), bs {args.bs}, 1 thread, valgrind cachegrind")
    print(f"machine instructions per step: learner {learner / steps:,.0f}, raw {raw / steps:,.0f}, "
          f"difference {(learner - raw) / steps:,.0f}; ratio learner/raw {learner / raw:.4f}")
    print(f"against the hand-written loop clearing gradients directly ({direct / steps:,.0f} per step): "
          f"framework {(learner - direct) / steps:,.0f}; ratio {learner / direct:.4f}")


def count_child(args: argparse.Namespace) -> None:
    """One --instructions run: warm both loops up, then ``--fits`` fits of one of them (none for the warm-up run)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = mnist1d(bs=args.bs)
    build = mlp if args.model == "mlp" else mnist1d_cnn
    raw_model, learn_model = build(), build()
    learn = Learner(learn_model, data, metrics=[accuracy], progress=False, table=False)
    loops = {"learner": lambda: learn.fit(LR, 1, cycle_len=args.epochs, use_clr_beta=(DIV, PCT, MAX_MOM, MIN_MOM)),
             "raw": lambda: raw_fit(raw_model, data, args.epochs),
             "direct": lambda: raw_fit(raw_model, data, args.epochs, direct_clear=True)}
    for fn in loops.values():
        fn()
    for _ in range(args.fits):
        loops[args.count_child]()
    print(f"steps {args.fits * args.epochs * len(data.trn_dl)}")


def main() -> None:
    """Alternate learner and raw runs; print the times and the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each loop (default 7)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--interleaved", action="store_true", help="in-process interleaved rounds (see above)")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="cnn", help="--interleaved, --opcodes: which model")
    parser.add_argument("--rounds", type=int, default=41, help="--interleaved: rounds (default 41)")
    parser.add_argument("--opcodes", action="store_true", help="count Python instructions per step (see above)")
    parser.add_argument("--instructions", action="store_true", help="count machine instructions per step (valgrind)")
    parser.add_argument("--fits", type=int, default=30, help="--instructions: fits of each loop (default 30)")
    parser.add_argument("--checkout", default=None, help="--instructions: measure this checkout's clrfit")
    parser.add_argument("--count-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_child:
        count_child(args)
        return
    if args.instructions:
        instructions(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.opcodes:
        opcodes(args)
        return
    if args.interleaved:
        interleaved(args)
        return
    torch.manual_seed(0)
    data = mnist1d(bs=args.bs)
    init_state = copy.deepcopy(mnist1d_cnn().state_dict())
    timed(raw_fit, init_state, data, 1, 0)  # warm-up (allocator, kernels) outside the measurement
    timed(learner_fit, init_state, data, 1, 0)
    learner_times, raw_times, ratios, cpu_ratios = [], [], [], []
    same = True
    for r in range(args.runs):
        order = [("learner", learner_fit), ("raw", raw_fit)]
        if r % 2:
            order.reverse()
        results = {}
        for name, fn in order:
            results[name] = timed(fn, init_state, data, args.epochs, seed=r)
        t_l, c_l, m_l, acc_l = results["learner"]
        t_r, c_r, m_r, acc_r = results["raw"]
        same &= all(torch.equal(a, b) for a, b in zip(m_l.state_dict().values(), m_r.state_dict().values()))
        learner_times.append(t_l)
        raw_times.append(t_r)
        ratios.append(t_l / t_r)
        cpu_ratios.append(c_l / c_r)
        print(f"run {r}: learner {t_l:.3f}s  raw {t_r:.3f}s  ratio {t_l / t_r:.3f}  cpu ratio {c_l / c_r:.3f}  "
              f"val acc {acc_l[-1]:.3f} / {acc_r[-1]:.3f}")
    steps = args.epochs * len(data.trn_dl)
    print(f"\n{args.runs} runs x {args.epochs} epochs ({steps} steps, bs {args.bs}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"median time: learner {statistics.median(learner_times):.3f}s, raw {statistics.median(raw_times):.3f}s")
    print(f"identical final weights in every run: {same}")
    print(f"median CPU-time ratio learner/raw: {statistics.median(cpu_ratios):.3f} (steadier on a shared machine)")
    print(f"median ratio learner/raw: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
