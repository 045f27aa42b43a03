"""Worker for tests/test_fsdp.py: ``Learner(..., strategy="fsdp")`` under torchrun with gloo on CPU.

``python [-m torch.distributed.run --nproc_per_node=W] tests/fsdp_worker.py MODE DIR``

- ``train`` (W=2): fit ``ckpt`` (accumulate=2, checkpoint_every=2) cancels itself at
  iteration 4, leaving the mid-epoch checkpoint of that iteration in ``DIR/ckpt.pt``
  (+ its DCP folder); then an ``lr_find2``, an uninterrupted fit, one over DataLoaders, bf16,
  fp16 and compiled (``compile="aot_eager"``) fits.
- ``resume`` (any W): resumes ``DIR/ckpt.pt`` on this world size, then runs the
  uninterrupted fit, DataLoader, bf16 and fp16 fits (with W=1: the plain single-process reference, and
  a compiled fit, as in ``train``).

Rank 0 writes ``DIR/<MODE>-W<W>.pt``; every rank adds what must agree across ranks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clrfit import Callback, Learner, ModelData
from clrfit.callback import CancelFitException

N_TRN, N_VAL, N_FEATURES = 66, 13, 5  # 13 validation samples in batches of 6: 2 batches on rank 0, 1 on rank 1
GLOBAL_BS, EPOCHS, ACCUMULATE, EVERY, STOP_AT = 12, 3, 2, 2, 4  # 3 steps per epoch, 9 in all
LR, CLR_BETA = 0.1, (10, 10, 0.95, 0.85)


class StopAt(Callback):
    """Cancel the fit after step ``iteration`` (after the checkpoint writer)."""

    order = 70

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_batch_end(self) -> None:
        if self.learn.iteration == self.iteration:
            raise CancelFitException()


def make_learner(bs: int, precision: str | None = None, loader: str = "tensor") -> Learner:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRN + N_VAL, N_FEATURES, generator=g)
    y = (x[:, 1] + 0.5 * x[:, 2] > 0).long()
    data = ModelData.from_tensors(x[:N_TRN], y[:N_TRN], x[N_TRN:], y[N_TRN:], bs=bs, val_bs=6, loader=loader)
    # Ranks seeded differently on purpose: FSDP must start every rank from rank 0's weights, as DDP does.
    torch.manual_seed(1 + int(os.environ.get("RANK", "0")))
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 2))
    torch.manual_seed(0)

    def opt_fn(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    # Two layer groups (trained with two lrs): FSDP replaces the parameters, the groups must follow.
    return Learner(model, data, opt_fn=opt_fn, layer_groups=[model[0], model[2]], precision=precision,
                   progress=False, table=False, strategy="fsdp")


def full_state(learn: Learner) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank (DTensor shards gathered)."""
    out = {}
    for key, value in learn.model.state_dict().items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[key] = value.detach().clone()
    return out


def fit(bs: int, precision: str | None = None, checkpoint: Path | None = None, resume: bool = False,
        stop: Callback | None = None, loader: str = "tensor", compile: bool | str = False) -> dict:
    learn = make_learner(bs, precision, loader)
    kwargs = dict(checkpoint=checkpoint, checkpoint_every=EVERY, resume=resume) if checkpoint else {}
    rec = learn.fit([LR / 10, LR], 1, cycle_len=EPOCHS, use_clr_beta=CLR_BETA, accumulate=ACCUMULATE,
                    callbacks=[stop] if stop else None, compile=compile, **kwargs)
    return {"lrs": rec.lrs, "moms": rec.momentums, "iterations": rec.iterations, "val_losses": rec.val_losses,
            "group_lrs": [float(g["lr"]) for g in learn.opt.param_groups], "iteration": learn.iteration, "state": full_state(learn), "world_size": learn.dist.world_size,
            "sharded": type(next(learn.model.parameters())).__name__}


def range_test(bs: int, folder: Path) -> dict:
    learn = make_learner(bs)
    before = full_state(learn)
    try:
        learn.save(folder / "plain.pt")
        refused = ""
    except ValueError as err:
        refused = str(err)
    suggestions = learn.lr_find2(start_lr=1e-4, end_lr=100, num_it=12)
    rec = learn.sched
    return {"lrs": rec.lrs, "losses": rec.losses, "suggestions": suggestions.as_dict(),
            "save_refused": refused, "restored": all(torch.equal(v, before[k]) for k, v in full_state(learn).items())}


def main(mode: str, folder: str) -> None:
    out = Path(folder)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    bs = GLOBAL_BS // world
    results: dict = {}

    def stage(name: str, result: dict) -> None:  # a line per stage: a crash's output says how far it got
        results[name] = result
        print(f"fsdp_worker rank {rank}: {name} done", file=sys.stderr, flush=True)

    if mode == "train":
        fit(bs, checkpoint=out / "ckpt.pt", stop=StopAt(STOP_AT))
        stage("range_test", range_test(bs, out))
    else:
        stage("resumed", fit(bs, checkpoint=out / "ckpt.pt", resume=True))
    stage("plain", fit(bs))
    stage("dataloader", fit(bs, loader="torch"))  # torch DataLoaders: GlobalOrderSampler, padded ShardSampler
    stage("bf16", fit(bs, "bf16"))
    stage("fp16", fit(bs, "fp16"))
    if mode == "train" or world == 1:  # torch.compile through FSDP2's hooks (aot_eager: traced, no C++ build)
        stage("compiled", fit(bs, compile="aot_eager"))
    if world > 1:  # what every rank must agree on, gathered to rank 0
        mine = {k: (results[k]["lrs"], results[k].get("losses", results[k].get("val_losses"))) for k in results}
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
        results["per_rank"] = everyone
    if rank == 0:
        torch.save(results, out / f"{mode}-W{world}.pt")
    print(f"fsdp_worker rank {rank}: all done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
