"""clrfit: cyclical learning rates, the 1cycle policy and LR range tests for PyTorch.

The public API is the names in ``__all__`` (``from clrfit import *`` brings them
all, the ``datasets``, ``models`` and ``schedules`` modules included); everything
else is internal and may change. The names are imported on first use, so that
``clrfit --help`` and the CLI's argument errors answer without loading torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (a module's own name: the module itself)
_EXPORTS = {
    "ArgumentError": "validation",
    "Callback": "callback",
    "CancelBatchException": "callback",
    "CancelEpochException": "callback",
    "CancelFitException": "callback",
    "Checkpoint": "checkpoint",
    "DivergenceError": "checkpoint",
    "Learner": "learner",
    "ModelData": "data",
    "Recorder": "recorder",
    "Schedule": "schedules",
    "ScheduleLR": "lr_scheduler",
    "Suggestions": "suggest",
    "accuracy": "metrics",
    "callbacks": "callbacks",
    "datasets": "datasets",
    "error_rate": "metrics",
    "models": "models",
    "model_loss": "metrics",
    "preview": "schedules",
    "range_test": "any_loop",
    "schedules": "schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562); cached in the module afterwards."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'clrfit' has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if module_name == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
