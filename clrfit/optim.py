"""Reading and writing a param group's hyper-parameters, whatever the optimizer.

Momentum is SGD/RMSprop ``momentum`` or ``betas[0]`` for Adam-family optimizers.
"""
from __future__ import annotations

from typing import Any

import torch


def momentum_key(optimizer: torch.optim.Optimizer | dict[str, Any]) -> str | None:
    """``'betas'``, ``'momentum'`` or ``None`` when the optimizer (or one param group) has neither."""
    group = optimizer if isinstance(optimizer, dict) else optimizer.param_groups[0]
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None


def momentum_is_sgd(groups: list[dict[str, Any]]) -> bool:
    """True when every group's momentum is ``momentum`` (SGD, RMSprop): a hot loop may then read and write that key directly."""
    return all(momentum_key(g) == "momentum" for g in groups)


def read_back(groups: list[dict[str, Any]]) -> tuple[list[float], list[float | None]]:
    """Every group's lr and momentum (``betas[0]`` for Adam-family; None without either), as floats."""
    lrs: list[float] = []
    moms: list[float | None] = []
    for group in groups:
        lrs.append(float(group["lr"]))
        if "betas" in group:
            moms.append(float(group["betas"][0]))
        elif "momentum" in group:
            moms.append(float(group["momentum"]))
        else:
            moms.append(None)
    return lrs, moms


def set_momentum(group: dict[str, Any], value: float) -> None:
    """Write momentum into ``momentum`` or ``betas[0]``."""
    if "betas" in group:
        group["betas"] = (value, *tuple(group["betas"])[1:])
    elif "momentum" in group:
        group["momentum"] = value
    else:
        raise ValueError(
            "this optimizer has neither 'momentum' nor 'betas' in its param groups, "
            "so a schedule with momentum cannot be applied; use an optimizer with momentum "
            "(SGD, RMSprop, Adam, AdamW, NAdam, RAdam, ...) or a schedule without momentum"
        )


#: torch's own ``zero_grad`` (an optimizer class that overrides it keeps its own).
_TORCH_ZERO_GRAD = torch.optim.Optimizer.zero_grad
#: Whether a profiler is recording; a torch without this check always gets ``opt.zero_grad``.
_profiling = getattr(torch.autograd, "_profiler_enabled", lambda: True)


def clear_grads(opt: torch.optim.Optimizer) -> None:
    """``opt.zero_grad(set_to_none=True)``: every parameter's gradient set to None.

    torch's ``zero_grad`` runs that loop inside a profiler range, which on a CPU
    costs more than the loop (15-20 us per call against 1-2 us for a 4-tensor MLP
    on a 2-core CPU). So when the optimizer's class keeps torch's ``zero_grad`` and
    no profiler is recording, the gradients are set to None here, which is all that
    call does then. An optimizer with its own ``zero_grad``, or a run under the
    profiler (whose trace then shows the usual range), gets ``opt.zero_grad(set_to_none=True)``.
    """
    if type(opt).zero_grad is not _TORCH_ZERO_GRAD or _profiling():
        opt.zero_grad(set_to_none=True)
        return
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = None
