"""Atomic writes, safe loads (no pickled code runs) and RNG snapshots; learn.load and resume on bad files."""
from __future__ import annotations

import io
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

import clrfit.serialization as serialization
from clrfit.checkpoint import read_checkpoint
from clrfit.serialization import get_rng_states, load_state, remove_temp_files, save_state, set_rng_states, temp_files
from conftest import make_learner, make_model

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on the foreign pickles


# ---------------------------------------------------------------------- atomic writes


def test_save_and_load_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "t": (1.5, "a", None), "nested": {"x": [1, 2]}}
    path = save_state(state, tmp_path / "sub" / "s.pt")
    back = load_state(path)
    assert torch.equal(back["w"], state["w"]) and back["n"] == 3 and back["t"] == (1.5, "a", None)
    assert back["nested"] == {"x": [1, 2]}
    assert temp_files(path) == []


def test_save_fsyncs_the_file_and_its_folder_before_and_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(b))), real_replace(a, b)))
    path = tmp_path / "s.pt"
    save_state({"a": 1}, path)
    kinds = [c[0] for c in calls]
    assert kinds == ["fsync", "replace", "fsync"]
    assert calls[0][1].endswith(".tmp") and calls[1][1] == str(path) and calls[2][1] == str(tmp_path)


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, exc):
    path = tmp_path / "s.pt"
    save_state({"version": 1}, path)
    old = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc

    monkeypatch.setattr(serialization.torch, "save", half_then_fail)
    with pytest.raises(type(exc)):
        save_state({"version": 2}, path)
    assert path.read_bytes() == old
    assert load_state(path) == {"version": 1}
    assert temp_files(path) == []


def test_temp_files_of_a_killed_writer_are_found_and_removed(tmp_path):
    path = tmp_path / "run.ckpt"
    (tmp_path / ".run.ckpt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".other.ckpt.x.tmp").write_bytes(b"not ours")
    assert [p.name for p in temp_files(path)] == [".run.ckpt.abc123.tmp"]
    assert remove_temp_files(path) == 1
    assert temp_files(path) == [] and (tmp_path / ".other.ckpt.x.tmp").exists()
    assert temp_files(tmp_path / "missing" / "x.ckpt") == []


# ---------------------------------------------------------------------- safe loads


class Exploit:
    """Unpickling this would run code (create a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_files(tmp_path) -> dict[str, object]:
    """name -> path of a file that must not load."""
    marker = tmp_path / "pwned"
    files = {}
    p = tmp_path / "pickle.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": Exploit(str(marker))}, f)
    files["plain pickle with code"] = p
    p = tmp_path / "torch_exploit.pt"
    torch.save({"model": Exploit(str(marker))}, p)
    files["torch file with code"] = p
    p = tmp_path / "random.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    files["random bytes"] = p
    good = tmp_path / "good.pt"
    save_state({"model": make_model().state_dict()}, good)
    p = tmp_path / "truncated.pt"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = p
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    files["empty"] = p
    p = tmp_path / "zip.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "not torch")
    files["foreign zip"] = p
    p = tmp_path / "other_keys.pt"
    torch.save({"weights": torch.ones(3), "epoch": 4}, p)
    files["torch file with other keys"] = p
    p = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), p)
    files["a bare tensor"] = p
    p = tmp_path / "model_not_dict.pt"
    torch.save({"model": torch.ones(3), "opt": 5}, p)
    files["model entry of the wrong type"] = p
    p = tmp_path / "other_model.pt"
    torch.save({"model": torch.nn.Linear(3, 3).state_dict()}, p)
    files["another model's weights"] = p
    return files


def snapshot(learn):
    return ({k: v.clone() for k, v in learn.model.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in learn.opt.state_dict()["state"].items()})


def assert_unchanged(learn, before):
    weights, opt_state = before
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    now = learn.opt.state_dict()["state"]
    assert now.keys() == opt_state.keys()
    assert all(torch.equal(opt_state[i][k], v) for i, s in now.items() for k, v in s.items())


def test_load_state_refuses_every_bad_file_without_running_code(tmp_path):
    for name, path in bad_files(tmp_path).items():
        if name in ("another model's weights", "model entry of the wrong type"):
            continue  # readable state files: refused by the model, below
        with pytest.raises(ValueError, match=str(path.name)) as info:
            load_state(path, required=("model",))
        assert not (tmp_path / "pwned").exists(), name
        message = str(info.value)
        assert "\n" not in message and "set to `False`" not in message  # one line, and no advice to load unsafely


def test_learn_load_of_a_bad_file_is_an_error_and_changes_nothing(tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1)  # optimizer state to protect too
    before = snapshot(learn)
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(ValueError, match=r"(not a readable|not a clrfit|holds a|does not fit)") as info:
            learn.load(path)
        assert str(path.name) in str(info.value), name
        assert_unchanged(learn, before)
    assert not (tmp_path / "pwned").exists()


def test_learn_load_of_a_half_matching_model_rolls_back(tmp_path):
    """load_state_dict copies matching tensors before it fails on the rest: the learner must be put back."""
    learn = make_learner()
    learn.fit(0.1, 1)
    before = snapshot(learn)
    state = {k: torch.full_like(v, 7.0) for k, v in learn.model.state_dict().items()}
    state["2.weight"] = torch.zeros(5, 5)  # the last layer does not fit
    save_state({"model": state}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match="does not fit"):
        learn.load(tmp_path / "half.pt")
    assert_unchanged(learn, before)


def test_learn_load_with_a_foreign_optimizer_state_rolls_back_the_model(tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1)
    before = snapshot(learn)
    other = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))] * 1, lr=0.1)
    state = {"model": {k: v + 1 for k, v in learn.model.state_dict().items()}, "opt": other.state_dict()}
    save_state(state, tmp_path / "f.pt")
    with pytest.raises(ValueError, match="does not fit"):
        learn.load(tmp_path / "f.pt")
    assert_unchanged(learn, before)


@pytest.mark.parametrize("written_with_type", [True, False])
def test_learn_load_of_an_adam_file_into_an_sgd_learner_is_refused_and_changes_nothing(tmp_path, written_with_type):
    """Issue 12 item 6: torch would take Adam's param-group keys into the SGD; the next fit then failed on 'momentum'."""
    adam = make_learner(opt_fn=lambda params, lr: torch.optim.Adam(params, lr=lr))
    adam.fit(0.01, 1)
    path = adam.save(tmp_path / "adam.pt")
    if not written_with_type:  # a file from before the optimizer type was stored: told by the group keys
        state = torch.load(path, weights_only=True)
        del state["opt_type"]
        save_state(state, path)
    learn = make_learner()
    learn.fit(0.1, 1)
    before = snapshot(learn)
    groups = [dict(g) for g in learn.opt.state_dict()["param_groups"]]
    with pytest.raises(ValueError, match="adam.pt") as info:
        learn.load(path)
    assert "Adam" in str(info.value) or "betas" in str(info.value)
    assert_unchanged(learn, before)
    assert learn.opt.state_dict()["param_groups"] == groups and "betas" not in learn.opt.param_groups[0]
    learn.fit(0.1, 1)  # still trains: nothing of Adam's was taken
    learn.load(path, with_opt=False)  # the weights alone fit
    assert all(torch.equal(v, adam.model.state_dict()[k]) for k, v in learn.model.state_dict().items())


def test_resume_from_a_bad_file_is_an_error_and_changes_nothing(tmp_path):
    for name, path in bad_files(tmp_path).items():
        learn = make_learner()
        before = snapshot(learn)
        with pytest.raises(ValueError, match=str(path.name)):
            learn.fit(0.1, 1, checkpoint=path, resume=True)
        assert_unchanged(learn, before)
    assert not (tmp_path / "pwned").exists()


def test_resume_from_a_checkpoint_of_another_model_changes_nothing(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    make_learner().fit(0.1, 1, checkpoint=ckpt)
    learn = make_learner(model=torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    before = snapshot(learn)
    with pytest.raises(ValueError, match="does not fit this learner"):
        learn.fit(0.1, 1, checkpoint=ckpt, resume=True)
    assert_unchanged(learn, before)


def test_read_checkpoint_checks_the_structure(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    make_learner().fit(0.1, 1, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["counters"]["iteration"] = -1
    state["epoch_rng_state"] = torch.zeros(3)
    save_state(state, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"counters\['iteration'\] is -1.*epoch_rng_state"):
        read_checkpoint(tmp_path / "bad.ckpt")
    state["clrfit_checkpoint"] = 99
    save_state(state, tmp_path / "future.ckpt")
    with pytest.raises(ValueError, match="format 99"):
        read_checkpoint(tmp_path / "future.ckpt")


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    seen = []
    real_load = torch.load
    monkeypatch.setattr(serialization.torch, "load", lambda *a, **k: (seen.append(k.get("weights_only")), real_load(*a, **k))[1])
    ckpt = tmp_path / "c.ckpt"
    learn = make_learner()
    learn.fit(0.1, 2, checkpoint=ckpt)
    learn.save(tmp_path / "m.pt")
    learn.load(tmp_path / "m.pt")
    make_learner().fit(0.1, 2, checkpoint=ckpt, resume=True)
    assert seen == [True, True]


# ---------------------------------------------------------------------- RNG snapshots


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_states_round_trip_through_a_safe_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached gauss value in python's state
    np.random.standard_normal()  # and numpy's
    save_state({"rng": get_rng_states()}, tmp_path / "rng.pt")
    first = draws()
    set_rng_states(load_state(tmp_path / "rng.pt")["rng"])
    assert draws() == first
    assert draws() != first
