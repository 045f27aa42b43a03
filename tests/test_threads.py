"""The thread policy: one thread for small models on CPU, free cores for larger ones, the default elsewhere."""
from __future__ import annotations

import pytest
import torch

from clrfit import threads
from clrfit.models import mnist1d_cnn, resnet20, resnet56


def test_small_models_get_one_thread_on_cpu_whatever_the_machine():
    for model in (mnist1d_cnn(), resnet20(), resnet56()):
        n = sum(p.numel() for p in model.parameters())
        assert n < threads.SMALL_MODEL_PARAMETERS
        assert threads.recommended_threads(n, "cpu", default=16, cores=16, load=0.0) == 1


def test_larger_models_get_the_free_cores_within_the_default():
    big = 10 * threads.SMALL_MODEL_PARAMETERS
    assert threads.recommended_threads(big, "cpu", default=16, cores=16, load=0.0) == 16
    assert threads.recommended_threads(big, "cpu", default=16, cores=16, load=12.4) == 4
    assert threads.recommended_threads(big, "cpu", default=8, cores=16, load=2.0) == 8  # never above torch's
    assert threads.recommended_threads(big, "cpu", default=16, cores=16, load=40.0) == 1  # at least one
    assert threads.recommended_threads(big, "cuda") is None and threads.recommended_threads(1000, "cuda") is None


def test_the_built_in_parameter_counts_are_the_models():
    counts = {"cnn1d": mnist1d_cnn(), "resnet20": resnet20(), "resnet56": resnet56()}
    assert threads._BUILT_IN_PARAMETERS == {k: sum(p.numel() for p in m.parameters()) for k, m in counts.items()}


def test_cli_default_is_one_thread_on_cpu_and_torch_s_choice_on_a_gpu():
    assert threads.cli_threads("resnet56", "cpu") == 1
    assert threads.cli_threads("cnn1d", "cuda:0") is None
    expected = None if torch.cuda.is_available() else 1
    assert threads.cli_threads("cnn1d", None) == expected


def test_oversubscription_is_said_only_on_a_busy_machine():
    message = threads.oversubscription(8, 97_578, "cpu", cores=8, load=7.0)
    assert message.startswith("torch uses 8 intra-op threads on CPU but only about 1 of 8 cores are free")
    assert "torch.set_num_threads(1)" in message  # the small-model count
    assert threads.oversubscription(8, 97_578, "cpu", cores=8, load=0.0) is None  # quiet: no noise
    assert threads.oversubscription(1, 97_578, "cpu", cores=8, load=7.0) is None
    big = 10 * threads.SMALL_MODEL_PARAMETERS
    assert "torch.set_num_threads(2)" in threads.oversubscription(8, big, "cpu", cores=8, load=6.0)
    assert threads.oversubscription(8, 97_578, "cuda", cores=8, load=8.0) is None


def test_the_learner_warns_once_when_the_cpu_threads_exceed_the_free_cores(monkeypatch):
    from clrfit import learner as learner_module
    from conftest import make_learner

    monkeypatch.setattr(learner_module, "_warned_threads", False)
    monkeypatch.setattr(threads, "free_cores", lambda cores=None, load=None: 1)  # a busy machine: one core free
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.warns(RuntimeWarning, match=r"torch uses 2 intra-op threads on CPU but only about 1 .*set_num_threads\(1\)"):
            make_learner()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_learner()  # once per process
        torch.set_num_threads(1)
        monkeypatch.setattr(learner_module, "_warned_threads", False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_learner()  # one thread never exceeds the free cores
    finally:
        torch.set_num_threads(before)
