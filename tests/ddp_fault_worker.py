"""Worker for tests/test_ddp_faults.py: under ``torchrun`` it trains a tiny model and injects one fault.

``python ddp_fault_worker.py OUT SCENARIO`` where SCENARIO is one of

- ``none``: a clean fit;
- ``raise:R:EVENT:K``: rank R (-1: every rank) raises ``RuntimeError`` from callback event EVENT at iteration K
  (every fault writes ``OUT/fault_time`` first);
- ``cancel:R:EVENT:K``: rank R raises ``CancelFitException`` from EVENT at iteration K;
- ``nan:R:on_loss:K``: rank R's loss becomes NaN at iteration K (the divergence check must stop every rank);
- ``sigint:R:K``: rank R sends itself SIGINT as iteration K begins;
- ``kill:R:K``: rank R sends itself SIGKILL as iteration K begins;
- ``trials:N``: N fits in a row; in each, rank 0 sends SIGINT to every rank at once (a terminal
  Ctrl-C) from a timer thread, at a random moment of the fit;
- ``outside:R``: after a clean fit rank R raises ``ValueError`` in the script, while the others save;
- ``wait``: a long fit that writes ``OUT/training`` once it trains, for a signal from outside.

Each rank writes ``OUT/rank<R>.json`` (what happened, the counters where it stopped, how many
checkpoints it wrote after a Ctrl-C, when it ended) before the error, if any, leaves the script,
so the test can compare the ranks with each other and with the checkpoint file.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clrfit import Callback, CancelFitException, Learner, ModelData
from clrfit.checkpoint import Checkpoint

N_TRN, N_VAL, N_FEATURES, BS = 96, 16, 6, 4  # 96 samples, global batch 8 on 2 ranks: 12 steps per epoch
EPOCHS, CHECKPOINT_EVERY = 3, 4
OUT = Path(".")  # the output folder (set by main)


def make_learner() -> Learner:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRN + N_VAL, N_FEATURES, generator=g)
    y = (x[:, 0] > 0).long()
    data = ModelData.from_tensors(x[:N_TRN], y[:N_TRN], x[N_TRN:], y[N_TRN:], bs=BS, shuffle=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, 2))
    return Learner(model, data, progress=False, table=False)


class CountingCheckpoint(Checkpoint):
    """The real checkpoint writer; counts the writes a Ctrl-C causes (``on_train_end``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, every=CHECKPOINT_EVERY)
        self.final_writes = 0

    def on_train_end(self) -> None:
        before = self.saved_at
        super().on_train_end()
        if self.saved_at != before:
            self.final_writes += 1


class Fault(Callback):
    """Raises, cancels or signals on one rank at one event and iteration."""

    def __init__(self, action: str, rank: int, event: str, iteration: int) -> None:
        self.action, self.rank, self.event, self.iteration = action, rank, event, iteration
        setattr(self, event, self._maybe)  # an instance attribute: the learner sees the event as overridden

    def _maybe(self) -> None:
        learn = self.learn
        if self.rank not in (-1, learn.dist.rank) or learn.iteration != self.iteration:
            return
        (OUT / "fault_time").write_text(repr(time.time()))
        if self.action == "raise":
            raise RuntimeError(f"injected fault on rank {self.rank} in {self.event}")
        if self.action == "cancel":
            raise CancelFitException()
        if self.action == "nan":  # this rank's loss (and, through the gradient all-reduce, every weight) turns NaN
            learn.loss = learn.loss * float("nan")
            return
        os.kill(os.getpid(), signal.SIGINT if self.action == "sigint" else signal.SIGKILL)


class Slow(Callback):
    """Keeps steps long enough for a signal from outside to land mid-fit, and says when training runs."""

    def __init__(self, out: Path, seconds: float) -> None:
        self.out, self.seconds = out, seconds

    def on_batch_end(self) -> None:
        time.sleep(self.seconds)
        if self.learn.iteration == 2 and self.learn.is_main_process:
            (self.out / "training").write_text("yes")


class TimerInterrupt(Callback):
    """As iteration ``k`` begins, rank 0 arms a timer that sends SIGINT to every rank's process at once.

    The timer fires ``delay`` seconds later, anywhere in the step (forward, the gradient
    all-reduce, the stop vote, validation, a checkpoint write), as a terminal's Ctrl-C would.
    """

    def __init__(self, pids: list[int], k: int, delay: float) -> None:
        self.pids, self.k, self.delay, self.timer = pids, k, delay, None

    def on_batch_begin(self) -> None:
        if self.learn.is_main_process and self.learn.iteration == self.k:
            self.timer = threading.Timer(self.delay, lambda: [os.kill(pid, signal.SIGINT) for pid in self.pids])
            self.timer.start()

    def on_train_end(self) -> None:
        if self.timer is not None:
            self.timer.join()  # a signal still on its way must land before the next fit


def fit(learn: Learner, out: Path, name: str, callbacks: list[Callback], trials: list[dict],
        epochs: int = EPOCHS) -> None:
    """One fit with a counting checkpoint writer; appends what happened, as plain values, to ``trials``."""
    writer = CountingCheckpoint(out / f"{name}.ckpt")
    result = {"name": name, "outcome": "completed", "message": ""}
    trials.append(result)
    try:
        learn.fit(0.1, epochs, callbacks=[writer, *callbacks])
    except BaseException as err:  # noqa: BLE001 - the test wants to see every kind of stop
        result.update(outcome=type(err).__name__, message=str(err), peer=getattr(err, "rank", None))
        raise
    finally:
        result.update(epoch=learn.epoch, iteration=learn.iteration, batch_index=learn.batch_index,
                      interrupted=learn.interrupted, final_writes=writer.final_writes, saved_at=writer.saved_at,
                      t_end=time.time())


def main(out: Path, scenario: str) -> None:
    global OUT
    OUT = out
    learn = make_learner()
    rank = learn.dist.rank
    pids: list[int | None] = [None] * learn.dist.world_size
    dist.all_gather_object(pids, os.getpid())
    kind, *args = scenario.split(":")
    results: dict = {"rank": rank, "pid": os.getpid(), "t_start": time.time(), "trials": []}

    def write() -> None:
        (out / f"rank{rank}.json").write_text(json.dumps(results))

    try:
        if kind == "trials":
            late = []
            signal.signal(signal.SIGINT, lambda *a: late.append(1))  # a signal after a fit ended is counted, not fatal
            start = time.time()
            fit(learn, out, "warmup", [], results["trials"])
            step_time = (time.time() - start) / (EPOCHS * learn.nb)
            rng = random.Random(1234)
            for i in range(int(args[0])):
                dist.barrier()
                k, delay = rng.randrange(1, (EPOCHS - 1) * learn.nb), rng.uniform(0, 1.5 * step_time)  # an epoch to spare
                try:
                    fit(learn, out, f"trial{i}", [TimerInterrupt(pids, k, delay)], results["trials"])
                except KeyboardInterrupt:
                    pass
                results["trials"][-1].update(k=k, delay=delay)
                results["late_signals"] = len(late)
                write()
        elif kind == "wait":
            fit(learn, out, "wait", [Slow(out, 0.05)], results["trials"], epochs=200)
        elif kind == "none":
            fit(learn, out, "none", [], results["trials"])
        elif kind == "outside":  # after a clean fit, rank R fails in the script while the others save
            fit(learn, out, "outside", [], results["trials"], epochs=1)
            if rank == int(args[0]):
                (OUT / "fault_time").write_text(repr(time.time()))
                raise ValueError(f"script error on rank {rank} after the fit")
            try:
                learn.save(out / "final.pt")  # a barrier the failed rank never reaches
            finally:
                results["after_save"] = time.time()
        else:
            action, who = kind, int(args[0])
            event, k = ("on_batch_begin", int(args[1])) if action in ("sigint", "kill") else (args[1], int(args[2]))
            fit(learn, out, kind, [Fault(action, who, event, k)], results["trials"])
    finally:
        write()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
