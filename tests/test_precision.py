"""Mixed precision: fp16 (autocast + GradScaler) and bf16 (autocast); a skipped step still counts once."""
from __future__ import annotations

import pytest
import torch

from clrfit import Callback
from clrfit.precision import Precision, resolve_precision

from conftest import make_data, make_learner
from test_accumulate import fit_clr_beta, one_cycle_expected


class DtypeProbe(Callback):
    """Keeps the dtype of the predictions and of the parameters seen during training."""

    def on_loss(self) -> None:
        self.pred_dtype = self.learn.pred.dtype
        self.param_dtypes = {p.dtype for p in self.learn.model.parameters()}


@pytest.mark.parametrize("kwargs, name, dtype", [
    (dict(fp16=True), "fp16", torch.float16),
    (dict(precision="fp16"), "fp16", torch.float16),
    (dict(precision="bf16"), "bf16", torch.bfloat16),
    (dict(precision="bfloat16"), "bf16", torch.bfloat16),
    (dict(), "fp32", torch.float32),
])
def test_forward_runs_in_the_requested_precision(kwargs, name, dtype):
    learn = make_learner(**kwargs)
    probe = DtypeProbe()
    before = [p.clone() for p in learn.model.parameters()]
    rec = learn.fit(0.1, 1, callbacks=[probe])
    assert learn.precision.name == name
    assert probe.pred_dtype == dtype
    assert probe.param_dtypes == {torch.float32}  # master weights stay fp32
    assert (learn.precision.scaler is not None) == (name == "fp16")
    assert all(torch.isfinite(torch.tensor(rec.raw_losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_schedule_is_unchanged_by_precision(precision):
    lrs = {}
    for p in (precision, "fp32"):
        learn = make_learner(precision=p)
        lrs[p] = fit_clr_beta(learn).lrs
    expected, _ = one_cycle_expected(len(lrs["fp32"]))
    assert lrs[precision] == lrs["fp32"] == pytest.approx(expected, rel=1e-12)


class ForceInfGrad(Callback):
    """Makes one gradient inf at iteration ``at``; records weights and optimizer state around that step."""

    order = 20

    def __init__(self, at: int) -> None:
        self.at = at
        self.changed: list[bool] = []
        self.begin_iterations: list[int] = []

    def on_batch_begin(self) -> None:
        self.begin_iterations.append(self.learn.iteration)

    def on_backward_end(self) -> None:
        self.before = [p.detach().clone() for p in self.learn.model.parameters()]
        self.opt_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in self.learn.opt.state.items()}
        if self.learn.iteration == self.at:
            next(self.learn.model.parameters()).grad.view(-1)[0] = float("inf")
            self.scale_before = self.learn.precision.loss_scale

    def on_step_end(self) -> None:
        after = list(self.learn.model.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, after)))
        if self.learn.iteration == self.at:
            self.scale_after = self.learn.precision.loss_scale
            state_after = {id(p): s for p, s in self.learn.opt.state.items()}
            self.opt_state_unchanged = all(
                torch.equal(v, state_after[key][k]) for key, s in self.opt_before.items() for k, v in s.items())


def test_a_step_the_scaler_skips_still_advances_the_schedule_once():
    learn = make_learner(fp16=True)
    at = 4
    probe = ForceInfGrad(at)
    rec = fit_clr_beta(learn, callbacks=[probe])
    n = 2 * learn.nb
    expected_lrs, expected_moms = one_cycle_expected(n)
    assert rec.lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert rec.momentums == pytest.approx(expected_moms, rel=1e-12)
    assert probe.begin_iterations == rec.iterations == list(range(n))
    assert learn.iteration == n
    # The overflowing step changed nothing and halved the scale; every other step updated the weights.
    assert probe.changed == [t != at for t in range(n)]
    assert probe.opt_state_unchanged
    assert probe.scale_after == probe.scale_before / 2


def test_precision_api_skip_without_a_learner():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    with prec.autocast():
        loss = model(torch.randn(4, 3)).float().pow(2).mean()
    prec.backward(loss)
    model.weight.grad[0, 0] = float("nan")
    before = model.weight.detach().clone()
    scale = prec.loss_scale
    prec.step(opt)
    assert torch.equal(model.weight, before)
    assert prec.loss_scale == scale / 2
    state = prec.state_dict()
    fresh = Precision("fp16", torch.device("cpu"))
    fresh.load_state_dict(state)
    assert fresh.loss_scale == scale / 2


def test_unscale_restores_true_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)
    model(x).pow(2).mean().backward()
    reference = model.weight.grad.clone()
    model.weight.grad = None
    prec = Precision("fp16", torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec.backward(model(x).pow(2).mean())
    assert torch.allclose(model.weight.grad, reference * prec.loss_scale)
    prec.unscale(opt)
    torch.testing.assert_close(model.weight.grad, reference)


def test_fp16_with_bf16_is_a_clear_error():
    with pytest.raises(ValueError, match=r"fp16=True conflicts with precision='bf16'"):
        make_learner(fp16=True, precision="bf16")
    with pytest.raises(ValueError, match=r"precision must be one of 'fp32', 'fp16', 'bf16'.*got 'fp8'"):
        make_learner(precision="fp8")
    with pytest.raises(TypeError, match=r"fp16 must be True or False; got 1"):
        make_learner(fp16=1)
    assert resolve_precision(True, "fp16") == "fp16"
    assert resolve_precision(False, None) == "fp32"


def test_precision_works_with_accumulation():
    # fp16 + accumulate: one scaler step per optimizer step, same schedule as without accumulation.
    learn = make_learner(fp16=True, data=make_data(bs=8, shuffle=False))
    rec = fit_clr_beta(learn, accumulate=2)
    assert learn.nb == 6
    assert rec.lrs == pytest.approx(one_cycle_expected(12)[0], rel=1e-12)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("finder", ["lr_find", "lr_find2"])
def test_lr_finders_under_reduced_precision(precision, finder):
    learn = make_learner(precision=precision, data=make_data(bs=4))
    weights = [p.detach().clone() for p in learn.model.parameters()]
    scale = learn.precision.loss_scale
    probe, skip = DtypeProbe(), ForceInfGrad(at=3 if precision == "fp16" else -1)  # bf16 has no scaler to skip
    start, end = 1e-4, 1.0
    if finder == "lr_find":
        learn.lr_find(start_lr=start, end_lr=end, callbacks=[probe, skip])
        n = learn._steps_per_epoch()
    else:
        n = 20
        learn.lr_find2(start_lr=start, end_lr=end, num_it=n, callbacks=[probe, skip])
    rec = learn.sched
    assert probe.pred_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    # One sweep position per optimizer step, even for the step the fp16 scaler skipped.
    assert rec.iterations == list(range(n)) and not rec.diverged
    assert rec.lrs == pytest.approx([start * (end / start) ** (i / (n - 1)) for i in range(n)], rel=1e-12)
    if precision == "fp16":
        assert skip.changed == [t != 3 for t in range(n)]
        assert skip.scale_after == skip.scale_before / 2
    # The finder leaves weights and the loss scale as they were.
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))
    assert learn.precision.loss_scale == scale
