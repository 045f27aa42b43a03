"""Datasets: MNIST-1D generation and cache, and the image loaders on files the tests write."""
from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clrfit import ModelData
from clrfit import datasets
from clrfit.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    cifar10,
    fashion_mnist,
    get_data,
    mnist,
    mnist1d,
    mnist1d_arrays,
    read_idx,
)
from clrfit.loaders import TensorLoader


# --------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_arrays_shapes_dtypes_and_labels(tmp_path):
    x_trn, y_trn, x_val, y_val = mnist1d_arrays(80, 20, cache_dir=tmp_path)
    assert x_trn.shape == (80, 1, 40) and x_val.shape == (20, 1, 40)
    assert y_trn.shape == (80,) and y_val.shape == (20,)
    assert x_trn.dtype == np.float32 and y_trn.dtype == np.int64
    labels = np.concatenate([y_trn, y_val])
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 10))  # 100 samples, 10 of each digit


def test_mnist1d_matches_the_package_generator(tmp_path):
    """Same values as calling mnist1d's own make_dataset with num_samples = n_train + n_valid."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 100, 7
    state = np.random.get_state()
    ref = make_dataset(args)
    np.random.set_state(state)
    ref_x = np.concatenate([ref["x"], ref["x_test"]]).astype(np.float32)
    ref_y = np.concatenate([ref["y"], ref["y_test"]])
    x_trn, y_trn, x_val, y_val = mnist1d_arrays(70, 30, seed=7, cache_dir=tmp_path)
    np.testing.assert_allclose(np.concatenate([x_trn, x_val])[:, 0], ref_x, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.concatenate([y_trn, y_val]), ref_y)


def test_mnist1d_is_cached_atomically_and_reused(tmp_path, monkeypatch):
    first = mnist1d_arrays(40, 10, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # no temp files left behind

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(datasets, "_generate_mnist1d", boom)
    second = mnist1d_arrays(40, 10, cache_dir=tmp_path)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_mnist1d_cache_is_keyed_by_generation_args(tmp_path):
    a = mnist1d_arrays(40, 10, seed=1, cache_dir=tmp_path)
    b = mnist1d_arrays(40, 10, seed=2, cache_dir=tmp_path)
    c = mnist1d_arrays(30, 20, seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    assert not np.array_equal(a[0], b[0])
    assert c[0].shape == (30, 1, 40) and c[2].shape == (20, 1, 40)


def test_mnist1d_damaged_cache_is_regenerated(tmp_path):
    good = mnist1d_arrays(40, 10, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a zip file")
    again = mnist1d_arrays(40, 10, cache_dir=tmp_path)
    assert np.array_equal(good[0], again[0])
    assert path.stat().st_size > 1000


def test_mnist1d_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRFIT_CACHE_DIR", str(tmp_path / "env-cache"))
    mnist1d_arrays(20, 10)
    assert len(list((tmp_path / "env-cache").glob("mnist1d-*.npz"))) == 1
    assert datasets.resolve_cache_dir("/explicit") == Path("/explicit")


def test_mnist1d_counts_that_are_not_multiples_of_ten(tmp_path):
    x_trn, y_trn, x_val, y_val = mnist1d_arrays(33, 12, cache_dir=tmp_path)
    assert len(x_trn) == len(y_trn) == 33 and len(x_val) == len(y_val) == 12


def test_mnist1d_leaves_global_random_state_alone(tmp_path):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    mnist1d_arrays(20, 10, cache_dir=tmp_path)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_mnist1d_model_data(tmp_path):
    data = mnist1d(50, 20, bs=16, cache_dir=tmp_path)
    assert isinstance(data, ModelData)
    assert len(data.trn_ds) == 50 and len(data.val_ds) == 20 and len(data.trn_dl) == 4
    xb, yb = next(iter(data.trn_dl))
    assert xb.shape == (16, 1, 40) and xb.dtype == torch.float32 and yb.dtype == torch.int64


@pytest.mark.parametrize("kwargs", [dict(n_train=0), dict(n_valid=-1), dict(n_train=1.5), dict(seed=-1)])
def test_mnist1d_bad_arguments(tmp_path, kwargs):
    name = next(iter(kwargs))
    with pytest.raises((ValueError, TypeError), match=name):
        mnist1d_arrays(cache_dir=tmp_path, **kwargs)


# --------------------------------------------------------------------------- CIFAR-10 on disk


def write_fake_cifar10(root: Path, per_batch: int = 3, n_test: int = 4, image: np.ndarray | None = None) -> dict:
    """The real on-disk layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickles).

    Images are random bytes, or every training image is ``image`` (3072 bytes) when given.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if image is not None:
            data[:] = image.reshape(1, 3072)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
                         "filenames": [f"img{i}_{j}.png" for j in range(per_batch)]}, f)
        out["train_x"].append(data)
        out["train_y"] += labels
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": test_labels, "data": test}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072, "num_cases_per_batch": per_batch}, f)
    out["train_x"] = np.concatenate(out["train_x"])
    out.update(test_x=test, test_y=test_labels, names=names)
    return out


def _normalised(raw: np.ndarray, mean, std) -> torch.Tensor:
    """Expected value computed from the raw bytes: (pixel / 255 - mean) / std per channel."""
    x = torch.from_numpy(raw.astype(np.float64) / 255.0)
    m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return ((x - m) / s).float()


def test_cifar10_reads_the_real_format(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    data = cifar10(tmp_path, bs=4, augment=False, loader="torch")
    assert len(data.trn_ds) == 15 and len(data.val_ds) == 4
    assert data.trn_ds.classes == data.classes == fake["names"] and data.c == 10
    x, y = data.trn_ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y) == fake["train_y"][7]
    torch.testing.assert_close(x, _normalised(fake["train_x"][7].reshape(3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
    xv, yv = data.val_ds[2]
    torch.testing.assert_close(xv, _normalised(fake["test_x"][2].reshape(3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))
    assert int(yv) == fake["test_y"][2]
    xb, yb = next(iter(data.val_dl))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == fake["test_y"]


def test_cifar10_augmentation_crops_with_zero_padding_and_flips(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    data = cifar10(tmp_path, bs=4, augment=True, loader="torch")
    clean = _normalised(fake["train_x"][0].reshape(3, 32, 32), CIFAR10_MEAN, CIFAR10_STD)
    pad = _normalised(np.zeros((3, 1, 1)), CIFAR10_MEAN, CIFAR10_STD)  # black padding, normalised
    padded = pad.expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = clean
    torch.manual_seed(0)
    seen_shift = seen_flip = False
    for _ in range(40):
        x, _ = data.trn_ds[0]
        assert x.shape == (3, 32, 32)
        # Every augmented image is some 32x32 window of the padded image, possibly mirrored.
        matches = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)
                   if torch.allclose(x.flip(-1) if f else x, padded[:, i:i + 32, j:j + 32], atol=1e-5)]
        assert matches, "augmented image is not a crop of the zero-padded image"
        seen_shift |= all((i, j) != (4, 4) for i, j, _ in matches)
        seen_flip |= all(f for *_, f in matches)
    assert seen_shift and seen_flip
    xv, _ = data.val_ds[0]  # validation is never augmented
    torch.testing.assert_close(xv, _normalised(fake["test_x"][0].reshape(3, 32, 32), CIFAR10_MEAN, CIFAR10_STD))


def test_cifar10_missing_files_name_the_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "download=True" in msg
    fake_root = tmp_path / "partial"
    write_fake_cifar10(fake_root)
    (fake_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar10(fake_root)


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST idx files


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """idx format: two zero bytes, type code 0x08 (ubyte), number of dims, big-endian sizes, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 6, n_test: int = 5, compress=False) -> dict:
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(raw / name, arr, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_idx_files(tmp_path, compress):
    fake = write_fake_mnist(tmp_path, compress=compress)
    data = mnist(tmp_path, bs=4, loader="torch")
    assert len(data.trn_ds) == 6 and len(data.val_ds) == 5
    x, y = data.trn_ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y) == int(fake["train-labels-idx1-ubyte"][3])
    torch.testing.assert_close(x, _normalised(fake["train-images-idx3-ubyte"][3][None], MNIST_MEAN, MNIST_STD))
    xb, yb = next(iter(data.val_dl))
    assert xb.shape == (5, 1, 28, 28)
    assert yb.tolist() == fake["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_uses_its_folder_and_statistics(tmp_path):
    fake = write_fake_mnist(tmp_path, folder="FashionMNIST")
    data = fashion_mnist(tmp_path, bs=2, loader="torch")
    x, _ = data.val_ds[4]
    torch.testing.assert_close(x, _normalised(fake["t10k-images-idx3-ubyte"][4][None], FASHION_MNIST_MEAN,
                                              FASHION_MNIST_STD))
    with pytest.raises(FileNotFoundError, match="download=True"):
        mnist(tmp_path)  # MNIST's folder is not there


def test_read_idx_rejects_foreign_and_truncated_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="idx"):
        read_idx(bad)
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    good = tmp_path / "good"
    write_idx(good, arr)
    assert np.array_equal(read_idx(good), arr)
    good.write_bytes(good.read_bytes()[:-2])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(good)


# --------------------------------------------------------------------------- dispatcher


def test_get_data_dispatches_by_name(tmp_path):
    write_fake_cifar10(tmp_path / "c")
    data = get_data("cifar10", tmp_path / "c", bs=5, augment=False)
    assert next(iter(data.trn_dl))[0].shape == (5, 3, 32, 32)
    write_fake_mnist(tmp_path / "f", folder="FashionMNIST")
    assert len(get_data("fashion-mnist", tmp_path / "f", bs=2).trn_ds) == 6
    data = get_data("mnist1d", tmp_path / "cache", bs=8, n_train=16, n_valid=10)
    assert len(data.trn_dl) == 2 and len(list(tmp_path.joinpath("cache").glob("*.npz"))) == 1
    with pytest.raises(ValueError, match="dataset"):
        get_data("imagenet")


# --------------------------------------------------------------------------- image sets behind tensor loaders


def test_cifar10_tensor_loader_normalises_and_augments_whole_batches(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    data = cifar10(tmp_path, bs=4, augment=True)  # the tensor loader is the default
    assert isinstance(data.trn_dl, TensorLoader) and data.trn_ds.tensors[0].dtype == torch.uint8
    assert data.classes == fake["names"] and data.c == 10
    xv, yv = next(iter(data.val_dl))  # validation: normalised, never augmented, in order
    expected = torch.stack([_normalised(fake["test_x"][i].reshape(3, 32, 32), CIFAR10_MEAN, CIFAR10_STD)
                            for i in range(4)])
    torch.testing.assert_close(xv, expected)
    assert yv.tolist() == fake["test_y"]
    pad = _normalised(np.zeros((3, 1, 1)), CIFAR10_MEAN, CIFAR10_STD)
    x_all = data.trn_ds.tensors[0]
    order = list(data.trn_dl.sampler)  # the next epoch's sample ids
    images = torch.cat([xb for xb, _ in data.trn_dl])
    shifted = flipped = 0
    for k, i in enumerate(order):
        clean = _normalised(x_all[i].numpy(), CIFAR10_MEAN, CIFAR10_STD)
        padded = pad.expand(3, 40, 40).clone()
        padded[:, 4:36, 4:36] = clean
        matches = [(a, b, f) for a in range(9) for b in range(9) for f in (False, True)
                   if torch.allclose(images[k].flip(-1) if f else images[k], padded[:, a:a + 32, b:b + 32], atol=1e-5)]
        assert matches, k
        shifted += all((a, b) != (4, 4) for a, b, _ in matches)
        flipped += all(f for *_, f in matches)
    assert shifted > 0 and flipped > 0


def test_mnist_tensor_loader_matches_the_dataloader_path(tmp_path):
    write_fake_mnist(tmp_path)
    by_tensor = mnist(tmp_path, bs=3, shuffle=False)
    by_torch = mnist(tmp_path, bs=3, shuffle=False, loader="torch")
    assert isinstance(by_tensor.trn_dl, TensorLoader) and isinstance(by_torch.trn_dl, DataLoader)
    for (xa, ya), (xb, yb) in zip(list(by_tensor.trn_dl) + list(by_tensor.val_dl), list(by_torch.trn_dl) + list(by_torch.val_dl)):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb)
    assert len(by_tensor.trn_dl) == len(by_torch.trn_dl) == 2


def test_mnist1d_uses_tensor_loaders_unless_told_otherwise(tmp_path):
    assert isinstance(mnist1d(40, 20, bs=8, cache_dir=tmp_path).trn_dl, TensorLoader)
    assert isinstance(mnist1d(40, 20, bs=8, cache_dir=tmp_path, loader="torch").trn_dl, DataLoader)
    assert isinstance(mnist1d(40, 20, bs=8, cache_dir=tmp_path, num_workers=1).trn_dl, DataLoader)


def _position_code() -> np.ndarray:
    """A CIFAR image whose pixels say where they are: channel 0 = 1 + 7 * row, channel 1 = 1 + 7 * column."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([1 + 7 * rows, 1 + 7 * cols, np.full((32, 32), 128)]).astype(np.uint8)


def _crop_and_flip(images: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(row offset, column offset, flipped) of augmented position-coded images (offsets 0..8 into the padded image)."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    raw = (images * std + mean).mul(255).round().long()
    # Pixel (16, 16) of a window at offset (a, b) of the image padded by 4 is never padding: it shows
    # image row 12 + a and column 12 + b, or column 11 + b when the window is mirrored (it reads column 15).
    row = (raw[:, 0, 16, 16] - 1) // 7
    col = (raw[:, 1, 16, 16] - 1) // 7
    flipped = raw[:, 1, 16, 17] < raw[:, 1, 16, 16]
    return [(int(r) - 12, int(c) - (11 if f else 12), bool(f)) for r, c, f in zip(row, col, flipped)]


def test_cifar10_augmentation_has_the_same_statistics_on_both_loaders(tmp_path):
    """Crop offsets uniform over 0..8 in each direction and flips with probability 1/2, on both paths alike."""
    from scipy.stats import chi2_contingency, chisquare

    write_fake_cifar10(tmp_path, per_batch=40, image=_position_code())
    torch.manual_seed(0)
    draws = {}
    for loader in ("tensor", "torch"):
        data = cifar10(tmp_path, bs=50, loader=loader)
        draws[loader] = [c for _ in range(20) for xb, _ in data.trn_dl for c in _crop_and_flip(xb)]
    for loader, choices in draws.items():
        assert len(choices) == 20 * 200
        for k in (0, 1):
            counts = np.bincount([c[k] for c in choices], minlength=9)
            assert len(counts) == 9 and counts.min() > 0, (loader, k, counts)
            assert chisquare(counts).pvalue > 1e-3, (loader, k, counts)
        flips = sum(c[2] for c in choices)
        assert abs(flips - len(choices) / 2) < 4 * (len(choices) / 4) ** 0.5, (loader, flips)
    for k in (0, 1):  # the two paths' offset histograms agree with each other too
        table = [np.bincount([c[k] for c in draws[p]], minlength=9) for p in draws]
        assert chi2_contingency(table).pvalue > 1e-3, table
    # The decoding reads back exactly the choices the tensor loader drew (order, then crops and flips).
    data = cifar10(tmp_path, bs=50, seed=5)
    g = torch.Generator().manual_seed(5)
    torch.randperm(200, generator=g)
    drawn = data.trn_dl.transform.draw(200, g)
    decoded = [c for xb, _ in data.trn_dl for c in _crop_and_flip(xb)]
    assert decoded == [(int(a), int(b), bool(f)) for a, b, f in drawn]


def test_cifar10_both_loaders_normalise_alike(tmp_path):
    """Without augmentation the tensor and torch paths give the same tensors, batch for batch."""
    write_fake_cifar10(tmp_path)
    by_tensor = cifar10(tmp_path, bs=4, augment=False, shuffle=False)
    by_torch = cifar10(tmp_path, bs=4, augment=False, shuffle=False, loader="torch")
    pairs = list(zip(list(by_tensor.trn_dl) + list(by_tensor.val_dl), list(by_torch.trn_dl) + list(by_torch.val_dl)))
    assert len(pairs) == len(by_torch.trn_dl) + len(by_torch.val_dl) == 5
    for (xa, ya), (xb, yb) in pairs:
        assert xa.dtype == xb.dtype == torch.float32 and xa.is_contiguous()
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
        assert torch.equal(ya, yb)


@pytest.mark.parametrize("reader", ["cifar10", "mnist", "fashion_mnist"])
def test_image_sets_pick_the_loader_from_loader_and_num_workers(tmp_path, reader):
    if reader == "cifar10":
        write_fake_cifar10(tmp_path)
    else:
        write_fake_mnist(tmp_path, folder="MNIST" if reader == "mnist" else "FashionMNIST")
    read = getattr(datasets, reader)
    assert isinstance(read(tmp_path, bs=2).trn_dl, TensorLoader)
    assert isinstance(read(tmp_path, bs=2, loader="tensor").val_dl, TensorLoader)
    assert isinstance(read(tmp_path, bs=2, loader="torch").trn_dl, DataLoader)
    workers = read(tmp_path, bs=2, num_workers=1)  # workers exist only for a DataLoader: that path
    assert isinstance(workers.trn_dl, DataLoader) and workers.trn_dl.num_workers == 1
    with pytest.raises(ValueError, match=r"num_workers=2 with loader='tensor'.*loader='torch'"):
        read(tmp_path, loader="tensor", num_workers=2)
    with pytest.raises(ValueError, match=r"loader must be one of 'tensor', 'torch'.*got 'gpu'"):
        read(tmp_path, loader="gpu")
    with pytest.raises(ValueError, match="num_workers"):
        read(tmp_path, num_workers=-1)
    with pytest.raises(ValueError, match=r"device='cpu' applies to loader='tensor' only"):
        read(tmp_path, loader="torch", device="cpu")
    with pytest.raises(ValueError, match=r"seed=3 applies to loader='tensor' only"):
        read(tmp_path, num_workers=1, seed=3)
    with pytest.raises(TypeError, match="pin_memory"):
        read(tmp_path, pin_memory=True)  # a DataLoader option given to the tensor loader
    with pytest.raises(ValueError, match=r"device='cuda:9'.*available: cpu"):
        read(tmp_path, device="cuda:9")
    with pytest.raises(ValueError, match=r"bs=100 with drop_last=True leaves no training batch"):
        read(tmp_path, bs=100, drop_last=True)
