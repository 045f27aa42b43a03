"""LR range tests: the sweep, smoothing and divergence rules of docs/lr_finder.md, per-step validation,
plots, bad input, and exact restoration of the learner whatever ends the test."""
from __future__ import annotations

import copy
import math
import os
import random
import signal
import threading

import numpy as np
import pytest
import torch
from torch import nn

from clrfit import Callback, Learner, ModelData, accuracy
from clrfit.lr_finder import RangeTestRecorder, smooth_curve
from clrfit.serialization import get_rng_states
from clrfit.suggest import Suggestions

N_TRAIN, BS, N_VAL, VAL_BS = 96, 16, 40, 16  # 6 training batches, 3 validation batches (16, 16, 8)


def make_data(seed: int = 0, **kwargs) -> ModelData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return ModelData.from_tensors(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], bs=BS, val_bs=VAL_BS, **kwargs)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def make_learner(trained: bool = True, **kwargs) -> Learner:
    """BN model with SGD momentum state and a fit history (when ``trained``)."""
    model = make_model()
    kwargs.setdefault("metrics", [accuracy])
    learn = Learner(model, kwargs.pop("data", None) or make_data(), progress=False, table=False, **kwargs)
    if trained:
        learn.fit(0.05, 1)
    return learn


def two_group_learner() -> Learner:
    model = make_model()
    return Learner(model, make_data(), layer_groups=[model[:2], model[2:]], progress=False, table=False)


class LrSpy(Callback):
    """The lr of every group at the moment of the optimizer step."""

    def __init__(self) -> None:
        self.used: list[list[float]] = []

    def on_backward_end(self) -> None:
        self.used.append([g["lr"] for g in self.learn.opt.param_groups])


# --------------------------------------------------------------------------- state capture


def capture(learn: Learner) -> dict:
    """Deep copies of everything a range test must leave unchanged."""
    return {
        "params": {n: p.detach().clone() for n, p in learn.model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in learn.model.named_buffers()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in learn.model.named_parameters()},
        "modes": [m.training for m in learn.model.modules()],
        "opt": copy.deepcopy(learn.opt.state_dict()),
        "rng": copy.deepcopy(get_rng_states()),
        "numpy_rng": copy.deepcopy(np.random.get_state()),
        "python_rng": random.getstate(),
        "precision": copy.deepcopy(learn.precision.state_dict()),
        "sched": learn.sched,
        "sched_state": copy.deepcopy(learn.sched.state_dict()),
        "recorder": learn.recorder,
        "counters": (learn.epoch, learn.iteration, learn.batch_index, learn.nb, learn.n_epochs, learn.table,
                     learn.interrupted, learn._interrupt_requested),
        "attrs": set(vars(learn)),
    }


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_restored(learn: Learner, before: dict, sched_is_previous: bool = True) -> None:
    after = capture(learn)
    for key in ("params", "buffers", "grads", "modes", "opt", "rng", "numpy_rng", "python_rng", "precision",
                "counters", "attrs"):
        assert_same_tensors(before[key], after[key], key)
    assert_same_tensors(before["sched_state"], before["sched"].state_dict(), "previous sched")
    assert learn.recorder is before["recorder"]
    if sched_is_previous:
        assert learn.sched is before["sched"]
    else:
        assert isinstance(learn.sched, RangeTestRecorder)


class ChangeWitness(Callback):
    """Proves the test really changed the weights, BN statistics and momentum buffers mid-run."""

    def __init__(self, before: dict) -> None:
        self.before = before
        self.changed = set()

    def on_step_end(self) -> None:
        learn = self.learn
        for n, p in learn.model.named_parameters():
            if not torch.equal(p, self.before["params"][n]):
                self.changed.add("params")
        for n, b in learn.model.named_buffers():
            if not torch.equal(b, self.before["buffers"][n]):
                self.changed.add(n.split(".")[-1])
        buf = learn.opt.state[next(learn.model.parameters())]["momentum_buffer"]
        first = self.before["opt"]["state"][0]["momentum_buffer"]
        if not torch.equal(buf, first):
            self.changed.add("momentum_buffer")
        if not torch.equal(torch.get_rng_state(), self.before["rng"]["torch"]):
            self.changed.add("rng")


class RaiseAt(Callback):
    def __init__(self, step: int, exc: BaseException) -> None:
        self.step, self.exc = step, exc

    def on_step_end(self) -> None:
        if self.learn.iteration == self.step:
            raise self.exc


class SigintAt(Callback):
    """Sends a real SIGINT to this process, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self) -> None:
        if self.learn.iteration == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class InterruptingModel(nn.Module):
    """Raises KeyboardInterrupt from inside forward on the n-th training call."""

    def __init__(self, inner: nn.Module, at_call: int) -> None:
        super().__init__()
        self.inner, self.at_call, self.calls = inner, at_call, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at_call:
                raise KeyboardInterrupt
        return self.inner(x)


# --------------------------------------------------------------------------- the sweep


def expected_sweep(start_lrs, end_lr, n, linear):
    """docs/lr_finder.md: the last group follows the formula; every group is scaled by the same factor."""
    start = start_lrs[-1]
    rows = []
    for i in range(n):
        last = start + (end_lr - start) * i / (n - 1) if linear else start * (end_lr / start) ** (i / (n - 1))
        rows.append([s * last / start for s in start_lrs])
    return rows


@pytest.mark.parametrize("linear", [False, True])
def test_lr_find_sweeps_one_epoch_per_group(linear):
    learn = two_group_learner()
    spy = LrSpy()
    s = learn.lr_find(start_lr=(1e-4, 1e-3), end_lr=1e-2, linear=linear, callbacks=[spy])
    nb = len(learn.data.trn_dl)
    expected = expected_sweep((1e-4, 1e-3), 1e-2, nb, linear)
    rec = learn.sched
    assert isinstance(rec, RangeTestRecorder) and isinstance(s, Suggestions) and rec.suggestions is s
    assert rec.iterations == list(range(nb))  # exactly one epoch
    for got, used, want in zip(rec.group_lrs, spy.used, expected):
        assert got == pytest.approx(want, rel=1e-12)
        assert used == pytest.approx(want, rel=1e-12)
    assert rec.lrs[-1] == pytest.approx(1e-2, rel=1e-12)
    assert rec.val_losses == [] and not rec.diverged


@pytest.mark.parametrize("linear", [False, True])
def test_lr_find2_runs_num_it_across_epochs(linear):
    learn = make_learner()
    num_it = 15  # 6 batches per epoch: runs into a third epoch and stops mid-epoch
    spy = LrSpy()
    learn.lr_find2(start_lr=1e-4, end_lr=0.1, num_it=num_it, linear=linear, callbacks=[spy])
    rec = learn.sched
    assert rec.iterations == list(range(num_it))
    assert rec.epochs == [6, 12, 15]
    want = expected_sweep((1e-4,), 0.1, num_it, linear)
    assert rec.group_lrs == [pytest.approx(w, rel=1e-12) for w in want]
    assert spy.used == [pytest.approx(w, rel=1e-12) for w in want]
    assert len(rec.val_losses) == num_it and len(rec.rec_metrics) == num_it
    assert rec.metric_names == ["accuracy"]


def test_smoothed_loss_is_debiased_ema_of_raw_losses():
    learn = make_learner()
    learn.lr_find2(end_lr=1.0, num_it=20)
    raw, smooth = learn.sched.raw_losses, learn.sched.losses
    avg = 0.0
    for k, (value, s) in enumerate(zip(raw, smooth), start=1):
        avg = 0.98 * avg + 0.02 * value
        assert s == pytest.approx(avg / (1 - 0.98**k), rel=1e-12)


class ValidationSpy(Callback):
    """Before the recorder (order 50) validates, computes the loss and accuracy on the batch it should use."""

    order = 40

    def __init__(self, x_val, y_val) -> None:
        self.batches = [(x_val[i:i + VAL_BS], y_val[i:i + VAL_BS]) for i in range(0, len(x_val), VAL_BS)]
        self.losses, self.accs = [], []

    @torch.no_grad()
    def on_batch_end(self) -> None:
        learn = self.learn
        xb, yb = self.batches[learn.iteration % len(self.batches)]
        learn.model.eval()
        pred = learn.model(xb)
        learn.model.train()
        self.losses.append(nn.functional.cross_entropy(pred, yb).item())
        self.accs.append((pred.argmax(1) == yb).float().mean().item())


def test_lr_find2_validates_next_batch_after_every_step_cycling_the_loader():
    learn = make_learner()
    x_val, y_val = learn.data.val_ds.tensors
    spy = ValidationSpy(x_val, y_val)
    learn.lr_find2(start_lr=1e-3, end_lr=1.0, num_it=8, callbacks=[spy])  # 8 steps over 3 val batches
    rec = learn.sched
    assert len(rec.val_losses) == 8
    assert rec.val_losses == pytest.approx(spy.losses, rel=1e-5)
    assert [m[0] for m in rec.rec_metrics] == pytest.approx(spy.accs, rel=1e-6)


def first_divergence(raw):
    """Index of the first step the contract stops at (NaN/inf, or smoothed > 4 x best, best counted after step 10)."""
    avg, best = 0.0, math.inf
    for k, value in enumerate(raw, start=1):
        avg = 0.98 * avg + 0.02 * value
        smooth = avg / (1 - 0.98**k)
        if not math.isfinite(value) or not math.isfinite(smooth) or smooth > 4 * best:
            return k - 1
        if k > 10:
            best = min(best, smooth)
    return None


def test_stops_on_divergence_at_the_first_step_the_rule_fires():
    learn = make_learner()
    learn.lr_find2(start_lr=1e-3, end_lr=1e4, num_it=100)
    rec = learn.sched
    assert rec.diverged and len(rec.iterations) < 100
    assert first_divergence(rec.raw_losses) == len(rec.raw_losses) - 1
    assert len(rec.val_losses) == len(rec.iterations) == len(rec.rec_metrics)


def test_lr_find_stops_on_divergence():
    learn = make_learner(data=make_data_big())
    learn.lr_find(start_lr=1e-2, end_lr=1e6)
    rec = learn.sched
    assert rec.diverged and len(rec.iterations) < len(learn.data.trn_dl)
    assert first_divergence(rec.raw_losses) == len(rec.raw_losses) - 1


def make_data_big() -> ModelData:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(640, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return ModelData.from_tensors(x, y, x[:32], y[:32], bs=8)  # 80 batches


def test_stop_dv_false_runs_all_iterations_through_divergence():
    learn = make_learner()
    learn.lr_find2(start_lr=1e-3, end_lr=1e6, num_it=40, stop_dv=False)
    rec = learn.sched
    assert len(rec.iterations) == 40 and not rec.diverged
    assert first_divergence(rec.raw_losses) is not None  # it did diverge, and kept going


# --------------------------------------------------------------------------- restoration


@pytest.mark.parametrize("ending", ["finished", "diverged", "raised", "sigint", "model_interrupt"])
@pytest.mark.parametrize("finder", ["lr_find", "lr_find2"])
def test_restores_everything_bit_for_bit(ending, finder):
    torch.manual_seed(123)
    model = InterruptingModel(make_model(), at_call=10_000)
    learn = Learner(model, make_data(), metrics=[accuracy], progress=False, table=False)
    learn.fit(0.05, 1)
    learn.model.inner[0].weight.grad = torch.full_like(learn.model.inner[0].weight, 0.5)  # a leftover gradient
    learn.model.inner[1].eval()  # odd module modes are restored too
    before = capture(learn)
    witness = ChangeWitness(before)
    callbacks = [witness]
    kwargs = dict(start_lr=1e-3, end_lr=1.0)
    expect = None
    if ending == "diverged":
        # lr_find's 6 steps end before step 12, the earliest 4 x stop: only a NaN/inf loss can end it
        kwargs["end_lr"] = 1e6 if finder == "lr_find2" else 1e30
    elif ending == "raised":
        callbacks.append(RaiseAt(3, RuntimeError("boom")))
        expect = RuntimeError
    elif ending == "sigint":
        callbacks.append(SigintAt(3))
        expect = KeyboardInterrupt
    elif ending == "model_interrupt":
        model.at_call, model.calls = 5, 0
        expect = KeyboardInterrupt
    if finder == "lr_find2":
        kwargs["num_it"] = 30 if ending != "diverged" else 200
    run = getattr(learn, finder)
    if expect is None:
        run(callbacks=callbacks, **kwargs)
        assert learn.sched.diverged == (ending == "diverged")
    else:
        with pytest.raises(expect) as info:
            run(callbacks=callbacks, **kwargs)
        assert isinstance(info.value.range_test, RangeTestRecorder) and info.value.range_test.iterations
    assert {"params", "running_mean", "running_var", "num_batches_tracked", "momentum_buffer", "rng"} <= witness.changed
    assert_restored(learn, before, sched_is_previous=expect is not None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cpu_restores_state_and_scaler(precision):
    learn = make_learner(precision=precision)
    before = capture(learn)
    scales = []

    class ScalerSpy(Callback):
        def on_step_end(self) -> None:
            scales.append(copy.deepcopy(self.learn.precision.state_dict()))

    learn.lr_find2(start_lr=1e-3, end_lr=1e4, num_it=60, callbacks=[ScalerSpy()])
    rec = learn.sched
    assert rec.diverged and 2 <= len(rec.iterations) < 60
    assert all(math.isfinite(v) for v in rec.val_losses[:-1])
    if precision == "fp16":
        assert any(s != before["precision"] for s in scales)  # the scaler really moved during the test
    assert_restored(learn, before, sched_is_previous=False)


def test_adam_state_and_hyper_params_restored():
    learn = make_learner(opt_fn=lambda params, lr: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01))
    learn.fit(0.01, 1, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85))  # leaves betas[0] at 0.95
    before = capture(learn)
    seen = []

    class WdSpy(Callback):
        def on_backward_end(self) -> None:
            seen.append(self.learn.opt.param_groups[0]["weight_decay"])

    learn.lr_find2(end_lr=1.0, num_it=10, wds=0.1, callbacks=[WdSpy()])
    assert seen == [0.1] * 10  # wds applies during the test only
    assert_restored(learn, before, sched_is_previous=False)
    assert learn.opt.param_groups[0]["betas"] == (0.95, 0.99)
    assert learn.opt.param_groups[0]["weight_decay"] == 0.01


def test_loader_generator_and_learner_callback_state_restored():
    gen = torch.Generator().manual_seed(7)

    class Counter(Callback):
        def __init__(self) -> None:
            self.steps = 0

        def on_step_end(self) -> None:
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    counter = Counter()
    learn = make_learner(data=make_data(generator=gen), callbacks=[counter])
    steps, gen_state = counter.steps, gen.get_state()
    learn.lr_find2(end_lr=1.0, num_it=10)
    assert counter.steps == steps and torch.equal(gen.get_state(), gen_state)


def test_finder_changes_nothing_but_sched_and_a_following_fit_is_unaffected():
    a, b = make_learner(), make_learner()
    torch.manual_seed(5)
    a.lr_find2(num_it=20)
    a.fit(0.05, 1)
    torch.manual_seed(5)
    b.fit(0.05, 1)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    assert a.sched.raw_losses == b.sched.raw_losses


def test_two_finders_at_once_in_one_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learners = [make_learner(path=tmp_path) for _ in range(2)]
    befores = [{n: p.clone() for n, p in l.model.state_dict().items()} for l in learners]
    errors = []

    def run(learn):
        try:
            learn.lr_find2(end_lr=1.0, num_it=40)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(l,)) for l in learners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert list(tmp_path.iterdir()) == []  # nothing written, so nothing to collide on
    for learn, before in zip(learners, befores):
        assert len(learn.sched.iterations) == 40
        for n, p in learn.model.state_dict().items():
            assert torch.equal(p, before[n]), n


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda l: l.lr_find(start_lr=0), "start_lr"),
        (lambda l: l.lr_find(start_lr=-1e-3), "start_lr"),
        (lambda l: l.lr_find2(start_lr=1e-2, end_lr=1e-2), "end_lr"),
        (lambda l: l.lr_find(start_lr=1.0, end_lr=0.1), "end_lr"),
        (lambda l: l.lr_find2(num_it=1), "num_it"),
        (lambda l: l.lr_find2(start_lr=(1e-5, 1e-4, 1e-3)), "start_lr"),
        (lambda l: l.lr_find2(wds=-0.1), "wds"),
        (lambda l: l.lr_find2(end_lr=math.nan), "end_lr"),
    ],
)
def test_bad_input_raises_naming_the_argument_and_changes_nothing(call, name):
    learn = make_learner()
    before = capture(learn)
    with pytest.raises(ValueError, match=name):
        call(learn)
    assert_restored(learn, before)


def test_lr_find2_without_validation_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    learn = Learner(make_model(), ModelData.from_tensors(x, (x[:, 0] > 0).long(), bs=16), progress=False, table=False)
    before = capture(learn)
    with pytest.raises(ValueError, match="val_dl"):
        learn.lr_find2()
    assert_restored(learn, before)
    learn.lr_find()  # lr_find needs no validation data
    assert len(learn.sched.iterations) == 4


def test_lr_find2_with_empty_validation_loader():
    learn = make_learner()
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 6), torch.zeros(0).long()))
    learn.data.val_dl = empty
    before = capture(learn)
    with pytest.raises(ValueError, match="val_dl"):
        learn.lr_find2()
    assert_restored(learn, before)


def test_lr_find_needs_two_batches():
    learn = make_learner(data=ModelData.from_tensors(torch.randn(8, 6), torch.zeros(8).long(), bs=8))
    before = capture(learn)
    with pytest.raises(ValueError, match="lr_find2"):
        learn.lr_find()
    assert_restored(learn, before)


def test_one_batch_per_epoch_lr_find2_crosses_epochs():
    x, y = torch.randn(8, 6), (torch.arange(8) % 2)
    learn = Learner(make_model(), ModelData.from_tensors(x, y, x, y, bs=8), progress=False, table=False)
    learn.lr_find2(end_lr=0.1, num_it=5)
    assert learn.sched.iterations == list(range(5)) and learn.sched.epochs == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- suggestions and plots


def test_suggestions_returned_match_the_rules_on_the_recorded_curve():
    from clrfit.suggest import suggest

    learn = make_learner(trained=False)
    s = learn.lr_find2(num_it=60)
    again = suggest(learn.sched.lrs, learn.sched.losses)
    assert s.as_dict() == pytest.approx(again.as_dict(), nan_ok=True)
    assert "LR suggestions" in str(s) and "clr_bounds" in str(s)


def line_data(ax):
    return [(list(l.get_xdata()), list(l.get_ydata())) for l in ax.get_lines()]


def test_lr_find_plot_one_log_panel_with_suggestions():
    learn = make_learner(data=make_data_big(), trained=False)
    learn.lr_find()
    rec = learn.sched
    fig = rec.plot(n_skip=10, n_skip_end=5)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    xs, ys = line_data(ax)[0]
    n = len(rec.lrs)
    assert xs == rec.lrs[10:n - 5] and ys == rec.losses[10:n - 5]
    marked = {round(l.get_xdata()[0], 12) for l in ax.get_lines()[1:]}
    s = rec.suggestions
    expected = {round(v, 12) for v in (s.minimum, s.steep, s.valley) if v == v}
    assert marked == expected
    raw = rec.plot(n_skip=0, n_skip_end=0, smoothed=False, suggestions=False)
    assert line_data(raw.axes[0]) == [(rec.lrs, rec.raw_losses)]


def test_lr_find2_plot_panels_and_smoothing():
    learn = make_learner()
    learn.lr_find2(start_lr=1e-3, end_lr=1.0, num_it=30, linear=True)
    rec = learn.sched
    fig = rec.plot(n_skip=2, n_skip_end=3, smoothed=True)
    assert len(fig.axes) == 3  # training loss, validation loss, accuracy
    assert [ax.get_xscale() for ax in fig.axes] == ["linear"] * 3
    accs = [m[0] for m in rec.rec_metrics]
    wanted = [rec.losses, smooth_curve(rec.val_losses), smooth_curve(accs)]
    for ax, values in zip(fig.axes, wanted):
        xs, ys = line_data(ax)[0]
        assert xs == rec.lrs[2:27] and ys == pytest.approx(values[2:27], rel=1e-12)
    # the smoothing is the contract's debiased EMA
    avg = 0.0
    for k, (v, s) in enumerate(zip(rec.val_losses, smooth_curve(rec.val_losses)), start=1):
        avg = 0.98 * avg + 0.02 * v
        assert s == pytest.approx(avg / (1 - 0.98**k), rel=1e-12)
    raw = rec.plot(n_skip=0, n_skip_end=0, smoothed=False, suggestions=False)
    assert [line_data(ax)[0][1] for ax in raw.axes] == [rec.raw_losses, rec.val_losses, accs]
    assert rec.plot_loss(n_skip=0, n_skip_end=0).axes[0].get_lines()[0].get_ydata().tolist() == rec.losses


def test_plot_rejects_skips_that_leave_no_points():
    learn = make_learner()
    learn.lr_find2(end_lr=1.0, num_it=10)
    with pytest.raises(ValueError, match="n_skip"):
        learn.sched.plot(n_skip=6, n_skip_end=3)


@pytest.mark.slow
def test_mnist1d_lr_find2_suggests_bounds_that_train(tmp_path, monkeypatch):
    """End to end on MNIST-1D: lr_find2, its plot, and a 1cycle fit with the suggested CLR bounds."""
    from clrfit.datasets import mnist1d
    from clrfit.models import mnist1d_cnn

    monkeypatch.setenv("CLRFIT_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    learn = Learner(mnist1d_cnn(), mnist1d(), metrics=[accuracy], progress=False, table=False)
    before = capture(learn)
    s = learn.lr_find2(num_it=100)
    assert_restored(learn, before, sched_is_previous=False)
    assert s.notes == {} and all(math.isfinite(v) for v in s.as_dict().values())
    b = s.clr_bounds
    assert 1e-5 < b.base_lr < b.max_lr < 10 and b.div > 1
    fig = learn.sched.plot()
    assert len(fig.axes) == 3
    learn.fit(b.max_lr, 1, cycle_len=2, use_clr_beta=(b.div, 10, 0.95, 0.85))
    assert learn.recorder.rec_metrics[-1][0] > 0.3  # chance is 0.1


def test_suggestions_are_printed_once_with_the_table_switch(capsys):
    from conftest import make_learner as _make

    learn = _make(table=True)
    s = learn.lr_find2(num_it=20, stop_dv=False)
    out = capsys.readouterr().out
    assert out.count("clr_bounds") == 1 and str(s).strip() in out
    learn.table = False
    learn.lr_find2(num_it=20, stop_dv=False)
    assert "clr_bounds" not in capsys.readouterr().out


def test_range_test_plot_clips_a_divergence_spike_on_loss_panels():
    from clrfit.plots import plot_range_test

    lrs = [10 ** (-4 + 5 * i / 59) for i in range(60)]
    losses = [2.0 - i / 60 for i in range(50)] + [1.2 * 10 ** k for k in range(10)]
    fig = plot_range_test(lrs, [("training loss", losses), ("accuracy", losses)])
    loss_ax, other_ax = fig.axes
    median = sorted(losses)[30]
    assert loss_ax.get_ylim()[1] == pytest.approx(max(losses[0], 2 * median))
    assert other_ax.get_ylim()[1] >= max(losses)  # only loss panels are clipped
    # a curve without a spike keeps matplotlib's own limits
    calm = plot_range_test(lrs, [("training loss", [2.0 - i / 60 for i in range(60)])])
    assert calm.axes[0].get_ylim()[1] >= 2.0


# --------------------------------------------------------------------------- lr_find under the fit's conditions


def small_learner(bs: int, seed: int = 0, **kwargs) -> Learner:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(192, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))  # no BatchNorm: batch size free
    data = ModelData.from_tensors(x[:160], y[:160], x[160:], y[160:], bs=bs, val_bs=16)
    return Learner(model, data, progress=False, table=False, **kwargs)


@pytest.mark.parametrize("finder", ["lr_find", "lr_find2"])
def test_accumulate_k_on_batch_b_equals_batch_k_times_b(finder):
    kwargs = {"end_lr": 1.0}
    if finder == "lr_find2":
        kwargs["num_it"] = 12  # across epochs: 5 steps per epoch
    torch.manual_seed(3)
    accumulated = small_learner(8)
    getattr(accumulated, finder)(accumulate=4, **kwargs)
    torch.manual_seed(3)
    big = small_learner(32)
    getattr(big, finder)(**kwargs)
    a, b = accumulated.sched, big.sched
    assert len(a.raw_losses) == len(b.raw_losses) == (12 if finder == "lr_find2" else 5)
    assert a.lrs == pytest.approx(b.lrs, rel=1e-12)
    assert a.raw_losses == pytest.approx(b.raw_losses, rel=1e-4, abs=1e-6)
    if finder == "lr_find2":
        assert a.val_losses == pytest.approx(b.val_losses, rel=1e-4, abs=1e-6)
    # one sweep step is 4 micro-batches: 20 batches of 8 give 5 steps, not 20
    assert accumulated.sched.num_it == (12 if finder == "lr_find2" else 5)


def test_range_test_step_options_are_checked_before_anything_runs():
    learn = small_learner(8)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="accumulate must be"):
        learn.lr_find2(num_it=10, accumulate=0)
    with pytest.raises(ValueError, match="accumulate"):
        learn.lr_find(accumulate=20)  # 20 batches of 8 make 1 step: lr_find needs 2
    with pytest.raises(TypeError, match="compile must be True, False or a torch.compile backend"):
        learn.lr_find2(num_it=10, compile=3)
    with pytest.raises(ValueError, match="n_sweeps must be"):
        learn.lr_find2(num_it=10, n_sweeps=0)
    assert all(torch.equal(p, q) for p, q in zip(before, learn.model.parameters()))


def test_n_sweeps_runs_restored_sweeps_in_different_data_orders():
    torch.manual_seed(0)
    learn = small_learner(16)
    before = [p.detach().clone() for p in learn.model.parameters()]
    rng = torch.get_rng_state()
    s = learn.lr_find2(num_it=40, n_sweeps=3)
    sweeps = learn.sched.sweeps
    assert len(sweeps) == 3 and learn.sched is sweeps[0] and s is learn.sched.suggestions and s.n_sweeps == 3
    assert sweeps[0].raw_losses != sweeps[1].raw_losses != sweeps[2].raw_losses  # other data orders
    assert all(torch.equal(p, q) for p, q in zip(before, learn.model.parameters()))
    assert torch.equal(torch.get_rng_state(), rng)
    from clrfit.suggest import combine_sweeps

    again = combine_sweeps([r.suggestions for r in sweeps])
    assert s.as_dict() == pytest.approx(again.as_dict(), nan_ok=True)
    # the first sweep is the one a single lr_find2 gives
    torch.manual_seed(0)
    one = small_learner(16)
    one.lr_find2(num_it=40)
    assert one.sched.raw_losses == pytest.approx(sweeps[0].raw_losses, rel=1e-6)




@pytest.mark.slow  # torch.compile's first call takes seconds even with the eager backend
def test_compile_option_runs_the_same_sweep():
    torch.manual_seed(3)
    plain = small_learner(16)
    plain.lr_find2(num_it=8, end_lr=1.0)
    torch.manual_seed(3)
    compiled = small_learner(16)
    compiled.lr_find2(num_it=8, end_lr=1.0, compile="eager")  # torch.compile's cheapest backend
    assert compiled.sched.raw_losses == pytest.approx(plain.sched.raw_losses, rel=1e-5)
    assert compiled.sched.val_losses == pytest.approx(plain.sched.val_losses, rel=1e-5)
