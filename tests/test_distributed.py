"""Distributed data parallel under torchrun, data sharding, device layout and the GPU hot path."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from clrfit import Callback, Learner, ModelData, Recorder
from clrfit.distributed import (
    RENDEZVOUS_VARIABLES,
    DistributedContext,
    ShardSampler,
    from_environment,
    shard_eval_loader,
    shard_train_loader,
    uses_channels_last,
)

from conftest import make_learner
from torchrun import torchrun_command

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TORCHRUN_VARIABLES = (*RENDEZVOUS_VARIABLES, "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "TORCHELASTIC_RUN_ID")


@pytest.fixture
def torchrun_env(monkeypatch):
    """A complete torchrun-like environment for a 2-process run; tests delete or spoil entries."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    values = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


# ---------------------------------------------------------------------- environment


def test_single_process_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ctx = from_environment()
    assert (ctx.enabled, ctx.is_main, ctx.world_size, ctx.rank) == (False, True, 1, 0)
    model = nn.Linear(2, 2)
    assert ctx.wrap(model, torch.device("cpu")) is model
    assert ctx.any_rank(True) is True and ctx.any_rank(False) is False
    t = torch.ones(3)
    assert ctx.all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))
    learn = make_learner()
    assert learn.is_main_process and learn.train_model is learn.model


@pytest.mark.parametrize("missing", RENDEZVOUS_VARIABLES)
def test_missing_rendezvous_variable_is_named(torchrun_env, missing):
    torchrun_env.delenv(missing)
    with pytest.raises(ValueError, match=rf"WORLD_SIZE=2 .*{missing} are not set; launch with torchrun"):
        from_environment()
    # The learner reports it at construction: nothing has trained yet.
    with pytest.raises(ValueError, match=missing):
        make_learner()


@pytest.mark.parametrize("name, value, message", [
    ("RANK", "x", r"RANK must be an integer >= 0; got 'x'"),
    ("RANK", "2", r"RANK must be in \[0, WORLD_SIZE=2\); got RANK=2"),
    ("LOCAL_RANK", "-1", r"LOCAL_RANK must be an integer >= 0; got -1"),
    ("WORLD_SIZE", "two", r"WORLD_SIZE must be an integer >= 1; got 'two'"),
])
def test_bad_environment_values(torchrun_env, name, value, message):
    torchrun_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        from_environment()


def test_nccl_with_a_cpu_device_is_a_clear_error():
    ctx = DistributedContext(world_size=2, rank=0, backend="nccl")
    with pytest.raises(ValueError, match=r"device='cpu' under torchrun, but the process group uses NCCL"):
        ctx.wrap(nn.Linear(2, 2), torch.device("cpu"))


# ---------------------------------------------------------------------- sharding


def _tensor_loader(n: int, bs: int, **kwargs) -> DataLoader:
    ds = TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))
    return DataLoader(ds, batch_size=bs, **kwargs)


def test_shard_sampler_splits_without_padding():
    n, world = 10, 3
    shards = [list(ShardSampler(n, world, r)) for r in range(world)]
    assert [len(ShardSampler(n, world, r)) for r in range(world)] == [4, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(n))


def test_train_shards_compose_the_big_batch():
    n, world, bs = 48, 2, 4
    single = [yb.tolist() for _, yb in _tensor_loader(n, bs * world)]
    ranks = [[yb.tolist() for _, yb in shard_train_loader(_tensor_loader(n, bs), world, r)] for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for j, big in enumerate(single):
        assert sorted(ranks[0][j] + ranks[1][j]) == big


def test_shuffled_train_shards_are_disjoint_and_differ_by_epoch():
    n, world = 20, 2
    loaders = [shard_train_loader(_tensor_loader(n, 5, shuffle=True), world, r) for r in range(world)]
    assert all(isinstance(dl.sampler, DistributedSampler) and dl.sampler.shuffle for dl in loaders)
    orders = []
    for epoch in (0, 1):
        seen = []
        state = torch.get_rng_state()
        for dl in loaders:  # ranks start each epoch from the same RNG state (they are seeded alike)
            torch.set_rng_state(state)
            dl.sampler.set_epoch(epoch)
            seen.append([i for _, yb in dl for i in yb.tolist()])
        assert sorted(seen[0] + seen[1]) == list(range(n))
        orders.append(seen[0])
    assert orders[0] != orders[1]


def test_eval_shards_cover_every_sample_once():
    n, world = 21, 2
    per_rank = [[i for _, yb in shard_eval_loader(_tensor_loader(n, 4), world, r) for i in yb.tolist()] for r in range(world)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(n))
    assert [len(p) for p in per_rank] == [11, 10]


def test_loaders_that_cannot_be_sharded_are_errors():
    ds = TensorDataset(torch.zeros(8, 1), torch.zeros(8))
    weighted = DataLoader(ds, batch_size=2, sampler=WeightedRandomSampler([1.0] * 8, 8))
    with pytest.raises(ValueError, match=r"trn_dl: cannot shard a loader with sampler WeightedRandomSampler"):
        shard_train_loader(weighted, 2, 0)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(torch.zeros(1), 0)])

    with pytest.raises(ValueError, match=r"val_dl: an IterableDataset cannot be sharded"):
        shard_eval_loader(DataLoader(Stream(), batch_size=1), 2, 0)
    already = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=2, rank=0))
    assert shard_train_loader(already, 2, 0) is already


def test_shard_data_keeps_the_users_modeldata():
    data = ModelData(_tensor_loader(12, 2, shuffle=True), _tensor_loader(5, 2))
    ctx = DistributedContext(world_size=3, rank=2)
    sharded = ctx.shard_data(data)
    assert sharded is not data and isinstance(data.trn_dl.sampler, torch.utils.data.RandomSampler)
    assert isinstance(sharded.trn_dl.sampler, DistributedSampler) and len(sharded.trn_dl) == 2
    assert [int(i) for _, yb in sharded.val_dl for i in yb] == [2]
    assert DistributedContext().shard_data(data) is data


# ---------------------------------------------------------------------- torchrun end to end


def _load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", ROOT / "tests" / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_two_processes_match_a_single_process(tmp_path, monkeypatch):
    world, bs = 2, 4
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = torchrun_command(world, ROOT / "tests" / "ddp_worker.py", str(tmp_path), str(bs))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]

    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    worker = _load_worker()
    runs = (("plain", world * bs, {}), ("accumulate", 2 * world * bs, {}), ("compiled", world * bs, {}))
    for key, global_bs, kwargs in runs:
        single = worker.run(global_bs, **kwargs)
        r0, r1 = ranks[0][key], ranks[1][key]
        assert r0["nb"] == r1["nb"] == single["nb"]
        assert r0["lrs"] == single["lrs"] and r0["moms"] == single["moms"] and r1["lrs"] == single["lrs"]
        assert r0["iterations"] == single["iterations"]
        for pname, value in single["state"].items():
            torch.testing.assert_close(r0["state"][pname], value, rtol=1e-5, atol=1e-6)
            assert torch.equal(r0["state"][pname], r1["state"][pname])
        # Validation: shards of 11 and 10 samples, reduced to the exact full-set values on every rank.
        assert (r0["n_val_local"], r1["n_val_local"]) == (11, 10)
        assert r0["val_losses"] == r1["val_losses"] == pytest.approx(single["val_losses"], rel=1e-6)
        assert r0["metrics"] == r1["metrics"]
        assert torch.tensor(r0["metrics"]).flatten().tolist() == pytest.approx(
            torch.tensor(single["metrics"]).flatten().tolist(), abs=1e-6)
        assert (r0["is_main"], r1["is_main"]) == (True, False)
        assert r0["train_model"] == "DistributedDataParallel"
        assert r0["compiled"] is (key == "compiled")  # torch.compile(DDP(model))
        # any_rank: rank 1 alone raised the flag, and both ranks agree.
        assert r0["any_rank"] is r1["any_rank"] is True
        assert r0["none_rank"] is r1["none_rank"] is False
    # lr_find2: every rank stops at the same step (the losses are reduced before the decision), like one process.
    f0, f1, single = ranks[0]["finder"], ranks[1]["finder"], worker.run_finder(world * bs)
    assert f0["diverged"] and f1["diverged"] and single["diverged"]
    assert f0["iterations"] == f1["iterations"] == single["iterations"] and len(f0["iterations"]) < 40
    assert f0["lrs"] == single["lrs"]
    assert f0["raw_losses"] == f1["raw_losses"] == pytest.approx(single["raw_losses"], rel=1e-4)  # rounding grows too
    assert f0["val_losses"] == pytest.approx(single["val_losses"], rel=1e-4)  # rounding grows as it diverges
    assert f0["restored"] and f1["restored"]
    # BatchNorm: each rank normalises its own batch, but validation (and the saved model) use rank 0's buffers.
    bn0, bn1 = ranks[0]["batchnorm"]["state"], ranks[1]["batchnorm"]["state"]
    assert all(torch.equal(bn0[k], bn1[k]) for k in bn0)
    assert ranks[0]["batchnorm"]["val_losses"] == ranks[1]["batchnorm"]["val_losses"]


# ---------------------------------------------------------------------- device layout and host syncs


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.body(x)


def _image_data(n: int = 64, bs: int = 16) -> ModelData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ModelData.from_tensors(x[:48], y[:48], x[48:], y[48:], bs=bs)


def test_channels_last_only_for_conv_nets_on_cuda():
    assert uses_channels_last(ConvNet(), torch.device("cuda", 0))
    assert not uses_channels_last(ConvNet(), torch.device("cpu"))
    assert not uses_channels_last(nn.Linear(3, 3), torch.device("cuda", 0))
    learn = Learner(ConvNet(), _image_data(), progress=False, table=False, device="cpu")
    assert not learn.channels_last


@needs_cuda
def test_cuda_conv_net_trains_in_channels_last():
    seen = {}

    class Probe(Callback):
        def on_loss(self):
            seen["input"] = self.learn.xb.is_contiguous(memory_format=torch.channels_last)

    learn = Learner(ConvNet(), _image_data(), progress=False, table=False, device="cuda")
    learn.fit(0.1, 1, callbacks=[Probe()])
    assert learn.channels_last and seen["input"]
    assert learn.model.body[0].weight.is_contiguous(memory_format=torch.channels_last)


class SyncWindow(Callback):
    """Turns CUDA sync debugging on for the training steps of each epoch (off for validation)."""

    order = -100

    def on_epoch_begin(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")

    def on_validate_begin(self):
        torch.cuda.set_sync_debug_mode("default")

    def on_train_end(self):
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("opts", [
    dict(precision="bf16"),
    dict(fp16=True, opt_fn=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True)),
    dict(),
])
def test_gpu_epoch_has_no_host_sync(monkeypatch, opts):
    # Fewer steps per epoch than Recorder.flush_every: losses stay on the GPU until epoch end.
    monkeypatch.setattr(Recorder, "flush_every", 32)
    learn = Learner(ConvNet(), _image_data(n=64 + 16, bs=8), progress=True, table=True, device="cuda", **opts)
    learn.fit(0.1, 1, callbacks=[SyncWindow()])  # warm-up: cuDNN autotuning, allocator growth
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(0.1, 2, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85), accumulate=2,
                  callbacks=[SyncWindow()])
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert learn.nb < Recorder.flush_every
    assert syncs == []
    assert len(learn.sched.raw_losses) == 2 * learn.nb
