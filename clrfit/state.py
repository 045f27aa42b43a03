"""Where a fit stands, as one value: :class:`TrainingState`; and the process-level state around it.

``TrainingState`` holds the integer counters of a fit (epoch, steps done in the
epoch, iteration, cycle, iteration in cycle) and what replays the data order
of the current epoch (the torch RNG state the epoch's order is drawn from, the
states of the loaders' own generators at that point, and the RNG states to
continue with once the done steps are skipped). Its ``state_dict`` is what a checkpoint stores under
``counters`` and friends; ``load_state_dict`` is all a resume does to the loop.

Also here, because the loop, the checkpoint writer and the range test all need
them: :func:`loader_generators` (the one finder of the data loaders' own
``torch.Generator``\\ s) and :class:`sigint` (the one Ctrl-C handler: it either
asks the loop to stop after the current step, or holds the signal while state
is being put back and delivers it afterwards).
"""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .serialization import COUNTERS, plain_state, set_rng_states



@dataclass
class TrainingState:
    """Position of a fit (integer counters) and the random state that replays the current epoch's data order."""

    epoch: int = 0
    batch_index: int = 0  # optimizer steps done in this epoch
    iteration: int = 0  # optimizer steps done in this fit
    cycle: int = 0
    iter_in_cycle: int = 0
    epoch_rng_state: torch.Tensor | None = None  # torch CPU RNG just before the epoch's loader is iterated
    loader_generators: list[torch.Tensor] = field(default_factory=list, repr=False)  # their states at that point
    sampler_states: list[Any] = field(default_factory=list, repr=False)  # stateful samplers' state_dict() then
    resume_rng: dict[str, Any] | None = field(default=None, repr=False)  # set by a mid-epoch resume, used once

    @property
    def counters(self) -> dict[str, int]:
        """The five counters as a plain dict."""
        return {name: getattr(self, name) for name in COUNTERS}

    def state_dict(self) -> dict[str, Any]:
        """Counters, epoch RNG and loader generator states, as plain values and tensors (``weights_only=True``)."""
        return {"counters": self.counters, "epoch_rng_state": self.epoch_rng_state,
                "loader_generators": list(self.loader_generators), "sampler_states": list(self.sampler_states)}

    def load_state_dict(self, state: dict[str, Any], rng_states: dict[str, Any] | None = None) -> None:
        """Continue from ``state``; with ``rng_states`` (mid-epoch) the loop replays the epoch and then restores them."""
        for name in COUNTERS:
            setattr(self, name, int(state["counters"][name]))
        self.epoch_rng_state = state.get("epoch_rng_state")
        self.loader_generators = list(state.get("loader_generators", []))
        self.sampler_states = list(state.get("sampler_states", []))
        self.resume_rng = rng_states

    def begin_epoch(self, dl: Any, generators: list[torch.Generator], samplers: list[Any], skip: int) -> Iterator[Any]:
        """``iter(dl)`` for this epoch, keeping what replays its order first; ``skip`` batches already done are passed over.

        The torch RNG state and the loaders' generator and sampler states just before
        the loader is iterated are kept here: with them, a checkpoint replays this
        epoch's order. A mid-epoch resume draws the order from the saved state, skips
        the done batches, then continues with the RNG states saved at the checkpoint.
        """
        sampler = getattr(dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if self.resume_rng is not None:
            torch.set_rng_state(self.epoch_rng_state)
        self.epoch_rng_state = torch.get_rng_state()
        self.loader_generators = [g.get_state() for g in generators]
        self.sampler_states = [plain_state(s.state_dict()) for s in samplers]
        batches = iter(dl)
        for _ in range(skip):
            if next(batches, None) is None:  # resuming at an epoch's end (a short last step)
                break
        if self.resume_rng is not None:
            set_rng_states(self.resume_rng)
            self.resume_rng = None
        return batches


def loader_generators(loaders: Any) -> list[torch.Generator]:
    """The loaders' own ``torch.Generator``\\ s, each once (a loader shuffling with one does not use the global RNG)."""
    found: dict[int, torch.Generator] = {}
    for dl in loaders:
        if dl is None:
            continue
        batch_sampler = getattr(dl, "batch_sampler", None)
        for owner in (dl, getattr(dl, "sampler", None), getattr(batch_sampler, "sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator):
                found[id(g)] = g
    return list(found.values())


def stateful_samplers(loaders: Any) -> list[Any]:
    """The loaders' samplers and batch samplers that expose ``state_dict`` / ``load_state_dict``, each once.

    Their state is taken just before an epoch's loader is iterated and put back
    before a resumed epoch is replayed, as for the loaders' generators.
    """
    found: dict[int, Any] = {}
    for dl in loaders:
        if dl is None:
            continue
        batch_sampler = getattr(dl, "batch_sampler", None)
        for owner in (getattr(dl, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
            if owner is not None and owner is not dl and callable(getattr(owner, "state_dict", None)) \
                    and callable(getattr(owner, "load_state_dict", None)):
                found[id(owner)] = owner
    return list(found.values())


def start_persistent_workers(loaders: Any) -> None:
    """Start the iterators of loaders with persistent workers now, with every random state put back.

    A DataLoader draws its workers' base seed from the RNG when its iterator is
    created, which a persistent loader does once, at its first epoch. Created
    here, at the start of every fit, each epoch then draws only its sample order,
    the same in a resumed run as in an uninterrupted one.
    """
    for dl in loaders:
        if dl is None or not getattr(dl, "persistent_workers", False) or not getattr(dl, "num_workers", 0):
            continue
        generators = [(g, g.get_state()) for g in loader_generators([dl])]
        samplers = [(s, s.state_dict()) for s in stateful_samplers([dl])]
        torch_state = torch.get_rng_state()
        iter(dl)
        torch.set_rng_state(torch_state)
        for g, g_state in generators:
            g.set_state(g_state)
        for sampler, sampler_state in samplers:
            sampler.load_state_dict(sampler_state)


class sigint:
    """The one SIGINT handler: calls ``on_signal`` on the first Ctrl-C of the block.

    By default a second Ctrl-C interrupts at once (the previous handler is back);
    ``keep=True`` handles every Ctrl-C of the block like the first.
    ``deliver=True``: the signal is re-raised when the block ends, so a Ctrl-C
    that arrived while state was being restored is not lost. Outside the
    main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, on_signal: Callable[[], None] | None = None, deliver: bool = False, keep: bool = False) -> None:
        self.on_signal = on_signal
        self.deliver = deliver
        self.keep = keep  # True: a repeated Ctrl-C is handled like the first (DDP: stops must be agreed)
        self.previous: Any = None
        self.received = False

    def __enter__(self) -> "sigint":
        self.received = False
        # A process that ignores SIGINT (nohup, a launcher, SIG_IGN set by the user) keeps ignoring it.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        if self.on_signal is not None:
            self.on_signal()
        if not (self.deliver or self.keep):  # a second Ctrl-C is immediate
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
            if self.deliver and self.received:
                signal.raise_signal(signal.SIGINT)
