"""The ``clrfit`` command: ``demo``, ``fit``, ``lr-find`` and ``schedule``.

Every option is checked before any data is loaded or torch is imported, so
``clrfit --help`` and a bad command line answer at once. Bad input exits with
status 2 and one line, ``clrfit <command>: error: <message>``, naming the option
(the library's :class:`~clrfit.validation.ArgumentError` carries the argument's
name, which is spelled here as its flag; set ``CLRFIT_DEBUG=1`` for tracebacks).
A diverged fit exits with status 1. Ctrl-C exits with 130; ``clrfit fit`` first
writes its outputs and prints where the checkpoint is and how to resume.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .validation import ANNEAL_STRATEGIES, ARCHS, CYCLIC_MODES, LOADERS, ON_NAN, OPTIMIZERS, PRECISIONS, ArgumentError

# The same names as clrfit.datasets.DATASETS (tests/test_cli.py checks they agree); copied so that
# parsing needs no torch.
DATASETS = ("mnist1d", "cifar10", "mnist", "fashion-mnist")
DEFAULT_DEMO_OUT = Path("clrfit-out")
DEFAULT_FIT_OUT = Path("clrfit-out") / "fit"
CHECKPOINT_NAME = "checkpoint.ckpt"
# Library argument names that the CLI spells differently (the rest: dashes for underscores).
_FLAG_NAMES = {"lrs": "--lr", "iterations": "--cycle-iterations"}


class CliError(Exception):
    """A bad command line found after parsing (reported like an argparse error)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- option types


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}; got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _numbers(form: str, counts: tuple[int, ...]) -> Callable[[str], tuple[float, ...]]:
    """Parser for comma-separated numbers, e.g. ``10,13.68,0.95,0.85``, of one of ``counts`` lengths."""

    def parse(text: str) -> tuple[float, ...]:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers {form}; got {text!r}") from None
        if len(values) not in counts:
            allowed = " or ".join(str(c) for c in counts)
            raise argparse.ArgumentTypeError(f"expected {allowed} comma-separated numbers {form}; got {len(values)}: {text!r}")
        if not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected finite numbers {form}; got {text!r}")
        return values

    return parse


_CLR = _numbers("DIV,CUT_DIV[,MAX_MOM,MIN_MOM]", (2, 4))
_CLR_BETA = _numbers("DIV,PCT[,MAX_MOM,MIN_MOM]", (2, 4))
_BASE_MAX = _numbers("BASE_LR,MAX_LR", (2,))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``clrfit`` argument parser."""
    parser = _Parser(prog="clrfit", description="Cyclical learning rates, 1cycle and LR range tests for PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="range test + 1cycle fit on MNIST-1D, with plots (about a minute on a CPU)",
                          description="LR range test, then a 1cycle fit with cyclical momentum on MNIST-1D; "
                                      "writes lr_find.png, lr_mom.png and loss.png.")
    demo.add_argument("--out", type=Path, default=DEFAULT_DEMO_OUT, help=f"output folder (default: ./{DEFAULT_DEMO_OUT})")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="fewer iterations and epochs (a smoke test)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (the epoch table stays)")
    _threads_option(demo)
    demo.set_defaults(check=_check_demo, func=cmd_demo)

    fit = sub.add_parser("fit", help="train a built-in model on a built-in or torchvision dataset",
                         description="Train with learn.fit: constant lr, SGDR (--cycle-len), --use-clr or "
                                     "--use-clr-beta (1cycle). Writes the model, the history and the plots to "
                                     f"--out (default ./{DEFAULT_FIT_OUT}), with a checkpoint at every epoch end, "
                                     "so Ctrl-C or a killed job can continue with --resume.")
    _data_options(fit)
    fit.add_argument("--lr", type=_positive_float, required=True, help="learning rate (the peak for cyclical schedules)")
    fit.add_argument("--n-cycle", type=_positive_int, default=1, help="number of cycles (epochs without --cycle-len)")
    fit.add_argument("--cycle-len", type=_positive_int, help="epochs per cycle (turns on SGDR / the cyclical schedules)")
    fit.add_argument("--cycle-mult", type=_positive_int, default=1, help="cycle length multiplier (SGDR)")
    clr = fit.add_mutually_exclusive_group()
    clr.add_argument("--use-clr", type=_CLR, metavar="D,C[,M1,M2]", help="CircularLR: div,cut_div[,max_mom,min_mom]")
    clr.add_argument("--use-clr-beta", type=_CLR_BETA, metavar="D,P[,M1,M2]", help="1cycle: div,pct[,max_mom,min_mom]")
    fit.add_argument("--wds", type=_non_negative_float, help="weight decay (L2, or decoupled with --use-wd-sched)")
    fit.add_argument("--use-wd-sched", action="store_true", help="decoupled weight decay scaled by the current lr")
    fit.add_argument("--checkpoint", type=Path, metavar="PATH",
                     help=f"checkpoint file, written at every epoch end and on Ctrl-C (default: --out/{CHECKPOINT_NAME})")
    fit.add_argument("--checkpoint-every", type=_positive_int, metavar="K", help="also checkpoint every K iterations")
    fit.add_argument("--resume", action="store_true", help="continue from the checkpoint (a fresh fit if there is none)")
    fit.add_argument("--accumulate", type=_positive_int, default=1, metavar="K", help="micro-batches per optimizer step")
    precision = fit.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="mixed precision with float16 and a gradient scaler")
    precision.add_argument("--precision", choices=PRECISIONS, help="numeric precision (default fp32)")
    fit.add_argument("--compile", action="store_true", help="torch.compile the model")
    fit.add_argument("--on-nan", choices=ON_NAN,
                     help="on a non-finite loss: stop with an error (default), restore the last checkpoint, or go on")
    fit.add_argument("--out", type=Path, default=DEFAULT_FIT_OUT,
                     help=f"folder for model.pt, history.json, lr_mom.png and loss.png (default: ./{DEFAULT_FIT_OUT})")
    fit.set_defaults(check=_check_fit, func=cmd_fit)

    find = sub.add_parser("lr-find", help="LR range test (lr_find2): print suggestions, plot loss vs lr",
                          description="Run learn.lr_find2 and print its suggestions (minimum, steep, valley, "
                                      "CLR bounds); the plot goes to -o.")
    _data_options(find)
    # 2: a sweep needs a first and a last lr (lr_find2 refuses fewer; checked here before any data loads)
    find.add_argument("--num-it", type=_int_at_least(2), default=100, help="iterations of the sweep, >= 2 (default 100)")
    find.add_argument("--start-lr", type=_positive_float, default=1e-5, help="first lr (default 1e-5)")
    find.add_argument("--end-lr", type=_positive_float, default=10.0, help="last lr (default 10)")
    find.add_argument("--linear", action="store_true", help="linear sweep (default exponential)")
    find.add_argument("--no-stop-dv", action="store_true", help="do not stop when the loss diverges")
    find.add_argument("--wds", type=_non_negative_float, help="weight decay during the test")
    find.add_argument("-o", "--output", type=Path, default=Path("lr_find.png"),
                      help="plot file; its suffix picks the format (default lr_find.png)")
    find.set_defaults(check=_check_lr_find, func=cmd_lr_find)

    sched = sub.add_parser("schedule", help="plot a schedule without training",
                           description="Plot lr (and momentum) of a schedule without training. Plain SGDR by "
                                       "default; or --use-clr, --use-clr-beta, --cyclic, --one-cycle. The plot "
                                       "shows --n-cycle cycles of --cycle-iterations iterations each, the k-th "
                                       "cycle --cycle-mult**k times as long; for --cyclic and --one-cycle "
                                       "--cycle-iterations is the whole plot.")
    sched.add_argument("--cycle-iterations", type=_positive_int, default=1000, metavar="N", dest="iterations",
                       help="iterations in one cycle, as cycle_len * batches per epoch in fit (default 1000); "
                            "with --cyclic or --one-cycle, all the iterations plotted")
    sched.add_argument("--iterations", type=_positive_int, dest="iterations", help=argparse.SUPPRESS)  # old name
    sched.add_argument("--lr", type=_positive_float, default=1.0, help="peak learning rate (default 1.0)")
    kind = sched.add_mutually_exclusive_group()
    kind.add_argument("--use-clr", type=_CLR, metavar="D,C[,M1,M2]", help="CircularLR: div,cut_div[,max_mom,min_mom]")
    kind.add_argument("--use-clr-beta", type=_CLR_BETA, metavar="D,P[,M1,M2]", help="1cycle: div,pct[,max_mom,min_mom]")
    kind.add_argument("--cyclic", type=_BASE_MAX, metavar="BASE,MAX", help="torch CyclicLR between BASE and MAX")
    kind.add_argument("--one-cycle", type=_positive_float, metavar="MAX_LR", help="torch OneCycleLR up to MAX_LR")
    sched.add_argument("--cycle-mult", type=_positive_int, default=1, help="SGDR cycle length multiplier")
    sched.add_argument("--n-cycle", type=_positive_int, default=1, help="number of cycles")
    sched.add_argument("--step-size-up", type=_positive_int, help="--cyclic: iterations going up (default 2000)")
    sched.add_argument("--step-size-down", type=_positive_int, help="--cyclic: iterations going down (default: up)")
    sched.add_argument("--mode", choices=CYCLIC_MODES, help="--cyclic mode")
    sched.add_argument("--gamma", type=_positive_float, help="--cyclic exp_range decay (default 1.0)")
    sched.add_argument("--pct-start", type=_float, help="--one-cycle: fraction of steps going up (default 0.3)")
    sched.add_argument("--anneal-strategy", choices=ANNEAL_STRATEGIES, help="--one-cycle annealing (default cos)")
    sched.add_argument("-o", "--output", type=Path, default=Path("lr.png"),
                       help="plot file; its suffix picks the format (default lr.png)")
    sched.set_defaults(check=_check_schedule, func=cmd_schedule)
    return parser


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="mnist1d", help="dataset (default mnist1d)")
    p.add_argument("--data-path", type=Path, metavar="P",
                   help="folder of the torchvision datasets (default: <user cache>/clrfit/data)")
    p.add_argument("--download", action="store_true", help="download the torchvision dataset if it is missing")
    p.add_argument("--arch", help=f"model: {', '.join(ARCHS)} (default: cnn1d for mnist1d, resnet20 otherwise); "
                                  "with --data-folder a torchvision classifier such as resnet18 (the default)")
    _folder_options(p)
    p.add_argument("--bs", type=_positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--opt", choices=OPTIMIZERS, default="sgd", help="optimizer (default SGD, momentum 0.9)")
    p.add_argument("--loader", choices=LOADERS,
                   help="--dataset: tensor (whole batches sliced from memory; the default) or torch (a DataLoader "
                        "with per-sample transforms; the default when --num-workers > 0)")
    p.add_argument("--num-workers", type=_non_negative_int, default=0,
                   help="DataLoader worker processes (default 0); > 0 uses the DataLoader (--loader torch)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the epoch table stays)")
    _threads_option(p)


def _folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-folder", type=Path, metavar="PATH",
                   help="your images in ImageFolder layout (PATH/train/<class>/*, PATH/valid/<class>/*) instead "
                        "of --dataset")
    p.add_argument("--size", type=_positive_int, default=224, help="--data-folder: image side in pixels (default 224)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="--data-folder: start from torchvision's ImageNet weights (torchvision downloads them) "
                        "with a new head; --no-pretrained: random weights")


def _folder_learner(args: argparse.Namespace, precision: dict | None, metrics: Sequence | None):
    """A learner over a torchvision classifier with a new head for the classes of ``--data-folder``."""
    import random

    import numpy as np
    import torch
    import torchvision

    from . import Learner, ModelData
    from .threads import recommended_threads

    arch = args.arch or "resnet18"
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise CliError(f"--arch {arch!r} is not a torchvision classification model (e.g. resnet18, "
                       "efficientnet_b0, convnext_tiny, vit_b_16)")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = ModelData.from_folder(args.data_folder, size=args.size, bs=args.bs, num_workers=args.num_workers,
                                 normalize="imagenet" if args.pretrained else "data")
    model = torchvision.models.get_model(arch, weights="DEFAULT" if args.pretrained else None)
    device_type = torch.device(args.device).type if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else recommended_threads(
        sum(p.numel() for p in model.parameters()), device_type, default=torch.get_num_threads())
    if threads is not None:
        torch.set_num_threads(threads)
    return Learner.from_pretrained(model, data, opt_fn=_opt_fn(args.opt), metrics=metrics or [], device=args.device,
                                   progress=not args.no_progress, **(precision or {}))


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int,
                   help="torch intra-op threads on CPU (default: 1 for the small built-in models, which gain "
                        "little from more and slow down many times on a busy machine; see docs/threads.md)")


# --------------------------------------------------------------------------- checks (no torch, no data)


def _check_demo(args: argparse.Namespace) -> None:
    _check_folder("--out", args.out)


def _check_fit(args: argparse.Namespace) -> None:
    for flag, value in (("--use-clr", args.use_clr), ("--use-clr-beta", args.use_clr_beta),
                        ("--cycle-mult", args.cycle_mult if args.cycle_mult != 1 else None)):
        if value is not None and args.cycle_len is None:
            raise CliError(f"{flag} needs --cycle-len (epochs per cycle)")
    if args.use_wd_sched and args.wds is None:
        raise CliError("--use-wd-sched needs --wds (the weight decay to schedule)")
    _check_arch(args)
    _check_loader(args)
    _check_device(args.device)
    _check_folder("--out", args.out)
    if args.checkpoint is not None and args.checkpoint.is_dir():
        raise CliError(f"--checkpoint must be a file path, not a folder; got {str(args.checkpoint)!r}")
    blocking = next((p for p in (args.checkpoint or args.out / CHECKPOINT_NAME).parents if p.is_file()), None)
    if blocking is not None:  # before any data is loaded, not at the first write after an epoch
        raise CliError(f"--checkpoint must be a path in a folder; {str(blocking)!r} is a file")
    from . import schedules  # pure Python: the library's own checks of the schedule's values, no torch

    # One epoch of a million batches stands in for the data's length, which is not known
    # yet: every check but "the cycle is long enough" (run again in fit) is made here.
    schedules.fit_schedule((args.lr,), 10**6, args.n_cycle, args.cycle_len, args.cycle_mult,
                           args.use_clr, args.use_clr_beta)


def _check_lr_find(args: argparse.Namespace) -> None:
    if not args.end_lr > args.start_lr:
        raise CliError(f"--end-lr must be greater than --start-lr ({args.start_lr:g}); got {args.end_lr:g}")
    _check_arch(args)
    _check_loader(args)
    _check_device(args.device)
    _check_plot_file("-o", args.output)


def _check_schedule(args: argparse.Namespace) -> None:
    cyclic_only = {"--step-size-up": args.step_size_up, "--step-size-down": args.step_size_down,
                   "--mode": args.mode, "--gamma": args.gamma}
    one_cycle_only = {"--pct-start": args.pct_start, "--anneal-strategy": args.anneal_strategy}
    for group, owner, used in ((cyclic_only, "--cyclic", args.cyclic), (one_cycle_only, "--one-cycle", args.one_cycle)):
        for flag, value in group.items():
            if value is not None and used is None:
                raise CliError(f"{flag} only applies with {owner}")
    _check_plot_file("-o", args.output)


def _check_arch(args: argparse.Namespace) -> None:
    if args.arch is None or args.data_folder is not None:  # a torchvision name: checked with torchvision loaded
        return
    if args.arch not in ARCHS:
        raise CliError(f"--arch: invalid choice {args.arch!r} (choose from {', '.join(ARCHS)}; torchvision models "
                       "such as resnet18 need --data-folder)")
    if (args.arch == "cnn1d") != (args.dataset == "mnist1d"):
        want = "cnn1d" if args.dataset == "mnist1d" else "resnet20 or resnet56"
        raise CliError(f"--arch {args.arch} does not fit --dataset {args.dataset}; use --arch {want}")


def _check_loader(args: argparse.Namespace) -> None:
    if args.loader is not None and args.data_folder is not None:
        raise CliError("--loader applies to --dataset only; --data-folder reads image files through a DataLoader "
                       "(use --num-workers to parallelise it)")
    if args.loader == "tensor" and args.num_workers > 0:
        raise CliError(f"--num-workers {args.num_workers} needs the DataLoader: the tensor loader (--loader tensor) "
                       "runs no workers; drop --loader (or pass --loader torch), or drop --num-workers")


def _check_device(device: str | None) -> None:
    # The syntax of torch.device(); whether this machine has the device is torch's to say.
    if device is not None and not re.fullmatch(r"[a-z_]+[a-z0-9_]*(:\d+)?", device):
        raise CliError(f"--device must look like 'cpu', 'cuda' or 'cuda:1'; got {device!r}")


def _check_folder(flag: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} must be a folder; {str(path)!r} is a file")
    blocking = next((p for p in path.parents if p.is_file()), None)
    if blocking is not None:  # mkdir would fail only after the training
        raise CliError(f"{flag} must be a folder path; {str(blocking)!r} is a file")


def _check_plot_file(flag: str, path: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase  # matplotlib only: no torch

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix[1:].lower()
    if suffix not in formats:
        raise CliError(f"{flag}: the file name's suffix picks the plot format, one of "
                       f"{', '.join(sorted(formats))}; got {str(path)!r}")
    if path.is_dir():
        raise CliError(f"{flag} must be a file name; {str(path)!r} is a folder")


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """Range test, 1cycle fit with cyclical momentum, final accuracy and plots on MNIST-1D."""
    from . import Learner, accuracy
    from .datasets import mnist1d
    from .models import mnist1d_cnn

    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _setup(args, "cnn1d", None)
    epochs, num_it = (2, 50) if args.quick else (8, 100)
    data = mnist1d(bs=128)
    print(f"MNIST-1D: {len(data.trn_ds)} training / {len(data.val_ds)} validation signals of length 40")
    learn = Learner(mnist1d_cnn(), data, metrics=[accuracy], progress=not args.no_progress)

    print(f"\n1. LR range test: learn.lr_find2(num_it={num_it})")
    s = learn.lr_find2(start_lr=1e-5, end_lr=10, num_it=num_it)  # prints its suggestions
    _save(learn.sched.plot(), out / "lr_find.png")
    max_lr, div = _demo_bounds(s)

    clr_beta = (div, 10, 0.95, 0.85)
    print(f"\n2. 1cycle: learn.fit({max_lr:.3g}, 1, cycle_len={epochs}, use_clr_beta=({div:.3g}, 10, 0.95, 0.85), wds=1e-4)")
    learn.fit(max_lr, 1, cycle_len=epochs, use_clr_beta=clr_beta, wds=1e-4)
    acc = learn.sched.rec_metrics[-1][0]
    print(f"\n3. final validation accuracy: {acc:.4f}")

    _save(learn.sched.plot_lr(), out / "lr_mom.png")
    _save(learn.sched.plot_loss(), out / "loss.png")
    print(f"\n4. plots: lr_find.png, lr_mom.png, loss.png in {out.resolve()}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _demo_bounds(s: Any) -> tuple[float, float]:
    """max_lr and div for the demo's 1cycle from trusted suggestions only; otherwise a safe default, said aloud."""
    from .suggest import Suggestions

    choice = s.one_cycle(div=10.0) if isinstance(s, Suggestions) else None
    if choice is None:  # never train with a nan, noted or unstable suggestion
        print("   (no trustworthy suggestion from this sweep, see the notes above; using max_lr=0.5, div=10 instead)")
        return 0.5, 10.0
    max_lr, div, used = choice
    if used != "clr_bounds":
        print(f"   (the CLR bounds are flagged, see the note above; using {used}: max_lr={max_lr:.3g}, div={div:.3g})")
    return max_lr, div


def cmd_fit(args: argparse.Namespace) -> int:
    """Train a built-in model with ``learn.fit``; write model, history and plots to ``--out``."""
    from . import accuracy

    learn = _learner(args, precision=dict(fp16=args.fp16, precision=args.precision), metrics=[accuracy])
    checkpoint = args.checkpoint if args.checkpoint is not None else args.out / CHECKPOINT_NAME
    options: dict[str, Any] = dict(checkpoint=checkpoint)
    for name in ("checkpoint_every", "accumulate", "on_nan"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for flag in ("resume", "compile", "use_wd_sched"):
        if getattr(args, flag):
            options[flag] = True
    main = learn.is_main_process  # under torchrun only rank 0 prints and writes files
    try:
        learn.fit(args.lr, args.n_cycle, cycle_len=args.cycle_len, cycle_mult=args.cycle_mult, wds=args.wds,
                  use_clr=args.use_clr, use_clr_beta=args.use_clr_beta, **options)
    except KeyboardInterrupt:
        _write_fit_outputs(learn, args.out, main)
        if main:
            print(f"clrfit fit: interrupted by Ctrl-C at epoch {learn.epoch}, iteration {learn.iteration}\n"
                  f"checkpoint: {Path(checkpoint).resolve()}\n"
                  f"resume with: {_resume_command(args)}", file=sys.stderr)
        return 130
    if main and learn.sched.rec_metrics:
        print(f"final validation accuracy: {learn.sched.rec_metrics[-1][0]:.4f}")
    _write_fit_outputs(learn, args.out, main)
    return 0


def _write_fit_outputs(learn: Any, out: Path, main: bool) -> None:
    """model.pt, history.json and, when there is a history, lr_mom.png and loss.png, in ``out``."""
    written = []
    if main:
        out.mkdir(parents=True, exist_ok=True)
        history = learn.sched.state_dict()
        (out / "history.json").write_text(json.dumps(history), encoding="utf-8")
        written.append("history.json")
        if history["iterations"]:
            _save(learn.sched.plot_lr(), out / "lr_mom.png")
            _save(learn.sched.plot_loss(), out / "loss.png")
            written += ["lr_mom.png", "loss.png"]
    learn.save(out / "model.pt")  # collective: rank 0 writes, every rank waits
    if main:
        print(f"wrote {', '.join(written)} and model.pt to {out.resolve()}")


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this fit: the same options, ``--resume``, and ``--out`` spelled out."""
    argv = list(args.argv)
    if "--resume" not in argv:
        argv.append("--resume")
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(args.out.resolve())]
    return shlex.join(["clrfit", *argv])


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run ``lr_find2`` and print its suggestions; write the plot."""
    learn = _learner(args)
    learn.lr_find2(start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it, wds=args.wds,
                   linear=args.linear, stop_dv=not args.no_stop_dv)
    if learn.is_main_process:  # lr_find2 printed the suggestions
        _save(learn.sched.plot(), args.output)
        print(f"wrote {args.output}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Plot a schedule with ``clrfit.schedules.preview`` (no training, no torch)."""
    cyclic = one_cycle = None
    if args.cyclic is not None:
        cyclic = dict(base_lr=args.cyclic[0], max_lr=args.cyclic[1])
        for key in ("step_size_up", "step_size_down", "mode", "gamma"):
            if getattr(args, key) is not None:
                cyclic[key] = getattr(args, key)
    if args.one_cycle is not None:
        one_cycle = dict(max_lr=args.one_cycle)
        for key in ("pct_start", "anneal_strategy"):
            if getattr(args, key) is not None:
                one_cycle[key] = getattr(args, key)
    from .schedules import preview

    values = preview(args.iterations, args.lr, use_clr=args.use_clr, use_clr_beta=args.use_clr_beta,
                     cycle_mult=args.cycle_mult, n_cycle=args.n_cycle, cyclic=cyclic, one_cycle=one_cycle)
    lrs = list(values.lrs)
    print(f"{len(lrs)} iterations: lr from {lrs[0]:.4g} (first) to {lrs[-1]:.4g} (last), "
          f"min {min(lrs):.4g}, max {max(lrs):.4g}")
    moms = values.momentums
    if moms is not None and len(moms) and None not in list(moms):
        print(f"momentum from {moms[0]:.4g} to {moms[-1]:.4g}, min {min(moms):.4g}, max {max(moms):.4g}")
    _save(values.plot(), args.output)
    print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------- helpers


def _learner(args: argparse.Namespace, precision: dict | None = None, metrics: Sequence | None = None):
    import torch

    from . import Learner
    from .datasets import get_data, input_shape
    from .models import get_model

    if args.device is not None:
        try:
            torch.device(args.device)
        except (RuntimeError, TypeError) as err:
            raise CliError(f"--device: {' '.join(str(err).split())}; got {args.device!r}") from None
    if args.data_folder is not None:
        return _folder_learner(args, precision, metrics)
    arch = args.arch or ("cnn1d" if args.dataset == "mnist1d" else "resnet20")
    shape = input_shape(args.dataset)
    _setup(args, arch, args.device)
    kwargs: dict[str, Any] = dict(loader=args.loader, num_workers=args.num_workers)
    if args.download:
        kwargs["download"] = True
    data = get_data(args.dataset, args.data_path, bs=args.bs, **kwargs)
    model = get_model(arch, n_classes=10, in_channels=shape[0])
    return Learner(model, data, opt_fn=_opt_fn(args.opt), metrics=metrics or [], device=args.device,
                   progress=not args.no_progress, **(precision or {}))


def _opt_fn(name: str) -> Callable:
    import functools

    import torch

    # weight_decay=0: --wds is the only source of weight decay (AdamW's own default is 0.01).
    if name == "sgd":
        return functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=0.0)
    if name == "adam":
        return functools.partial(torch.optim.Adam, weight_decay=0.0)
    return functools.partial(torch.optim.AdamW, weight_decay=0.0)


def _setup(args: argparse.Namespace, arch: str, device: str | None) -> None:
    """Seed every generator and set torch's thread count (``--threads``, else the small-model policy)."""
    import random

    import numpy as np
    import torch

    from .threads import cli_threads

    threads = args.threads if args.threads is not None else cli_threads(arch, device)
    if threads is not None:
        torch.set_num_threads(threads)
    seed = args.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(fig: Any, path: Path) -> None:
    from .plots import forget

    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    forget(fig)  # written to a file: not shown again should this run inside a notebook


def _version() -> str:
    from . import __version__

    return __version__


def _flags(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """Parameter name -> the flag that sets it, for one command (``lrs`` -> ``--lr``)."""
    flags = dict(_FLAG_NAMES)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            for a in action.choices[command]._actions:
                long = [o for o in a.option_strings if o.startswith("--")]
                if long and a.help is not argparse.SUPPRESS:
                    flags.setdefault(a.dest, long[0])
    return flags


def _is_divergence(err: BaseException) -> bool:
    # DivergenceError lives with torch-using code: only a fit that ran can raise it.
    module = sys.modules.get("clrfit.checkpoint")
    return module is not None and isinstance(err, getattr(module, "DivergenceError", ()))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clrfit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    args.argv = argv
    prog = f"clrfit {args.command}"
    try:
        args.check(args)
        return args.func(args)
    except CliError as err:
        print(f"{prog}: error: {err} (see '{prog} --help')", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as err:
        if os.environ.get("CLRFIT_DEBUG"):
            traceback.print_exc()
        if _is_divergence(err):  # not bad input: the run itself failed
            print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 1
        if isinstance(err, ArgumentError):
            flags = _flags(parser, args.command)
            message = err.render(lambda name: flags.get(name, name))
        else:
            message = str(err)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{prog}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
