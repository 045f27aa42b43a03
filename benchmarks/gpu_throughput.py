"""GPU throughput: ``learn.fit_one_cycle`` vs a hand-written PyTorch loop, ResNet-56 on CIFAR-shaped tensors.

Both sides train the same architecture with the same settings (SGD momentum 0.9,
weight decay 5e-4, a one-cycle schedule stepped every batch, bf16 autocast,
channels_last, optionally ``torch.compile``) on the same GPU-resident synthetic
batches, so the ratio measures clrfit's own overhead: callbacks, schedule,
recorder. They run alternately, round after round, so clock and thermal drift
hit both alike. Prints images/s per round, the medians and
``ratio = clrfit / raw`` (target: >= 0.98).

    python benchmarks/gpu_throughput.py                  # bf16, eager
    python benchmarks/gpu_throughput.py --compile        # bf16, torch.compile (inductor)
    python benchmarks/gpu_throughput.py --train-epochs 5 # then show the super-convergence schedule training
    python benchmarks/gpu_throughput.py --rounds 0 --train-epochs 5 --json out.json   # training only, numbers saved

Needs a CUDA GPU; exits with a message otherwise. ``--device cpu`` runs the same
code on the CPU (tiny sizes: a check that the script works, not a measurement).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

N_CLASSES = 10


def synthetic_batches(n_batches: int, bs: int, device: torch.device, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-shaped batches (3x32x32) whose class shifts the image mean, so a network can learn them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    patterns = torch.randn(N_CLASSES, 3, 32, 32, generator=g)
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, N_CLASSES, (bs,), generator=g)
        x = torch.randn(bs, 3, 32, 32, generator=g) + 0.5 * patterns[y]
        batches.append((x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)))
    return batches


def batch_loader(batches: list) -> DataLoader:
    """A DataLoader that yields ready-made device batches as they are (no per-sample indexing)."""
    return DataLoader(batches, batch_size=None, shuffle=False)


def make_opt(params, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The optimizer of both sides."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


def make_model(device: torch.device) -> torch.nn.Module:
    """ResNet-56 in channels_last on ``device``, same seed for both sides."""
    from clrfit.models import resnet56

    torch.manual_seed(0)
    return resnet56(n_classes=N_CLASSES).to(device, memory_format=torch.channels_last)


class RawLoop:
    """The hand-written loop clrfit is compared with: what a careful user writes without a library."""

    def __init__(self, device: torch.device, compile: bool, max_lr: float) -> None:
        self.device = device
        self.model = make_model(device)
        self.train_model = torch.compile(self.model) if compile else self.model
        self.opt = make_opt(self.model.parameters())
        self.max_lr = max_lr

    def fit(self, dl: DataLoader) -> torch.Tensor:
        """One epoch of one-cycle training; returns the losses (kept on the GPU, like clrfit's recorder)."""
        sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=self.max_lr, total_steps=len(dl))
        self.model.train()
        losses = []
        for xb, yb in dl:
            xb = xb.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            yb = yb.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(self.train_model(xb), yb)
            loss.backward()
            self.opt.step()
            sched.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        return torch.stack(losses).float().cpu()


def clrfit_learner(dl: DataLoader, device: torch.device):
    """The clrfit side: a Learner over the same loader and optimizer settings."""
    from clrfit import Learner, ModelData

    return Learner(make_model(device), ModelData(dl, None), opt_fn=make_opt, precision="bf16",
                   device=device, progress=False, table=False)


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes (the GPU synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def throughput(args: argparse.Namespace, device: torch.device) -> dict:
    """Alternate clrfit and the raw loop; print images/s and the ratio; return the medians."""
    torch.backends.cudnn.benchmark = True
    dl = batch_loader(synthetic_batches(args.batches, args.bs, device))
    images = args.batches * args.bs
    learn = clrfit_learner(dl, device)
    raw = RawLoop(device, args.compile, args.lr)
    fit_clrfit = functools.partial(learn.fit_one_cycle, 1, args.lr, compile=args.compile)
    fit_raw = functools.partial(raw.fit, dl)
    for _ in range(args.warmup):  # cuDNN autotuning, allocator growth, compilation
        fit_clrfit()
        fit_raw()
    assert learn.channels_last or device.type != "cuda", "clrfit should train a conv net on CUDA in channels_last"
    rates = {"clrfit": [], "raw": []}
    print(f"{'round':>5} {'clrfit img/s':>14} {'raw img/s':>12} {'ratio':>7}")
    for r in range(args.rounds):
        order = (("clrfit", fit_clrfit), ("raw", fit_raw)) if r % 2 == 0 else (("raw", fit_raw), ("clrfit", fit_clrfit))
        for name, fn in order:
            rates[name].append(images / timed(fn, device))
        print(f"{r:>5} {rates['clrfit'][-1]:>14.0f} {rates['raw'][-1]:>12.0f} {rates['clrfit'][-1] / rates['raw'][-1]:>7.3f}")
    med_clrfit, med_raw = statistics.median(rates["clrfit"]), statistics.median(rates["raw"])
    print(f"median: clrfit {med_clrfit:.0f} img/s, raw {med_raw:.0f} img/s, ratio {med_clrfit / med_raw:.3f} (target >= 0.98)")
    return {"clrfit_img_s": med_clrfit, "raw_img_s": med_raw, "ratio": med_clrfit / med_raw, "rounds": args.rounds,
            "round_ratios": [a / b for a, b in zip(rates["clrfit"], rates["raw"])]}


def super_convergence(args: argparse.Namespace, device: torch.device) -> dict:
    """ResNet-56 with ``use_clr_beta=(10, 13.68, 0.95, 0.85)`` for a few epochs: the loss falls, accuracy rises."""
    from clrfit import Learner, ModelData, accuracy

    trn = batch_loader(synthetic_batches(args.batches, args.bs, device, seed=1))
    val = batch_loader(synthetic_batches(max(2, args.batches // 5), args.bs, device, seed=2))
    learn = Learner(make_model(device), ModelData(trn, val), opt_fn=make_opt, precision="bf16", device=device,
                    metrics=[accuracy], progress=False, table=True)
    rec = learn.fit(args.lr, 1, cycle_len=args.train_epochs, use_clr_beta=(10, 13.68, 0.95, 0.85), compile=args.compile)
    print(f"first/last smoothed training loss: {rec.losses[0]:.3f} -> {rec.losses[-1]:.3f}; "
          f"validation accuracy per epoch: {[round(m[0], 3) for m in rec.rec_metrics]}")
    return {"epochs": args.train_epochs, "first_loss": rec.losses[0], "last_loss": rec.losses[-1],
            "val_accuracy": [m[0] for m in rec.rec_metrics], "val_losses": rec.val_losses}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=512, help="batch size (default 512)")
    parser.add_argument("--batches", type=int, default=40, help="batches per timed fit (default 40)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timed rounds (default 6; 0: no timing)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--lr", type=float, default=0.8, help="peak learning rate (default 0.8)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (inductor)")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="afterwards, train with the super-convergence schedule for this many epochs (default 0: skip)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default; the measurement) or cpu (only checks that the script runs)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_throughput.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    print(f"{datetime.date.today()} | {name} | torch {torch.__version__} | "
          f"Python {platform.python_version()} | bs {args.bs} x {args.batches} batches | bf16, channels_last, "
          f"compile={'inductor' if args.compile else 'off'}")
    report = {"date": str(datetime.date.today()), "device": name, "torch": torch.__version__,
              "compile": args.compile, "bs": args.bs, "batches": args.batches}
    if args.rounds:
        report["throughput"] = throughput(args, device)
    if args.train_epochs:
        report["train"] = super_convergence(args, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
