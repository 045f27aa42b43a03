"""Worker for tests/test_elastic.py: write a checkpoint on some ranks, resume it on others.

``python [-m torch.distributed.run --nproc_per_node=W] tests/elastic_worker.py MODE DIR``

- ``save`` (2 ranks): fits A and C (TensorLoaders) stop themselves at iteration ``STOP_AT``; fit B
  (DataLoader) writes ``DIR/killme-<rank>`` (its pid) at ``STOP_AT`` and sleeps until
  the test SIGKILLs every rank. Both leave the checkpoint of iteration ``STOP_AT - 1``
  (``checkpoint_every=4``, mid-epoch) in ``DIR/A.pt``, ``DIR/C.pt`` and ``DIR/B.pt``.
- ``resume``: resumes the three files on this world size, then runs the three
  fits uninterrupted; rank 0 writes ``DIR/W<W>.pt`` with the six results.
- ``plain``: only the uninterrupted fits (the multi-node rendezvous test).

Each rank's batch is ``GLOBAL_BS / W`` (``BS`` in the environment overrides it).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from clrfit import Callback, Learner, ModelData
from clrfit.callback import CancelFitException

N_TRN, N_VAL, N_FEATURES = 66, 20, 5  # 66 = 5 global batches of 12 and a last one of 6 (even on 1, 2 and 3 ranks)
GLOBAL_BS, EPOCHS, EVERY, STOP_AT = 12, 3, 4, 9  # 6 steps per epoch; checkpoint at 4 and 8; stop in epoch 1
LR, CLR_BETA = 0.05, (10, 10, 0.95, 0.85)


class StopAt(Callback):
    """At ``iteration`` (after the checkpoint writer): cancel the fit, or mark the moment and wait to be killed."""

    order = 70

    def __init__(self, iteration: int, marker: Path | None = None) -> None:
        self.iteration, self.marker = iteration, marker

    def on_batch_end(self) -> None:
        if self.learn.iteration != self.iteration:
            return
        if self.marker is None:
            raise CancelFitException()
        # Every rank says who it is: torchrun starts ranks in their own sessions, so the test kills each by pid.
        self.marker.with_name(f"{self.marker.name}-{self.learn.dist.rank}").write_text(str(os.getpid()))
        time.sleep(600)  # the test kills every rank with SIGKILL


def make_data(bs: int, loader: str, seed: int | None = None) -> ModelData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRN + N_VAL, N_FEATURES, generator=g)
    y = (x[:, 1] + 0.5 * x[:, 2] > 0).long()
    extra = {} if seed is None else {"seed": seed}  # seed=s: the loader's own generator stream, not the global RNG
    return ModelData.from_tensors(x[:N_TRN], y[:N_TRN], x[N_TRN:], y[N_TRN:], bs=bs, loader=loader, **extra)


def make_learner(bs: int, loader: str, opt: str, seed: int | None = None) -> Learner:
    torch.manual_seed(0)  # every rank (and the single process) draws the same shuffles
    data = make_data(bs, loader, seed)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 2))  # no BatchNorm, no dropout
    torch.manual_seed(0)
    opt_fn = (lambda params, lr: torch.optim.Adam(params, lr=lr)) if opt == "adam" else None
    return Learner(model, data, opt_fn=opt_fn, progress=False, table=False)


FITS = {"A": ("tensor", "adam", None), "C": ("tensor", "sgd", 5), "B": ("torch", "sgd", None)}


def fit(name: str, bs: int, checkpoint: Path, resume: bool, stop: Callback | None = None) -> dict:
    loader, opt, seed = FITS[name]
    learn = make_learner(bs, loader, opt, seed)
    rec = learn.fit(LR, 1, cycle_len=EPOCHS, use_clr_beta=CLR_BETA, checkpoint=checkpoint, checkpoint_every=EVERY,
                    resume=resume, callbacks=[stop] if stop else None)
    return {"lrs": rec.lrs, "moms": rec.momentums, "iterations": rec.iterations, "val_losses": rec.val_losses,
            "iteration": learn.iteration, "world_size": learn.dist.world_size,
            "state": {k: v.detach().clone() for k, v in learn.model.state_dict().items()}}


def main(mode: str, folder: str) -> None:
    out = Path(folder)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bs = int(os.environ.get("BS", GLOBAL_BS // world))
    if mode == "save":
        fit("A", bs, out / "A.pt", False, StopAt(STOP_AT))
        fit("C", bs, out / "C.pt", False, StopAt(STOP_AT))
        fit("B", bs, out / "B.pt", False, StopAt(STOP_AT, out / "killme"))
        return
    results = {f"resumed-{name}": fit(name, bs, out / f"{name}.pt", True) for name in FITS} if mode == "resume" else {}
    results.update({f"plain-{name}": fit(name, bs, out / f"plain-{name}.pt", False) for name in FITS})
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out / f"W{world}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
