"""How many intra-op threads torch should use for a model on CPU, and a warning when the machine is oversubscribed.

torch starts one intra-op thread per core. For the small models clrfit ships
(under a million parameters), a training step is a few milliseconds of small
kernels: extra threads buy little on a quiet machine, and on a busy one
(other jobs, or several training processes) the threads wait for each other
and a fit runs many times slower than on one thread (`benchmarks/threads.py`,
results in `benchmarks/RESULTS.md`). The policy here:

- on CPU, a model under :data:`SMALL_MODEL_PARAMETERS` parameters: 1 thread;
- on CPU, a larger model: one thread per core that is free (cores minus the
  1-minute load average), at least 1, at most torch's default;
- on an accelerator: torch's default (the CPU only feeds the device).

The ``clrfit`` command applies it unless ``--threads`` is given; in Python,
``torch.set_num_threads(recommended_threads(...))`` applies it, and
:func:`oversubscription` says when the current setting exceeds the free cores.
"""
from __future__ import annotations

import os

import torch

SMALL_MODEL_PARAMETERS = 1_000_000
_BUILT_IN_PARAMETERS = {"cnn1d": 97_578, "resnet20": 269_722, "resnet56": 853_018}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not already busy: ``cores`` minus the 1-minute load average, at least 1."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): assume a quiet machine
            load = 0.0
    return max(1, min(cores, round(cores - load)))


def recommended_threads(n_parameters: int, device_type: str = "cpu", default: int | None = None,
                        cores: int | None = None, load: float | None = None) -> int | None:
    """Intra-op threads for a model of ``n_parameters`` on ``device_type``; None: keep torch's default.

    ``default`` is torch's current count (``torch.get_num_threads()``), the most ever recommended.
    """
    if device_type != "cpu":
        return None
    if n_parameters < SMALL_MODEL_PARAMETERS:
        return 1
    free = free_cores(cores, load)
    return free if default is None else max(1, min(default, free))


def cli_threads(arch: str, device: str | None) -> int | None:
    """The ``clrfit`` command's default ``--threads`` for a built-in ``arch`` on ``device`` (None: the default)."""
    if device is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = torch.device(device).type
    return recommended_threads(_BUILT_IN_PARAMETERS[arch], device_type, default=torch.get_num_threads())


def oversubscription(threads: int, n_parameters: int, device_type: str = "cpu",
                     cores: int | None = None, load: float | None = None) -> str | None:
    """A one-line warning when ``threads`` intra-op threads exceed the free cores (a busy machine); else None.

    A quiet machine gets no warning, whatever the model: there extra threads cost
    little even where they gain little.
    """
    if device_type != "cpu":
        return None
    free = free_cores(cores, load)
    if threads <= free:
        return None
    best = recommended_threads(n_parameters, device_type, default=threads, cores=cores, load=load)
    total = available_cores() if cores is None else cores
    return (f"torch uses {threads} intra-op threads on CPU but only about {free} of {total} cores are free: "
            f"training can run many times slower; call torch.set_num_threads({best}) "
            f"(or set OMP_NUM_THREADS={best})")
