"""Checkpoints: contents, when they are written, atomicity, exact resume after SIGKILL, divergence."""
from __future__ import annotations

import errno
import math
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import clrfit.checkpoint as checkpoint_module
from clrfit import Callback, Learner, ModelData
from clrfit import DivergenceError
from clrfit.checkpoint import CHECK_EVERY
from clrfit.checkpoint import read_checkpoint
from clrfit.distributed import DistributedContext
from clrfit.schedules import ConstantLR, OneCycle, callable_fingerprint, one_cycle_schedule
from clrfit.serialization import temp_files
from conftest import InterruptAt
from torchrun import torchrun_command

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---------------------------------------------------------------------- a run that depends on every RNG


def build(n_trn: int = 43, bs: int = 8, adam: bool = False, seed: int = 1, loader: str = "tensor") -> Learner:
    """Shuffled loader, dropout, 3 classes; every RNG seeded so two builds train identically."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_trn + 16, 8, generator=g)
    y = torch.randint(0, 3, (n_trn + 16,), generator=g)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    data = ModelData.from_tensors(x[:n_trn], y[:n_trn], x[n_trn:], y[n_trn:], bs=bs, loader=loader)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt_fn = (lambda params, lr: torch.optim.Adam(params, lr=lr)) if adam else None
    return Learner(model, data, opt_fn=opt_fn, progress=False, table=False)


class NoisyDropout(Callback):
    """Draws from numpy and python RNGs every step, so their states matter to the result."""

    def on_loss(self) -> None:
        scale = 1 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        self.learn.loss = self.learn.loss * scale


# name -> (build kwargs, fit function): a mid-epoch kill, a kill mid-cycle of a 2-cycle 1cycle, fit_one_cycle
RUNS = {
    "clr_beta": (dict(), lambda learn, **kw: learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), **kw)),
    "clr_beta_2_cycles": (dict(), lambda learn, **kw: learn.fit(
        0.1, 2, cycle_len=2, use_clr_beta=(10, 13.68, 0.95, 0.85), wds=1e-3, **kw)),
    "one_cycle_adam_accumulate": (dict(n_trn=50, adam=True), lambda learn, **kw: learn.fit_one_cycle(
        3, 0.01, accumulate=2, **kw)),
}


def run(name: str, **kw) -> Learner:
    build_kwargs, fit = RUNS[name]
    learn = build(**build_kwargs)
    fit(learn, callbacks=[NoisyDropout(), *kw.pop("callbacks", [])], **kw)
    return learn


def assert_same_run(a: Learner, b: Learner) -> None:
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert a.sched.iterations == b.sched.iterations
    assert a.sched.lrs == b.sched.lrs and a.sched.group_lrs == b.sched.group_lrs
    assert a.sched.momentums == b.sched.momentums
    assert a.sched.raw_losses == b.sched.raw_losses
    assert a.sched.losses == b.sched.losses
    assert a.sched.val_losses == b.sched.val_losses
    assert a.sched.epochs == b.sched.epochs
    sa, sb = a.opt.state_dict(), b.opt.state_dict()
    for key in sa["state"]:
        for k, v in sa["state"][key].items():
            assert torch.equal(v, sb["state"][key][k]) if isinstance(v, torch.Tensor) else v == sb["state"][key][k]


class CountSteps(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_batch_end(self) -> None:
        self.steps += 1


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    env["OMP_NUM_THREADS"] = "1"  # as in this process (see one_thread)
    return env


KILLED_SCRIPT = """
import sys
from conftest import KillAt
from test_checkpoint import run
name, path, every, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run(name, checkpoint=path, checkpoint_every=every, callbacks=[KillAt(k)])
sys.exit(3)  # the kill never came
"""


def last_save(k: int, every: int, nb: int) -> int:
    """Steps done at the last checkpoint before a kill after ``k`` steps: a multiple of ``every`` or an epoch end."""
    return max(c for c in range(1, k + 1) if c % nb == 0 or c % every == 0)


@pytest.mark.slow  # a real SIGKILL'd subprocess per case: ~45 s of the quick run on a busy 2-core machine
@pytest.mark.parametrize(
    "name, every, kill_at",
    [
        ("clr_beta", 1, 8),  # epoch 1, batch 2 (nb = 6)
        ("clr_beta", 4, 15),  # last checkpoint at 12 (epoch end): three steps are redone
        ("clr_beta_2_cycles", 5, 17),  # cycle 1 (12 steps each), 5 steps in; last checkpoint at 15
        ("one_cycle_adam_accumulate", 2, 7),  # nb = 4 steps of 2 micro-batches, the last one short
    ],
)
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, name, every, kill_at):
    reference = run(name)
    ckpt = tmp_path / "run.ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SCRIPT, name, str(ckpt), str(every), str(kill_at)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    saved = read_checkpoint(ckpt)["counters"]
    expected = last_save(kill_at, every, reference.nb)
    assert saved["iteration"] == expected
    assert (saved["epoch"], saved["batch_index"]) == divmod(expected, reference.nb)
    counter = CountSteps()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file exists: no "starting fresh" warning
        resumed = run(name, checkpoint=ckpt, resume=True, callbacks=[counter])
    assert counter.steps == len(reference.sched.iterations) - expected
    assert_same_run(reference, resumed)


@pytest.mark.parametrize("name", ["clr_beta", "one_cycle_adam_accumulate"])
def test_resume_in_process_after_every_possible_stop(tmp_path, name):
    """Stop (Ctrl-C style) after each step k of a short run, resume, and compare with the full run."""
    reference = run(name)
    total = len(reference.sched.iterations)
    for k in range(1, total):
        ckpt = tmp_path / f"k{k}.ckpt"
        with pytest.raises(KeyboardInterrupt):
            run(name, checkpoint=ckpt, callbacks=[InterruptAt(k - 1)])
        assert read_checkpoint(ckpt)["counters"]["iteration"] == k
        assert_same_run(reference, run(name, checkpoint=ckpt, resume=True))


# ---------------------------------------------------------------------- contents and timing


def test_checkpoint_holds_everything_needed(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    learn = build()
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 13.68, 0.95, 0.85), checkpoint=ckpt)
    state = read_checkpoint(ckpt)
    for key, value in learn.model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    opt = learn.opt.state_dict()
    assert state["opt"]["param_groups"] == opt["param_groups"]
    for i, buffers in opt["state"].items():
        assert torch.equal(state["opt"]["state"][i]["momentum_buffer"], buffers["momentum_buffer"])
    assert state["precision"] == learn.precision.state_dict()
    n = 2 * learn.nb
    schedule = OneCycle((0.1,), n, 10, 13.68, (0.95, 0.85))
    assert state["counters"] == dict(epoch=2, batch_index=0, iteration=n, cycle=1, iter_in_cycle=0)
    assert schedule.position(n) == (1, 0)
    assert state["callbacks"]["Recorder"] == learn.recorder.state_dict()
    assert set(state["rng_states"]) >= {"torch", "numpy", "python"}
    assert torch.equal(state["epoch_rng_state"], state["rng_states"]["torch"])  # the next epoch draws from here
    setup = state["setup"]
    assert setup["kind"] == "fit" and setup["lrs"] == (0.1,) and setup["use_clr_beta"] == (10, 13.68, 0.95, 0.85)
    assert (setup["n_cycle"], setup["cycle_len"], setup["steps_per_epoch"], setup["train_samples"]) == (1, 2, 6, 43)
    assert setup["optimizer"] == "SGD" and setup["precision"] == "fp32"


def test_written_every_k_iterations_and_at_every_epoch_end(tmp_path, monkeypatch):
    written = []
    real_save = checkpoint_module.save_state

    def spy(state, path):
        c = state["counters"]
        written.append((c["epoch"], c["batch_index"], c["iteration"]))
        return real_save(state, path)

    monkeypatch.setattr(checkpoint_module, "save_state", spy)
    learn = build()
    learn.fit(0.1, 3, checkpoint=tmp_path / "c.ckpt", checkpoint_every=4)
    nb = learn.nb
    expected = [(c // nb, c % nb, c) for c in range(1, 3 * nb + 1) if c % nb == 0 or c % 4 == 0]
    assert written == expected
    written.clear()
    learn.fit(0.1, 2, checkpoint=tmp_path / "d.ckpt")  # no checkpoint_every: epoch ends only
    assert written == [(1, 0, nb), (2, 0, 2 * nb)]


def test_a_failure_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.ckpt"
    learn = build()
    learn.fit(0.1, 1, checkpoint=ckpt)
    before = ckpt.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half a file on disk, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        learn.fit(0.1, 2, checkpoint=ckpt, checkpoint_every=3)
    assert ckpt.read_bytes() == before
    assert temp_files(ckpt) == []
    assert read_checkpoint(ckpt)["counters"]["iteration"] == learn.nb


KILLED_WHILE_WRITING = """
import os, signal, sys, torch
from test_checkpoint import run
real_save, calls = torch.save, []
def dying_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *args, **kwargs)
torch.save = dying_save
run("clr_beta", checkpoint=sys.argv[1], checkpoint_every=2)
"""


def test_sigkill_while_writing_keeps_the_previous_checkpoint_and_resume_cleans_up(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, str(ckpt)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert read_checkpoint(ckpt)["counters"]["iteration"] == 4  # saves at 2, 4, then the kill writing 6
    assert len(temp_files(ckpt)) == 1  # what the killed writer left
    resumed = run("clr_beta", checkpoint=ckpt, resume=True)
    assert temp_files(ckpt) == []
    assert_same_run(run("clr_beta"), resumed)


# ---------------------------------------------------------------------- resume rules


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda learn, **kw: learn.fit(0.2, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), **kw), "lrs"),
        (lambda learn, **kw: learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 20, 0.95, 0.85), **kw), "use_clr_beta"),
        (lambda learn, **kw: learn.fit(0.1, 1, cycle_len=4, use_clr_beta=(10, 13.68, 0.95, 0.85), **kw), "cycle_len"),
        (lambda learn, **kw: learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), wds=0.1, **kw), "wds"),
        (lambda learn, **kw: learn.fit_one_cycle(3, 0.1, **kw), "kind"),
    ],
)
def test_resume_with_other_arguments_is_an_error_naming_them(tmp_path, change, named):
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run("clr_beta", checkpoint=ckpt, callbacks=[InterruptAt(7)])
    learn = build()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"different fit; .*{named}: .* in the checkpoint, .* now"):
        change(learn, checkpoint=ckpt, resume=True)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


def test_resume_with_other_data_is_an_error(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    build().fit(0.1, 2, checkpoint=ckpt)
    with pytest.raises(ValueError, match="steps_per_epoch: 6 in the checkpoint, 3 now"):
        build(bs=16).fit(0.1, 2, checkpoint=ckpt, resume=True)


def test_resume_without_a_file_starts_fresh_with_a_warning(tmp_path):
    ckpt = tmp_path / "new" / "c.ckpt"
    with pytest.warns(UserWarning, match="no checkpoint .* starting a fresh fit"):
        learn = run("clr_beta", checkpoint=ckpt, resume=True)
    assert_same_run(run("clr_beta"), learn)
    assert read_checkpoint(ckpt)["counters"]["iteration"] == len(learn.sched.iterations)


def test_resume_of_a_finished_run_trains_no_further(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    done = run("clr_beta", checkpoint=ckpt)
    counter = CountSteps()
    again = run("clr_beta", checkpoint=ckpt, resume=True, callbacks=[counter])
    assert counter.steps == 0
    assert_same_run(done, again)


def test_resume_needs_a_checkpoint_path():
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        build().fit(0.1, 1, resume=True)


class FakeDist(DistributedContext):
    def __init__(self, rank: int) -> None:
        super().__init__(world_size=2, rank=rank)
        self.barriers = 0

    def all_reduce_sum(self, tensor):
        return tensor

    def any_rank(self, flag: bool) -> bool:
        return bool(flag)

    def barrier(self) -> None:
        self.barriers += 1


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_writes_and_every_rank_waits(tmp_path, rank):
    ckpt = tmp_path / "c.ckpt"
    learn = build()
    learn.dist = FakeDist(rank)
    learn.fit(0.1, 2, checkpoint=ckpt, checkpoint_every=4)
    n_saves = len([c for c in range(1, 2 * learn.nb + 1) if c % learn.nb == 0 or c % 4 == 0])
    assert learn.dist.barriers == n_saves
    assert ckpt.exists() == (rank == 0)


# ---------------------------------------------------------------------- divergence


class PoisonAt(Callback):
    """Turn the loss of step ``k`` into ``value`` (NaN or inf)."""

    def __init__(self, k: int, value: float = math.nan) -> None:
        self.k, self.value = k, value

    def on_loss(self) -> None:
        if self.learn.iteration == self.k:
            self.learn.loss = self.learn.loss * self.value


class SnapshotAfter(Callback):
    """Weights after step ``k``."""

    def __init__(self, k: int) -> None:
        self.k, self.weights = k, None

    def on_step_end(self) -> None:
        if self.learn.iteration == self.k:
            self.weights = {n: v.clone() for n, v in self.learn.model.state_dict().items()}


def clr_beta_values(nb: int) -> OneCycle:
    return OneCycle((0.1,), 3 * nb, 10, 13.68, (0.95, 0.85))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_stops_with_epoch_iteration_lr_and_momentum(tmp_path, value):
    ckpt = tmp_path / "c.ckpt"
    k = 9
    with pytest.raises(DivergenceError) as info:
        run("clr_beta", callbacks=[PoisonAt(k, value)], checkpoint=ckpt, checkpoint_every=1)
    err = info.value
    nb = 6
    lrs, moms = clr_beta_values(nb)(k)
    assert (err.epoch, err.iteration, err.lr, err.momentum) == (k // nb, k, lrs[0], moms[0])
    assert isinstance(err, ValueError)
    message = str(err)
    assert f"epoch {k // nb}, iteration {k}" in message and f"lr={lrs[0]:.6g}" in message and str(moms[0]) in message
    assert read_checkpoint(ckpt)["counters"]["iteration"] == k  # nothing written after the bad step


def test_detection_after_a_late_flush_still_names_the_bad_step():
    class SlowFlush(Callback):  # as on a GPU: losses read back every 4 steps
        def on_train_begin(self):
            self.learn.recorder.flush_every = 4

    with pytest.raises(DivergenceError, match="iteration 5 ") as info:
        run("clr_beta", callbacks=[SlowFlush(), PoisonAt(5)])
    assert info.value.iteration == 5


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    class BreakWeights(Callback):
        def on_step_end(self):
            if self.learn.iteration == 4:
                with torch.no_grad():
                    self.learn.model[0].weight[0, 0] = math.inf

    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(DivergenceError, match="weights are not finite at epoch 0, iteration 4"):
        run("clr_beta", callbacks=[BreakWeights()], checkpoint=ckpt, checkpoint_every=1)
    assert read_checkpoint(ckpt)["counters"]["iteration"] == 4


def test_restore_puts_back_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    good = SnapshotAfter(7)  # checkpoint_every=4: the last save before step 10 is after 8 steps (index 7)
    run("clr_beta", callbacks=[good])
    learn = build()
    with pytest.raises(DivergenceError, match="restored to the checkpoint"):
        RUNS["clr_beta"][1](learn, callbacks=[NoisyDropout(), PoisonAt(10)], checkpoint=ckpt, checkpoint_every=4,
                            on_nan="restore")
    for name, value in learn.model.state_dict().items():
        assert torch.equal(value, good.weights[name]), name
    saved = read_checkpoint(ckpt)
    for i, buffers in learn.opt.state_dict()["state"].items():
        assert torch.equal(buffers["momentum_buffer"], saved["opt"]["state"][i]["momentum_buffer"])


def test_restore_without_a_checkpoint_returns_to_the_start_of_the_fit():
    learn = build()
    learn.fit(0.05, 1)  # optimizer now holds momentum buffers
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    buffers = {i: s["momentum_buffer"].clone() for i, s in learn.opt.state_dict()["state"].items()}
    with pytest.raises(DivergenceError, match="restored to their state at the start of this fit"):
        learn.fit(0.1, 2, callbacks=[PoisonAt(8)], on_nan="restore")
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    assert all(torch.equal(buffers[i], s["momentum_buffer"]) for i, s in learn.opt.state_dict()["state"].items())
    # History kept; losses are read back every CHECK_EVERY steps and at epoch ends, so the fit stops
    # at the first of those after the bad step (here the end of epoch 1, step 12).
    assert len(learn.sched.raw_losses) == min(8 + CHECK_EVERY, 12) and math.isnan(learn.sched.raw_losses[8])


def test_on_nan_ignore_trains_through():
    learn = build()
    learn.fit(0.1, 2, callbacks=[PoisonAt(3)], on_nan="ignore")
    assert len(learn.sched.raw_losses) == 2 * learn.nb
    assert math.isnan(learn.sched.raw_losses[3])


def test_one_cycle_restore_keeps_schedule_position(tmp_path):
    """After a restore, resuming from the same checkpoint continues the same schedule."""
    ckpt = tmp_path / "c.ckpt"
    learn = build(n_trn=50, adam=True)
    with pytest.raises(DivergenceError):
        learn.fit_one_cycle(3, 0.01, accumulate=2, checkpoint=ckpt, checkpoint_every=2, on_nan="restore",
                            callbacks=[PoisonAt(9)])
    resumed = build(n_trn=50, adam=True)
    resumed.fit_one_cycle(3, 0.01, accumulate=2, checkpoint=ckpt, resume=True)
    expected = one_cycle_schedule(1, 0.01, 12).values()
    assert resumed.sched.lrs == expected.lrs and resumed.sched.momentums == expected.momentums
    assert resumed.sched.iterations == list(range(12))


def test_loaders_with_their_own_generators_resume_exactly(tmp_path):
    """A loader shuffling with its own torch.Generator does not draw from the global RNG: its state is saved too."""

    def build_with_generators() -> Learner:
        learn = build()
        trn, val = learn.data.trn_dl, learn.data.val_dl
        learn.data = ModelData(
            DataLoader(trn.dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)),
            DataLoader(val.dataset, batch_size=8, generator=torch.Generator().manual_seed(6)))
        return learn

    def fit(learn, **kw):
        learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), callbacks=[NoisyDropout(), *kw.pop("cbs", [])], **kw)
        return learn

    reference = fit(build_with_generators())
    for k in (4, 8, 11):
        ckpt = tmp_path / f"{k}.ckpt"
        with pytest.raises(KeyboardInterrupt):
            fit(build_with_generators(), checkpoint=ckpt, cbs=[InterruptAt(k)])
        assert len(read_checkpoint(ckpt)["loader_generators"]) == 2
        assert_same_run(reference, fit(build_with_generators(), checkpoint=ckpt, resume=True))
    with pytest.raises(ValueError, match="loader_generators: 2 in the checkpoint, 0 now"):
        fit(build(loader="torch"), checkpoint=tmp_path / "4.ckpt", resume=True)  # DataLoaders without generators


# ---------------------------------------------------------------------- DDP: rank 0 writes, every rank resumes its own streams

DDP_WORKER = """
import os, random, sys
import numpy as np
import torch
from conftest import KillAt
from test_checkpoint import NoisyDropout, build

mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
learn = build(n_trn=64)
rank = learn.dist.rank
torch.manual_seed(100 + rank)  # per-rank streams (DDP already synced the weights from rank 0)
np.random.seed(100 + rank)
random.seed(100 + rank)
callbacks = [NoisyDropout()]
options = {}
if mode == "killed":
    callbacks.append(KillAt(7) if rank == 1 else KillAt(10 ** 6))  # rank 1 dies; torchrun stops rank 0
    options = dict(checkpoint=ckpt, checkpoint_every=3)
elif mode == "resume":
    options = dict(checkpoint=ckpt, resume=True)
learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), callbacks=callbacks, **options)
torch.save({"weights": learn.model.state_dict(), "losses": learn.sched.raw_losses, "lrs": learn.sched.lrs,
            "is_main": learn.is_main_process}, os.path.join(out, f"{mode}{rank}.pt"))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_kill_and_resume_equals_an_uninterrupted_ddp_run(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    ckpt = tmp_path / "ddp.ckpt"
    env = {k: v for k, v in subprocess_env().items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}

    def torchrun(mode: str) -> subprocess.CompletedProcess:
        for _ in range(3):  # a free port can be taken by another process before torchrun binds it
            cmd = torchrun_command(2, worker, mode, str(ckpt), str(tmp_path))
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
            if "address already in use" not in (proc.stdout + proc.stderr).lower():
                return proc
        return proc

    for mode in ("reference", "killed", "resume"):
        proc = torchrun(mode)
        assert (proc.returncode == 0) == (mode != "killed"), proc.stdout[-2000:] + proc.stderr[-2000:]
        if mode == "killed":
            saved = read_checkpoint(ckpt)
            assert saved["counters"]["iteration"] == 6 and len(saved["per_rank"]) == 2
            assert saved["setup"]["world_size"] == 2
            # the two ranks' dropout streams differ, and each is kept
            assert not torch.equal(saved["per_rank"][0]["rng_states"]["torch"], saved["per_rank"][1]["rng_states"]["torch"])
    for rank in (0, 1):
        reference = torch.load(tmp_path / f"reference{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resume{rank}.pt", weights_only=True)
        assert resumed["losses"] == reference["losses"] and resumed["lrs"] == reference["lrs"]
        assert all(torch.equal(v, resumed["weights"][k]) for k, v in reference["weights"].items())
        assert resumed["is_main"] == (rank == 0)


def test_fp16_gradient_scaler_state_is_resumed(tmp_path):
    def build_fp16() -> Learner:
        learn = build()
        learn = Learner(learn.model, learn.data, precision="fp16", progress=False, table=False)
        learn.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4)
        return learn

    def fit(learn, **kw):
        learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85), callbacks=[NoisyDropout(), *kw.pop("cbs", [])],
                  **kw)
        return learn

    reference = fit(build_fp16())
    assert reference.precision.scaler.get_scale() == 2.0 ** (10 + 18 // 4)  # it grew: its state matters
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(build_fp16(), checkpoint=ckpt, cbs=[InterruptAt(8)])
    assert read_checkpoint(ckpt)["precision"]["scaler"]["scale"] == 2.0 ** (10 + 9 // 4)
    resumed = fit(build_fp16(), checkpoint=ckpt, resume=True)
    assert resumed.precision.state_dict() == reference.precision.state_dict()
    assert_same_run(reference, resumed)


# ---------------------------------------------------------------------------- the schedule's own arguments


def _halve(x: float) -> float:
    return 0.5**x


def _third(x: float) -> float:
    return (1 / 3) ** x


def test_resume_refuses_a_changed_scale_fn_and_accepts_the_same_one(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    fit = dict(base_lr=0.01, max_lr=0.1, step_size_up=4, scale_fn=_halve)
    build().fit_cyclic(2, **fit, checkpoint=ckpt)
    build().fit_cyclic(2, **fit, checkpoint=ckpt, resume=True)  # same function: resumes (at the end: nothing to do)
    with pytest.raises(ValueError, match=r"different fit; schedule: .*_halve.* in the checkpoint, .*_third.* now"):
        build().fit_cyclic(2, **dict(fit, scale_fn=_third), checkpoint=ckpt, resume=True)


def test_resume_refuses_a_different_custom_schedule(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    build().train(ConstantLR((0.05,)), 2, checkpoint=ckpt)
    build().train(ConstantLR((0.05,)), 2, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="different fit; schedule:"):
        build().train(ConstantLR((0.02,)), 2, checkpoint=ckpt, resume=True)


SCALE_MODULE = """
FACTOR = {factor}

def make(k):
    def scale(x):
        return k * FACTOR ** x
    return scale

def halve(x):
    return {factor} ** x
"""


def _fingerprints_in_a_new_process(folder: Path) -> list[str]:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import scales; from clrfit.schedules import callable_fingerprint as f; "
            "print(f(scales.halve)); print(f(scales.make(2)))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.slow  # fresh interpreters importing torch: ~17 s on a busy 2-core machine
def test_callable_fingerprint_is_stable_across_processes_and_changes_with_the_code(tmp_path):
    (tmp_path / "scales.py").write_text(SCALE_MODULE.format(factor=0.5))
    first = _fingerprints_in_a_new_process(tmp_path)
    assert first == _fingerprints_in_a_new_process(tmp_path)  # no address, no per-process salt
    assert first[0].startswith("scales.halve#") and first[1].startswith("scales.make.<locals>.scale#")
    assert "0x" not in "".join(first)
    (tmp_path / "scales.py").write_text(SCALE_MODULE.format(factor=0.25))  # the code's constant changed
    changed = _fingerprints_in_a_new_process(tmp_path)
    assert changed[0] != first[0]
    # closure values count too: the same code with another captured k differs
    def make(k):
        return lambda x: k * x
    assert callable_fingerprint(make(2)) != callable_fingerprint(make(3))
    assert callable_fingerprint(make(2)) == callable_fingerprint(make(2))


def test_divergence_is_caught_within_check_every_steps_on_cpu():
    class Steps(Callback):
        def on_train_begin(self):
            self.ran = 0

        def on_batch_end(self):
            self.ran += 1

    steps = Steps()
    learn = build(n_trn=8 * (CHECK_EVERY + 20))  # one epoch longer than CHECK_EVERY: no epoch end in between
    assert len(learn.data.trn_dl) > CHECK_EVERY + 3
    with pytest.raises(DivergenceError, match="iteration 3 ") as info:
        learn.fit(0.05, 1, callbacks=[steps, PoisonAt(3)])
    assert info.value.iteration == 3
    assert steps.ran == CHECK_EVERY  # the losses are read back (and checked) every CHECK_EVERY steps


# ---------------------------------------------------------------------- concurrent writers, unwritable folders, full disks

from clrfit.serialization import CheckpointLocked, FileLock, WriteError, owner_tag, remove_temp_files  # noqa: E402

SLOW_WRITER = """
import sys, time, torch
from pathlib import Path
from test_checkpoint import run
checkpoint, writing, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
real_save, calls = torch.save, []
def slow_save(obj, f, *args, **kwargs):  # the second write stops halfway until the test says go on
    calls.append(1)
    if len(calls) == 2:
        f.write(b"half a checkpoint")
        f.flush()
        writing.write_text("")
        while not release.exists():
            time.sleep(0.02)
        f.seek(0)
        f.truncate()
    real_save(obj, f, *args, **kwargs)
torch.save = slow_save
run("clr_beta", checkpoint=checkpoint, checkpoint_every=1)
"""


def _wait_for(predicate, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_writer_of_one_checkpoint_is_refused_and_the_first_finishes(tmp_path):
    """Issue 12 item 4: a fit start used to delete the live writer's temp file; the writer died on FileNotFoundError."""
    ckpt, writing, release = tmp_path / "c.ckpt", tmp_path / "writing", tmp_path / "release"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(ckpt), str(writing), str(release)], cwd=ROOT,
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: writing.exists() or writer.poll() is not None)
        assert writer.poll() is None, writer.communicate()
        (half,) = temp_files(ckpt)  # the live writer's, mid-write
        learn = build()
        before = {k: v.clone() for k, v in learn.model.state_dict().items()}
        log = CountSteps()
        for _ in range(2):  # every refusal leaves the live writer's lock and files alone
            with pytest.raises(CheckpointLocked, match=rf"pid {writer.pid}") as info:
                learn.fit(0.1, 1, checkpoint=ckpt, callbacks=[log])
            assert isinstance(info.value, ValueError) and str(ckpt) in str(info.value)
            assert half.exists()
        assert log.steps == 0 and all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
        release.write_text("")
        _, err = writer.communicate(timeout=120)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert read_checkpoint(ckpt)["counters"]["iteration"] == 18  # the writer's run, whole
    assert not (tmp_path / ".c.ckpt.lock").exists() and temp_files(ckpt) == []  # released at its end
    learn.fit(0.1, 1, checkpoint=ckpt)  # the path is free again


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    import socket

    (tmp_path / ".c.ckpt.lock").write_text(f"{int(dead.stdout)} {socket.gethostname()} 1\n")
    (tmp_path / f".c.ckpt.{socket.gethostname()}~{int(dead.stdout)}.x1.tmp").write_bytes(b"partial")
    learn = build()
    learn.fit(0.1, 1, checkpoint=ckpt)
    assert read_checkpoint(ckpt)["counters"]["iteration"] == learn.nb
    assert temp_files(ckpt) == [] and not (tmp_path / ".c.ckpt.lock").exists()


def test_one_process_cannot_hold_one_path_twice_and_releases_it(tmp_path):
    lock = FileLock(tmp_path / "c.ckpt").acquire()
    with pytest.raises(CheckpointLocked, match="this process"):  # while its holder is active
        FileLock(tmp_path / "c.ckpt").acquire()
    lock.release()
    FileLock(tmp_path / "c.ckpt").acquire().release()
    assert not (tmp_path / ".c.ckpt.lock").exists()


def test_temp_files_of_a_live_writer_are_kept_and_a_dead_ones_removed(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = owner_tag().rsplit("~", 1)[0]
        mine = tmp_path / f".c.ckpt.{owner_tag()}.a.tmp"
        theirs = tmp_path / f".c.ckpt.{host}~{live.pid}.b.tmp"
        remote = tmp_path / ".c.ckpt.another-host~1.c.tmp"
        for f in (mine, theirs, remote):
            f.write_bytes(b"being written")
        assert remove_temp_files(ckpt) == 0
        assert mine.exists() and theirs.exists() and remote.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_temp_files(ckpt) == 1 and not theirs.exists() and remote.exists()


class FirstStep(Callback):
    def __init__(self) -> None:
        self.began = False

    def on_batch_begin(self) -> None:
        self.began = True


def test_a_checkpoint_inside_a_file_is_refused_before_anything_changes(tmp_path):
    (tmp_path / "afile").write_text("x")
    learn = build()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"checkpoint.*afile.*is a file"):
        learn.fit(0.1, 1, checkpoint=tmp_path / "afile" / "sub" / "c.ckpt")
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_checkpoint_folder_is_found_before_the_first_step(tmp_path):
    folder = tmp_path / "ro"
    mounted = _mount_tmpfs(folder, "ro,size=64k")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions and tmpfs cannot be mounted here")
        folder.chmod(0o500)
    try:
        learn = build()
        first = FirstStep()
        with pytest.raises(WriteError) as info:
            learn.fit(0.1, 1, checkpoint=folder / "c.ckpt", callbacks=[first])
        message = str(info.value)
        assert str(folder / "c.ckpt") in message and ("read-only" in message or "permission" in message), message
        assert isinstance(info.value, ValueError) and not first.began
    finally:
        _umount(folder) if mounted else folder.chmod(0o700)


FULL_DISK_RLIMIT = """
import resource, signal, sys
from test_checkpoint import build
ckpt = sys.argv[1]
learn = build()
learn.fit(0.1, 1, checkpoint=ckpt)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process
size = __import__("os").path.getsize(ckpt)
resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
try:
    learn.fit(0.1, 2, checkpoint=ckpt)
except OSError as err:
    print(type(err).__name__, err)
    sys.exit(0)
sys.exit(3)
"""


def test_a_full_disk_names_the_path_and_the_cause_and_keeps_the_previous_checkpoint(tmp_path):
    """Issue 12: torch said ``unexpected pos``; a real full file system (tmpfs), else RLIMIT_FSIZE in a subprocess."""
    folder = tmp_path / "small"
    if _mount_tmpfs(folder, "size=256k"):
        try:
            ckpt = folder / "c.ckpt"
            learn = build()
            learn.fit(0.1, 1, checkpoint=ckpt)
            good = ckpt.read_bytes()
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            (folder / "filler").write_bytes(b"\0" * (free - len(good) // 2))  # room for half a checkpoint
            with pytest.raises(WriteError) as info:
                learn.fit(0.1, 2, checkpoint=ckpt)
            assert info.value.errno == errno.ENOSPC
            assert str(ckpt) in str(info.value) and "no space left" in str(info.value)
            assert ckpt.read_bytes() == good and temp_files(ckpt) == []
            assert read_checkpoint(ckpt)["counters"]["iteration"] == learn.nb
        finally:
            _umount(folder)
        return
    ckpt = tmp_path / "c.ckpt"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_RLIMIT, str(ckpt)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("WriteError") and str(ckpt) in proc.stdout and "larger" in proc.stdout
    assert read_checkpoint(ckpt)["counters"]["iteration"] == 6 and temp_files(ckpt) == []


def test_checkpoints_and_saved_models_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        learn = build()
        learn.fit(0.1, 1, checkpoint=tmp_path / "c.ckpt")
        path = learn.save(tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == 0o640  # was 0600 whatever the umask
    assert path.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------- loader workers and stateful samplers (issue 12 item 3)

from torch.utils.data import Dataset, Sampler, TensorDataset  # noqa: E402


class CrashAt(Callback):
    def __init__(self, k: int) -> None:
        self.k = k

    def on_batch_begin(self) -> None:
        if self.learn.iteration == self.k:
            raise RuntimeError("crash")


class NumpyShuffle(Sampler):
    """A sampler with its own numpy generator that exposes its state (as numpy arrays, made plain when saved)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.rng = n, np.random.RandomState(seed)

    def __iter__(self):
        return iter(self.rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        return {"keys": keys, "pos": np.int64(pos), "has_gauss": has_gauss, "cached": np.float64(cached)}

    def load_state_dict(self, state: dict) -> None:
        keys = np.asarray(state["keys"], dtype=np.uint32)
        self.rng.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"])))


class NoisyItems(Dataset):
    """Random augmentation inside ``__getitem__``: in a worker, it draws from that worker's RNG."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


def build_loader(kind: str) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(59, 8, generator=g), torch.randint(0, 3, (59,), generator=g)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    trn, val = TensorDataset(x[:43], y[:43]), TensorDataset(x[43:], y[43:])
    if kind == "sampler":
        data = ModelData(DataLoader(trn, batch_size=8, sampler=NumpyShuffle(43)), DataLoader(val, batch_size=16))
    elif kind.startswith("noisy"):
        data = ModelData.from_datasets(NoisyItems(x[:43], y[:43]), val, bs=8, num_workers=1,
                                       persistent_workers=kind == "noisy_persistent")
    else:
        data = ModelData.from_datasets(trn, val, bs=8, num_workers=1, persistent_workers=kind == "persistent")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    return Learner(model, data, progress=False, table=False)


def crash_and_resume(kind: str, k: int, path: Path) -> Learner:
    first = build_loader(kind)
    with pytest.raises(RuntimeError, match="crash"):
        first.fit(0.1, 3, checkpoint=path, checkpoint_every=1, callbacks=[CrashAt(k)])
    resumed = build_loader(kind)  # a new learner and new loaders, as in a new process
    resumed.fit(0.1, 3, checkpoint=path, checkpoint_every=1, resume=True)
    return resumed


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) for k in ("persistent", "workers", "noisy_workers")]
                         + ["sampler"])  # worker processes take seconds to start: the slow (CI) run has them
@pytest.mark.parametrize("k", [8, 12], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_exact_with_loader_workers_and_stateful_samplers(tmp_path, kind, k):
    """Issue 12 item 3: with persistent workers the resumed run drew another sample order (the iterator,
    created once, had drawn its workers' seed from the RNG in the first epoch only)."""
    reference = build_loader(kind)
    reference.fit(0.1, 3)
    assert_same_run(reference, crash_and_resume(kind, k, tmp_path / "c.ckpt"))


@pytest.mark.slow
def test_randomness_inside_persistent_workers_is_the_documented_limit(tmp_path):
    """Persistent workers keep their own RNG streams in their processes: a dataset drawing random numbers in
    ``__getitem__`` is not replayed exactly after a resume (docs/checkpoints.md); the sample order still is."""
    reference = build_loader("noisy_persistent")
    reference.fit(0.1, 3)
    resumed = crash_and_resume("noisy_persistent", 8, tmp_path / "c.ckpt")
    assert reference.sched.iterations == resumed.sched.iterations and reference.sched.lrs == resumed.sched.lrs
    assert reference.sched.raw_losses[:8] == resumed.sched.raw_losses[:8]  # restored from the checkpoint
    assert reference.sched.raw_losses[8:] != resumed.sched.raw_losses[8:]  # the workers' draws differ


class NumpyState(Callback):
    """State with numpy scalars, as code using numpy produces."""

    def __init__(self) -> None:
        self.total = np.float64(0.0)
        self.count = np.int64(0)

    def on_batch_end(self) -> None:
        self.total += np.float64(1.5)
        self.count += 1

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count, "history": np.arange(3)}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = np.float64(state["total"]), np.int64(state["count"])


def test_numpy_values_in_callback_state_are_made_plain_when_written(tmp_path):
    """Issue 12: the checkpoint was written without complaint and then refused by weights_only loading."""
    learn = build()
    learn.fit(0.1, 1, checkpoint=tmp_path / "c.ckpt", callbacks=[NumpyState()])
    saved = read_checkpoint(tmp_path / "c.ckpt")["callbacks"]["NumpyState"]
    assert saved["total"] == 1.5 * learn.nb and type(saved["total"]) is float and type(saved["count"]) is int
    assert torch.equal(saved["history"], torch.arange(3))
    with pytest.raises(RuntimeError, match="crash"):
        build().fit(0.1, 2, checkpoint=tmp_path / "d.ckpt", checkpoint_every=1, callbacks=[NumpyState(), CrashAt(8)])
    again = NumpyState()
    build().fit(0.1, 2, checkpoint=tmp_path / "d.ckpt", checkpoint_every=1, callbacks=[again], resume=True)
    assert again.count == 2 * learn.nb and again.total == 1.5 * 2 * learn.nb


def _double(learn) -> float:
    return 2.0


def _triple(learn) -> float:
    return 3.0


def _acc(pred, targ):
    return (pred.argmax(-1) == targ).float().mean()


def _err(pred, targ):
    return (pred.argmax(-1) != targ).float().mean()


@pytest.mark.parametrize("first, second, named", [
    (dict(wds_sched_mult=_double), dict(wds_sched_mult=_triple), "wds_sched_mult"),
    (dict(metrics=[_acc]), dict(metrics=[_err]), "metrics"),
])
def test_resume_refuses_a_changed_wds_sched_mult_or_metrics(tmp_path, first, second, named):
    """Issue 12: a changed wds_sched_mult or metrics list was accepted on resume."""
    ckpt = tmp_path / "c.ckpt"
    common = dict(wds=1e-3, use_wd_sched=True, checkpoint=ckpt)
    with pytest.raises(KeyboardInterrupt):
        build().fit(0.1, 2, callbacks=[InterruptAt(7)], **common, **first)
    with pytest.raises(ValueError, match=rf"different fit; .*{named}: .* in the checkpoint, .* now"):
        build().fit(0.1, 2, resume=True, **common, **second)
    build().fit(0.1, 2, resume=True, **common, **first)  # the same ones resume
