"""clrfit.callbacks: SaveBest, EarlyStopping, GradientClipping, CSVLogger, TensorBoardLogger, and exact resume."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clrfit import Callback, Learner, ModelData, accuracy
from clrfit.callbacks import CSVLogger, EarlyStopping, GradientClipping, SaveBest, TensorBoardLogger
from clrfit.serialization import load_state
from conftest import InterruptAt, make_data, make_learner

ROOT = Path(__file__).resolve().parent.parent


class Snapshots(Callback):
    """The model's state after every validation."""

    order = 80

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_validate_end(self) -> None:
        self.states.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- SaveBest


def test_save_best_keeps_the_best_epoch_atomically_and_can_load_it(tmp_path):
    learn = make_learner(metrics=[accuracy])
    snaps, best = Snapshots(), SaveBest("val_loss", path=tmp_path / "best.pt", load_best=True)
    learn.fit(1.0, 6, callbacks=[best, snaps])  # a large constant lr: val_loss goes up and down
    losses = learn.sched.val_losses
    assert best.best == min(losses) and best.best_epoch == losses.index(min(losses))
    saved = load_state(tmp_path / "best.pt", required=("model",))
    assert saved["epoch"] == best.best_epoch and saved["value"] == best.best and saved["monitor"] == "val_loss"
    assert _same(saved["model"], snaps.states[best.best_epoch])
    assert _same(learn.model.state_dict(), snaps.states[best.best_epoch]), "load_best loads it at the end"
    assert not list(tmp_path.glob(".best.pt.*.tmp")), "no temporary file is left"


def test_save_best_auto_mode_maximises_accuracy_and_default_path(tmp_path):
    learn = make_learner(metrics=[accuracy], path=tmp_path)
    best = SaveBest("accuracy")
    learn.fit(1.0, 5, callbacks=[best])
    acc = [m[0] for m in learn.sched.rec_metrics]
    assert best.maximise and best.best == max(acc) and best.best_epoch == acc.index(max(acc))
    assert (tmp_path / "models" / "best.pt").is_file()
    assert SaveBest("error_rate").maximise is False and SaveBest("accuracy", mode="min").maximise is False


def test_monitor_must_be_recorded_and_is_checked_before_any_step(tmp_path):
    learn = make_learner(metrics=[accuracy])
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    for cb in (SaveBest("acc", path=tmp_path / "b.pt"), EarlyStopping("f1")):
        with pytest.raises(ValueError, match=r"monitor='(acc|f1)' is not a recorded metric; allowed: 'val_loss', 'accuracy'"):
            learn.fit(0.1, 1, callbacks=[cb])
    assert _same(before, learn.model.state_dict()) and learn.iteration == 0
    no_val = make_learner(data=ModelData.from_tensors(torch.randn(16, 6), torch.randint(0, 2, (16,))))
    with pytest.raises(ValueError, match="needs a validation pass every epoch"):
        no_val.fit(0.1, 1, callbacks=[EarlyStopping()])


def test_bad_arguments():
    with pytest.raises(ValueError, match="patience must be an integer >= 0; got -1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta must be >= 0; got -0.1"):
        EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError, match="mode must be one of 'min', 'max', 'auto'; got 'up'"):
        SaveBest(mode="up")
    with pytest.raises(TypeError, match="monitor must be 'val_loss' or a metric name"):
        SaveBest(monitor=3)
    with pytest.raises(ValueError, match="max_norm must be > 0; got 0.0"):
        GradientClipping(0)
    with pytest.raises(TypeError, match="path must be a file path"):
        CSVLogger(None)


# ---------------------------------------------------------------------- EarlyStopping


def test_early_stopping_stops_cleanly_and_says_why(capsys):
    learn = make_learner()
    stop = EarlyStopping(patience=2, min_delta=1e-3)
    learn.fit(1e-9, 10, callbacks=[stop])  # nothing moves: no epoch improves on the first by 1e-3
    assert len(learn.sched.val_losses) == 3 and stop.stopped_epoch == 2 and stop.best_epoch == 0
    assert learn.sched.epochs == [6, 12, 18], "the stopping epoch ends normally (on_epoch_end fired)"
    out = capsys.readouterr().out
    assert "EarlyStopping: val_loss has not improved" in out and "for 2 epoch(s) (patience=2); stopping after epoch 2" in out
    assert stop.reason in out
    # A fresh fit with the same callback starts over.
    learn.fit(1e-9, 2, callbacks=[stop])
    assert stop.stopped_epoch == -1 and stop.wait == 1


def test_early_stopping_patience_zero_and_improvement_resets_wait():
    learn = make_learner()
    stop = EarlyStopping(patience=0)
    learn.fit(1e-9, 5, callbacks=[stop])
    # Epoch 0 improves on inf; epoch 1 either improves (wait 0) or stops at once.
    losses = learn.sched.val_losses
    first_worse = next(i for i in range(1, len(losses)) if not losses[i] < min(losses[:i]))
    assert stop.stopped_epoch == first_worse == len(losses) - 1


# ---------------------------------------------------------------------- GradientClipping


def _one_step_learner(**kwargs) -> Learner:
    data = make_data(bs=96)  # one batch: one step per epoch
    return make_learner(data=data, opt_fn=lambda params, lr: torch.optim.SGD(params, lr=lr), device="cpu", **kwargs)


def _update(learn: Learner, lr: float, callbacks) -> torch.Tensor:
    before = torch.cat([p.detach().flatten().clone() for p in learn.model.parameters()])
    learn.fit(lr, 1, callbacks=callbacks)
    after = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    return (before - after) / lr  # the gradient SGD applied


@pytest.mark.parametrize("fp16", [False, True])
def test_gradient_clipping_applies_to_true_gradients(fp16):
    raw = _update(_one_step_learner(), 0.1, [])
    clip = GradientClipping(max_norm=0.05)
    clipped = _update(_one_step_learner(fp16=fp16), 0.1, [clip])
    assert float(raw.norm()) > 0.05
    # Clipped direction, true scale: the norm is max_norm exactly once unscaled (not max_norm / loss_scale).
    assert float(clipped.norm()) == pytest.approx(0.05, rel=1e-2 if fp16 else 1e-5)
    torch.testing.assert_close(clipped, raw * 0.05 / raw.norm(), rtol=2e-2 if fp16 else 1e-4, atol=1e-4 if fp16 else 1e-6)
    assert float(clip.last_norm) == pytest.approx(float(raw.norm()), rel=1e-2 if fp16 else 1e-5)


def test_gradient_clipping_below_the_limit_changes_nothing():
    raw = _update(_one_step_learner(), 0.1, [])
    same = _update(_one_step_learner(), 0.1, [GradientClipping(max_norm=1e6)])
    torch.testing.assert_close(same, raw)


# ---------------------------------------------------------------------- CSVLogger


def test_csv_logger_one_row_per_epoch_with_exact_values(tmp_path):
    learn = make_learner(metrics=[accuracy])
    log = tmp_path / "log.csv"
    learn.fit(0.1, 3, callbacks=[CSVLogger(log)])
    lines = log.read_text().splitlines()
    assert lines[0] == "epoch,iteration,train_loss,val_loss,accuracy,lr"
    assert len(lines) == 4
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2] and [int(r[1]) for r in rows] == [6, 12, 18]
    assert [float(r[3]) for r in rows] == learn.sched.val_losses  # repr: exact round trip
    assert [float(r[4]) for r in rows] == [m[0] for m in learn.sched.rec_metrics]
    assert [float(r[2]) for r in rows] == [learn.sched.losses[n - 1] for n in learn.sched.epochs]
    assert all(float(r[5]) == 0.1 for r in rows)
    # A fresh fit starts over; append=True adds rows under the same header.
    learn.fit(0.1, 1, callbacks=[CSVLogger(log)])
    assert len(log.read_text().splitlines()) == 2
    learn.fit(0.1, 2, callbacks=[CSVLogger(log, append=True)])
    assert len(log.read_text().splitlines()) == 4
    assert log.read_text().endswith("\n"), "whole lines only"


# ---------------------------------------------------------------------- TensorBoardLogger


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_logs_lr_momentum_losses_and_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    learn = make_learner(metrics=[accuracy])
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), callbacks=[TensorBoardLogger(tmp_path / "tb")])
    s = _scalars(tmp_path / "tb")
    rec = learn.sched
    assert [step for step, _ in s["lr/group0"]] == rec.iterations
    assert [v for _, v in s["lr/group0"]] == pytest.approx(rec.lrs, rel=1e-6)
    assert [v for _, v in s["momentum/group0"]] == pytest.approx(rec.momentums, rel=1e-6)
    assert [v for _, v in s["loss/train"]] == pytest.approx(rec.raw_losses, rel=1e-6)
    assert [v for _, v in s["loss/train_smooth"]] == pytest.approx(rec.losses, rel=1e-6)
    assert s["epoch/val_loss"] == [(5, pytest.approx(rec.val_losses[0], rel=1e-6)), (11, pytest.approx(rec.val_losses[1], rel=1e-6))]
    assert [v for _, v in s["epoch/accuracy"]] == pytest.approx([m[0] for m in rec.rec_metrics], rel=1e-6)


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_tensorboard_missing_is_a_clear_import_error():
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from clrfit.callbacks import TensorBoardLogger\n"
            "try:\n    TensorBoardLogger('tb')\nexcept ImportError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert "ERR TensorBoardLogger needs the optional tensorboard package: pip install tensorboard" in proc.stdout, proc.stderr
    assert "clrfit[test]" in proc.stdout


# ---------------------------------------------------------------------- checkpoint and resume


def _callbacks(folder: Path) -> list[Callback]:
    cbs = [SaveBest("val_loss", path=folder / "best.pt"), EarlyStopping(patience=4, min_delta=1e-4),
           CSVLogger(folder / "log.csv")]
    try:
        cbs.append(TensorBoardLogger(folder / "tb"))
    except ImportError:
        pass
    return cbs


def _fit(learn: Learner, folder: Path, extra=(), **kw) -> list[Callback]:
    cbs = _callbacks(folder)
    learn.fit(0.3, 1, cycle_len=5, use_clr=(10, 3), callbacks=[*cbs, *extra], checkpoint=folder / "ck.pt",
              checkpoint_every=4, **kw)
    return cbs


def _states(cbs: list[Callback]) -> list[dict]:
    return [{k: v for k, v in cb.state_dict().items() if k != "path"} for cb in cbs]


@pytest.mark.parametrize("stop_at", [3, 9, 14])  # mid-epoch, mid-epoch after a checkpoint_every save, mid-run
def test_interrupted_and_resumed_callbacks_match_an_uninterrupted_run(tmp_path, stop_at):
    a, b = tmp_path / "a", tmp_path / "b"
    full = _fit(make_learner(metrics=[accuracy]), a)
    with pytest.raises(KeyboardInterrupt):
        _fit(make_learner(metrics=[accuracy]), b, extra=[InterruptAt(stop_at)])
    resumed_learn = make_learner(metrics=[accuracy])
    resumed = _fit(resumed_learn, b, resume=True)
    assert _states(resumed) == _states(full)
    assert (b / "log.csv").read_text() == (a / "log.csv").read_text()
    assert _same(load_state(b / "best.pt")["model"], load_state(a / "best.pt")["model"])
    if len(full) == 4:
        sa, sb = _scalars(a / "tb"), _scalars(b / "tb")
        assert sa.keys() == sb.keys()
        for tag in sa:  # the same steps and values (a resumed run purges what it writes again)
            assert dict(sb[tag]) == pytest.approx(dict(sa[tag]), rel=1e-6), tag


def test_resume_after_early_stop_stays_stopped(tmp_path):
    learn = make_learner()
    stop = EarlyStopping(patience=1, min_delta=1.0)  # stops after epoch 1
    learn.fit(0.1, 5, callbacks=[stop], checkpoint=tmp_path / "ck.pt")
    assert stop.stopped_epoch == 1
    again = make_learner()
    stop2 = EarlyStopping(patience=1, min_delta=1.0)
    again.fit(0.1, 5, callbacks=[stop2], checkpoint=tmp_path / "ck.pt", resume=True)
    assert stop2.stopped_epoch == 1 and again.iteration == learn.iteration == 12


def test_learner_wide_callbacks_sit_out_range_tests_and_tensorboard_continues_steps(tmp_path):
    tb = []
    try:
        tb = [TensorBoardLogger(tmp_path / "tb")]
    except ImportError:
        pass
    cbs = [SaveBest(path=tmp_path / "best.pt"), EarlyStopping(patience=5), CSVLogger(tmp_path / "log.csv"), *tb]
    learn = make_learner(metrics=[accuracy], callbacks=cbs)
    learn.fit(0.1, 2)
    states = [cb.state_dict() for cb in cbs]
    csv_text = (tmp_path / "log.csv").read_text()
    learn.lr_find2(num_it=20)  # validates no epoch: the callbacks must neither fail nor change
    learn.lr_find()
    assert [cb.state_dict() for cb in cbs] == states
    assert (tmp_path / "log.csv").read_text() == csv_text
    learn.fit(0.1, 1)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2, "a fresh fit starts the CSV over"
    if tb:
        steps = [step for step, _ in _scalars(tmp_path / "tb")["lr/group0"]]
        assert steps == list(range(18)), "the second fit's 6 steps follow the first fit's 12"


def test_importable_as_in_the_issue():
    from clrfit import callbacks as cb  # a submodule: no entry in clrfit.__all__ needed

    assert cb.SaveBest is SaveBest and cb.EarlyStopping is EarlyStopping and cb.CSVLogger is CSVLogger
