"""clrfit.vision: image folders and label CSVs the tests write with PIL (never downloads)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from clrfit import ModelData
from clrfit.vision import IMAGENET_MEAN, IMAGENET_STD, split_indices

CLASSES = ("cat", "dog", "fox")


def write_image(file: Path, cls: int, i: int, size: int = 16) -> None:
    """A small RGB image whose dominant channel is the class (so a tiny model can learn it)."""
    g = torch.Generator().manual_seed(1000 * cls + i)
    pixels = torch.randint(0, 90, (size, size, 3), generator=g, dtype=torch.uint8)
    pixels[..., cls % 3] += 150
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(file)


def make_image_folder(root: Path, n_train: int = 6, n_valid: int = 3, size: int = 16, classes=CLASSES,
                      valid: bool = True) -> Path:
    """``root/train/<class>/<i>.png`` (and ``root/valid/...``): 3 classes x ``n_train`` images of 16x16."""
    for c, name in enumerate(classes):
        for i in range(n_train):
            write_image(root / "train" / name / f"{i}.png", c, i, size)
        if valid:
            for i in range(n_valid):
                write_image(root / "valid" / name / f"{i}.png", c, 100 + i, size)
    return root


def test_folder_with_valid_folder(tmp_path):
    root = make_image_folder(tmp_path)
    data = ModelData.from_folder(root, size=12, bs=4, augment=False, normalize=None)
    assert isinstance(data, ModelData)
    assert data.classes == list(CLASSES) and data.c == 3
    assert len(data.trn_ds) == 18 and len(data.val_ds) == 9
    assert data.bs == 4 and data.val_dl.batch_size == 8
    xb, yb = next(iter(data.val_dl))
    assert xb.shape == (8, 3, 12, 12) and xb.dtype == torch.float32
    assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
    assert yb.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]  # sorted, unshuffled validation
    # The class shows in the mean of its channel: image 0 of "cat" is red-dominant.
    assert int(xb[0].mean(dim=(1, 2)).argmax()) == 0
    assert int(xb[3].mean(dim=(1, 2)).argmax()) == 1


def test_augment_random_crop_and_flip_only_in_training(tmp_path):
    root = make_image_folder(tmp_path)
    data = ModelData.from_folder(root, size=12, bs=4, augment=True, normalize=None)
    torch.manual_seed(0)
    a = data.trn_ds[0][0]
    b = data.trn_ds[0][0]
    assert a.shape == b.shape == (3, 12, 12)
    assert not torch.equal(a, b), "augmented training images differ between reads"
    v1, v2 = data.val_ds[0][0], data.val_ds[0][0]
    assert torch.equal(v1, v2), "validation is deterministic"
    # aug_dl is the validation images through the training transforms (for TTA).
    assert len(data.aug_dl.dataset) == len(data.val_ds)
    assert not torch.equal(data.aug_dl.dataset[0][0], data.aug_dl.dataset[0][0])


def test_normalize_data_standardises_channels(tmp_path):
    root = make_image_folder(tmp_path)
    data = ModelData.from_folder(root, size=16, bs=18, augment=False, normalize="data")
    x = torch.cat([xb for xb, _ in data.trn_dl])
    assert x.shape[0] == 18
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(std, torch.ones(3), atol=1e-3)


def test_normalize_imagenet_uses_imagenet_statistics(tmp_path):
    root = make_image_folder(tmp_path)
    raw = ModelData.from_folder(root, size=8, bs=2, augment=False, normalize=None).val_ds[0][0]
    norm = ModelData.from_folder(root, size=8, bs=2, augment=False, normalize="imagenet").val_ds[0][0]
    expected = (raw - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(norm, expected, atol=1e-6)


def test_valid_pct_split_is_seeded_disjoint_and_documented(tmp_path):
    root = make_image_folder(tmp_path, valid=False)
    a = ModelData.from_folder(root, valid=None, valid_pct=0.25, seed=3, size=8, bs=4, normalize=None)
    b = ModelData.from_folder(root, valid=None, valid_pct=0.25, seed=3, size=8, bs=4, normalize=None)
    c = ModelData.from_folder(root, valid=None, valid_pct=0.25, seed=4, size=8, bs=4, normalize=None)
    n_val = round(0.25 * 18)
    assert len(a.val_ds) == n_val == 4 and len(a.trn_ds) == 14
    assert a.val_ds.indices == b.val_ds.indices and a.val_ds.indices != c.val_ds.indices
    assert set(a.val_ds.indices).isdisjoint(a.trn_ds.indices)
    assert sorted(a.val_ds.indices + a.trn_ds.indices) == list(range(18))
    # The documented rule: the first round(pct * n) of a seeded permutation.
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(3)).tolist()
    assert a.val_ds.indices == sorted(perm[:n_val])
    # A missing valid folder without valid_pct splits automatically only when asked.
    split = ModelData.from_folder(root, valid_pct=0.5, size=8, bs=4, normalize=None)
    assert len(split.val_ds) == 9


def test_split_indices_bounds():
    assert len(split_indices(3, 0.01, 0)[1]) == 1  # at least one image is held out
    assert len(split_indices(3, 0.99, 0)[1]) == 2
    with pytest.raises(ValueError, match="at least 2"):
        split_indices(1, 0.5, 0)


def test_no_valid_set(tmp_path):
    root = make_image_folder(tmp_path, valid=False)
    data = ModelData.from_folder(root, valid=None, size=8, bs=4)
    assert data.val_dl is None and data.aug_dl is None and len(data.trn_ds) == 18


def test_csv_labels(tmp_path):
    rows = ["filename,label"]
    for c, name in enumerate(CLASSES):
        for i in range(4):
            write_image(tmp_path / "images" / f"{name}_{i}.png", c, i)
            rows.append(f"{name}_{i}.png,{name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = ModelData.from_csv(tmp_path, "labels.csv", folder="images", size=8, bs=4, valid_pct=0.25, normalize=None)
    assert data.classes == list(CLASSES) and data.c == 3
    assert len(data.trn_ds) == 9 and len(data.val_ds) == 3
    ds = data.val_ds.dataset
    for i in data.val_ds.indices:  # the label of every held-out file is the one the CSV gives it
        file, target = ds.samples[i]
        assert Path(file).name.split("_")[0] == CLASSES[target]
    xb, yb = next(iter(data.trn_dl))
    assert xb.shape[1:] == (3, 8, 8)


# ---------------------------------------------------------------------- bad input


def test_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="path: no such folder"):
        ModelData.from_folder(tmp_path / "nope")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "valid").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"train: .* holds no images in class folders"):
        ModelData.from_folder(tmp_path / "empty")
    text = tmp_path / "text" / "train" / "a"
    text.mkdir(parents=True)
    (text / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"train: .* holds no images"):
        ModelData.from_folder(tmp_path / "text", valid=None)
    fake = tmp_path / "fake" / "train" / "a"
    fake.mkdir(parents=True)
    (fake / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"train: .*x.png is not a readable image"):
        ModelData.from_folder(tmp_path / "fake", valid=None)


def test_train_and_valid_classes_must_match(tmp_path):
    root = make_image_folder(tmp_path)
    write_image(root / "valid" / "emu" / "0.png", 0, 0)
    with pytest.raises(ValueError, match=r"valid: the class folders .* only in valid: \['emu'\]"):
        ModelData.from_folder(root)


def test_bad_arguments(tmp_path):
    root = make_image_folder(tmp_path)
    with pytest.raises(ValueError, match="size must be an integer >= 1; got 0"):
        ModelData.from_folder(root, size=0)
    with pytest.raises(ValueError, match="size must be an integer >= 1; got -3"):
        ModelData.from_folder(root, size=-3)
    for pct in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"valid_pct must be in \(0, 1\); got {float(pct)!r}"):
            ModelData.from_folder(root, valid=None, valid_pct=pct)
    with pytest.raises(ValueError, match="normalize must be one of 'data', 'imagenet', None; got 'mean'"):
        ModelData.from_folder(root, normalize="mean")
    with pytest.raises(ValueError, match="valid_pct=0.2 splits the training folder, but .* exists"):
        ModelData.from_folder(root, valid_pct=0.2)
    with pytest.raises(ValueError, match="valid='val': no folder .*valid_pct="):
        ModelData.from_folder(root, valid="val")
    with pytest.raises(ValueError, match="csv_file='missing.csv': no such file"):
        ModelData.from_csv(root, "missing.csv", folder="train")


def test_csv_bad_rows(tmp_path):
    write_image(tmp_path / "a.png", 0, 0)
    write_image(tmp_path / "b.png", 1, 0)
    (tmp_path / "missing.csv").write_text("filename,label\na.png,cat\nnope.png,dog\n")
    with pytest.raises(ValueError, match=r"row 2 names 'nope.png', but there is no file"):
        ModelData.from_csv(tmp_path, "missing.csv")
    (tmp_path / "short.csv").write_text("a.png,cat\nb.png\n")
    with pytest.raises(ValueError, match=r"row 2 is \['b.png'\]; expected 'filename,label'"):
        ModelData.from_csv(tmp_path, "short.csv")
    (tmp_path / "empty.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match="lists no images"):
        ModelData.from_csv(tmp_path, "empty.csv")
    (tmp_path / "ok.csv").write_text("a.png,cat\nb.png,dog\n")  # no header row is fine
    data = ModelData.from_csv(tmp_path, "ok.csv", size=8, bs=1, valid_pct=0.5, normalize=None)
    assert data.classes == ["cat", "dog"] and len(data.trn_ds) == len(data.val_ds) == 1
    with pytest.raises(ValueError, match="valid_pct=None: a labels CSV has no validation folder"):
        ModelData.from_csv(tmp_path, "ok.csv", valid_pct=None)
