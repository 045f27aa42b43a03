"""Argument checks shared by every public entry point.

Each raises ``TypeError`` (wrong type) or ``ValueError`` (wrong value) with a
message naming the argument, the value received and what is allowed.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_min: bool = False,
    exclusive_max: bool = False,
) -> float:
    """A finite real number within the given bounds; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    low_bad = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
    high_bad = maximum is not None and (value >= maximum if exclusive_max else value > maximum)
    if low_bad or high_bad:
        raise ValueError(f"{name} must be {_describe_range(minimum, maximum, exclusive_min, exclusive_max)}; got {value!r}")
    return value


def _describe_range(lo: float | None, hi: float | None, ex_lo: bool, ex_hi: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if ex_lo else '['}{lo:g}, {hi:g}{')' if ex_hi else ']'}"
    if lo is not None:
        return f"{'>' if ex_lo else '>='} {lo:g}"
    return f"{'<' if ex_hi else '<='} {hi:g}"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (floats with an integral value are accepted) within bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if isinstance(value, numbers.Integral):
        value = int(value)
    elif float(value).is_integer():
        value = int(value)
    else:
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_describe_range(minimum, maximum, False, False)}; got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any], extra: str = "") -> Any:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}{extra}; got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real bool (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def as_group_values(
    name: str,
    value: Any,
    n_groups: int,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> tuple[float, ...]:
    """A scalar broadcast to ``n_groups`` values, or a sequence of exactly ``n_groups`` numbers."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a number or a sequence of {n_groups} numbers; got {value!r}")
    if hasattr(value, "tolist") and not isinstance(value, numbers.Real):
        value = value.tolist()
    if isinstance(value, Sequence):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} must be a number or one value per layer group ({n_groups}); got {len(value)} values: {list(value)!r}"
            )
        values = list(value)
    else:
        values = [value] * n_groups
    out = []
    for i, v in enumerate(values):
        label = name if len(values) == 1 or not isinstance(value, Sequence) else f"{name}[{i}]"
        out.append(check_number(label, v, minimum=0.0 if positive else minimum, maximum=maximum, exclusive_min=positive))
    return tuple(out)
