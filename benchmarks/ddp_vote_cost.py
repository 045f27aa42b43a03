"""Cost of the per-step stop vote under DDP: one ``agree_on_stop`` vs one DDP training step.

Run under torchrun (gloo on CPU)::

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 benchmarks/ddp_vote_cost.py --rounds 5 --steps 200

Each round times ``--steps`` plain DDP training steps of the MNIST-1D CNN (forward, backward with
its gradient all-reduce, SGD step; per-rank batch ``--bs``) and, interleaved with them, ``--steps``
stop votes (the one small all-reduce clrfit adds after every step). Rank 0 prints both per-step times
and their ratio for every round, then the median ratio: the fraction the vote adds to a step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from clrfit.distributed import Stop, from_environment
from clrfit.models import mnist1d_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ctx = from_environment()
    torch.manual_seed(0)
    model = ctx.wrap(mnist1d_cnn(), torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(args.bs, 1, 40), torch.randint(0, 10, (args.bs,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def steps() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            loss_fn(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / args.steps

    def votes() -> float:
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            ctx.agree_on_stop(Stop.NONE)
        return (time.perf_counter() - start) / args.steps

    steps(), votes()  # warm-up
    ratios = []
    if ctx.is_main:
        print(f"world size {ctx.world_size}, backend {ctx.backend}, {args.threads} thread(s) per rank, "
              f"per-rank batch {args.bs}, {args.steps} steps per round")
    for r in range(args.rounds):
        step_s, vote_s = steps(), votes()
        ratios.append(vote_s / step_s)
        if ctx.is_main:
            print(f"round {r}: DDP step {step_s * 1e3:.3f} ms, vote {vote_s * 1e6:.1f} us, vote/step {ratios[-1]:.3f}")
    if ctx.is_main:
        print(f"median vote/step: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
