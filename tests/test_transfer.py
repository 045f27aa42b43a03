"""clrfit.transfer: head replacement, layer groups, freezing (weights=None: nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from clrfit import Learner, ModelData
from clrfit.transfer import freeze, freeze_to, frozen_groups, infer_n_classes, replace_head, unfreeze
from test_vision import make_image_folder

ARCHS = ["resnet18", "resnext50_32x4d", "vgg11", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
         "efficientnet_b0", "convnext_tiny", "vit_b_16"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_supported_head_is_replaced_and_groups_cover_the_model(arch):
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = getattr(torchvision.models, arch)(weights=None)
    groups = replace_head(model, 5)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 5]
    assert len(heads) == 1, "exactly one new 5-class Linear"
    assert [len(g) for g in groups].count(0) == 0
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "groups are disjoint"
    assert set(ids) == {id(p) for p in model.parameters()}, "groups cover every parameter"
    assert {id(p) for p in heads[0].parameters()} <= {id(p) for p in groups[2]}, "the new head is in the last group"
    first_param = next(iter(model.parameters()))
    assert id(first_param) in {id(p) for p in groups[0]}, "the stem is in the first group"


def test_unknown_head_says_how_to_pass_layer_groups(tmp_path):
    data = ModelData.from_folder(make_image_folder(tmp_path), size=16, bs=6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    with pytest.raises(ValueError, match=r"model: cannot find the classifier head of a Sequential.*layer_groups=\[early_body"):
        Learner.from_pretrained(model, data)
    with torch.device("meta"):
        squeeze = torchvision.models.squeezenet1_0(weights=None)
    with pytest.raises(ValueError, match="classifier head of a SqueezeNet"):
        replace_head(squeeze, 3)
    resnet = torchvision.models.resnet18(weights=None)
    with pytest.raises(TypeError, match="splits the model into layer groups itself"):
        Learner.from_pretrained(resnet, data, layer_groups=[model])
    assert resnet.fc.out_features == 1000, "refused before the head was replaced"


def _learner(tmp_path, **kwargs) -> Learner:
    torch.manual_seed(0)
    data = ModelData.from_folder(make_image_folder(tmp_path), size=16, bs=18, augment=False)  # one batch per epoch
    return Learner.from_pretrained(torchvision.models.resnet18(weights=None), data, progress=False, table=False,
                              device="cpu", **kwargs)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)}


def _group_of(learn: Learner) -> dict[str, int]:
    ids = {id(p): i for i, g in enumerate(learn.opt.param_groups) for p in g["params"]}
    return {name: ids[id(p)] for name, p in learn.model.named_parameters()}


def test_n_classes_from_data_and_three_groups(tmp_path):
    learn = _learner(tmp_path)
    assert learn.model.fc.out_features == 3 and learn.n_groups == 3
    group = _group_of(learn)
    assert group["conv1.weight"] == 0 and group["layer2.1.bn2.bias"] == 0
    assert group["layer3.0.conv1.weight"] == 1 and group["layer4.1.bn2.weight"] == 1
    assert group["fc.weight"] == 2 and group["fc.bias"] == 2
    x = torch.arange(12).reshape(6, 2).float()
    assert infer_n_classes(ModelData.from_tensors(x, torch.tensor([0, 4, 1, 2, 0, 1]))) == 5


def test_freeze_trains_only_the_head_and_bn_statistics_still_move(tmp_path):
    learn = _learner(tmp_path)
    freeze(learn)
    assert frozen_groups(learn) == 2
    before = _snapshot(learn.model)
    learn.fit(1e-2, 1)
    changed = _changed(before, learn.model)
    params = {n for n, _ in learn.model.named_parameters()}
    assert changed & params == {"fc.weight", "fc.bias"}
    # Without bn_freeze the frozen body's BatchNorm layers still update their running statistics.
    assert "layer1.0.bn1.running_mean" in changed and "bn1.running_var" in changed
    # Weight decay, L2 or decoupled, never reaches frozen parameters either.
    for use_wd_sched in (False, True):
        before = _snapshot(learn.model)
        learn.fit(1e-2, 1, wds=0.1, use_wd_sched=use_wd_sched)
        assert _changed(before, learn.model) & params == {"fc.weight", "fc.bias"}


def test_bn_freeze_keeps_frozen_batchnorm_in_eval_mode_every_epoch(tmp_path):
    learn = _learner(tmp_path)
    freeze(learn, bn_freeze=True)
    before = _snapshot(learn.model)
    learn.fit(1e-2, 2)  # two epochs: model.train() is called at each
    changed = _changed(before, learn.model)
    assert changed == {"fc.weight", "fc.bias"}, "no running statistic of a frozen BatchNorm moved"
    unfreeze(learn)
    before = _snapshot(learn.model)
    learn.fit(1e-3, 1)
    assert "layer1.0.bn1.running_mean" in _changed(before, learn.model), "unfreeze lets BatchNorm train again"


def test_freeze_to_one_and_discriminative_lrs(tmp_path):
    learn = _learner(tmp_path)
    freeze_to(learn, 1)
    group = _group_of(learn)
    before = _snapshot(learn.model)
    learn.fit([1e-4, 1e-3, 1e-2], 1)
    changed = _changed(before, learn.model) & set(group)
    assert changed == {n for n, g in group.items() if g >= 1}
    assert learn.sched.group_lrs[0] == [1e-4, 1e-3, 1e-2]
    unfreeze(learn)
    assert frozen_groups(learn) == 0
    before = _snapshot(learn.model)
    learn.fit([1e-4, 1e-3, 1e-2], 1)
    assert _changed(before, learn.model) & set(group) == set(group), "every parameter trains after unfreeze"


def test_freeze_to_out_of_range_changes_nothing(tmp_path):
    learn = _learner(tmp_path)
    freeze_to(learn, 1)
    for bad in (3, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"freeze_to: n must be an integer in \[0, 2\].*got {bad!r}"):
            freeze_to(learn, bad)
    assert frozen_groups(learn) == 1
    with pytest.raises(TypeError, match="bn_freeze must be True or False"):
        freeze_to(learn, 2, bn_freeze="yes")
    assert frozen_groups(learn) == 1
    with pytest.raises(ValueError, match="n_classes must be an integer >= 1; got 0"):
        Learner.from_pretrained(torchvision.models.resnet18(weights=None), learn.data, n_classes=0)


def test_small_vit_trains_with_its_groups(tmp_path):
    torch.manual_seed(0)
    data = ModelData.from_folder(make_image_folder(tmp_path), size=16, bs=18, augment=False)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32)
    learn = Learner.from_pretrained(vit, data, progress=False, table=False, device="cpu")
    assert learn.model.heads.head.out_features == 3
    freeze(learn)
    before = _snapshot(learn.model)
    learn.fit(1e-2, 1)
    assert _changed(before, learn.model) == {"heads.head.weight", "heads.head.bias"}


# ---------------------------------------------------------------------- the user story, end to end


@pytest.mark.slow  # two resnet18 fits and a range test: about 10-20 s on a busy CPU
def test_user_story_from_the_issue(tmp_path, monkeypatch):
    from clrfit import Learner, ModelData, accuracy, callbacks as cb

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    make_image_folder(tmp_path / "pets", n_train=8, n_valid=4)
    data = ModelData.from_folder("pets/", valid="valid", size=16, bs=6, augment=True)
    assert data.classes == ["cat", "dog", "fox"] and len(data.trn_dl) == 4
    learn = Learner.from_pretrained(torchvision.models.resnet18(weights=None), data, metrics=[accuracy],
                                    progress=False, table=False, device="cpu")
    assert learn.model.fc.out_features == 3 and learn.n_groups == 3
    learn.freeze()
    body = {k: v.clone() for k, v in learn.model.state_dict().items() if not k.startswith("fc.") and "running" not in k
            and "num_batches" not in k}
    s = learn.lr_find2(num_it=20)
    assert len(learn.sched.lrs) <= 20 and s is not None
    learn.fit(1e-2, 1, cycle_len=3, use_clr=(32, 5))
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in body.items()), "frozen body unchanged"
    assert learn.sched.lrs[0] == pytest.approx(1e-2 / 32) and max(learn.sched.lrs) == pytest.approx(1e-2)
    learn.unfreeze()
    stop = cb.EarlyStopping(patience=3)
    learn.fit([1e-4, 1e-3, 1e-2], 1, cycle_len=5, use_clr_beta=(10, 10, 0.95, 0.85),
              callbacks=[cb.SaveBest("val_loss"), stop, cb.CSVLogger("log.csv")])
    n_epochs = len(learn.sched.val_losses)
    assert n_epochs == 5 or stop.stopped_epoch == n_epochs - 1
    assert learn.sched.group_lrs[0] == pytest.approx([1e-5, 1e-4, 1e-3]), "lr/div per group at the start of 1cycle"
    assert len(Path("log.csv").read_text().splitlines()) == n_epochs + 1
    assert Path("models/best.pt").is_file()
    preds, targets = learn.get_preds()
    assert preds.shape == (12, 3) and targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    xb, _ = next(iter(data.val_dl))
    torch.testing.assert_close(learn.predict(xb), preds[:len(xb)])
    probs, tta_targets = learn.tta()
    assert torch.equal(tta_targets, targets) and torch.allclose(probs.sum(1), torch.ones(12))


@pytest.mark.slow  # a resnet18 fit through the command line
def test_cli_fit_on_a_data_folder_saves_model_and_plots(tmp_path, monkeypatch, capsys):
    from clrfit.cli import main

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "imgs", n_train=6, n_valid=2)  # 3 steps per epoch: use_clr needs N / 5 >= 1
    code = main(["fit", "--data-folder", "imgs", "--arch", "resnet18", "--no-pretrained", "--size", "16", "--bs", "6",
                 "--lr", "0.01", "--cycle-len", "2", "--use-clr", "32,5", "--no-progress", "--threads", "1",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "final validation accuracy" in out
    from clrfit.cli import DEFAULT_FIT_OUT
    from clrfit.serialization import load_state

    for name in ("model.pt", "lr_mom.png", "loss.png"):  # written without asking (no --out)
        assert (tmp_path / DEFAULT_FIT_OUT / name).is_file(), name
    state = load_state(tmp_path / DEFAULT_FIT_OUT / "model.pt")
    assert state["model"]["fc.weight"].shape == (3, 512)


def test_cli_bad_torchvision_arch_exits_2(tmp_path, monkeypatch, capsys):
    from clrfit.cli import main

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "imgs", n_train=2, n_valid=1)
    assert main(["fit", "--data-folder", "imgs", "--arch", "resnet20x", "--no-pretrained", "--lr", "0.1"]) == 2
    assert "--arch 'resnet20x' is not a torchvision classification model" in capsys.readouterr().err
    assert main(["fit", "--arch", "resnet18", "--lr", "0.1"]) == 2
    assert "torchvision models such as resnet18 need --data-folder" in capsys.readouterr().err
