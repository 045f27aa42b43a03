"""Bad arguments to every public entry point: ValueError/TypeError naming the argument, weights untouched.

Each case is ``(id, call, name)``: ``call(learn, tmp_path)`` must raise ValueError or
TypeError whose message contains ``name``, and the learner's weights and optimizer
state must be exactly as before. The table of allowed values is docs/parameters.md.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clrfit import Learner, ModelData
from conftest import make_data, make_learner, make_model


X, Y = torch.randn(20, 6), torch.randint(0, 2, (20,))
CLR_BETA = (10, 10, 0.95, 0.85)

FIT = [
    ("negative lr", lambda l, p: l.fit(-0.1, 1), "lrs"),
    ("string lr", lambda l, p: l.fit("big", 1), "lrs"),
    ("nan lr", lambda l, p: l.fit(math.nan, 1), "lrs"),
    ("lr per group, wrong count", lambda l, p: l.fit([0.1, 0.2], 1), "lrs"),
    ("zero n_cycle", lambda l, p: l.fit(0.1, 0), "n_cycle"),
    ("fractional n_cycle", lambda l, p: l.fit(0.1, 1.5), "n_cycle"),
    ("string n_cycle", lambda l, p: l.fit(0.1, "2"), "n_cycle"),
    ("zero cycle_len", lambda l, p: l.fit(0.1, 1, cycle_len=0), "cycle_len"),
    ("zero cycle_mult", lambda l, p: l.fit(0.1, 1, cycle_len=1, cycle_mult=0), "cycle_mult"),
    ("cycle_mult without cycle_len", lambda l, p: l.fit(0.1, 1, cycle_mult=2), "cycle_mult"),
    ("use_clr one value", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr=(10,)), "use_clr"),
    ("use_clr div <= 1", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr=(0.5, 8)), "use_clr div"),
    ("use_clr peak before step 1", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr=(10, 100)), "use_clr"),
    ("use_clr_beta three values", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10, 0.95)), "use_clr_beta"),
    ("use_clr_beta pct 150", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 150)), "use_clr_beta pct"),
    ("use_clr_beta momentum 1.5", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10, 1.5, 0.85)),
     "use_clr_beta"),
    ("use_clr_beta cycle too short", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 99.9)), "use_clr_beta"),
    ("use_clr_beta a string", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr_beta="10,10"), "use_clr_beta"),
    ("use_clr and use_clr_beta", lambda l, p: l.fit(0.1, 1, cycle_len=1, use_clr=(10, 8), use_clr_beta=(10, 10)),
     "use_clr"),
    ("use_clr_beta without cycle_len", lambda l, p: l.fit(0.1, 1, use_clr_beta=(10, 10)), "cycle_len"),
    ("negative wds", lambda l, p: l.fit(0.1, 1, wds=-1e-4), "wds"),
    ("callbacks not Callback", lambda l, p: l.fit(0.1, 1, callbacks=[object()]), "callbacks"),
    ("zero accumulate", lambda l, p: l.fit(0.1, 1, accumulate=0), "accumulate"),
    ("checkpoint a number", lambda l, p: l.fit(0.1, 1, checkpoint=123), "checkpoint"),
    ("checkpoint a folder", lambda l, p: l.fit(0.1, 1, checkpoint=p), "checkpoint"),
    ("zero checkpoint_every", lambda l, p: l.fit(0.1, 1, checkpoint=p / "c.ckpt", checkpoint_every=0),
     "checkpoint_every"),
    ("checkpoint_every without checkpoint", lambda l, p: l.fit(0.1, 1, checkpoint_every=5), "checkpoint_every"),
    ("resume without checkpoint", lambda l, p: l.fit(0.1, 1, resume=True), "resume"),
    ("resume a string", lambda l, p: l.fit(0.1, 1, checkpoint=p / "c.ckpt", resume="yes"), "resume"),
    ("unknown on_nan", lambda l, p: l.fit(0.1, 1, on_nan="skip"), "on_nan"),
    ("use_wd_sched a string", lambda l, p: l.fit(0.1, 1, wds=0.1, use_wd_sched="yes"), "use_wd_sched"),
    ("use_wd_sched without wds", lambda l, p: l.fit(0.1, 1, use_wd_sched=True), "use_wd_sched"),
    ("norm_wds without use_wd_sched", lambda l, p: l.fit(0.1, 1, wds=0.1, norm_wds=True), "norm_wds"),
    ("wds_sched_mult not callable", lambda l, p: l.fit(0.1, 1, wds=0.1, use_wd_sched=True, wds_sched_mult=3),
     "wds_sched_mult"),
    ("compile a number", lambda l, p: l.fit(0.1, 1, compile=1), "compile"),
    ("unknown keyword", lambda l, p: l.fit(0.1, 1, cycle_length=2), "cycle_length"),
    ("metrics not callables", lambda l, p: l.fit(0.1, 1, metrics=[0.5]), "metrics"),
    # issue 12: a bare "not iterable", and overflows found only during the run
    ("a single callback, not a list", lambda l, p: l.fit(0.1, 1, callbacks=l.recorder), "callbacks"),
    ("a single metric, not a list", lambda l, p: l.fit(0.1, 1, metrics=len), "metrics"),
    ("n_cycle 1030 with cycle_mult 2", lambda l, p: l.fit(0.1, 1030, cycle_len=1, cycle_mult=2), "n_cycle"),
    ("checkpoint inside a file", lambda l, p: (p / "f").write_text("x") and l.fit(0.1, 1, checkpoint=p / "f" / "c"),
     "checkpoint"),
]

FIT_CYCLIC = [
    ("zero epochs", lambda l, p: l.fit_cyclic(0, 0.01, 0.1), "epochs"),
    ("negative base_lr", lambda l, p: l.fit_cyclic(1, -0.01, 0.1), "base_lr"),  # 0 is allowed, as in torch
    ("negative max_lr", lambda l, p: l.fit_cyclic(1, 0.01, -1), "max_lr"),
    ("zero step_size_up", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, step_size_up=0), "step_size_up"),
    ("negative step_size_down", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, step_size_down=-2), "step_size_down"),
    ("unknown mode", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, mode="tri"), "mode"),
    ("unknown scale_mode", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, scale_mode="epoch"), "scale_mode"),
    ("zero gamma", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, mode="exp_range", gamma=0), "gamma"),
    ("negative base_momentum", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, base_momentum=-0.1), "base_momentum"),
    ("max_momentum per group, wrong count", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, max_momentum=[0.9, 0.9]),
     "max_momentum"),
    ("scale_fn not callable", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, scale_fn=3), "scale_fn"),
    ("unknown on_nan", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, on_nan="skip"), "on_nan"),
    ("step_size_up 1e308", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, step_size_up=1e308), "step_size_up"),
    ("step_size_down 1e308", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, step_size_down=1e308), "step_size_down"),
    ("gamma 1e308", lambda l, p: l.fit_cyclic(1, 0.01, 0.1, mode="exp_range", gamma=1e308), "gamma"),
]

FIT_ONE_CYCLE = [
    ("negative epochs", lambda l, p: l.fit_one_cycle(-1, 0.1), "epochs"),
    ("nan max_lr", lambda l, p: l.fit_one_cycle(1, math.nan), "max_lr"),
    ("pct_start above 1", lambda l, p: l.fit_one_cycle(1, 0.1, pct_start=1.5), "pct_start"),
    ("pct_start leaving an empty phase", lambda l, p: l.fit_one_cycle(1, 0.1, pct_start=1 / 6), "pct_start"),
    ("unknown anneal_strategy", lambda l, p: l.fit_one_cycle(1, 0.1, anneal_strategy="exp"), "anneal_strategy"),
    ("zero div_factor", lambda l, p: l.fit_one_cycle(1, 0.1, div_factor=0), "div_factor"),
    ("negative final_div_factor", lambda l, p: l.fit_one_cycle(1, 0.1, final_div_factor=-1), "final_div_factor"),
    ("negative max_momentum", lambda l, p: l.fit_one_cycle(1, 0.1, max_momentum=-2), "max_momentum"),
    ("three_phase a string", lambda l, p: l.fit_one_cycle(1, 0.1, three_phase="no"), "three_phase"),
    ("cycle_momentum a number", lambda l, p: l.fit_one_cycle(1, 0.1, cycle_momentum=1), "cycle_momentum"),
    ("checkpoint_every a float", lambda l, p: l.fit_one_cycle(1, 0.1, checkpoint=p / "c", checkpoint_every=2.5),
     "checkpoint_every"),
]

LR_FIND = [
    ("zero start_lr", lambda l, p: l.lr_find(start_lr=0), "start_lr"),
    ("negative end_lr", lambda l, p: l.lr_find(end_lr=-1), "end_lr"),
    ("end_lr below start_lr", lambda l, p: l.lr_find(start_lr=1, end_lr=0.5), "end_lr"),
    ("linear a string", lambda l, p: l.lr_find(linear="yes"), "linear"),
    ("negative wds", lambda l, p: l.lr_find(wds=-0.1), "wds"),
    ("start_lr per group, wrong count", lambda l, p: l.lr_find(start_lr=[1e-5, 1e-4]), "start_lr"),
]

LR_FIND2 = [
    ("num_it 1", lambda l, p: l.lr_find2(num_it=1), "num_it"),
    ("fractional num_it", lambda l, p: l.lr_find2(num_it=2.5), "num_it"),
    ("stop_dv a number", lambda l, p: l.lr_find2(stop_dv=1), "stop_dv"),
    ("inf end_lr", lambda l, p: l.lr_find2(end_lr=math.inf), "end_lr"),
    ("string start_lr", lambda l, p: l.lr_find2(start_lr="1e-5"), "start_lr"),
]


def _no_val_learner(l, p):
    learn = Learner(l.model, ModelData.from_tensors(X, Y, bs=4), progress=False, table=False)
    learn.lr_find2()


LR_FIND2.append(("no validation loader", _no_val_learner, "val_dl"))

MODEL_DATA = [
    ("trn_dl a list", lambda l, p: ModelData([1, 2], None), "trn_dl"),
    ("val_dl a string", lambda l, p: ModelData(DataLoader(TensorDataset(X, Y)), "val"), "val_dl"),
    ("empty trn_dl", lambda l, p: ModelData(DataLoader(TensorDataset(X[:3], Y[:3]), batch_size=4, drop_last=True), None),
     "trn_dl"),
    ("x and y lengths differ", lambda l, p: ModelData.from_tensors(X, Y[:-1]), "x_trn"),
    ("zero bs", lambda l, p: ModelData.from_tensors(X, Y, bs=0), "bs"),
    ("string bs", lambda l, p: ModelData.from_tensors(X, Y, bs="8"), "bs"),
    ("negative num_workers", lambda l, p: ModelData.from_tensors(X, Y, num_workers=-1), "num_workers"),
    ("x_val without y_val", lambda l, p: ModelData.from_tensors(X, Y, x_val=X), "x_val"),
    ("zero val_bs", lambda l, p: ModelData.from_tensors(X, Y, X, Y, val_bs=0), "val_bs"),
    ("no samples", lambda l, p: ModelData.from_tensors(X[:0], Y[:0]), "x_trn"),
    ("shuffle a string", lambda l, p: ModelData.from_tensors(X, Y, shuffle="yes"), "shuffle"),
    ("drop_last a number", lambda l, p: ModelData.from_datasets(TensorDataset(X, Y), None, drop_last=1), "drop_last"),
]

LEARNER = [
    ("model a string", lambda l, p: Learner("model", make_data()), "model"),
    ("data a tuple", lambda l, p: Learner(make_model(), (X, Y)), "data"),
    ("unknown precision", lambda l, p: Learner(make_model(), make_data(), precision="fp8"), "precision"),
    ("fp16 a number", lambda l, p: Learner(make_model(), make_data(), fp16=1), "fp16"),
    ("progress a string", lambda l, p: Learner(make_model(), make_data(), progress="yes"), "progress"),
    ("overlapping layer_groups", lambda l, p: Learner(l.model, make_data(), layer_groups=[l.model[0], l.model[0]]),
     "layer_groups"),
    ("unknown device", lambda l, p: Learner(l.model, make_data(), device="gpu0"), "device"),
    ("callbacks not Callback", lambda l, p: Learner(l.model, make_data(), callbacks=["cb"]), "callbacks"),
    ("metrics a string", lambda l, p: Learner(l.model, make_data(), metrics="accuracy"), "metrics"),
    ("crit not callable", lambda l, p: Learner(l.model, make_data(), crit="mse"), "crit"),
    ("opt_fn not callable", lambda l, p: Learner(l.model, make_data(), opt_fn="sgd"), "opt_fn"),
]

GROUPS = [("fit", FIT), ("fit_cyclic", FIT_CYCLIC), ("fit_one_cycle", FIT_ONE_CYCLE), ("lr_find", LR_FIND),
          ("lr_find2", LR_FIND2), ("ModelData", MODEL_DATA), ("Learner", LEARNER)]
CASES = [pytest.param(call, name, id=f"{group}: {case_id}") for group, cases in GROUPS for case_id, call, name in cases]


@pytest.fixture(scope="module")
def trained() -> Learner:
    learn = make_learner()
    learn.fit(0.05, 1)  # momentum buffers exist: the optimizer state is checked too
    return learn


def state_of(learn: Learner):
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt = {i: {k: v.clone() for k, v in s.items()} for i, s in learn.opt.state_dict()["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups]
    return weights, opt, groups


@pytest.mark.parametrize("call, name", CASES)
def test_bad_input_is_named_and_changes_nothing(trained, tmp_path, call, name):
    weights, opt, groups = state_of(trained)
    with pytest.raises((ValueError, TypeError)) as info:
        call(trained, tmp_path)
    assert name in str(info.value), f"{type(info.value).__name__}: {info.value}"
    after_weights, after_opt, after_groups = state_of(trained)
    assert all(torch.equal(weights[k], v) for k, v in after_weights.items())
    assert after_opt.keys() == opt.keys()
    assert all(torch.equal(opt[i][k], v) for i, s in after_opt.items() for k, v in s.items())
    assert after_groups == groups


# Cases whose message is about one parameter: an ArgumentError (still a ValueError or TypeError) whose
# .argument is that parameter and whose template names it as a field, so the CLI can spell it as a flag.
ARGUMENT = {
    "fit: cycle_mult without cycle_len": "cycle_mult",
    "fit: use_clr one value": "use_clr",
    "fit: use_clr peak before step 1": "use_clr",
    "fit: use_clr_beta three values": "use_clr_beta",
    "fit: use_clr_beta cycle too short": "use_clr_beta",
    "fit: use_clr_beta a string": "use_clr_beta",
    "fit: use_clr and use_clr_beta": "use_clr_beta",
    "fit: use_clr_beta without cycle_len": "use_clr_beta",
    "fit: checkpoint a folder": "checkpoint",
    "fit: checkpoint inside a file": "checkpoint",
    "fit: checkpoint_every without checkpoint": "checkpoint_every",
    "fit: resume without checkpoint": "resume",
    "fit: use_wd_sched without wds": "use_wd_sched",
    "fit: norm_wds without use_wd_sched": "norm_wds",
    "fit: n_cycle 1030 with cycle_mult 2": "n_cycle",
    "fit_cyclic: scale_fn not callable": "scale_fn",
    "fit_cyclic: step_size_up 1e308": "step_size_up",
    "fit_cyclic: step_size_down 1e308": "step_size_down",
    "fit_cyclic: gamma 1e308": "gamma",
    "fit_one_cycle: pct_start leaving an empty phase": "pct_start",
    "lr_find: end_lr below start_lr": "end_lr",
    "Learner: unknown precision": "precision",
    "Learner: fp16 a number": "fp16",
    "Learner: overlapping layer_groups": "layer_groups",
}
_CALLS = {f"{group}: {case_id}": call for group, cases in GROUPS for case_id, call, _ in cases}


@pytest.mark.parametrize("case_id, argument", sorted(ARGUMENT.items()))
def test_an_error_about_one_argument_is_an_argument_error(trained, tmp_path, case_id, argument):
    from clrfit import ArgumentError

    with pytest.raises(ArgumentError) as info:
        _CALLS[case_id](trained, tmp_path)
    err = info.value
    assert err.argument == argument and "{" + argument + "}" in err.template, (err.argument, err.template)
    assert isinstance(err, (ValueError, TypeError)) and err.render() == str(err)
    assert f"--{argument.replace('_', '-')}" in err.render(lambda name: f"--{name.replace('_', '-')}")


# ---------------------------------------------------------------------- the CLI: exit status 2, one line naming the option

from clrfit import cli, datasets  # noqa: E402

CLI = [
    ("fit: negative --lr", ["fit", "--lr", "-1"], "--lr"),
    ("fit: --lr not a number", ["fit", "--lr", "abc"], "--lr"),
    ("fit: no --lr", ["fit"], "--lr"),
    ("fit: zero --n-cycle", ["fit", "--lr", "0.1", "--n-cycle", "0"], "--n-cycle"),
    ("fit: zero --cycle-len", ["fit", "--lr", "0.1", "--cycle-len", "0"], "--cycle-len"),
    ("fit: three --use-clr-beta values", ["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr-beta", "10,10,0.95"],
     "--use-clr-beta"),
    ("fit: zero --checkpoint-every", ["fit", "--lr", "0.1", "--checkpoint", "c.ckpt", "--checkpoint-every", "0"],
     "--checkpoint-every"),
    # (--checkpoint-every and --resume without --checkpoint are fine since issue 16: the checkpoint
    # defaults to --out/checkpoint.ckpt.) Refused before any data is loaded, by the library's own checks:
    ("fit: --use-clr-beta pct 130", ["fit", "--lr", "0.1", "--cycle-len", "1", "--use-clr-beta", "10,130"],
     "--use-clr-beta"),
    ("fit: --checkpoint a folder", ["fit", "--lr", "0.1", "--checkpoint", "."], "--checkpoint"),
    ("fit: --use-wd-sched without --wds", ["fit", "--lr", "0.1", "--use-wd-sched"], "--use-wd-sched"),
    ("lr-find: --num-it 1", ["lr-find", "--num-it", "1"], "--num-it"),
    ("fit: zero --accumulate", ["fit", "--lr", "0.1", "--accumulate", "0"], "--accumulate"),
    ("fit: unknown --precision", ["fit", "--lr", "0.1", "--precision", "fp8"], "--precision"),
    ("lr-find: negative --end-lr", ["lr-find", "--end-lr", "-1"], "--end-lr"),
    # issue 12 item 7: these trained to the end, or started, before failing with a traceback
    ("fit: --out an existing file", ["fit", "--lr", "0.1", "--out", "afile"], "--out"),
    ("fit: --out inside a file", ["fit", "--lr", "0.1", "--out", "afile/run"], "--out"),
    ("fit: --checkpoint inside a file", ["fit", "--lr", "0.1", "--checkpoint", "afile/c.ckpt"], "--checkpoint"),
]

# These pass the parser and the CLI's checks and reach the library with a learner built: its weights
# must not change.
CLI_LIBRARY = [
    ("fit: --resume a corrupt file", ["fit", "--lr", "0.1", "--checkpoint", "{tmp}/corrupt.ckpt", "--resume"],
     "corrupt.ckpt"),
    ("fit: --resume with another --lr", ["fit", "--lr", "0.2", "--checkpoint", "{tmp}/other.ckpt", "--resume"], "lrs"),
]


@pytest.fixture
def tiny_cli_data(monkeypatch, tmp_path_factory):
    """Every dataset request of the CLI gets a small MNIST-1D."""
    cache = tmp_path_factory.mktemp("cache")
    real_mnist1d = datasets.mnist1d
    monkeypatch.setattr(datasets, "get_data", lambda name, path=None, bs=128, **kw: real_mnist1d(
        n_train=256, n_valid=128, bs=bs, cache_dir=cache))


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, option", [pytest.param(a, o, id=i) for i, a, o in CLI])
def test_cli_bad_input_exits_2_with_one_line(argv, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    assert cli.main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"clrfit {argv[0]}: error: ") and option in line
    assert not (tmp_path / "clrfit-out").exists()  # refused before anything was written


@pytest.mark.parametrize("argv, option", [pytest.param(a, o, id=i) for i, a, o in CLI_LIBRARY])
def test_cli_library_errors_exit_2_and_change_no_weights(argv, option, tiny_cli_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out folder lands here
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00not a checkpoint")
    assert cli.main(["fit", "--lr", "0.1", "--no-progress", "--checkpoint", str(tmp_path / "other.ckpt")]) == 0
    capsys.readouterr()
    seen = []
    for method in ("fit", "lr_find2"):
        original = getattr(Learner, method)

        def spy(self, *args, _original=original, **kwargs):
            seen.append((self, {k: v.clone() for k, v in self.model.state_dict().items()}))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Learner, method, spy)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main([*argv, "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"clrfit {argv[0]}: error: ") and option in line
    (learn, before), = seen
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_line_exit_2_before_training(tiny_cli_data, tmp_path, capsys, monkeypatch):
    """Issue 12 item 7: a driver traceback from the first tensor moved."""
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **k: started.append(1))
    assert cli.main(["fit", "--lr", "0.1", "--device", "cuda", "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clrfit fit: error: ") and "cuda" in line and "CUDA" in line and not started


@pytest.mark.parametrize("num_it", [2, 5, 16])
def test_cli_lr_find_with_a_short_sweep_ends_with_a_plot(num_it, tiny_cli_data, tmp_path, capsys, monkeypatch):
    """Issue 12: ``--num-it 2..16`` failed after the sweep about ``n_skip``, which is no CLI option."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lr-find", "--num-it", str(num_it), "--no-progress", "-o", "f.png"]) == 0, capsys.readouterr().err
    assert (tmp_path / "f.png").stat().st_size > 0


def test_there_are_at_least_forty_cases_with_the_cli():
    assert len(CASES) + len(CLI) + len(CLI_LIBRARY) >= 40 and len(CLI) + len(CLI_LIBRARY) >= 10


# ---------------------------------------------------------------------- numpy and 0-d torch scalars (issue 12, Done means 4)

import numpy as np  # noqa: E402


def as_numpy(v):
    return np.asarray(v)[()]  # np.int64 / np.float64: the same value


def as_torch(v):
    return torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)


# Each case calls the entry point with every numeric argument passed through ``c``.
SCALARS = [
    ("fit 1cycle", lambda l, c, p: l.fit(c(0.1), c(1), cycle_len=c(2), cycle_mult=c(1),
                                         use_clr_beta=(c(10), c(13.68), c(0.95), c(0.85)), wds=c(1e-4),
                                         accumulate=c(2), checkpoint=p / "a.ckpt", checkpoint_every=c(2))),
    ("fit SGDR", lambda l, c, p: l.fit(c(0.1), c(2), cycle_len=c(1), cycle_mult=c(2))),
    ("fit use_clr", lambda l, c, p: l.fit(c(0.1), c(1), cycle_len=c(1), use_clr=(c(10), c(4)))),
    ("fit lrs per group", lambda l, c, p: l.fit([c(0.1)], c(1), wds=[c(1e-3)], use_wd_sched=True)),
    ("fit_cyclic", lambda l, c, p: l.fit_cyclic(c(1), c(0.01), c(0.1), step_size_up=c(2), step_size_down=c(3.0),
                                                mode="exp_range", gamma=c(0.99), base_momentum=c(0.8),
                                                max_momentum=c(0.9), wds=c(1e-4))),
    ("fit_one_cycle", lambda l, c, p: l.fit_one_cycle(c(2), c(0.1), pct_start=c(0.25), base_momentum=c(0.85),
                                                      max_momentum=c(0.95), div_factor=c(25.0),
                                                      final_div_factor=c(1e4))),
    ("lr_find", lambda l, c, p: l.lr_find(start_lr=c(1e-5), end_lr=c(10.0))),
    ("lr_find2", lambda l, c, p: l.lr_find2(start_lr=c(1e-5), end_lr=c(10), num_it=c(12))),
    ("ModelData.from_tensors", lambda l, c, p: Learner(
        make_model(), ModelData.from_tensors(X, Y, X, Y, bs=c(4), val_bs=c(8)), progress=False, table=False).fit(
        c(0.1), c(1))),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in SCALARS])
@pytest.mark.parametrize("convert", [as_numpy, as_torch], ids=["numpy", "torch 0-d"])
def test_numeric_arguments_accept_numpy_and_torch_scalars(call, convert, tmp_path):
    """The same run as with Python numbers: same lrs, momentums and losses."""
    runs = []
    for c in (lambda v: v, convert):
        learn = make_learner()
        result = call(learn, c, tmp_path / c.__class__.__name__ / str(len(runs)))
        rec = learn.sched if not isinstance(result, type(learn.sched)) or result is None else result
        if isinstance(result, type(learn.sched)):
            rec = result
        runs.append((rec.iterations, rec.lrs, rec.momentums, rec.raw_losses))
    assert runs[0] == runs[1] and runs[0][0]
