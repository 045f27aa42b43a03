"""Faults under DDP: no stop hangs a job (2 gloo ranks under torchrun, every run under a timeout).

The rule (``docs/distributed.md``, "Faults"): ranks agree on every planned stop
(Ctrl-C, a cancel) at a step boundary through one small all-reduce, and a rank
that fails (raises, is killed) makes the others stop within seconds, naming it
and the last good checkpoint. The torchrun tests run the real launcher on
127.0.0.1 with ``--monitor-interval=2``: torchrun then looks at its workers only
every 2 s, so the surviving ranks must end on their own, with their message,
instead of being killed by torchrun first. ``CLRFIT_DDP_TIMEOUT`` is 60 s, so a
job that ends in seconds did not end by timing out.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from clrfit.checkpoint import read_checkpoint
from clrfit.distributed import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_VARIABLE,
    DistributedContext,
    Stop,
    _alive,
    _FAULTS,
    _meet_at_exit,
    ddp_timeout,
    describe_position,
)
from clrfit.state import sigint

from conftest import make_learner
from torchrun import free_port, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_fault_worker.py"
TIMEOUT_S = 60  # CLRFIT_DDP_TIMEOUT in the runs: every fault below must end the job well before it
FAULT_BOUND_S = 20  # a fault ends every rank within this (measured: 1-6 s on a busy 2-core machine)
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", TIMEOUT_VARIABLE)


# ---------------------------------------------------------------------- in one process


def test_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert ddp_timeout() == datetime.timedelta(seconds=DEFAULT_TIMEOUT_S) and 10 <= DEFAULT_TIMEOUT_S <= 120
    monkeypatch.setenv(TIMEOUT_VARIABLE, "7.5")
    assert ddp_timeout().total_seconds() == 7.5


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "inf", "nan"])
def test_bad_timeout_is_named(monkeypatch, raw):
    monkeypatch.setenv(TIMEOUT_VARIABLE, raw)
    with pytest.raises(ValueError, match=rf"{TIMEOUT_VARIABLE} must be a number of seconds > 0; got '{raw}'"):
        ddp_timeout()


def test_single_process_agrees_with_itself_at_no_cost():
    ctx = DistributedContext()
    assert [ctx.agree_on_stop(s) for s in Stop] == [(s, 0) for s in Stop]
    assert ctx.fail(RuntimeError("x"), None) is None  # nothing to tell, nobody to name
    # The strongest stop wins when ranks ask for different ones.
    assert Stop.NONE < Stop.CANCEL_EPOCH < Stop.CANCEL_FIT < Stop.INTERRUPT


def test_position_names_the_last_good_checkpoint(tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1)
    assert describe_position(learn) == ("epoch 1, iteration 6", "none (the fit has no checkpoint=)")
    path = tmp_path / "Run" / "c.ckpt"
    learn.fit(0.1, 2, checkpoint=path, checkpoint_every=4)
    assert describe_position(learn) == ("epoch 2, iteration 12", f"{path} (epoch 2, iteration 12)")


def test_a_zombie_is_not_alive():
    assert _alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _alive(child.pid) and time.monotonic() < deadline:  # exited, not reaped: a zombie until wait()
        time.sleep(0.02)
    assert not _alive(child.pid) and child.poll() == 0  # poll() reaps it
    assert not _alive(child.pid)


def test_repeated_ctrl_c_is_kept_when_asked():
    seen = []
    with sigint(lambda: seen.append(1), keep=True):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # under DDP a second Ctrl-C must not abort one rank mid-collective
    assert seen == [1, 1]
    with pytest.raises(KeyboardInterrupt):
        with sigint(lambda: seen.append(2)):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # by default the second one interrupts at once
    assert seen == [1, 1, 2]


def test_exit_meeting_is_bounded(monkeypatch):
    store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True, wait_for_workers=False)
    monkeypatch.setattr(_FAULTS, "store", dist.PrefixStore("a", store))
    assert _meet_at_exit(1, timeout_s=5)  # everyone (one rank) arrived
    monkeypatch.setattr(_FAULTS, "store", dist.PrefixStore("b", store))
    start = time.monotonic()
    assert not _meet_at_exit(2, timeout_s=0.3)  # the other rank never comes: give up after the timeout
    assert 0.3 <= time.monotonic() - start < 5
    monkeypatch.setattr(_FAULTS, "store", dist.PrefixStore("c", store))
    _FAULTS.store.add("stops", 1)  # a peer recorded a fault: do not wait for it at all
    start = time.monotonic()
    assert not _meet_at_exit(2, timeout_s=30)
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------------- under torchrun


def _launch(out: Path, scenario: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, list, float]:
    """Run the fault worker on 2 gloo ranks; ``(process, each rank's results, seconds)``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", **{TIMEOUT_VARIABLE: str(TIMEOUT_S)})
    start = time.monotonic()
    proc = subprocess.run(_torchrun(out, scenario), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, _results(out), time.monotonic() - start


def _torchrun(out: Path, scenario: str) -> list[str]:
    return torchrun_command(2, WORKER, str(out), scenario, monitor_interval=2)


def _results(out: Path) -> list[dict | None]:
    """What each rank wrote at its end (None for a rank killed before it could write)."""
    files = [out / f"rank{r}.json" for r in range(2)]
    return [json.loads(f.read_text()) if f.exists() else None for f in files]


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-4000:] + proc.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("rank, event", [(1, "on_loss"), (0, "on_batch_end")])
def test_an_exception_on_one_rank_ends_every_rank_in_seconds(tmp_path, rank, event):
    # on_loss: before this rank's gradient all-reduce (the other waits in it); on_batch_end: after it.
    proc, ranks, _ = _launch(tmp_path, f"raise:{rank}:{event}:5")
    log = _log(proc)
    assert proc.returncode != 0, log
    failed, other = ranks[rank]["trials"][-1], ranks[1 - rank]["trials"][-1]
    assert failed["outcome"] == "RuntimeError" and f"injected fault on rank {rank}" in failed["message"]
    assert other["outcome"] == "PeerStopError" and other["peer"] == rank, log
    checkpoint = f"{tmp_path / 'raise.ckpt'} (epoch 0, iteration 4)"
    assert f"rank {rank} of 2 raised RuntimeError: injected fault on rank {rank} in {event} at epoch 0, iteration 6" \
        in other["message"]
    assert f"rank {1 - rank} stops too, at epoch 0, iteration 6. Last good checkpoint: {checkpoint}" in other["message"]
    assert f"clrfit: rank {rank} of 2 raised RuntimeError" in proc.stderr  # the failing rank says so itself
    fault_time = float((tmp_path / "fault_time").read_text())
    print(f"exception on rank {rank} in {event}: the other rank stopped {other['t_end'] - fault_time:.2f} s later")
    assert other["t_end"] - fault_time < FAULT_BOUND_S, log  # the issue measured 60+ s and forever


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_same_exception_on_every_rank_is_each_ranks_own(tmp_path):
    # A bug that fails on every rank at once (a shape error, say): each rank reports its own error, none hangs.
    proc, ranks, _ = _launch(tmp_path, "raise:-1:on_loss:5")
    log = _log(proc)
    assert proc.returncode != 0, log
    for r in (0, 1):
        trial = ranks[r]["trials"][-1]
        assert trial["outcome"] == "RuntimeError" and trial["message"] == "injected fault on rank -1 in on_loss", log
        assert f"clrfit: rank {r} of 2 raised RuntimeError" in proc.stderr
    fault_time = float((tmp_path / "fault_time").read_text())
    print(f"exception on every rank: both stopped {max(r['trials'][-1]['t_end'] for r in ranks) - fault_time:.2f} s later")
    assert max(r["trials"][-1]["t_end"] for r in ranks) - fault_time < FAULT_BOUND_S, log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc, ranks, _ = _launch(tmp_path, "sigint:1:5")
    log = _log(proc)
    assert proc.returncode != 0, log  # a Ctrl-C ends the job as interrupted (KeyboardInterrupt on every rank)
    for r in (0, 1):
        trial = ranks[r]["trials"][-1]
        assert trial["outcome"] == "KeyboardInterrupt", log
        assert trial["message"].startswith("training interrupted by Ctrl-C on rank 1 at epoch 0, iteration 6;")
        assert (trial["epoch"], trial["batch_index"], trial["iteration"], trial["interrupted"]) == (0, 6, 6, True)
        assert trial["final_writes"] == 1 and trial["saved_at"] == [0, 6, 6]  # one final write (rank 0 writes)
    state = read_checkpoint(tmp_path / "sigint.ckpt")
    assert state["counters"]["iteration"] == 6 and state["counters"]["batch_index"] == 6
    fault_time = float((tmp_path / "fault_time").read_text())
    print(f"SIGINT to rank 1: both ranks stopped {max(r['trials'][-1]['t_end'] for r in ranks) - fault_time:.2f} s later")
    assert max(r["trials"][-1]["t_end"] for r in ranks) - fault_time < FAULT_BOUND_S, log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cancel_on_one_rank_ends_the_fit_on_every_rank_at_that_step(tmp_path):
    proc, ranks, _ = _launch(tmp_path, "cancel:0:on_batch_end:5")
    assert proc.returncode == 0, _log(proc)  # a cancelled fit is a normal end, on every rank
    for r in (0, 1):
        trial = ranks[r]["trials"][-1]
        assert (trial["outcome"], trial["epoch"], trial["iteration"], trial["interrupted"]) == ("completed", 0, 6, False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_nan_loss_on_one_rank_stops_every_rank_with_divergence_error(tmp_path):
    proc, ranks, _ = _launch(tmp_path, "nan:1:on_loss:5")
    log = _log(proc)
    assert proc.returncode != 0, log
    trials = [ranks[r]["trials"][-1] for r in (0, 1)]
    assert [t["outcome"] for t in trials] == ["DivergenceError"] * 2, log
    assert trials[0]["iteration"] == trials[1]["iteration"]  # decided together (any_rank), at the same step
    # Rank 1's loss at step 5; rank 0's from step 6 on, once the all-reduced NaN gradient reached the weights.
    assert "training diverged: the training loss is nan at epoch 0, iteration 5" in trials[1]["message"]
    assert "training diverged: the training loss is nan at epoch 0, iteration 6" in trials[0]["message"]
    assert "clrfit: rank" not in proc.stderr  # an agreed stop: no rank failed alone, nobody is named


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_one_rank_is_named_by_the_others(tmp_path):
    proc, ranks, _ = _launch(tmp_path, "kill:1:7")
    log = _log(proc)
    assert proc.returncode != 0, log
    survivor = ranks[0]["trials"][-1]
    assert survivor["outcome"] == "PeerStopError" and survivor["peer"] == 1, log
    assert survivor["message"].startswith("rank 1 of 2 died without a word (killed, or crashed in native code); "
                                          "rank 0 stops too, at epoch 0, iteration 8. Last good checkpoint: "
                                          f"{tmp_path / 'kill.ckpt'} (epoch 0, iteration 4)"), survivor["message"]
    assert ranks[1] is None  # the killed rank never got to write
    fault_time = float((tmp_path / "fault_time").read_text())
    print(f"SIGKILL of rank 1: rank 0 stopped {survivor['t_end'] - fault_time:.2f} s later")
    assert survivor["t_end"] - fault_time < FAULT_BOUND_S, log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_error_in_the_script_outside_a_fit_does_not_hang_the_others(tmp_path):
    # Rank 1 fails after the fit; rank 0 waits in learn.save()'s barrier. Before, rank 1 then sat in the
    # exit-time barrier and rank 0 in its collective, each waiting for the other.
    proc, ranks, _ = _launch(tmp_path, "outside:1")
    log = _log(proc)
    assert proc.returncode != 0, log
    assert "ValueError: script error on rank 1 after the fit" in proc.stderr
    assert "clrfit: rank 0 exits: rank 1 of 2 exited with an uncaught ValueError: script error on rank 1" in proc.stderr, log
    fault_time = float((tmp_path / "fault_time").read_text())
    print(f"script error on rank 1: rank 0's save ended {ranks[0]['after_save'] - fault_time:.2f} s later")
    assert ranks[0]["after_save"] - fault_time < FAULT_BOUND_S, log


def _check_trials(ranks: list[dict], tmp_path: Path, n: int) -> list[tuple[int, int]]:
    """Every trial stopped every rank at the same step with one final checkpoint; ``(k, iteration)`` per trial."""
    trials = [[t for t in r["trials"] if t["name"].startswith("trial")] for r in ranks]
    assert len(trials[0]) == len(trials[1]) == n
    stops = []
    for t0, t1 in zip(*trials):
        assert t0["outcome"] == t1["outcome"], (t0, t1)  # both interrupted, or both done (a Ctrl-C after the last vote)
        if t0["outcome"] == "completed":
            assert t0["iteration"] == t1["iteration"] == 36
            continue
        assert t0["outcome"] == "KeyboardInterrupt", (t0, t1)
        position = [(t["epoch"], t["batch_index"], t["iteration"]) for t in (t0, t1)]
        assert position[0] == position[1], (t0, t1)
        assert t0["iteration"] >= t0["k"]  # it stopped after the signal, at a step boundary
        # The checkpoint holds the stop: written once more by the Ctrl-C, or already by checkpoint_every.
        assert t0["final_writes"] == t1["final_writes"] in (0, 1), (t0, t1)
        assert t0["saved_at"] == t1["saved_at"] == list(position[0]), (t0, t1)
        counters = read_checkpoint(tmp_path / f"{t0['name']}.ckpt")["counters"]
        assert (counters["epoch"], counters["batch_index"], counters["iteration"]) == position[0]
        stops.append((t0["k"], t0["iteration"]))
    return stops


@pytest.mark.timeout(300)
def test_sigint_to_both_ranks_at_once_quick(tmp_path):
    n = 3
    proc, ranks, _ = _launch(tmp_path, f"trials:{n}")
    assert proc.returncode == 0, _log(proc)
    assert len(_check_trials(ranks, tmp_path, n)) >= 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_to_both_ranks_at_once_many_trials(tmp_path):
    n = 24
    proc, ranks, _ = _launch(tmp_path, f"trials:{n}", timeout=540)
    assert proc.returncode == 0, _log(proc)
    stops = _check_trials(ranks, tmp_path, n)
    print(f"SIGINT to both ranks: {n} trials, {len(stops)} interrupted at the same step on both, "
          f"{n - len(stops)} completed on both, 0 deadlocks")
    assert len(stops) >= n - 4  # a few signals may land after a fit's last vote: that fit completes on both ranks
    assert len({k for k, _ in stops}) > n // 2  # the signals landed all over the fit


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_terminal_ctrl_c_reaches_torchrun_and_every_rank(tmp_path):
    # A terminal's Ctrl-C signals the whole foreground process group: torchrun and both ranks; torchrun
    # then forwards a second SIGINT to each rank.
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", **{TIMEOUT_VARIABLE: str(TIMEOUT_S)})
    proc = subprocess.Popen(_torchrun(out, "wait"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "training").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "training").exists(), proc.communicate(timeout=10)[0][-4000:]
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"terminal Ctrl-C: torchrun exited {elapsed:.2f} s after the signal")
    assert proc.returncode != 0 and elapsed < FAULT_BOUND_S, log[-4000:]
    ranks = _results(out)
    t0, t1 = (r["trials"][-1] for r in ranks)
    assert t0["outcome"] == t1["outcome"] == "KeyboardInterrupt", log[-4000:]
    assert (t0["epoch"], t0["iteration"]) == (t1["epoch"], t1["iteration"]) and t0["interrupted"] and t1["interrupted"]
    counters = read_checkpoint(out / "wait.ckpt")["counters"]
    assert counters["iteration"] == t0["iteration"]
