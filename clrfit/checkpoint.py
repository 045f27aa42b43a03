"""Checkpoints, exact resume and divergence handling: one callback, :class:`Checkpoint`.

``fit(..., checkpoint=PATH, checkpoint_every=K, resume=True, on_nan="raise")``
(and the same keywords on ``fit_cyclic`` / ``fit_one_cycle``) add this callback.

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
``per_rank``           under DDP, for every rank: its RNG and loader generator
                       states and callback states (each rank records its own losses)
``callbacks``          ``state_dict()`` of every stateful callback (the recorder's
                       history: lrs, momentums, losses, validation results)
``setup``              the fit's arguments and the shape of the run (steps per
                       epoch, samples, optimizer, precision, world size)
=====================  ==========================================================

When it is written: every ``checkpoint_every`` optimizer steps (if given), at
the end of every epoch, and once more when Ctrl-C stops the fit. It is written
atomically (temporary file, fsync, rename), only by rank 0, and never after a
non-finite loss or with non-finite weights, so the file on disk is always the
last good state.

Resume: ``resume=True`` loads the file in ``on_train_begin`` (a missing file
starts a fresh fit with a warning, so one command line serves the first run and
every restart), refuses a file written by a fit with other arguments
(``ValueError`` naming each difference), restores model, optimizer, scaler and
history, and hands the learner the counters and RNG states: the loop replays
the epoch's data order and skips the steps already done, so the resumed run
matches an uninterrupted one exactly on CPU.

Divergence: a NaN/inf training loss stops the fit with :class:`DivergenceError`
(epoch, iteration, lr, momentum). Losses are checked as the recorder reads them
back from the device: every step on CPU, every ``Recorder.flush_every`` (32)
steps on GPU, at every epoch end and before every checkpoint write, so on GPU
the error may come up to 31 steps after the bad one (it still names the bad
step). ``on_nan="restore"`` first puts model, optimizer and scaler back to the
last checkpoint this fit wrote or resumed from, or, before there is one, to
their state at the start of the fit (kept in CPU memory); ``on_nan="ignore"``
turns the check off.
"""
from __future__ import annotations

import bisect
import math
import numbers
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .callback import Callback
from .serialization import get_rng_states, load_state, remove_temp_files, save_state, set_rng_states
from .validation import check_bool, check_choice, check_int

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

FORMAT = 1
KEYS = ("clrfit_checkpoint", "model", "opt", "precision", "counters", "epoch_rng_state", "rng_states",
        "loader_generators", "callbacks", "setup")
COUNTERS = ("epoch", "batch_index", "iteration", "cycle", "iter_in_cycle")
ON_NAN = ("raise", "restore", "ignore")


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
    if checkpoint is None and on_nan == "ignore" and checkpoint_every is None and not resume:
        return []
    return [Checkpoint(checkpoint, checkpoint_every, resume, on_nan)]


class Checkpoint(Callback):
    """Writes checkpoints, resumes from them, and stops (or restores) on divergence.

    On resume the counters are set in this callback's ``on_train_begin`` (order 60):
    callbacks that need them should read them from ``on_epoch_begin`` on.
    """

    order = 60  # after the recorder (50) has this step's values, before progress output (90)

    def __init__(
        self,
        path: str | Path | None = None,
        every: int | None = None,
        resume: bool = False,
        on_nan: str = "raise",
    ) -> None:
        if path is not None and not isinstance(path, (str, Path)):
            raise TypeError(f"checkpoint must be a file path (str or pathlib.Path) or None; got {path!r}")
        if path is not None and (str(path) == "" or Path(path).is_dir()):
            raise ValueError(f"checkpoint must be a file path, not a folder or empty; got {str(path)!r}")
        self.path = None if path is None else Path(path)
        self.every = None if every is None else check_int("checkpoint_every", every, minimum=1)
        self.resume = check_bool("resume", resume)
        self.on_nan = check_choice("on_nan", on_nan, ON_NAN)
        if self.resume and self.path is None:
            raise ValueError("resume=True needs checkpoint=PATH (the file to resume from)")
        if self.every is not None and self.path is None:
            raise ValueError(f"checkpoint_every={every} needs checkpoint=PATH (where to write)")
        self._reset()

    def _reset(self) -> None:
        self.saved_at: tuple[int, int, int] | None = None  # counters of the last good checkpoint of this fit
        self.checked = 0  # recorded losses already checked for divergence
        self.start_state: dict[str, Any] | None = None
        self.validation_rng: tuple[int, dict[str, Any]] | None = None
        self.epoch_generators: list[torch.Tensor] = []

    # ------------------------------------------------------------------ events
    def on_train_begin(self) -> None:
        self._reset()
        learn = self.learn
        if self.path is not None and learn.is_main_process:
            remove_temp_files(self.path)  # left by a process killed while writing
        self.setup = run_setup(learn, self._callback_states())
        if self.resume:
            self._resume()
        if self.on_nan == "restore" and self.saved_at is None:
            self.start_state = _to_cpu(_training_state(learn))
        self.checked = len(learn.recorder.raw_losses_)

    def on_batch_end(self) -> None:
        self._check_losses()
        learn = self.learn
        done = learn.batch_index + 1
        # The last step of an epoch is saved at the epoch's end, after validation.
        if self.every is not None and done < learn.nb and (learn.iteration + 1) % self.every == 0:
            self._save(learn.epoch, done, learn.iteration + 1)

    def on_epoch_begin(self) -> None:
        if self.path is not None:  # loaders with their own generator replay the epoch from these states
            self.epoch_generators = [g.get_state() for g in loader_generators(self.learn)]

    def on_validate_begin(self) -> None:
        if self.path is not None:  # an interrupted validation is redone on resume from this point
            self.validation_rng = (self.learn.epoch, get_rng_states())

    def on_epoch_end(self) -> None:
        self._check_losses()
        learn = self.learn
        # Only an epoch whose steps all ran is saved as done (not one cut short by a cancel or Ctrl-C).
        if self.path is not None and not learn.interrupted and learn.batch_index >= learn.nb:
            self._save(learn.epoch + 1, 0, learn.iteration)

    def on_train_end(self) -> None:
        learn = self.learn
        if self.path is None or not learn.interrupted:
            return
        if self.saved_at == (learn.epoch, learn.batch_index, learn.iteration):
            return
        rng = None
        if self.validation_rng is not None and self.validation_rng[0] == learn.epoch:
            rng = self.validation_rng[1]
        self._save(learn.epoch, learn.batch_index, learn.iteration, rng)

    # ------------------------------------------------------------------ writing
    def _save(self, epoch: int, batch_index: int, iteration: int, rng: dict[str, Any] | None = None) -> None:
        learn = self.learn
        learn.recorder.flush()
        self._check_losses()
        self._check_weights(iteration - 1)
        rng = rng if rng is not None else get_rng_states()
        epoch_rng_state = learn.epoch_rng_state if batch_index > 0 else rng["torch"]
        generators = self.epoch_generators if batch_index > 0 else [g.get_state() for g in loader_generators(learn)]
        cycle, iter_in_cycle = _position(learn, iteration)
        # What differs between ranks: random streams, loader generators, local histories (each rank's own losses).
        own = {"epoch_rng_state": epoch_rng_state, "rng_states": rng, "loader_generators": generators,
               "callbacks": self._callback_states(epochs_done=epoch)}
        state = {
            "clrfit_checkpoint": FORMAT,
            **_training_state(learn),
            "counters": dict(epoch=epoch, batch_index=batch_index, iteration=iteration, cycle=cycle,
                             iter_in_cycle=iter_in_cycle),
            # batch_index 0: the next epoch has not drawn its data order yet; it draws it from the current state.
            **own,
            "per_rank": _gather(learn, own),
            "setup": self.setup,
        }
        if learn.is_main_process:
            save_state(state, self.path)
        learn.dist.barrier()
        self.saved_at = (epoch, batch_index, iteration)
        self.start_state = None  # the file is now the restore point

    def _callback_states(self, epochs_done: int | None = None) -> dict[str, Any]:
        states, seen = {}, {}
        for cb in self.learn._cbs:
            if cb is self:
                continue
            state = cb.state_dict()
            if not state:
                continue
            name = type(cb).__qualname__
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            if cb is self.learn.recorder and epochs_done is not None:
                # An interrupted epoch still marks its end in the recorder; the resumed run marks it again.
                state["epochs"] = state["epochs"][:epochs_done]
            states[key] = state
        return states

    # ------------------------------------------------------------------ resuming
    def _resume(self) -> None:
        learn, path = self.learn, self.path
        if not path.is_file():
            warnings.warn(f"resume=True: no checkpoint at {path} yet; starting a fresh fit", stacklevel=2)
            return
        state = read_checkpoint(path)
        differences = setup_differences(state["setup"], self.setup)
        if differences:
            raise ValueError(
                f"resume: {path} was written by a different fit; {'; '.join(differences)}. "
                "Pass the same arguments as the interrupted fit, or resume=False to start over"
            )
        if state.get("per_rank"):  # each rank continues its own random streams and history
            state.update(state["per_rank"][learn.dist.rank])
        _apply(learn, state, path, callbacks=True)
        counters = state["counters"]
        learn.epoch, learn.batch_index, learn.iteration = counters["epoch"], counters["batch_index"], counters["iteration"]
        learn.cycle, learn.iter_in_cycle = counters["cycle"], counters["iter_in_cycle"]
        for g, g_state in zip(loader_generators(learn), state["loader_generators"]):  # count checked in setup
            g.set_state(g_state)
        if learn.batch_index == 0 or learn.epoch >= learn.n_epochs:
            # At an epoch boundary the next data order is still to be drawn: draw it from the saved state.
            set_rng_states(state["rng_states"])
        else:
            learn.resume_state = {"epoch_rng_state": state["epoch_rng_state"], "rng_states": state["rng_states"]}
        self.saved_at = (learn.epoch, learn.batch_index, learn.iteration)

    # ------------------------------------------------------------------ divergence
    def _check_losses(self) -> None:
        losses = self.learn.recorder.raw_losses_  # only what has been read back: no device sync here
        first_new, self.checked = self.checked, len(losses)
        if self.on_nan == "ignore" or first_new == len(losses):
            return
        bad = next((j for j in range(first_new, len(losses)) if not math.isfinite(losses[j])), None)
        # Every rank reads back at the same steps; all must stop together or the others hang in a collective.
        if self.learn.dist.any_rank(bad is not None):
            if bad is None:
                self._diverged(first_new, "the training loss of another rank is not finite")
            self._diverged(bad, f"the training loss is {losses[bad]}")

    def _check_weights(self, step: int) -> None:
        if self.on_nan == "ignore":
            return
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
        learn = self.learn
        if self.saved_at is not None:
            _apply(learn, read_checkpoint(self.path), self.path, callbacks=False)
            epoch, batch_index, iteration = self.saved_at
            return f"the checkpoint {self.path} (epoch {epoch}, iteration {iteration})"
        _apply(learn, self.start_state, "the start-of-fit snapshot", callbacks=False)
        return "their state at the start of this fit"

    def __repr__(self) -> str:
        return f"Checkpoint(path={str(self.path) if self.path else None!r}, every={self.every}, resume={self.resume}, on_nan={self.on_nan!r})"


# ---------------------------------------------------------------------- helpers


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint file (``weights_only=True``); ``ValueError`` naming what is wrong."""
    state = load_state(path, "cpu", required=KEYS)  # CPU: RNG states must stay CPU tensors
    if state["clrfit_checkpoint"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['clrfit_checkpoint']!r}; this clrfit reads format {FORMAT}")
    problems = []
    for key in ("model", "opt", "precision", "counters", "rng_states", "callbacks", "setup"):
        if not isinstance(state[key], dict):
            problems.append(f"{key} is a {type(state[key]).__name__}, not a dict")
    if isinstance(state["counters"], dict):
        for name in COUNTERS:
            value = state["counters"].get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"counters[{name!r}] is {value!r}, not an integer >= 0")
    if not isinstance(state["epoch_rng_state"], torch.Tensor) or state["epoch_rng_state"].dtype != torch.uint8:
        problems.append("epoch_rng_state is not a torch RNG state (uint8 tensor)")
    if isinstance(state["rng_states"], dict) and not {"torch", "numpy", "python"} <= set(state["rng_states"]):
        problems.append("rng_states lacks torch/numpy/python")
    if not isinstance(state["loader_generators"], list) or not all(
            isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in state["loader_generators"]):
        problems.append("loader_generators is not a list of generator states (uint8 tensors)")
    per_rank = state.get("per_rank")
    own = {"epoch_rng_state", "rng_states", "loader_generators", "callbacks"}
    if per_rank is not None and not (isinstance(per_rank, list) and all(
            isinstance(r, dict) and own <= set(r) for r in per_rank)):
        problems.append("per_rank is not a list of per-rank states")
    if problems:
        raise ValueError(f"{path} is not a usable clrfit checkpoint: {'; '.join(problems)}")
    return state


def run_setup(learn: "Learner", callback_states: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must not change between a run and its resumption: fit arguments and the run's shape."""
    dataset = learn.data.trn_dl.dataset
    try:
        n_samples = len(dataset)
    except TypeError:
        n_samples = None
    setup = {key: plain(value) for key, value in getattr(learn, "fit_args", {}).items()}
    setup.update(
        steps_per_epoch=learn.nb,
        train_batches=len(learn.data.trn_dl),
        train_samples=n_samples,
        optimizer=type(learn.opt).__name__,
        param_groups=learn.n_groups,
        precision=learn.precision.name,
        world_size=learn.dist.world_size,
        loader_generators=len(loader_generators(learn)),
        stateful_callbacks=tuple(sorted(callback_states or {})),
    )
    return setup


def setup_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``'name: <in checkpoint> in the checkpoint, <now> now'`` for every setting that differs."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if plain(a) != plain(b):
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def plain(value: Any) -> Any:
    """A value as plain python (bool, int, float, str, None, tuples): comparable, and safe to load."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return tuple(plain(v) for v in items) if isinstance(items, (list, tuple)) else plain(items)
    return repr(value)  # a callable or other object: compared by its repr


def _training_state(learn: "Learner") -> dict[str, Any]:
    return {"model": learn.model.state_dict(), "opt": learn.opt.state_dict(), "precision": learn.precision.state_dict()}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _apply(learn: "Learner", state: dict[str, Any], source: Any, callbacks: bool) -> None:
    """Load model, optimizer, scaler (and callback states); on any failure put everything back."""
    before = _to_cpu(_training_state(learn))
    recorder_before = learn.recorder.state_dict() if callbacks else None
    try:
        learn.model.load_state_dict(state["model"])
        learn.opt.load_state_dict(state["opt"])
        learn.precision.load_state_dict(state["precision"])
        if callbacks:
            _load_callback_states(learn, state["callbacks"])
    except Exception as err:
        learn.model.load_state_dict(before["model"])
        learn.opt.load_state_dict(before["opt"])
        learn.precision.load_state_dict(before["precision"])
        if recorder_before is not None:
            learn.recorder.load_state_dict(recorder_before)
        raise ValueError(f"resume: {source} does not fit this learner (model, optimizer or callbacks differ): {err}") from None


def _load_callback_states(learn: "Learner", states: dict[str, Any]) -> None:
    seen: dict[str, int] = {}
    for cb in learn._cbs:
        if isinstance(cb, Checkpoint):
            continue
        name = type(cb).__qualname__
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}#{seen[name]}"
        if key in states:
            cb.load_state_dict(states[key])


def loader_generators(learn: "Learner") -> list[torch.Generator]:
    """The loaders' own ``torch.Generator``s (a loader shuffling with one does not draw from the global RNG)."""
    found: dict[int, torch.Generator] = {}
    for dl in (learn.data.trn_dl, learn.data.val_dl):
        if dl is None:
            continue
        for owner in (dl, getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator):
                found[id(g)] = g
    return list(found.values())


def _gather(learn: "Learner", value: Any) -> list[Any] | None:
    """``value`` of every rank, in rank order (``None`` when not distributed)."""
    import torch.distributed as dist

    if not learn.dist.enabled or not dist.is_initialized():
        return None

    values: list[Any] = [None] * learn.dist.world_size
    dist.all_gather_object(values, value)
    return values


def _position(learn: "Learner", iteration: int) -> tuple[int, int]:
    """``(cycle, iteration in cycle)`` of the step at ``iteration``, from the fit's schedule."""
    from .scheduler import ParamScheduler

    for cb in learn._cbs:
        if isinstance(cb, ParamScheduler):
            return cb.schedule.position(iteration)
    return learn.cycle, learn.iter_in_cycle
