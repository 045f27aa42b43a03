"""Files and random state: atomic writes, safe loads, RNG snapshots, and the checkpoint file format.

The checkpoint format (what :func:`read_checkpoint` accepts) is documented in
:mod:`clrfit.checkpoint` and docs/checkpoints.md; the writer is
:class:`clrfit.checkpoint.Checkpoint`.
"""
from __future__ import annotations

import errno
import glob
import os
import pickle
import random
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

#: The integer counters of a fit (:class:`clrfit.state.TrainingState`), as a checkpoint stores them.
COUNTERS: tuple[str, ...] = ("epoch", "batch_index", "iteration", "cycle", "iter_in_cycle")


#: Checkpoint format version, stored under ``clrfit_checkpoint``.
FORMAT = 1
#: Keys every checkpoint file holds.
KEYS: tuple[str, ...] = ("clrfit_checkpoint", "model", "opt", "precision", "counters", "epoch_rng_state", "rng_states",
                         "loader_generators", "callbacks", "setup")


class WriteError(OSError, ValueError):
    """A file could not be written (no space, no permission, a read-only or impossible folder).

    An ``OSError`` with the cause's ``errno``, and a ``ValueError`` (the path given
    cannot be used), whose message names the path and the cause; the previous
    file at that path, if any, is untouched.
    """


_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than this process may write (RLIMIT_FSIZE) or the file system allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the folder path is a file, not a folder",
    errno.EEXIST: "a part of the folder path is a file, not a folder",
}


def write_error(path: Path, err: OSError, doing: str) -> WriteError:
    """``err`` as a :class:`WriteError` naming ``path``, what was being done and the cause in words."""
    cause = _CAUSES.get(err.errno) or err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            fs = os.statvfs(_existing_folder(path))
            cause += f" (with the partial file removed, {fs.f_bavail * fs.f_frsize} bytes are free there)"
        except OSError:
            pass
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    return WriteError(err.errno or errno.EIO, f"cannot {doing} {path}: {cause}{where}; the previous file there, if "
                                              "any, is unchanged")


def _existing_folder(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _host() -> str:
    return socket.gethostname().replace("~", "-").replace("/", "-")


def owner_tag() -> str:
    """``<host>~<pid>``: who writes a temporary file (checked for liveness before anything is removed)."""
    return f"{_host()}~{os.getpid()}"


class _RecordingFile:
    """A file wrapper that keeps the ``OSError`` of a failed write: torch reports it as ``unexpected pos``."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()

    def __getattr__(self, name: str) -> Any:  # everything else is the file's
        return getattr(self.f, name)


def _umask() -> int:
    # os.umask can only be read by setting it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename.

    The file gets the mode a newly created file gets under the process's umask
    (``0o666 & ~umask``), not the temporary file's 0600. Disk-full, permission
    and path errors raise :class:`WriteError` naming ``path`` and the cause; the
    previous file at ``path`` survives every failure.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err, "create a file next to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            recording = _RecordingFile(f)
            try:
                torch.save(state, recording)
            except RuntimeError:
                if recording.error is not None:  # torch hides the cause (e.g. ENOSPC) behind "unexpected pos"
                    raise recording.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise write_error(path, err, "write") from None
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
    """Delete the temporary files a killed writer of ``path`` left behind; returns how many.

    A file whose writer (host and pid in its name) is still running on this host,
    or ran on another host (whose processes cannot be checked from here), is kept:
    a live writer's files are never removed.
    """
    path = Path(path)
    owner = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[^/]+)~(?P<pid>\d+)\.[^.]*\.tmp$")
    host = _host()
    removed = 0
    for tmp in temp_files(path):
        found = owner.match(tmp.name)
        if found and (found["host"] != host or pid_alive(int(found["pid"]))):
            continue
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the writer."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "?"


#: Lock files this process holds, by resolved path.
_HELD: dict[str, "FileLock"] = {}


class CheckpointLocked(ValueError):
    """Another live process is writing the same checkpoint file."""


class FileLock:
    """An ``O_EXCL`` lock file ``.<name>.lock`` next to ``path``, holding ``pid host start-time``.

    :meth:`acquire` refuses (:class:`CheckpointLocked`) while the writer named in
    an existing lock file is alive, or runs on another host; a lock whose process
    is dead (or whose pid was reused by another process) is stale and taken over.
    Creating it is also the check that the folder is writable (:class:`WriteError`).
    """

    def __init__(self, path: str | Path, active: Callable[[], bool] | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.parent / f".{self.path.name}.lock"
        self.held = False
        # In this process a lock is live while its holder says so (a fit ended by a second
        # Ctrl-C may not have released it): ``active`` is asked, by default "held".
        self.active = active or (lambda: self.held)

    def acquire(self) -> "FileLock":
        """Take the lock; :class:`CheckpointLocked` or :class:`WriteError` if it cannot be taken."""
        me = f"{os.getpid()} {_host()} {_start_time(os.getpid())}\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.path, err, "create the folder of") from None
        for _ in range(2):  # a stale lock is removed once, then taken
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise CheckpointLocked(
                        f"checkpoint {self.path} is being written by another process ({holder}; lock file "
                        f"{self.lock_path}): two fits must not share one checkpoint file. Give this fit another "
                        "checkpoint path, or wait for the other to end (if no such process runs, delete the lock file)"
                    ) from None
                try:
                    self.lock_path.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as err:
                raise write_error(self.path, err, "write a lock file for") from None
            try:
                os.write(fd, me.encode())
            except OSError as err:
                os.close(fd)
                self.lock_path.unlink(missing_ok=True)
                raise write_error(self.path, err, "write a lock file for") from None
            os.close(fd)
            self.held = True
            _HELD[str(self.lock_path.resolve())] = self
            return self
        raise CheckpointLocked(f"checkpoint {self.path}: the lock file {self.lock_path} keeps reappearing; "
                               "another process is starting on the same checkpoint file")

    def _holder(self) -> str | None:
        """Who holds the existing lock, in words, or None when it is stale."""
        try:
            text = self.lock_path.read_text(encoding="utf-8", errors="replace").split()
        except FileNotFoundError:
            return None
        except OSError:
            return "a process that cannot be identified"
        if not text:  # created, not yet written: a writer starting now, or one killed in between long ago
            try:
                age = time.time() - self.lock_path.stat().st_mtime
            except FileNotFoundError:
                return None
            return None if age > 10 else "a process that is just starting"
        if len(text) < 2 or not text[0].isdigit():
            return "a process that cannot be identified"
        pid, host = int(text[0]), text[1]
        start = text[2] if len(text) > 2 else "?"
        if host != _host():
            return f"pid {pid} on host {host}"
        if not pid_alive(pid) or (start != "?" and _start_time(pid) not in (start, "?")):
            return None
        if pid == os.getpid():
            mine = _HELD.get(str(self.lock_path.resolve()))
            if mine is None or not mine.active():  # left by a fit of this process that has ended
                return None
            return f"pid {pid} on this host (this process: another fit is writing it)"
        return f"pid {pid} on this host"

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            self.held = False
            if _HELD.get(str(self.lock_path.resolve())) is self:
                del _HELD[str(self.lock_path.resolve())]
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass


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


def optimizer_mismatch(opt: torch.optim.Optimizer, saved: Any, saved_type: str | None = None) -> str | None:
    """Why the optimizer state ``saved`` cannot be loaded into ``opt`` (None if it can).

    ``torch.optim.Optimizer.load_state_dict`` accepts another optimizer's state and
    replaces the param-group keys with that one's (Adam's ``betas`` in an SGD), so
    the next step fails far from the cause; this is checked first instead.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        return "its optimizer state has no param_groups list"
    if saved_type is not None and saved_type != type(opt).__name__:
        return f"it holds the state of a {saved_type} optimizer and this learner's is a {type(opt).__name__}"
    groups = saved["param_groups"]
    if len(groups) != len(opt.param_groups):
        return f"it has {len(groups)} optimizer param groups and this learner's optimizer has {len(opt.param_groups)}"
    for i, (old, new) in enumerate(zip(groups, opt.param_groups)):
        if not isinstance(old, dict):
            return f"its param group {i} is a {type(old).__name__}, not a dict"
        if saved_type is None and set(old) != set(new):  # without the type, the hyper-parameter names tell
            extra, missing = sorted(set(old) - set(new)), sorted(set(new) - set(old))
            return (f"its param group {i} has other hyper-parameters than this learner's {type(opt).__name__} "
                    f"(extra: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}): "
                    "it was saved from another optimizer type")
    return None


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


def plain_state(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as tensors: what ``weights_only`` loads.

    Callback and sampler states are made plain when a checkpoint is written, so
    a numpy value in them cannot make the file unreadable (``weights_only=True``
    refuses numpy objects).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy()) if value.dtype != object else [plain_state(v) for v in value.tolist()]
    if isinstance(value, dict):
        return type(value)((k, plain_state(v)) for k, v in value.items()) if type(value) is not dict else {
            k: plain_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_state(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(plain_state(v) for v in value)
    return value


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
