"""Worker for tests/test_distributed.py: run under ``torchrun`` it trains tiny models on every rank.

Each rank writes ``<out>/rank<R>.pt`` with what it recorded, so the test can
compare ranks with each other and with a single process. The data builders are
imported by the test too, so both sides train on exactly the same samples.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from clrfit import Learner, ModelData, accuracy

N_TRN, N_VAL, N_FEATURES = 64, 21, 6  # 21 validation samples: the ranks' shards differ in size
LR, CYCLE_LEN, CLR_BETA = 0.2, 2, (10, 10, 0.95, 0.85)


def make_data(bs: int) -> ModelData:
    """Deterministic two-class data; no shuffling, so batches compose exactly across ranks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRN + N_VAL, N_FEATURES, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return ModelData.from_tensors(x[:N_TRN], y[:N_TRN], x[N_TRN:], y[N_TRN:], bs=bs, shuffle=False)


def make_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(8)] if batchnorm else []
    return nn.Sequential(nn.Linear(N_FEATURES, 8), *norm, nn.ReLU(), nn.Linear(8, 2))


def run(bs: int, accumulate: int = 1, batchnorm: bool = False, compile: bool | str = False) -> dict:
    """One 1cycle fit; returns what the test compares."""
    learn = Learner(make_model(batchnorm), make_data(bs), metrics=[accuracy], progress=False, table=False)
    rec = learn.fit(LR, 1, cycle_len=CYCLE_LEN, use_clr_beta=CLR_BETA, accumulate=accumulate, compile=compile)
    return {
        "lrs": rec.lrs, "moms": rec.momentums, "iterations": rec.iterations, "nb": learn.nb,
        "val_losses": rec.val_losses, "metrics": rec.rec_metrics,
        "state": {k: v.detach().cpu().clone() for k, v in learn.model.state_dict().items()},
        "is_main": learn.is_main_process,
        "train_model": type(getattr(learn.train_model, "_orig_mod", learn.train_model)).__name__,
        "compiled": learn.train_model is not getattr(learn.train_model, "_orig_mod", learn.train_model),
        "n_val_local": len(learn.data.val_dl.sampler),
        "any_rank": learn.dist.any_rank(learn.dist.rank == learn.dist.world_size - 1),
        "none_rank": learn.dist.any_rank(False),
    }


def run_finder(bs: int) -> dict:
    """An lr_find2 sweep that diverges; returns where it stopped and whether the weights came back."""
    learn = Learner(make_model(), make_data(bs), metrics=[accuracy], progress=False, table=False)
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.lr_find2(start_lr=1e-3, end_lr=1e4, num_it=40)
    rec = learn.sched
    return {"iterations": rec.iterations, "lrs": rec.lrs, "raw_losses": rec.raw_losses, "diverged": rec.diverged,
            "val_losses": rec.val_losses,
            "restored": all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))}


def main(out: str, bs: int) -> None:
    results = {"plain": run(bs), "accumulate": run(bs, accumulate=2), "batchnorm": run(bs, batchnorm=True),
               "finder": run_finder(bs), "compiled": run(bs, compile="aot_eager")}
    rank = torch.distributed.get_rank()
    torch.save(results, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
