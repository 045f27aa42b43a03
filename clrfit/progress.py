"""Progress bars and the fastai-style epoch table: epoch, trn_loss, val_loss, each metric, time.

Epochs are numbered from 0, in the table and in the bar alike (as fastai 0.7).
The bar is a widget in Jupyter (with ipywidgets: ``pip install 'clrfit[notebook]'``),
a text bar in a terminal, and absent when the output goes to a file or a pipe, so
a log holds the table's rows and no pile of ``\\r`` updates. A fit stopped by
Ctrl-C leaves no half-drawn bar and no row for its unfinished epoch.
"""
from __future__ import annotations

import importlib.util
import math
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm as text_tqdm

from .callback import Callback

_WIDTH = 11
_hinted = False  # the "install ipywidgets" hint is given once per process


def format_row(values: list, width: int = _WIDTH) -> str:
    """One row of the epoch table: fixed-width columns that widen rather than cut a number."""
    cells = []
    for v in values:
        if isinstance(v, float):
            text = "nan" if math.isnan(v) else f"{v:.6f}"
            cells.append(text if len(text) < width else f"{v:.6g}")  # 12345678901.0 -> 1.23457e+10
        else:
            cells.append(str(v))
    return "".join(c.ljust(width) if len(c) < width else c + " " for c in cells).rstrip()


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")  # a kernel has imported it; never import it just to find out
    return ipython is not None and getattr(ipython.get_ipython(), "kernel", None) is not None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar_class(file: TextIO | None = None) -> Any:
    """The tqdm class to draw a bar with on ``file`` (default stderr), or None when no bar should be drawn."""
    global _hinted
    if _in_kernel():
        if importlib.util.find_spec("ipywidgets") is None:  # tqdm's widget bar needs it
            if not _hinted:
                _hinted = True
                print("(progress bars in Jupyter need ipywidgets: pip install 'clrfit[notebook]')", file=sys.stderr)
            return None
        from tqdm.notebook import tqdm  # only in a kernel: it imports IPython and ipywidgets

        return tqdm
    return text_tqdm if _is_terminal(file or sys.stderr) else None


class ProgressCallback(Callback):
    """Shows a batch progress bar per epoch (``bar=True``) and prints the epoch table (``table=True``)."""

    order = 90

    def __init__(self, bar: bool = True, table: bool = True, file: TextIO | None = None) -> None:
        self.bar, self.table = bar, table
        self.file = file
        self._pbar = None
        self._start = time.perf_counter()

    def _write(self, text: str) -> None:
        text_tqdm.write(text, file=self.file or sys.stdout)  # above a bar in progress, not through it

    def on_train_begin(self) -> None:
        learn = self.learn
        if not (self.table and learn.is_main_process):
            return
        if learn.epoch >= learn.n_epochs:  # resumed from a checkpoint written when the run had finished
            self._write(f"nothing to train: all {learn.n_epochs} epochs of this run are done "
                        f"(resumed at epoch {learn.epoch}, iteration {learn.iteration})")
            return
        self._write(format_row(["epoch", "trn_loss", "val_loss", *learn.metric_names, "time"]))

    def on_epoch_begin(self) -> None:
        self._start = time.perf_counter()
        if self.bar and self.learn.is_main_process:
            tqdm = bar_class(self.file)
            if tqdm is not None:
                learn = self.learn
                self._pbar = tqdm(total=learn.nb, initial=learn.batch_index, leave=False, dynamic_ncols=True,
                                  desc=f"epoch {learn.epoch}", file=self.file)

    def on_batch_end(self) -> None:
        if self._pbar is not None:
            self._pbar.update(1)

    def on_epoch_end(self) -> None:
        self._close()
        learn = self.learn
        if getattr(learn, "interrupted", False) or not (self.table and learn.is_main_process):
            return  # an epoch cut short by Ctrl-C has no row
        val_loss = math.nan if learn.val_loss is None else learn.val_loss
        metrics = list(learn.val_metrics) if learn.val_loss is not None else [math.nan] * len(learn.metric_names)
        self._write(format_row([learn.epoch, learn.recorder.last_loss, val_loss, *metrics,
                                f"{time.perf_counter() - self._start:.1f}s"]))

    def on_train_end(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
