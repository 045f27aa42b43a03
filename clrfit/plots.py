"""Plots. Each returns a matplotlib Figure made without pyplot's global state,
so it works headless (Agg), in scripts and inline in Jupyter (shown when it is
the cell's value; ``fig.savefig(path)`` writes it)."""
from __future__ import annotations

import math
from typing import Sequence

from matplotlib.figure import Figure


def _figure(n_rows: int = 1, width: float = 6.4, row_height: float = 3.2):
    _register_notebook_display()
    fig = Figure(figsize=(width, row_height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _register_notebook_display() -> None:
    # A Figure made without pyplot has no display hook of its own: inside IPython,
    # register a PNG formatter for Figure unless one (inline backend, user's
    # choice of format) is already there, so a returned Figure renders as an image.
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    for mime, formatter in shell.display_formatter.formatters.items():
        if mime == "text/plain":
            continue
        try:
            formatter.lookup_by_type(Figure)
            return
        except KeyError:
            continue
    from IPython.core.pylabtools import select_figure_formats

    select_figure_formats(shell, {"png"})


def plot_lr_mom(
    iterations: Sequence[int],
    lrs: Sequence[float],
    moms: Sequence[float] | None = None,
    epoch_marks: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Learning rate per iteration, and momentum in a second panel when given."""
    fig, axes = _figure(2 if moms is not None else 1)
    axes[0].plot(list(iterations), list(lrs), color="C0")
    axes[0].set_ylabel("learning rate")
    if moms is not None:
        axes[1].plot(list(iterations), list(moms), color="C1")
        axes[1].set_ylabel("momentum")
    axes[-1].set_xlabel("iteration")
    for mark in epoch_marks or []:
        for ax in axes:
            ax.axvline(mark, color="0.7", linewidth=0.8, linestyle="--")
    if title:
        axes[0].set_title(title)
    return fig


def plot_series(
    xs: Sequence[float],
    ys: Sequence[float],
    n_skip: int = 0,
    n_skip_end: int = 0,
    xlabel: str = "",
    ylabel: str = "",
    log_x: bool = False,
) -> Figure:
    """One curve, skipping ``n_skip`` points at the start and ``n_skip_end`` at the end."""
    xs, ys = list(xs), list(ys)
    end = len(xs) - n_skip_end if n_skip_end else len(xs)
    fig, (ax,) = _figure(1)
    ax.plot(xs[n_skip:end], ys[n_skip:end])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    return fig


def plot_range_test(
    lrs: Sequence[float],
    panels: Sequence[tuple[str, Sequence[float]]],
    n_skip: int = 0,
    n_skip_end: int = 0,
    log_x: bool = True,
    suggestions=None,
) -> Figure:
    """An LR range test: one panel per ``(label, values)`` against lr, suggested lrs marked on each."""
    lrs = list(lrs)
    end = len(lrs) - n_skip_end
    fig, axes = _figure(len(panels), row_height=3.2 if len(panels) == 1 else 2.6)
    marks = []
    if suggestions is not None:
        bounds = suggestions.clr_bounds
        marks = [(name, getattr(suggestions, name), color)
                 for name, color in (("minimum", "C1"), ("steep", "C2"), ("valley", "C3"))]
        marks = [(name, value, color) for name, value, color in marks if value == value]  # drop nan
    for ax, (label, values) in zip(axes, panels):
        shown = list(values)[n_skip:end]
        ax.plot(lrs[n_skip:end], shown, color="C0")
        ax.set_ylabel(label)
        if "loss" in label:
            _clip_divergence(ax, shown)
        if log_x:
            ax.set_xscale("log")
        for name, value, color in marks:
            ax.axvline(value, color=color, linestyle="--", linewidth=1, label=f"{name} {value:.2g}")
        if suggestions is not None and bounds.base_lr == bounds.base_lr:
            ax.axvspan(bounds.base_lr, bounds.max_lr, color="C4", alpha=0.12,
                       label=f"CLR {bounds.base_lr:.2g}..{bounds.max_lr:.2g}")
    if suggestions is not None:
        axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("learning rate" + (" (log scale)" if log_x else ""))
    return fig


def _clip_divergence(ax, values: Sequence[float]) -> None:
    """Keep a loss panel readable when the sweep ends in a divergence spike.

    The top of the y-axis is capped at the larger of the first value and twice the
    median, so a loss that explodes by orders of magnitude at the end does not
    flatten the part of the curve used to pick a learning rate.
    """
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 3:
        return
    first = next(v for v in values if math.isfinite(v))
    cap = max(first, 2 * finite[len(finite) // 2])
    if finite[-1] > cap:
        low = finite[0]
        ax.set_ylim(low - 0.05 * (cap - low), cap)
