"""A cancel (each kind) and an error at every event, for fit, lr_find and lr_find2 (issue 12, items 5 and 8).

Each case is ``(event, fault, at)``: a :class:`Fault` callback raises ``fault`` from
``event`` the first time it fires at or after iteration ``at``. It runs before the
recorder, the checkpoint writer and the divergence guard (order 20), the order
that used to lose history. Every case asserts:

- the history is aligned: one iteration, lr, momentum and loss per recorded step, no NaN
  (no false ``DivergenceError``: the fit would raise it);
- no stale gradients: every step's forward starts with ``.grad`` None (a :class:`GradProbe`),
  in this fit and in the next one on the same learner;
- fits: after a crash (and for errors, the error itself) with ``checkpoint_every=1``, resuming on
  the same learner gives exactly the run that was never interrupted;
- range tests: the learner is back exactly as before, and a cancel ends the sweep with its
  steps as ``learn.sched`` (an error keeps the previous one).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from clrfit import Callback, CancelBatchException, CancelEpochException, CancelFitException
from clrfit.callback import EVENTS
from clrfit.lr_finder import RangeTestRecorder
from test_checkpoint import NoisyDropout, assert_same_run, build

CANCELS = (CancelBatchException, CancelEpochException, CancelFitException)
NB = 6  # build(): 43 samples, batches of 8
TRAIN_EVENTS = ("on_train_begin", "on_train_end")


class Boom(RuntimeError):
    """The error a faulty callback raises."""


class Fault(Callback):
    """Raises ``fault`` from ``event`` once: the first time it fires at or after iteration ``at`` (None: never).

    ``exact=True``: only when the iteration is ``at`` (a resumed run meets the same event at the same point).
    """

    order = 20  # before the recorder (50), the checkpoint writer (55) and the guard (60)

    def __init__(self, event: str | None = None, fault: type[Exception] | None = None, at: int = 0,
                 exact: bool = False) -> None:
        self.fault, self.at, self.exact = fault, at, exact
        self.fired_at: int | None = None
        if event is not None:
            setattr(self, event, self._maybe_raise)

    def _maybe_raise(self) -> None:
        it = self.learn.iteration
        if self.fired_at is None and (it == self.at if self.exact else it >= self.at):
            self.fired_at = it
            raise self.fault()


class Began(Callback):
    """The iterations that began (cancelled ones included)."""

    order = 0

    def __init__(self) -> None:
        self.iterations: list[int] = []

    def on_batch_begin(self) -> None:
        self.iterations.append(self.learn.iteration)


class GradProbe(Callback):
    """Fails the fit if a step's forward finds gradients left by an earlier step (or an earlier fit)."""

    order = 1

    def __init__(self) -> None:
        self.stale: list[int] = []

    def on_loss(self) -> None:
        if any(p.grad is not None for p in self.learn.model.parameters()):
            self.stale.append(self.learn.iteration)


class CrashAt(Callback):
    """An error (a crash, for the resume check) as iteration ``k`` begins."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_batch_begin(self) -> None:
        if self.learn.iteration == self.k:
            raise Boom("crash")


def fit(learn, callbacks, **kw):
    return learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 13.68, 0.95, 0.85),
                     callbacks=[NoisyDropout(), *callbacks], **kw)


def assert_aligned(rec) -> None:
    n = len(rec.iterations)
    assert len(rec.group_lrs) == len(rec.group_moms) == len(rec.raw_losses) == len(rec.losses) == n
    assert all(math.isfinite(v) for v in rec.raw_losses), rec.raw_losses
    assert rec.iterations == sorted(set(rec.iterations))  # each step once, in order
    assert all(0 <= e <= n for e in rec.epochs) and rec.epochs == sorted(rec.epochs)


def fit_cases():
    for event in EVENTS:
        for fault in (*CANCELS, Boom):
            for at in (0, 4):
                if at == 4 and event in TRAIN_EVENTS:
                    continue  # they fire once: "at" means nothing
                marks = [pytest.mark.slow] if at == 4 else []  # the mid-fit cases: in the slow (CI) run
                yield pytest.param(event, fault, at, id=f"{event}-{fault.__name__}-at{at}", marks=marks)


@pytest.mark.parametrize("event, fault, at", list(fit_cases()))
def test_fit_fault(event, fault, at, tmp_path):
    probe = GradProbe()
    learn = build()
    if fault is Boom:
        with pytest.raises(Boom):
            fit(learn, [probe, Fault(event, fault, at)], checkpoint=tmp_path / "c.ckpt", checkpoint_every=1)
        assert_aligned(learn.sched)
        resumable = (tmp_path / "c.ckpt").exists()  # not when it failed before the first step ended
        # The same learner resumes (its gradients, if any were left, must not leak in) ...
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no checkpoint yet: a fresh fit"
            fit(learn, [probe, Fault()], checkpoint=tmp_path / "c.ckpt", checkpoint_every=1, resume=True)
        reference = build()  # ... into exactly the run that never failed
        fit(reference, [Fault()])
        if resumable:
            assert_same_run(reference, learn)
        assert_aligned(learn.sched)
        assert not probe.stale, probe.stale
        return
    fault_cb, began = Fault(event, fault, at), Began()
    fit(learn, [probe, fault_cb, began], checkpoint=tmp_path / "a.ckpt")
    assert fault_cb.fired_at is not None
    assert_aligned(learn.sched)
    assert not probe.stale, probe.stale
    if event in TRAIN_EVENTS:
        return
    # Crashed after the cancel (or, when no step follows it, before it), then resumed: the same run.
    after = [i for i in began.iterations if i > fault_cb.fired_at]
    before = [i for i in began.iterations if i < fault_cb.fired_at]
    if not after and not before:
        return  # a fit cancelled at its very first event: nothing to crash in
    crash = after[0] if after else before[-1]
    other = build()
    with pytest.raises(Boom):
        fit(other, [probe, Fault(event, fault, fault_cb.fired_at, exact=True), CrashAt(crash)],
            checkpoint=tmp_path / "b.ckpt", checkpoint_every=1)
    again = Fault(event, fault, fault_cb.fired_at if not after else -1, exact=True)  # a fault already past: never
    fit(other, [probe, again, CrashAt(-1)], checkpoint=tmp_path / "b.ckpt", checkpoint_every=1, resume=True)
    assert_same_run(learn, other)
    assert not probe.stale, probe.stale


def range_cases():
    for finder in ("lr_find", "lr_find2"):
        for event in EVENTS:
            if finder == "lr_find2" and event in ("on_validate_begin", "on_validate_end"):
                continue  # range tests validate per step, inside on_batch_end: these never fire
            if finder == "lr_find" and event in ("on_validate_begin", "on_validate_end"):
                continue
            for fault in (*CANCELS, Boom):
                yield pytest.param(finder, event, fault, id=f"{finder}-{event}-{fault.__name__}")


def state_of(learn):
    return ({k: v.clone() for k, v in learn.model.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in learn.opt.state_dict()["state"].items()},
            [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups],
            [None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
            torch.get_rng_state())


def assert_same_state(a, b) -> None:
    (wa, oa, ga, gra, ra), (wb, ob, gb, grb, rb) = a, b
    assert all(torch.equal(wa[k], v) for k, v in wb.items())
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], v) for i, s in ob.items() for k, v in s.items())
    assert ga == gb and torch.equal(ra, rb)
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(gra, grb))


@pytest.mark.parametrize("finder, event, fault", list(range_cases()))
def test_range_test_fault(finder, event, fault):
    learn = build()
    fit(learn, [])  # momentum buffers and a fit history exist: they must come back
    previous, before = learn.sched, state_of(learn)
    probe = GradProbe()
    run = (lambda cbs: learn.lr_find(callbacks=cbs)) if finder == "lr_find" else (
        lambda cbs: learn.lr_find2(num_it=10, callbacks=cbs))
    fault_cb = Fault(event, fault, 0 if event in ("on_train_begin", "on_epoch_begin") else 3)
    if fault is Boom:
        with pytest.raises(Boom) as info:
            run([probe, fault_cb])
        assert learn.sched is previous
        assert_aligned(info.value.range_test)
    else:
        run([probe, fault_cb])
        assert isinstance(learn.sched, RangeTestRecorder)
        assert_aligned(learn.sched)
        assert learn.sched.diverged is False
        if finder == "lr_find2":
            assert len(learn.sched.val_losses) == len(learn.sched.raw_losses)
    assert fault_cb.fired_at is not None
    assert_same_state(before, state_of(learn))
    assert not probe.stale, probe.stale
    fit(learn, [probe])  # and the next fit starts clean
    assert not probe.stale, probe.stale


def test_a_cancelled_first_step_records_nothing_and_raises_no_divergence():
    """Issue 12 item 8: a cancel from on_batch_begin at step 0 recorded NaN, then reported a DivergenceError."""
    learn = build()
    fit(learn, [Fault("on_batch_begin", CancelBatchException, 0), Fault("on_loss", CancelBatchException, 5)])
    rec = learn.sched
    assert rec.iterations == [i for i in range(2 * NB) if i not in (0, 5)]
    assert_aligned(rec)
    assert len(set(rec.raw_losses)) == len(rec.raw_losses)  # no step repeats the previous one's loss


class StopSweepAt(Callback):
    order = 20

    def __init__(self, k: int) -> None:
        self.k = k

    def on_batch_end(self) -> None:
        if self.learn.iteration == self.k:
            raise CancelFitException()


def test_stopping_lr_find_early_from_a_callback_keeps_its_steps_and_restores():
    """Issue 12 item 8: this failed with "lrs and losses must have the same length; got 3 and 4"."""
    learn = build()
    before = state_of(learn)
    learn.lr_find(callbacks=[StopSweepAt(3)])
    assert learn.sched.iterations == [0, 1, 2, 3] and len(learn.sched.raw_losses) == 4
    assert_same_state(before, state_of(learn))


class Exploding(Callback):
    """Leaves gradients behind: an error after backward."""

    def __init__(self, event: str) -> None:
        setattr(self, event, self._boom)

    def _boom(self) -> None:
        raise Boom("after backward")


@pytest.mark.parametrize("event", ["on_backward_end", "on_step_end"])
def test_gradients_of_a_failed_or_cancelled_step_never_reach_the_next(event):
    """Issue 12 item 5: a CancelBatchException here skipped zero_grad; the next step added the skipped gradients."""
    torch.manual_seed(0)
    a, b = build(), build()
    probe = GradProbe()
    fit(a, [probe, Fault(event, CancelBatchException, 2)])
    assert not probe.stale
    with pytest.raises(Boom):
        b.fit(0.1, 1, callbacks=[Exploding(event)])
    assert any(p.grad is not None for p in b.model.parameters()) or event == "on_step_end"
    b.fit(0.1, 1, callbacks=[probe])
    assert not probe.stale, probe.stale  # the failed fit's gradients did not add to the first step


def test_a_fit_started_from_a_callback_is_refused_and_the_outer_fit_runs_whole():
    """Issue 12: a nested learn.fit in a callback silently cut the outer fit to one epoch."""
    errors = []

    class Nested(Callback):
        def on_epoch_end(self) -> None:
            try:
                self.learn.fit(0.1, 1)
            except RuntimeError as err:
                errors.append(str(err))

    learn = build()
    learn.fit(0.1, 3, callbacks=[Nested()])
    assert learn.epoch == 3 and learn.iteration == 3 * NB and len(learn.sched.val_losses) == 3
    assert len(errors) == 3 and "running fit" in errors[0]


# ---------------------------------------------------------------------- odd loaders and models (issue 12, "Also")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from clrfit import Learner, ModelData  # noqa: E402
from conftest import make_data, make_learner, make_model  # noqa: E402


class LyingBatches:
    """A batch sampler whose len() is ``claimed`` while it yields ``real`` batches of ``size`` (indices cycled)."""

    def __init__(self, n: int, size: int, claimed: int, real: int) -> None:
        self.n, self.size, self.claimed, self.real = n, size, claimed, real

    def __len__(self) -> int:
        return self.claimed

    def __iter__(self):
        for b in range(self.real):
            yield [(b * self.size + i) % self.n for i in range(self.size)]


@pytest.mark.parametrize("real, warned", [(4, "fewer"), (9, "more")])
def test_a_loader_yielding_other_than_its_len_is_warned_and_the_schedule_never_overruns(tmp_path, real, warned):
    """Issue 12: fewer batches left a 1cycle un-annealed with no warning and no epoch-end checkpoint; more crashed."""
    base = make_data()
    data = ModelData(DataLoader(base.trn_dl.dataset, batch_sampler=LyingBatches(96, 16, 6, real)), base.val_dl)
    learn = Learner(make_model(), data, progress=False, table=False)
    with pytest.warns(RuntimeWarning, match=f"yielded {warned} batches than its len"):
        learn.fit_one_cycle(2, 0.1, checkpoint=tmp_path / "c.ckpt")
    steps = min(real, 6)
    assert learn.sched.iterations == list(range(2 * steps))
    assert read_checkpoint(tmp_path / "c.ckpt")["counters"]["epoch"] == 2  # every epoch end was written
    assert len(learn.sched.val_losses) == 2


from clrfit.checkpoint import read_checkpoint  # noqa: E402


def test_an_empty_validation_stream_is_a_clear_error_not_a_zero_division():
    """Issue 12: ZeroDivisionError after a full epoch."""
    base = make_data()
    promising = DataLoader(base.val_dl.dataset, batch_sampler=LyingBatches(40, 8, 2, 0))  # len 2, yields nothing
    learn = Learner(make_model(), ModelData(base.trn_dl, promising), progress=False, table=False)
    with pytest.raises(ValueError, match="validation loader yielded no samples"):
        learn.fit(0.1, 1)
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="val_dl"):  # known from len(): refused before any learner exists
        ModelData(base.trn_dl, empty)


class TwoHeads(nn.Module):
    """Returns (logits, auxiliary logits), as Inception-style models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.aux = make_model(), nn.Linear(6, 2)

    def forward(self, x):
        return self.body(x), self.aux(x)


def two_head_loss(pred, y):
    return nn.functional.cross_entropy(pred[0], y) + 0.3 * nn.functional.cross_entropy(pred[1], y)


def accuracy_metric(pred, y):
    return (pred[0].argmax(-1) == y).float().mean()  # metrics receive what the loss receives: the tuple


def test_a_tuple_output_model_with_a_metric_validates():
    """Issue 12: a tuple-output model with a metric crashed at validation (``pred.float()`` on a tuple)."""
    learn = make_learner(model=TwoHeads(), crit=two_head_loss, metrics=[accuracy_metric])
    learn.fit(0.1, 1)
    x, y = learn.data.val_dl.dataset.tensors
    with torch.no_grad():
        learn.model.eval()
        expected = accuracy_metric(learn.model(x), y).item()
    assert learn.sched.rec_metrics[0][0] == pytest.approx(expected, abs=1e-12)


def test_multi_target_batches_are_weighted_by_samples_not_targets():
    """Issue 12: with (y1, y2) targets each batch counted as 2 samples; the last, smaller batch was over-weighted."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 2, (40,), generator=g)
    val = DataLoader(TensorDataset(x, y, 1 - y), batch_size=16, collate_fn=lambda b: (
        torch.stack([s[0] for s in b]), (torch.stack([s[1] for s in b]), torch.stack([s[2] for s in b]))))
    data = ModelData(make_data().trn_dl, val)

    def crit(pred, targets):
        return nn.functional.cross_entropy(pred, targets[0], reduction="mean")

    learn = Learner(make_model(), data, crit=crit, progress=False, table=False)
    loss, _ = learn.validate()
    with torch.no_grad():
        learn.model.eval()
        expected = nn.functional.cross_entropy(learn.model(x), y).item()  # every sample once: 16 + 16 + 8
    assert loss == pytest.approx(expected, rel=1e-6)
