"""LR range tests (Leslie Smith): ``lr_find`` and ``lr_find2``, run so that the learner is left exactly as it was.

Both sweep the learning rate up from ``start_lr`` to ``end_lr`` (see
:class:`clrfit.schedules.LRSweep`), one value per optimizer step, and record the
training loss of every step in a :class:`RangeTestRecorder`, which becomes
``learn.sched`` (``learn.lr_find(); learn.sched.plot()``). ``learn.recorder``, the
history of the last fit, is never touched.

- ``lr_find``: at most one epoch (one step per training batch).
- ``lr_find2``: exactly ``num_it`` steps, across epochs if needed, and after every
  step the loss and metrics on the next validation batch (the validation loader
  is cycled).

Smoothed loss: the debiased EMA ``avg = 0.98*avg + 0.02*loss``,
``smooth = avg / (1 - 0.98**k)``. The sweep stops early (divergence; always for
``lr_find``, unless ``stop_dv=False`` for ``lr_find2``) when the loss is NaN/inf, or
the smoothed loss exceeds 4 x the best smoothed loss, the best counting only steps
after the 10th (as fastai 0.7), so a noisy start cannot end a sweep before step 12;
that last step is recorded.

Restoration: before the sweep, every parameter, buffer and gradient of the
model, the optimizer's state and param groups, the RNG states (torch, CUDA,
numpy, python, and any DataLoader generators), the fp16 grad scaler, learner-level
callbacks' ``state_dict`` and every attribute of the learner are snapshotted in
host memory; they are put back whatever ends the sweep (finished, diverged, an
exception, Ctrl-C). Nothing is written to disk, so finders never collide.
On an exception the learner keeps its previous ``learn.sched``; the partial
recorder is attached to the exception as ``err.range_test``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from .callback import Callback, CancelFitException
from .recorder import SMOOTHING, Recorder
from .rollback import LearnerSnapshot
from .schedules import LRSweep
from .runtime import compile_backend
from .state import loader_generators, sigint
from .suggest import Suggestions, combine_sweeps, end_points, suggest, warmup_points
from .validation import ArgumentError, as_group_values, check_bool, check_int, check_number

__all__ = ["LearnerSnapshot", "RangeTestRecorder", "lr_find", "lr_find2", "smooth_curve"]

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .learner import Learner

DIVERGENCE_FACTOR = 4.0
BEST_AFTER = 10  # the best smoothed loss counts only steps after this one, so no stop before step 12


class RangeTestRecorder(Recorder):
    """``learn.sched`` after a range test: lrs, raw and smoothed losses, per-step validation, suggestions, plots."""

    def __init__(self, num_it: int, stop_dv: bool = True, val_dl: Any = None, linear: bool = False) -> None:
        super().__init__()
        self.num_it = num_it
        self.stop_dv = stop_dv
        self.linear = linear
        self.val_dl = val_dl
        self.best_loss = math.inf
        self.diverged = False
        self.suggestions: Suggestions | None = None
        self.sweeps: list[RangeTestRecorder] = [self]  # lr_find2(n_sweeps=k): every sweep, this one first
        self._val_batches: Iterator[Any] | None = None
        self._first_val_batch: Any = None

    @property
    def validates_each_step(self) -> bool:
        """True for ``lr_find2``: one validation batch after every step."""
        return self.val_dl is not None

    def on_train_begin(self) -> None:
        self.metric_names = list(self.learn.metric_names) if self.validates_each_step else []
        if self.validates_each_step:
            # Fetched before the first step so an empty loader fails before any weight changes.
            self._val_batches = iter(self.val_dl)
            self._first_val_batch = self._next_val_batch(restart=False)

    def on_batch_end(self) -> None:
        learn = self.learn
        if not self.record_step():  # cancelled before its loss: nothing to record, nothing to judge
            return
        values = learn.step_loss.detach().reshape(1).to(learn.device, torch.float64)
        if self.validates_each_step:
            values = torch.cat([values, self._validation_step()])
        learn.dist.all_reduce_sum(values)  # same numbers, hence same stop decision, on every rank
        values = values.tolist()
        loss = values[0] / learn.dist.world_size
        smooth = self.add_loss(loss)
        if self.validates_each_step:
            count = values[2]
            self.val_losses.append(values[1] / count)
            self.rec_metrics.append([v / count for v in values[3:]])
        if self.stop_dv and (not math.isfinite(loss) or not math.isfinite(smooth)
                             or smooth > DIVERGENCE_FACTOR * self.best_loss):
            self.diverged = True
            raise CancelFitException()
        step = len(self.raw_losses_)
        if step > BEST_AFTER:  # as fastai 0.7: the first steps' smoothed loss is too noisy to be the reference
            self.best_loss = min(self.best_loss, smooth)
        if step >= self.num_it:
            raise CancelFitException()

    def on_train_end(self) -> None:
        super().on_train_end()
        self._val_batches = self._first_val_batch = None

    @torch.no_grad()
    def _validation_step(self) -> torch.Tensor:
        """``[loss * n, n, metric * n, ...]`` on the next validation batch, a float64 device tensor."""
        learn = self.learn
        if self._first_val_batch is not None:
            batch, self._first_val_batch = self._first_val_batch, None
        else:
            batch = self._next_val_batch(restart=True)
        model = learn.eval_model
        was_training = model.training
        model.eval()
        learn.dist.broadcast_buffers(learn.model)  # as in learn.validate: rank 0's BatchNorm statistics
        try:
            return learn.runtime.evaluate(model, batch, learn.crit, learn._metrics)
        finally:
            model.train(was_training)

    def _next_val_batch(self, restart: bool) -> Any:
        try:
            return next(self._val_batches)
        except StopIteration:
            if restart:
                self._val_batches = iter(self.val_dl)
                for batch in self._val_batches:
                    return batch
            raise ValueError("learn.data.val_dl yielded no batches; lr_find2 needs at least one validation batch") from None

    def suggest(self) -> Suggestions:
        """The suggestions on the smoothed training loss; after ``lr_find2`` those on the smoothed validation loss as ``.val``."""
        s = suggest(self.lrs, self.losses)
        if self.validates_each_step and len(self.val_losses) == len(self.lrs):
            s = dataclasses.replace(s, val=suggest(self.lrs, smooth_curve(self.val_losses)))
        return s

    # ------------------------------------------------------------------ plots
    def plot(self, n_skip: int | None = None, n_skip_end: int | None = None, smoothed: bool = True,
             suggestions: bool = True) -> "Figure":
        """Loss vs lr (log x unless the sweep was linear), suggestions marked; returns the Figure.

        After ``lr_find2``: stacked panels for training loss, validation loss and each
        metric. ``smoothed=True`` draws every curve as the debiased EMA (0.98) of its
        values; ``smoothed=False`` the raw values. The first ``n_skip`` and last
        ``n_skip_end`` points are left out; by default the warm-up points the
        suggestions skip too (:func:`clrfit.suggest.warmup_points`: 10 of 100) and
        :func:`clrfit.suggest.end_points` (5 of 100).
        """
        from .plots import plot_range_test

        n = len(self.iterations)
        defaults = n_skip is None and n_skip_end is None
        n_skip = warmup_points(n) if n_skip is None else check_int("n_skip", n_skip, minimum=0)
        n_skip_end = end_points(n) if n_skip_end is None else check_int("n_skip_end", n_skip_end, minimum=0)
        check_bool("smoothed", smoothed)
        check_bool("suggestions", suggestions)
        if defaults and n - n_skip - n_skip_end < 2:  # a short sweep: the default trims would leave no curve
            n_skip = n_skip_end = 0
        if n - n_skip - n_skip_end < 2:
            raise ArgumentError(
                "n_skip",
                f"{{n_skip}}={n_skip} and {{n_skip_end}}={n_skip_end} leave {max(n - n_skip - n_skip_end, 0)} of the "
                f"{n} recorded points; at least 2 are needed: lower {{n_skip}} / {{n_skip_end}}",
            )
        panels = [("training loss" + (" (smoothed)" if smoothed else ""), self.losses if smoothed else self.raw_losses)]
        if self.validates_each_step:
            smooth = smooth_curve if smoothed else list
            suffix = " (smoothed)" if smoothed else ""
            panels.append(("validation loss" + suffix, smooth(self.val_losses)))
            for j, name in enumerate(self.metric_names):
                panels.append((name + suffix, smooth([row[j] for row in self.rec_metrics])))
        marks = self.suggestions if suggestions else None
        return plot_range_test(self.lrs, panels, n_skip, n_skip_end, log_x=not self.linear, suggestions=marks)

    def __repr__(self) -> str:
        ending = "diverged" if self.diverged else "finished"
        kind = "lr_find2" if self.validates_each_step else "lr_find"
        return f"RangeTestRecorder({kind}, {len(self.iterations)} of {self.num_it} iterations, {ending})"


def smooth_curve(values: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    """Debiased EMA of a sequence: ``avg = beta*avg + (1-beta)*v``, ``smooth = avg / (1 - beta**k)``."""
    avg, out = 0.0, []
    for k, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**k))
    return out


# --------------------------------------------------------------------------- the finders


def lr_find(
    learn: "Learner",
    *,
    start_lr: float | Sequence[float],
    end_lr: float,
    wds: float | Sequence[float] | None,
    linear: bool,
    callbacks: Sequence[Callback] | None,
    metrics: Sequence[Callable] | None,
    accumulate: int,
    compile: bool | str,
) -> Suggestions:
    """``learn.lr_find``: a sweep over at most one epoch that stops when the loss diverges; returns the suggestions.

    The arguments, their defaults and documentation are :meth:`clrfit.Learner.lr_find`'s.
    ``learn.sched`` then holds the sweep (``learn.sched.plot()``); everything else about
    the learner is exactly as before. One sweep step is ``accumulate`` micro-batches, so
    the test sees the fit's effective batch.
    """
    start_lrs, end_lr, linear = _check_sweep(learn, start_lr, end_lr, linear)
    _check_wds(learn, wds)
    options = _step_options(accumulate, compile)
    nb = learn._steps_per_epoch(options["accumulate"])
    if nb < 2:
        raise ValueError(
            f"lr_find sweeps over one epoch, but the training loader has {nb} step(s) of accumulate="
            f"{options['accumulate']} batch(es); at least 2 are needed "
            "(use lr_find2(num_it=...), which runs across epochs, a smaller batch size or a smaller accumulate)"
        )
    recorder = RangeTestRecorder(nb, stop_dv=True, linear=linear)
    return _range_test(learn, LRSweep(start_lrs, end_lr, nb, linear), 1, recorder, wds, callbacks, metrics, **options)


def lr_find2(
    learn: "Learner",
    *,
    start_lr: float | Sequence[float],
    end_lr: float,
    num_it: int,
    wds: float | Sequence[float] | None,
    linear: bool,
    stop_dv: bool,
    callbacks: Sequence[Callback] | None,
    metrics: Sequence[Callable] | None,
    accumulate: int,
    compile: bool | str,
    n_sweeps: int,
) -> Suggestions:
    """``learn.lr_find2``: ``num_it`` sweep steps (across epochs), each followed by the next validation batch.

    The arguments, their defaults and documentation are :meth:`clrfit.Learner.lr_find2`'s.
    ``learn.sched.val_losses`` and ``learn.sched.rec_metrics`` get one entry per step.
    With ``stop_dv=False`` the sweep runs all ``num_it`` steps even if the loss diverges.
    ``accumulate`` and ``compile`` as in ``fit``. ``n_sweeps=k`` runs k sweeps, each from
    the same restored state with a different data order, and returns every suggestion's
    median with its spread over the sweeps (``clrfit.suggest.combine_sweeps``);
    ``learn.sched`` is the first sweep and ``learn.sched.sweeps`` all of them.
    Returns the suggestions; the learner is left exactly as before.
    """
    start_lrs, end_lr, linear = _check_sweep(learn, start_lr, end_lr, linear)
    num_it = check_int("num_it", num_it, minimum=2)
    stop_dv = check_bool("stop_dv", stop_dv)
    n_sweeps = check_int("n_sweeps", n_sweeps, minimum=1)
    _check_wds(learn, wds)
    options = _step_options(accumulate, compile)
    val_dl = learn.data.val_dl
    if val_dl is None:
        raise ValueError("lr_find2 validates one batch after every step and needs a validation loader; "
                         "learn.data.val_dl is None (pass a validation set to ModelData, or use lr_find)")
    if hasattr(val_dl, "__len__") and len(val_dl) == 0:
        raise ValueError("learn.data.val_dl is empty (0 batches); lr_find2 needs at least one validation batch")
    n_epochs = math.ceil(num_it / learn._steps_per_epoch(options["accumulate"]))
    sweep = LRSweep(start_lrs, end_lr, num_it, linear)
    if n_sweeps == 1:
        recorder = RangeTestRecorder(num_it, stop_dv=stop_dv, val_dl=val_dl, linear=linear)
        return _range_test(learn, sweep, n_epochs, recorder, wds, callbacks, metrics, **options)
    recorders = []
    table = learn.table
    try:
        learn.table = False  # one printout, of the combined suggestions
        for i in range(n_sweeps):
            recorder = RangeTestRecorder(num_it, stop_dv=stop_dv, val_dl=val_dl, linear=linear)
            _range_test(learn, sweep, n_epochs, recorder, wds, callbacks, metrics, **options, reshuffle=i)
            recorders.append(recorder)
    finally:
        learn.table = table
    first = recorders[0]
    first.sweeps = recorders
    first.suggestions = combine_sweeps([r.suggestions for r in recorders])
    learn.sched = first
    if learn.table and learn.is_main_process:
        print(first.suggestions)
    return first.suggestions


def _step_options(accumulate: Any, compile: Any) -> dict[str, Any]:
    """``accumulate`` and ``compile`` checked before anything runs, as ``train`` takes them."""
    accumulate = check_int("accumulate", accumulate, minimum=1)
    compile_backend(compile)  # raises naming compile when it is not True, False or a known backend
    return {"accumulate": accumulate, "compile": compile}


def _reshuffle(learn: "Learner", i: int) -> None:
    """A different, repeatable data order for sweep ``i``: the shuffling generators advanced by ``i`` draws.

    Runs inside the sweep's snapshot, so the generators are put back afterwards."""
    torch.randint(0, 2, (i,))  # a sampler without its own generator draws its seed from the global one
    for g in loader_generators((learn.data.trn_dl, learn.data.val_dl)):
        torch.randint(0, 2, (i,), generator=g)


def _check_sweep(learn: "Learner", start_lr: Any, end_lr: Any, linear: Any) -> tuple[tuple[float, ...], float, bool]:
    start_lrs = as_group_values("start_lr", start_lr, learn.n_groups, positive=True)
    end_lr = check_number("end_lr", end_lr, minimum=0.0, exclusive_min=True)
    if end_lr <= start_lrs[-1]:
        which = "{start_lr}" if len(start_lrs) == 1 else "the last layer group's {start_lr}"
        raise ArgumentError("end_lr", f"{{end_lr}} must be greater than {which} ({start_lrs[-1]:g}); "
                                      f"got {{end_lr}}={end_lr:g}")
    return start_lrs, end_lr, check_bool("linear", linear)


def _check_wds(learn: "Learner", wds: Any) -> None:
    if wds is not None:
        as_group_values("wds", wds, learn.n_groups, minimum=0.0)


def _range_test(
    learn: "Learner",
    sweep: LRSweep,
    n_epochs: int,
    recorder: RangeTestRecorder,
    wds: Any,
    callbacks: Sequence[Callback] | None,
    metrics: Sequence[Callable] | None,
    accumulate: int = 1,
    compile: bool | str = False,
    reshuffle: int = 0,
) -> Suggestions:
    snapshot = LearnerSnapshot(learn)
    try:
        learn.table = False  # a per-epoch table means nothing for a sweep; the bar stays
        if reshuffle:
            _reshuffle(learn, reshuffle)
        learn.train(sweep, n_epochs, wds=wds, callbacks=callbacks, metrics=metrics, on_nan="ignore",
                    recorder=recorder, validate=False, accumulate=accumulate, compile=compile)
    except BaseException as err:
        with sigint(deliver=True):  # a Ctrl-C now must not leave the learner half restored
            snapshot.restore()
        err.range_test = recorder
        raise
    with sigint(deliver=True):
        snapshot.restore()
        learn.sched = recorder
    recorder.suggestions = recorder.suggest()
    if learn.table and learn.is_main_process:  # the same switch as the epoch table
        print(recorder.suggestions)
    return recorder.suggestions
