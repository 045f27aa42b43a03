"""Plots. Each returns a matplotlib Figure made without pyplot's global state.

In Jupyter (any IPython kernel) every figure made here is shown exactly once,
however the call is written: as a cell's value, with a trailing ``;``, followed
by ``plt.show()``, or in the middle of a cell (figures not shown as the cell's
value are shown when the cell ends, in the order they were made, as the inline
backend does for pyplot figures). In scripts nothing opens a window:
``fig.savefig(path)`` writes a figure and ``fig.show()`` opens it in pyplot's
window on request. :func:`forget` keeps a figure from being shown.
"""
from __future__ import annotations

import io
import math
import sys
from typing import Any, Sequence

from matplotlib.figure import Figure

_pending: list["PlotFigure"] = []  # made during the running cell and not shown yet
_hooked: set[int] = set()  # ids of the IPython shells whose post_execute shows them


class PlotFigure(Figure):
    """A matplotlib Figure that Jupyter shows once as PNG and that ``show()`` opens in a script."""

    def _ipython_display_(self) -> None:
        _display(self)

    def show(self, warn: bool = True) -> None:  # type: ignore[override]
        """Show the figure: inline in Jupyter, in pyplot's window (blocking) elsewhere."""
        if _shell() is not None:
            _display(self)
            return
        import matplotlib.pyplot as plt
        from matplotlib import _pylab_helpers

        if self.canvas.manager is None:  # made without pyplot: give it a window of pyplot's backend
            canvas_class = type(plt.figure().canvas)
            plt.close()
            manager = canvas_class.new_manager(self, max(plt.get_fignums(), default=0) + 1)
            _pylab_helpers.Gcf._set_new_active_manager(manager)
        plt.show()


def forget(fig: Figure) -> None:
    """Do not show ``fig`` when the notebook cell ends (e.g. it was only written to a file)."""
    for i, pending in enumerate(_pending):
        if pending is fig:
            del _pending[i]
            return


def _shell() -> Any:
    """The shell of the running Jupyter kernel, or None (a script, plain Python, terminal IPython)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; never import it just to find out
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    # Only a kernel has a front end that renders images; terminal IPython behaves like a script.
    return shell if getattr(shell, "kernel", None) is not None and hasattr(shell, "events") else None


def _display(fig: Figure) -> None:
    from IPython.display import display

    forget(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    display({"image/png": buffer.getvalue(), "text/plain": repr(fig)}, raw=True)


def _show_pending(*_: Any) -> None:
    while _pending:
        _display(_pending[0])


def _figure(n_rows: int = 1, width: float = 6.4, row_height: float = 3.2):
    fig = PlotFigure(figsize=(width, row_height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    shell = _shell()
    if shell is not None:
        if id(shell) not in _hooked:
            shell.events.register("post_execute", _show_pending)
            _hooked.add(id(shell))
        _pending.append(fig)
    return fig, list(axes)


def momentum_label(param_group: dict) -> str:
    """What the momentum panel shows for an optimizer's param group: ``beta1`` for Adam-family, else ``momentum``."""
    return "beta1" if "betas" in param_group else "momentum"


def plot_lr_mom(
    iterations: Sequence[int],
    lrs: Sequence[float],
    moms: Sequence[float] | None = None,
    epoch_marks: Sequence[int] | None = None,
    title: str | None = None,
    mom_label: str = "momentum",
) -> Figure:
    """Learning rate per iteration, and momentum (labelled ``mom_label``) in a second panel when given."""
    fig, axes = _figure(2 if moms is not None else 1)
    axes[0].plot(list(iterations), list(lrs), color="C0")
    axes[0].set_ylabel("learning rate")
    if moms is not None:
        axes[1].plot(list(iterations), list(moms), color="C1")
        axes[1].set_ylabel(mom_label)
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
        # Legend entries in the order the lines stand from left to right (the band by its left edge).
        handles, labels = axes[0].get_legend_handles_labels()
        where = {f"{name} {value:.2g}": value for name, value, _ in marks}
        if bounds.base_lr == bounds.base_lr:
            where[f"CLR {bounds.base_lr:.2g}..{bounds.max_lr:.2g}"] = bounds.base_lr
        order = sorted(range(len(labels)), key=lambda i: where.get(labels[i], math.inf))
        axes[0].legend([handles[i] for i in order], [labels[i] for i in order], fontsize="small")
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
