"""The Learner: model + data + optimizer, and the training loop that fires callback events.

The event vocabulary and what fires on each kind of stop are documented in
:mod:`clrfit.callback`. Where the fit stands is one value, ``learn.state``
(:class:`clrfit.state.TrainingState`); its integer counters are also readable as
``learn.epoch``, ``learn.iteration``, ``learn.batch_index``, ``learn.cycle`` and
``learn.iter_in_cycle``, and every fraction is derived from them.
``iteration`` counts optimizer steps since the start of the fit; with
``accumulate=k`` one step is k micro-batches. How a step runs (device,
precision, DDP, compile, memory layout) is :class:`clrfit.runtime.Runtime`'s.
"""
from __future__ import annotations

import functools
import itertools
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import inference, schedules, threads, transfer
from .callback import CANCELS, EVENTS, Callback, CancelEpochException, CancelFitException, fire_end
from .checkpoint import checkpoint_callbacks
from .data import ModelData
from .distributed import Stop, stop_kind
from .fsdp import make_runtime, refuse_sharded
from .lr_finder import lr_find, lr_find2
from .metrics import metric_name
from .optim import clear_grads
from .precision import resolve_precision
from .progress import ProgressCallback
from .recorder import Recorder
from .rollback import LearnerSnapshot
from .runtime import compile_backend
from .scheduler import DecoupledWeightDecay, ParamScheduler
from .serialization import load_state, optimizer_mismatch, save_state
from .state import TrainingState, loader_generators, sigint, start_persistent_workers, stateful_samplers
from .suggest import Suggestions
from .validation import ON_NAN, ArgumentError, as_group_values, check_bool, check_choice, check_int, fail

_CANCELS = CANCELS
_BATCH_CANCELS = _CANCELS[:1]
#: The options every fit passes on to :meth:`Learner.train` as they are (each fit's signature spells them out).
FIT_OPTIONS = ("wds", "callbacks", "metrics", "use_wd_sched", "norm_wds", "wds_sched_mult", "accumulate", "compile",
               "checkpoint", "checkpoint_every", "resume", "on_nan")
#: Each scope's begin and end events (train's end fires on its own, whatever stopped the fit).
_SCOPE_EVENTS = {"train": ("on_train_begin", None), "epoch": ("on_epoch_begin", "on_epoch_end"),
                 "batch": ("on_batch_begin", "on_batch_end")}


def default_opt_fn(params, lr: float = 1e-3) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (the fastai 0.7 default)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _counter(name: str) -> property:
    """``learn.<name>``: the counter of ``learn.state`` (read and write)."""
    return property(lambda self: getattr(self.state, name), lambda self, value: setattr(self.state, name, value),
                    doc=f"``learn.state.{name}``.")


class Learner:
    """Owns the model, the data and the optimizer, and runs fits through callbacks.

    ``learn.recorder`` is the history of the last fit; ``learn.sched`` is the
    recorder of the last fit *or range test* (the fastai 0.7 name, kept as an alias).

    Batches may be ``(x, y)``, ``(x1, ..., xn, y)`` for a model taking n inputs, or a
    dict passed to the model as keyword arguments (its target under ``labels``);
    ``batch_fn(batch) -> (inputs, target)`` splits any other kind (inputs: a tensor,
    a tuple for ``model(*inputs)`` or a dict for ``model(**inputs)``). ``crit`` takes
    ``(prediction, target)``; ``crit=clrfit.model_loss`` uses a loss the model returns.

    Args:
        model: the ``torch.nn.Module`` to train, with at least one trainable parameter; moved to ``device``.
        data: a :class:`clrfit.ModelData` (training loader, validation loader or None).
        opt_fn: ``opt_fn(param_groups, lr=...) -> torch.optim.Optimizer``; default SGD with momentum 0.9.
        crit: the loss, ``crit(prediction, target) -> 0-d tensor``; default ``nn.CrossEntropyLoss()``.
        metrics: functions ``metric(prediction, target) -> 0-d tensor`` shown after each epoch (a list).
        layer_groups: a list of modules or parameter lists, one optimizer param group each (disjoint);
            default: one group of all trainable parameters.
        callbacks: :class:`clrfit.Callback` instances used in every fit (a list).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; default this rank's GPU if there is one, else the CPU.
        fp16: True for fp16 mixed precision (same as ``precision="fp16"``).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; default fp32 (or fp16 when ``fp16=True``).
        path: folder under which ``learn.save(name)`` writes ``models/<name>.pt``.
        progress: show progress bars during fits (True or False).
        table: print the epoch table after each epoch and the range test's suggestions (True or False).
        batch_fn: ``batch_fn(batch) -> (inputs, target)`` for batches that are not ``(x, y)``,
            ``(x1, ..., xn, y)`` or a dict; None splits those three kinds.
    """

    epoch = _counter("epoch")
    iteration = _counter("iteration")
    batch_index = _counter("batch_index")
    cycle = _counter("cycle")
    iter_in_cycle = _counter("iter_in_cycle")

    def __init__(
        self,
        model: nn.Module,
        data: ModelData,
        opt_fn: Callable[..., torch.optim.Optimizer] | None = None,
        crit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        metrics: Sequence[Callable] | None = None,
        layer_groups: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] | None = None,
        device: str | torch.device | None = None,
        fp16: bool = False,
        precision: str | None = None,
        path: str | Path = ".",
        progress: bool = True,
        table: bool = True,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        strategy: str = "ddp",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(data, ModelData):
            raise TypeError(f"data must be a clrfit.ModelData; got {type(data).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ArgumentError("model", "{model} has no trainable parameters (requires_grad=True); "
                                         "there is nothing to train")
        # Every argument is checked before the model is moved or anything is built.
        precision_name = resolve_precision(fp16, precision)
        check_bool("progress", progress)
        check_bool("table", table)
        callbacks = _check_callbacks("callbacks", callbacks)
        for name, fn in (("opt_fn", opt_fn), ("crit", crit)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None; got {fn!r}")
        _check_metrics(metrics)
        groups = _param_groups(model, layer_groups)
        # strategy="fsdp" shards the model with FSDP2 under torchrun (clrfit.fsdp); "ddp" replicates it.
        self.runtime = runtime = make_runtime(strategy, model, device, precision_name, batch_fn)
        self.dist, self.device, self.precision = runtime.dist, runtime.device, runtime.precision
        self.channels_last = runtime.channels_last
        self.model = runtime.place(model)
        groups = runtime.regroup(groups)  # FSDP replaces the parameters it shards
        self.data = self.dist.shard_data(data)
        self.crit = crit if crit is not None else nn.CrossEntropyLoss()
        self.metrics = list(metrics or [])
        self.callbacks = list(callbacks or [])
        self.path = Path(path)
        self.progress, self.table = progress, table
        self.opt_fn = opt_fn or default_opt_fn
        self.opt = self.opt_fn(groups, lr=1e-3)
        if not isinstance(self.opt, torch.optim.Optimizer):
            raise TypeError(f"opt_fn must return a torch.optim.Optimizer; got {type(self.opt).__name__}")
        runtime.prepare(self.model)
        self.train_model, self.eval_model = runtime.models(None)  # eval needs no DDP: it never runs backward
        self.recorder = Recorder()
        self.sched: Recorder = self.recorder
        self._running = False
        self._reset_counters()
        _warn_if_oversubscribed(self.model, self.device)

    # ------------------------------------------------------------------ properties
    @property
    def n_groups(self) -> int:
        """Number of layer groups (optimizer param groups)."""
        return len(self.opt.param_groups)

    @property
    def metric_names(self) -> list[str]:
        """Column names of the current metrics."""
        return [metric_name(m) for m in self._metrics]

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, and always when not distributed."""
        return self.dist.is_main

    @property
    def nb(self) -> int:
        """Alias of :attr:`steps_per_epoch` (the fastai 0.7 name): optimizer steps per epoch, not batches."""
        return self.steps_per_epoch

    def _reset_counters(self) -> None:
        self.state = TrainingState()
        self.n_epochs = self.steps_per_epoch = 0
        self.accumulate = 1
        self.loss = self.step_loss = self.pred = None
        self.xb = self.yb = None
        self.val_loss: float | None = None
        self.val_metrics: list[float] = []
        self._metrics = self.metrics
        self.interrupted = self._interrupt_requested = False
        self._grads_left = True  # a step may have left gradients before this fit
        self._ready_pairs = False  # this epoch's batches need no to_device (set per epoch)
        self.fit_cancelled = False  # a CancelFitException is ending the fit (the checkpoint writer asks)
        self.validate_each_epoch = True

    # ------------------------------------------------------------------ public fits
    def fit(
        self,
        lrs: float | Sequence[float],
        n_cycle: int,
        cycle_len: int | None = None,
        cycle_mult: int = 1,
        wds: float | Sequence[float] | None = None,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        use_clr: Sequence[float] | None = None,
        use_clr_beta: Sequence[float] | None = None,
        *,
        use_wd_sched: bool = False,
        norm_wds: bool = False,
        wds_sched_mult: Callable[["Learner"], float] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        on_nan: str = "raise",
    ) -> Recorder:
        """Train ``n_cycle`` cycles: constant lr, SGDR (``cycle_len``), ``use_clr`` or ``use_clr_beta``.

        Args:
            lrs: learning rate, one value or one per layer group (> 0).
            n_cycle: number of cycles (an epoch each without ``cycle_len``), integer >= 1.
            cycle_len: epochs in the first cycle: turns on SGDR (cosine annealing with restarts); None for a constant lr.
            cycle_mult: each cycle is ``cycle_mult`` times longer than the previous one, integer >= 1.
            wds: weight decay, one value or one per layer group (>= 0); None leaves the optimizer's.
            callbacks: extra :class:`clrfit.Callback` instances for this fit only.
            metrics: metrics ``(pred, targ) -> tensor`` for this fit's validation (default: the learner's).
            use_clr: CircularLR ``(div, cut_div)`` or ``(div, cut_div, max_mom, min_mom)``; needs ``cycle_len``.
            use_clr_beta: 1cycle ``(div, pct)`` or ``(div, pct, max_mom, min_mom)``, pct in (0, 100); needs ``cycle_len``.
            use_wd_sched: True applies ``wds`` decoupled (``p -= wd * lr * p``) each step instead of as L2.
            norm_wds: with ``use_wd_sched``, divide wds by sqrt(iterations in the cycle).
            wds_sched_mult: with ``use_wd_sched``, a callable ``(learner) -> float`` multiplying wds each step.
            accumulate: micro-batches per optimizer step (integer >= 1); each backpropagates ``loss / accumulate``.
            compile: True runs the model through ``torch.compile`` (inductor); a string names another backend.
            checkpoint: file to write checkpoints to (and resume from); None writes none.
            checkpoint_every: also write a checkpoint every this many optimizer steps (integer >= 1; needs checkpoint).
            resume: True continues from ``checkpoint`` if the file exists (needs checkpoint).
            on_nan: on a non-finite loss: "raise" (stop), "restore" (stop with the last good state back), "ignore".

        Returns:
            ``learn.sched``, the fit's :class:`clrfit.Recorder`.
        """
        given = locals()  # every argument by name: the schedule's (schedules.FIT) and the FIT_OPTIONS
        args = _pick(schedules.FIT.names, given)
        args["lrs"] = as_group_values("lrs", lrs, self.n_groups, positive=True)
        nb = self._steps_per_epoch(accumulate)
        _check_fit_length(n_cycle, cycle_len, cycle_mult, nb)
        schedule, n_epochs = schedules.schedule_for("fit", self.n_groups, nb, **args)
        fit_args = dict(kind="fit", **_plain_args(args))
        return self.train(schedule, n_epochs, fit_args=fit_args, **_pick(FIT_OPTIONS, given))

    def fit_cyclic(
        self,
        epochs: int,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: float = 2000,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        *,
        wds: float | Sequence[float] | None = None,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        use_wd_sched: bool = False,
        norm_wds: bool = False,
        wds_sched_mult: Callable[["Learner"], float] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        on_nan: str = "raise",
    ) -> Recorder:
        """Train ``epochs`` epochs with ``torch.optim.lr_scheduler.CyclicLR``'s schedule and values.

        Args:
            epochs: number of epochs, integer >= 1.
            base_lr: lower lr bound, one value or one per layer group (>= 0; 0 is allowed, as in torch).
            max_lr: upper lr bound, one value or one per layer group (>= 0; normally >= base_lr).
            step_size_up: optimizer steps from base_lr up to max_lr (> 0).
            step_size_down: steps back down (>= 0; 0 makes a sawtooth); None: equal to step_size_up.
            mode: "triangular", "triangular2" (amplitude halves each cycle) or "exp_range" (scaled by gamma**t).
            gamma: decay base of "exp_range" (> 0).
            scale_fn: custom amplitude ``f(x) -> float`` in [0, 1] replacing mode; x per scale_mode.
            scale_mode: "cycle" (scale_fn of the cycle number) or "iterations" (of the step).
            cycle_momentum: True cycles momentum inversely to lr between base_momentum and max_momentum.
            base_momentum: lower momentum bound, one value or one per layer group, in [0, 1).
            max_momentum: upper momentum bound, one value or one per layer group, in [0, 1).
            wds: weight decay, one value or one per layer group (>= 0); None leaves the optimizer's.
            callbacks: extra :class:`clrfit.Callback` instances for this fit only.
            metrics: metrics ``(pred, targ) -> tensor`` for this fit's validation (default: the learner's).
            use_wd_sched: True applies ``wds`` decoupled (``p -= wd * lr * p``) each step instead of as L2.
            norm_wds: with ``use_wd_sched``, divide wds by sqrt(iterations in the cycle).
            wds_sched_mult: with ``use_wd_sched``, a callable ``(learner) -> float`` multiplying wds each step.
            accumulate: micro-batches per optimizer step (integer >= 1); each backpropagates ``loss / accumulate``.
            compile: True runs the model through ``torch.compile`` (inductor); a string names another backend.
            checkpoint: file to write checkpoints to (and resume from); None writes none.
            checkpoint_every: also write a checkpoint every this many optimizer steps (integer >= 1; needs checkpoint).
            resume: True continues from ``checkpoint`` if the file exists (needs checkpoint).
            on_nan: on a non-finite loss: "raise" (stop), "restore" (stop with the last good state back), "ignore".

        Returns:
            ``learn.sched``, the fit's :class:`clrfit.Recorder`.
        """
        given = locals()  # every argument by name: the schedule's (schedules.CYCLIC) and the FIT_OPTIONS
        epochs = check_int("epochs", epochs, minimum=1)
        steps = self._steps_per_epoch(accumulate)
        _check_cyclic_range(step_size_up, step_size_down, mode, gamma, epochs * steps)
        args = _pick(schedules.CYCLIC.names, given)
        schedule, _ = schedules.schedule_for("fit_cyclic", self.n_groups, steps, epochs, **args)
        # scale_fn is compared on resume as a field of the schedule (by its code), not as a fit argument
        fit_args = dict(kind="fit_cyclic", epochs=epochs, **_plain_args(args, leave_out="scale_fn"))
        return self.train(schedule, epochs, fit_args=fit_args, **_pick(FIT_OPTIONS, given))

    def fit_one_cycle(
        self,
        epochs: int,
        max_lr: float | Sequence[float],
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        *,
        wds: float | Sequence[float] | None = None,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        use_wd_sched: bool = False,
        norm_wds: bool = False,
        wds_sched_mult: Callable[["Learner"], float] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        on_nan: str = "raise",
    ) -> Recorder:
        """Train ``epochs`` epochs with ``torch.optim.lr_scheduler.OneCycleLR``'s schedule and values.

        Args:
            epochs: number of epochs, integer >= 1 (total steps = epochs * steps_per_epoch).
            max_lr: peak lr, one value or one per layer group (>= 0, as in torch).
            pct_start: fraction of the steps spent increasing the lr, in (0, 1).
            anneal_strategy: "cos" or "linear" annealing.
            cycle_momentum: True cycles momentum inversely to lr between base_momentum and max_momentum.
            base_momentum: lower momentum bound, one value or one per layer group, in [0, 1).
            max_momentum: upper momentum bound, one value or one per layer group, in [0, 1).
            div_factor: initial lr = max_lr / div_factor (> 0).
            final_div_factor: final lr = initial lr / final_div_factor (> 0).
            three_phase: True adds a symmetric descent phase before the final annihilation (torch's three_phase).
            wds: weight decay, one value or one per layer group (>= 0); None leaves the optimizer's.
            callbacks: extra :class:`clrfit.Callback` instances for this fit only.
            metrics: metrics ``(pred, targ) -> tensor`` for this fit's validation (default: the learner's).
            use_wd_sched: True applies ``wds`` decoupled (``p -= wd * lr * p``) each step instead of as L2.
            norm_wds: with ``use_wd_sched``, divide wds by sqrt(iterations in the cycle).
            wds_sched_mult: with ``use_wd_sched``, a callable ``(learner) -> float`` multiplying wds each step.
            accumulate: micro-batches per optimizer step (integer >= 1); each backpropagates ``loss / accumulate``.
            compile: True runs the model through ``torch.compile`` (inductor); a string names another backend.
            checkpoint: file to write checkpoints to (and resume from); None writes none.
            checkpoint_every: also write a checkpoint every this many optimizer steps (integer >= 1; needs checkpoint).
            resume: True continues from ``checkpoint`` if the file exists (needs checkpoint).
            on_nan: on a non-finite loss: "raise" (stop), "restore" (stop with the last good state back), "ignore".

        Returns:
            ``learn.sched``, the fit's :class:`clrfit.Recorder`.
        """
        given = locals()  # every argument by name: the schedule's (schedules.ONE_CYCLE) and the FIT_OPTIONS
        epochs = check_int("epochs", epochs, minimum=1)
        steps = self._steps_per_epoch(accumulate)
        args = _pick(schedules.ONE_CYCLE.names, given)
        schedule, _ = schedules.schedule_for("fit_one_cycle", self.n_groups, steps, epochs, **args)
        fit_args = dict(kind="fit_one_cycle", epochs=epochs, **_plain_args(args))
        return self.train(schedule, epochs, fit_args=fit_args, **_pick(FIT_OPTIONS, given))

    def lr_find(
        self,
        start_lr: float | Sequence[float] = 1e-5,
        end_lr: float = 10,
        wds: float | Sequence[float] | None = None,
        linear: bool = False,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
    ) -> Suggestions:
        """LR range test over at most one epoch; ``learn.sched`` holds the result. Learner state is restored.

        Args:
            start_lr: the first step's lr (> 0), or one per layer group (every group scaled alike).
            end_lr: the last step's lr (> start_lr).
            wds: weight decay during the sweep (>= 0), or one per layer group; None keeps the groups' own.
            linear: a linear sweep instead of the exponential one (True or False).
            callbacks: extra :class:`clrfit.Callback` instances for the sweep (a list).
            metrics: metrics for this sweep instead of the learner's (a list).
            accumulate: micro-batches per sweep step (an integer >= 1), as ``fit(accumulate=k)``.
            compile: as ``fit``'s ``compile`` (False, True or a torch.compile backend name).
        """
        return lr_find(self, start_lr=start_lr, end_lr=end_lr, wds=wds, linear=linear, callbacks=callbacks,
                       metrics=metrics, accumulate=accumulate, compile=compile)

    def lr_find2(
        self,
        start_lr: float | Sequence[float] = 1e-5,
        end_lr: float = 10,
        num_it: int = 100,
        wds: float | Sequence[float] | None = None,
        linear: bool = False,
        stop_dv: bool = True,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
        n_sweeps: int = 1,
    ) -> Suggestions:
        """LR range test over ``num_it`` steps, validating on one batch per step. Learner state is restored.

        Args:
            start_lr: the first step's lr (> 0), or one per layer group (every group scaled alike).
            end_lr: the last step's lr (> start_lr).
            wds: weight decay during the sweep (>= 0), or one per layer group; None keeps the groups' own.
            linear: a linear sweep instead of the exponential one (True or False).
            num_it: the number of sweep steps (an integer >= 2), across epochs if needed.
            stop_dv: stop when the loss diverges (docs/lr_finder.md); False runs all ``num_it`` steps.
            callbacks: extra :class:`clrfit.Callback` instances for the sweep (a list).
            metrics: metrics for this sweep instead of the learner's (a list).
            accumulate: micro-batches per sweep step (an integer >= 1), as ``fit(accumulate=k)``.
            compile: as ``fit``'s ``compile`` (False, True or a torch.compile backend name).
            n_sweeps: restored sweeps with different data orders (an integer >= 1); suggestions are their medians with spreads.
        """
        return lr_find2(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, wds=wds, linear=linear,
                        stop_dv=stop_dv, callbacks=callbacks, metrics=metrics, accumulate=accumulate,
                        compile=compile, n_sweeps=n_sweeps)

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        schedule: schedules.Schedule,
        n_epochs: int,
        wds: float | Sequence[float] | None = None,
        callbacks: Sequence[Callback] | None = None,
        metrics: Sequence[Callable] | None = None,
        use_wd_sched: bool = False,
        norm_wds: bool = False,
        wds_sched_mult: Callable[["Learner"], float] | None = None,
        accumulate: int = 1,
        compile: bool | str = False,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        on_nan: str = "raise",
        fit_args: dict[str, Any] | None = None,
        recorder: Recorder | None = None,
        validate: bool = True,
    ) -> Recorder:
        """Run ``n_epochs`` epochs applying ``schedule``: the engine behind every ``fit*``.

        The keyword arguments mean what they mean for :meth:`fit`; ``fit_args`` (the
        calling fit's arguments, compared on resume), ``recorder`` (a recorder to
        fill) and ``validate`` (False: no end-of-epoch validation) serve the range tests.
        """
        if self._running:  # a nested fit would reset the counters of the one running and cut it short
            raise RuntimeError("a fit (or lr_find) was started from a callback of a running fit; that is not "
                               "supported: run it after the outer fit returns")
        n_epochs, accumulate, backend, group_wds = _check_options(
            self.n_groups, n_epochs, wds, use_wd_sched, norm_wds, wds_sched_mult, accumulate, compile, resume, on_nan, metrics)
        fit_callbacks = _check_callbacks("callbacks", callbacks) + checkpoint_callbacks(  # checks checkpoint*
            checkpoint, checkpoint_every, resume, on_nan)
        if check_bool("validate", validate):
            _check_val_batches(self.data.val_dl)
        self._reset_counters()
        self.validate_each_epoch, self.accumulate, self.n_epochs, self.schedule = validate, accumulate, n_epochs, schedule
        self._metrics = list(metrics) if metrics is not None else self.metrics
        self.steps_per_epoch = self._steps_per_epoch(accumulate)
        self.fit_args = dict(fit_args or {}, n_epochs=n_epochs, accumulate=accumulate, wds=group_wds,
                             use_wd_sched=use_wd_sched, norm_wds=norm_wds, wds_sched_mult=wds_sched_mult,
                             metrics=tuple(self._metrics))  # callables compared by code on resume
        self.train_model, self.eval_model = self.runtime.models(backend)
        self._generators = loader_generators((self.data.trn_dl, self.data.val_dl))
        self._samplers = stateful_samplers((self.data.trn_dl,))
        start_persistent_workers((self.data.trn_dl, self.data.val_dl))
        self.sched = self.recorder = recorder or Recorder()
        cbs = self._own_callbacks(schedule, group_wds, use_wd_sched, norm_wds, wds_sched_mult)
        self._run(cbs + self.callbacks + fit_callbacks)
        return self.recorder

    def _own_callbacks(self, schedule: schedules.Schedule, wds: tuple[float, ...] | None, use_wd_sched: bool,
                       norm_wds: bool, wds_sched_mult: Callable[["Learner"], float] | None) -> list[Callback]:
        """The callbacks every fit has: the schedule, decoupled weight decay (``use_wd_sched``), the recorder, progress."""
        cbs: list[Callback] = [ParamScheduler(schedule, wds, use_wd_sched)]
        if use_wd_sched:  # the options check made sure wds is set
            cbs.append(DecoupledWeightDecay(schedule, wds, norm_wds, wds_sched_mult))
        cbs.append(self.recorder)
        if self.progress or self.table:
            cbs.append(ProgressCallback(bar=self.progress, table=self.table))
        return cbs

    def _run(self, cbs: list[Callback]) -> None:
        self._cbs = sorted(cbs, key=lambda cb: cb.order)
        for cb in self._cbs:
            cb.learn = self
        self._handlers = handlers = _handler_table(self._cbs)
        self._scopes = {name: (handlers[begin], handlers[end] if end else ())  # each scope's (begin, end) handlers
                        for name, (begin, end) in _SCOPE_EVENTS.items()}
        self._interrupt_requested, self._stopped_by, self._running = False, "", True
        try:
            # Under DDP a repeated Ctrl-C (torchrun forwards the terminal's) must not abort one rank mid-collective.
            with sigint(self._request_stop, keep=self.dist.enabled):
                try:
                    self._scope("train", self._all_epochs, _CANCELS)
                finally:
                    fire_end(self._handlers["on_train_end"], _CANCELS)
                    if self.interrupted:
                        raise KeyboardInterrupt(
                            f"training interrupted by Ctrl-C{self._stopped_by} at epoch {self.epoch}, iteration "
                            f"{self.iteration}; the model and learn.sched hold the state reached"
                        )
        except Exception as err:
            if self.dist.enabled:  # name the rank that stopped the job; never leave the others waiting
                peer = self.dist.fail(err, self)
                if peer is not None:
                    raise peer from err
            raise
        finally:
            self._interrupt_requested = self._running = False

    def _request_stop(self) -> None:
        self._interrupt_requested = True  # the loop stops after the current step

    def _stop_if_agreed(self, own: Exception | None = None) -> None:
        """At a step boundary: stop if this rank, or under DDP any rank, asks to; every rank stops at the same step.

        ``own`` is the cancel this rank raised (the caller re-raises it when it is
        the agreed stop). Ctrl-C on any rank stops every rank as a Ctrl-C does.
        """
        asked = stop_kind(own) if own is not None else Stop.INTERRUPT if self._interrupt_requested else Stop.NONE
        agreed, rank = self.dist.agree_on_stop(asked)
        if agreed is Stop.NONE or (own is not None and agreed is asked):
            return
        by = f" on rank {rank}" if self.dist.enabled else ""
        if agreed is Stop.INTERRUPT:
            self.interrupted, self._stopped_by = True, by
            raise CancelFitException()
        raise (CancelFitException if agreed is Stop.CANCEL_FIT else CancelEpochException)(f"cancelled{by}")

    def _fire(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler()

    def _scope(self, name: str, body: Callable[..., None], cancels: tuple[type[Exception], ...], *args: Any) -> None:
        """Fire ``on_<name>_begin``, run ``body(*args)``; fire ``on_<name>_end`` on success or any cancel.

        ``cancels`` are this scope's cancel and the smaller ones: a CancelBatchException
        raised outside a batch (say in ``on_epoch_begin``) cancels the scope it was raised in.
        """
        begin, end = self._scopes[name]
        try:
            for handler in begin:
                handler()
            body(*args)
        except cancels:
            pass
        except _CANCELS as err:
            self.fit_cancelled = self.fit_cancelled or isinstance(err, CancelFitException)
            fire_end(end, cancels)
            raise
        fire_end(end, cancels)

    def _all_epochs(self) -> None:
        state = self.state
        while state.epoch < self.n_epochs:
            self._scope("epoch", self._one_epoch, _CANCELS[:2])
            state.epoch += 1
            state.batch_index = 0

    def _one_epoch(self) -> None:
        state = self.state
        self.train_model.train()
        self.val_loss, self.val_metrics = None, []
        agree = self.dist.enabled  # under DDP every step ends with the ranks' one small stop vote
        steps, batches = self._epoch_steps()
        self._ready_pairs = self.runtime.yields_ready_pairs(self.data.trn_dl)
        for micro_batches in steps:
            self.step_loss = None  # set once the step's forward passes are done: a step cancelled before has no loss
            try:
                self._scope("batch", self._one_step, _BATCH_CANCELS, micro_batches)
            except (CancelEpochException, CancelFitException) as cancel:
                if agree:  # the other ranks stop at this step too
                    self._stop_if_agreed(cancel)
                raise
            finally:
                # A batch that began counts as an iteration, however it ended, so the
                # schedule never replays a position.
                state.iteration += 1
                state.batch_index += 1
            if agree or self._interrupt_requested:
                self._stop_if_agreed()
        _check_epoch_length(self.data.trn_dl, batches, state.batch_index, self.steps_per_epoch)
        if self.data.val_dl is not None and self.validate_each_epoch:
            self._fire("on_validate_begin")
            self.val_loss, self.val_metrics = self.validate()
            if agree or self._interrupt_requested:
                try:
                    self._stop_if_agreed()
                except CancelFitException:  # a partial validation is no result: stop before recording it
                    self.val_loss, self.val_metrics = None, []
                    raise
            self._fire("on_validate_end")

    def _epoch_steps(self) -> tuple[Iterator[Sequence[Any]], Iterator[Any]]:
        """This epoch's optimizer steps (``accumulate`` micro-batches each) from ``batch_index`` on, never more than planned; and its batches."""
        state, n = self.state, self.accumulate
        batches = state.begin_epoch(self.data.trn_dl, self._generators, self._samplers, skip=state.batch_index * n)
        grouped = zip(batches) if n == 1 else iter(lambda: list(itertools.islice(batches, n)), [])
        return itertools.islice(grouped, self.steps_per_epoch - state.batch_index), batches

    def _one_step(self, micro_batches: list[Any]) -> None:
        # A step cancelled or failed after backward left its gradients (the clear_grads below did not run):
        # they must not add to this one, nor to the first step of the next fit.
        if self._grads_left:
            clear_grads(self.opt)
        self._grads_left = True
        n, handlers = len(micro_batches), self._handlers
        if n == 1:
            self.step_loss = self._forward_backward(micro_batches[0], 1)
        else:  # accumulation: the mean of the micro-batches' losses, gradients reduced once (DDP no_sync before)
            total = None
            for j, batch in enumerate(micro_batches):
                with self.runtime.micro_step(self.train_model, last=j == n - 1):
                    loss = self._forward_backward(batch, n).detach()
                total = loss if total is None else total + loss
            self.step_loss = total / n
        for handler in handlers["on_backward_end"]:
            handler()
        self.runtime.step(self.opt)
        for handler in handlers["on_step_end"]:
            handler()
        clear_grads(self.opt)
        self._grads_left = False

    def _forward_backward(self, batch: Any, n: int) -> torch.Tensor:
        """Forward, loss, ``on_loss`` and backward (of ``loss / n``) of one micro-batch; its loss (its graph freed by backward)."""
        self.xb, self.yb = batch if self._ready_pairs else self.runtime.to_device(batch)
        self.pred, self.loss = self.runtime.forward(self.train_model, self.xb, self.yb, self.crit)
        for handler in self._handlers["on_loss"]:
            handler()
        self.runtime.backward(self.loss / n if n > 1 else self.loss)
        return self.loss

    def _steps_per_epoch(self, accumulate: int = 1) -> int:
        accumulate = check_int("accumulate", accumulate, minimum=1)
        return math.ceil(len(self.data.trn_dl) / accumulate)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, dl: torch.utils.data.DataLoader | None = None) -> tuple[float, list[float]]:
        """Mean loss and metrics over a loader (default: the validation loader).

        Distributed, each rank evaluates its shard with rank 0's buffers and the
        sums are added over ranks, so every rank returns the full-set values.
        """
        dl = dl if dl is not None else self.data.val_dl
        if dl is None:
            raise ValueError("validate: no loader given and the data has no val_dl")
        model = self.eval_model
        was_training = model.training
        model.eval()
        self.dist.broadcast_buffers(self.model)  # every rank validates rank 0's BatchNorm statistics
        sums = torch.zeros(2 + len(self._metrics), device=self.device, dtype=torch.float64)
        try:
            for batch in dl:
                sums += self.runtime.evaluate(model, batch, self.crit, self._metrics)
                if self._interrupt_requested:
                    break
        finally:
            model.train(was_training)
        self.dist.all_reduce_sum(sums)
        totals = sums.tolist()
        count = totals[1]
        if count == 0:  # a loader whose len() promised batches that never came
            raise ValueError(f"validate: the validation loader yielded no samples (len() = {_length(dl)}); "
                             "pass a validation set with samples, or ModelData without val_dl")
        return totals[0] / count, [v / count for v in totals[2:]]

    # ------------------------------------------------------------------ persistence
    def model_path(self, name: str | Path) -> Path:
        """``name`` as a path: used as-is if it has a suffix or a folder, else ``path/models/<name>.pt``."""
        p = Path(name)
        if p.suffix or len(p.parts) > 1:
            return p
        return self.path / "models" / f"{name}.pt"

    def save(self, name: str | Path, with_opt: bool = True) -> Path:
        """Write the model (and optimizer) state atomically; returns the path."""
        refuse_sharded(self, "learn.save")  # FSDP: a plain file would hold rank 0's shards only
        state = {"model": self.model.state_dict()}
        if with_opt:
            state["opt"] = self.opt.state_dict()
            state["opt_type"] = type(self.opt).__name__
        path = self.model_path(name)
        if self.is_main_process:
            save_state(state, path)
        self.dist.barrier()
        return path

    def load(self, name: str | Path, with_opt: bool = True) -> None:
        """Load what :meth:`save` wrote; on any error the learner is left unchanged."""
        path = self.model_path(name)
        state = load_state(path, self.device, required=("model",))
        if with_opt and "opt" in state:
            saved_type = state.get("opt_type") if isinstance(state.get("opt_type"), str) else None
            problem = optimizer_mismatch(self.opt, state["opt"], saved_type)
            if problem:
                raise ValueError(f"load: {path} does not fit this learner's optimizer: {problem}; "
                                 "load with with_opt=False to take the weights only")
        snapshot = LearnerSnapshot(self, everything=False, callbacks=())
        try:
            self.model.load_state_dict(state["model"])
            if with_opt and "opt" in state:
                self.opt.load_state_dict(state["opt"])
        except Exception as err:  # whatever the file holds, the learner must come back unchanged
            snapshot.restore()
            raise ValueError(f"load: {path} does not fit this learner's model/optimizer: {err}") from None

    def __repr__(self) -> str:
        return (f"Learner(model={type(self.model).__name__}, data={self.data!r}, opt={type(self.opt).__name__}, "
                f"groups={self.n_groups}, device={self.device}, precision={self.precision.name})")

    # ------------------------------------------------------------------ transfer learning and predictions
    # One-line delegations: the logic lives in clrfit/transfer.py and clrfit/inference.py.
    @classmethod
    def from_pretrained(cls, model: nn.Module, data: ModelData, n_classes: int | None = None, **kwargs: Any) -> "Learner":
        """A learner over a torchvision classifier with a new ``n_classes`` head and 3 layer groups (:mod:`clrfit.transfer`)."""
        return cls(model, data, layer_groups=transfer.pretrained_layer_groups(model, data, n_classes, kwargs), **kwargs)

    def freeze_to(self, n: int, bn_freeze: bool = False) -> None:
        """Freeze layer groups ``0 .. n-1``; ``bn_freeze=True`` keeps their BatchNorm layers in eval mode."""
        transfer.freeze_to(self, n, bn_freeze=bn_freeze)

    def freeze(self, bn_freeze: bool = False) -> None:
        """Freeze every layer group but the last (the head)."""
        transfer.freeze(self, bn_freeze=bn_freeze)

    def unfreeze(self) -> None:
        """Make every layer group trainable."""
        transfer.unfreeze(self)

    def get_preds(self, dl: Any = None, with_loss: bool = False) -> tuple[torch.Tensor, ...]:
        """``(preds, targets)`` (and per-sample losses) over a loader ``dl``, default the validation set, in dataset order."""
        return inference.get_preds(self, dl=dl, with_loss=with_loss)

    def predict(self, x: Any) -> torch.Tensor:
        """The model's outputs for one batch of inputs, in eval mode without gradients."""
        return inference.predict(self, x)

    def tta(self, n: int = 4, dl: Any = None, aug_dl: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time augmentation (fastai 0.7's TTA): ``(class probabilities, targets)``."""
        return inference.tta(self, n=n, dl=dl, aug_dl=aug_dl)


# ---------------------------------------------------------------------- helpers


def _check_val_batches(val_dl: Any) -> None:
    """``ValueError`` for a validation loader with no batches (every epoch would validate nothing)."""
    if val_dl is not None and _length(val_dl) == 0:
        raise ValueError("the validation loader (data.val_dl) has no batches (len() == 0): every epoch would "
                         "end in a validation of nothing; pass a validation set, or ModelData without val_dl")


def _param_groups(model: nn.Module, layer_groups: Sequence[Any] | None) -> list[dict[str, Any]]:
    if layer_groups is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if isinstance(layer_groups, (nn.Module, torch.Tensor)) or not isinstance(layer_groups, Sequence) or not layer_groups:
        raise TypeError("layer_groups must be a non-empty list of modules or of parameter lists")
    groups, seen = [], set()
    for i, group in enumerate(layer_groups):
        params = list(group.parameters()) if isinstance(group, nn.Module) else list(group)
        params = [p for p in params if p.requires_grad]
        if not params:
            raise fail(f"layer_groups[{i}]", "has no trainable parameters")
        if any(id(p) in seen for p in params):
            raise fail(f"layer_groups[{i}]", "shares parameters with an earlier group; groups must be disjoint")
        seen.update(id(p) for p in params)
        groups.append({"params": params})
    return groups


def _check_options(n_groups: int, n_epochs: Any, wds: Any, use_wd_sched: Any, norm_wds: Any, wds_sched_mult: Any,
                   accumulate: Any, compile: Any, resume: Any, on_nan: Any,
                   metrics: Any) -> tuple[int, int, str | None, tuple[float, ...] | None]:
    """Check a fit's options before anything changes; ``(n_epochs, accumulate, compile backend, wds per group)``."""
    n_epochs = check_int("n_epochs", n_epochs, minimum=1)
    _check_metrics(metrics)
    accumulate = check_int("accumulate", accumulate, minimum=1)
    check_bool("use_wd_sched", use_wd_sched)
    check_bool("norm_wds", norm_wds)
    backend = compile_backend(compile)
    check_bool("resume", resume)
    check_choice("on_nan", on_nan, ON_NAN)
    if wds_sched_mult is not None and not callable(wds_sched_mult):
        raise TypeError(f"wds_sched_mult must be a callable taking the learner; got {wds_sched_mult!r}")
    group_wds = None if wds is None else as_group_values("wds", wds, n_groups, minimum=0.0)
    if (norm_wds or wds_sched_mult is not None) and not use_wd_sched:
        raise ArgumentError("norm_wds" if norm_wds else "wds_sched_mult",
                            "{norm_wds} and {wds_sched_mult} apply to scheduled weight decay; pass {use_wd_sched}=True")
    if use_wd_sched and group_wds is None:
        raise ArgumentError("use_wd_sched",
                            "{use_wd_sched}=True needs {wds} (the weight decay to schedule); got {wds}=None")
    return n_epochs, accumulate, backend, group_wds


def _check_callbacks(name: str, callbacks: Sequence[Callback] | None) -> list[Callback]:
    if isinstance(callbacks, Callback) or (callbacks is not None and not isinstance(callbacks, Iterable)):
        raise TypeError(f"{name} must be a list of clrfit.Callback instances; got a single {type(callbacks).__name__}: "
                        f"pass [{type(callbacks).__name__}(...)]")
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"{name} must hold clrfit.Callback instances; got {type(cb).__name__}")
    return callbacks


def _check_metrics(metrics: Sequence[Callable] | None) -> None:
    if metrics is not None and callable(metrics) and not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be a list of callables (pred, targ) -> tensor; got the single callable "
                        f"{metric_name(metrics)}: pass [{metric_name(metrics)}]")
    if metrics is not None and not isinstance(metrics, Iterable):
        raise TypeError(f"metrics must be a list of callables (pred, targ) -> tensor; got {metrics!r}")
    if metrics is not None and (isinstance(metrics, (str, bytes)) or not all(callable(m) for m in metrics)):
        raise TypeError(f"metrics must be a list of callables (pred, targ) -> tensor; got {metrics!r}")


#: The most optimizer steps a fit may plan: beyond 2**53 a step count is no longer exact as a float.
MAX_STEPS = 2**53


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number (numpy and 0-d torch included), else None (checked later)."""
    try:
        out = float(value.item() if getattr(value, "ndim", None) == 0 else value)
    except (TypeError, ValueError, AttributeError, RuntimeError, OverflowError):
        return None
    return out if math.isfinite(out) and not isinstance(value, bool) else None


def _check_fit_length(n_cycle: Any, cycle_len: Any, cycle_mult: Any, nb: int) -> None:
    """Refuse SGDR lengths whose epoch count overflows (``cycle_len * (cycle_mult**n_cycle - 1) / (cycle_mult - 1)``)."""
    n, length, mult = _real(n_cycle), _real(cycle_len), _real(cycle_mult)
    if None in (n, length, mult) or not (n >= 1 and length > 0 and mult > 1) or not n.is_integer():
        return  # the schedule's own checks name whatever is wrong
    n = int(n)
    largest = 1
    while length * (mult ** (largest + 1) - 1) / (mult - 1) * nb <= MAX_STEPS:
        largest += 1
    if n > largest:
        raise ArgumentError("n_cycle", f"{{n_cycle}}={n} with {{cycle_len}}={cycle_len:g} and "
                                       f"{{cycle_mult}}={cycle_mult:g} plans more than 2**53 optimizer steps "
                                       f"({nb} per epoch); with these, {{n_cycle}} must be in [1, {largest}]")


def _check_cyclic_range(step_size_up: Any, step_size_down: Any, mode: Any, gamma: Any, total: int) -> None:
    """Refuse ``fit_cyclic`` values that overflow or divide by zero within the run's ``total`` steps."""
    for name, value in (("step_size_up", step_size_up), ("step_size_down", step_size_down)):
        size = _real(value)
        if size is not None and size > MAX_STEPS:
            raise fail(name, "must be in (0, 2**53] optimizer steps (larger sizes overflow the cycle position)", value)
    g = _real(gamma)
    if mode == "exp_range" and g is not None and g > 1 and total > 1:
        # lr = base + (max - base) * s * gamma**t: gamma**(total - 1) must stay a finite float.
        limit = math.exp(math.log(sys.float_info.max) / (total - 1)) * (1 - 1e-12)
        if g > limit:
            raise ArgumentError("gamma", f"{{gamma}}={g:g} overflows: gamma**t over the run's {total} steps exceeds "
                                         f"the largest float; {{gamma}} must be in (0, {limit:.12g}] for this run")


def _check_epoch_length(dl: Any, batches: Iterator[Any], done: int, planned: int) -> None:
    """Warn when an epoch's loader gave fewer steps than its len() planned, or had batches left after them."""
    if done < planned:
        _loader_length_warning(dl, "fewer", planned, done)
    elif next(batches, None) is not None:  # the schedule was planned for len(): never run past it
        _loader_length_warning(dl, "more", planned)


def _loader_length_warning(dl: Any, kind: str, planned: int, got: int | None = None) -> None:
    detail = f"{got} steps" if got is not None else "more batches; the rest were not used"
    warnings.warn(f"the training loader yielded {kind} batches than its len() ({len(dl)}, {planned} optimizer steps "
                  f"planned per epoch): {detail}. The schedule was planned for len() batches, so a cycle that "
                  "should end in this epoch is not completed; make len() match what the loader yields",
                  RuntimeWarning, stacklevel=3)


def _length(dl: Any) -> int | None:
    try:
        return len(dl)
    except TypeError:
        return None


def _handler_table(cbs: Sequence[Callback]) -> dict[str, tuple[Callable[[], None], ...]]:
    """Each event's handlers in callback order; the no-op base hooks are left out, so the hot loop calls nothing for them."""
    table: dict[str, list[Callable[[], None]]] = {e: [] for e in EVENTS}
    for cb in cbs:
        own = getattr(cb, "__dict__", {})  # a hook set on the instance counts too
        for event in _overridden(type(cb)).union(own.keys() & _EVENTS):
            table[event].append(getattr(cb, event))
    return {e: tuple(handlers) for e, handlers in table.items()}


_EVENTS = frozenset(EVENTS)


@functools.lru_cache(maxsize=None)
def _overridden(cls: type) -> frozenset[str]:
    """The events a callback class does something on."""
    return frozenset(e for e in EVENTS if getattr(cls, e) is not getattr(Callback, e))


def _pick(names: Iterable[str], given: dict[str, Any]) -> dict[str, Any]:
    """``{name: given[name]}`` for ``names``: a fit's schedule arguments or its options, from its ``locals()``."""
    return {name: given[name] for name in names}


def _plain_args(args: dict[str, Any], leave_out: str | None = None) -> dict[str, Any]:
    """A fit's schedule arguments as plain values (``schedules.plain``), as its checkpoints compare them."""
    return {name: schedules.plain(value) for name, value in args.items() if name != leave_out}


_warned_threads = False


def _warn_if_oversubscribed(model: nn.Module, device: torch.device) -> None:
    """Once per process: warn when torch's CPU threads exceed the free cores (docs/threads.md)."""
    global _warned_threads
    if _warned_threads:
        return
    n_parameters = sum(p.numel() for p in model.parameters())
    message = threads.oversubscription(torch.get_num_threads(), n_parameters, device.type)
    if message is not None:
        _warned_threads = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)
