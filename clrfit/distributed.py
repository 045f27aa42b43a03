"""Where training runs: this process's rank and device, DDP under ``torchrun``, data sharding, collectives.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every method is
a cheap no-op, so the learner calls them unconditionally.

Under ``torchrun`` (see ``docs/distributed.md``) :func:`from_environment`
checks the rendezvous variables, joins the process group (NCCL when CUDA is
present, gloo otherwise) and pins this process to GPU ``LOCAL_RANK``. The
learner then

- wraps the model in ``DistributedDataParallel`` (:meth:`DistributedContext.wrap`),
  which broadcasts rank 0's weights at construction and averages gradients;
- splits every global batch of the training loader across ranks, from the one
  order a single process would draw (:func:`shard_train_loader`: every rank gets
  the same number of batches, so every rank computes the same schedule), and the
  validation loader over :class:`ShardSampler` (each sample on exactly one rank,
  no padding), see :meth:`DistributedContext.shard_data`;
- validates the unwrapped model on its shard with rank 0's buffers (BatchNorm
  statistics) and sums loss and metric totals over ranks, so every rank gets the
  exact full-set values;
- prints, plots and writes files on rank 0 only (``learn.is_main_process``).

Nothing here assumes one node: ``RANK`` decides rank-0 duties, ``LOCAL_RANK``
the device.

Faults (``docs/distributed.md``, "Faults"): no stop may leave a rank waiting
forever. Ranks agree on every planned stop (Ctrl-C, a cancel) at a step
boundary through one small all-reduce on a separate gloo group
(:meth:`DistributedContext.agree_on_stop`); a rank that fails writes what it
raised to the rendezvous store and leaves (:meth:`DistributedContext.fail`),
and the ranks it leaves behind, whose next collective then fails, name it
(:class:`PeerStopError`). Every wait is bounded by ``CLRFIT_DDP_TIMEOUT``
seconds (:func:`ddp_timeout`), the exit-time barrier included.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import enum
import hashlib
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .callback import CancelFitException
from .loaders import GlobalOrderSampler, ShardSampler, TensorLoader, check_last_batch

if TYPE_CHECKING:  # pragma: no cover
    from .data import ModelData

#: Environment variables ``torchrun`` sets that a distributed run cannot start without.
RENDEZVOUS_VARIABLES: tuple[str, ...] = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK")

#: Seed of the training ``DistributedSampler``: identical on every rank, so shards are disjoint.
SAMPLER_SEED = 0

#: Environment variable: how many seconds a rank waits for the others (any collective, the exit barrier).
TIMEOUT_VARIABLE = "CLRFIT_DDP_TIMEOUT"
#: Default of ``CLRFIT_DDP_TIMEOUT``: long enough for a checkpoint write or a compile on rank 0, short enough to notice.
DEFAULT_TIMEOUT_S = 60.0


class Stop(enum.IntEnum):
    """A stop one rank asks for at a step boundary; when ranks ask for different stops the largest wins."""

    NONE = 0
    CANCEL_EPOCH = 1
    CANCEL_FIT = 2
    INTERRUPT = 3


def stop_kind(cancel: Exception) -> Stop:
    """The stop a cancel exception asks the other ranks for."""
    return Stop.CANCEL_FIT if isinstance(cancel, CancelFitException) else Stop.CANCEL_EPOCH


def describe_position(learn: Any) -> tuple[str, str]:
    """``('epoch E, iteration I', '<path> (epoch E, iteration I)' or 'none ...')``: where a fit stopped, and its last good checkpoint."""
    writer = next((cb for cb in getattr(learn, "_cbs", ()) if hasattr(cb, "saved_at") and hasattr(cb, "path")), None)
    if writer is None:
        last = "none (the fit has no checkpoint=)"
    elif writer.saved_at is None:
        last = f"none yet ({writer.path} was not written by this fit)"
    else:
        epoch, _, iteration = writer.saved_at
        last = f"{writer.path} (epoch {epoch}, iteration {iteration})"
    return f"epoch {learn.epoch}, iteration {learn.iteration}", last


class PeerStopError(RuntimeError):
    """This rank stops because another rank failed: raised, was killed, or stopped answering (``rank`` names it)."""

    def __init__(self, message: str, rank: int | None) -> None:
        super().__init__(message)
        self.rank = rank


class DistributedContext:
    """Rank, world size and the collective operations the learner needs."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0, backend: str | None = None) -> None:
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.backend = backend

    @property
    def enabled(self) -> bool:
        """True when running with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that prints, plots and writes files)."""
        return self.rank == 0

    @property
    def collective_device(self) -> torch.device:
        """Device of the small tensors exchanged by :meth:`any_rank` (NCCL needs them on the GPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ model and data
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to train with: ``DistributedDataParallel`` around ``model`` when distributed."""
        if not self.enabled:
            return model
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError(
                f"device={str(device)!r} under torchrun, but the process group uses NCCL (GPU only); train on the GPU "
                "(leave device=None), or call torch.distributed.init_process_group('gloo') before building the Learner"
            )
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard_data(self, data: "ModelData") -> "ModelData":
        """``data`` with its loaders split across ranks (a shallow copy; ``data`` itself is left alone)."""
        if not self.enabled:
            return data
        sharded = copy.copy(data)
        sharded.trn_dl = shard_train_loader(data.trn_dl, self.world_size, self.rank, "trn_dl")
        if data.val_dl is not None:
            sharded.val_dl = shard_eval_loader(data.val_dl, self.world_size, self.rank, "val_dl")
        return sharded

    # ------------------------------------------------------------------ collectives
    def no_sync(self, model: nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-batches that are not the last."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place when distributed)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one: a decision all ranks agree on.

        Used wherever one rank's observation must stop every rank at the same
        step (e.g. an LR finder's divergence test), since a rank that stops alone
        leaves the others waiting in a collective forever. One tiny all-reduce
        (a host sync) per call when distributed; free otherwise.
        """
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.collective_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    # ------------------------------------------------------------------ faults
    def agree_on_stop(self, stop: Stop) -> tuple[Stop, int]:
        """``(stop, rank)``: the largest stop any rank asks for at this step boundary, and the first rank asking it.

        One all-reduce of ``world_size`` small integers on the gloo control group
        (host memory, so no device sync under NCCL); every rank calls it at the
        same boundaries, so every rank takes the same decision at the same step.
        """
        if not self.enabled or not dist.is_initialized():  # no process group to ask (a context built by hand)
            return stop, self.rank
        votes = torch.zeros(self.world_size, dtype=torch.int64)
        votes[self.rank] = int(stop)
        dist.all_reduce(votes, group=_FAULTS.control)
        codes = votes.tolist()
        agreed = max(codes)
        return Stop(agreed), codes.index(agreed)

    def fail(self, err: BaseException, learn: Any) -> PeerStopError | None:
        """A fit of ``learn`` ends with ``err``: the error to raise instead (a peer's fault), or None to raise ``err``.

        A collective that failed because another rank is gone or silent becomes a
        :class:`PeerStopError` naming that rank (from what it wrote to the store,
        or from which process is dead). Any other error is this rank's own: it is
        written to the store for the others to name and this rank leaves the
        group (the exit barrier will not wait for anyone), so the others' next
        collective fails as soon as this process exits, or after the timeout.
        Errors every rank raises together (``DivergenceError``, agreed through
        ``any_rank``) leave the group intact.
        """
        if not self.enabled or not dist.is_initialized():
            return None
        _FAULTS.handled = err
        if isinstance(err, PeerStopError):
            _FAULTS.left = True
            return None
        position, checkpoint = describe_position(learn)
        if _is_collective_failure(err):
            _FAULTS.left = True
            rank, cause = _who_stopped(self.rank, self.world_size)
            message = (f"{cause}; rank {self.rank} stops too, at {position}. Last good checkpoint: {checkpoint} "
                       f"(rank {self.rank}'s collective failed: {_first_line(err)})")
            _say(message)
            return PeerStopError(message, rank)
        if type(err).__name__ == "DivergenceError":  # raised on every rank at the same step (any_rank)
            return None
        _FAULTS.left = True
        record = f"rank {self.rank} of {self.world_size} raised {type(err).__name__}: {_first_line(err)} at {position}"
        _publish(self.rank, record)
        message = f"{record}; the other ranks stop too. Last good checkpoint: {checkpoint}"
        _say(message)
        if hasattr(err, "add_note"):
            err.add_note(f"clrfit: {message}")
        return None


# ---------------------------------------------------------------------- environment


def from_environment() -> DistributedContext:
    """The context ``torchrun`` describes in the environment; joins the process group when distributed.

    ``WORLD_SIZE`` absent or 1: a single-process context (no process group).
    Otherwise ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``LOCAL_RANK`` must
    be set (``torchrun`` sets them all); a missing one is a ``ValueError``
    naming it, raised before anything is trained. The backend is NCCL when CUDA
    is available, gloo otherwise; a process group the script already
    initialised is reused.
    """
    world_size = _env_int("WORLD_SIZE", "1", minimum=1)
    if world_size == 1:
        return DistributedContext()
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for a distributed run, but the environment variable(s) "
            f"{', '.join(missing)} are not set; launch with torchrun (it sets {', '.join(RENDEZVOUS_VARIABLES)} "
            "and WORLD_SIZE), or set them yourself, or unset WORLD_SIZE for a single process"
        )
    rank = _env_int("RANK", minimum=0)
    local_rank = _env_int("LOCAL_RANK", minimum=0)
    if rank >= world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}); got RANK={rank}")
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} asks for a distributed run, but this torch build has no torch.distributed")
    if dist.is_initialized():
        if (dist.get_world_size(), dist.get_rank()) != (world_size, rank):
            raise ValueError(
                f"the initialised process group (world size {dist.get_world_size()}, rank {dist.get_rank()}) "
                f"disagrees with WORLD_SIZE={world_size}, RANK={rank}"
            )
        _join_faults(rank, world_size)
        return DistributedContext(world_size, rank, local_rank, dist.get_backend())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout = ddp_timeout()  # read before joining: a bad value must not leave a half-joined group
    dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank, timeout=timeout)
    atexit.register(_leave_process_group)
    _join_faults(rank, world_size)
    return DistributedContext(world_size, rank, local_rank, backend)


def ddp_timeout() -> datetime.timedelta:
    """``CLRFIT_DDP_TIMEOUT`` (seconds, default :data:`DEFAULT_TIMEOUT_S`) as a timedelta; ``ValueError`` if not > 0."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "")
    if raw.strip() == "":
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"environment variable {TIMEOUT_VARIABLE} must be a number of seconds > 0; got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def _env_int(name: str, default: str | None = None, minimum: int = 0) -> int:
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}; got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}; got {value}")
    return value


# ---------------------------------------------------------------------- faults


class _Faults:
    """This process's side of the fault protocol (one per process: the process group is per process too)."""

    def __init__(self) -> None:
        self.control: Any = None  # the gloo group of the stop votes
        self.store: Any = None  # the rendezvous store, under the "clrfit/" prefix
        self.group: Any = None  # the default group these were made for
        self.left = False  # this rank failed (or its group broke): nobody waits for it, it waits for nobody
        self.handled: BaseException | None = None  # the error a fit already reported
        self.hook_installed = False


_FAULTS = _Faults()


def _join_faults(rank: int, world_size: int) -> None:
    """Once per process group: the gloo control group, the store, this process's address, the excepthook."""
    group = dist.group.WORLD
    if _FAULTS.group is group:
        return
    _FAULTS.group, _FAULTS.left, _FAULTS.handled = group, False, None
    # A separate group: a vote never pairs with a gradient all-reduce of the default group, and lives in host memory.
    _FAULTS.control = dist.new_group(backend="gloo", timeout=ddp_timeout())
    try:
        _FAULTS.store = dist.PrefixStore("clrfit", dist.distributed_c10d._get_default_store())
        _FAULTS.store.set(f"proc/{rank}", f"{socket.gethostname()} {os.getpid()}")
    except Exception:  # noqa: BLE001 - no store (an unusual init method): faults are still bounded, only less named
        _FAULTS.store = None
    if not _FAULTS.hook_installed:
        _FAULTS.hook_installed = True
        previous = sys.excepthook

        def excepthook(kind: type, value: BaseException, tb: Any) -> None:
            _note_uncaught(value)
            previous(kind, value, tb)

        sys.excepthook = excepthook


def _note_uncaught(err: BaseException) -> None:
    """An error that ends this process outside a fit: tell the others, and do not wait for them at exit."""
    if not dist.is_initialized() or err is _FAULTS.handled or isinstance(err, KeyboardInterrupt):
        return  # a fit reported it already; a Ctrl-C reaches every rank (an agreed stop re-raises it everywhere)
    _FAULTS.left = True
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if _is_collective_failure(err):  # e.g. learn.save()'s barrier after a peer failed: name the peer
        _say(f"rank {rank} exits: {_who_stopped(rank, world_size)[1]}")
        return
    _publish(rank, f"rank {rank} of {world_size} exited with an uncaught {type(err).__name__}: {_first_line(err)}")


def _publish(rank: int, message: str) -> None:
    """Write this rank's fault to the store, where the ranks it leaves behind look for it."""
    if _FAULTS.store is None:
        return
    try:
        _FAULTS.store.set(f"stop/{rank}", message)
        _FAULTS.store.add("stops", 1)  # answered by the store: the record is there before this process goes
    except Exception:  # noqa: BLE001 - the store host is gone: nothing left to tell
        pass


#: Seconds a rank whose collective failed looks for the cause: a process that dies closes its sockets before it is dead.
FAULT_LOOKUP_S = 3.0


def _who_stopped(rank: int, world_size: int) -> tuple[int | None, str]:
    """``(rank, what happened)`` for the peer that broke this rank's collective: its record, else a dead process."""
    if _FAULTS.store is None:
        return None, "another rank failed or stopped answering (no rendezvous store to ask which)"
    deadline = time.monotonic() + FAULT_LOOKUP_S
    while True:
        try:
            found = _look_for_fault(_FAULTS.store, rank, world_size)
        except Exception:  # noqa: BLE001 - the store lived in a process that is gone (rank 0 outside torchrun)
            return 0, "rank 0 is gone (the rendezvous store it hosted does not answer): killed or crashed"
        if found is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if found is not None:
        return found
    timeout = f"{TIMEOUT_VARIABLE}={ddp_timeout().total_seconds():g} s"
    return None, (f"no rank reported an error and every rank on this host is alive: the ranks are at different "
                  f"collectives (a cancel or a callback's collective on some ranks only?), or a rank on another "
                  f"host died or hangs; gave up after {timeout} at most")


def _look_for_fault(store: Any, rank: int, world_size: int) -> tuple[int, str] | None:
    """A peer's fault record, else a peer on this host whose process is dead; None if neither (yet)."""
    for r in range(world_size):
        if r != rank and store.check([f"stop/{r}"]):
            return r, store.get(f"stop/{r}").decode(errors="replace")
    here = socket.gethostname()
    for r in range(world_size):
        if r == rank or not store.check([f"proc/{r}"]):
            continue
        host, pid = store.get(f"proc/{r}").decode().split()
        if host == here and not _alive(int(pid)):
            return r, f"rank {r} of {world_size} died without a word (killed, or crashed in native code)"
    return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` on this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back on a signal probe (a zombie counts as alive there)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


#: Text of the errors torch raises when a collective fails because a peer is gone or silent.
_COLLECTIVE_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                        "Broken pipe", "gloo/transport", "NCCL communicator was aborted", "watchdog")


def _is_collective_failure(err: BaseException) -> bool:
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in _COLLECTIVE_FAILURES)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else repr(err)


def _say(message: str) -> None:
    """One line on stderr at once: a launcher may kill this process before the traceback gets printed."""
    print(f"clrfit: {message}", file=sys.stderr, flush=True)


def _leave_process_group() -> None:
    """At interpreter exit: meet the other ranks (bounded), then destroy the process group.

    Tearing a gloo group down while a peer is still finishing its last
    collective can abort the process ("terminate called without an active
    exception"), so the ranks first meet, through the rendezvous store: unlike
    a collective, a store wait can be bounded, and it sees a peer's fault
    record. A rank that failed, or whose group broke, waits for nobody, and a
    group whose ranks did not all arrive within ``CLRFIT_DDP_TIMEOUT`` is left
    to the operating system rather than destroyed (that could block on the
    dead peer).
    """
    if not dist.is_initialized():
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C (torchrun forwards one) must not cut the meeting short
    if _FAULTS.left or not _meet_at_exit(dist.get_world_size(), ddp_timeout().total_seconds()):
        return
    dist.destroy_process_group()


def _meet_at_exit(world_size: int, timeout_s: float) -> bool:
    """True once every rank has arrived; False on a fault record or after ``timeout_s``."""
    store = _FAULTS.store
    if store is None:
        return False
    try:
        store.add("exit", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.add("exit", 0) >= world_size:
                return True
            if store.add("stops", 0) > 0:
                return False
            time.sleep(0.01)
    except Exception:  # noqa: BLE001 - the store host is gone
        pass
    return False


# ---------------------------------------------------------------------- sharding


def shard_train_loader(dl: DataLoader | TensorLoader, world_size: int, rank: int,
                       name: str = "trn_dl") -> DataLoader | TensorLoader:
    """Rank ``rank``'s share of every global batch of the one order a single process would draw.

    ``dl``'s ``batch_size`` is the per-rank batch; the global batch is
    ``world_size * batch_size`` (see :mod:`clrfit.loaders` and
    ``docs/distributed.md``, "Data order"). Shuffled or not, the ranks' batch
    ``j`` together is batch ``j`` of one process with the global batch: a
    :class:`~clrfit.loaders.TensorLoader` is sharded with its generator's
    state, a torch ``DataLoader`` is rebuilt over a
    :class:`~clrfit.loaders.GlobalOrderSampler` that draws the permutation as
    ``RandomSampler`` does. Under an initialised process group the ranks'
    random states are compared first: ranks that would draw different orders
    are a ``ValueError``. A loader already over a ``DistributedSampler`` (or an
    already sharded ``TensorLoader``) is returned unchanged.
    """
    if isinstance(dl, TensorLoader):
        if dl.world_size > 1 or dl.indices is not None:
            return dl
        if dl.draws and dl.seed is None:  # each epoch's seed comes from the global torch RNG
            _check_ranks_agree(name, torch.get_rng_state(), "the global torch RNG (torch.manual_seed)")
        elif dl.draws:
            _check_ranks_agree(name, dl.generator.get_state(), "its generator")
        return dl.train_shard(world_size, rank, name)
    if isinstance(dl.sampler, DistributedSampler):
        return dl
    shuffle = _is_shuffled(dl, name)
    check_last_batch(name, len(dl.dataset), dl.batch_size, world_size, dl.drop_last)
    generator = dl.sampler.generator if shuffle else None
    if generator is not None:
        _check_ranks_agree(name, generator.get_state(), "its generator")
    elif shuffle:  # the permutation's seed comes from the global torch RNG
        _check_ranks_agree(name, torch.get_rng_state(), "the global torch RNG (torch.manual_seed)")
    sampler = GlobalOrderSampler(dl.dataset, world_size, rank, dl.batch_size, shuffle, dl.drop_last, generator)
    return DataLoader(dl.dataset, sampler=sampler, **_loader_options(dl))


def shard_eval_loader(dl: DataLoader | TensorLoader, world_size: int, rank: int,
                      name: str = "val_dl") -> DataLoader | TensorLoader:
    """``dl`` over samples ``rank, rank + W, ...``: each sample evaluated on exactly one rank, in order."""
    if isinstance(dl, TensorLoader):
        if dl.shuffle:
            raise ValueError(f"{name}: a shuffled TensorLoader cannot be an evaluation loader; pass shuffle=False")
        return dl if dl.world_size > 1 or dl.indices is not None else dl.eval_shard(world_size, rank)
    if isinstance(dl.sampler, (DistributedSampler, ShardSampler)):
        return dl
    _is_shuffled(dl, name)
    sampler = ShardSampler(len(dl.dataset), world_size, rank)
    return DataLoader(dl.dataset, sampler=sampler, **_loader_options(dl))


def _check_ranks_agree(name: str, state: torch.Tensor, source: str) -> None:
    """Under a process group, every rank must hold the same random state: else their orders differ (an error on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, hashlib.sha1(state.cpu().numpy().tobytes()).hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ValueError(
            f"{name}: rank(s) {differ} hold a different random state in {source} than rank 0, so the ranks would "
            "draw different data orders; seed every rank alike before building the data and the Learner "
            "(torch.manual_seed(seed), the same seed on every rank), or give the loader a seeded generator"
        )


def _is_shuffled(dl: DataLoader, name: str) -> bool:
    if isinstance(dl.dataset, IterableDataset):
        raise ValueError(
            f"{name}: an IterableDataset cannot be sharded across ranks by clrfit; "
            "have the dataset yield only this rank's samples and give the loader a DistributedSampler-like split yourself"
        )
    if dl.batch_size is None or type(dl.batch_sampler) is not BatchSampler:
        raise ValueError(
            f"{name}: a loader with a custom batch_sampler cannot be re-sharded; build it over a "
            "torch.utils.data.distributed.DistributedSampler yourself and clrfit will use it as it is"
        )
    if isinstance(dl.sampler, RandomSampler):
        if dl.sampler.replacement or dl.sampler._num_samples is not None:
            raise ValueError(f"{name}: a RandomSampler with replacement or num_samples cannot be sharded; "
                             "give the loader a DistributedSampler yourself")
        return True
    if isinstance(dl.sampler, SequentialSampler):
        return False
    raise ValueError(
        f"{name}: cannot shard a loader with sampler {type(dl.sampler).__name__} across ranks; "
        "use shuffle=True/False, or build it over a DistributedSampler yourself"
    )


def _loader_options(dl: DataLoader) -> dict:
    """Everything that defines ``dl`` except its dataset and sampler."""
    options = dict(
        batch_size=dl.batch_size, drop_last=dl.drop_last, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
        pin_memory=dl.pin_memory, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
        multiprocessing_context=dl.multiprocessing_context, generator=dl.generator,
    )
    if dl.num_workers > 0:
        options.update(prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers)
    if getattr(dl, "pin_memory_device", ""):
        options["pin_memory_device"] = dl.pin_memory_device
    return options


# ---------------------------------------------------------------------- memory layout


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to train ``model`` in channels_last layout: on CUDA, for models with 2-d convolutions."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
