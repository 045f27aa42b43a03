"""What several CPU benchmarks share: their common flags and the MNIST-1D CNN learner they time."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from clrfit import Learner, ModelData
from clrfit.models import mnist1d_cnn


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--rounds``, ``--bs``, ``--threads`` and ``--synthetic``."""
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of MNIST-1D")


def mnist1d_learner(args: argparse.Namespace, **learner_kwargs: Any) -> tuple[Learner, str]:
    """Set ``--threads``; the MNIST-1D CNN learner (seed 0) on MNIST-1D or same-shaped random data, and its description."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(5000, 1, 40, generator=g), torch.randint(0, 10, (5000,), generator=g)
        data = ModelData.from_tensors(x[:4000], y[:4000], x[4000:], y[4000:], bs=args.bs)
        name = "synthetic MNIST-1D-shaped"
    else:
        from clrfit.datasets import mnist1d

        data, name = mnist1d(bs=args.bs), "MNIST-1D"
    torch.manual_seed(0)
    learn = Learner(mnist1d_cnn(), data, progress=False, table=False, **learner_kwargs)
    return learn, f"{name}: {data!r}, mnist1d_cnn; torch {torch.__version__}, {torch.get_num_threads()} threads"
