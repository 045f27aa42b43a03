"""TrainingState (the fit's position as one value), the one loader-generator finder and the one SIGINT handler."""
from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from clrfit.state import COUNTERS, TrainingState, loader_generators, sigint
from conftest import make_learner


def test_state_dict_round_trips_counters_and_epoch_rng():
    rng = torch.get_rng_state()
    gen = torch.Generator().manual_seed(3).get_state()
    state = TrainingState(epoch=2, batch_index=3, iteration=15, cycle=1, iter_in_cycle=4, epoch_rng_state=rng,
                          loader_generators=[gen])
    saved = state.state_dict()
    assert saved["counters"] == {"epoch": 2, "batch_index": 3, "iteration": 15, "cycle": 1, "iter_in_cycle": 4}
    assert tuple(saved["counters"]) == COUNTERS
    fresh = TrainingState()
    fresh.load_state_dict(saved)
    assert fresh.counters == state.counters and torch.equal(fresh.epoch_rng_state, rng)
    assert len(fresh.loader_generators) == 1 and torch.equal(fresh.loader_generators[0], gen)
    assert fresh.resume_rng is None  # an epoch boundary: nothing to replay
    fresh.load_state_dict(saved, rng_states={"torch": rng})
    assert fresh.resume_rng == {"torch": rng}  # mid-epoch: the loop replays the epoch, then uses these once


def test_the_learner_counters_are_the_state():
    learn = make_learner()
    learn.fit(0.1, 2)
    assert (learn.epoch, learn.iteration, learn.batch_index) == (2, 12, 0)
    assert learn.state.counters == {"epoch": 2, "batch_index": 0, "iteration": 12, "cycle": 1, "iter_in_cycle": 5}
    learn.iteration = 7  # the attribute writes through
    assert learn.state.iteration == 7
    assert learn.nb == learn.steps_per_epoch == 6


def test_the_loop_records_the_loader_generators_at_each_epoch_start():
    g = torch.Generator().manual_seed(5)
    learn = make_learner()
    learn.data.trn_dl = DataLoader(learn.data.trn_dl.dataset, batch_size=16, shuffle=True, generator=g)
    expected = g.get_state()
    learn.fit(0.1, 1)
    assert len(learn.state.loader_generators) == 1 and torch.equal(learn.state.loader_generators[0], expected)
    assert not torch.equal(g.get_state(), expected)  # the epoch's shuffle drew from it


def test_loader_generators_finds_each_generator_once():
    ds = TensorDataset(torch.arange(10.0))
    g, h = torch.Generator(), torch.Generator()
    shuffled = DataLoader(ds, batch_size=2, shuffle=True, generator=g)  # the loader and its sampler share g
    own_sampler = DataLoader(ds, batch_size=2, sampler=RandomSampler(ds, generator=h))
    plain = DataLoader(ds, batch_size=2)
    found = loader_generators([shuffled, own_sampler, plain, None])
    assert len(found) == 2 and found[0] is g and found[1] is h


def test_sigint_calls_back_once_then_a_second_ctrl_c_is_immediate():
    calls = []
    with pytest.raises(KeyboardInterrupt):
        with sigint(lambda: calls.append(1)):
            os.kill(os.getpid(), signal.SIGINT)
            assert calls == [1]
            os.kill(os.getpid(), signal.SIGINT)  # the previous handler is back: Python's KeyboardInterrupt
    assert calls == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_deliver_holds_the_signal_until_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with sigint(deliver=True):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # still held
            reached.append("end of block")
    assert reached == ["end of block"]


def test_training_state_deep_copies_independently():
    state = TrainingState(iteration=3, epoch_rng_state=torch.get_rng_state())
    other = copy.deepcopy(state)
    other.iteration += 1
    assert state.iteration == 3 and other.iteration == 4
