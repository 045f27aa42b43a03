"""TensorLoader, whole-batch image transforms, and the world-size-invariant data order (in process and under torchrun)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clrfit import Learner, ModelData
from clrfit.distributed import DistributedContext, ShardSampler, shard_eval_loader, shard_train_loader
from clrfit.loaders import GlobalOrderSampler, ImageBatchTransform, TensorLoader, global_batch_spans

from conftest import InterruptAt, make_model
from torchrun import torchrun_command

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def ids_loader(n: int = 10, bs: int = 4, **kwargs) -> TensorLoader:
    """x = the sample ids as floats, y = the ids."""
    return TensorLoader(torch.arange(n).float().unsqueeze(1), torch.arange(n), batch_size=bs, **kwargs)


def epoch_ids(dl) -> list[list[int]]:
    return [yb.tolist() for *_, yb in dl]


# ---------------------------------------------------------------------- TensorLoader


def test_shuffled_epochs_are_permutations_from_the_seeded_generator():
    dl = ids_loader(10, 4, shuffle=True, seed=7)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        expected = torch.randperm(10, generator=g).tolist()
        batches = epoch_ids(dl)
        assert [len(b) for b in batches] == [4, 4, 2] and len(dl) == 3
        assert sum(batches, []) == expected
    assert epoch_ids(ids_loader(10, 4, shuffle=True, seed=7)) != epoch_ids(ids_loader(10, 4, shuffle=True, seed=8))


def test_seed_none_follows_torch_manual_seed_like_a_dataloader():
    dl = ids_loader(20, 5, shuffle=True)  # built once, reused
    torch.manual_seed(3)
    a = epoch_ids(dl)
    torch.manual_seed(3)
    b = epoch_ids(dl)
    torch.manual_seed(4)
    c = epoch_ids(dl)
    assert a == b and a != c
    fixed = ids_loader(20, 5, shuffle=True, seed=3)
    torch.manual_seed(0)
    first = epoch_ids(fixed)
    torch.manual_seed(0)
    assert epoch_ids(fixed) != first  # a seeded loader's stream runs on, whatever the global RNG does


def test_unshuffled_batches_are_views_in_order_and_drop_last_drops_the_short_one():
    x = torch.arange(10).float().unsqueeze(1)
    dl = TensorLoader(x, torch.arange(10), batch_size=4)
    xb, _ = next(iter(dl))
    assert xb.data_ptr() == x.data_ptr()  # a slice, no copy
    assert epoch_ids(dl) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = TensorLoader(x, torch.arange(10), batch_size=4, drop_last=True)
    assert epoch_ids(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(dropped) == 2


def test_any_number_of_tensors_and_dataloader_attributes():
    a, b, c = torch.randn(9, 2), torch.randn(9, 3, 4), torch.arange(9)
    dl = TensorLoader(a, b, c, batch_size=4, shuffle=True, seed=0)
    batches = list(dl)
    assert all(len(batch) == 3 for batch in batches)
    ids = torch.cat([batch[2] for batch in batches])
    assert torch.equal(torch.cat([batch[1] for batch in batches]), b[ids])
    assert isinstance(dl.dataset, TensorDataset) and len(dl.dataset) == 9 and dl.batch_size == 4
    assert len(dl.sampler) == 9 and dl.drop_last is False and isinstance(dl.generator, torch.Generator)


def test_sampler_previews_the_next_epoch_without_advancing_the_generator():
    dl = ids_loader(12, 5, shuffle=True, seed=1)
    preview = list(dl.sampler)
    state = dl.generator.get_state()
    assert list(dl.sampler) == preview and torch.equal(dl.generator.get_state(), state)
    assert sum(epoch_ids(dl), []) == preview
    follows = ids_loader(12, 5, shuffle=True)  # seed=None: the preview reads the global RNG without drawing
    torch.manual_seed(2)
    state = torch.get_rng_state()
    preview = list(follows.sampler)
    assert torch.equal(torch.get_rng_state(), state) and sum(epoch_ids(follows), []) == preview


def test_state_dict_resumes_mid_epoch_bit_exactly():
    x = torch.randint(0, 256, (11, 3, 6, 6), dtype=torch.uint8)
    tfm = ImageBatchTransform((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), padding=2, flip=True)
    dl = TensorLoader(x, torch.arange(11), batch_size=3, shuffle=True, seed=5, transform=tfm)
    it = iter(dl)
    [next(it) for _ in range(2)]
    state = dl.state_dict()
    assert (state["position"], state["epoch"]) == (2, 0)
    rest = list(it) + list(dl)  # the rest of this epoch, then the next one
    again = TensorLoader(x, torch.arange(11), batch_size=3, shuffle=True, seed=999, transform=tfm)
    again.load_state_dict(state)
    replay = list(again) + list(again)
    assert len(replay) == len(rest) == 2 + 4
    for a, b in zip(rest, replay):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    dl.set_epoch(4)
    assert dl.state_dict()["epoch"] == 4 and dl.state_dict()["position"] == 0  # between epochs


def test_learner_trains_identically_on_either_loader_without_shuffling():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 2, (50,), generator=g)
    runs = []
    for loader in ("tensor", "torch"):
        data = ModelData.from_tensors(x[:40], y[:40], x[40:], y[40:], bs=8, shuffle=False, loader=loader)
        learn = Learner(make_model(), data, progress=False, table=False)
        learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
        runs.append(learn)
    a, b = runs
    assert isinstance(a.data.trn_dl, TensorLoader) and isinstance(b.data.trn_dl, DataLoader)
    assert a.nb == b.nb == 5 and a.sched.lrs == b.sched.lrs
    assert a.sched.raw_losses == b.sched.raw_losses and a.sched.val_losses == b.sched.val_losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_resume_with_augmented_tensor_loader_is_bit_exact(tmp_path):
    def build() -> Learner:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (45, 1, 6, 6), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 3, (45,), generator=g)
        data = ModelData.from_tensors(x[:37], y[:37], x[37:], y[37:], bs=6, seed=11,
                                      trn_transform=ImageBatchTransform((0.5,), (0.25,), padding=1, flip=True),
                                      val_transform=ImageBatchTransform((0.5,), (0.25,)))
        torch.manual_seed(0)
        return Learner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), data, progress=False, table=False)

    def fit(learn, **kw):
        learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), **kw)
        return learn

    reference = fit(build())
    path = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(build(), checkpoint=path, callbacks=[InterruptAt(9)])  # epoch 1, batch 2 of 7
    resumed = fit(build(), checkpoint=path, resume=True)
    assert resumed.sched.raw_losses == reference.sched.raw_losses
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_lr_find_leaves_the_tensor_loader_order_as_it_was():
    def build() -> Learner:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g)
        return Learner(make_model(), ModelData.from_tensors(x, y, x[:16], y[:16], bs=8, seed=3),
                       progress=False, table=False)

    plain, probed = build(), build()
    probed.lr_find(end_lr=1.0)
    assert epoch_ids_of(plain) == epoch_ids_of(probed)


def epoch_ids_of(learn: Learner) -> list[float]:
    return [float(v) for xb, _ in learn.data.trn_dl for v in xb[:, 0]]


# ---------------------------------------------------------------------- one order for any world size


@pytest.mark.parametrize("n, bs, drop_last", [(48, 4, False), (51, 4, False), (47, 2, False), (50, 4, True)])
def test_rank_shares_compose_the_single_process_global_batches(n, bs, drop_last):
    for world in (1, 2, 3):
        single = epoch_ids(ids_loader(n, bs * world, shuffle=True, seed=2, drop_last=drop_last))
        base = ids_loader(n, bs, shuffle=True, seed=2, drop_last=drop_last)
        shards = [shard_train_loader(base, world, r) for r in range(world)]
        per_rank = [epoch_ids(s) for s in shards]
        assert all(len(p) == len(single) == len(s) for p, s in zip(per_rank, shards))
        for j, big in enumerate(single):
            assert sum((p[j] for p in per_rank), []) == big  # rank order = position order in the global batch
        assert torch.equal(shards[0].generator.get_state(), shards[-1].generator.get_state())
    assert epoch_ids(base) == epoch_ids(ids_loader(n, bs, shuffle=True, seed=2, drop_last=drop_last))  # untouched


def test_short_last_global_batch_is_split_as_evenly_as_possible():
    assert global_batch_spans(10, 4, 3, 0) == [(0, 4)]
    assert [global_batch_spans(10, 4, 3, r) for r in (1, 2)] == [[(4, 7)], [(7, 10)]]
    assert [global_batch_spans(14, 2, 4, r) for r in range(4)] == [[(0, 2), (8, 10)], [(2, 4), (10, 12)],
                                                                   [(4, 6), (12, 13)], [(6, 8), (13, 14)]]
    assert global_batch_spans(14, 2, 4, 3, drop_last=True) == [(6, 8)]


def test_a_last_batch_smaller_than_the_world_is_an_error():
    with pytest.raises(ValueError, match=r"trn_dl: 9 samples .* last batch of 1 sample\(s\), fewer than the 2 ranks"):
        shard_train_loader(ids_loader(9, 4, shuffle=True, seed=0), 2, 0)
    with pytest.raises(ValueError, match="drop_last=True"):
        shard_train_loader(DataLoader(TensorDataset(torch.zeros(9, 1)), batch_size=4, shuffle=True), 2, 0)
    assert len(shard_train_loader(ids_loader(9, 4, shuffle=True, seed=0, drop_last=True), 2, 1)) == 1


@pytest.mark.parametrize("use_generator", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_dataloader_shards_draw_what_one_random_sampler_draws(use_generator, drop_last):
    n, bs = 51, 4  # last global batch: 3 samples on 2 or 3 ranks
    ds = TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))

    def loader(batch_size):
        g = torch.Generator().manual_seed(9) if use_generator else None
        return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=g)

    for world in (2, 3):
        torch.manual_seed(0)
        single_dl = loader(bs * world)
        single = [epoch_ids(single_dl) for _ in range(2)]
        after_single = (torch.get_rng_state(), single_dl.generator.get_state() if use_generator else None)
        per_rank = []
        for r in range(world):
            torch.manual_seed(0)  # every rank starts from the same state, as ranks seeded alike do
            shard = shard_train_loader(loader(bs), world, r)
            assert isinstance(shard.sampler, GlobalOrderSampler) and len(shard) == len(single_dl)
            per_rank.append([epoch_ids(shard) for _ in range(2)])
            # The global RNG and the loader's generator advanced exactly as in one process.
            assert torch.equal(torch.get_rng_state(), after_single[0])
            if use_generator:
                assert torch.equal(shard.generator.get_state(), after_single[1])
        for epoch in range(2):
            for j, big in enumerate(single[epoch]):
                assert sum((p[epoch][j] for p in per_rank), []) == big
        assert single[0] != single[1]


def test_tensor_eval_shards_cover_every_sample_once():
    dl = ids_loader(21, 4)
    per_rank = [epoch_ids(shard_eval_loader(dl, 2, r)) for r in range(2)]
    assert sorted(sum(per_rank[0] + per_rank[1], [])) == list(range(21))
    assert [len(shard_eval_loader(dl, 2, r).sampler) for r in range(2)] == [11, 10]
    shard = shard_eval_loader(dl, 2, 1)
    assert isinstance(shard.sampler, ShardSampler) and list(shard.sampler) == sum(epoch_ids(shard), [])
    with pytest.raises(ValueError, match="val_dl: a shuffled TensorLoader"):
        shard_eval_loader(ids_loader(8, 2, shuffle=True, seed=0), 2, 0)


def test_shard_data_with_tensor_loaders_keeps_the_users_modeldata():
    data = ModelData(ids_loader(12, 2, shuffle=True, seed=0), ids_loader(5, 2))
    sharded = DistributedContext(world_size=3, rank=2).shard_data(data)
    assert data.trn_dl.world_size == 1 and sharded.trn_dl.world_size == 3 and len(sharded.trn_dl) == 2
    assert sharded.trn_dl.global_batch_size == 6 and sharded.trn_dl.generator is not data.trn_dl.generator
    assert epoch_ids(sharded.val_dl) == [[2]]
    assert shard_train_loader(sharded.trn_dl, 3, 2) is sharded.trn_dl  # already sharded


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_one_two_three_ranks_train_like_one_process(tmp_path):
    global_bs = 12
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    for world in (1, 2, 3):
        cmd = torchrun_command(world, ROOT / "tests" / "loader_worker.py", str(tmp_path), str(global_bs))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = torch.load(tmp_path / "W1-rank0.pt", weights_only=False)
    for world in (2, 3):
        ranks = [torch.load(tmp_path / f"W{world}-rank{r}.pt", weights_only=False) for r in range(world)]
        for key in ("tensor-sgd", "tensor-adam", "torch-sgd", "torch-adam", "uneven"):
            one = single[key]
            assert all(r[key]["nb"] == one["nb"] for r in ranks) and all(r[key]["lrs"] == one["lrs"] for r in ranks)
            # The sequence of global batches is the single process's, sample for sample and in order.
            for j, big in enumerate(one["batches"]):
                assert sum((r[key]["batches"][j] for r in ranks), []) == big, (key, world, j)
            assert len(one["batches"]) == 2 * one["nb"]
            if key == "uneven" and world == 3:
                continue  # a last batch of 4 on 3 ranks (2/1/1): DDP's mean of rank means weighs it differently
            for name, value in one["state"].items():
                torch.testing.assert_close(ranks[0][key]["state"][name], value, rtol=1e-5, atol=1e-6)
                assert torch.equal(ranks[0][key]["state"][name], ranks[-1][key]["state"][name])
            assert ranks[0][key]["val_losses"] == pytest.approx(one["val_losses"], rel=1e-5)
        # Ranks seeded differently would draw different orders: refused on every rank, naming the fix.
        for r in ranks:
            assert re.search(r"trn_dl: rank\(s\) \[.*\] hold a different random state.*torch\.manual_seed", r["disagree"])


# ---------------------------------------------------------------------- image batch transforms


def test_crop_flip_matches_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 5, 7), dtype=torch.uint8, generator=g)
    tfm = ImageBatchTransform(padding=2, flip=True)
    choices = tfm.draw(16, torch.Generator().manual_seed(1))
    assert choices.shape == (16, 3) and choices[:, :2].min() >= 0 and choices[:, :2].max() <= 4
    out = tfm(x, choices)
    assert out.shape == x.shape and out.dtype == torch.float32
    padded = torch.zeros(16, 3, 9, 11, dtype=torch.uint8)
    padded[:, :, 2:7, 2:9] = x
    for i, (dy, dx, flip) in enumerate(choices.tolist()):
        window = padded[i, :, dy:dy + 5, dx:dx + 7]
        expected = (window.flip(-1) if flip else window).float() / 255
        assert torch.equal(out[i], expected), i
    assert 0 < int(choices[:, 2].sum()) < 16 and len(set(map(tuple, choices[:, :2].tolist()))) > 1


def test_normalisation_and_no_randomness_without_crop_or_flip():
    x = torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8)
    tfm = ImageBatchTransform((0.5, 0.25), (0.5, 0.125))
    assert not tfm.random and tfm.draw(4, torch.Generator()) is None
    expected = (x.double() / 255 - torch.tensor([0.5, 0.25]).double().view(1, 2, 1, 1)) / \
        torch.tensor([0.5, 0.125]).double().view(1, 2, 1, 1)
    torch.testing.assert_close(tfm(x), expected.float())
    floats = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(tfm(floats), (floats - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) /
                               torch.tensor([0.5, 0.125]).view(1, 2, 1, 1))


def test_augmented_shards_see_the_single_process_augmentations():
    x = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    tfm = ImageBatchTransform(padding=1, flip=True)
    single = [xb for xb, _ in TensorLoader(x, torch.arange(20), batch_size=8, shuffle=True, seed=4, transform=tfm)]
    base = TensorLoader(x, torch.arange(20), batch_size=4, shuffle=True, seed=4, transform=tfm)
    ranks = [[xb for xb, _ in shard_train_loader(base, 2, r)] for r in range(2)]
    for j, big in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][j], ranks[1][j]]), big)


# ---------------------------------------------------------------------- devices


def test_data_stays_on_the_requested_device():
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    data = ModelData.from_tensors(x, y, x, y, bs=8, device="cpu")
    assert data.trn_dl.device == torch.device("cpu") and data.to("cpu") is data
    xb, yb = next(iter(data.trn_dl))
    assert xb.device.type == "cpu" and yb.device.type == "cpu"
    torch_data = ModelData.from_tensors(x, y, x, y, bs=8, loader="torch")
    assert torch_data.trn_dl.pin_memory is torch.cuda.is_available()  # pinned + non-blocking copies on CUDA


@needs_cuda
def test_cuda_data_is_served_from_the_gpu():
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    data = ModelData.from_tensors(x, torch.randint(0, 10, (40,)), bs=8, device="cuda",
                                  trn_transform=ImageBatchTransform((0.5,) * 3, (0.2,) * 3, padding=2, flip=True))
    xb, yb = next(iter(data.trn_dl))
    assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.float32
    moved = ModelData.from_tensors(x.float(), torch.zeros(40).long(), bs=8).to("cuda")
    assert next(iter(moved.trn_dl))[0].is_cuda


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("build, error, pattern", [
    (lambda: TensorLoader(torch.zeros(5, 2), torch.zeros(4)), ValueError, r"same number of samples .*\[5, 4\]"),
    (lambda: TensorLoader([1, 2, 3]), TypeError, r"tensors\[0\] must be a torch.Tensor; got list"),
    (lambda: TensorLoader(), ValueError, "at least one tensor"),
    (lambda: TensorLoader(torch.zeros(5, 2), batch_size=8, drop_last=True), ValueError,
     r"batch_size=8 with drop_last=True leaves no batch of the 5 samples"),
    (lambda: TensorLoader(torch.zeros(5, 2), batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (lambda: TensorLoader(torch.zeros(5, 2), device="cuda:99"), ValueError, r"device='cuda:99'.*available: cpu"),
    (lambda: TensorLoader(torch.zeros(5, 2), device="nonsense"), ValueError, r"device='nonsense' is not a torch device"),
    (lambda: TensorLoader(torch.zeros(5, 2), transform=lambda x: x), TypeError, "transform must be"),
    (lambda: TensorLoader(torch.zeros(5, 2), transform=ImageBatchTransform(flip=True)), ValueError,
     r"\(N, C, H, W\); got shape \(5, 2\)"),
    (lambda: ImageBatchTransform(mean=(0.5,)), ValueError, "mean and std: pass both"),
    (lambda: ImageBatchTransform(padding=-1), ValueError, "padding must be an integer >= 0"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), loader="fast"), ValueError,
     r"loader must be one of 'tensor', 'torch' \(or None: 'tensor', or 'torch' when num_workers > 0\); got 'fast'"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), bs=8, drop_last=True), ValueError,
     r"bs=8 with drop_last=True leaves no training batch"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), loader="tensor", num_workers=2), ValueError,
     r"num_workers=2 with loader='tensor': the tensor loader .* loader='torch'"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), num_workers=-1), ValueError,
     r"num_workers must be an integer >= 0"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(4)), ValueError,
     r"x_trn and y_trn must have the same number of samples; got 5 and 4"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), torch.zeros(3, 2), torch.zeros(2)), ValueError,
     r"x_val and y_val must have the same number of samples; got 3 and 2"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), torch.zeros(3, 2)), ValueError,
     r"x_val and y_val: pass both or neither"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), device="cuda:9"), ValueError,
     r"device='cuda:9'.*available: cpu"),
    (lambda: ModelData.from_tensors(TensorDataset(torch.zeros(5, 2)), torch.zeros(5)), TypeError,
     r"x_trn must be a tensor or numpy array; got a TensorDataset \(a Dataset\).*from_datasets"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), ["a", "b", "c", "d", "e"]), TypeError,
     r"y_trn must be a tensor, a numpy array or a rectangular list of numbers; got a list"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), collate_fn=None), TypeError,
     r"DataLoader option\(s\) collate_fn"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5), loader="torch", device="cpu"), ValueError,
     r"device='cpu' applies to loader='tensor' only"),
    (lambda: ModelData.from_tensors(torch.zeros(5, 2), torch.zeros(5)).to("cuda:7"), ValueError, "cuda:7"),
    (lambda: ModelData("not a loader", None), TypeError, "trn_dl must be a torch DataLoader or a clrfit TensorLoader"),
])
def test_bad_input_is_named_before_anything_trains(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_bad_state_dict_is_refused():
    dl = ids_loader(10, 4, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="state must be a dict with epoch, position and generator"):
        dl.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match=r"state\['position'\] must be an integer in \[0, 3\]"):
        dl.load_state_dict({"epoch": 0, "position": 4, "generator": dl.generator.get_state()})
    plain = ids_loader(10, 4)  # draws nothing: no generator, like a DataLoader without shuffle
    assert plain.generator is None and plain.state_dict()["generator"] is None
    with pytest.raises(ValueError, match="this loader draws nothing"):
        plain.load_state_dict(dl.state_dict())


# ---------------------------------------------------------------------- the benchmark


def _data_path_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_path_benchmark", ROOT / "benchmarks" / "data_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_path_statistics_and_fetch_clock():
    bench = _data_path_module()
    assert bench.median_ci([float(v) for v in range(1, 11)]) == (2.0, 9.0)  # n=10: order statistics 2 and 9
    assert bench.median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)  # n=6: the extremes (coverage 96.9%)
    assert bench.median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # n=5: no 95% interval exists
    text = bench.summary([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert text == "5.500 (IQR 3.250-7.750, range 1.000-10.000, 95% CI 2.000-9.000, n=10)"
    assert len(bench.ORDERS) == 6 and {o[0] for o in bench.ORDERS} == set(bench.PATHS)
    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    clock = bench.FetchClock()
    wrap = clock.wrapper()
    loaders = [wrap(TensorLoader(x, y, batch_size=4)), wrap(DataLoader(TensorDataset(x, y), batch_size=4))]
    assert isinstance(loaders[0], TensorLoader) and isinstance(loaders[1], DataLoader)
    for a, b in zip(*loaders):  # the clocked loaders still serve the same batches
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert clock.seconds["train"] > 0 and clock.seconds["val"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_data_path_benchmark_runs_and_reports_ratios(tmp_path):
    env = dict(os.environ, CLRFIT_CACHE_DIR=str(tmp_path / "cache"), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_path.py"), "--rounds", "1", "--epochs", "1",
                           "--split-rounds", "1", "--n-train", "512", "--n-valid", "256"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for model in ("mlp", "cnn"):
        row = re.search(rf"{model}\s+raw ([0-9.]+)s\s+dataloader ([0-9.]+)s\s+tensor ([0-9.]+)s\s+"
                        rf"b/a ([0-9.]+)\s+c/a ([0-9.]+)", out)
        assert row, out
        raw, dataloader, tensor, b_a, c_a = map(float, row.groups())
        for ratio, t in ((c_a, tensor), (b_a, dataloader)):
            # The times are printed to 1 ms: the ratio must lie within what that rounding allows (plus its own rounding).
            low, high = (t - 5e-4) / (raw + 5e-4), (t + 5e-4) / max(raw - 5e-4, 1e-9)
            assert low - 5e-4 <= ratio <= high + 5e-4, (ratio, t, raw)
        wall = re.search(rf"{model}  c/a wall ([0-9.]+) \(IQR ([0-9.]+)-([0-9.]+), range ([0-9.]+)-([0-9.]+), n=1\)", out)
        assert wall and float(wall.group(1)) == c_a, out  # one round: every statistic is that round's ratio
        assert len(set(wall.groups())) == 1, out
        assert re.search(rf"{model}  c/a cpu  [0-9.]+ \(IQR", out), out
        for path in ("raw", "dataloader", "tensor"):
            parts = re.search(rf"{model}    {path}\s+total\s+([0-9.]+)\s+train fetch\s+([0-9.]+)\s+"
                              rf"val fetch\s+([0-9.]+)\s+rest\s+(-?[0-9.]+)", out)
            assert parts, out
            total, train, val, rest = map(float, parts.groups())
            assert total == pytest.approx(train + val + rest, abs=0.02) and train > 0 and val > 0
        acc = re.search(rf"{model} accuracy raw ([0-9.]+) dataloader ([0-9.]+) tensor ([0-9.]+)", out)
        assert acc, out
        a, b, c = map(float, acc.groups())
        assert a == b  # the DataLoader path and the raw loop train on the same batches: same weights
        assert 0.0 <= c <= 1.0
        assert "raw and dataloader identical weights every round: True" in out


def test_len_follows_a_changed_batch_size_or_shard():
    """The batch spans are computed once per layout, and again when batch size, drop_last or the shard change."""
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    dl = TensorLoader(x, y, batch_size=4)
    assert len(dl) == 3 and [len(b[0]) for b in dl] == [4, 4, 2]
    dl.batch_size = 5
    assert len(dl) == 2 and [len(b[0]) for b in dl] == [5, 5]
    dl.drop_last, dl.batch_size = True, 4
    assert len(dl) == 2 and [len(b[0]) for b in dl] == [4, 4]
    dl.world_size, dl.rank, dl.drop_last = 2, 1, False
    assert [b[1].tolist() for b in dl] == [[4, 5, 6, 7], [9]]  # the short last global batch split 1 + 1
