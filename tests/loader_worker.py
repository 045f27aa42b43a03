"""Worker for tests/test_loaders.py: under ``torchrun`` every rank trains on its share of each global batch.

``python -m torch.distributed.run --nproc_per_node=W tests/loader_worker.py OUT GLOBAL_BS`` writes
``OUT/W<W>-rank<R>.pt``: for each run, the sample ids of every batch this rank
trained on and the final weights. With ``W=1`` it is the single process the
other world sizes are compared with. Each rank uses ``GLOBAL_BS / W`` as its
batch size.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from clrfit import Callback, Learner, ModelData

N_TRN, N_VAL, N_FEATURES = 66, 23, 5  # 66 = 5 global batches of 12 and a last one of 6
LR, CYCLE_LEN, CLR_BETA = 0.05, 2, (10, 10, 0.95, 0.85)


class SampleIds(Callback):
    """Records the ids of the samples in each training batch (feature 0 of x is the id)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_loss(self) -> None:
        self.batches.append(self.learn.xb[:, 0].round().long().tolist())


def make_data(bs: int, loader: str, n_trn: int = N_TRN) -> ModelData:
    """Feature 0 is the sample id (so batches can be identified); the label depends on the other features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_trn + N_VAL, N_FEATURES, generator=g)
    x[:, 0] = torch.arange(n_trn + N_VAL).float()
    y = (x[:, 1] + 0.5 * x[:, 2] > 0).long()
    return ModelData.from_tensors(x[:n_trn], y[:n_trn], x[n_trn:], y[n_trn:], bs=bs, loader=loader)


def make_model() -> nn.Module:
    torch.manual_seed(1)
    # The id feature is scaled down so it does not swamp the others; no BatchNorm, no dropout.
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[:, 0] *= 0.01
    return model


def run(bs: int, loader: str, opt: str, n_trn: int = N_TRN) -> dict:
    """One shuffled 1cycle fit of two epochs; returns the batches seen and the final weights."""
    torch.manual_seed(0)  # every rank (and the single process) draws the same shuffles
    data = make_data(bs, loader, n_trn)
    opt_fn = None
    if opt == "adam":
        def opt_fn(params, lr):
            return torch.optim.Adam(params, lr=lr)
    ids = SampleIds()
    learn = Learner(make_model(), data, opt_fn=opt_fn, callbacks=[ids], progress=False, table=False)
    rec = learn.fit(LR, 1, cycle_len=CYCLE_LEN, use_clr_beta=CLR_BETA)
    return {"batches": ids.batches, "nb": learn.nb, "lrs": rec.lrs, "val_losses": rec.val_losses,
            "state": {k: v.detach().clone() for k, v in learn.model.state_dict().items()}}


def ranks_that_disagree(bs: int) -> str:
    """Ranks seeded differently would shuffle differently: the Learner refuses, on every rank."""
    model = make_model()
    torch.manual_seed(int(os.environ.get("RANK", "0")))
    try:
        Learner(model, make_data(bs, "tensor"), progress=False, table=False)
    except ValueError as err:
        return str(err)
    return ""


def main(out: str, global_bs: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bs = global_bs // world
    results = {f"{loader}-{opt}": run(bs, loader, opt) for loader in ("tensor", "torch") for opt in ("sgd", "adam")}
    results["uneven"] = run(bs, "tensor", "sgd", n_trn=N_TRN - 2)  # last global batch of 4
    if world > 1:
        results["disagree"] = ranks_that_disagree(bs)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(results, Path(out) / f"W{world}-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
