"""Ready-made datasets: MNIST-1D (generated offline, cached) and torchvision image sets.

``mnist1d()`` needs no network: the ``mnist1d`` package builds the data from its
templates, and the arrays are cached as ``.npz`` in the user cache folder
(``platformdirs.user_cache_dir("clrfit")``, or ``$CLRFIT_CACHE_DIR``, or the
``cache_dir`` argument). CIFAR-10, MNIST and Fashion-MNIST are read from their
usual on-disk formats under ``path``; ``download=True`` fetches them first
through torchvision.

Every dataset here fits in memory, so each is served by tensor loaders by
default (:class:`clrfit.loaders.TensorLoader`: uint8 images kept in memory,
crop, flip and normalisation on whole batches). ``loader="torch"`` gives the
per-sample path instead (a ``Dataset`` with torchvision transforms behind a
``DataLoader``), and is what ``num_workers > 0`` picks when no ``loader`` is
named; ``docs/data.md`` says when each fits.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import ModelData
from .loaders import ImageBatchTransform, choose_loader
from .validation import check_bool, check_choice, check_int

CACHE_ENV = "CLRFIT_CACHE_DIR"
_MNIST1D_FORMAT = 1  # bump when the cached arrays change meaning

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

DATASETS = ("mnist1d", "cifar10", "mnist", "fashion-mnist")


def resolve_cache_dir(path: str | Path | None = None) -> Path:
    """Where clrfit caches generated data: ``path``, else ``$CLRFIT_CACHE_DIR``, else the user cache dir."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("clrfit"))


# --------------------------------------------------------------------------- MNIST-1D


def mnist1d_arrays(
    n_train: int = 4000,
    n_valid: int = 1000,
    seed: int = 42,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D as ``(x_train, y_train, x_valid, y_valid)``: float32 ``(N, 1, 40)`` and int64 ``(N,)``.

    Generated offline from the ``mnist1d`` templates (never downloaded) and
    cached as ``.npz``, keyed by every generation argument.
    """
    n_train = check_int("n_train", n_train, minimum=1)
    n_valid = check_int("n_valid", n_valid, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    args = _mnist1d_args(n_train + n_valid, seed)
    key = hashlib.sha256(json.dumps(dict(args, n_train=n_train, n_valid=n_valid, format=_MNIST1D_FORMAT),
                                    sort_keys=True).encode()).hexdigest()[:16]
    folder = resolve_cache_dir(cache_dir)
    path = folder / f"mnist1d-{n_train}-{n_valid}-seed{seed}-{key}.npz"
    arrays = _read_npz(path, n_train, n_valid)
    if arrays is None:
        arrays = _generate_mnist1d(args, n_train, n_valid)
        _write_npz_atomic(path, arrays)
    return arrays


def mnist1d(
    n_train: int = 4000,
    n_valid: int = 1000,
    bs: int = 128,
    seed: int = 42,
    cache_dir: str | Path | None = None,
    **loader_kwargs: Any,
) -> ModelData:
    """MNIST-1D loaders (4000/1000 split by default), generated offline and cached.

    ``loader_kwargs`` go to :meth:`ModelData.from_tensors`: tensor loaders by
    default, ``loader="torch"`` (or ``num_workers > 0``) for DataLoaders.
    """
    x_trn, y_trn, x_val, y_val = mnist1d_arrays(n_train, n_valid, seed, cache_dir)
    return ModelData.from_tensors(torch.from_numpy(x_trn), torch.from_numpy(y_trn),
                                  torch.from_numpy(x_val), torch.from_numpy(y_val), bs=bs, **loader_kwargs)


def _mnist1d_args(num_samples: int, seed: int) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by mnist1d's download path, which clrfit never takes
    # make_dataset draws num_samples // 10 samples of each digit: round up so both splits fill.
    args.update(num_samples=-(-num_samples // 10) * 10, seed=seed, train_split=1.0)
    return args


def _generate_mnist1d(args: dict[str, Any], n_train: int, n_valid: int):
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global numpy and random generators; give the caller theirs back.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.asarray(data["x"], dtype=np.float32)[:, None, :]
    y = np.asarray(data["y"], dtype=np.int64)
    end = n_train + n_valid
    return x[:n_train], y[:n_train], x[n_train:end], y[n_train:end]


_NPZ_KEYS = ("x_train", "y_train", "x_valid", "y_valid")


def _read_npz(path: Path, n_train: int, n_valid: int):
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = tuple(npz[k] for k in _NPZ_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache entry is regenerated, never trusted
    x_trn, y_trn, x_val, y_val = arrays
    expected = ((n_train, 1, 40), (n_train,), (n_valid, 1, 40), (n_valid,))
    if tuple(a.shape for a in arrays) != expected or x_trn.dtype != np.float32 or y_trn.dtype != np.int64:
        return None
    return arrays


def _write_npz_atomic(path: Path, arrays: Sequence[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(zip(_NPZ_KEYS, arrays)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- image datasets


class ImageArrayDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` and int64 labels; items go through ``transform`` (tensor in, tensor out)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images and labels must have the same length; got {len(images)} and {len(labels)}")
        self.images, self.labels = images, labels.long()
        self.transform = transform
        self.classes = list(classes or [])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), self.labels[i]


def image_transform(mean: Sequence[float], std: Sequence[float], crop: int | None = None,
                    padding: int = 0, flip: bool = False) -> Callable:
    """uint8 CHW tensor -> normalised float32, optionally random-crop (zero padding) and horizontal flip first."""
    from torchvision.transforms import v2

    steps = []
    if crop is not None:
        steps.append(v2.RandomCrop(crop, padding=padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_FILES = _CIFAR10_TRAIN + ["test_batch", "batches.meta"]


def cifar10(path: str | Path, bs: int = 128, download: bool = False, augment: bool = True,
            num_workers: int = 0, loader: str | None = None, **loader_kwargs: Any) -> ModelData:
    """CIFAR-10 from ``path/cifar-10-batches-py`` (the python pickles); random crop 32 pad 4 + flip when ``augment``.

    ``loader="tensor"`` (what the default ``None`` picks): the uint8 images
    stay in memory (``device=`` keeps them on the GPU) and crop, flip and
    normalisation run on whole batches
    (:class:`clrfit.loaders.ImageBatchTransform`). ``loader="torch"`` (what
    ``None`` picks when ``num_workers > 0``): per-sample torchvision transforms
    in a DataLoader. Both draw the same distribution of crops and flips.
    ``data.classes`` holds the class names.
    """
    check_bool("download", download)
    check_bool("augment", augment)
    loader = choose_loader(loader, num_workers)
    root = Path(path)
    folder = root / CIFAR10_FOLDER
    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    missing = [f for f in _CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; pass download=True "
            f"(CLI: --download) to fetch it into {root}, or point path at the folder that holds {CIFAR10_FOLDER}"
        )
    x_trn, y_trn = _read_cifar_batches([folder / f for f in _CIFAR10_TRAIN])
    x_val, y_val = _read_cifar_batches([folder / "test_batch"])
    classes = [_text(c) for c in _unpickle(folder / "batches.meta").get("label_names", [])]
    if loader == "tensor":
        data = _tensor_images(x_trn, y_trn, x_val, y_val, bs, CIFAR10_MEAN, CIFAR10_STD,
                              padding=4 if augment else 0, flip=augment, **loader_kwargs)
    else:
        trn_tfm = image_transform(CIFAR10_MEAN, CIFAR10_STD, crop=32 if augment else None, padding=4, flip=augment)
        val_tfm = image_transform(CIFAR10_MEAN, CIFAR10_STD)
        trn_ds = ImageArrayDataset(x_trn, y_trn, trn_tfm, classes)
        val_ds = ImageArrayDataset(x_val, y_val, val_tfm, classes)
        data = ModelData.from_datasets(trn_ds, val_ds, bs=bs, num_workers=num_workers,
                                       **_dataloader_kwargs("cifar10", loader_kwargs))
    if classes:
        data.classes, data.c = classes, len(classes)
    return data


def _tensor_images(x_trn: torch.Tensor, y_trn: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                   bs: int, mean, std, padding: int = 0, flip: bool = False, **loader_kwargs: Any) -> ModelData:
    """uint8 images in memory behind tensor loaders; transforms run on whole batches, on the data's device."""
    trn_tfm = ImageBatchTransform(mean, std, padding=padding, flip=flip)
    val_tfm = ImageBatchTransform(mean, std)
    return ModelData.from_tensors(x_trn, y_trn, x_val, y_val, bs=bs, loader="tensor", trn_transform=trn_tfm,
                                  val_transform=val_tfm, **loader_kwargs)


_TENSOR_ONLY = ("device", "seed", "trn_transform", "val_transform")


def _dataloader_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for the DataLoader path, refusing the tensor loader's own options by name."""
    for key in _TENSOR_ONLY:
        if key in kwargs:
            raise ValueError(f"{name}: {key}={kwargs[key]!r} applies to loader='tensor' only; the DataLoader path "
                             "(loader='torch', or num_workers > 0 without a loader) copies each batch to the "
                             "training device itself; drop it, or pass loader='tensor' (with num_workers=0)")
    return kwargs


def _unpickle(path: Path) -> dict:
    # The official CIFAR-10 archive is a set of Python pickles; read only files the user put there.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_cifar_batches(paths: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for p in paths:
        batch = _unpickle(p)
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = batch.get("labels", batch.get("fine_labels"))
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(data):
            raise ValueError(f"{p} is not a CIFAR-10 batch (expected 'data' of shape (N, 3072) and N 'labels')")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist(path: str | Path, bs: int = 128, download: bool = False, num_workers: int = 0,
          loader: str | None = None, **loader_kwargs: Any) -> ModelData:
    """MNIST from ``path/MNIST/raw`` (idx files, torchvision's layout), normalised with mean 0.1307, std 0.3081.

    ``loader="tensor"`` (what the default ``None`` picks) keeps the uint8
    images in memory and normalises whole batches; ``loader="torch"`` (what
    ``None`` picks when ``num_workers > 0``) transforms each sample in a
    DataLoader. Both give the same batches.
    """
    return _idx_images("MNIST", path, bs, download, MNIST_MEAN, MNIST_STD, num_workers, loader, **loader_kwargs)


def fashion_mnist(path: str | Path, bs: int = 128, download: bool = False, num_workers: int = 0,
                  loader: str | None = None, **loader_kwargs: Any) -> ModelData:
    """Fashion-MNIST from ``path/FashionMNIST/raw`` (idx files), normalised with mean 0.2860, std 0.3530.

    ``loader`` and ``num_workers`` as in :func:`mnist`.
    """
    return _idx_images("FashionMNIST", path, bs, download, FASHION_MNIST_MEAN, FASHION_MNIST_STD, num_workers,
                       loader, **loader_kwargs)


def _idx_images(name: str, path: str | Path, bs: int, download: bool, mean, std, num_workers: int,
                loader: str | None = None, **loader_kwargs: Any) -> ModelData:
    check_bool("download", download)
    loader = choose_loader(loader, num_workers)
    root = Path(path)
    raw = root / name / "raw"
    if download:
        import torchvision.datasets

        getattr(torchvision.datasets, name)(str(root), train=True, download=True)
    missing = [f for pair in _MNIST_FILES.values() for f in pair
               if not (raw / f).is_file() and not (raw / (f + ".gz")).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found: {raw} lacks {', '.join(missing)}; pass download=True "
            f"(CLI: --download) to fetch it into {root}"
        )
    arrays = []
    for train in (True, False):
        images_file, labels_file = _MNIST_FILES[train]
        images = read_idx(_existing(raw / images_file))
        labels = read_idx(_existing(raw / labels_file))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{raw}: {images_file} / {labels_file} are not matching image and label idx files")
        arrays += [torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64))]
    if loader == "tensor":
        return _tensor_images(*arrays, bs, mean, std, **loader_kwargs)
    tfm = image_transform(mean, std)
    sets = [ImageArrayDataset(arrays[0], arrays[1], tfm), ImageArrayDataset(arrays[2], arrays[3], tfm)]
    return ModelData.from_datasets(sets[0], sets[1], bs=bs, num_workers=num_workers,
                                   **_dataloader_kwargs(name, loader_kwargs))


def _existing(p: Path) -> Path:
    return p if p.is_file() else p.with_name(p.name + ".gz")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format: big-endian magic, dims, then data), plain or ``.gz``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    n_dims = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    offset = 4 + 4 * n_dims
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} items of {dtype} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- dispatcher


def default_data_path() -> Path:
    """Where torchvision datasets live when no path is given: ``<cache dir>/data``."""
    return resolve_cache_dir() / "data"


def get_data(name: str, path: str | Path | None = None, bs: int = 128, **kwargs: Any) -> ModelData:
    """Data by name: ``mnist1d``, ``cifar10``, ``mnist`` or ``fashion-mnist`` (``path`` for the image sets)."""
    check_choice("dataset", name, DATASETS)
    if name == "mnist1d":
        if path is not None:
            kwargs.setdefault("cache_dir", path)
        kwargs.pop("download", None)  # generated locally: nothing to download
        return mnist1d(bs=bs, **kwargs)
    loader = {"cifar10": cifar10, "mnist": mnist, "fashion-mnist": fashion_mnist}[name]
    return loader(path if path is not None else default_data_path(), bs=bs, **kwargs)


def input_shape(name: str) -> tuple[int, ...]:
    """Shape of one input sample of a named dataset."""
    check_choice("dataset", name, DATASETS)
    return {"mnist1d": (1, 40), "cifar10": (3, 32, 32), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28)}[name]
