"""clrfit: cyclical learning rates, the 1cycle policy and LR range tests for PyTorch."""
from .callback import Callback, CancelBatchException, CancelEpochException, CancelFitException
from .checkpoint import DivergenceError
from .data import ModelData
from .learner import Learner
from .lr_scheduler import ScheduleLR
from .metrics import accuracy, error_rate
from .recorder import Recorder

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "DivergenceError",
    "Learner",
    "ModelData",
    "Recorder",
    "ScheduleLR",
    "accuracy",
    "error_rate",
]
