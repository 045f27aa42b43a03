"""Ctrl-C during a fit: stop after the current batch, on_train_end, usable model and history, final checkpoint."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from clrfit import Callback
from clrfit.checkpoint import read_checkpoint
from conftest import InterruptAt
from test_checkpoint import ROOT, NoisyDropout, assert_same_run, build, run, subprocess_env


class Watch(Callback):
    """Counts batch ends and train ends, and notes ``learn.interrupted`` at on_train_end."""

    order = 100

    def __init__(self) -> None:
        self.batch_ends, self.train_ends, self.validations, self.interrupted = 0, 0, 0, None

    def on_batch_end(self) -> None:
        self.batch_ends += 1

    def on_validate_end(self) -> None:
        self.validations += 1

    def on_train_end(self) -> None:
        self.train_ends += 1
        self.interrupted = self.learn.interrupted


class WeightsAfter(Callback):
    def __init__(self, k: int) -> None:
        self.k, self.weights = k, None

    def on_step_end(self) -> None:
        if self.learn.iteration == self.k:
            self.weights = {n: v.clone() for n, v in self.learn.model.state_dict().items()}


def test_ctrl_c_finishes_the_batch_fires_train_end_and_reraises():
    k = 8
    reference = WeightsAfter(k)
    run("clr_beta", callbacks=[reference])
    handler = signal.getsignal(signal.SIGINT)
    watch = Watch()
    learn = build()
    with pytest.raises(KeyboardInterrupt, match=f"interrupted by Ctrl-C at epoch 1, iteration {k + 1}"):
        learn.fit(0.1, 1, cycle_len=3, use_clr_beta=(10, 13.68, 0.95, 0.85),
                  callbacks=[NoisyDropout(), InterruptAt(k), watch])
    assert (watch.batch_ends, watch.train_ends, watch.interrupted) == (k + 1, 1, True)
    assert signal.getsignal(signal.SIGINT) is handler  # the fit's handler is gone
    # batch k ran to its end: the weights are those after step k of an uninterrupted run
    assert all(torch.equal(v, reference.weights[n]) for n, v in learn.model.state_dict().items())
    # history kept: k + 1 steps with the 1cycle values
    assert learn.sched.iterations == list(range(k + 1)) and len(learn.sched.raw_losses) == k + 1
    full = run("clr_beta")
    assert learn.sched.lrs == full.sched.lrs[: k + 1] and learn.sched.momentums == full.sched.momentums[: k + 1]
    # the model is usable: it validates and trains again
    val_loss, _ = learn.validate()
    assert math.isfinite(val_loss)
    learn.fit(0.01, 1)
    assert len(learn.sched.iterations) == learn.nb and not learn.interrupted


def test_ctrl_c_writes_a_final_checkpoint_that_resumes_exactly(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run("clr_beta_2_cycles", checkpoint=ckpt, callbacks=[InterruptAt(16)])  # no checkpoint_every
    assert read_checkpoint(ckpt)["counters"] == dict(epoch=2, batch_index=5, iteration=17, cycle=1, iter_in_cycle=5)
    assert_same_run(run("clr_beta_2_cycles"), run("clr_beta_2_cycles", checkpoint=ckpt, resume=True))


def test_ctrl_c_on_the_last_batch_of_an_epoch_resumes_with_its_validation(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    watch = Watch()
    with pytest.raises(KeyboardInterrupt):
        run("clr_beta", checkpoint=ckpt, callbacks=[InterruptAt(11), watch])
    assert watch.validations == 1  # epoch 1 stopped before its validation
    assert read_checkpoint(ckpt)["counters"]["batch_index"] == 6 and read_checkpoint(ckpt)["counters"]["epoch"] == 1
    resumed = run("clr_beta", checkpoint=ckpt, resume=True)
    assert_same_run(run("clr_beta"), resumed)
    assert len(resumed.sched.val_losses) == 3


class InterruptValidation(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validate_begin(self) -> None:
        if self.learn.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_validation_records_no_partial_result_and_resumes_exactly(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    watch = Watch()
    with pytest.raises(KeyboardInterrupt):
        run("clr_beta", checkpoint=ckpt, callbacks=[InterruptValidation(1), watch])
    learn_epochs = read_checkpoint(ckpt)
    assert watch.validations == 1 and len(learn_epochs["callbacks"]["Recorder"]["val_losses"]) == 1
    assert learn_epochs["counters"]["iteration"] == 12 and learn_epochs["counters"]["batch_index"] == 6
    assert_same_run(run("clr_beta"), run("clr_beta", checkpoint=ckpt, resume=True))


def test_ctrl_c_in_the_resumed_fit_then_resume_again(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    for k in (3, 9, 14):
        with pytest.raises(KeyboardInterrupt):
            run("clr_beta", checkpoint=ckpt, resume=k != 3, callbacks=[InterruptAt(k)])
    assert_same_run(run("clr_beta"), run("clr_beta", checkpoint=ckpt, resume=True))


CTRL_C_SCRIPT = """
import sys, time
from clrfit import Callback
from test_checkpoint import run

class Slow(Callback):
    order = 99
    def on_batch_end(self):
        print("step", self.learn.iteration, flush=True)
        time.sleep(0.05)

try:
    run("clr_beta", checkpoint=sys.argv[1], callbacks=[Slow()])
except KeyboardInterrupt as err:
    print("stopped:", err, flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


def test_ctrl_c_from_outside_a_training_process(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(ckpt)], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("step 3"):
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, proc.stderr.read()
    steps = [int(x.split()[1]) for x in lines if x.startswith("step")]
    done = steps[-1] + 1
    assert steps == list(range(done)) and 4 <= done < 18
    assert lines[-1].startswith(f"stopped: training interrupted by Ctrl-C at epoch {(done - 1) // 6}, iteration {done}")
    assert read_checkpoint(ckpt)["counters"]["iteration"] == done
    assert_same_run(run("clr_beta"), run("clr_beta", checkpoint=ckpt, resume=True))


def test_cli_ctrl_c_then_resume_equals_an_uninterrupted_cli_run(tmp_path, monkeypatch, capsys):
    from clrfit import Learner, cli, datasets

    real_mnist1d = datasets.mnist1d
    monkeypatch.setattr(datasets, "get_data", lambda name, path=None, bs=128, **kw: real_mnist1d(
        n_train=256, n_valid=128, bs=bs, cache_dir=tmp_path / "cache"))
    argv = ["fit", "--lr", "0.5", "--cycle-len", "2", "--use-clr-beta", "10,10,0.95,0.85", "--bs", "32",
            "--no-progress", "--threads", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "reference")]) == 0

    original = Learner.fit
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **kw: original(self, *a, callbacks=[InterruptAt(9)], **kw))
    ckpt = tmp_path / "run.ckpt"
    assert cli.main([*argv, "--checkpoint", str(ckpt)]) == 130
    assert "interrupted by Ctrl-C at epoch 1, iteration 10" in capsys.readouterr().err
    assert read_checkpoint(ckpt)["counters"]["iteration"] == 10
    monkeypatch.setattr(Learner, "fit", original)
    assert cli.main([*argv, "--checkpoint", str(ckpt), "--resume", "--out", str(tmp_path / "resumed")]) == 0
    reference = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(v, resumed[k]) for k, v in reference.items())


IGNORING = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from conftest import make_learner, InterruptAt
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup or a launcher would
learn = make_learner()
learn.fit(0.1, 2, callbacks=[InterruptAt(3)])
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
print("iterations", learn.iteration)
"""


def test_a_process_ignoring_sigint_keeps_ignoring_it_during_a_fit():
    """Issue 12: a SIG_IGN SIGINT disposition was overridden by the fit's handler (Ctrl-C then stopped the fit)."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", IGNORING, str(tests)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["iterations", "12"]  # the whole fit ran: the SIGINT was ignored
