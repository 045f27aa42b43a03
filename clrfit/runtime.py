"""Where and how a step runs: device, precision, DDP, torch.compile and memory layout, in one owner.

The learner's loop says *what* happens in a step (forward, loss, backward, optimizer
step, callback events); :class:`Runtime` says *how*: which device batches go to
(nested tuples, lists and dicts), whether the input is channels_last, which
model object trains (DDP-wrapped, compiled) and which evaluates, whether a
micro-batch skips DDP's gradient all-reduce, whether the forward pass runs under
autocast, how backward is scaled and how the optimizer steps (through the fp16
gradient scaler). :meth:`Runtime.evaluate` is the one evaluation forward that both
``Learner.validate`` and ``lr_find2``'s per-step validation use.

What applies is decided once, when the runtime is built, so the hot loop pays
nothing for what does not apply: on CPU batches are not moved, and without DDP
and autocast no context manager is entered at all.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .distributed import DistributedContext, from_environment, uses_channels_last
from .loaders import TensorLoader
from .precision import Precision

#: Entered when a micro-batch needs neither ``no_sync`` nor anything else: reusable, costs nothing.
NO_CONTEXT = contextlib.nullcontext()


class Runtime:
    """Device, precision and process group of one learner, and the step primitives that depend on them."""

    def __init__(self, model: nn.Module, device: str | torch.device | None, precision: str,
                 batch_fn: Callable[[Any], tuple[Any, Any]] | None = None) -> None:
        if batch_fn is not None and not callable(batch_fn):
            raise TypeError(f"batch_fn must be a callable batch -> (inputs, target), or None; got {batch_fn!r}")
        self.split = split_batch if batch_fn is None else _checked(batch_fn)
        self.dist: DistributedContext = from_environment()
        self.device = resolve_device(device, self.dist.local_rank)
        self.channels_last = uses_channels_last(model, self.device)
        self.precision = Precision(precision, self.device)
        self._autocast_dtype = self.precision.dtype
        # A CPU loader already yields CPU tensors: moving them would only cost a call per tensor.
        self._moves = self.device.type != "cpu"
        self._non_blocking = self.device.type == "cuda"
        # (x, y) CPU tensors on a CPU learner with the default split: returned as they are.
        self._plain_pairs = batch_fn is None and not self._moves and not self.channels_last
        # Backward and the optimizer step are the precision's own (nothing to add here): called without a wrapper.
        self.backward: Callable[[torch.Tensor], None] = self.precision.backward
        self.step: Callable[[torch.optim.Optimizer], None] = self.precision.step
        self._compiled: dict[str, tuple[nn.Module, nn.Module]] = {}
        self._one = torch.ones((), device=self.device)  # the count's slot in evaluate's row, times n

    # ------------------------------------------------------------------ models
    def place(self, model: nn.Module) -> nn.Module:
        """``model`` moved to the device (channels_last where that pays: CUDA with 2-d convolutions)."""
        if self.channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def regroup(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Optimizer param groups for the placed model (unchanged here; FSDP swaps in its sharded parameters)."""
        return groups

    def prepare(self, model: nn.Module) -> None:
        """Build the training model (DDP-wrapped when distributed) for ``model``, already placed."""
        self.model = model
        self.wrapped = self.dist.wrap(model, self.device)

    def models(self, compile_backend: str | None) -> tuple[nn.Module, nn.Module]:
        """``(train model, eval model)``: DDP-wrapped for training, plain for evaluation, each compiled on request."""
        if compile_backend is None:
            return self.wrapped, self.model
        if compile_backend not in self._compiled:
            train_model = compiled(self.wrapped, compile_backend)
            eval_model = train_model if self.wrapped is self.model else compiled(self.model, compile_backend)
            self._compiled[compile_backend] = (train_model, eval_model)
        return self._compiled[compile_backend]

    # ------------------------------------------------------------------ batches
    def to_device(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, target)`` of a batch on the device; nested tuples, lists and dicts are moved leaf by leaf.

        The batch is split by :func:`split_batch` (or the learner's ``batch_fn``).
        """
        if self._plain_pairs and type(batch) in _PAIRS and len(batch) == 2:  # the common case, checked cheaply
            xb, yb = batch
            if type(xb) is _TENSOR is type(yb) and xb.is_cpu and yb.is_cpu:
                return xb, yb
        xb, yb = self.split(batch)
        if self.channels_last and isinstance(xb, torch.Tensor) and xb.ndim == 4:
            return (xb.to(self.device, non_blocking=self._non_blocking, memory_format=torch.channels_last),
                    move(yb, self.device, self._non_blocking))
        if not self._moves:
            return _to_cpu_if_needed(xb), _to_cpu_if_needed(yb)
        return move(xb, self.device, self._non_blocking), move(yb, self.device, self._non_blocking)

    def yields_ready_pairs(self, dl: Any) -> bool:
        """True when every batch of ``dl`` is already this learner's ``(inputs, target)``: nothing to move or split.

        That is a :class:`~clrfit.loaders.TensorLoader` of two CPU tensors (its
        transform, if any, works where the batch is) on a CPU learner with the
        default split and no channels_last; the loop then takes its batches as
        they come, without :meth:`to_device`.
        """
        return (self._plain_pairs and type(dl) is TensorLoader and len(dl.tensors) == 2
                and all(t.is_cpu for t in dl.tensors))

    # ------------------------------------------------------------------ the step
    def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward: DDP ``no_sync`` on all but the last of a step."""
        if last or not self.dist.enabled:
            return NO_CONTEXT
        return self.dist.no_sync(model, sync=False)

    def forward(self, model: nn.Module, xb: Any, yb: Any, crit: Callable) -> tuple[Any, torch.Tensor]:
        """``(prediction, loss)``, under autocast when the precision is fp16 or bf16."""
        if self._autocast_dtype is None:
            pred = model(xb) if type(xb) is _TENSOR else call_model(model, xb)
            return pred, crit(pred, yb)
        with torch.autocast(self.device.type, dtype=self._autocast_dtype):
            pred = call_model(model, xb)
            return pred, crit(pred, yb)

    def evaluate(self, model: nn.Module, batch: Any, crit: Callable, metrics: Sequence[Callable]) -> torch.Tensor:
        """``[loss * n, n, metric * n, ...]`` of one batch as a float64 device tensor (``model`` in eval mode).

        Callers run it under ``torch.no_grad()`` (once around all their batches, not once per batch).

        ``n`` is the number of samples (the leading size of the first target tensor, or
        of the input), not the number of targets of a multi-target batch. Metrics get
        what the loss gets: a tuple-output model's metrics receive the tuple.
        """
        xb, yb = self.to_device(batch)
        pred, loss = self.forward(model, xb, yb, crit)
        n = float(batch_size(xb, yb))
        device = self.device
        values = [_scalar(loss, device), self._one]
        if metrics:
            out = pred.float() if isinstance(pred, torch.Tensor) else pred  # metrics receive what the loss receives
            values += [_scalar(m(out, yb), device) for m in metrics]
        if any(v.dtype != torch.float32 for v in values):  # one type for the stack, no rounding on the way
            values = [v.double() for v in values]
        return torch.stack(values).double() * n

    def __repr__(self) -> str:
        return f"Runtime(device={self.device}, precision={self.precision.name!r}, world_size={self.dist.world_size})"


def _scalar(value: Any, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-d tensor on ``device`` without autograd history (as it is when it already is one: no op)."""
    if type(value) is _TENSOR and value.ndim == 0 and not value.requires_grad and value.device == device:
        return value
    return torch.as_tensor(value, device=device).detach().reshape(())


def resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """``device`` as a ``torch.device`` (default: this rank's GPU if there is one, else the CPU)."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r} ({err})") from None
    if resolved.type == "cuda":  # found here, not as a driver traceback at the first tensor moved
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no usable CUDA device (torch.cuda.is_available() "
                             "is False); use device='cpu'")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return resolved


_PAIRS = (tuple, list)
_TENSOR = torch.Tensor
_TARGET_KEYS = ("labels", "label", "target", "targets", "y")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch: ``(x, y)``; ``(x1, ..., xn, y)`` -> ``((x1, ..., xn), y)``; a dict -> (the dict, its labels).

    A dict batch is passed whole to the model as keyword arguments (so a model that
    computes its own loss from ``labels`` gets them); its target is the value of the
    first of the keys ``labels``, ``label``, ``target``, ``targets``, ``y`` that it
    has, or None. Anything else needs a ``batch_fn``.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) > 2:
            return tuple(batch[:-1]), batch[-1]
    elif isinstance(batch, dict):
        return batch, next((batch[k] for k in _TARGET_KEYS if k in batch), None)
    what = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
    raise TypeError(
        f"batch: got {what}; a batch must be a tuple or list (x, y) or (x1, ..., xn, y), or a dict "
        f"(with the target under one of {', '.join(_TARGET_KEYS)}); pass batch_fn=lambda batch: (inputs, target) to split others"
    )


def _checked(batch_fn: Callable[[Any], tuple[Any, Any]]) -> Callable[[Any], tuple[Any, Any]]:
    """``batch_fn`` with its result checked to be a pair ``(inputs, target)``."""
    def split(batch: Any) -> tuple[Any, Any]:
        out = batch_fn(batch)
        if not isinstance(out, tuple) or len(out) != 2:
            got = f"a tuple of length {len(out)}" if isinstance(out, tuple) else f"a {type(out).__name__}"
            raise TypeError(f"batch_fn must return a pair (inputs, target); got {got} from {batch_fn!r}")
        return out
    return split


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; a tuple or list of inputs is passed as ``model(*inputs)``, a dict as ``model(**inputs)``."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def batch_size(inputs: Any, target: Any) -> int:
    """Number of samples in a batch: the leading size of the first tensor of the target, else of the inputs."""
    for part in (target, inputs):
        t = _first_tensor(part)
        if t is not None and t.ndim > 0:
            return t.shape[0]
    raise TypeError("batch: found no tensor with a leading sample dimension in the inputs or the target")


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def move(x: Any, device: torch.device, non_blocking: bool) -> Any:
    """Tensors in ``x`` (a tensor or nested tuples, lists and dicts) moved to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, (list, tuple)):
        return type(x)(move(v, device, non_blocking) for v in x)
    if isinstance(x, dict):
        return {k: move(v, device, non_blocking) for k, v in x.items()}
    return x


_CPU = torch.device("cpu")


def _to_cpu_if_needed(x: Any) -> Any:
    # The common case (a CPU tensor) returns at once; anything else goes through move.
    if isinstance(x, torch.Tensor) and x.is_cpu:
        return x
    return move(x, _CPU, False)


def compiled(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model, backend=backend)``; ``ValueError`` where torch.compile cannot run."""
    try:
        return torch.compile(model, backend=backend)
    except RuntimeError as err:  # e.g. a Python version that this torch's Dynamo does not support
        raise ValueError(f"compile={backend!r}: torch.compile is unavailable here: {err}") from None


def compile_backend(compile: bool | str) -> str | None:
    """The torch.compile backend ``compile`` asks for (``True``: the default, inductor), or None."""
    if compile is False:
        return None
    if compile is not True and not isinstance(compile, str):
        raise TypeError(f"compile must be True, False or a torch.compile backend name such as 'inductor'; got {compile!r}")
    if not hasattr(torch, "compile") or not hasattr(torch, "compiler"):
        raise ValueError(f"compile={compile!r} needs torch.compile (PyTorch >= 2.0); this torch ({torch.__version__}) has none")
    backend = "inductor" if compile is True else compile
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"compile={compile!r}: unknown torch.compile backend; available: {', '.join(sorted(backends))}")
    return backend
