"""Generate docs/api.md, the API reference, from clrfit's signatures and docstrings.

Run from the repository root: ``python docs/make_api.py`` (writes docs/api.md);
``python docs/make_api.py --check`` exits 1 when the committed file is stale.
Only the public API is documented: the names ``clrfit`` exports (``__all__``),
each class with its public methods and properties, and, for the exported
modules (``datasets``, ``models``, ``schedules``), the public classes,
functions and constants they define, in source order. Everything else is
internal.
"""
from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate import write_or_check  # noqa: E402  (docs/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

HEADER = """# API reference

Generated from the docstrings by `python docs/make_api.py`; do not edit by hand
(`tests/test_docs.py` checks that this file is up to date). For guides see
[the docs index](index.md).

This is the whole public API: the names `clrfit` exports (`from clrfit import *`
brings them all) and the contents of its `datasets`, `models` and `schedules`
modules. Other modules are internal and may change without notice. Every
parameter's allowed values are in [parameters](parameters.md).
"""


def exported(package: Any) -> tuple[list[tuple[str, Any]], list[Any]]:
    """(name, object) for each exported class or function, and the exported modules, in name order."""
    names, modules = [], []
    for name in sorted(package.__all__):
        obj = getattr(package, name)
        if inspect.ismodule(obj):
            modules.append(obj)
        else:
            names.append((name, obj))
    return names, modules


def _line(obj: Any) -> int:
    try:
        return inspect.getsourcelines(inspect.unwrap(obj))[1]
    except (OSError, TypeError):
        return 10**9


def defined_here(module: Any) -> list[tuple[str, Any]]:
    """Public classes and functions defined in ``module`` (not imported into it), in source order."""
    members = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            members.append((name, obj))
    return sorted(members, key=lambda item: (_line(item[1]), item[0]))


def constants(module: Any) -> list[tuple[str, str]]:
    """Public UPPER_CASE constants of ``module`` with a short, stable repr."""
    out = []
    for name, value in vars(module).items():
        if isinstance(value, bool) or name.startswith("_") or not name.isupper():
            continue
        if isinstance(value, (int, float, str, tuple, frozenset)):
            text = repr(value)
            if len(text) <= 200 and " at 0x" not in text:
                out.append((name, text))
    return sorted(out)


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _default(value: Any) -> str:
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return value.__name__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def signature(obj: Any, drop_self: bool = False) -> str | None:
    """``(a: int, b: float = 1.0) -> str`` with annotations shown as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    parts, star_done = [], False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = "*" + p.name, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}" if p.annotation is not p.empty else f"={_default(p.default)}"
        parts.append(text)
    out = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def docstring(obj: Any) -> str:
    """The cleaned docstring, or a marker when there is none."""
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "*(no docstring)*"


def _quote(doc: str) -> str:
    """reST docstring text as GitHub Markdown: ``::`` blocks and ``====`` tables fenced, ````x```` as `x`."""
    out: list[str] = []
    lines = doc.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("===="):
            end = max(j for j in range(i, len(lines)) if lines[j].startswith("===="))
            out += ["```text", *lines[i:end + 1], "```"]
            i = end + 1
            continue
        if line.rstrip().endswith("::"):
            text = line.rstrip()[:-2].rstrip()
            out.append(text + ":" if text else "")
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            body = textwrap.dedent("\n".join(block)).strip("\n")
            out += ["", "```text", *body.split("\n"), "```", ""]
            i = j
            continue
        out.append(line.replace("``", "`"))
        i += 1
    return "\n".join(out)


def _private_bases(cls: type) -> list[type]:
    """Private (underscore) base classes of ``cls``, recursively: their members are documented as ``cls``'s own."""
    found = []
    for base in cls.__bases__:
        if base.__name__.startswith("_"):
            found += [base, *_private_bases(base)]
    return found


def public_bases(cls: type) -> list[str]:
    """Names of ``cls``'s bases, with each private base replaced by its own public bases."""
    names = []
    for base in cls.__bases__:
        if base is object:
            continue
        names += public_bases(base) if base.__name__.startswith("_") else [base.__name__]
    return names


def class_members(cls: type) -> list[tuple[str, Any, str]]:
    """Public methods, class/static methods and properties defined on ``cls`` or on its private bases."""
    out = []
    seen = set()
    for name, raw in (item for owner in (cls, *_private_bases(cls)) for item in vars(owner).items()):
        if name.startswith("_") or name in seen:
            continue
        seen.add(name)
        if isinstance(raw, property):
            out.append((name, raw, "property"))
        elif isinstance(raw, classmethod):
            out.append((name, raw.__func__, "classmethod"))
        elif isinstance(raw, staticmethod):
            out.append((name, raw.__func__, "staticmethod"))
        elif inspect.isfunction(raw):
            out.append((name, raw, "method"))
    order = {"property": 0}
    return sorted(out, key=lambda item: (order.get(item[2], 1), _line(item[1].fget if item[2] == "property" else item[1]), item[0]))


def render_class(name: str, cls: type) -> list[str]:
    """Markdown for one class."""
    bases = public_bases(cls)
    title = f"class `{name}`" + (f" ({', '.join(bases)})" if bases else "")
    lines = [f"### {title}", ""]
    sig = signature(cls) if not issubclass(cls, BaseException) else None
    if sig is not None:
        lines += ["```python", f"{name}{sig}", "```", ""]
    lines += [_quote(docstring(cls)), ""]
    for member, obj, kind in class_members(cls):
        if kind == "property":
            doc = inspect.getdoc(obj) or "*(no docstring)*"
            lines += [f"- **`{member}`** (property): {_quote(doc)}"]
            continue
        prefix = "" if kind == "method" else f"{kind} "
        first, *rest = _quote(docstring(obj)).split("\n")
        sig = signature(obj, drop_self=kind != "staticmethod") or "(...)"
        lines += [f"- {prefix}**`{member}{sig}`**: {first}"]
        lines += [f"  {line}" if line else "" for line in rest]
    if class_members(cls):
        lines.append("")
    return lines


def render_function(name: str, fn: Any) -> list[str]:
    """Markdown for one function."""
    sig = signature(fn) or "(...)"
    return [f"### `{name}`", "", "```python", f"{name}{sig}", "```", "", _quote(docstring(fn)), ""]


def render() -> str:
    """The whole of api.md."""
    sys.path.insert(0, str(ROOT))
    import clrfit

    names, modules = exported(clrfit)
    lines = [HEADER, "## Contents", ""]
    lines.append("- [`clrfit`](#clrfit): " + ", ".join(f"`{name}`" for name, _ in names))
    for module in modules:
        summary = (inspect.getdoc(module) or "").split("\n")[0]
        lines.append(f"- [`{module.__name__}`](#{module.__name__.replace('.', '')}): {_quote(summary)}")
    lines.append("")
    lines += ["## clrfit", "", _quote(inspect.getdoc(clrfit) or ""), ""]
    for name, obj in names:
        lines += render_class(name, obj) if inspect.isclass(obj) else render_function(name, obj)
    for module in modules:
        lines += [f"## {module.__name__}", "", _quote(inspect.getdoc(module) or "*(no docstring)*"), ""]
        for const, text in constants(module):
            lines += [f"- `{const} = {text}`"]
        if constants(module):
            lines.append("")
        for name, obj in defined_here(module):
            lines += render_class(name, obj) if inspect.isclass(obj) else render_function(name, obj)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/api.md, or with ``--check`` report whether it is up to date."""
    return write_or_check(OUT, render, "docs/make_api.py", argv)


if __name__ == "__main__":
    sys.exit(main())
