"""The docs: links resolve, figures come from docs/make_figures.py, api.md matches the docstrings."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MAX_PNG_BYTES = 100 * 1024


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


def test_slug_rule_matches_githubs_examples():
    assert _slug("CircularLR: `use_clr=(div, cut_div)`") == "circularlr-use_clrdiv-cut_div"
    assert _slug("SGDR: cosine annealing with warm restarts") == "sgdr-cosine-annealing-with-warm-restarts"
    assert _slug("clrfit.callback") == "clrfitcallback"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_docs_have_the_promised_pages():
    names = {p.name for p in DOCS.glob("*.md")}
    for page in ["index.md", "schedules.md", "lr_finder.md", "api.md", "cli.md", "checkpoints.md",
                 "coming_from_fastai_pytorch.md", "distributed.md", "parameters.md"]:
        assert page in names


def test_every_docs_figure_is_drawn_by_make_figures(tmp_path, monkeypatch):
    figures = _load("make_figures")
    monkeypatch.setattr(figures, "IMG", tmp_path)
    drawn = {p.name for p in figures.main(trained=False)} | set(figures.TRAINED)
    committed = {p.name for p in (DOCS / "img").glob("*.png")}
    assert drawn == committed, "docs/img must hold exactly what python docs/make_figures.py writes"
    used = {Path(t).name for page in PAGES for t in _links(page) if t.endswith(".png")}
    assert used <= committed
    assert drawn - used == set(), f"figures drawn but used nowhere: {drawn - used}"
    for name in committed:
        assert (DOCS / "img" / name).stat().st_size <= MAX_PNG_BYTES, f"{name} is too large for the repo"


def test_schedule_figures_show_the_library_values():
    # The pictures are evaluated from clrfit's schedules; spot-check one against the contract.
    figures = _load("make_figures")
    values = figures.fit_values(1, cycle_len=3, use_clr=(20, 5, 0.95, 0.85))
    n = 3 * figures.NB
    peak = n // 5
    assert len(values.lrs) == n
    assert values.lrs[0] == pytest.approx(1 / 20)
    assert values.lrs[peak] == pytest.approx(1.0)
    assert values.momentums[peak] == pytest.approx(0.85)
    assert max(range(n), key=values.lrs.__getitem__) == peak


@pytest.mark.slow  # slow so that a docstring edit elsewhere never blocks a merge; CI still checks it
def test_api_reference_is_up_to_date():
    api = _load("make_api")
    assert (DOCS / "api.md").read_text(encoding="utf-8") == api.render(), "run python docs/make_api.py"


@pytest.mark.slow  # runs the CLI five times
def test_cli_page_is_up_to_date():
    cli = _load("make_cli")
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == cli.render(), "run python docs/make_cli.py"


def test_index_links_every_guide():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


def test_api_reference_covers_the_public_api():
    api = _load("make_api")
    text = api.render()
    for name in ["class `Learner`", "fit_cyclic", "fit_one_cycle", "lr_find2", "class `Recorder`", "plot_lr",
                 "class `CircularLR`", "class `OneCycle`", "class `SGDR`", "class `CyclicLR`", "`preview`"]:
        assert name in text, name
    assert "fit(lrs: float | Sequence[float], n_cycle: int" in text


def test_generator_check_mode_flags_a_stale_page_and_writes_nothing(tmp_path, capsys):
    generate = _load("_generate")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    assert generate.write_or_check(page, lambda: "new\n", "docs/make_page.py", ["--check"]) == 1  # missing
    assert not page.exists()
    page.write_text("old\n", encoding="utf-8")
    assert generate.write_or_check(page, lambda: "new\n", "docs/make_page.py", ["--check"]) == 1
    assert page.read_text(encoding="utf-8") == "old\n"
    assert "docs/page.md is out of date: run python docs/make_page.py" in capsys.readouterr().err
    assert generate.write_or_check(page, lambda: "new\n", "docs/make_page.py", []) == 0
    assert page.read_text(encoding="utf-8") == "new\n"
    assert generate.write_or_check(page, lambda: "new\n", "docs/make_page.py", ["--check"]) == 0


# --------------------------------------------------------------------------- the public API fence


def test_the_public_api_is_about_twenty_names_and_each_resolves():
    import clrfit

    assert 15 <= len(clrfit.__all__) <= 24
    for name in ["Learner", "ModelData", "Recorder", "Callback", "Checkpoint", "Schedule", "preview",
                 "Suggestions", "DivergenceError", "ArgumentError", "accuracy", "datasets", "models", "schedules"]:
        assert name in clrfit.__all__, name
    namespace: dict = {}
    exec("from clrfit import *", namespace)
    assert set(clrfit.__all__) <= set(namespace)
    import types

    assert all(isinstance(namespace[m], types.ModuleType) for m in ("datasets", "models", "schedules"))
    assert namespace["preview"] is namespace["schedules"].preview
    with pytest.raises(AttributeError, match="no attribute 'Lerner'"):
        clrfit.Lerner  # noqa: B018


def test_api_reference_documents_only_the_api():
    import clrfit

    import types

    text = _load("make_api").render()
    sections = re.findall(r"^## (clrfit\S*)", text, re.M)
    modules = sorted(n for n in clrfit.__all__ if isinstance(getattr(clrfit, n), types.ModuleType))
    assert {"datasets", "models", "schedules"} <= set(modules)
    assert sections == ["clrfit"] + [f"clrfit.{m}" for m in modules]  # one section per exported module, no other
    for name in clrfit.__all__:
        assert (f"## clrfit.{name}" if name in modules else f"`{name}`") in text, name
    for internal in ("ParamScheduler", "ProgressCallback", "format_row", "save_state", "check_number", "build_parser"):
        assert internal not in text, internal


# --------------------------------------------------------------------------- docs/parameters.md


def test_args_sections_are_parsed_name_by_name():
    params = _load("make_parameters")
    doc = """Train.

    Args:
        lrs: number > 0, per group;
            the peak for cyclical schedules.
        n_cycle (int): int >= 1.
        base_momentum, max_momentum: number >= 0 | per group.
        **options: see below.

    Returns:
        the recorder.
    """
    import inspect

    parsed = params.parse_args_section(inspect.cleandoc(doc))
    assert parsed == {"lrs": "number > 0, per group; the peak for cyclical schedules.", "n_cycle": "int >= 1.",
                      "base_momentum": "number >= 0 | per group.", "max_momentum": "number >= 0 | per group.",
                      "options": "see below."}
    assert params.parse_args_section("No section here.") == {}

    def fit(lrs: float, n_cycle: int = 1, cycle_len: int | None = None, **options) -> None:
        """Fit.

        Args:
            lrs: a | b.
            n_cycle: int >= 1.
        """

    rows = params.parameter_table(fit, fit)
    assert rows[2:] == ["| `lrs` | a \\| b. | required |", "| `n_cycle` | int >= 1. | `1` |",
                        f"| `cycle_len` | {params.MISSING} | `None` |", f"| `**options` | {params.MISSING} |  |"]


def test_parameters_page_lists_every_cli_option_from_the_parser():
    from clrfit import cli

    params = _load("make_parameters")
    text = "\n".join(params.cli_tables())
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, p in sub.choices.items():
        assert f"### `clrfit {command}`" in text
        for action in p._actions:
            if action.option_strings and action.help != "==SUPPRESS==" and "-h" not in action.option_strings:
                assert f"`{action.option_strings[0]}`" in text, (command, action.option_strings)
    assert "`--iterations`" not in text  # the old name of --cycle-iterations is accepted, not advertised


@pytest.mark.slow  # as api.md: a docstring edit elsewhere must not block a merge; CI checks it
def test_parameters_page_is_up_to_date():
    params = _load("make_parameters")
    assert (DOCS / "parameters.md").read_text(encoding="utf-8") == params.render(), "run python docs/make_parameters.py"


def test_the_fit_signatures_document_every_parameter():
    """fit, fit_cyclic and fit_one_cycle carry an Args: entry for each parameter (the generator's source)."""
    params = _load("make_parameters")
    gaps = [gap for gap in params.missing() if gap.startswith(("learn.fit(", "learn.fit_cyclic(", "learn.fit_one_cycle("))]
    assert gaps == []
    assert {title for title, _, _ in params.entry_points()} >= {"learn.fit(lrs, n_cycle, ...)", "Learner(model, data, ...)"}
