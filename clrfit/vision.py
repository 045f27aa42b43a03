"""Image data from your own files: a folder per class (``ImageFolder`` layout) or a labels CSV.

Both builders return a :class:`clrfit.ModelData` with three extra attributes:
``classes`` (class names, in label order), ``c`` (the number of classes) and
``aug_dl`` (the validation images through the *training* transforms, which
:func:`clrfit.inference.tta` uses for test-time augmentation).

Transforms (torchvision ``transforms.v2``):

- training, ``augment=True``: ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip()``;
- training, ``augment=False`` and validation: ``Resize(size)`` (shorter side) + ``CenterCrop(size)``;
- then float in [0, 1] and ``Normalize``: ``normalize="data"`` uses the per-channel
  mean and standard deviation of (up to ``STATS_IMAGES``) training images after
  resize + center-crop, ``"imagenet"`` the ImageNet statistics that pretrained
  torchvision weights expect, ``None`` no normalisation.

``valid_pct`` split (when there is no validation folder): the training images
are permuted with ``torch.Generator().manual_seed(seed)`` and the first
``round(valid_pct * n)`` (at least 1, at most ``n - 1``) become the validation
set. The split depends only on ``seed`` and the sorted file list, so it is the
same on every run and every rank.
"""
from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from .data import ModelData
from .validation import (NORMALIZE, ArgumentError, ArgumentTypeError, check_bool, check_choice, check_int,
                         check_number, escape, fail)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: At most this many training images are read to compute ``normalize="data"`` statistics.
STATS_IMAGES = 512
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_transforms(size: int, augment: bool, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[Callable, Callable]:
    """(training transform, validation transform) for square images of side ``size``."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        tail.append(v2.Normalize(mean=list(mean), std=list(std)))
    plain = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if augment else plain
    return v2.Compose(train + tail), v2.Compose(plain + tail)


def image_folder_data(
    path: str | Path,
    *,
    train: str,
    valid: str | None,
    size: int,
    bs: int,
    augment: bool,
    num_workers: int,
    valid_pct: float | None,
    seed: int,
    normalize: str | None,
    val_bs: int | None,
) -> ModelData:
    """``ModelData.from_folder`` (its arguments and defaults): loaders over ``path/train/<class>/*`` and
    ``path/valid/<class>/*``, or a seeded ``valid_pct`` split of the training folder."""
    root = _existing_folder("path", path)
    size, augment, valid_pct = _check_common(size, bs, augment, num_workers, valid_pct, seed, normalize)
    train_root = _existing_folder("train", root / train)
    valid_root = None if valid is None else root / valid
    if valid_pct is not None and valid_root is not None and valid_root.is_dir():
        raise ArgumentError("valid_pct", f"{{valid_pct}}={valid_pct} splits the training folder, but "
                                         f"{escape(str(valid_root))} exists; pass {{valid}}=None to split, or "
                                         "{valid_pct}=None to use that folder")
    if valid_pct is None and valid_root is not None and not valid_root.is_dir():
        raise ArgumentError("valid", f"{{valid}}={escape(repr(valid))}: no folder {escape(str(valid_root))}; "
                                     "create it, pass {valid_pct}= (e.g. 0.2) to split the training images, or "
                                     "{valid}=None for no validation set")
    trn_plain = _image_folder(ImageFolder, "train", train_root)
    classes = list(trn_plain.classes)
    val_plain = None
    if valid_pct is None and valid_root is not None:
        val_plain = _image_folder(ImageFolder, "valid", valid_root)
        if val_plain.classes != classes:
            only_trn = sorted(set(classes) - set(val_plain.classes))
            only_val = sorted(set(val_plain.classes) - set(classes))
            raise fail("valid:", escape(f"the class folders of {valid_root} differ from those of {train_root} (only in "
                                        f"train: {only_trn}, only in valid: {only_val}); both need the same class "
                                        "folders"))

    mean, std = _normalization(normalize, trn_plain.samples, size)
    trn_tfm, val_tfm = image_transforms(size, augment, mean, std)
    if valid_pct is not None:
        trn_idx, val_idx = split_indices(len(trn_plain), valid_pct, seed)
        trn_ds: Dataset = Subset(_with_transform(trn_plain, trn_tfm), trn_idx)
        val_ds: Dataset | None = Subset(_with_transform(trn_plain, val_tfm), val_idx)
        aug_ds: Dataset | None = Subset(_with_transform(trn_plain, trn_tfm), val_idx)
    else:
        trn_ds = _with_transform(trn_plain, trn_tfm)
        val_ds = None if val_plain is None else _with_transform(val_plain, val_tfm)
        aug_ds = None if val_plain is None else _with_transform(val_plain, trn_tfm)
    return _model_data(trn_ds, val_ds, aug_ds, classes, bs, val_bs, num_workers)


def csv_image_data(
    path: str | Path,
    csv_file: str | Path,
    *,
    folder: str,
    size: int,
    bs: int,
    augment: bool,
    num_workers: int,
    valid_pct: float,
    seed: int,
    normalize: str | None,
    val_bs: int | None,
) -> ModelData:
    """``ModelData.from_csv`` (its arguments and defaults): the images a labels CSV lists (``filename,label``).

    A header row is skipped.

    File names are relative to ``path/folder``; classes are the sorted distinct labels.
    The validation set is a seeded ``valid_pct`` split of the rows.
    """
    root = _existing_folder("path", path)
    if valid_pct is None:
        raise ArgumentError("valid_pct", "{valid_pct}=None: a labels CSV has no validation folder; "
                                         "pass {valid_pct} in (0, 1)")
    size, augment, valid_pct = _check_common(size, bs, augment, num_workers, valid_pct, seed, normalize)
    image_root = _existing_folder("folder", root / folder)
    csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    if not csv_path.is_file():
        raise ArgumentError("csv_file", f"{{csv_file}}={escape(repr(str(csv_file)))}: "
                                        f"no such file {escape(str(csv_path))}")
    files, labels = _read_labels(csv_path, image_root)
    classes = sorted(set(labels))
    targets = [classes.index(label) for label in labels]
    samples = list(zip(files, targets))
    mean, std = _normalization(normalize, samples, size)
    trn_tfm, val_tfm = image_transforms(size, augment, mean, std)
    trn_idx, val_idx = split_indices(len(samples), valid_pct, seed)
    trn_ds = Subset(ImageListDataset(samples, classes, trn_tfm), trn_idx)
    val_ds = Subset(ImageListDataset(samples, classes, val_tfm), val_idx)
    aug_ds = Subset(ImageListDataset(samples, classes, trn_tfm), val_idx)
    return _model_data(trn_ds, val_ds, aug_ds, classes, bs, val_bs, num_workers)


class ImageListDataset(Dataset):
    """Images given as ``(file, class index)`` pairs, loaded as RGB and transformed."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable | None = None) -> None:
        self.samples, self.classes, self.transform = list(samples), list(classes), transform
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        file, target = self.samples[i]
        image = _load_rgb(file)
        return (self.transform(image) if self.transform is not None else image), target


def split_indices(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """(training indices, validation indices): a seeded permutation, ``round(valid_pct * n)`` held out (1 .. n-1)."""
    if n < 2:
        raise fail("valid_pct:", f"a split needs at least 2 images; got {n}")
    n_val = min(max(round(valid_pct * n), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


# ---------------------------------------------------------------------- helpers


def _check_common(size, bs, augment, num_workers, valid_pct, seed, normalize) -> tuple[int, bool, float | None]:
    size = check_int("size", size, minimum=1)
    check_int("bs", bs, minimum=1)
    check_bool("augment", augment)
    check_int("num_workers", num_workers, minimum=0)
    check_int("seed", seed)
    check_choice("normalize", normalize, NORMALIZE)
    if valid_pct is not None:
        valid_pct = check_number("valid_pct", valid_pct, minimum=0.0, maximum=1.0, exclusive_min=True, exclusive_max=True)
    return size, augment, valid_pct


def _with_transform(ds: Any, transform: Callable) -> Any:
    """A shallow copy of an ImageFolder with another transform (the folder is scanned once, not per copy)."""
    out = copy.copy(ds)
    out.transform = transform
    return out


def _existing_folder(name: str, path: Any) -> Path:
    if not isinstance(path, (str, Path)):
        raise fail(name, "must be a folder path (str or pathlib.Path)", path, kind=ArgumentTypeError)
    path = Path(path)
    if not path.is_dir():
        raise fail(f"{name}:", escape(f"no such folder {str(path)!r}"))
    return path


def _image_folder(image_folder: type, name: str, root: Path):
    """An ``ImageFolder`` without transforms; its errors reworded to name the argument."""
    try:
        ds = image_folder(str(root))
    except FileNotFoundError as err:
        raise fail(f"{name}:", escape(f"{root} holds no images in class folders ({err}); expected {root}/<class name>/"
                                      f"<image file> with extensions {', '.join(IMAGE_EXTENSIONS)}")) from None
    try:
        _load_rgb(ds.samples[0][0])
    except ValueError as err:
        raise fail(f"{name}:", escape(str(err))) from None
    return ds


def _load_rgb(file: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{file} is not a readable image ({err})") from None


def _read_labels(csv_path: Path, image_root: Path) -> tuple[list[str], list[str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["filename", "label"], ["file", "label"], ["fname", "label"]):
        rows = rows[1:]
    if not rows:
        raise fail("csv_file:", escape(f"{csv_path} lists no images; expected rows 'filename,label'"))
    files, labels = [], []
    for line, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise fail("csv_file:", escape(f"{csv_path} row {line} is {row!r}; expected 'filename,label'"))
        file = image_root / row[0].strip()
        if not file.is_file():
            raise fail("csv_file:", escape(f"{csv_path} row {line} names {row[0]!r}, but there is no file {file}"))
        files.append(str(file))
        labels.append(row[1].strip())
    _load_rgb(files[0])
    return files, labels


def _normalization(normalize: str | None, samples: Sequence[tuple[str, int]], size: int):
    if normalize is None:
        return None, None
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return channel_stats([file for file, _ in samples], size)


def channel_stats(files: Sequence[str], size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to ``STATS_IMAGES``, evenly spaced) images after resize + center-crop."""
    _, plain = image_transforms(size, False, None, None)
    step = max(1, math.ceil(len(files) / STATS_IMAGES))
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for file in files[::step]:
        x = plain(_load_rgb(file)).double()
        total += x.sum(dim=(1, 2))
        squares += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)  # a constant channel must not divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def _model_data(trn_ds: Dataset, val_ds: Dataset | None, aug_ds: Dataset | None, classes: list[str], bs: int,
                val_bs: int | None, num_workers: int) -> ModelData:
    data = ModelData.from_datasets(trn_ds, val_ds, bs=bs, val_bs=val_bs, num_workers=num_workers)
    val_dl = data.val_dl
    data.aug_dl = None if aug_ds is None else DataLoader(
        aug_ds, batch_size=val_dl.batch_size, shuffle=False, num_workers=val_dl.num_workers, pin_memory=val_dl.pin_memory)
    data.classes = classes
    data.c = len(classes)
    return data
