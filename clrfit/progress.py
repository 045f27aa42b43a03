"""Progress bars (``tqdm.auto``: widgets in notebooks, text in terminals) and the
fastai-style epoch table: epoch, trn_loss, val_loss, each metric, time."""
from __future__ import annotations

import math
import sys
import time

from .callback import Callback


def format_row(values: list, width: int = 11) -> str:
    """One row of the epoch table, fixed-width columns."""
    cells = []
    for v in values:
        if isinstance(v, float):
            cells.append("nan" if math.isnan(v) else f"{v:.6f}"[:width - 1])
        else:
            cells.append(str(v))
    return "".join(c.ljust(width) for c in cells).rstrip()


class ProgressCallback(Callback):
    """Shows a batch progress bar per epoch (``bar=True``) and prints the epoch table (``table=True``)."""

    order = 90

    def __init__(self, bar: bool = True, table: bool = True, file=None) -> None:
        self.bar, self.table = bar, table
        self.file = file
        self._pbar = None
        self.rows: list[list] = []

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file or sys.stdout)

    def on_train_begin(self) -> None:
        self.rows = []
        if self.table and self.learn.is_main_process:
            self._write(format_row(["epoch", "trn_loss", "val_loss", *self.learn.metric_names, "time"]))

    def on_epoch_begin(self) -> None:
        self._start = time.perf_counter()
        if self.bar and self.learn.is_main_process:
            from tqdm.auto import tqdm

            learn = self.learn
            self._pbar = tqdm(
                total=learn.nb, initial=learn.batch_index, leave=False, dynamic_ncols=True,
                desc=f"epoch {learn.epoch + 1}/{learn.n_epochs}", file=self.file,
            )

    def on_batch_end(self) -> None:
        if self._pbar is not None:
            self._pbar.update(1)

    def on_epoch_end(self) -> None:
        self._close()
        learn = self.learn
        val_loss = math.nan if learn.val_loss is None else learn.val_loss
        metrics = list(learn.val_metrics) if learn.val_loss is not None else [math.nan] * len(learn.metric_names)
        row = [learn.epoch, learn.recorder.last_loss, val_loss, *metrics, f"{time.perf_counter() - self._start:.1f}s"]
        self.rows.append(row)
        if self.table and learn.is_main_process:
            self._write(format_row(row))

    def on_train_end(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
