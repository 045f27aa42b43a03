"""The epoch table and the bars: numbers never cut, epochs numbered alike, clean logs, Ctrl-C and finished resumes."""
from __future__ import annotations

import io
import re

import pytest

from clrfit.progress import ProgressCallback, bar_class, format_row
from conftest import InterruptAt, make_learner


def test_a_row_never_cuts_a_number():
    row = format_row([3, 12345678901.0, 0.123456789, -98765.4321, float("nan"), "1.2s"])
    cells = row.split()
    assert cells[0] == "3"
    assert float(cells[1]) == pytest.approx(12345678901.0, rel=1e-5)  # was "1234567890"
    assert cells[2] == "0.123457" and float(cells[3]) == pytest.approx(-98765.4321, rel=1e-5)
    assert cells[4] == "nan" and cells[5] == "1.2s"
    assert format_row(["epoch", 0.5]) == "epoch      0.500000"  # ordinary values keep their fixed columns


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_the_output_is_not_a_terminal():
    assert bar_class(io.StringIO()) is None
    assert bar_class(_Tty()) is not None


def _fit_output(learn, stream, **fit_kwargs) -> str:
    learn.callbacks = [ProgressCallback(bar=True, table=True, file=stream)]
    learn.progress = learn.table = False  # only the callback above writes, to ``stream``
    learn.fit(0.05, 3, **fit_kwargs)
    return stream.getvalue()


def test_a_log_file_gets_the_table_and_no_bar_updates():
    out = _fit_output(make_learner(), io.StringIO())
    assert "\r" not in out
    lines = out.splitlines()
    assert re.match(r"epoch\s+trn_loss\s+val_loss\s+time", lines[0])
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]


def test_the_bar_numbers_epochs_as_the_table_does():
    out = _fit_output(make_learner(), _Tty())
    bar_epochs = sorted(set(re.findall(r"epoch (\d+)", out)))
    table_epochs = [line.split()[0] for line in out.splitlines() if re.match(r"\d+\s", line)]
    assert bar_epochs == table_epochs == ["0", "1", "2"]


def test_ctrl_c_leaves_no_row_for_the_cut_epoch():
    learn = make_learner()  # 96 samples, bs 16: 6 steps per epoch
    with pytest.raises(KeyboardInterrupt):
        _fit_output(learn, stream := io.StringIO(), callbacks=[InterruptAt(8)])
    rows = [line for line in stream.getvalue().splitlines() if re.match(r"\d+\s", line)]
    assert [row.split()[0] for row in rows] == ["0"]


def test_resuming_a_finished_run_says_so(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    learn = make_learner()
    learn.fit(0.05, 2, checkpoint=ckpt)
    stream = io.StringIO()
    learn.callbacks = [ProgressCallback(bar=False, table=True, file=stream)]
    learn.fit(0.05, 2, checkpoint=ckpt, resume=True)
    assert stream.getvalue().strip() == "nothing to train: all 2 epochs of this run are done (resumed at epoch 2, iteration 12)"


@pytest.mark.slow  # starts a Jupyter kernel
def test_in_jupyter_with_ipywidgets_the_bar_is_a_widget(tmp_path, monkeypatch):
    """The ``notebook`` extra: with ipywidgets the bar is a widget and nothing falls back to text."""
    pytest.importorskip("ipywidgets")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    import os
    from pathlib import Path

    import ipywidgets

    root = Path(__file__).resolve().parent.parent
    widgets_dir = str(Path(ipywidgets.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), widgets_dir, os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import sys; sys.path.insert(0, %r)\n"
        "from conftest import make_learner\n"
        "learn = make_learner(progress=True, table=True)\n"
        "learn.fit(0.05, 2)" % str(root / "tests"))]
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    table = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert len(widgets) == 2  # one bar per epoch
    assert "IProgress" not in text and "ipywidgets" not in text and "\r" not in text
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["0", "1"]
