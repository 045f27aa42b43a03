"""clrfit.range_test: the range test for any model and optimizer, restored bit for bit however it ends."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clrfit import Learner, ModelData, model_loss, range_test
from clrfit.lr_finder import RangeTestRecorder


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()
    trn = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    val = DataLoader(TensorDataset(x[96:], y[96:]), batch_size=8)
    return trn, val


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def two_groups(m: nn.Module, opt_cls=torch.optim.SGD, **kwargs) -> torch.optim.Optimizer:
    return opt_cls([{"params": m[0].parameters()}, {"params": list(m[1].parameters()) + list(m[3].parameters())}],
                   lr=0.01, **kwargs)


def everything(m: nn.Module, opt: torch.optim.Optimizer, trn: DataLoader) -> dict:
    """What a range test could change: tensors, grads, modes, optimizer state and groups, RNGs, loader generator."""
    return {
        "state": {k: v.clone() for k, v in m.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in m.parameters()],
        "modes": [mod.training for mod in m.modules()],
        "opt": repr(opt.state_dict()),
        "opt_tensors": [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": repr(np.random.get_state()),
        "python_rng": random.getstate(),
        "loader_gen": trn.generator.get_state(),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ("state",):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        elif key in ("grads", "opt_tensors"):
            assert len(a[key]) == len(b[key])
            assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def warm(m: nn.Module, opt: torch.optim.Optimizer, trn: DataLoader) -> None:
    """A few real steps so the optimizer has state, and gradients left in place (as a user's loop may)."""
    for i, (xb, yb) in enumerate(trn):
        nn.functional.cross_entropy(m(xb), yb).backward()
        opt.step()
        if i == 2:
            break
        opt.zero_grad()


def test_range_test_equals_learner_lr_find2_step_for_step():
    trn, val = data()
    m = model()
    s = range_test(m, two_groups(m, momentum=0.9), nn.CrossEntropyLoss(), trn, val_dl=val, num_it=30)
    trn2, val2 = data()
    m2 = model()
    learn = Learner(m2, ModelData(trn2, val2), layer_groups=[m2[0], nn.ModuleList([m2[1], m2[3]])], progress=False,
                    table=False)
    learn.lr_find2(num_it=30)
    assert isinstance(s, RangeTestRecorder)
    assert s.lrs == learn.sched.lrs
    assert s.losses == learn.sched.losses
    assert s.val_losses == learn.sched.val_losses
    assert s.suggestions.as_dict() == pytest.approx(learn.sched.suggestions.as_dict(), nan_ok=True)


@pytest.mark.parametrize("opt_cls,kwargs", [(torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
                                            (torch.optim.AdamW, dict(betas=(0.9, 0.99), weight_decay=0.01))])
def test_everything_is_restored_bit_for_bit(opt_cls, kwargs):
    trn, val = data()
    m = model()
    opt = two_groups(m, opt_cls, **kwargs)
    warm(m, opt, trn)
    m[1].eval()  # a mode the sweep's model.train() must not leave behind
    before = everything(m, opt, trn)
    s = range_test(m, opt, nn.CrossEntropyLoss(), trn, val_dl=val, num_it=25, end_lr=100)
    assert len(s.lrs) >= 12
    assert_same(before, everything(m, opt, trn))
    assert opt.param_groups[0]["lr"] == 0.01


def test_restored_when_the_loss_raises_mid_sweep():
    trn, _ = data()
    m = model()
    opt = two_groups(m, momentum=0.9)
    warm(m, opt, trn)
    before = everything(m, opt, trn)
    calls = []

    def failing_loss(pred, target):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("boom at step 7")
        return nn.functional.cross_entropy(pred, target)

    with pytest.raises(RuntimeError, match="boom at step 7") as info:
        range_test(m, opt, failing_loss, trn, num_it=20)
    assert len(info.value.range_test.losses) == 6  # the partial sweep travels with the error
    assert_same(before, everything(m, opt, trn))


def test_without_a_validation_loader_it_sweeps_num_it_training_steps_across_epochs():
    trn, _ = data()  # 6 batches per epoch
    m = model()
    s = range_test(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), trn, num_it=15, stop_dv=False)
    assert len(s.lrs) == 15
    assert s.val_losses == []
    assert s.lrs[0] == pytest.approx(1e-5) and s.lrs[-1] == pytest.approx(10)
    assert np.isfinite(s.suggestions.minimum) or s.suggestions.notes


def test_dict_batches_and_a_model_that_returns_its_own_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long()

    class OwnLoss(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Linear(6, 2)

        def forward(self, features, labels):
            logits = self.body(features)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    batches = [{"features": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, 64, 16)]
    dl = DataLoader(batches, batch_size=None)
    m = OwnLoss()
    plain = nn.Linear(6, 2)
    plain.load_state_dict(m.body.state_dict())
    s = range_test(m, torch.optim.SGD(m.parameters(), lr=0.1), model_loss, dl, val_dl=dl, num_it=8, stop_dv=False)
    ref = range_test(plain, torch.optim.SGD(plain.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                     DataLoader(TensorDataset(x, y), batch_size=16), val_dl=DataLoader(TensorDataset(x, y), batch_size=16),
                     num_it=8, stop_dv=False)
    assert s.losses == ref.losses
    assert s.val_losses == ref.val_losses


def test_bad_arguments_are_clear_errors_before_anything_changes():
    trn, val = data()
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    other = nn.Linear(3, 3)
    before = everything(m, opt, trn)
    with pytest.raises(ValueError, match="optimizer: 2 of its parameters are not parameters of model"):
        range_test(m, torch.optim.SGD(list(m.parameters()) + list(other.parameters()), lr=0.1), nn.CrossEntropyLoss(), trn)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        range_test(m, "sgd", nn.CrossEntropyLoss(), trn)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        range_test(m, opt, None, trn)
    with pytest.raises(ValueError, match="num_it"):
        range_test(m, opt, nn.CrossEntropyLoss(), trn, num_it=1)
    with pytest.raises(ValueError, match="end_lr"):
        range_test(m, opt, nn.CrossEntropyLoss(), trn, start_lr=1.0, end_lr=0.5)
    with pytest.raises(TypeError, match=r"batch_fn must return a pair \(inputs, target\)"):
        range_test(m, opt, nn.CrossEntropyLoss(), trn, batch_fn=lambda b: b[0])
    assert_same(before, everything(m, opt, trn))


def test_accumulate_k_on_batch_b_equals_batch_k_times_b():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long()

    def linear_model():
        torch.manual_seed(0)
        return nn.Linear(6, 2)

    def sweep(bs: int, accumulate: int):
        m = linear_model()
        dl = DataLoader(TensorDataset(x, y), batch_size=bs)  # equal micro-batches: 96 = 3 x 32 = 12 x 8
        return range_test(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), dl, val_dl=dl,
                          num_it=9, accumulate=accumulate, stop_dv=False)

    big, small = sweep(32, 1), sweep(8, 4)
    assert small.lrs == big.lrs
    assert small.losses == pytest.approx(big.losses, rel=1e-5)
    with pytest.raises(ValueError, match="accumulate"):
        sweep(8, 0)
