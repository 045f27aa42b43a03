"""``compile=``: the model runs through torch.compile; schedules and recording are unchanged."""
from __future__ import annotations

import pytest
import torch

from conftest import make_data, make_learner, make_model
from test_accumulate import fit_clr_beta, one_cycle_expected

# "aot_eager" traces forward and backward like inductor but skips code generation:
# seconds instead of tens of seconds on a 2-core CPU.
FAST_BACKEND = "aot_eager"


def pair():
    data = dict(shuffle=False)
    return (make_learner(data=make_data(**data), model=make_model()),
            make_learner(data=make_data(**data), model=make_model()))


def check_same_training(compiled, plain, rec_compiled, rec_plain):
    n = 2 * plain.nb
    assert rec_compiled.iterations == rec_plain.iterations == list(range(n))
    assert rec_compiled.lrs == rec_plain.lrs == pytest.approx(one_cycle_expected(n)[0], rel=1e-12)
    assert rec_compiled.momentums == rec_plain.momentums
    assert rec_compiled.raw_losses == pytest.approx(rec_plain.raw_losses, rel=1e-5, abs=1e-6)
    assert rec_compiled.val_losses == pytest.approx(rec_plain.val_losses, rel=1e-5)
    for a, b in zip(compiled.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_backend_trains_like_the_plain_model():
    compiled, plain = pair()
    rec_compiled = fit_clr_beta(compiled, compile=FAST_BACKEND)
    rec_plain = fit_clr_beta(plain)
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.train_model._orig_mod is compiled.model
    check_same_training(compiled, plain, rec_compiled, rec_plain)


def test_compile_with_accumulation():
    compiled, plain = pair()
    check_same_training(compiled, plain, fit_clr_beta(compiled, compile=FAST_BACKEND, accumulate=2),
                        fit_clr_beta(plain, accumulate=2))


def test_a_later_fit_without_compile_uses_the_plain_model():
    learn = make_learner()
    learn.fit(0.1, 1, compile=FAST_BACKEND)
    first = learn.train_model
    learn.fit(0.1, 1)
    assert learn.train_model is learn.model and learn.eval_model is learn.model
    learn.fit(0.1, 1, compile=FAST_BACKEND)
    assert learn.train_model is first  # compiled once per backend, reused


@pytest.mark.slow
def test_compile_true_uses_inductor():
    compiled, plain = pair()
    rec_compiled = fit_clr_beta(compiled, compile=True)
    rec_plain = fit_clr_beta(plain)
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    check_same_training(compiled, plain, rec_compiled, rec_plain)


def test_compile_unavailable_is_a_clear_error_before_training(monkeypatch):
    learn = make_learner()
    before = [p.clone() for p in learn.model.parameters()]
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(ValueError, match=r"compile=True needs torch.compile"):
        learn.fit(0.1, 1, compile=True)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert learn.sched.iterations == []


def test_compile_failing_at_wrap_time_is_a_clear_error(monkeypatch):
    def unsupported(model, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.raises(ValueError, match=r"compile='inductor': torch.compile is unavailable here: Dynamo"):
        make_learner().fit(0.1, 1, compile=True)


def test_bad_compile_values():
    learn = make_learner()
    with pytest.raises(ValueError, match=r"compile='no_such_backend': unknown torch.compile backend"):
        learn.fit(0.1, 1, compile="no_such_backend")
    with pytest.raises(TypeError, match=r"compile must be True, False or a torch.compile backend name.*; got 1"):
        learn.fit(0.1, 1, compile=1)
