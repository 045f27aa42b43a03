"""The callbacks people expect: keep the best weights, stop early, clip gradients, log to CSV or TensorBoard.

Each class is one concern. The ``callbacks`` module is public: after
``from clrfit import callbacks as cb``, pass them to a fit
(``learn.fit(..., callbacks=[cb.SaveBest(), cb.CSVLogger("log.csv")])``) or to
the Learner (every fit). Stateful ones (``SaveBest``, ``EarlyStopping``,
``CSVLogger``, ``TensorBoardLogger``) store their state in checkpoints through
``state_dict()`` / ``load_state_dict()``, so ``fit(..., checkpoint=P, resume=True)``
continues them exactly; a fresh fit starts them over. LR range tests leave
them (and their files) untouched.

``monitor``: ``"val_loss"`` or the name of one of the fit's metrics (e.g.
``"accuracy"``); checked in ``on_train_begin``, before any step. ``mode="auto"``
maximises a monitor whose name contains ``acc``, ``f1``, ``auc``, ``precision``,
``recall``, ``iou`` or ``dice`` and minimises any other (losses, error rates).
Epochs are numbered from 0, as ``learn.epoch``.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .callback import Callback, CancelFitException
from .lr_finder import RangeTestRecorder
from .serialization import load_state, save_state
from .validation import MONITOR_MODES as MODES  # the name this module has always exported
from .validation import ArgumentError, check_bool, check_choice, check_int, check_number, escape

_MAXIMISED = ("acc", "f1", "auc", "precision", "recall", "iou", "dice")


class _Resumable(Callback):
    """Resets its state at each fit's start, unless the fit resumes from a checkpoint.

    A resuming checkpoint callback (order 55 or 60) restores this state and sets the
    counters in its ``on_train_begin``: a callback ordered after it sees non-zero
    counters and keeps the restored state; one ordered before it resets, and is
    then overwritten by the restore. LR range tests (``lr_find``, ``lr_find2``) are
    not fits: a learner-wide callback sits them out (``sitting_out``), keeping its
    state and files untouched.
    """

    sitting_out = False

    def reset(self) -> None:
        """Forget everything from earlier fits."""

    @property
    def resumed(self) -> bool:
        """Whether this fit continues from a checkpoint (valid from the checkpoint's on_train_begin on)."""
        return self.learn.epoch > 0 or self.learn.iteration > 0

    def on_train_begin(self) -> None:
        self.sitting_out = isinstance(self.learn.recorder, RangeTestRecorder)
        if not self.sitting_out and not self.resumed:
            self.reset()


class _Monitor(_Resumable):
    """Shared by the callbacks that watch one validation value."""

    def __init__(self, monitor: str, mode: str) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be 'val_loss' or a metric name (a non-empty str); got {monitor!r}")
        self.monitor = monitor
        self.mode = check_choice("mode", mode, MODES)
        self.maximise = mode == "max" or (mode == "auto" and any(k in monitor.lower() for k in _MAXIMISED))
        self.reset()

    def reset(self) -> None:
        self.best = -math.inf if self.maximise else math.inf
        self.best_epoch = -1

    def check_monitor(self) -> None:
        """``ArgumentError`` (a ``ValueError``) naming ``monitor`` unless the fit records it every epoch."""
        learn, name = self.learn, type(self).__name__
        allowed = ["val_loss", *learn.metric_names]
        if self.monitor not in allowed:
            raise ArgumentError("monitor", f"{name}: {{monitor}}={escape(repr(self.monitor))} is not a recorded "
                                           f"metric; allowed: {escape(', '.join(repr(a) for a in allowed))}")
        if learn.data.val_dl is None or not learn.validate_each_epoch:
            raise ArgumentError("monitor", f"{name}: {{monitor}}={escape(repr(self.monitor))} needs a validation "
                                           "pass every epoch, but this fit has none (no val_dl, or validate=False)")

    def current(self) -> float | None:
        """This epoch's value of ``monitor`` (None when validation did not run)."""
        learn = self.learn
        if learn.val_loss is None:
            return None
        if self.monitor == "val_loss":
            return float(learn.val_loss)
        return float(learn.val_metrics[learn.metric_names.index(self.monitor)])

    def improves(self, value: float, min_delta: float = 0.0) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if math.isnan(value):
            return False
        return value > self.best + min_delta if self.maximise else value < self.best - min_delta


class SaveBest(_Monitor):
    """Saves the model whenever ``monitor`` improves (atomic write); ``load_best`` loads that file at the end of the fit.

    ``path``: the file (default ``learn.path/models/best.pt``). It holds
    ``{"model": state_dict, "epoch", "monitor", "value"}``; ``best_epoch`` and
    ``best`` say which epoch and value it holds.
    """

    order = 70  # after the recorder, before progress output; after a checkpoint restored its state

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", path: str | Path | None = None,
                 load_best: bool = False) -> None:
        if path is not None and not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a file path (str or pathlib.Path) or None; got {path!r}")
        self.path = None if path is None else Path(path)
        self.load_best = check_bool("load_best", load_best)
        super().__init__(monitor, mode)

    @property
    def file(self) -> Path:
        """Where the best model is written."""
        return self.path if self.path is not None else self.learn.model_path("best")

    def on_train_begin(self) -> None:
        """Check the monitor and start over (unless resuming)."""
        super().on_train_begin()
        if not self.sitting_out:
            self.check_monitor()

    def on_validate_end(self) -> None:
        """Save the model if this epoch's value is the best so far."""
        value = None if self.sitting_out else self.current()
        if value is None or not self.improves(value):
            return
        learn = self.learn
        self.best, self.best_epoch = value, learn.epoch
        if learn.is_main_process:
            save_state({"model": learn.model.state_dict(), "epoch": learn.epoch, "monitor": self.monitor,
                        "value": value}, self.file)
        learn.dist.barrier()

    def on_train_end(self) -> None:
        """Load the best model back if ``load_best``."""
        if self.load_best and self.best_epoch >= 0 and not self.sitting_out:
            learn = self.learn
            learn.model.load_state_dict(load_state(self.file, learn.device, required=("model",))["model"])

    def state_dict(self) -> dict[str, Any]:
        """Best value and epoch, for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "monitor": self.monitor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def __repr__(self) -> str:
        return f"SaveBest(monitor={self.monitor!r}, best={self.best:.6g} at epoch {self.best_epoch})"


class EarlyStopping(_Monitor):
    """Stops the fit (``CancelFitException``) once ``monitor`` has not improved by more than ``min_delta``
    for ``patience`` epochs in a row; prints why and keeps it in ``reason``."""

    order = 95  # last: every other callback has seen this epoch's validation when the fit stops

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "auto") -> None:
        self.patience = check_int("patience", patience, minimum=0)
        self.min_delta = check_number("min_delta", min_delta, minimum=0.0)
        super().__init__(monitor, mode)

    def reset(self) -> None:
        """Forget the best value and the epochs waited."""
        super().reset()
        self.wait = 0
        self.stopped_epoch = -1
        self.reason = ""

    def on_train_begin(self) -> None:
        """Check the monitor; a resumed fit that had stopped stays stopped."""
        super().on_train_begin()
        if self.sitting_out:
            return
        self.check_monitor()
        if self.stopped_epoch >= 0:  # resuming a fit that had already stopped: it stays stopped
            raise CancelFitException()

    def on_validate_end(self) -> None:
        """Count an epoch without improvement, and stop after ``patience`` of them."""
        value = None if self.sitting_out else self.current()
        if value is None:
            return
        epoch = self.learn.epoch
        if self.improves(value, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.reason = (f"EarlyStopping: {self.monitor} has not improved on {self.best:.6g} (epoch {self.best_epoch}) "
                           f"by more than {self.min_delta:g} for {self.wait} epoch(s) (patience={self.patience}); "
                           f"stopping after epoch {epoch}")
            if self.learn.is_main_process:
                tqdm.write(self.reason)  # above the epoch's progress bar, which is still open
            raise CancelFitException()

    def state_dict(self) -> dict[str, Any]:
        """Best value, epochs waited and the stop, for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.wait, self.stopped_epoch, self.reason = int(state["wait"]), int(state["stopped_epoch"]), str(state["reason"])


class GradientClipping(Callback):
    """Clips the total gradient norm to ``max_norm`` before each optimizer step.

    Under fp16 the gradients are unscaled first (``learn.precision.unscale``, once
    per step; the scaler's ``step`` then knows not to unscale again), so the clip
    applies to the true gradients. ``last_norm`` is the norm before clipping (a
    device tensor: reading it syncs).
    """

    order = 20

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = check_number("max_norm", max_norm, minimum=0.0, exclusive_min=True)
        # inf is allowed: the max-norm
        self.norm_type = math.inf if norm_type == math.inf else check_number("norm_type", norm_type, minimum=0.0, exclusive_min=True)
        self.last_norm = None

    def on_backward_end(self) -> None:
        """Unscale (fp16) and clip the gradients before the step."""
        learn = self.learn
        learn.precision.unscale(learn.opt)
        params = [p for g in learn.opt.param_groups for p in g["params"] if p.grad is not None]
        if params:
            self.last_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)

    def __repr__(self) -> str:
        return f"GradientClipping(max_norm={self.max_norm:g}, norm_type={self.norm_type:g})"


class CSVLogger(_Resumable):
    """One CSV row per completed epoch: ``epoch, iteration, train_loss, val_loss, <metrics>, lr``.

    Each row is written with one ``write`` of a whole line, then flushed and
    fsynced, so a crash never leaves a torn row. A fresh fit starts the file over
    (``append=True``: adds to it); a resumed fit first cuts the file back to the
    rows its checkpoint knew of, then appends, so the file matches an
    uninterrupted run. ``train_loss`` is the smoothed loss at the epoch's end,
    ``lr`` the last group's lr of the epoch's last step; floats are written
    with ``repr`` (exact). Only rank 0 writes.
    """

    order = 52  # before the checkpoint writer (order 55 or later) saves at the epoch end, so it counts this row

    def __init__(self, path: str | Path, append: bool = False) -> None:
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise TypeError(f"path must be a file path (str or pathlib.Path); got {path!r}")
        self.path = Path(path)
        self.append = check_bool("append", append)
        self.reset()

    def reset(self) -> None:
        """Start a new file at the next epoch."""
        self.lines = 0  # lines of the file (header included) this logger has accounted for
        self._ready = False

    def on_train_begin(self) -> None:
        """Start over (a resume then restores the row count)."""
        super().on_train_begin()
        self._ready = False  # the file is prepared at the first epoch, once a checkpoint may have restored state

    def on_epoch_begin(self) -> None:
        """Prepare the file once per fit: new, appended to, or cut back on resume."""
        if not self._ready and not self.sitting_out:
            self._prepare()

    def _prepare(self) -> None:
        learn = self.learn
        self._ready = True
        self.columns = ["epoch", "iteration", "train_loss", "val_loss", *learn.metric_names, "lr"]
        if not learn.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.lines > 0:  # resumed: drop rows written after the checkpoint
            kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:self.lines] if self.path.exists() else []
            _replace_text(self.path, "".join(kept))
            return
        if self.append and self.path.exists() and self.path.stat().st_size > 0:
            self.lines = len(self.path.read_text(encoding="utf-8").splitlines())
            return
        _replace_text(self.path, "")
        self._write_line(",".join(self.columns))

    def on_epoch_end(self) -> None:
        """Write this epoch's row (complete epochs only)."""
        learn = self.learn
        if self.sitting_out or learn.interrupted or learn.batch_index < learn.nb:  # only complete epochs get a row
            return
        if not self._ready:
            self._prepare()
        rec = learn.recorder
        lr = rec.group_lrs[-1][-1] if rec.group_lrs else math.nan
        val = [] if learn.val_loss is None else [learn.val_loss, *learn.val_metrics]
        values = [learn.epoch, learn.iteration, rec.last_loss, *val]
        values += [""] * (len(self.columns) - 1 - len(values)) + [lr]
        row = ",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values)
        if learn.is_main_process:
            self._write_line(row)
        else:
            self.lines += 1

    def _write_line(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text + "\n")  # one write of a whole line
            f.flush()
            os.fsync(f.fileno())
        self.lines += 1

    def state_dict(self) -> dict[str, Any]:
        """Lines written, for checkpoints."""
        return {"lines": self.lines, "path": str(self.path)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lines = int(state["lines"])


class TensorBoardLogger(_Resumable):
    """Writes lr and momentum (per layer group), raw and smoothed training loss per step, and validation loss and
    metrics per epoch, to TensorBoard event files in ``log_dir`` (rank 0 only).

    Step scalars (``lr/group{i}``, ``momentum/group{i}``, ``loss/train``,
    ``loss/train_smooth``) use the iteration as the step; epoch scalars
    (``epoch/val_loss``, ``epoch/<metric>``, ``epoch/train_loss``) use the
    epoch's last iteration. A later fit with the same logger continues the
    steps after the previous fit's last one. They are read from the recorder at each epoch's end
    (no extra device sync per step). On resume, events past the checkpoint are
    purged and written again. Needs the optional ``tensorboard`` package.
    """

    order = 96

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as err:
            raise ImportError("TensorBoardLogger needs the optional tensorboard package: pip install tensorboard "
                              f"(it is in clrfit's test extra: pip install 'clrfit[test]'); {err}") from None
        if not isinstance(log_dir, (str, Path)) or str(log_dir) == "":
            raise TypeError(f"log_dir must be a folder path (str or pathlib.Path); got {log_dir!r}")
        self.log_dir = Path(log_dir)
        self.writer = None
        self.next_step = 0  # TensorBoard step of the next event
        self.reset()

    def reset(self) -> None:
        """Start this fit's steps after the last step written."""
        # A later fit continues the x axis where the previous one ended, instead of drawing over it.
        self.base = self.next_step  # TensorBoard step of this fit's iteration 0
        self.logged = 0  # recorder steps of this fit written

    def on_train_begin(self) -> None:
        """Open the event writer (purging events past the checkpoint on resume)."""
        super().on_train_begin()
        if self.learn.is_main_process and not self.sitting_out:
            from torch.utils.tensorboard import SummaryWriter

            self._close()
            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.next_step if self.resumed else None)

    def on_epoch_end(self) -> None:
        """Write this epoch's steps and its validation results."""
        learn = self.learn
        if self.sitting_out:
            return
        self._write_steps()
        if self.writer is None or learn.val_loss is None:
            return
        step = self.base + max(learn.iteration - 1, 0)
        self.writer.add_scalar("epoch/train_loss", learn.recorder.last_loss, step)
        self.writer.add_scalar("epoch/val_loss", learn.val_loss, step)
        for name, value in zip(learn.metric_names, learn.val_metrics):
            self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.flush()

    def on_train_end(self) -> None:
        """Write the remaining steps and close the writer."""
        if not self.sitting_out:
            self._write_steps()
            self._close()

    def _write_steps(self) -> None:
        rec = self.learn.recorder
        raw, smooth = rec.raw_losses, rec.losses
        n = min(len(rec.iterations), len(raw))
        if self.writer is not None:
            for j in range(self.logged, n):
                step = self.base + rec.iterations[j]
                for i, lr in enumerate(rec.group_lrs[j]):
                    self.writer.add_scalar(f"lr/group{i}", lr, step)
                for i, mom in enumerate(rec.group_moms[j]):
                    if mom is not None:
                        self.writer.add_scalar(f"momentum/group{i}", mom, step)
                self.writer.add_scalar("loss/train", raw[j], step)
                self.writer.add_scalar("loss/train_smooth", smooth[j], step)
            self.writer.flush()
        if n > self.logged:
            self.logged, self.next_step = n, self.base + rec.iterations[n - 1] + 1

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        """Steps written, for checkpoints."""
        return {"base": self.base, "logged": self.logged, "next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.base, self.logged, self.next_step = int(state["base"]), int(state["logged"]), int(state["next_step"])


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
