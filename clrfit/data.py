"""ModelData: a training and a validation loader.

A loader is a torch ``DataLoader`` or a :class:`clrfit.loaders.TensorLoader`
(in-memory tensors sliced a whole batch at a time). ``from_tensors`` builds
tensor loaders by default; ``loader="torch"`` (or ``num_workers > 0`` without
a ``loader``) gives the ``TensorDataset`` + ``DataLoader`` pair instead.
``docs/data.md`` says when each fits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .loaders import ImageBatchTransform, TensorLoader, check_device, choose_loader
from .validation import check_bool, check_int

#: What ModelData accepts as a loader.
Loader = Union[DataLoader, TensorLoader]


class ModelData:
    """A training loader and a validation loader (``trn_dl``, ``val_dl``).

    Args:
        trn_dl: the training batches, a torch ``DataLoader`` or a :class:`clrfit.loaders.TensorLoader` (not empty).
        val_dl: the validation batches (same kinds, not empty), or None.
        test_dl: an optional loader kept as ``data.test_dl`` for predictions (``learn.get_preds(dl=data.test_dl)``).
    """

    def __init__(self, trn_dl: Loader, val_dl: Loader | None, test_dl: Loader | None = None) -> None:
        if not isinstance(trn_dl, (DataLoader, TensorLoader)):
            raise TypeError(f"trn_dl must be a torch DataLoader or a clrfit TensorLoader; got {type(trn_dl).__name__}")
        if val_dl is not None and not isinstance(val_dl, (DataLoader, TensorLoader)):
            raise TypeError(f"val_dl must be a torch DataLoader, a clrfit TensorLoader or None; got {type(val_dl).__name__}")
        _check_not_empty("trn_dl", trn_dl)
        if val_dl is not None:
            _check_not_empty("val_dl", val_dl)
        self.trn_dl, self.val_dl, self.test_dl = trn_dl, val_dl, test_dl

    @property
    def trn_ds(self) -> Dataset:
        """The training dataset."""
        return self.trn_dl.dataset

    @property
    def val_ds(self) -> Dataset | None:
        """The validation dataset."""
        return None if self.val_dl is None else self.val_dl.dataset

    @property
    def bs(self) -> int | None:
        """Training batch size."""
        return self.trn_dl.batch_size

    @classmethod
    def from_datasets(
        cls,
        trn_ds: Dataset,
        val_ds: Dataset | None,
        bs: int = 64,
        val_bs: int | None = None,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        **loader_kwargs: Any,
    ) -> "ModelData":
        """Loaders over two datasets; validation batches are twice as large by default."""
        bs = check_int("bs", bs, minimum=1)
        val_bs = bs * 2 if val_bs is None else check_int("val_bs", val_bs, minimum=1)
        num_workers = check_int("num_workers", num_workers, minimum=0)
        check_bool("shuffle", shuffle)
        check_bool("drop_last", drop_last)
        extra = dict(num_workers=num_workers, pin_memory=torch.cuda.is_available(), **loader_kwargs)
        if num_workers > 0:
            extra.setdefault("persistent_workers", True)
        trn_dl = DataLoader(trn_ds, batch_size=bs, shuffle=shuffle, drop_last=drop_last, **extra)
        val_dl = None if val_ds is None else DataLoader(val_ds, batch_size=val_bs, shuffle=False, **extra)
        return cls(trn_dl, val_dl)

    @classmethod
    def from_tensors(
        cls,
        x_trn: Any,
        y_trn: Any,
        x_val: Any = None,
        y_val: Any = None,
        bs: int = 64,
        loader: str | None = None,
        device: str | torch.device | None = None,
        seed: int | None = None,
        trn_transform: ImageBatchTransform | None = None,
        val_transform: ImageBatchTransform | None = None,
        **kwargs: Any,
    ) -> "ModelData":
        """Loaders over in-memory tensors (or numpy arrays): :class:`TensorLoader` s, or ``loader="torch"`` DataLoaders.

        ``loader="tensor"`` (what the default ``None`` picks): batches are
        slices of the tensors, kept on ``device`` (e.g. ``"cuda"``: no
        host-to-device copy per step), shuffled
        from the loader's generator (``seed=None``: reseeded from the global
        torch RNG every epoch, like a DataLoader; ``seed=s``: one fixed
        stream); ``trn_transform`` / ``val_transform`` run on whole batches.
        Accepts ``val_bs``, ``shuffle``, ``drop_last`` and ``generator`` (the
        training loader shuffles from it). ``loader="torch"`` (what ``None``
        picks when ``num_workers > 0`` asks for worker processes):
        ``TensorDataset`` + ``DataLoader`` as :meth:`from_datasets` builds them
        (``num_workers`` and other DataLoader options apply there).

        Args:
            x_trn: training inputs, a tensor or numpy array with samples along the first dimension.
            y_trn: training targets, as many as ``x_trn`` has samples.
            x_val: validation inputs (pass with ``y_val``), or None for no validation set.
            y_val: validation targets, as many as ``x_val`` has samples, or None.
            bs: batch size per process (an integer >= 1).
            loader: ``"tensor"`` (whole-batch slices), ``"torch"`` (a DataLoader), or None: ``"tensor"``, or ``"torch"`` when ``num_workers > 0``.
            device: with ``loader="tensor"``, where the tensors are kept (``"cpu"``, ``"cuda"``, ...); default: where they are.
            seed: with ``loader="tensor"``, a fixed shuffling seed (an integer), or None to draw from the global RNG each epoch.
            trn_transform: with ``loader="tensor"``, a :class:`clrfit.loaders.ImageBatchTransform` for training batches.
            val_transform: the same for validation batches.
            **kwargs: ``val_bs``, ``shuffle``, ``drop_last``, ``generator``; with ``loader="torch"`` also ``num_workers`` and other DataLoader options.
        """
        loader = choose_loader(loader, kwargs.get("num_workers", 0))
        x_trn, y_trn = _tensors("x_trn", x_trn, "y_trn", y_trn)
        if (x_val is None) != (y_val is None):
            raise ValueError("x_val and y_val: pass both or neither")
        val = None if x_val is None else _tensors("x_val", x_val, "y_val", y_val)
        if loader == "torch":
            for name, value in (("device", device), ("seed", seed), ("trn_transform", trn_transform),
                                ("val_transform", val_transform)):
                if value is not None:
                    raise ValueError(f"{name}={value!r} applies to loader='tensor' only; the DataLoader path "
                                     "(loader='torch', or num_workers > 0 without a loader) copies each batch to "
                                     "the training device itself")
            trn_ds = TensorDataset(x_trn, y_trn)
            val_ds = None if val is None else TensorDataset(*val)
            return cls.from_datasets(trn_ds, val_ds, bs=bs, **kwargs)
        bs = check_int("bs", bs, minimum=1)
        val_bs = kwargs.pop("val_bs", None)
        val_bs = bs * 2 if val_bs is None else check_int("val_bs", val_bs, minimum=1)
        shuffle = check_bool("shuffle", kwargs.pop("shuffle", True))
        drop_last = check_bool("drop_last", kwargs.pop("drop_last", False))
        generator = kwargs.pop("generator", None)
        kwargs.pop("num_workers", None)  # 0 here: choose_loader sends workers to the DataLoader path
        if kwargs:
            raise TypeError(f"from_tensors got DataLoader option(s) {', '.join(sorted(kwargs))}, which apply to "
                            "loader='torch' only; the tensor loader takes bs, val_bs, shuffle, drop_last, seed, "
                            "generator, device, trn_transform and val_transform")
        if device is not None:
            device = check_device("device", device)
        if drop_last and len(x_trn) < bs:
            raise ValueError(f"bs={bs} with drop_last=True leaves no training batch of the {len(x_trn)} samples; "
                             f"pass bs <= {len(x_trn)} or drop_last=False")
        trn_dl = TensorLoader(x_trn, y_trn, batch_size=bs, shuffle=shuffle, drop_last=drop_last, seed=seed,
                              device=device, transform=trn_transform, generator=generator)
        val_dl = None if val is None else TensorLoader(*val, batch_size=val_bs, device=device, transform=val_transform)
        return cls(trn_dl, val_dl)

    def to(self, device: str | torch.device) -> "ModelData":
        """Keep the tensor loaders' data on ``device`` (in place; returns ``self``).

        DataLoaders are left as they are: the learner copies each of their
        batches to its device (pinned memory and non-blocking copies on CUDA).
        """
        device = check_device("device", device)
        for dl in (self.trn_dl, self.val_dl, self.test_dl):
            if isinstance(dl, TensorLoader):
                dl.to(device)
        return self

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        train: str = "train",
        valid: str | None = "valid",
        size: int = 224,
        bs: int = 64,
        augment: bool = True,
        num_workers: int = 0,
        valid_pct: float | None = None,
        seed: int = 0,
        normalize: str | None = "data",
        val_bs: int | None = None,
    ) -> "ModelData":
        """Images in ImageFolder layout (``path/train/<class>/*``, ``path/valid/<class>/*``); see :mod:`clrfit.vision`."""
        from .vision import image_folder_data  # torchvision and PIL load only for image files

        return image_folder_data(path, train=train, valid=valid, size=size, bs=bs, augment=augment, num_workers=num_workers,
                                 valid_pct=valid_pct, seed=seed, normalize=normalize, val_bs=val_bs)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        csv_file: str | Path,
        folder: str = ".",
        size: int = 224,
        bs: int = 64,
        augment: bool = True,
        num_workers: int = 0,
        valid_pct: float = 0.2,
        seed: int = 0,
        normalize: str | None = "data",
        val_bs: int | None = None,
    ) -> "ModelData":
        """Images listed in a labels CSV (``filename,label``), split by ``valid_pct``; see :mod:`clrfit.vision`."""
        from .vision import csv_image_data  # torchvision and PIL load only for image files

        return csv_image_data(path, csv_file, folder=folder, size=size, bs=bs, augment=augment, num_workers=num_workers,
                              valid_pct=valid_pct, seed=seed, normalize=normalize, val_bs=val_bs)

    def __repr__(self) -> str:
        n_val = 0 if self.val_dl is None else len(self.val_dl.dataset)
        return f"ModelData(train={len(self.trn_dl.dataset)} samples / {len(self.trn_dl)} batches, valid={n_val} samples)"


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Dataset):
        raise TypeError(f"{name} must be a tensor or numpy array; got a {type(value).__name__} (a Dataset): pass "
                        "datasets to ModelData.from_datasets, or their tensors here")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, a numpy array or a rectangular list of numbers; got a "
                        f"{type(value).__name__} that torch.as_tensor cannot take ({err})") from None


def _tensors(x_name: str, x: Any, y_name: str, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = _as_tensor(x_name, x), _as_tensor(y_name, y)
    if xt.ndim == 0 or yt.ndim == 0:
        raise ValueError(f"{x_name} and {y_name} must have a leading sample dimension; got shapes {tuple(xt.shape)} and {tuple(yt.shape)}")
    if len(xt) != len(yt):
        raise ValueError(f"{x_name} and {y_name} must have the same number of samples; got {len(xt)} and {len(yt)}")
    if len(xt) == 0:
        raise ValueError(f"{x_name} is empty (0 samples); a loader needs at least one sample")
    if xt.is_floating_point() and xt.dtype == torch.float64:
        xt = xt.float()
    return xt, yt


def _check_not_empty(name: str, dl: Loader) -> None:
    try:
        n = len(dl)
    except TypeError:
        return  # an iterable dataset without a length: checked when iterated
    if n == 0:
        raise ValueError(f"{name} is empty (0 batches); it needs at least one batch (check the dataset and drop_last)")
