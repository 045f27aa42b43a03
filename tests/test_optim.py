"""clrfit.optim: clearing gradients the way ``zero_grad(set_to_none=True)`` does, without its cost where that is safe."""
from __future__ import annotations

import copy

import torch
from torch.profiler import ProfilerActivity, profile

from clrfit import Callback
from clrfit.optim import clear_grads
from conftest import make_learner, make_model


def _with_grads(opt_class=torch.optim.SGD):
    model = make_model()
    opt = opt_class([{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}], lr=0.1)
    model(torch.randn(4, 6)).sum().backward()
    return model, opt


def test_clear_grads_sets_every_group_s_gradients_to_none_and_leaves_weights():
    model, opt = _with_grads()
    weights = copy.deepcopy(model.state_dict())
    assert all(p.grad is not None for p in model.parameters())
    clear_grads(opt)
    assert [p.grad for p in model.parameters()] == [None] * 4
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    clear_grads(opt)  # nothing left to clear: still fine
    assert [p.grad for p in model.parameters()] == [None] * 4


def test_an_optimizer_with_its_own_zero_grad_keeps_it():
    calls = []

    class OwnZeroGrad(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none=set_to_none)

    model, opt = _with_grads(OwnZeroGrad)
    clear_grads(opt)
    assert calls == [True]
    assert all(p.grad is None for p in model.parameters())


def test_under_the_profiler_the_trace_shows_torch_s_zero_grad_range():
    _, opt = _with_grads()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        clear_grads(opt)
    assert "Optimizer.zero_grad#SGD.zero_grad" in {e.name for e in prof.events()}


def test_without_a_profiler_no_profiler_range_is_entered(monkeypatch):
    entered = []

    class Counting(torch.autograd.profiler.record_function):
        def __enter__(self):
            entered.append(self.name)
            return super().__enter__()

    monkeypatch.setattr(torch.autograd.profiler, "record_function", Counting)
    _, opt = _with_grads()
    clear_grads(opt)
    assert entered == [] and all(p.grad is None for group in opt.param_groups for p in group["params"])
    opt.zero_grad()  # the probe sees torch's own range
    assert entered == ["Optimizer.zero_grad#SGD.zero_grad"]


def test_every_step_of_a_fit_starts_from_no_gradient_and_the_fit_ends_with_none():
    seen = []

    class Grads(Callback):
        def on_loss(self) -> None:  # before this step's backward
            seen.append([p.grad is None for p in self.learn.model.parameters()])

        def on_step_end(self) -> None:
            seen.append([p.grad is not None for p in self.learn.model.parameters()])

    learn = make_learner()
    for p in learn.model.parameters():  # gradients left before the fit must not add to its first step
        p.grad = torch.ones_like(p)
    learn.fit(0.1, 1, callbacks=[Grads()])
    assert len(seen) == 2 * learn.steps_per_epoch and all(all(row) for row in seen)
    assert all(p.grad is None for p in learn.model.parameters())
