"""Any batch shape in the Learner: (x, y), (x1, ..., xn, y), dicts, a batch_fn, a model that returns its own loss.

Each shape is checked against the plain ``(x, y)`` run of the same model on the same
samples in the same order: the weights after a fit must be identical, and so must
validation, the range test and a resumed run.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from clrfit import Learner, ModelData, accuracy, model_loss
from conftest import InterruptAt
from torchrun import torchrun_command

ROOT = Path(__file__).resolve().parent.parent
N_TRN, N_VAL, BS = 64, 24, 16


def tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRN + N_VAL, 6, generator=g)
    return x, (x[:, 0] + x[:, 3] > 0).long()


class Plain(nn.Module):
    """``model(x)`` for ``x`` of 6 features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TwoInputs(Plain):
    """The same network, fed its 6 features as two tensors of 3."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.body(torch.cat([a, b], dim=1))


class OwnLoss(Plain):
    """A Hugging Face-style model: keyword inputs, returns a dict with its own loss."""

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:  # type: ignore[override]
        logits = self.body(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class DictDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, keys: tuple[str, str]) -> None:
        self.x, self.y, self.keys = x, y, keys

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i]}


def loaders(ds_trn: Dataset, ds_val: Dataset) -> ModelData:
    g = torch.Generator().manual_seed(7)
    bs = int(os.environ.get("BATCH_SHAPES_BS", BS))  # per-rank batch under torchrun
    return ModelData(DataLoader(ds_trn, batch_size=bs, shuffle=True, generator=g), DataLoader(ds_val, batch_size=bs))


def shape(name: str) -> dict:
    """Learner arguments for one batch shape over the same samples."""
    x, y = tensors()
    sl_t, sl_v = slice(0, N_TRN), slice(N_TRN, None)
    if name == "tuple":
        data = loaders(TensorDataset(x[sl_t], y[sl_t]), TensorDataset(x[sl_v], y[sl_v]))
        return dict(model=Plain(), data=data)
    if name == "multi_input":
        data = loaders(TensorDataset(x[sl_t, :3], x[sl_t, 3:], y[sl_t]), TensorDataset(x[sl_v, :3], x[sl_v, 3:], y[sl_v]))
        return dict(model=TwoInputs(), data=data)
    if name == "dict_own_loss":
        keys = ("features", "labels")
        data = loaders(DictDataset(x[sl_t], y[sl_t], keys), DictDataset(x[sl_v], y[sl_v], keys))
        return dict(model=OwnLoss(), data=data, crit=model_loss)
    if name == "batch_fn":
        keys = ("img", "cls")
        data = loaders(DictDataset(x[sl_t], y[sl_t], keys), DictDataset(x[sl_v], y[sl_v], keys))
        return dict(model=Plain(), data=data, batch_fn=lambda b: (b["img"], b["cls"]))
    if name == "batch_fn_dict_inputs":
        keys = ("features", "labels")
        data = loaders(DictDataset(x[sl_t], y[sl_t], keys), DictDataset(x[sl_v], y[sl_v], keys))
        return dict(model=OwnLoss(), data=data, batch_fn=lambda b: ({"features": b["features"]}, b["labels"]),
                    crit=lambda out, target: nn.functional.cross_entropy(out["logits"], target))
    raise AssertionError(name)


SHAPES = ["multi_input", "dict_own_loss", "batch_fn", "batch_fn_dict_inputs"]


def learner(name: str, **kwargs) -> Learner:
    args = shape(name)
    return Learner(args.pop("model"), args.pop("data"), progress=False, table=False, **args, **kwargs)


def weights(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


@pytest.mark.parametrize("name", SHAPES)
def test_fit_and_validate_equal_the_plain_tuple_run(name):
    plain, other = learner("tuple"), learner(name)
    plain.fit(0.5, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
    other.fit(0.5, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
    for a, b in zip(weights(plain), weights(other)):
        assert torch.equal(a, b)
    assert other.recorder.losses == plain.recorder.losses
    assert other.validate() == plain.validate()


@pytest.mark.parametrize("name", SHAPES)
def test_lr_find2_equals_the_plain_tuple_run_and_restores(name):
    plain, other = learner("tuple"), learner(name)
    before = weights(other)
    s_plain = plain.lr_find2(num_it=12)
    s_other = other.lr_find2(num_it=12)
    assert other.sched.losses == plain.sched.losses
    assert other.sched.val_losses == plain.sched.val_losses
    assert s_other.as_dict() == pytest.approx(s_plain.as_dict(), nan_ok=True)
    for a, b in zip(before, weights(other)):
        assert torch.equal(a, b)


def test_metrics_receive_what_the_loss_receives():
    seen = []

    def first_logit_positive(pred, target):
        seen.append((type(pred), type(target)))
        return (pred["logits"].argmax(-1) == target).float().mean()

    learn = learner("dict_own_loss", metrics=[first_logit_positive])
    _, (value,) = learn.validate()
    reference = learner("tuple", metrics=[accuracy])
    _, (expected,) = reference.validate()
    assert value == pytest.approx(expected)
    assert seen and all(p is dict and t is torch.Tensor for p, t in seen)


def test_validation_weights_multi_target_batches_by_samples():
    # A model with two heads and a target pair: the mean must be over samples, not over the 2 targets.
    x, y = tensors()

    class TwoHeads(Plain):
        def forward(self, x):  # type: ignore[override]
            out = self.body(x)
            return out, out

    def crit(pred, target):
        return nn.functional.cross_entropy(pred[0], target[0]) + nn.functional.cross_entropy(pred[1], target[1])

    val = DataLoader(TensorDataset(x[:20], y[:20], y[:20]), batch_size=8, collate_fn=lambda items: (
        torch.stack([i[0] for i in items]), (torch.stack([i[1] for i in items]), torch.stack([i[2] for i in items]))))
    learn = Learner(TwoHeads(), ModelData(DataLoader(TensorDataset(x, y), batch_size=8), val), crit=crit,
                    progress=False, table=False)
    loss, _ = learn.validate()
    with torch.no_grad():
        out = learn.model.body(x[:20])
        expected = 2 * nn.functional.cross_entropy(out, y[:20]).item()
    assert loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["multi_input", "dict_own_loss"])
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(tmp_path, name):
    full = learner(name)
    full.fit(0.3, 2, checkpoint=tmp_path / "full.ckpt")
    ckpt = tmp_path / "cut.ckpt"
    cut = learner(name)
    with pytest.raises(KeyboardInterrupt):
        cut.fit(0.3, 2, checkpoint=ckpt, callbacks=[InterruptAt(5)])
    resumed = learner(name)
    resumed.fit(0.3, 2, checkpoint=ckpt, resume=True)
    for a, b in zip(weights(full), weights(resumed)):
        assert torch.equal(a, b)
    assert resumed.recorder.losses == full.recorder.losses


def test_bad_batches_are_clear_errors_before_any_weight_changes():
    x, y = tensors()
    single = DataLoader(TensorDataset(x), batch_size=8)  # batches of one tensor: no target
    learn = Learner(Plain(), ModelData(single, None), progress=False, table=False)
    before = weights(learn)
    with pytest.raises(TypeError, match=r"batch: got a list of length 1.*batch_fn"):
        learn.fit(0.1, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn)))

    bad_fn = Learner(Plain(), ModelData(DataLoader(TensorDataset(x, y), batch_size=8), None), progress=False,
                     table=False, batch_fn=lambda b: b[0])
    with pytest.raises(TypeError, match=r"batch_fn must return a pair \(inputs, target\); got a Tensor"):
        bad_fn.fit(0.1, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(bad_fn)))

    with pytest.raises(TypeError, match="batch_fn must be a callable"):
        Learner(Plain(), ModelData(single, None), batch_fn="features")

    own = Learner(Plain(), ModelData(DataLoader(TensorDataset(x, y), batch_size=8), None), crit=model_loss,
                  progress=False, table=False)
    with pytest.raises(TypeError, match="crit=model_loss: the model's output must carry its loss"):
        own.fit(0.1, 1)


WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_batch_shapes import learner
learn = learner({name!r})
learn.fit(0.3, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
loss, _ = learn.validate()
if learn.dist.rank == 0:
    torch.save({{"weights": [p.detach() for p in learn.model.parameters()], "val_loss": loss}}, {out!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multi_input", "dict_own_loss"])
def test_ddp_two_ranks_train_every_shape(tmp_path, name):
    """2 gloo ranks with per-rank batch BS/2 see the global batches of one process with batch BS."""
    out = tmp_path / "ddp.pt"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), name=name, out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", BATCH_SHAPES_BS=str(BS // 2))
    cmd = torchrun_command(2, script)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = learner(name)
    single.fit(0.3, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
    ddp = torch.load(out, weights_only=True)
    for a, b in zip(weights(single), ddp["weights"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ddp["val_loss"] == pytest.approx(single.validate()[0], rel=1e-5)
