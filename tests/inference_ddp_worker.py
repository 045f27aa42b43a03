"""Run under torchrun (2 ranks, gloo): get_preds on each rank; each rank saves what it got.

Usage: ``torchrun --nproc_per_node=2 tests/inference_ddp_worker.py OUT_DIR``. Also importable:
:func:`build` makes the same learner in one process for the comparison.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

from clrfit import Learner, ModelData
from clrfit.inference import get_preds
from clrfit.transfer import freeze


def build(loader: str = "tensor") -> Learner:
    """A fixed model and 21 validation samples (shards of 11 and 10), a BatchNorm to broadcast."""
    torch.manual_seed(0)
    x = torch.randn(48, 5)
    y = (x[:, 0] > 0).long()
    data = ModelData.from_tensors(x[:27], y[:27], x[27:], y[27:], bs=4, val_bs=4, loader=loader)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return Learner(model, data, progress=False, table=False, device="cpu")


def build_grouped() -> Learner:
    """Two layer groups (body, head) over the same data, for freezing under DDP."""
    torch.manual_seed(1)
    x = torch.randn(48, 5)
    y = (x[:, 0] > 0).long()
    data = ModelData.from_tensors(x[:27], y[:27], x[27:], y[27:], bs=4, val_bs=4)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 2))
    return Learner(model, data, layer_groups=[model[0], model[3]], progress=False, table=False, device="cpu")


if __name__ == "__main__":
    torch.set_num_threads(1)
    learn = build()
    rank = learn.dist.rank
    if rank == 1:  # rank 0's BatchNorm statistics must be the ones used on every rank
        learn.model[1].running_mean.fill_(5.0)
    preds, targets, losses = get_preds(learn, with_loss=True)
    n_local = len(learn.data.val_dl.sampler)
    torch_learn = build(loader="torch")  # a DataLoader: sharded with a ShardSampler instead
    if rank == 1:
        torch_learn.model[1].running_mean.fill_(5.0)
    torch_preds, torch_targets = get_preds(torch_learn)
    frozen = build_grouped()
    freeze(frozen)  # DDP must be re-wrapped: it fixed its reduced parameters at construction
    before = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    frozen.fit(0.1, 1)
    changed = sorted(k for k, v in frozen.model.state_dict().items() if not torch.equal(before[k], v))
    torch.save({"preds": preds, "targets": targets, "losses": losses, "n_local": n_local,
                "training": learn.model.training, "changed": changed,
                "torch_preds": torch_preds, "torch_targets": torch_targets,
                "head": frozen.model[3].weight.detach().clone()}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
