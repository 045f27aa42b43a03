"""Runtime: batches to the device, the micro-step context, autocast forward and the one evaluation forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clrfit import Callback
from clrfit.runtime import NO_CONTEXT, Runtime, compile_backend, move, resolve_device


def _runtime(precision: str = "fp32") -> Runtime:
    return Runtime(nn.Linear(4, 3), "cpu", precision)


def test_cpu_batches_are_not_copied_and_nested_ones_keep_their_shape():
    rt = _runtime()
    x, y = torch.randn(5, 4), torch.arange(5)
    xb, yb = rt.to_device((x, y))
    assert xb is x and yb is y  # already on the CPU: no call, no copy
    nested = ({"a": x, "b": [y, 3]}, (y,))
    xb, yb = rt.to_device(nested)
    assert xb["a"] is x and xb["b"][0] is y and xb["b"][1] == 3 and isinstance(yb, tuple) and yb[0] is y


def test_move_moves_every_leaf():
    moved = move({"a": (torch.ones(2, dtype=torch.float64), [torch.zeros(1)]), "n": None}, torch.device("meta"), False)
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta" and moved["n"] is None


def test_micro_step_enters_nothing_without_ddp():
    rt = _runtime()
    assert rt.micro_step(nn.Linear(1, 1), last=False) is NO_CONTEXT
    assert rt.micro_step(nn.Linear(1, 1), last=True) is NO_CONTEXT


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_forward_runs_under_autocast_only_for_low_precision(precision, dtype):
    rt = _runtime(precision)
    model = nn.Linear(4, 3)
    pred, loss = rt.forward(model, torch.randn(2, 4), torch.tensor([0, 2]), nn.CrossEntropyLoss())
    assert pred.dtype == dtype and loss.dtype == torch.float32  # autocast runs cross-entropy in float32


def test_evaluate_returns_weighted_sums_of_loss_count_and_metrics():
    rt = _runtime()
    torch.manual_seed(0)
    model = nn.Linear(4, 3).eval()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    crit = nn.CrossEntropyLoss()

    def accuracy(pred, targ):
        return (pred.argmax(-1) == targ).float().mean()

    sums = rt.evaluate(model, (x, y), crit, [accuracy])
    with torch.no_grad():
        pred = model(x)
    assert sums.dtype == torch.float64 and sums.shape == (3,)
    assert sums[0].item() == pytest.approx(crit(pred, y).item() * 6, rel=1e-6)
    assert sums[1].item() == 6
    assert sums[2].item() == pytest.approx((pred.argmax(-1) == y).sum().item())


def test_bad_device_and_compile_arguments_name_the_argument():
    with pytest.raises(ValueError, match="device must be a torch device.*'gpu0'"):
        resolve_device("gpu0", 0)
    with pytest.raises(TypeError, match="compile must be True, False or a torch.compile backend name"):
        compile_backend(1)
    with pytest.raises(ValueError, match="unknown torch.compile backend"):
        compile_backend("no-such-backend")
    assert compile_backend(False) is None and compile_backend(True) == "inductor"


def test_only_a_plain_cpu_tensor_loader_yields_ready_pairs():
    """The loop skips to_device only for batches that are already (inputs, target) CPU tensors."""
    from clrfit.loaders import ImageBatchTransform, TensorLoader

    x, y = torch.randn(8, 4), torch.arange(8)
    rt = _runtime()
    assert rt.yields_ready_pairs(TensorLoader(x, y, batch_size=4))
    assert not rt.yields_ready_pairs(TensorLoader(x, y, y, batch_size=4))  # three tensors: split_batch decides
    images = TensorLoader(torch.randn(8, 1, 4, 4), y, batch_size=4, transform=ImageBatchTransform(flip=True))
    assert rt.yields_ready_pairs(images)  # the transform works on the CPU batch: still a CPU pair
    assert all(xb.is_cpu and xb.shape == (4, 1, 4, 4) for xb, _ in images)
    assert not rt.yields_ready_pairs(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4))
    split = Runtime(nn.Linear(4, 3), "cpu", "fp32", batch_fn=lambda b: (b[0], b[1]))
    assert not split.yields_ready_pairs(TensorLoader(x, y, batch_size=4))  # the user's split must run


def test_a_fit_on_ready_pairs_is_the_fit_through_to_device():
    """Same weights and history, bit for bit, whether the batches skip to_device or go through it (batch_fn)."""
    from clrfit import Learner, ModelData

    def run(batch_fn):
        torch.manual_seed(0)
        x = torch.randn(40, 4)
        data = ModelData.from_tensors(x[:32], (x[:32, 0] > 0).long(), x[32:], (x[32:, 0] > 0).long(), bs=8)
        torch.manual_seed(1)
        learn = Learner(nn.Linear(4, 2), data, progress=False, table=False, batch_fn=batch_fn)
        seen, moves = [], []
        to_device = learn.runtime.to_device
        learn.runtime.to_device = lambda batch: moves.append(batch) or to_device(batch)  # validation's too

        class Inputs(Callback):
            def on_loss(self) -> None:
                seen.append(self.learn.xb)

        learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), callbacks=[Inputs()])
        return learn, seen, len(moves)

    ready, ready_inputs, ready_moves = run(None)
    moved, _, moved_moves = run(lambda b: (b[0], b[1]))
    assert ready._ready_pairs and not moved._ready_pairs
    assert ready.sched.raw_losses == moved.sched.raw_losses and len(ready.sched.raw_losses) == 8
    assert all(torch.equal(v, moved.model.state_dict()[k]) for k, v in ready.model.state_dict().items())
    assert ready_inputs[0].shape == (8, 4)  # the loader's batch itself
    assert moved_moves - ready_moves == 8  # the 8 training batches skipped to_device; validation's still go through
