"""The package's layering: module-level imports only, and no import cycle at run time.

Walks the source of every module of clrfit with ``ast`` (nothing is imported).
An import inside a function is allowed only where it buys start-up time or
keeps an optional, heavy dependency out of ``import clrfit``: the allow-list
below says which and why. ``if TYPE_CHECKING:`` imports are for annotations and
never run, so they are not edges of the run-time graph.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clrfit"

#: (module, imported module): function-level imports that are allowed, with the reason.
ALLOWED_LAZY = {
    ("cli", "*"): "the command line starts fast: torch and the rest load only for the subcommand that needs them",
    ("__main__", "*"): "python -m clrfit hands over to the CLI",
    ("recorder", "plots"): "matplotlib loads only when a figure is drawn",
    ("lr_finder", "plots"): "matplotlib loads only when a figure is drawn",
    ("progress", "tqdm.notebook"): "tqdm's widget bar (IPython, ipywidgets) loads only inside a Jupyter kernel",
    ("datasets", "*"): "optional dataset dependencies (mnist1d, torchvision) load only for the dataset asked for",
    ("schedules", "plots"): "matplotlib loads only when a figure is drawn",
    ("plots", "*"): "IPython is looked up only when a figure is shown in a notebook",
    ("callbacks", "torch.utils.tensorboard"): "the optional tensorboard package loads only for a TensorBoardLogger",
    ("transfer", "torchvision"): "torchvision (seconds to import) loads only to look up a pretrained model's head",
    ("data", "vision"): "torchvision and PIL (seconds to import) load only for ModelData.from_folder / from_csv",
    ("fsdp", "*"): "torch.distributed.fsdp / .checkpoint take seconds to import: loaded only for strategy='fsdp' or a sharded checkpoint",
}


@functools.lru_cache(maxsize=1)
def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _target(node: ast.AST, module: str) -> list[str]:
    """Dotted names an import statement imports, package-relative names as ``clrfit.<name>``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level == 0:
        return [node.module or ""]
    base = "clrfit" + (f".{node.module}" if node.module else "")
    if node.module:
        return [base]
    return [f"clrfit.{a.name}" for a in node.names]  # from . import schedules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module, module: str) -> list[str]:
    """Imports that run when the module is imported (``TYPE_CHECKING`` blocks excluded)."""
    out: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.extend(_target(node, module))
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return out


def function_level_imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import inside a function or method."""
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    out += [(name, node.lineno) for name in _target(node, module)]
    return out


def _short(name: str) -> str:
    return name.removeprefix("clrfit.") if name.startswith("clrfit.") else name


def run_time_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """clrfit module -> the clrfit modules it imports at import time (the package ``__init__`` left out)."""
    graph = {}
    for module, tree in trees.items():
        if module == "__init__":
            continue
        edges = {_short(name).split(".")[0] for name in module_level_imports(tree, module) if name.startswith("clrfit.")}
        graph[module] = {e for e in edges if e in trees and e != "__init__"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle_at_run_time():
    graph = run_time_graph(modules())
    assert {"learner", "runtime", "state", "checkpoint", "lr_finder"} <= set(graph)
    assert "runtime" in graph["learner"] and "lr_finder" in graph["learner"]  # the walk sees real edges
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_imports_are_at_the_top_except_where_allowed(module):
    tree = modules()[module]
    lazy = [(name, line) for name, line in function_level_imports(tree, module)
            if (module, "*") not in ALLOWED_LAZY and (module, _short(name)) not in ALLOWED_LAZY]
    assert not lazy, f"clrfit/{module}.py imports inside functions (move them to the top): {lazy}"


def test_the_lazy_import_check_sees_imports_inside_functions():
    tree = ast.parse("import os\ndef f():\n    from . import learner\n    import json\n")
    assert function_level_imports(tree, "x") == [("clrfit.learner", 3), ("json", 4)]
    assert module_level_imports(tree, "x") == ["os"]
