"""Elastic resume (clrfit/elastic.py): a checkpoint written on W ranks continues on W' ranks, or says why not."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from clrfit.elastic import check_world_size, divisors, own_state
from torchrun import free_port, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "elastic_worker.py"


def _setup(world: int, bs: int, order: str = "global", **extra) -> dict:
    return dict(world_size=world, batch_size=bs, global_batch=world * bs, data_order=order, steps_per_epoch=6, **extra)


# ---------------------------------------------------------------------- what may change, what may not


def test_same_world_size_compares_everything():
    saved, now = _setup(2, 6), _setup(2, 5)
    assert check_world_size(saved, now) == (saved, now)  # so batch_size 6 vs 5 is reported as a difference


def test_another_world_size_with_the_same_global_batch_drops_only_the_world_size_entries():
    saved, now = check_world_size(_setup(2, 6), _setup(3, 4))
    assert saved == now == {"steps_per_epoch": 6}
    saved, now = check_world_size(_setup(2, 6, steps_per_epoch_=1), _setup(1, 12, steps_per_epoch_=2))
    assert saved["steps_per_epoch_"] == 1 and now["steps_per_epoch_"] == 2  # everything else is still compared


def test_a_global_batch_the_new_world_size_cannot_split_names_both():
    with pytest.raises(ValueError, match=r"global batch of 12 \(6 per rank x 2\) cannot be split evenly over 5 ranks"
                                         r".*12/5 is not an integer.*1, 2, 3, 4, 6, 12"):
        check_world_size(_setup(2, 6), _setup(5, 2))


def test_another_global_batch_names_both_and_the_batch_size_to_use():
    with pytest.raises(ValueError, match=r"written by 2 rank\(s\) and this run has 3.*global batch is 12 "
                                         r"\(6 per rank x 2\) but this run's is 18 \(6 per rank x 3\).*bs=4 per rank"):
        check_world_size(_setup(2, 6), _setup(3, 6))


@pytest.mark.parametrize("which", ["saved", "now"])
def test_a_world_size_dependent_sampler_is_refused(which):
    saved, now = _setup(2, 6), _setup(3, 4)
    (saved if which == "saved" else now)["data_order"] = "per-world-size"
    with pytest.raises(ValueError, match=r"DistributedSampler of its own.*resume with 2 rank\(s\)"):
        check_world_size(saved, now)


def test_a_checkpoint_from_before_elastic_resume_is_compared_as_then():
    old = {"world_size": 2, "steps_per_epoch": 6}
    saved, now = check_world_size(old, _setup(1, 12))
    assert saved == old and now == {"world_size": 1, "steps_per_epoch": 6}  # the world size is still a difference


def test_own_state_is_this_ranks_entry_or_rank_zeros():
    per_rank = [{"r": 0}, {"r": 1}]
    assert own_state(per_rank, 1, 2) == {"r": 1}
    assert own_state(per_rank, 2, 3) == {"r": 0} and own_state(per_rank, 0, 1) == {"r": 0}
    assert own_state(None, 0, 3) is None
    assert divisors(12) == [1, 2, 3, 4, 6, 12]


# ---------------------------------------------------------------------- real ranks: save on 2, SIGKILL, resume on 1 and 3


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", **extra)
    return env


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _load_worker():
    spec = importlib.util.spec_from_file_location("elastic_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_save_on_two_ranks_sigkill_resume_on_one_and_three(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    # Two ranks: fits A and C cancel themselves at iteration 9; fit B is SIGKILLed (every rank) at iteration 9.
    cmd = torchrun_command(2, WORKER, "save", str(saved))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    markers = [saved / f"killme-{rank}" for rank in range(2)]
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not all(m.exists() and m.read_text() for m in markers):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the 2-rank run did not reach iteration 9"
            time.sleep(0.2)
        pids = [int(m.read_text()) for m in markers]
    finally:
        for pid in pids:  # both ranks (torchrun starts each in its own session), then torchrun itself
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)
    worker = _load_worker()
    for name in ("A", "B", "C"):
        ckpt = torch.load(saved / f"{name}.pt", weights_only=False)
        # The last file is the mid-epoch checkpoint of iteration 8 (checkpoint_every=4), written by 2 ranks.
        assert ckpt["counters"] == dict(epoch=1, batch_index=2, iteration=8, cycle=0, iter_in_cycle=8)
        assert (ckpt["setup"]["world_size"], ckpt["setup"]["global_batch"], len(ckpt["per_rank"])) == (2, 12, 2)

    for world in (1, 3):
        folder = tmp_path / f"W{world}"
        shutil.copytree(saved, folder)
        cmd = torchrun_command(world, WORKER, "resume", str(folder), plain_if_one=True)  # world 1: plain python
        run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results = torch.load(folder / f"W{world}.pt", weights_only=False)
        n_steps = worker.EPOCHS * 6
        for name in ("A", "B", "C"):
            resumed, plain = results[f"resumed-{name}"], results[f"plain-{name}"]
            assert resumed["world_size"] == plain["world_size"] == world
            # Same iteration and schedule position: the history continues the checkpoint's, step for step.
            assert resumed["iterations"] == plain["iterations"] == list(range(n_steps))
            assert resumed["lrs"] == plain["lrs"] and resumed["moms"] == plain["moms"]
            # The rest of the run is the uninterrupted W'-rank run's: same remaining data order, same weights.
            for key, value in plain["state"].items():
                torch.testing.assert_close(resumed["state"][key], value, rtol=1e-5, atol=1e-6)
            assert resumed["val_losses"] == pytest.approx(plain["val_losses"], rel=1e-5)
            start = torch.load(saved / f"{name}.pt", weights_only=False)["model"]
            assert any((start[k] - v).abs().max() > 1e-3 for k, v in plain["state"].items())  # it did train on

    # A per-rank batch that does not make the checkpoint's global batch: refused, naming both, before any change.
    learn = worker.make_learner(5, "torch", "sgd")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"global batch is 12 \(6 per rank x 2\) but this run's is 5 \(5 per rank x 1\)"
                                         r".*bs=12 per rank"):
        learn.fit(worker.LR, 1, cycle_len=worker.EPOCHS, use_clr_beta=worker.CLR_BETA, checkpoint=saved / "B.pt",
                  checkpoint_every=worker.EVERY, resume=True)
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_through_torchruns_c10d_rendezvous_train_like_one_process(tmp_path):
    # Two torchrun agents (one process each) meet at a c10d rendezvous, as two machines would; node ranks are assigned.
    cmd = torchrun_command(1, WORKER, "plain", str(tmp_path), nnodes=2, rdzv_backend="c10d",
                           rdzv_endpoint=f"127.0.0.1:{free_port()}", rdzv_id="clrfit-test", max_restarts=0)
    agents = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for _ in range(2)]
    try:
        outputs = [a.communicate(timeout=240)[0].decode(errors="replace") for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert all(a.returncode == 0 for a in agents), "\n".join(o[-2000:] for o in outputs)
    two = torch.load(tmp_path / "W2.pt", weights_only=False)
    worker = _load_worker()
    for name in ("A", "B"):
        one = worker.fit(name, worker.GLOBAL_BS, tmp_path / f"one-{name}.pt", False)  # this process: one rank
        assert two[f"plain-{name}"]["world_size"] == 2 and two[f"plain-{name}"]["lrs"] == one["lrs"]
        for key, value in one["state"].items():
            torch.testing.assert_close(two[f"plain-{name}"]["state"][key], value, rtol=1e-5, atol=1e-6)
