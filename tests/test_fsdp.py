"""strategy="fsdp" (clrfit/fsdp.py): FSDP2 under torchrun with gloo on CPU, and its parts that need no process group."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from clrfit import Learner, ModelData
from clrfit.fsdp import EvenBatches, FSDPRuntime, PaddingBatch, make_runtime
from clrfit.loaders import TensorLoader
from clrfit.runtime import Runtime
from torchrun import torchrun_command

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp_worker.py"


# ---------------------------------------------------------------------- no process group needed


def test_strategy_is_checked_before_anything_is_built():
    model = nn.Linear(3, 2)
    data = ModelData.from_tensors(torch.randn(8, 3), torch.zeros(8, dtype=torch.long), bs=4)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"strategy must be one of 'ddp', 'fsdp'; got 'zero3'"):
        Learner(model, data, strategy="zero3")
    assert torch.equal(model.weight, before)
    assert type(make_runtime("ddp", model, None, "fp32")) is Runtime
    assert isinstance(make_runtime("fsdp", model, None, "fp32"), FSDPRuntime)


def test_one_process_fsdp_trains_the_plain_model_exactly_as_ddp_would():
    def run(strategy: str) -> tuple[list[float], dict]:
        torch.manual_seed(0)
        x = torch.randn(40, 4)
        data = ModelData.from_tensors(x[:32], (x[:32, 0] > 0).long(), x[32:], (x[32:, 0] > 0).long(), bs=8)
        torch.manual_seed(1)
        learn = Learner(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), data, progress=False, table=False,
                        strategy=strategy)
        rec = learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), accumulate=2)
        assert type(next(learn.model.parameters())) is nn.Parameter  # nothing sharded in one process
        return rec.losses, learn.model.state_dict()

    losses, state = run("fsdp")
    ddp_losses, ddp_state = run("ddp")
    assert losses == ddp_losses and len(losses) == 4  # 2 epochs of 2 steps (4 batches, accumulate=2)
    assert all(torch.equal(v, ddp_state[k]) for k, v in state.items())


def test_even_batches_pad_with_zero_count_batches():
    x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    batches = list(EvenBatches(dl, 5))
    assert len(batches) == 5 and len(EvenBatches(dl, 5)) == 5
    assert [isinstance(b, PaddingBatch) for b in batches] == [False, False, False, True, True]
    assert batches[3].batch is batches[0] and EvenBatches(dl, 5).batch_size == 2
    empty = TensorLoader(x, y, batch_size=2).eval_shard(world_size=6, rank=5)  # samples 5, 11, ...: none
    assert len(empty) == 0  # a rank whose shard is empty pads with the dataset's first sample
    padded = list(EvenBatches(empty, 2))
    assert len(padded) == 2 and all(isinstance(b, PaddingBatch) for b in padded)
    assert padded[0].batch[0].shape == (1, 2) and torch.equal(padded[0].batch[0][0], x[0])

    runtime = FSDPRuntime(nn.Linear(2, 3), "cpu", "fp32")
    model = nn.Linear(2, 3)
    crit = nn.CrossEntropyLoss()
    assert torch.equal(runtime.evaluate(model, padded[0], crit, []), torch.zeros(2, dtype=torch.float64))
    real = runtime.evaluate(model, batches[0], crit, [])
    assert real[1] == 2 and real[0] == pytest.approx(2 * crit(model(x[:2]), y[:2]).item())


# ---------------------------------------------------------------------- real ranks


#: What a C++ ``std::terminate`` prints. Once on CI (never in 46 runs of the 2-rank worker here, 20 of them
#: beside a busy CPU) a rank of the 2-rank run aborted with it once its fp16 fit had begun, with no Python error.
CPP_ABORT = "terminate called without an active exception"


def _run(world: int, mode: str, folder: Path, start: Path | None = None) -> dict:
    """Run the worker on ``world`` ranks in ``folder``, which starts empty or as a copy of ``start``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    # PYTHONFAULTHANDLER: an abort prints every thread's Python stack, so a failure says where it happened.
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONFAULTHANDLER="1")
    for attempt in (1, 2):
        shutil.rmtree(folder, ignore_errors=True)
        if start is not None:
            shutil.copytree(start, folder)
        else:
            folder.mkdir()
        cmd = torchrun_command(world, WORKER, mode, str(folder), plain_if_one=True)  # world 1: plain python
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode == 0 or CPP_ABORT not in proc.stderr or attempt == 2:
            break
        # Only that C++ abort is tried again, once and visibly; any other failure, or a second abort, fails.
        warnings.warn(f"fsdp_worker {mode} on {world} rank(s) aborted ({CPP_ABORT!r}); running it again. "
                      f"It had got to: {_stages(proc.stderr)}")
    assert proc.returncode == 0, f"stages done: {_stages(proc.stderr)}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(folder / f"{mode}-W{world}.pt", weights_only=False)


def _stages(stderr: str) -> list[str]:
    """The worker's ``fsdp_worker rank R: STAGE done`` lines."""
    return [line.split("fsdp_worker ", 1)[1] for line in stderr.splitlines() if line.startswith("fsdp_worker rank")]


def _close(a: dict, b: dict, rtol: float, atol: float) -> None:
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_on_two_ranks_matches_one_process_and_its_checkpoint_resumes_on_one_and_three(tmp_path):
    trained = tmp_path / "W2"
    two = _run(2, "train", trained)
    ckpt = torch.load(trained / "ckpt.pt", weights_only=False)
    assert ckpt["counters"] == dict(epoch=1, batch_index=1, iteration=4, cycle=0, iter_in_cycle=4)
    assert ckpt["sharded"] == "ckpt.pt.dcp-4" and ckpt["model"] == {} and (trained / "ckpt.pt.dcp-4" / ".metadata").is_file()
    assert sorted(p.name for p in trained.glob("ckpt.pt.dcp-*")) == ["ckpt.pt.dcp-4"]  # older shards removed

    runs = {}
    for world in (1, 3):
        runs[world] = _run(world, "resume", tmp_path / f"W{world}", start=trained)
    single = runs[1]
    assert single["plain"]["sharded"] == "Parameter" and two["plain"]["sharded"] == runs[3]["plain"]["sharded"] == "DTensor"

    for result in (two, runs[3]):
        # Schedules, accumulation (3 steps of 2 micro-batches per epoch) and weights: the single process's.
        assert result["plain"]["lrs"] == single["plain"]["lrs"] and result["plain"]["iterations"] == list(range(9))
        # Two layer groups survive the sharding (the optimizer holds the sharded parameters, at lrs 1:10).
        lo, hi = result["plain"]["group_lrs"]
        assert hi == pytest.approx(10 * lo) and result["plain"]["group_lrs"] == single["plain"]["group_lrs"]
        _close(result["plain"]["state"], single["plain"]["state"], rtol=1e-5, atol=1e-6)
        # Validation (13 samples, batches of 6: ranks with fewer batches pad) is the exact full-set loss.
        assert result["plain"]["val_losses"] == pytest.approx(single["plain"]["val_losses"], rel=1e-6)
        # The same with torch DataLoaders (their validation shards padded the same way).
        assert result["dataloader"]["lrs"] == single["dataloader"]["lrs"]
        _close(result["dataloader"]["state"], single["dataloader"]["state"], rtol=1e-5, atol=1e-6)
        assert result["dataloader"]["val_losses"] == pytest.approx(single["dataloader"]["val_losses"], rel=1e-6)
        # Precision: bf16 and fp16 (ShardedGradScaler) autocast follow the single process to low-precision tolerance.
        for precision, tol in (("bf16", 5e-3), ("fp16", 1e-3)):
            assert result[precision]["lrs"] == single[precision]["lrs"]
            _close(result[precision]["state"], single[precision]["state"], rtol=tol, atol=tol)
        # Every rank saw the same schedule, losses and suggestions.
        assert all(r == result["per_rank"][0] for r in result["per_rank"])

    # torch.compile (aot_eager) of the sharded model: the single process's (compiled) weights.
    assert two["compiled"]["lrs"] == single["compiled"]["lrs"]
    _close(two["compiled"]["state"], single["compiled"]["state"], rtol=1e-5, atol=1e-6)
    _close(two["compiled"]["state"], single["plain"]["state"], rtol=1e-5, atol=1e-6)

    # A range test gives one answer on every rank and puts the sharded weights back exactly.
    finder = two["range_test"]
    assert finder["restored"] and len(finder["lrs"]) == 12
    # learn.save would write rank 0's shards as if they were the model: refused, pointing to checkpoint=.
    assert "under strategy='fsdp' each rank holds only its shards" in finder["save_refused"]
    assert not (trained / "plain.pt").exists()
    assert finder["lrs"][0] == pytest.approx(1e-4) and finder["lrs"][-1] == pytest.approx(100)

    # The DCP checkpoint written on 2 ranks resumes on 1 process and on 3 ranks: the rest of the run is the
    # uninterrupted run's on that world size.
    for world, result in runs.items():
        resumed, plain = result["resumed"], result["plain"]
        assert resumed["world_size"] == world and resumed["iterations"] == list(range(9))
        assert resumed["lrs"] == plain["lrs"] and resumed["moms"] == plain["moms"]
        _close(resumed["state"], plain["state"], rtol=1e-5, atol=1e-6)
        assert resumed["val_losses"] == pytest.approx(plain["val_losses"], rel=1e-5)
