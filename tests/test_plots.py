"""Plots: each call returns a Figure; in a real Jupyter kernel each shows exactly one image however it is
written; in a script none opens a window; labels and legend order; the fit recorder's ``plot`` explains."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from clrfit import plots
from clrfit.recorder import Recorder
from clrfit.suggest import CLRBounds, Suggestions
from conftest import make_learner

ROOT = Path(__file__).resolve().parent.parent
nbformat = pytest.importorskip("nbformat")


def test_range_test_legend_follows_the_lines_left_to_right():
    lrs = [10 ** (-4 + 5 * i / 49) for i in range(50)]
    losses = [2.0 - i / 60 for i in range(50)]
    s = Suggestions(minimum=0.3, steep=0.002, valley=0.02, clr_bounds=CLRBounds(0.001, 0.05))
    fig = plots.plot_range_test(lrs, [("loss", losses)], suggestions=s)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [label.split()[0] for label in labels] == ["CLR", "steep", "valley", "minimum"]  # 0.001 < .002 < .02 < .3


@pytest.mark.parametrize("opt_fn,label", [
    (None, "momentum"),
    (lambda params, lr: torch.optim.Adam(params, lr=lr), "beta1"),
    (lambda params, lr: torch.optim.AdamW(params, lr=lr), "beta1"),
])
def test_momentum_panel_is_labelled_by_the_optimizer(opt_fn, label):
    learn = make_learner(opt_fn=opt_fn)
    learn.fit(0.01, 1, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85))
    fig = learn.sched.plot_lr()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig.axes[0].get_ylabel() == "learning rate" and fig.axes[1].get_ylabel() == label


def test_plot_after_a_fit_says_what_to_call():
    learn = make_learner()
    learn.fit(0.01, 1)
    with pytest.raises(AttributeError) as info:
        learn.sched.plot()
    message = str(info.value)
    for name in ("plot_lr", "plot_loss", "lr_find2"):
        assert name in message
    assert not hasattr(Recorder(), "plot")  # hasattr-style checks still see "no plot here"
    learn.lr_find2(num_it=30)
    assert isinstance(learn.sched.plot(), Figure)  # the range test's recorder plots


def test_a_script_opens_no_window_and_registers_nothing_with_pyplot(tmp_path):
    script = (
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "from clrfit import schedules\n"
        "fig = schedules.preview(100, use_clr_beta=(10, 10, 0.95, 0.85)).plot()\n"
        "plt.show()\n"
        "fig.savefig('lr.png')\n"
        "from clrfit import plots\n"
        "assert plt.get_fignums() == [] and plots._pending == [], (plt.get_fignums(), plots._pending)\n"
        "print(type(fig).__mro__[1].__name__)\n"
        "import warnings\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')  # Agg: 'non-interactive, cannot be shown'\n"
        "    fig.show()  # asked: now pyplot manages it (a window with an interactive backend)\n"
        "assert plt.get_fignums() == [1] and plt.gcf() is fig, plt.get_fignums()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Figure" and (tmp_path / "lr.png").stat().st_size > 1000


# --------------------------------------------------------------------------- in a real kernel

SETUP = """\
import clrfit.datasets
_real = clrfit.datasets.mnist1d
clrfit.datasets.mnist1d = lambda bs=32, **kw: _real(n_train=512, n_valid=256, bs=32, cache_dir={cache!r})
import torch
torch.set_num_threads(1)
import matplotlib.pyplot as plt
from clrfit import Learner, accuracy, datasets, models, schedules
learn = Learner(models.mnist1d_cnn(), datasets.mnist1d(), metrics=[accuracy], progress=True)
s = learn.lr_find2(start_lr=1e-4, end_lr=10, num_it=30)
"""

# (source, images expected in the cell's outputs)
FORMS = [
    ("learn.sched.plot()", 1),                                   # the cell's value
    ("learn.sched.plot();", 1),                                  # value suppressed
    ("learn.sched.plot()\nplt.show()", 1),                       # fastai habit
    ("fig = learn.sched.plot()\nprint('after')", 1),             # mid-cell, kept in a name
    ("learn.sched.plot()\nx = 1", 1),                            # mid-cell, discarded
    ("learn.sched.plot()\nschedules.preview(50).plot()", 2),     # two calls, two images
    ("%matplotlib inline\nlearn.sched.plot()", 1),               # with pyplot's inline backend on
    ("fig = learn.sched.plot()\nfig", 1),                        # made, then shown as the value
    ("f = learn.sched.plot()\nprint(isinstance(f, __import__('matplotlib').figure.Figure))", 1),
    ("learn.fit(0.05, 1)", 0),                                   # a fit shows its table, nothing more
    ("print(learn.sched)", 0),
]


def _kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Jupyter's own backend, as a user has it
    monkeypatch.setenv("CLRFIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _execute(cells: list[str], cwd: Path):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _images(cell) -> int:
    return sum(1 for out in cell.outputs if "image/png" in out.get("data", {}))


def _text(cell, name: str | None = None) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream" and (name is None or out.name == name):
            parts.append(out.text)
        elif name is None and out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # one kernel, about half a minute on a busy 2-core machine
def test_every_way_of_plotting_shows_exactly_one_image_per_call(monkeypatch, tmp_path):
    _kernel_env(monkeypatch, tmp_path)
    setup = SETUP.format(cache=str(tmp_path / "cache"))
    readme = _readme_block("## In Python")
    tour = _readme_block("## API tour")
    nb = _execute([setup, *(source for source, _ in FORMS), readme, tour], tmp_path)
    setup_cell, *form_cells = nb.cells
    readme_cell, tour_cell = form_cells[-2:]
    assert _images(setup_cell) == 0
    shown = {source: _images(cell) for (source, _), cell in zip(FORMS, form_cells)}
    assert shown == {source: n for source, n in FORMS}
    by_source = dict(zip((source for source, _ in FORMS), form_cells))
    assert _text(by_source[FORMS[3][0]]).startswith("after")
    assert "True" in _text(by_source[FORMS[8][0]])
    fit_cell = by_source["learn.fit(0.05, 1)"]
    assert not [o for o in fit_cell.outputs if o.output_type == "execute_result"]  # no "Recorder(...)" line
    assert re.search(r"^epoch\s+trn_loss\s+val_loss\s+accuracy", _text(fit_cell), re.M)
    assert "IProgress" not in _text(fit_cell) and "\r" not in _text(fit_cell)  # no text-bar fallback pile
    assert _text(by_source["print(learn.sched)"]).startswith("Recorder(")
    # The README's blocks, pasted as one cell each: every plotting call in them shows one image.
    assert _images(readme_cell) == readme.count(".plot") == 2
    assert _images(tour_cell) == tour.count(".plot") == 3
