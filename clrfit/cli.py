"""The ``clrfit`` command: ``demo``, ``fit``, ``lr-find`` and ``schedule``.

Bad input exits with status 2 and one line, ``clrfit ...: error: <message>``,
naming the option; that includes the ``ValueError``/``TypeError`` the library
raises for bad arguments (set ``CLRFIT_DEBUG=1`` to see their tracebacks).
A diverged fit exits with status 1, Ctrl-C with 130.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import random
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

DATASETS = ("mnist1d", "cifar10", "mnist", "fashion-mnist")
ARCHS = ("cnn1d", "resnet20", "resnet56")


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
    demo.add_argument("--out", type=Path, default=Path("clrfit-out"), help="output folder (default: ./clrfit-out)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="fewer iterations and epochs (a smoke test)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (the epoch table stays)")
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="torch intra-op threads (default 1: the small CNN gains nothing from more, "
                           "and on a busy machine extra threads slow it down many times)")
    demo.set_defaults(func=cmd_demo)

    fit = sub.add_parser("fit", help="train a built-in model on a built-in or torchvision dataset",
                         description="Train with learn.fit: constant lr, SGDR (--cycle-len), "
                                     "--use-clr or --use-clr-beta (1cycle).")
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
    fit.add_argument("--checkpoint", type=Path, metavar="PATH", help="write checkpoints to PATH (every epoch end)")
    fit.add_argument("--checkpoint-every", type=_positive_int, metavar="K", help="also checkpoint every K iterations")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    fit.add_argument("--accumulate", type=_positive_int, default=1, metavar="K", help="micro-batches per optimizer step")
    precision = fit.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="mixed precision with float16 and a gradient scaler")
    precision.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="numeric precision (default fp32)")
    fit.add_argument("--compile", action="store_true", help="torch.compile the model")
    fit.add_argument("--on-nan", choices=("raise", "restore", "ignore"),
                     help="on a non-finite loss: stop with an error (default), restore the last checkpoint, or go on")
    fit.add_argument("--out", type=Path, help="folder for lr_mom.png, loss.png and model.pt")
    fit.set_defaults(func=cmd_fit)

    find = sub.add_parser("lr-find", help="LR range test (lr_find2): print suggestions, plot loss vs lr",
                          description="Run learn.lr_find2 and print its suggestions (minimum, steep, valley, "
                                      "CLR bounds); the plot goes to -o.")
    _data_options(find)
    find.add_argument("--num-it", type=_positive_int, default=100, help="iterations of the sweep (default 100)")
    find.add_argument("--start-lr", type=_positive_float, default=1e-5, help="first lr (default 1e-5)")
    find.add_argument("--end-lr", type=_positive_float, default=10.0, help="last lr (default 10)")
    find.add_argument("--linear", action="store_true", help="linear sweep (default exponential)")
    find.add_argument("--no-stop-dv", action="store_true", help="do not stop when the loss diverges")
    find.add_argument("--wds", type=_non_negative_float, help="weight decay during the test")
    find.add_argument("-o", "--output", type=Path, default=Path("lr_find.png"), help="plot file (default lr_find.png)")
    find.set_defaults(func=cmd_lr_find)

    sched = sub.add_parser("schedule", help="plot a schedule without training",
                           description="Plot lr (and momentum) of a schedule over --iterations, without training. "
                                       "Plain SGDR by default; or --use-clr, --use-clr-beta, --cyclic, --one-cycle.")
    sched.add_argument("--iterations", type=_positive_int, default=1000, help="iterations to plot (default 1000)")
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
    sched.add_argument("--mode", choices=("triangular", "triangular2", "exp_range"), help="--cyclic mode")
    sched.add_argument("--gamma", type=_positive_float, help="--cyclic exp_range decay (default 1.0)")
    sched.add_argument("--pct-start", type=_float, help="--one-cycle: fraction of steps going up (default 0.3)")
    sched.add_argument("--anneal-strategy", choices=("cos", "linear"), help="--one-cycle annealing (default cos)")
    sched.add_argument("-o", "--output", type=Path, default=Path("lr.png"), help="plot file (default lr.png)")
    sched.set_defaults(func=cmd_schedule)
    return parser


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="mnist1d", help="dataset (default mnist1d)")
    p.add_argument("--data-path", type=Path, metavar="P",
                   help="folder of the torchvision datasets (default: <user cache>/clrfit/data)")
    p.add_argument("--download", action="store_true", help="download the torchvision dataset if it is missing")
    p.add_argument("--arch", choices=ARCHS, help="model (default: cnn1d for mnist1d, resnet20 otherwise)")
    p.add_argument("--bs", type=_positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--opt", choices=("sgd", "adam", "adamw"), default="sgd", help="optimizer (default SGD, momentum 0.9)")
    p.add_argument("--num-workers", type=_non_negative_int, default=0, help="data loader workers (default 0)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the epoch table stays)")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)")


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """Range test, 1cycle fit with cyclical momentum, final accuracy and plots on MNIST-1D."""
    from . import Learner, accuracy
    from .datasets import mnist1d
    from .models import mnist1d_cnn

    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _setup(args)
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
    """max_lr and div from the range test's CLR bounds; a safe default if the curve gave none."""
    bounds = getattr(s, "clr_bounds", None)
    max_lr = _as_float(getattr(bounds, "max_lr", None))
    div = _as_float(getattr(bounds, "div", None))
    if max_lr is None or not max_lr > 0 or div is None or not div > 1:
        print("   (no usable CLR bounds from this curve; using max_lr=0.5, div=10)")
        return 0.5, 10.0
    return max_lr, div


def cmd_fit(args: argparse.Namespace) -> int:
    """Train a built-in model with ``learn.fit`` and the options given."""
    from . import accuracy

    if (args.checkpoint_every is not None or args.resume) and args.checkpoint is None:
        raise CliError(f"argument {'--resume' if args.resume else '--checkpoint-every'}: needs --checkpoint PATH")
    learn = _learner(args, precision=dict(fp16=args.fp16, precision=args.precision), metrics=[accuracy])
    options: dict[str, Any] = {}
    for name in ("checkpoint", "checkpoint_every", "accumulate", "on_nan"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for flag in ("resume", "compile", "use_wd_sched"):
        if getattr(args, flag):
            options[flag] = True
    learn.fit(args.lr, args.n_cycle, cycle_len=args.cycle_len, cycle_mult=args.cycle_mult, wds=args.wds,
              use_clr=args.use_clr, use_clr_beta=args.use_clr_beta, **options)
    main = learn.is_main_process  # under torchrun only rank 0 prints and writes files
    if main and learn.sched.rec_metrics:
        print(f"final validation accuracy: {learn.sched.rec_metrics[-1][0]:.4f}")
    if args.out is not None:
        if main:
            args.out.mkdir(parents=True, exist_ok=True)
            _save(learn.sched.plot_lr(), args.out / "lr_mom.png")
            _save(learn.sched.plot_loss(), args.out / "loss.png")
        learn.save(args.out / "model.pt")  # collective: rank 0 writes, every rank waits
        if main:
            print(f"wrote lr_mom.png, loss.png and model.pt to {args.out.resolve()}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run ``lr_find2`` and print its suggestions; write the plot."""
    if not args.end_lr > args.start_lr:
        raise CliError(f"argument --end-lr: must be greater than --start-lr ({args.start_lr:g}); got {args.end_lr:g}")
    learn = _learner(args)
    learn.lr_find2(start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it, wds=args.wds,
                   linear=args.linear, stop_dv=not args.no_stop_dv)
    if learn.is_main_process:  # lr_find2 printed the suggestions
        _save(learn.sched.plot(), args.output)
        print(f"wrote {args.output}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Plot a schedule over ``--iterations`` with ``clrfit.schedules.preview`` (no training)."""
    cyclic_only = {"--step-size-up": args.step_size_up, "--step-size-down": args.step_size_down,
                   "--mode": args.mode, "--gamma": args.gamma}
    one_cycle_only = {"--pct-start": args.pct_start, "--anneal-strategy": args.anneal_strategy}
    for group, owner, used in ((cyclic_only, "--cyclic", args.cyclic), (one_cycle_only, "--one-cycle", args.one_cycle)):
        for flag, value in group.items():
            if value is not None and used is None:
                raise CliError(f"argument {flag}: only applies with {owner}")
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


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _learner(args: argparse.Namespace, precision: dict | None = None, metrics: Sequence | None = None):
    from . import Learner
    from .datasets import get_data, input_shape
    from .models import get_model

    arch = args.arch or ("cnn1d" if args.dataset == "mnist1d" else "resnet20")
    shape = input_shape(args.dataset)
    if (arch == "cnn1d") != (len(shape) == 2):
        want = "cnn1d" if len(shape) == 2 else "resnet20 or resnet56"
        raise CliError(f"argument --arch: {arch} does not fit --dataset {args.dataset}; use --arch {want}")
    _setup(args)
    kwargs: dict[str, Any] = dict(num_workers=args.num_workers) if args.dataset != "mnist1d" else {}
    if args.download:
        kwargs["download"] = True
    data = get_data(args.dataset, args.data_path, bs=args.bs, **kwargs)
    model = get_model(arch, n_classes=10, in_channels=shape[0])
    return Learner(model, data, opt_fn=_opt_fn(args.opt), metrics=metrics or [], device=args.device,
                   progress=not args.no_progress, **(precision or {}))


def _opt_fn(name: str) -> Callable:
    import torch

    # weight_decay=0: --wds is the only source of weight decay (AdamW's own default is 0.01).
    if name == "sgd":
        return functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=0.0)
    if name == "adam":
        return functools.partial(torch.optim.Adam, weight_decay=0.0)
    return functools.partial(torch.optim.AdamW, weight_decay=0.0)


def _setup(args: argparse.Namespace) -> None:
    """Seed every generator and set torch's thread count."""
    import numpy as np
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed = args.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(fig: Any, path: Path) -> None:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _version() -> str:
    from . import __version__

    return __version__


_LIBRARY_NAMES = {"lrs": "lr", "start_lr": "start_lr", "end_lr": "end_lr"}


def _option_hint(parser: argparse.ArgumentParser, command: str | None, message: str) -> str:
    """The flag for the library argument a message names first (``use_clr_beta`` -> ``--use-clr-beta``)."""
    sub = _subparser(parser, command)
    if sub is None:
        return ""
    flags = {a.dest: a.option_strings[-1] for a in sub._actions if any(o.startswith("--") for o in a.option_strings)}
    names = dict(_LIBRARY_NAMES, **{dest: dest for dest in flags})
    found = []
    for name, dest in names.items():
        match = re.search(rf"\b{re.escape(name)}\b", message)
        if match and dest in flags:
            found.append((match.start(), -len(name), flags[dest]))
    return f" [option {min(found)[2]}]" if found else ""


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clrfit`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    prog = f"clrfit {args.command}"
    from .checkpoint import DivergenceError

    try:
        return args.func(args)
    except DivergenceError as err:  # not bad input: the run itself failed
        print(f"clrfit: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except CliError as err:
        print(f"{prog}: error: {err} (see '{prog} --help')", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as err:
        if os.environ.get("CLRFIT_DEBUG"):
            traceback.print_exc()
        message = " ".join(str(err).split())  # one line
        print(f"clrfit: error: {message}{_option_hint(parser, args.command, message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\nclrfit: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
