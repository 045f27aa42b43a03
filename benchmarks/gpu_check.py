"""The whole GPU check of issue 17 in one short run (< 8 minutes on one H200): tests, throughput, host syncs, training.

    python benchmarks/gpu_check.py --out "$OUT"            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --quick    # on a CPU: checks the script itself, measures nothing

Steps, each a subprocess under its own time limit (the whole run also stops at
``--budget`` seconds, default ``BUDGET_S`` = 450):

1. ``tests``: the CUDA-only tests (``pytest -m "not slow" -k "cuda or gpu"``: channels_last,
   GPU-resident loaders, the no-host-sync epoch under ``torch.cuda.set_sync_debug_mode``).
2. ``sync``: a ResNet-56 bf16 epoch (fewer steps than ``Recorder.flush_every``) with
   ``set_sync_debug_mode("warn")`` between the epoch's start and its validation: the
   number of host syncs, expected 0.
3. ``eager``: ``benchmarks/gpu_throughput.py`` (ResNet-56, bf16, channels_last),
   learner vs raw images/s, interleaved rounds; target ratio >= 0.98.
4. ``train``: a ResNet-56 1cycle run (``use_clr_beta=(10, 13.68, 0.95, 0.85)``) on
   learnable synthetic CIFAR-shaped data: loss and validation accuracy per epoch.
5. ``compile``: step 3 with ``torch.compile`` on both sides (last: the slowest step).

Writes ``gpu_check.json`` (every number) and ``gpu_check.md`` (a RESULTS.md section:
device, torch version, date, numbers) to ``--out``; prints the markdown too.
Exit status 0 when every step ran (a missed target is reported, not an error).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds for the whole run: with the machine's start-up it must fit the 8 minutes a lent GPU is asked for.
BUDGET_S = 450

# A ResNet-56 epoch of SYNC_STEPS steps, timed for host syncs (run in a subprocess by the "sync" step).
SYNC_SCRIPT = r"""
import json, sys, warnings, torch
from torch import nn
from clrfit import Callback, Learner, ModelData
from clrfit.models import resnet56
from clrfit.recorder import Recorder
device, bs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cuda = device == "cuda"
class SyncWindow(Callback):
    def on_epoch_begin(self):
        if cuda:
            torch.cuda.synchronize(); torch.cuda.set_sync_debug_mode("warn")
    def on_validate_begin(self):
        if cuda: torch.cuda.set_sync_debug_mode("default")
    def on_train_end(self):
        if cuda: torch.cuda.set_sync_debug_mode("default")
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
n = bs * steps
x = torch.randn(n + bs, 3, 32, 32, generator=g); y = torch.randint(0, 10, (n + bs,), generator=g)
data = ModelData.from_tensors(x[:n], y[:n], x[n:], y[n:], bs=bs, device=device)
learn = Learner(resnet56(n_classes=10), data, precision="bf16", device=device, progress=False, table=False)
assert learn.steps_per_epoch < Recorder.flush_every
learn.fit(0.1, 1, callbacks=[SyncWindow()])  # warm-up: cuDNN autotuning, allocator growth
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    learn.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85), callbacks=[SyncWindow()])
syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
print(json.dumps({"steps": learn.steps_per_epoch, "syncs": len(syncs), "first": syncs[:3],
                  "channels_last": learn.channels_last, "checked": cuda}))
"""


def run_step(name: str, cmd: list[str], limit: float, log_dir: Path) -> dict:
    """Run one step's command with a time limit; keep its output in ``log_dir/<name>.log``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, limit))
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    seconds = time.monotonic() - start
    (log_dir / f"{name}.log").write_text(out)
    print(f"[{name}] rc={rc} in {seconds:.0f}s", flush=True)
    return {"rc": rc, "seconds": round(seconds, 1), "tail": out[-1500:]}


def parse_pytest(out: str) -> dict:
    """Counts from pytest's summary line (``3 passed, 1 skipped in 2.0s``)."""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)", out)}
    return counts


def plan(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str], float]]:
    """``(name, command, time limit in s)`` of every step, for this device and size."""
    py = sys.executable
    bench = str(ROOT / "benchmarks" / "gpu_throughput.py")
    if args.quick:  # tiny sizes: minutes on a CPU, seconds on a GPU; checks the plumbing only
        size = ["--bs", "8", "--batches", "2", "--rounds", "1", "--warmup", "0"]
        train = ["--bs", "8", "--batches", "4", "--rounds", "0", "--train-epochs", "1", "--lr", "0.1"]
        sync = ["4", "3"]
    else:
        size = ["--bs", "512", "--batches", "30", "--rounds", "6", "--warmup", "2"]
        train = ["--bs", "512", "--batches", "40", "--rounds", "0", "--train-epochs", "6"]
        sync = ["256", "24"]
    device = ["--device", args.device]
    steps = []
    if args.device == "cuda":
        steps.append(("tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "not slow",
                                "-k", "cuda or gpu", "tests/"], 150))
    steps.append(("sync", [py, "-c", SYNC_SCRIPT, args.device, *sync], 60))
    steps.append(("eager", [py, bench, *size, *device, "--json", str(out / "eager.json")], 75))
    steps.append(("train", [py, bench, *train, *device, "--json", str(out / "train.json")], 90))
    if args.device == "cuda" or not args.quick:  # last: compiling is the slowest step; on a busy CPU not worth it
        # One warm-up round compiles both sides (each compiled module is reused by later fits); fewer timed rounds.
        compile_size = size if args.quick else ["--bs", "512", "--batches", "30", "--rounds", "4", "--warmup", "1"]
        steps.append(("compile", [py, bench, *compile_size, *device, "--compile", "--json",
                                  str(out / "compile.json")], 260))
    return steps


def markdown(report: dict) -> str:
    """The RESULTS.md section for ``report``."""
    lines = [f"## GPU check ({report['date']}, {report['device']}, torch {report['torch']})", "",
             f"`python benchmarks/gpu_check.py` ({report['mode']}), {report['seconds']:.0f} s in all.", "",
             "| step | result | s |", "| --- | --- | --- |"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step.get('summary', 'rc=' + str(step['rc']))} | {step['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def summarise(name: str, step: dict, out: Path, measured: bool = True) -> str:
    """One line of what a step measured (``measured=False``: a CPU or quick run, whose numbers mean nothing)."""
    if step["rc"] != 0:
        return f"did not finish (rc={step['rc']})"
    if name == "tests":
        counts = parse_pytest(step["tail"])
        step["counts"] = counts
        return ", ".join(f"{v} {k}" for k, v in counts.items())
    if name == "sync":
        result = json.loads(step["tail"].strip().splitlines()[-1])
        step.update(result)
        checked = "" if result["checked"] else " (not checked: no CUDA)"
        return f"{result['syncs']} host syncs in a {result['steps']}-step ResNet-56 bf16 epoch{checked}"
    data = json.loads((out / f"{name}.json").read_text())
    step["numbers"] = data
    if "throughput" in data:
        t = data["throughput"]
        verdict = ("meets" if t["ratio"] >= 0.98 else "misses") if measured else "not a measurement: CPU or quick run;"
        return (f"clrfit {t['clrfit_img_s']:.0f} img/s, raw {t['raw_img_s']:.0f} img/s, ratio {t['ratio']:.3f} "
                f"({verdict} >= 0.98; median of {t['rounds']} rounds)")
    t = data["train"]
    acc = ", ".join(f"{a:.3f}" for a in t["val_accuracy"])
    return f"{t['epochs']} epochs 1cycle: loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}; val accuracy {acc}"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for the results")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script, measures nothing)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S})")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA GPU here (torch.cuda.is_available() is False); nothing was measured. "
              "Run it on a machine with a GPU, or pass --device cpu --quick to check the script", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()})"
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "device": device_name, "torch": torch.__version__, "python": platform.python_version(),
              "cuda": torch.version.cuda, "mode": "quick" if args.quick else "full", "steps": {}}
    start = time.monotonic()
    for name, cmd, limit in plan(args, out):
        left = args.budget - (time.monotonic() - start)
        if left < 10:
            report["steps"][name] = {"rc": "skipped: budget spent", "seconds": 0.0}
            continue
        step = run_step(name, cmd, min(limit, left), out)
        try:
            step["summary"] = summarise(name, step, out, measured=args.device == "cuda" and not args.quick)
        except (ValueError, KeyError, IndexError, OSError) as err:
            step["summary"] = f"ran, but its output could not be read: {err}"
        report["steps"][name] = step
    report["seconds"] = time.monotonic() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    print(md)
    return 0 if all(s["rc"] == 0 for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
