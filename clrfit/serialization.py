"""Files and random state: atomic writes, safe loads, RNG snapshots, and the checkpoint file format.

The checkpoint format (what :func:`read_checkpoint` accepts) is documented in
:mod:`clrfit.checkpoint` and docs/checkpoints.md; the writer is
:class:`clrfit.checkpoint.Checkpoint`.
"""
from __future__ import annotations

import glob
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .state import COUNTERS

#: Checkpoint format version, stored under ``clrfit_checkpoint``.
FORMAT = 1
#: Keys every checkpoint file holds.
KEYS: tuple[str, ...] = ("clrfit_checkpoint", "model", "opt", "precision", "counters", "epoch_rng_state", "rng_states",
                         "loader_generators", "callbacks", "setup")


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk (POSIX; a no-op elsewhere).
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_files(path: str | Path) -> list[Path]:
    """Temporary files that :func:`save_state` writes next to ``path`` (left behind only by a killed process)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def remove_temp_files(path: str | Path) -> int:
    """Delete the temporary files a killed writer of ``path`` left behind; returns how many."""
    removed = 0
    for tmp in temp_files(path):
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def load_state(path: str | Path, device: torch.device | str = "cpu", required: Sequence[str] = ()) -> dict[str, Any]:
    """Read a file written by :func:`save_state` with ``weights_only=True`` (no pickled code runs).

    A missing, truncated, corrupt or foreign file raises ``ValueError`` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a clrfit/torch state file, or holds pickled objects other than tensors and plain "
            f"containers, which are refused because loading them could run code ({_reason(err)})"
        ) from None
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path} is not a readable clrfit/torch state file (corrupt, truncated or foreign): {_reason(err)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a clrfit state dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"{path} is not a clrfit file of this kind: missing {', '.join(missing)}")
    return state


def _reason(err: Exception) -> str:
    """The informative part of torch's load error, without its advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please |\n|$)", text)
    if found and found.group(1).strip():
        return found.group(1).strip()
    if text.startswith("Weights only load failed"):
        return "not a pickle that weights_only loading accepts"
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line[:200]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint file (``weights_only=True``); ``ValueError`` naming what is wrong."""
    state = load_state(path, "cpu", required=KEYS)  # CPU: RNG states must stay CPU tensors
    if state["clrfit_checkpoint"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['clrfit_checkpoint']!r}; this clrfit reads format {FORMAT}")
    problems = []
    for key in ("model", "opt", "precision", "counters", "rng_states", "callbacks", "setup"):
        if not isinstance(state[key], dict):
            problems.append(f"{key} is a {type(state[key]).__name__}, not a dict")
    if isinstance(state["counters"], dict):
        for name in COUNTERS:
            value = state["counters"].get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"counters[{name!r}] is {value!r}, not an integer >= 0")
    if not isinstance(state["epoch_rng_state"], torch.Tensor) or state["epoch_rng_state"].dtype != torch.uint8:
        problems.append("epoch_rng_state is not a torch RNG state (uint8 tensor)")
    if isinstance(state["rng_states"], dict) and not {"torch", "numpy", "python"} <= set(state["rng_states"]):
        problems.append("rng_states lacks torch/numpy/python")
    if not isinstance(state["loader_generators"], list) or not all(
            isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in state["loader_generators"]):
        problems.append("loader_generators is not a list of generator states (uint8 tensors)")
    per_rank = state.get("per_rank")
    own = {"epoch_rng_state", "rng_states", "loader_generators", "callbacks"}
    if per_rank is not None and not (isinstance(per_rank, list) and all(
            isinstance(r, dict) and own <= set(r) for r in per_rank)):
        problems.append("per_rank is not a list of per-rank states")
    if problems:
        raise ValueError(f"{path} is not a usable clrfit checkpoint: {'; '.join(problems)}")
    return state


def get_rng_states() -> dict[str, Any]:
    """Snapshot of the torch (CPU and CUDA), numpy and python random generators."""
    states = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(_numpy_state_from_plain(states["numpy"]))
    random.setstate(_python_state_from_plain(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# weights_only loading accepts tensors, lists, dicts and scalars, so the
# numpy/python generator states are stored in those types.
def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["version"], tuple(state["internal"]), state["gauss"])
