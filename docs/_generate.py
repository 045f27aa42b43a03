"""The command line shared by the docs generators: write the page, or with ``--check`` say whether it is stale."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def write_or_check(out: Path, render: Callable[[], str], script: str, argv: list[str] | None = None) -> int:
    """Write ``render()`` to ``out``; with ``--check`` exit 1 (writing nothing) when ``out`` differs from it."""
    name = out.relative_to(out.parent.parent)
    parser = argparse.ArgumentParser(description=f"Generate {name}")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {name} differs from the generated text")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{name} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {name} ({len(text.splitlines())} lines)")
    return 0
