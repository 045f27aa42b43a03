"""Argument checks shared by every public entry point, and the choice lists they check against.

Each check raises :class:`ArgumentError` (a ``ValueError``; :class:`ArgumentTypeError`
for a wrong type, also a ``TypeError``) whose message names the argument, the value
received and what is allowed, and whose ``.argument`` is the parameter's name, so a
caller that spells the parameter differently (the CLI's ``--use-clr-beta``) can say
so without parsing the message. This module imports nothing heavy: the CLI checks
its options with it before torch is loaded.
"""
from __future__ import annotations

import math
import numbers
import re
import string
from typing import Any, Callable, Iterable, Sequence

# Choice lists, defined once: the library checks against them and the CLI offers them.
ON_NAN = ("raise", "restore", "ignore")
PRECISIONS = ("fp32", "fp16", "bf16")
STRATEGIES = ("ddp", "fsdp")
CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
SCALE_MODES = ("cycle", "iterations")
ANNEAL_STRATEGIES = ("cos", "linear")
#: How a schedule phase goes from one point to the next (``clrfit.schedules.Phase``).
ANNEALS = ("constant", "linear", "cos", "exp")
#: The learner methods whose schedule arguments ``clrfit.schedules.schedule_for`` takes.
FIT_METHODS = ("fit", "fit_cyclic", "fit_one_cycle")
#: What ``ScheduleLR`` does at a ``step()`` past the end of its schedule.
AFTER_END = ("raise", "hold")
#: Whether a monitored quantity improves downwards, upwards, or as its name says (``SaveBest``, ``EarlyStopping``).
MONITOR_MODES = ("min", "max", "auto")
#: The built-in models (``clrfit.models.get_model``; torchvision names come on top with ``--data-folder``).
ARCHS = ("cnn1d", "resnet20", "resnet56")
#: The CLI's ``--opt`` optimizers.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: ``ModelData.from_folder`` / ``from_csv`` normalisation: the data's own statistics, ImageNet's, or none.
NORMALIZE = ("data", "imagenet", None)
#: In-memory loaders: ``clrfit.loaders.TensorLoader`` (whole batches sliced) or torch's DataLoader.
LOADERS = ("tensor", "torch")

_NO_VALUE = object()
_LEADING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ArgumentError(ValueError):
    """A bad argument: the message names it, ``.argument`` is its parameter name.

    ``template`` is the message with every parameter it mentions written as a
    ``{name}`` field (literal braces doubled); ``str(err)`` fills the fields with the
    names themselves and :meth:`render` with any other spelling, e.g. CLI flags.
    """

    def __init__(self, argument: str, template: str, value: Any = _NO_VALUE) -> None:
        self.argument = argument
        self.template = template
        self.value = _NO_VALUE if isinstance(value, _NoValue) else value
        self.names = tuple(field for _, field, _, _ in string.Formatter().parse(template) if field)
        super().__init__(self.render())

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with each parameter name written as ``spell(name)``."""
        text = self.template.format_map({name: spell(name) for name in self.names})
        return text if self.value is _NO_VALUE else f"{text}; got {self.value!r}"

    def __reduce__(self):  # picklable (errors cross process boundaries), the "no value" marker included
        value = self.value if self.value is not _NO_VALUE else _NoValue()
        return (type(self), (self.argument, self.template, value))


class _NoValue:
    """Stands for "no value given" in a pickled error."""

    def __reduce__(self):
        return (_no_value, ())


def _no_value() -> Any:
    return _NO_VALUE


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (both an :class:`ArgumentError` and a ``TypeError``)."""


def _field(label: str) -> tuple[str, str]:
    """(parameter name, template) for a label such as ``lrs[1]`` or ``use_clr div``."""
    match = _LEADING_NAME.match(label)
    if match is None:
        return label, escape(label)
    name = match.group(0)
    return name, "{" + name + "}" + escape(label[match.end():])


def escape(text: str) -> str:
    """``text`` for an :class:`ArgumentError` template: literal braces doubled (values' reprs may hold some)."""
    return text.replace("{", "{{").replace("}", "}}")


def fail(label: str, problem: str, value: Any = _NO_VALUE, kind: type[ArgumentError] = ArgumentError) -> ArgumentError:
    """An error saying ``<label> <problem>; got <value>`` (raise it); ``problem`` may use ``{name}`` fields."""
    name, template = _field(label)
    return kind(name, f"{template} {problem}", value)


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_min: bool = False,
    exclusive_max: bool = False,
) -> float:
    """A finite real number within the given bounds; returns it as a float."""
    value = _as_real(value)
    if type(value) not in _PLAIN_REALS and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise fail(name, f"must be a number; got {escape(repr(value))} ({type(value).__name__})",
                   kind=ArgumentTypeError)
    value = float(value)
    if not math.isfinite(value):
        raise fail(name, "must be finite", value)
    low_bad = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
    high_bad = maximum is not None and (value >= maximum if exclusive_max else value > maximum)
    if low_bad or high_bad:
        raise fail(name, f"must be {_describe_range(minimum, maximum, exclusive_min, exclusive_max)}", value)
    return value


_PLAIN_REALS = (int, float)  # exact types: bool is not one of them


def _as_real(value: Any) -> Any:
    """A 0-d numpy or torch scalar as the Python number it holds; anything else unchanged."""
    if type(value) in _PLAIN_REALS:  # the usual case, without the abstract-class checks below
        return value
    if not isinstance(value, (numbers.Real, str, bytes)) and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def _describe_range(lo: float | None, hi: float | None, ex_lo: bool, ex_hi: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if ex_lo else '['}{lo:g}, {hi:g}{')' if ex_hi else ']'}"
    if lo is not None:
        return f"{'>' if ex_lo else '>='} {lo:g}"
    return f"{'<' if ex_hi else '<='} {hi:g}"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (floats with an integral value are accepted) within bounds."""
    value = _as_real(value)
    if type(value) is int:
        pass
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(name, f"must be an integer; got {escape(repr(value))} ({type(value).__name__})",
                   kind=ArgumentTypeError)
    elif isinstance(value, numbers.Integral):
        value = int(value)
    elif math.isfinite(value) and float(value).is_integer():
        value = int(value)
    else:
        raise fail(name, "must be an integer", value, kind=ArgumentTypeError)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(name, f"must be an integer {_describe_range(minimum, maximum, False, False)}", value)
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any], extra: str = "") -> Any:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    try:
        known = value in allowed
    except TypeError:  # an unhashable or incomparable value is simply not one of them
        known = False
    if not known:
        raise fail(name, escape(f"must be one of {', '.join(repr(a) for a in allowed)}{extra}"), value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real bool (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise fail(name, "must be True or False", value, kind=ArgumentTypeError)
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
        raise fail(name, f"must be a number or a sequence of {n_groups} numbers", value, kind=ArgumentTypeError)
    if hasattr(value, "tolist") and not isinstance(value, numbers.Real):
        value = value.tolist()
    if isinstance(value, Sequence):
        if len(value) != n_groups:
            raise fail(name, f"must be a number or one value per layer group ({n_groups}); "
                             f"got {len(value)} values: {escape(repr(list(value)))}")
        values = list(value)
    else:
        values = [value] * n_groups
    out = []
    for i, v in enumerate(values):
        label = name if len(values) == 1 or not isinstance(value, Sequence) else f"{name}[{i}]"
        out.append(check_number(label, v, minimum=0.0 if positive else minimum, maximum=maximum, exclusive_min=positive))
    return tuple(out)
