"""The learner loop: events, stops, counters, SGDR values, recording, layer groups, save/load."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from clrfit import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
    accuracy,
)
from conftest import EventLog, make_data, make_learner, make_model

NB = 6  # make_data(): 96 training samples / bs 16


def step_events() -> list[str]:
    return ["on_batch_begin", "on_loss", "on_backward_end", "on_step_end", "on_batch_end"]


def test_event_order_of_a_plain_fit():
    log = EventLog()
    learn = make_learner()
    learn.fit(0.1, 2, callbacks=[log])
    epoch = ["on_epoch_begin", *step_events() * NB, "on_validate_begin", "on_validate_end", "on_epoch_end"]
    assert log.names == ["on_train_begin", *epoch, *epoch, "on_train_end"]
    # counters: iteration counts optimizer steps across epochs; epoch is the current epoch
    begins = [(e, i) for name, e, i in log.events if name == "on_batch_begin"]
    assert begins == [(e, e * NB + b) for e in range(2) for b in range(NB)]
    assert learn.iteration == 2 * NB


class Raiser(Callback):
    """Raises ``exc`` from ``event`` when the learner's iteration equals ``at`` (after EventLog logged it)."""

    order = 200

    def __init__(self, event: str, exc: type[Exception], at: int) -> None:
        self.exc, self.at = exc, at
        setattr(self, event, self._maybe_raise)

    def _maybe_raise(self) -> None:
        if self.learn.iteration == self.at:
            raise self.exc()


def _fit_with(cb: Callback, n_epochs: int = 2) -> tuple[Learner, EventLog]:
    log = EventLog()
    learn = make_learner()
    learn.fit(0.1, n_epochs, callbacks=[cb, log])
    return learn, log


def test_cancel_batch_skips_rest_of_that_batch_only():
    before = make_model().state_dict()
    learn, log = _fit_with(Raiser("on_loss", CancelBatchException, at=3), n_epochs=1)
    names = log.names
    # batch 3: begin, loss, then straight to end (no backward, no step)
    i = [k for k, (n, _, it) in enumerate(log.events) if n == "on_batch_begin" and it == 3][0]
    assert names[i:i + 3] == ["on_batch_begin", "on_loss", "on_batch_end"]
    assert names.count("on_step_end") == NB - 1
    assert names.count("on_batch_end") == NB
    assert learn.iteration == NB  # the cancelled batch still counts as an iteration
    assert not torch.equal(learn.model.state_dict()["0.weight"], before["0.weight"])


def test_cancel_epoch_skips_remaining_batches_and_validation():
    learn, log = _fit_with(Raiser("on_batch_end", CancelEpochException, at=2), n_epochs=2)
    first_epoch = log.names[: log.names.index("on_epoch_end") + 1]
    assert first_epoch.count("on_batch_begin") == 3
    assert "on_validate_begin" not in first_epoch
    # the second epoch runs in full
    assert log.names.count("on_epoch_end") == 2
    assert log.names.count("on_batch_begin") == 3 + NB
    assert learn.sched.val_losses and len(learn.sched.val_losses) == 1


@pytest.mark.parametrize("event", ["on_batch_begin", "on_loss", "on_backward_end", "on_step_end", "on_batch_end"])
def test_cancel_fit_from_any_batch_event_ends_every_open_scope(event):
    learn, log = _fit_with(Raiser(event, CancelFitException, at=4), n_epochs=3)
    names = log.names
    assert names[-3:] == ["on_batch_end", "on_epoch_end", "on_train_end"]
    assert names.count("on_train_end") == 1
    assert names.count("on_batch_begin") == 5
    assert learn.iteration == 5  # iteration 4 began, so it counts


def test_cancel_fit_in_train_begin_still_fires_train_end():
    learn, log = _fit_with(Raiser("on_train_begin", CancelFitException, at=0))
    assert log.names == ["on_train_begin", "on_train_end"] or log.names == ["on_train_end"]
    assert "on_train_end" in log.names and "on_epoch_begin" not in log.names


def test_an_error_propagates_and_fires_only_train_end():
    class Boom(Callback):
        order = 200

        def on_loss(self):
            if self.learn.iteration == 2:
                raise RuntimeError("boom")

    log = EventLog()
    learn = make_learner()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(0.1, 1, callbacks=[Boom(), log])
    assert log.names[-1] == "on_train_end"
    assert log.names[-2] == "on_loss"  # no batch/epoch end after a real error


def test_keyboard_interrupt_stops_after_current_batch_and_reraises():
    import os
    import signal

    class CtrlC(Callback):
        def on_loss(self):
            if self.learn.iteration == 2:
                os.kill(os.getpid(), signal.SIGINT)

    log = EventLog()
    learn = make_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(0.1, 2, callbacks=[CtrlC(), log])
    # batch 2 completed (its step ran), then the fit ended cleanly
    assert learn.iteration == 3
    assert log.names.count("on_step_end") == 3
    assert log.names[-3:] == ["on_batch_end", "on_epoch_end", "on_train_end"]
    assert len(learn.sched.lrs) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_constant_lr_fit_records_what_the_optimizer_used():
    seen = []

    class Spy(Callback):
        order = 60  # after the scheduler and recorder

        def on_step_end(self):
            seen.append(self.learn.opt.param_groups[0]["lr"])

    learn = make_learner()
    sched = learn.fit(0.05, 2, callbacks=[Spy()])
    assert sched is learn.sched
    assert sched.lrs == seen == [0.05] * (2 * NB)
    assert sched.momentums == [0.9] * (2 * NB)
    assert sched.iterations == list(range(2 * NB))
    assert sched.epochs == [NB, 2 * NB]
    assert len(sched.val_losses) == 2 and len(sched.rec_metrics) == 0 or len(sched.rec_metrics) == 2


def sgdr_expected(lr: float, nb: int, cycle_len: int, cycle_mult: int, n_cycle: int) -> list[float]:
    """SGDR as docs/schedules.md states it, written independently of clrfit.schedules."""
    out = []
    lengths = [nb * cycle_len * cycle_mult**k for k in range(n_cycle)]
    for k, n_k in enumerate(lengths):
        for t in range(n_k):
            i = len(out)
            if i < lengths[0] / 20:
                out.append(lr / 100)
            else:
                out.append(lr / 2 * (1 + math.cos(math.pi * t / n_k)))
    return out


@pytest.mark.parametrize("cycle_len,cycle_mult,n_cycle", [(1, 2, 3), (2, 1, 2), (1, 3, 2)])
def test_sgdr_values_equal_the_contract(cycle_len, cycle_mult, n_cycle):
    seen = []

    class Spy(Callback):
        order = 60

        def on_backward_end(self):
            seen.append(self.learn.opt.param_groups[0]["lr"])

    learn = make_learner(data=make_data(n_trn=20 * 16))  # 20 batches: warm-up covers one batch
    nb = len(learn.data.trn_dl)
    learn.fit(0.3, n_cycle, cycle_len=cycle_len, cycle_mult=cycle_mult, callbacks=[Spy()])
    expected = sgdr_expected(0.3, nb, cycle_len, cycle_mult, n_cycle)
    epochs = cycle_len * n_cycle if cycle_mult == 1 else cycle_len * (cycle_mult**n_cycle - 1) // (cycle_mult - 1)
    assert len(seen) == len(expected) == epochs * nb
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    assert learn.sched.lrs == seen
    assert learn.n_epochs == epochs
    assert seen[0] == pytest.approx(0.3 / 100)


def test_sgdr_counters_track_cycles():
    cycles = []

    class Spy(Callback):
        order = 60

        def on_batch_begin(self):
            cycles.append((self.learn.cycle, self.learn.iter_in_cycle))

    learn = make_learner()
    learn.fit(0.1, 2, cycle_len=1, cycle_mult=2, callbacks=[Spy()])
    assert cycles == [(0, t) for t in range(NB)] + [(1, t) for t in range(2 * NB)]


def test_layer_group_lrs_keep_their_ratios():
    model = make_model()
    learn = make_learner(model=model, layer_groups=[model[0], model[2]])
    assert learn.n_groups == 2
    learn.fit([0.01, 0.1], 1, cycle_len=2)
    for lo, hi in learn.sched.group_lrs:
        assert hi / lo == pytest.approx(10.0, rel=1e-12)
    assert learn.sched.lrs == [g[1] for g in learn.sched.group_lrs]


def test_wds_per_group_set_as_l2():
    model = make_model()
    learn = make_learner(model=model, layer_groups=[model[0], model[2]])
    learn.fit(0.1, 1, wds=[1e-4, 1e-3])
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [1e-4, 1e-3]


def test_smoothed_losses_are_debiased_ema_of_raw_losses():
    learn = make_learner()
    sched = learn.fit(0.1, 2)
    raw = sched.raw_losses
    avg, expected = 0.0, []
    for k, value in enumerate(raw, start=1):
        avg = 0.98 * avg + 0.02 * value
        expected.append(avg / (1 - 0.98**k))
    assert sched.losses == pytest.approx(expected, rel=1e-12)
    assert sched.losses[0] == pytest.approx(raw[0])


def test_raw_loss_is_the_step_loss_on_the_batch():
    losses = []

    class Spy(Callback):
        def on_loss(self):
            losses.append(self.learn.loss.item())

    learn = make_learner()
    sched = learn.fit(0.1, 1, callbacks=[Spy()])
    assert sched.raw_losses == pytest.approx(losses, rel=1e-6)


def test_validation_metrics_match_a_manual_computation():
    learn = make_learner(metrics=[accuracy])
    learn.fit(0.1, 1)
    x, y = learn.data.val_dl.dataset.tensors
    with torch.no_grad():
        pred = learn.model(x)
        loss = nn.functional.cross_entropy(pred, y).item()
        acc = (pred.argmax(1) == y).float().mean().item()
    assert learn.sched.val_losses[-1] == pytest.approx(loss, rel=1e-5)
    assert learn.sched.rec_metrics[-1] == [pytest.approx(acc)]
    assert learn.sched.metric_names == ["accuracy"]


def test_training_reduces_validation_loss():
    learn = make_learner(data=make_data(n_trn=256), metrics=[accuracy])
    before, _ = learn.validate()
    learn.fit(0.2, 3)
    assert learn.sched.val_losses[-1] < 0.5 * before
    assert learn.sched.rec_metrics[-1][0] > 0.9


def test_save_load_round_trip(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(0.1, 1)
    path = learn.save("stage1")
    assert path == tmp_path / "models" / "stage1.pt" and path.exists()
    saved = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_saved = copy.deepcopy(learn.opt.state_dict())
    learn.fit(0.1, 1)
    assert not torch.equal(learn.model.state_dict()["0.weight"], saved["0.weight"])
    learn.load("stage1")
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, saved[k])
    buf = learn.opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt_saved["state"][0]["momentum_buffer"])
    # an explicit file path works too, and no temp files are left behind
    learn.save(tmp_path / "explicit.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explicit.pt", "models"]


def test_load_of_wrong_model_leaves_learner_unchanged(tmp_path):
    other = make_learner(model=make_model(hidden=5), path=tmp_path)
    other.save("other")
    learn = make_learner(path=tmp_path)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit"):
        learn.load("other")
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_load_of_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    learn = make_learner()
    with pytest.raises(ValueError, match="bad.pt"):
        learn.load(bad)


def test_plots_return_figures():
    from matplotlib.figure import Figure

    learn = make_learner()
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
    fig = learn.sched.plot_lr()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == learn.sched.lrs
    assert list(fig.axes[1].lines[0].get_ydata()) == learn.sched.momentums
    fig = learn.sched.plot_loss(n_skip=2, n_skip_end=1)
    assert isinstance(fig, Figure)
    assert list(fig.axes[0].lines[0].get_ydata()) == learn.sched.losses[2:-1]
    # constant momentum: a single panel
    learn.fit(0.1, 1)
    assert len(learn.sched.plot_lr().axes) == 1


def test_recorder_keeps_device_losses_until_flush():
    learn = make_learner()
    learn.fit(0.1, 1)
    rec = learn.sched
    rec._pending = [torch.tensor(1.0), torch.tensor(2.0)]
    n = len(rec.raw_losses_)
    assert rec.raw_losses[-2:] == [1.0, 2.0] and len(rec.raw_losses) == n + 2


def test_recorder_flush_reads_back_losses_of_any_shape_and_dtype():
    """0-d float32 losses stack in one call; one-element, float64 and mixed ones are read back the same."""
    learn = make_learner()
    learn.fit(0.1, 1)
    rec = learn.sched
    for pending in ([torch.tensor(1.5), torch.tensor(2.5)], [torch.tensor([1.5]), torch.tensor([2.5])],
                    [torch.tensor(1.5, dtype=torch.float64), torch.tensor([2.5])]):
        n = len(rec.raw_losses_)
        rec._pending = list(pending)
        assert rec.raw_losses[n:] == [1.5, 2.5] and len(rec.losses) == n + 2 and rec._pending == []


def test_fit_creates_new_recorder_each_time():
    learn = make_learner()
    first = learn.fit(0.1, 1)
    second = learn.fit(0.1, 1)
    assert first is not second and learn.sched is second is learn.recorder
    assert len(first.lrs) == len(second.lrs) == NB


# ------------------------------------------------------------------ bad input


def _weights(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


@pytest.mark.parametrize(
    "args,kwargs,name",
    [
        ((0, 1), {}, "lrs"),
        ((-0.1, 1), {}, "lrs"),
        ((float("nan"), 1), {}, "lrs"),
        (("0.1", 1), {}, "lrs"),
        ((0.1, 0), {}, "n_cycle"),
        ((0.1, 1.5), {}, "n_cycle"),
        ((0.1, 1), {"cycle_len": 0}, "cycle_len"),
        ((0.1, 1), {"cycle_len": -2}, "cycle_len"),
        ((0.1, 1), {"cycle_len": 1, "cycle_mult": 0}, "cycle_mult"),
        ((0.1, 1), {"cycle_mult": 2}, "cycle_mult"),
        (([0.1, 0.2], 1), {}, "lrs"),
        ((0.1, 1), {"wds": -1e-4}, "wds"),
        ((0.1, 1), {"callbacks": ["not a callback"]}, "callbacks"),
        ((0.1, 1), {"accumulate": 0}, "accumulate"),
        ((0.1, 1), {"on_nan": "explode"}, "on_nan"),
    ],
)
def test_bad_fit_arguments_raise_before_any_weight_changes(args, kwargs, name):
    learn = make_learner()
    before = _weights(learn)
    with pytest.raises((ValueError, TypeError), match=name):
        learn.fit(*args, **kwargs)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert learn.opt.state_dict()["state"] == {}


def test_bad_learner_arguments():
    data = make_data()
    with pytest.raises(TypeError, match="model"):
        Learner("not a model", data)
    with pytest.raises(TypeError, match="data"):
        Learner(make_model(), (data.trn_dl, data.val_dl))
    frozen = make_model()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Learner(frozen, data)
    with pytest.raises(ValueError, match="precision"):
        Learner(make_model(), data, precision="fp8")
    with pytest.raises(ValueError, match="device"):
        Learner(make_model(), data, device="toaster")
    model = make_model()
    with pytest.raises(ValueError, match="layer_groups"):
        Learner(model, data, layer_groups=[model[0], model[0]])


def test_empty_loaders_are_rejected():
    from torch.utils.data import DataLoader, TensorDataset

    from clrfit import ModelData

    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0)), batch_size=4)
    full = DataLoader(TensorDataset(torch.zeros(8, 3), torch.zeros(8)), batch_size=4)
    with pytest.raises(ValueError, match="trn_dl"):
        ModelData(empty, full)
    with pytest.raises(ValueError, match="val_dl"):
        ModelData(full, empty)
    with pytest.raises(ValueError, match="x_trn"):
        ModelData.from_tensors(torch.zeros(0, 3), torch.zeros(0), bs=4)
    with pytest.raises(ValueError, match="same number of samples"):
        ModelData.from_tensors(torch.zeros(5, 3), torch.zeros(4), bs=4)


def test_every_fit_spells_out_its_options_and_passes_them_to_train():
    """fit, fit_cyclic and fit_one_cycle take their schedule's arguments (the spec) and FIT_OPTIONS, each an
    explicit keyword with train's default and an Args: entry; the entry of an option reads the same in all three."""
    import inspect
    import re

    from clrfit import schedules
    from clrfit.learner import FIT_OPTIONS

    train = inspect.signature(Learner.train).parameters
    docs = {}
    for method, spec, lead in [(Learner.fit, schedules.FIT, []), (Learner.fit_cyclic, schedules.CYCLIC, ["epochs"]),
                               (Learner.fit_one_cycle, schedules.ONE_CYCLE, ["epochs"])]:
        params = inspect.signature(method).parameters
        assert sorted(list(params)[1:]) == sorted([*lead, *spec.names, *FIT_OPTIONS]), method.__name__
        assert all(params[name].default == train[name].default for name in FIT_OPTIONS), method.__name__
        args = inspect.cleandoc(method.__doc__).split("Args:\n", 1)[1].split("\n\n", 1)[0]
        entries = dict(re.findall(r"^    (\w+): (.*)$", args, flags=re.M))
        docs[method.__name__] = {name: entries[name] for name in FIT_OPTIONS}
    assert docs["fit"] == docs["fit_cyclic"] == docs["fit_one_cycle"]


def test_fit_options_reach_train_unchanged(monkeypatch):
    from clrfit.learner import FIT_OPTIONS

    learn = make_learner()
    seen = []
    monkeypatch.setattr(Learner, "train", lambda self, schedule, n_epochs, **kw: seen.append(kw))
    options = dict(wds=1e-3, callbacks=[], metrics=[accuracy], use_wd_sched=True, norm_wds=True,
                   wds_sched_mult=len, accumulate=2, compile=False, checkpoint="c.ckpt", checkpoint_every=3,
                   resume=True, on_nan="restore")
    assert set(options) == set(FIT_OPTIONS)
    learn.fit(0.1, 1, **options)
    learn.fit_cyclic(1, 0.01, 0.1, **options)
    learn.fit_one_cycle(1, 0.1, **options)
    for kw in seen:
        assert {name: kw[name] for name in FIT_OPTIONS} == options
    assert [kw["fit_args"]["kind"] for kw in seen] == ["fit", "fit_cyclic", "fit_one_cycle"]
