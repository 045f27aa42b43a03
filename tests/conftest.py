"""Shared fixtures: tiny synthetic data and models that train in milliseconds."""
from __future__ import annotations

import os
import signal

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from torch import nn

from clrfit import Callback, Learner, ModelData


def make_data(n_trn: int = 96, n_val: int = 40, n_features: int = 6, bs: int = 16, seed: int = 0, **kwargs) -> ModelData:
    """Two-class data separable by the first feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_trn + n_val, n_features, generator=g)
    y = (x[:, 0] > 0).long()
    return ModelData.from_tensors(x[:n_trn], y[:n_trn], x[n_trn:], y[n_trn:], bs=bs, **kwargs)


def make_model(n_features: int = 6, hidden: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def make_learner(**kwargs) -> Learner:
    data = kwargs.pop("data", None) or make_data()
    model = kwargs.pop("model", None) or make_model()
    kwargs.setdefault("progress", False)
    kwargs.setdefault("table", False)
    return Learner(model, data, **kwargs)


class EventLog(Callback):
    """Records every event with the learner's counters at that moment."""

    order = 100

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def _log(self, name: str) -> None:
        self.events.append((name, self.learn.epoch, self.learn.iteration))

    def on_train_begin(self): self._log("on_train_begin")
    def on_epoch_begin(self): self._log("on_epoch_begin")
    def on_batch_begin(self): self._log("on_batch_begin")
    def on_loss(self): self._log("on_loss")
    def on_backward_end(self): self._log("on_backward_end")
    def on_step_end(self): self._log("on_step_end")
    def on_batch_end(self): self._log("on_batch_end")
    def on_validate_begin(self): self._log("on_validate_begin")
    def on_validate_end(self): self._log("on_validate_end")
    def on_epoch_end(self): self._log("on_epoch_end")
    def on_train_end(self): self._log("on_train_end")

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class SignalAt(Callback):
    """Sends this process a real ``signum`` as iteration ``k`` begins (so ``k`` steps are done)."""

    signum = signal.SIGINT

    def __init__(self, k: int) -> None:
        self.k = k

    def on_batch_begin(self) -> None:
        if self.learn.iteration == self.k:
            os.kill(os.getpid(), self.signum)


class InterruptAt(SignalAt):
    """Ctrl-C (SIGINT) as iteration ``k`` begins."""


class KillAt(SignalAt):
    """A crash (SIGKILL, nothing can run after it) as iteration ``k`` begins."""

    signum = signal.SIGKILL


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and steadiest on a shared 2-core machine, on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def learner() -> Learner:
    return make_learner()
