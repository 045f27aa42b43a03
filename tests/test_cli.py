"""The clrfit command: parsing, errors (exit 2, one line, before any data or torch), and each command
on tiny settings, Ctrl-C and resume included."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clrfit import cli, datasets, models
from clrfit.learner import Learner
from conftest import InterruptAt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own folder, so the default output folder lands there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clrfit-cache")


@pytest.fixture
def tiny_data(monkeypatch, cache):
    """Every dataset request gets a small MNIST-1D (generated once per module into a tmp cache)."""
    monkeypatch.setenv("CLRFIT_CACHE_DIR", str(cache))
    calls = []
    real_mnist1d = datasets.mnist1d

    def fake_get_data(name, path=None, bs=128, **kw):
        calls.append(dict(name=name, path=path, bs=bs, **kw))
        return real_mnist1d(n_train=256, n_valid=128, bs=bs, cache_dir=cache)

    def fake_mnist1d(bs=128, **kw):
        return real_mnist1d(n_train=512, n_valid=256, bs=bs, cache_dir=cache)

    monkeypatch.setattr(datasets, "get_data", fake_get_data)
    monkeypatch.setattr(datasets, "mnist1d", fake_mnist1d)
    return calls


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv,option", [
    (["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr-beta", "10,13.68,0.95"], "--use-clr-beta"),
    (["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr", "10"], "--use-clr"),
    (["fit", "--lr", "0.1", "--use-clr", "10,x"], "--use-clr"),
    (["fit", "--lr", "-1"], "--lr"),
    (["fit", "--lr", "0"], "--lr"),
    (["fit", "--lr", "nan"], "--lr"),
    (["fit"], "--lr"),
    (["fit", "--lr", "0.1", "--dataset", "imagenet"], "--dataset"),
    (["fit", "--lr", "0.1", "--arch", "vgg"], "--arch"),
    (["fit", "--lr", "0.1", "--bs", "0"], "--bs"),
    (["fit", "--lr", "0.1", "--n-cycle", "1.5"], "--n-cycle"),
    (["fit", "--lr", "0.1", "--cycle-len", "0"], "--cycle-len"),
    (["fit", "--lr", "0.1", "--wds", "-0.1"], "--wds"),
    (["fit", "--lr", "0.1", "--opt", "lbfgs"], "--opt"),
    (["fit", "--lr", "0.1", "--fp16", "--precision", "bf16"], "--precision"),
    (["fit", "--lr", "0.1", "--use-clr", "10,5", "--use-clr-beta", "10,10"], "--use-clr-beta"),
    (["fit", "--lr", "0.1", "--accumulate", "0"], "--accumulate"),
    (["fit", "--lr", "0.1", "--checkpoint", "."], "--checkpoint"),
    (["fit", "--lr", "0.1", "--out", __file__], "--out"),
    (["fit", "--lr", "0.1", "--device", "cuda 1"], "--device"),
    (["fit", "--lr", "0.1", "--use-clr-beta", "10,10"], "--cycle-len"),
    (["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr-beta", "10,130"], "--use-clr-beta"),
    (["fit", "--lr", "0.1", "--arch", "resnet20"], "--arch"),
    (["fit", "--lr", "0.1", "--dataset", "cifar10", "--arch", "cnn1d"], "--arch"),
    (["fit", "--lr", "0.1", "--loader", "gpu"], "--loader"),
    (["fit", "--lr", "0.1", "--loader", "tensor", "--num-workers", "2"], "--num-workers"),
    (["fit", "--lr", "0.1", "--num-workers", "-1"], "--num-workers"),
    (["lr-find", "--loader", "torch", "--data-folder", "."], "--loader"),
    (["lr-find", "--num-it", "0"], "--num-it"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr"),
    (["lr-find", "-o", "plot.jpg2"], "-o"),
    (["schedule", "-o", "out.jpg2"], "-o"),
    (["schedule", "--cycle-iterations", "0"], "--cycle-iterations"),
    (["schedule", "--iterations", "-5"], "--iterations"),
    (["schedule", "--cyclic", "0.1"], "--cyclic"),
    (["schedule", "--step-size-up", "10"], "--step-size-up"),
    (["schedule", "--pct-start", "0.3"], "--pct-start"),
    (["schedule", "--use-clr-beta", "10,13.68,0.95"], "--use-clr-beta"),
    (["demo", "--seed", "-3"], "--seed"),
    (["train"], "COMMAND"),
])
def test_bad_input_exits_2_with_one_line_naming_the_option(argv, option, tiny_data, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    line = one_line_error(err)
    assert "error:" in line and option in line
    if argv[0] in ("fit", "lr-find", "schedule", "demo"):
        assert line.startswith(f"clrfit {argv[0]}: error: ")
    assert tiny_data == []  # refused before any data was loaded


@pytest.mark.parametrize("argv,option", [
    (["--use-clr-beta", "10,130"], "--use-clr-beta"),      # pct outside (0, 100)
    (["--use-clr-beta", "1,10"], "--use-clr-beta"),        # div must be > 1
    (["--use-clr", "10,5,1.5,0.85"], "--use-clr"),         # momentum outside [0, 1]
    (["--use-clr-beta", "10,10,0.95,0.85"], "--use-clr-beta"),  # needs --cycle-len
    (["--cycle-mult", "2"], "--cycle-mult"),               # needs --cycle-len
    (["--cycle-len", "1", "--use-wd-sched"], "--use-wd-sched"),  # needs --wds
])
def test_library_errors_become_exit_2(argv, option, tiny_data, capsys):
    """The library's checks of fit's values run before any data is loaded (behaviour changed by issue 16:
    they used to run inside fit), and their message names the flag, not the Python argument."""
    code, out, err = run(["fit", "--lr", "0.1", "--no-progress", *argv], capsys)
    assert code == 2
    line = one_line_error(err)
    assert line.startswith("clrfit fit: error: ") and option in line
    assert "use_clr" not in line and "cycle_len" not in line  # Python names are spelled as flags
    assert tiny_data == []


def test_argument_error_from_the_library_is_spelled_with_flags(tiny_data, capsys, monkeypatch):
    """An ArgumentError raised inside fit (here: the cycle too short for this data) names the flag via
    its .argument, with no parsing of the message."""
    from clrfit.validation import ArgumentError

    def refuse(self, lrs, n_cycle, **kwargs):
        raise ArgumentError("use_clr", "{use_clr} peaks before step 1 with {cycle_len}=1 and {lrs}=0.1")

    monkeypatch.setattr(Learner, "fit", refuse)
    code, out, err = run(["fit", "--lr", "0.1", "--no-progress", "--cycle-len", "1", "--use-clr", "10,5"], capsys)
    assert code == 2
    assert one_line_error(err) == "clrfit fit: error: --use-clr peaks before step 1 with --cycle-len=1 and --lr=0.1"


@pytest.mark.parametrize("argv,expected", [
    (["schedule", "--cycle-iterations", "5", "--use-clr", "10,20"],
     "--use-clr: cut_div=20.0 puts the peak before the first iteration of a 5-iteration cycle "
     "(N // cut_div must be >= 1); lower cut_div or lengthen the cycle"),
    (["schedule", "--cycle-iterations", "5", "--use-clr-beta", "10,95"],
     "--use-clr-beta: a 5-iteration cycle with pct=95.0 gives C = int(N * (1 - pct/100) / 2) = 0; C must be >= 1: "
     "lengthen the cycle (cycle_len, or fewer accumulated batches) or lower pct"),
    (["schedule", "--cycle-iterations", "5", "--one-cycle", "0.1", "--pct-start", "0.2"],
     "--pct-start=0.2 with total_steps=5 gives a phase of zero length at step 0; use more steps (epochs) or "
     "another --pct-start"),
    (["schedule", "--cyclic", "0.1,1", "--lr", "0.5"],
     "--cyclic: do not combine it with --lr=0.5 (they belong to fit-style schedules)"),
    (["schedule", "--cyclic", "0.1,1", "--cycle-mult", "2"],
     "--cyclic: do not combine it with --cycle-mult=2 (they belong to fit-style schedules)"),
])
def test_a_bad_value_the_library_finds_is_reported_with_the_flags_spelling(argv, expected, capsys):
    """Nothing mocked: the library raises ArgumentError and the CLI writes each parameter the message names
    (.argument and the template's fields) as the flag that sets it; no message is parsed."""
    code, out, err = run(argv, capsys)
    assert code == 2
    assert one_line_error(err) == f"clrfit {argv[0]}: error: {expected}"


def test_a_bad_value_found_inside_fit_is_reported_with_the_flags_spelling(tiny_data, capsys):
    """The cycle is too short only for the data's length (2 batches), so fit itself refuses it, after loading."""
    code, out, err = run(["fit", "--lr", "0.1", "--no-progress", "--cycle-len", "1", "--use-clr", "10,3"], capsys)
    assert code == 2 and tiny_data != []
    assert one_line_error(err) == ("clrfit fit: error: --use-clr: cut_div=3.0 puts the peak before the first iteration "
                                   "of a 2-iteration cycle (N // cut_div must be >= 1); lower cut_div or lengthen the "
                                   "cycle")


_NO_TORCH = """
import sys
from clrfit.cli import main
for argv in ({argvs}):
    code = main(argv)
    assert code == {code}, (argv, code)
heavy = sorted(m for m in ("torch", "torchvision", "clrfit.learner", "clrfit.datasets") if m in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize("argvs,code", [
    ([["--help"]], 0),
    ([["fit", "--help"]], 0),
    ([["fit", "--lr", "0.1", "--use-clr-beta", "10,13.68,0.95,0.85"], ["fit", "--lr", "-1"],
      ["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr-beta", "10,130"],
      ["lr-find", "-o", "x.jpg2"], ["schedule", "--step-size-up", "3"], ["fit", "--lr", "0.1", "--cycle-mult", "2"]], 2),
])
def test_help_and_argument_errors_never_import_torch(argvs, code):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = _NO_TORCH.format(argvs=", ".join(repr(a) for a in argvs) + ",", code=code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # imports torch in subprocesses: seconds on a busy machine
def test_help_answers_far_faster_than_importing_torch():
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def wall(args):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, env=env, timeout=120, check=True)
        return time.perf_counter() - start

    # Interleaved, best of two: a busy machine slows both alike.
    help_s, torch_s = [], []
    for _ in range(2):
        help_s.append(wall(["-m", "clrfit", "--help"]))
        torch_s.append(wall(["-c", "import torch"]))
    assert min(help_s) < 0.5 * min(torch_s), (help_s, torch_s)
    assert min(help_s) < 2.0, help_s


def test_cli_choice_lists_match_the_library():
    from clrfit import callbacks, checkpoint, fsdp, lr_scheduler, precision, schedules, validation, vision

    assert cli.DATASETS == datasets.DATASETS
    assert set(cli.ARCHS) == set(models.ARCHS)
    assert validation.ON_NAN == checkpoint.ON_NAN and validation.PRECISIONS == precision.PRECISIONS
    # defined once, in clrfit.validation: every other module holds the same object
    for module, name, owner in [(checkpoint, "ON_NAN", "ON_NAN"), (precision, "PRECISIONS", "PRECISIONS"),
                                (cli, "ON_NAN", "ON_NAN"), (cli, "PRECISIONS", "PRECISIONS"), (cli, "ARCHS", "ARCHS"),
                                (models, "ARCHS", "ARCHS"), (fsdp, "STRATEGIES", "STRATEGIES"),
                                (schedules, "ANNEALS", "ANNEALS"), (schedules, "METHODS", "FIT_METHODS"),
                                (lr_scheduler, "AFTER_END", "AFTER_END"), (callbacks, "MODES", "MONITOR_MODES"),
                                (vision, "NORMALIZE", "NORMALIZE")]:
        assert getattr(module, name) is getattr(validation, owner), (module.__name__, name)


def test_real_process_exit_code_and_message():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "clrfit", "fit", "--lr", "0.1", "--use-clr-beta", "10,13.68,0.95"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2
    assert "--use-clr-beta" in one_line_error(proc.stderr)
    version = subprocess.run([sys.executable, "-m", "clrfit", "--version"], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=120)
    assert version.returncode == 0 and "clrfit" in version.stdout


def test_divergence_exits_1_with_one_line(tiny_data, capsys):
    code, out, err = run(["fit", "--lr", "1e35", "--no-progress"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "diverged" in line and "lr=1e+35" in line


def test_missing_torchvision_data_is_a_clean_error(tmp_path, capsys):
    code, out, err = run(["fit", "--dataset", "cifar10", "--data-path", str(tmp_path), "--lr", "0.1"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert str(tmp_path) in line and "download" in line


# --------------------------------------------------------------------------- fit


def test_fit_passes_every_option_to_the_learner(tiny_data, monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_fit(self, lrs, n_cycle, **kwargs):
        seen.update(lrs=lrs, n_cycle=n_cycle, learner=self, **kwargs)
        return self.sched

    monkeypatch.setattr(Learner, "fit", fake_fit)
    ckpt = tmp_path / "run.ckpt"
    code, out, err = run(["fit", "--dataset", "mnist1d", "--arch", "cnn1d", "--lr", "0.8", "--n-cycle", "2",
                          "--cycle-len", "3", "--cycle-mult", "2", "--use-clr-beta", "10,13.68,0.95,0.85",
                          "--wds", "1e-4", "--use-wd-sched", "--bs", "32", "--opt", "adamw",
                          "--checkpoint", str(ckpt), "--checkpoint-every", "50", "--resume", "--accumulate", "2",
                          "--precision", "bf16", "--compile", "--no-progress", "--threads", "2",
                          "--on-nan", "restore"], capsys)
    assert code == 0, err
    assert seen["lrs"] == 0.8 and seen["n_cycle"] == 2 and seen["cycle_len"] == 3 and seen["cycle_mult"] == 2
    assert seen["use_clr_beta"] == (10.0, 13.68, 0.95, 0.85) and seen["use_clr"] is None
    assert seen["wds"] == 1e-4 and seen["use_wd_sched"] is True
    assert seen["checkpoint"] == ckpt and seen["checkpoint_every"] == 50 and seen["resume"] is True
    assert seen["accumulate"] == 2 and seen["compile"] is True and seen["on_nan"] == "restore"
    learn = seen["learner"]
    assert isinstance(learn.opt, torch.optim.AdamW) and learn.opt.param_groups[0]["weight_decay"] == 0.0
    assert learn.precision.name == "bf16" and learn.progress is False
    assert torch.get_num_threads() == 2
    assert tiny_data[-1]["name"] == "mnist1d" and tiny_data[-1]["bs"] == 32
    assert tiny_data[-1]["loader"] is None and tiny_data[-1]["num_workers"] == 0  # the library's default: tensor


@pytest.mark.parametrize("flags,loader,workers", [([], None, 0), (["--loader", "torch"], "torch", 0),
                                                  (["--num-workers", "2"], None, 2),
                                                  (["--loader", "tensor"], "tensor", 0)])
def test_loader_and_num_workers_reach_the_dataset(flags, loader, workers, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **k: self.sched)
    code, out, err = run(["fit", "--dataset", "cifar10", "--lr", "0.1", "--no-progress", *flags], capsys)
    assert code == 0, err
    assert tiny_data[-1]["loader"] == loader and tiny_data[-1]["num_workers"] == workers


def test_fit_defaults_and_fp16_flag(tiny_data, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(Learner, "fit", lambda self, lrs, n_cycle, **kw: seen.update(kw, learner=self))
    code, _, err = run(["fit", "--lr", "0.1", "--fp16", "--opt", "sgd"], capsys)
    assert code == 0, err
    learn = seen["learner"]
    assert learn.precision.name == "fp16"
    assert isinstance(learn.opt, torch.optim.SGD) and learn.opt.param_groups[0]["momentum"] == 0.9
    assert seen["cycle_len"] is None and seen["use_clr"] is None and seen["use_clr_beta"] is None
    assert not {"resume", "compile"} & set(seen)
    # Without --out and --checkpoint: the default folder, which holds the checkpoint (changed by issue 16)
    assert seen["checkpoint"] == cli.DEFAULT_FIT_OUT / cli.CHECKPOINT_NAME


def test_fit_without_out_writes_to_the_default_folder_and_names_it(tiny_data, tmp_path, capsys):
    torch.set_num_threads(2)
    code, out, err = run(["fit", "--lr", "0.5", "--bs", "64", "--no-progress"], capsys)
    assert code == 0, err
    folder = tmp_path / cli.DEFAULT_FIT_OUT
    assert f"to {folder.resolve()}" in out
    for name in ("model.pt", "history.json", "lr_mom.png", "loss.png", cli.CHECKPOINT_NAME):
        assert (folder / name).stat().st_size > 0, name
    history = json.loads((folder / "history.json").read_text())
    assert len(history["iterations"]) == 256 // 64 and len(history["val_losses"]) == 1
    assert torch.get_num_threads() == 1  # the small-model default on CPU (docs/threads.md)


def test_fit_trains_and_writes_outputs(tiny_data, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(["fit", "--lr", "0.5", "--cycle-len", "2", "--use-clr-beta", "10,10,0.95,0.85",
                          "--bs", "64", "--no-progress", "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert re.search(r"^epoch\s+trn_loss\s+val_loss\s+accuracy", out, re.M)
    acc = float(re.search(r"final validation accuracy: ([0-9.]+)", out).group(1))
    assert 0.1 < acc <= 1.0  # better than chance on 10 classes after two epochs
    for name in ("lr_mom.png", "loss.png", "model.pt", "history.json"):
        assert (out_dir / name).stat().st_size > 0
    state = torch.load(out_dir / "model.pt", weights_only=True)
    assert "model" in state
    history = json.loads((out_dir / "history.json").read_text())
    assert history["rec_metrics"][-1][0] == pytest.approx(acc, abs=1e-4)
    assert len(history["iterations"]) == 2 * math.ceil(256 / 64)


def _table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("epoch"))
    rows = []
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        rows.append(cells)
    return rows


def test_ctrl_c_writes_outputs_names_the_checkpoint_and_the_resume_command(tiny_data, tmp_path, monkeypatch,
                                                                           capsys):
    """A real SIGINT as step 11 of 16 begins (epoch 1; that step still completes): exit 130, outputs written, no row for the cut epoch, and
    the printed command resumes to exactly the weights of an uninterrupted run."""
    common = ["fit", "--lr", "0.5", "--cycle-len", "2", "--use-clr-beta", "10,10,0.95,0.85", "--bs", "32",
              "--no-progress", "--seed", "3"]
    code, _, err = run([*common, "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err

    original = Learner.fit
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **kw: original(self, *a, callbacks=[InterruptAt(11)], **kw))
    code, out, err = run(common, capsys)
    assert code == 130
    folder = (tmp_path / cli.DEFAULT_FIT_OUT).resolve()
    assert f"checkpoint: {folder / cli.CHECKPOINT_NAME}" in err
    assert torch.load(folder / cli.CHECKPOINT_NAME, weights_only=True)["counters"]["iteration"] == 12
    assert [row[0] for row in _table_rows(out)] == ["0"]  # epoch 1 was cut short: no row for it
    for name in ("model.pt", "history.json", "lr_mom.png", "loss.png"):
        assert (folder / name).is_file(), name
    assert len(json.loads((folder / "history.json").read_text())["iterations"]) == 12
    command = re.search(r"^resume with: (.*)$", err, re.M).group(1)
    argv = shlex.split(command)
    assert argv[0] == "clrfit" and "--resume" in argv and argv[argv.index("--out") + 1] == str(folder)

    monkeypatch.setattr(Learner, "fit", original)
    code, out, err = run(argv[1:], capsys)
    assert code == 0, err
    assert [row[0] for row in _table_rows(out)] == ["1"]
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    resumed = torch.load(folder / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)

    code, out, err = run(argv[1:], capsys)  # once more: the run is finished
    assert code == 0, err
    assert "nothing to train: all 2 epochs of this run are done" in out
    assert not re.search(r"^epoch\s+trn_loss", out, re.M)


def test_fit_checkpoint_and_resume_from_the_command_line(tiny_data, tmp_path, monkeypatch, capsys):
    """A fit stopped at step 12 (checkpoints every 5 steps) and resumed with --resume ends with
    exactly the weights of an uninterrupted run of the same command."""
    from clrfit import Callback, CancelFitException

    common = ["fit", "--lr", "0.5", "--cycle-len", "2", "--use-clr-beta", "10,10,0.95,0.85", "--bs", "32",
              "--no-progress", "--seed", "3"]
    code, _, err = run([*common, "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err

    class StopAt(Callback):
        def on_batch_begin(self):
            if self.learn.iteration == 12:
                raise CancelFitException()

    original = Learner.fit
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **kw: original(self, *a, callbacks=[StopAt()], **kw))
    code, _, err = run([*common, "--checkpoint", str(ckpt), "--checkpoint-every", "5"], capsys)
    assert code == 0, err
    assert torch.load(ckpt, weights_only=True)["counters"]["iteration"] == 10
    monkeypatch.setattr(Learner, "fit", original)
    code, out, err = run([*common, "--checkpoint", str(ckpt), "--resume", "--out", str(tmp_path / "resumed")], capsys)
    assert code == 0, err
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    code, _, err = run([*common[:2], "0.4", *common[3:], "--checkpoint", str(ckpt), "--resume"], capsys)
    assert code == 2 and "lrs" in one_line_error(err)  # other fit arguments than the checkpoint's


# --------------------------------------------------------------------------- schedule


def _printed(out: str, label: str) -> float:
    return float(re.search(rf"{label} ([-0-9.e+]+)", out).group(1))


def test_schedule_one_cycle_clr_beta_values(tmp_path, capsys):
    png = tmp_path / "lr.png"
    code, out, err = run(["schedule", "--use-clr-beta", "10,13.68,0.95,0.85", "--iterations", "1000",
                          "-o", str(png)], capsys)
    assert code == 0, err
    assert png.stat().st_size > 0
    n, div, pct = 1000, 10, 13.68
    c = int(n * (1 - pct / 100) / 2)
    last = 1.0 * (1 - 0.99 * (n - 1 - 2 * c) / (n - 2 * c)) / div  # contract, annihilation phase
    assert _printed(out, "max") == pytest.approx(1.0, rel=1e-3)
    assert _printed(out, "to") == pytest.approx(last, rel=1e-3)
    assert _printed(out, "lr from") == pytest.approx(1.0 / div, rel=1e-3)
    assert "momentum from 0.95" in out and re.search(r"min 0\.85", out)


def test_schedule_torch_cyclic_and_one_cycle(tmp_path, capsys):
    def torch_lrs(make, n):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
        sched = make(opt)
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    code, out, err = run(["schedule", "--cyclic", "0.001,0.006", "--step-size-up", "100", "--mode", "triangular2",
                          "--iterations", "600", "-o", str(tmp_path / "c.png")], capsys)
    assert code == 0, err
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.006, step_size_up=100,
                                                                mode="triangular2"), 600)
    assert _printed(out, "max") == pytest.approx(max(ref), rel=1e-3)
    assert _printed(out, "to") == pytest.approx(ref[-1], rel=1e-3)

    code, out, err = run(["schedule", "--one-cycle", "0.5", "--pct-start", "0.25", "--iterations", "200",
                          "-o", str(tmp_path / "o.png")], capsys)
    assert code == 0, err
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=200, pct_start=0.25), 200)
    assert _printed(out, "lr from") == pytest.approx(ref[0], rel=1e-3)
    assert _printed(out, "min") == pytest.approx(min(ref), rel=1e-3)


def test_schedule_sgdr_and_clr(tmp_path, capsys):
    code, out, err = run(["schedule", "--cycle-mult", "2", "--n-cycle", "3", "--cycle-iterations", "700",
                          "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0, err
    assert _printed(out, "max") <= 1.0 and (tmp_path / "s.png").stat().st_size > 0
    assert out.startswith(f"{700 * (1 + 2 + 4)} iterations:")  # --cycle-iterations is one cycle's length
    code, old, err = run(["schedule", "--cycle-mult", "2", "--n-cycle", "3", "--iterations", "700",
                          "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0 and old == out  # the old name still works
    code, out, err = run(["schedule", "--use-clr", "32,5", "--lr", "0.01", "--iterations", "500",
                          "-o", str(tmp_path / "clr.png")], capsys)
    assert code == 0, err
    assert _printed(out, "lr from") == pytest.approx(0.01 / 32, rel=1e-3)  # starts at lr / div
    assert _printed(out, "max") == pytest.approx(0.01, rel=1e-3)           # peak lr at t = floor(N / cut_div)


# --------------------------------------------------------------------------- lr-find and demo


def test_lr_find_prints_suggestions_and_plots(tiny_data, tmp_path, capsys):
    png = tmp_path / "find.png"
    code, out, err = run(["lr-find", "--num-it", "30", "--bs", "32", "--no-progress", "-o", str(png)], capsys)
    assert code == 0, err
    for name in ("minimum", "steep", "valley", "clr_bounds"):
        assert name in out
    assert png.stat().st_size > 0


def test_demo_quick_in_process(tiny_data, tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(["demo", "--quick", "--no-progress", "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "LR suggestions" in out and "use_clr_beta" in out
    acc = float(re.search(r"final validation accuracy: ([0-9.]+)", out).group(1))
    assert 0.0 <= acc <= 1.0 and not math.isnan(acc)
    for name in ("lr_find.png", "lr_mom.png", "loss.png"):
        assert (out_dir / name).stat().st_size > 0
    assert str(out_dir.resolve()) in out


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The real `python -m clrfit demo`: exit 0, a good accuracy, three non-empty PNGs, in reasonable time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLRFIT_CACHE_DIR=str(tmp_path / "cache"), MPLBACKEND="Agg")
    out_dir = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "clrfit", "demo", "--out", str(out_dir), "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    acc = float(re.search(r"final validation accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert acc >= 0.94
    for name in ("lr_find.png", "lr_mom.png", "loss.png"):
        assert (out_dir / name).stat().st_size > 1000
    assert str(out_dir.resolve()) in proc.stdout


@pytest.mark.parametrize("command", ["fit", "lr-find"])
def test_only_rank_zero_prints_and_writes(command, tiny_data, tmp_path, monkeypatch, capsys):
    # Under torchrun every rank runs the same command; ranks > 0 must stay silent and write nothing.
    monkeypatch.setattr(Learner, "is_main_process", property(lambda self: False))
    out_dir = tmp_path / "out"
    argv = (["fit", "--lr", "0.1", "--bs", "64", "--no-progress", "--out", str(out_dir)] if command == "fit"
            else ["lr-find", "--num-it", "20", "--bs", "32", "--no-progress", "-o", str(out_dir / "f.png")])
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "final validation accuracy" not in out and "clr_bounds" not in out and "wrote" not in out
    assert not out_dir.exists()
