"""clrfit.inference: get_preds, predict and tta (eval mode, no grad, mode restored, dataset order)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from clrfit import Learner, ModelData
from clrfit.inference import get_preds, per_sample_loss, predict, tta
from test_vision import make_image_folder
from torchrun import torchrun_command

ROOT = Path(__file__).resolve().parent.parent


def _learner(**kwargs) -> Learner:
    torch.manual_seed(0)
    x = torch.randn(60, 6)
    y = (x[:, 0] > 0).long()
    data = ModelData.from_tensors(x[:40], y[:40], x[40:], y[40:], bs=8, val_bs=6)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2))
    return Learner(model, data, progress=False, table=False, device="cpu", **kwargs)


def test_get_preds_matches_the_eval_model_in_dataset_order():
    learn = _learner()
    learn.fit(0.1, 1)
    learn.model.train()
    preds, targets = get_preds(learn)
    assert learn.model.training, "the model's mode is restored"
    x, y = learn.data.val_ds.tensors
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model(x)
    assert torch.equal(targets, y) and preds.shape == (20, 2)
    torch.testing.assert_close(preds, expected)
    assert not preds.requires_grad and preds.device.type == "cpu"
    learn.model.eval()
    get_preds(learn)
    assert not learn.model.training, "an eval-mode model stays in eval mode"


def test_get_preds_with_loss_and_other_loaders():
    learn = _learner()
    preds, targets, losses = get_preds(learn, with_loss=True)
    torch.testing.assert_close(losses, F.cross_entropy(preds, targets, reduction="none"))
    assert losses.mean().item() == pytest.approx(learn.validate()[0], rel=1e-6)
    trn_preds, trn_targets = get_preds(learn, dl=DataLoader(learn.data.trn_ds, batch_size=7))
    assert torch.equal(trn_targets, learn.data.trn_ds.tensors[1])
    # A loss function without `reduction` is called once per sample.
    crit = lambda p, t: ((p[:, 1] - t.float()) ** 2).mean()  # noqa: E731
    expected = (preds[:, 1] - targets.float()) ** 2
    torch.testing.assert_close(per_sample_loss(crit, preds, targets), expected)
    with pytest.raises(TypeError, match="dl must be a torch DataLoader, a clrfit TensorLoader or None; got list"):
        get_preds(learn, dl=[1, 2])
    with pytest.raises(TypeError, match="with_loss must be True or False"):
        get_preds(learn, with_loss=1)


def test_predict_one_batch_in_eval_mode():
    learn = _learner()
    x = torch.randn(5, 6)
    learn.model.train()
    a, b = predict(learn, x), predict(learn, x)
    assert torch.equal(a, b), "dropout is off: eval mode"
    assert learn.model.training
    learn.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(a, learn.model(x))
    with pytest.raises(ValueError, match="predict: x must be a batch"):
        predict(learn, torch.tensor(1.0))


def test_predict_restores_frozen_module_modes():
    learn = _learner()
    learn.model.train()
    learn.model[1].eval()  # e.g. a BatchNorm kept in eval mode by bn_freeze
    predict(learn, torch.randn(3, 6))
    assert learn.model.training and not learn.model[1].training


def test_tta_averages_plain_and_augmented_probabilities_as_fastai(tmp_path):
    data = ModelData.from_folder(make_image_folder(tmp_path), size=12, bs=6, augment=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    learn = Learner(model, data, progress=False, table=False, device="cpu")
    for n in (1, 5):
        torch.manual_seed(1)
        probs, targets = tta(learn, n=n)
        torch.manual_seed(1)
        plain, t = get_preds(learn)
        augmented = [get_preds(learn, dl=data.aug_dl)[0].softmax(-1) for _ in range(n)]
        repeats = math.ceil(n / 4)
        expected = (plain.softmax(-1) * repeats + sum(augmented)) / (repeats + n)
        torch.testing.assert_close(probs, expected)
        assert torch.equal(targets, t)
        assert torch.allclose(probs.sum(-1), torch.ones(len(probs)))
        assert not torch.allclose(probs, plain.softmax(-1)), "the augmented passes count"
    with pytest.raises(ValueError, match="n must be an integer >= 1; got 0"):
        tta(learn, n=0)


def test_tta_needs_an_augmented_loader():
    learn = _learner()
    with pytest.raises(ValueError, match="tta: the data has no aug_dl"):
        tta(learn)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_get_preds_under_torchrun_gathers_in_dataset_order(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = torchrun_command(2, ROOT / "tests" / "inference_ddp_worker.py", str(tmp_path))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    sys.path.insert(0, str(ROOT / "tests"))
    from inference_ddp_worker import build

    single = build()
    preds, targets, losses = get_preds(single, with_loss=True)
    assert (ranks[0]["n_local"], ranks[1]["n_local"]) == (11, 10)
    for r in ranks:
        assert torch.equal(r["targets"], targets)
        torch.testing.assert_close(r["preds"], preds)
        torch.testing.assert_close(r["losses"], losses)
        assert r["training"] is True
        assert torch.equal(r["torch_targets"], targets)
        torch.testing.assert_close(r["torch_preds"], preds)
        assert r["changed"] == ["3.bias", "3.weight"], "frozen under DDP: only the head trains"
    torch.testing.assert_close(ranks[0]["head"], ranks[1]["head"])  # gradients were averaged: ranks agree
