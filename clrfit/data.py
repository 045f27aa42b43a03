"""ModelData: a training and a validation loader."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .validation import check_bool, check_int


class ModelData:
    """A training loader and a validation loader (``trn_dl``, ``val_dl``)."""

    def __init__(self, trn_dl: DataLoader, val_dl: DataLoader | None, test_dl: DataLoader | None = None) -> None:
        if not isinstance(trn_dl, DataLoader):
            raise TypeError(f"trn_dl must be a torch DataLoader; got {type(trn_dl).__name__}")
        if val_dl is not None and not isinstance(val_dl, DataLoader):
            raise TypeError(f"val_dl must be a torch DataLoader or None; got {type(val_dl).__name__}")
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
        **kwargs: Any,
    ) -> "ModelData":
        """Loaders over in-memory tensors (or numpy arrays)."""
        trn_ds = TensorDataset(*_tensors("x_trn", x_trn, "y_trn", y_trn))
        val_ds = None
        if (x_val is None) != (y_val is None):
            raise ValueError("x_val and y_val: pass both or neither")
        if x_val is not None:
            val_ds = TensorDataset(*_tensors("x_val", x_val, "y_val", y_val))
        return cls.from_datasets(trn_ds, val_ds, bs=bs, **kwargs)

    def __repr__(self) -> str:
        n_val = 0 if self.val_dl is None else len(self.val_dl.dataset)
        return f"ModelData(train={len(self.trn_dl.dataset)} samples / {len(self.trn_dl)} batches, valid={n_val} samples)"


def _tensors(x_name: str, x: Any, y_name: str, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    if xt.ndim == 0 or yt.ndim == 0:
        raise ValueError(f"{x_name} and {y_name} must have a leading sample dimension; got shapes {tuple(xt.shape)} and {tuple(yt.shape)}")
    if len(xt) != len(yt):
        raise ValueError(f"{x_name} and {y_name} must have the same number of samples; got {len(xt)} and {len(yt)}")
    if len(xt) == 0:
        raise ValueError(f"{x_name} is empty (0 samples); a loader needs at least one sample")
    if xt.is_floating_point() and xt.dtype == torch.float64:
        xt = xt.float()
    return xt, yt


def _check_not_empty(name: str, dl: DataLoader) -> None:
    try:
        n = len(dl)
    except TypeError:
        return  # an iterable dataset without a length: checked when iterated
    if n == 0:
        raise ValueError(f"{name} is empty (0 batches); it needs at least one batch (check the dataset and drop_last)")
