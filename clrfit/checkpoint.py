"""Checkpoints and exact resume (:class:`Checkpoint`), and the divergence guard (:class:`DivergenceGuard`).

``fit(..., checkpoint=PATH, checkpoint_every=K, resume=True, on_nan="raise")``
(and the same keywords on ``fit_cyclic`` / ``fit_one_cycle``) add them: the
guard to every fit unless ``on_nan="ignore"``, the writer only with
``checkpoint=``. The file format is read and validated by
:func:`clrfit.serialization.read_checkpoint`.

What a checkpoint file holds (one ``torch.save`` dict, read back with
``weights_only=True``):

=====================  ==========================================================
key                    contents
=====================  ==========================================================
``clrfit_checkpoint``  format version (``FORMAT``)
``model``              ``model.state_dict()``
``opt``                ``optimizer.state_dict()`` (moments, step counts, groups)
``precision``          the fp16 gradient scaler's state (empty otherwise)
``counters``           ``epoch``, ``batch_index`` (steps done in that epoch),
                       ``iteration`` (steps done in the fit), ``cycle``,
                       ``iter_in_cycle`` (position of the next step)
``epoch_rng_state``    torch CPU RNG state from which that epoch's data order is drawn
``rng_states``         torch, CUDA, numpy and python RNG states at that point
``loader_generators``  states of the data loaders' own torch generators, if any
``sampler_states``     ``state_dict()`` of samplers that have one (optional key)
``per_rank``           under DDP, for every rank: its RNG and loader generator
                       states and callback states (each rank records its own losses)
``sharded``            under FSDP only: the ``torch.distributed.checkpoint`` folder
                       holding model and optimizer (``model``/``opt`` are then empty)
``callbacks``          ``state_dict()`` of every stateful callback (the recorder's
                       history: lrs, momentums, losses, validation results)
``setup``              the fit's arguments, the schedule's own fields (callables
                       by module, qualified name and a hash of their code and
                       closure), and the shape of the run (steps per epoch,
                       samples, optimizer, precision, world size)
=====================  ==========================================================

When it is written: every ``checkpoint_every`` optimizer steps (if given), at
the end of every epoch (one cut short by ``CancelEpochException`` included: it is over), and
once more when Ctrl-C stops the fit. It is written atomically (temporary file,
fsync, rename), only by rank 0, and never after a non-finite loss or with
non-finite weights, so the file on disk is always the last good state. From
the start of the fit to its end the writer holds a lock file next to the
checkpoint (:class:`clrfit.serialization.FileLock`): a second writer is refused,
and taking it checks that the folder is writable before the first step.

Resume: ``resume=True`` loads the file in ``on_train_begin`` (a missing file
starts a fresh fit with a warning, so one command line serves the first run and
every restart), refuses a file written by a fit with other arguments
(``ValueError`` naming each difference), restores model, optimizer, scaler and
history, and loads the counters and RNG states into ``learn.state``
(:class:`clrfit.state.TrainingState`): the loop replays the epoch's data order
and skips the steps already done, so the resumed run matches an uninterrupted
one exactly on CPU.
On another number of ranks it resumes too when the global batch is the same
(:mod:`clrfit.elastic`; every rank then continues rank 0's random streams).

Divergence: a NaN/inf training loss stops the fit with :class:`DivergenceError`
(epoch, iteration, lr, momentum). Losses are checked as the recorder reads them
back from the device: every ``CHECK_EVERY`` (= ``Recorder.flush_every``, 32)
steps on every device, at every epoch end and before every checkpoint write, so
the error comes at most 31 steps after the bad one (it still names the bad
step). ``on_nan="restore"`` first puts model, optimizer and scaler back to the
last checkpoint this fit wrote or resumed from, or, before there is one, to
their state at the start of the fit (kept in CPU memory); ``on_nan="ignore"``
turns the check off.
"""
from __future__ import annotations

import bisect
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .callback import Callback
from .elastic import check_world_size, own_state, run_shape
from .fsdp import load_model_state, model_state, remove_old_shards
from .recorder import Recorder
from .rollback import LearnerSnapshot
from .schedules import plain
from .serialization import (
    FORMAT,
    KEYS,
    FileLock,
    get_rng_states,
    read_checkpoint,
    plain_state,
    remove_temp_files,
    save_state,
    set_rng_states,
)
from .state import COUNTERS, loader_generators, stateful_samplers
from .validation import ON_NAN, ArgumentError, check_bool, check_choice, check_int, escape, fail

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

__all__ = ["CHECK_EVERY", "COUNTERS", "Checkpoint", "DivergenceError", "DivergenceGuard", "FORMAT", "KEYS",
           "checkpoint_callbacks", "read_checkpoint", "run_setup", "setup_differences"]

#: The ``on_nan`` values that add a guard ("ignore" adds none).
_GUARDED = tuple(choice for choice in ON_NAN if choice != "ignore")
#: A non-finite loss is caught at most this many steps after it happened (losses are read back this often).
CHECK_EVERY = Recorder.flush_every


class DivergenceError(ValueError):
    """Training diverged: a non-finite loss (or weights); names where and with which lr."""

    def __init__(self, message: str, epoch: int, iteration: int, lr: float | None, momentum: float | None) -> None:
        super().__init__(message)
        self.epoch, self.iteration, self.lr, self.momentum = epoch, iteration, lr, momentum


def checkpoint_callbacks(
    checkpoint: str | Path | None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    on_nan: str = "raise",
) -> list[Callback]:
    """The callbacks for a fit's ``checkpoint=`` / ``checkpoint_every=`` / ``resume=`` / ``on_nan=``."""
    on_nan = check_choice("on_nan", on_nan, ON_NAN)
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    if checkpoint is None and resume:
        raise ArgumentError("resume", "{resume}=True needs {checkpoint}=PATH (the file to resume from)")
    if checkpoint is None and checkpoint_every is not None:
        raise ArgumentError("checkpoint_every",
                            f"{{checkpoint_every}}={checkpoint_every} needs {{checkpoint}}=PATH (where to write)")
    cbs: list[Callback] = []
    if checkpoint is not None:
        cbs.append(Checkpoint(checkpoint, checkpoint_every, resume))
    if on_nan != "ignore":
        cbs.append(DivergenceGuard(on_nan))
    return cbs


def _find(learn: "Learner", kind: type) -> Any:
    return next((cb for cb in learn._cbs if isinstance(cb, kind)), None)


class DivergenceGuard(Callback):
    """Stops the fit with :class:`DivergenceError` on a non-finite loss; ``on_nan="restore"`` first rolls back.

    Checks what the recorder has read back (no device sync of its own): at most
    ``CHECK_EVERY`` steps after a bad loss, at every epoch end, and before every
    checkpoint write (the writer asks).
    """

    order = 60  # after the recorder (50) and the checkpoint writer (55) in every event

    def __init__(self, on_nan: str = "raise") -> None:
        self.on_nan = check_choice("on_nan", on_nan, _GUARDED)
        self.checked = 0  # recorded losses already checked
        self.start: LearnerSnapshot | None = None

    def on_train_begin(self) -> None:
        learn = self.learn
        writer = _find(learn, Checkpoint)
        self.start = None
        if self.on_nan == "restore" and (writer is None or writer.saved_at is None):
            self.start = LearnerSnapshot(learn, everything=False, callbacks=())  # host memory
        self.checked = len(learn.recorder.raw_losses_)  # a resumed history was checked when it was written

    def on_batch_end(self) -> None:
        if len(self.learn.recorder.raw_losses_) != self.checked:  # the recorder read losses back this step
            self.check_losses()

    def on_epoch_end(self) -> None:
        self.check_losses()

    def check_losses(self) -> None:
        """Raise if a loss read back since the last check is not finite (agreed on by every rank)."""
        losses = self.learn.recorder.raw_losses_  # only what has been read back: no device sync here
        first_new, self.checked = self.checked, len(losses)
        if first_new == len(losses):
            return
        bad = None
        if not all(map(math.isfinite, losses[first_new:])):
            bad = next(j for j in range(first_new, len(losses)) if not math.isfinite(losses[j]))
        # Every rank reads back at the same steps; all must stop together or the others hang in a collective.
        if self.learn.dist.any_rank(bad is not None):
            if bad is None:
                self._diverged(first_new, "the training loss of another rank is not finite")
            self._diverged(bad, f"the training loss is {losses[bad]}")

    def check_weights(self, step: int) -> None:
        """Raise if any floating-point weight or buffer is not finite."""
        tensors = [t for t in self.learn.model.state_dict().values() if t.is_floating_point()]  # buffers too
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            self._diverged(step, "the weights are not finite")

    def _diverged(self, step: int, what: str) -> None:
        rec = self.learn.recorder
        j = min(step, len(rec.iterations) - 1)  # the recorder holds every step of the fit, resumed ones too
        lr = rec.group_lrs[j][-1] if j >= 0 else None
        mom = rec.group_moms[j][-1] if j >= 0 else None
        iteration = rec.iterations[j] if j >= 0 else step
        epoch = bisect.bisect_right(rec.epochs, j)
        where = f"epoch {epoch}, iteration {iteration} (lr={lr:.6g}, momentum={mom})" if lr is not None else f"iteration {iteration}"
        if self.on_nan == "restore":
            action = f"model and optimizer restored to {self._restore()}"
        else:
            action = "stopped; the model holds the diverged weights (on_nan='restore' puts back the last good state)"
        raise DivergenceError(
            f"training diverged: {what} at {where}; {action}. Lower the learning rate, or pass on_nan='ignore' to train on",
            epoch, iteration, lr, mom,
        )

    def _restore(self) -> str:
        writer = _find(self.learn, Checkpoint)
        if writer is not None and writer.saved_at is not None:
            _apply(self.learn, read_checkpoint(writer.path), writer.path, callbacks=False)
            epoch, batch_index, iteration = writer.saved_at
            return f"the checkpoint {writer.path} (epoch {epoch}, iteration {iteration})"
        self.start.restore()
        return "their state at the start of this fit"

    def __repr__(self) -> str:
        return f"DivergenceGuard(on_nan={self.on_nan!r})"


class Checkpoint(Callback):
    """Writes checkpoints and resumes from them (divergence is :class:`DivergenceGuard`'s).

    On resume ``learn.state`` is loaded in this callback's ``on_train_begin``
    (order 55): callbacks that need the counters should read them from
    ``on_epoch_begin`` on.
    """

    order = 55  # after the recorder (50) has this step's values, before the guard (60) and progress (90)

    def __init__(self, path: str | Path, every: int | None = None, resume: bool = False) -> None:
        if not isinstance(path, (str, Path)):
            raise TypeError(f"checkpoint must be a file path (str or pathlib.Path) or None; got {path!r}")
        if str(path) == "" or Path(path).is_dir():
            raise fail("checkpoint", "must be a file path, not a folder or empty", str(path))
        blocking = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:  # found now, not at the first write after an epoch of training
            raise fail("checkpoint", escape(f"must be a path in a folder; {str(blocking)!r} is a file"),
                       str(path))
        self.path = Path(path)
        self._lock: FileLock | None = None
        self.every = None if every is None else check_int("checkpoint_every", every, minimum=1)
        self.resume = check_bool("resume", resume)
        self._reset()

    def _reset(self) -> None:
        self.saved_at: tuple[int, int, int] | None = None  # counters of the last good checkpoint of this fit
        self.validation_rng: tuple[int, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ events
    def on_train_begin(self) -> None:
        self._reset()
        learn = self.learn
        if learn.is_main_process:
            # Before the first step: a second writer of this file is refused, and the lock
            # file's creation proves the folder writable (WriteError naming the cause if not).
            self._lock = FileLock(self.path, active=lambda: learn._running).acquire()
            remove_temp_files(self.path)  # left by a killed writer (a live one's are kept)
        self.setup = run_setup(learn, self._callback_states())
        if self.resume:
            self._resume()

    def on_batch_end(self) -> None:
        learn = self.learn
        done = learn.batch_index + 1
        # The last step of an epoch is saved at the epoch's end, after validation.
        if self.every is not None and done < learn.steps_per_epoch and (learn.iteration + 1) % self.every == 0:
            self._save(learn.epoch, done, learn.iteration + 1)

    def on_validate_begin(self) -> None:
        self.validation_rng = (self.learn.epoch, get_rng_states())  # an interrupted validation is redone from here

    def on_epoch_end(self) -> None:
        learn = self.learn
        # An epoch whose steps all ran, or that a CancelEpochException ended (it is over), is saved
        # as done; one stopped by Ctrl-C or a CancelFitException is left where its last checkpoint is,
        # so that a resume finishes it.
        stopped = learn.interrupted or learn.fit_cancelled
        if not stopped or (not learn.interrupted and learn.batch_index >= learn.steps_per_epoch):
            self._save(learn.epoch + 1, 0, learn.iteration)

    def on_train_end(self) -> None:
        try:
            self._final_save()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _final_save(self) -> None:
        learn = self.learn
        if not learn.interrupted or self.saved_at == (learn.epoch, learn.batch_index, learn.iteration):
            return
        rng = None
        if self.validation_rng is not None and self.validation_rng[0] == learn.epoch:
            rng = self.validation_rng[1]
        self._save(learn.epoch, learn.batch_index, learn.iteration, rng)

    # ------------------------------------------------------------------ writing
    def _save(self, epoch: int, batch_index: int, iteration: int, rng: dict[str, Any] | None = None) -> None:
        learn = self.learn
        learn.recorder.flush()
        guard = _find(learn, DivergenceGuard)
        if guard is not None:  # the file on disk is always the last good state
            guard.check_losses()
            guard.check_weights(iteration - 1)
        rng = rng if rng is not None else get_rng_states()
        # batch_index 0: the next epoch has not drawn its data order yet; it draws it from the current state.
        epoch_rng_state = learn.state.epoch_rng_state if batch_index > 0 else rng["torch"]
        generators = learn.state.loader_generators if batch_index > 0 else [g.get_state() for g in _generators(learn)]
        samplers = learn.state.sampler_states if batch_index > 0 else [
            plain_state(s.state_dict()) for s in stateful_samplers((learn.data.trn_dl,))]
        cycle, iter_in_cycle = learn.schedule.position(iteration)
        # What differs between ranks: random streams, loader generators, local histories (each rank's own losses).
        own = {"epoch_rng_state": epoch_rng_state, "rng_states": rng, "loader_generators": generators,
               "sampler_states": samplers, "callbacks": self._callback_states(epochs_done=epoch)}
        state = {
            "clrfit_checkpoint": FORMAT,
            **model_state(learn, self.path, iteration),  # FSDP: every rank writes its shards (clrfit.fsdp)
            "precision": learn.precision.state_dict(),
            "counters": dict(epoch=epoch, batch_index=batch_index, iteration=iteration, cycle=cycle,
                             iter_in_cycle=iter_in_cycle),
            **own,
            "per_rank": _gather(learn, own),
            "setup": self.setup,
        }
        if learn.is_main_process:
            save_state(state, self.path)
            remove_old_shards(self.path, state.get("sharded"))
        learn.dist.barrier()
        self.saved_at = (epoch, batch_index, iteration)
        if guard is not None:
            guard.start = None  # the file is now the restore point

    def _callback_states(self, epochs_done: int | None = None) -> dict[str, Any]:
        states = {}
        for key, cb in _keyed_callbacks(self.learn):
            state = cb.state_dict()
            if not state:
                continue
            if cb is self.learn.recorder and epochs_done is not None:
                # An interrupted epoch still marks its end in the recorder; the resumed run marks it again.
                state["epochs"] = state["epochs"][:epochs_done]
            states[key] = plain_state(state)  # a numpy scalar would make the file unloadable (weights_only)
        return states

    # ------------------------------------------------------------------ resuming
    def _resume(self) -> None:
        learn, path = self.learn, self.path
        if not path.is_file():
            warnings.warn(f"resume=True: no checkpoint at {path} yet; starting a fresh fit", stacklevel=2)
            return
        state = read_checkpoint(path)
        # Another world size is honoured when the global batch and order agree (clrfit.elastic); else it is named.
        differences = setup_differences(*check_world_size(state["setup"], self.setup))
        if differences:
            raise ValueError(
                f"resume: {path} was written by a different fit; {'; '.join(differences)}. "
                "Pass the same arguments as the interrupted fit, or resume=False to start over"
            )
        own = own_state(state.get("per_rank"), learn.dist.rank, learn.dist.world_size)
        if own is not None:  # each rank continues its own random streams and history (rank 0's on another world size)
            state.update(own)
        _apply(learn, state, path, callbacks=True)
        for g, g_state in zip(_generators(learn), state["loader_generators"]):  # count checked in setup
            g.set_state(g_state)
        for sampler, sampler_state in zip(stateful_samplers((learn.data.trn_dl,)), state.get("sampler_states", [])):
            sampler.load_state_dict(sampler_state)
        counters = state["counters"]
        if counters["batch_index"] == 0 or counters["epoch"] >= learn.n_epochs:
            # At an epoch boundary the next data order is still to be drawn: draw it from the saved state.
            set_rng_states(state["rng_states"])
            learn.state.load_state_dict(state)
        else:  # mid-epoch: the loop replays the epoch's order, skips the done steps, then continues these streams
            learn.state.load_state_dict(state, rng_states=state["rng_states"])
        self.saved_at = (learn.epoch, learn.batch_index, learn.iteration)

    def __repr__(self) -> str:
        return f"Checkpoint(path={str(self.path)!r}, every={self.every}, resume={self.resume})"


# ---------------------------------------------------------------------- what must match on resume


def run_setup(learn: "Learner", callback_states: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must not change between a run and its resumption: fit arguments, the schedule and the run's shape."""
    dataset = learn.data.trn_dl.dataset
    try:
        n_samples = len(dataset)
    except TypeError:
        n_samples = None
    setup = {key: plain(value) for key, value in getattr(learn, "fit_args", {}).items()}
    setup.update(
        schedule=plain(learn.schedule),  # its class and fields; callables by code (schedules.callable_fingerprint)
        steps_per_epoch=learn.steps_per_epoch,
        train_batches=len(learn.data.trn_dl),
        train_samples=n_samples,
        optimizer=type(learn.opt).__name__,
        param_groups=learn.n_groups,
        precision=learn.precision.name,
        world_size=learn.dist.world_size,
        loader_generators=len(_generators(learn)),
        stateful_callbacks=tuple(sorted(callback_states or {})),
        **run_shape(learn),
    )
    return setup


def setup_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``'name: <in checkpoint> in the checkpoint, <now> now'`` for every setting that differs."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        if key not in saved and key in _ADDED_LATER:  # a checkpoint of an older clrfit: not recorded then
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if plain(a) != plain(b):
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


#: Setup entries newer than the checkpoint format: a file without them still resumes.
_ADDED_LATER = frozenset({"wds_sched_mult", "metrics"})


# ---------------------------------------------------------------------- helpers


def _generators(learn: "Learner") -> list[torch.Generator]:
    return loader_generators((learn.data.trn_dl, learn.data.val_dl))


def _keyed_callbacks(learn: "Learner") -> list[tuple[str, Callback]]:
    """``(key, callback)`` for the fit's callbacks other than the writer: class name, ``#2``... for repeats."""
    out, seen = [], {}
    for cb in learn._cbs:
        if isinstance(cb, Checkpoint):
            continue
        name = type(cb).__qualname__
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
    return out


def _apply(learn: "Learner", state: dict[str, Any], source: Any, callbacks: bool) -> None:
    """Load model, optimizer, scaler (and callback states); on any failure put everything back."""
    keyed = _keyed_callbacks(learn) if callbacks else []
    snapshot = LearnerSnapshot(learn, everything=False, callbacks=[cb for _, cb in keyed])
    try:
        load_model_state(learn, state, Path(source))  # a sharded checkpoint is resharded to this run
        learn.precision.load_state_dict(state["precision"])
        for key, cb in keyed:
            if key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][key])
    except Exception as err:
        snapshot.restore()
        raise ValueError(f"resume: {source} does not fit this learner (model, optimizer or callbacks differ): {err}") from None


def _gather(learn: "Learner", value: Any) -> list[Any] | None:
    """``value`` of every rank, in rank order (``None`` when not distributed)."""
    if not learn.dist.enabled or not dist.is_initialized():
        return None
    values: list[Any] = [None] * learn.dist.world_size
    dist.all_gather_object(values, value)
    return values
