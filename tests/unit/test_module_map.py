"""The docs a maintainer navigates by stay true: the module map matches the tree, every reference to a
section of docs/design.md (from code, SQL, tests or other docs) lands on a heading that exists, and the
import graph the map shows has no cycle.

When the map test fails, ``python scripts/module_map.py --write`` regenerates the table (keeping the
jobs written by hand) and marks a new module's job TODO; write that job, then the test passes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"

#: Trees that are not the project's text (environments, caches, generated output).
_SKIP_DIRS = {".git", ".venv", ".venv-checkov", "node_modules", "__pycache__", ".mypy_cache",
              ".ruff_cache", ".pytest_cache", ".hypothesis", "build", "dist", "results", "demo-run"}
_TEXT_SUFFIXES = {".py", ".sql", ".md", ".toml", ".cfg", ".sh", ".yaml", ".yml", ".json", ".txt", ""}


def _load_script(name: str = "module_map") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _text_files() -> Iterator[Path]:
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(top) / name
            if name not in _SKIP_DIRS and path.suffix in _TEXT_SUFFIXES and path.stat().st_size < 2_000_000:
                yield path


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        return ""


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown page (a repeated heading gets -1, -2, … as on GitHub)."""
    found: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = slug(m.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_slug_follows_github() -> None:
    assert slug("Outbox table (`outbox_commands`)") == "outbox-table-outbox_commands"
    assert slug("Adopted legacy table (the services' `\"OutboxCommand\"`)") == (
        "adopted-legacy-table-the-services-outboxcommand")
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_module_map_matches_the_tree() -> None:
    problems = _load_script().differences(ROOT)
    assert not problems, ("docs/design.md's module map differs from gxsubmit/ "
                          "(run: python scripts/module_map.py --write, then write any TODO job):\n"
                          + "\n".join(problems))


def test_module_map_lists_every_module_once() -> None:
    script = _load_script()
    listed = [line.split("|")[1].strip().strip("`") for line in script.page_rows(DESIGN.read_text("utf-8"))]
    assert len(listed) == len(set(listed))
    assert set(listed) == {script._short(m) for m in script.tree_modules(ROOT)}
    assert {"supervisor", "outbox", "fabric.client", "emulator.server"} <= set(listed)


def test_the_map_generator_reports_a_new_module(tmp_path: Path) -> None:
    """The check names a module missing from the map, one gone from the tree, and a stale import."""
    script = _load_script()
    (tmp_path / "gxsubmit").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "gxsubmit" / "__init__.py").write_text('"""x"""\n')
    (tmp_path / "gxsubmit" / "a.py").write_text("from gxsubmit import b\nimport psycopg\n")
    (tmp_path / "gxsubmit" / "b.py").write_text("from . import a\n")
    (tmp_path / "docs" / "design.md").write_text(
        f"{script.START}\n\n{script.HEADER[0]}\n{script.HEADER[1]}\n"
        "| `gxsubmit` | the package | — | — |\n| `a` | does a | — | — |\n| `gone` | old | — | — |\n"
        f"\n{script.END}\n")
    problems = "\n".join(script.differences(tmp_path))
    assert "missing from the map: b" in problems
    assert "in the map but not in the tree: gone" in problems
    assert "out of date: a" in problems and "| `a` | does a | `b` | `psycopg` |" in problems
    assert "no job written for b" in problems


def test_gxsubmit_modules_import_no_cycle() -> None:
    """No gxsubmit module imports, directly or through others, one that imports it back.

    Every import counts, function-level (lazy) ones too: a lazy import hides a cycle from Python but
    not from the reader, who can no longer read the modules bottom-up. Imports under
    ``if TYPE_CHECKING:`` are left out: they never run, and a helper class naming the class it serves in
    an annotation (``supervisor.health`` -> ``supervisor.arbiter``) is a reference for the type checker,
    not a dependency. Importing ``a.b`` is an edge to ``a.b`` only (not to the package ``a``).
    """
    script = _load_script()
    cycles = script.import_cycles(script.import_graph(ROOT))
    shown = "; ".join(" <-> ".join(c) for c in cycles)
    assert not cycles, f"import cycles among gxsubmit modules (move the shared part to one side): {shown}"


def test_the_cycle_check_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    script = _load_script()
    pkg = tmp_path / "gxsubmit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from gxsubmit.b import g\n")
    (pkg / "b.py").write_text("from gxsubmit import c\n")
    (pkg / "c.py").write_text("import gxsubmit.a\n")
    (pkg / "d.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from gxsubmit.e import E\n")
    (pkg / "e.py").write_text("from gxsubmit import d\n")
    assert script.import_cycles(script.import_graph(tmp_path)) == [["a", "b", "c"]]


def test_code_figures_measures_a_tree(tmp_path: Path) -> None:
    """scripts/code_figures.py (the size figures of a clean-up) on a tree small enough to count by hand."""
    figures = _load_script("code_figures")
    pkg = tmp_path / "gxsubmit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gxsubmit import b\n\n\nclass A:\n    def f(self):\n        return 1\n")
    (pkg / "b.py").write_text("def g():\n    from gxsubmit import a\n")
    fig = figures.figures(tmp_path)
    assert (fig["modules"], fig["module_lines"]) == (3, 8)
    assert [(s.name, s.lines) for s in fig["largest_classes"]] == [("a.A", 3)]
    assert [(s.name, s.lines) for s in fig["longest_functions"]] == [("a.A.f", 2), ("b.g", 2)]
    assert fig["cycles"] == [["a", "b"]]
    assert "import cycles (run-time imports, lazy ones included): 1" in figures.render(tmp_path, fig)


def test_every_design_reference_resolves() -> None:
    """``docs/design.md#<anchor>`` (code and SQL comments) and ``design.md#<anchor>`` (Markdown links)."""
    known = anchors(DESIGN.read_text("utf-8"))
    broken = []
    for path in _text_files():
        for m in re.finditer(r"design\.md#([A-Za-z0-9_\-]+)", _read(path)):
            if m.group(1) not in known:
                broken.append(f"{path.relative_to(ROOT)}: design.md#{m.group(1)}")
    assert not broken, "references to sections docs/design.md does not have:\n" + "\n".join(broken)


def test_readme_layout_names_every_module() -> None:
    """README's layout names every module (by its last name) and every subpackage (``fabric/``)."""
    script = _load_script()
    readme = (ROOT / "README.md").read_text("utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for name, path in script.tree_modules(ROOT).items():
        parts = name.split(".")[1:]
        if not parts:
            continue
        wanted = f"`{parts[-1]}/`" if path.name == "__init__.py" else f"`{parts[-1]}`"
        if wanted not in layout:
            missing.append(name)
    assert not missing, f"README.md's Layout does not name: {missing}"


@pytest.mark.parametrize("page", ["docs/design.md", "docs/operations.md", "README.md"])
def test_links_inside_a_page_resolve(page: str) -> None:
    text = (ROOT / page).read_text("utf-8")
    known = anchors(text)
    broken = [a for a in re.findall(r"\]\(#([^)\s]+)\)", text) if a not in known]
    assert not broken, f"{page}: links to missing headings: {broken}"


# Built from pieces so that this file does not match itself.
_NOWHERE = [
    re.compile("DESIGN" + r" ?§?\d"),             # the numbered sections of a page outside the repo
    re.compile("depart" + r"ure \d"),              # the numbered list design.md no longer has
    re.compile("seed" + r"-origin|reference" + r" §|reference/" + "(seed|fabric)"),
    re.compile(r"\.\./" + "shared/"),
    re.compile(r"(?:^|[\s`'\"(=:])/" + "work/"),     # a developer machine's paths
    re.compile(r"(?:^|[\s`'\"(=:])/" + r"tmp/(?!gxsubmit)\w"),  # scratch files (not the image's own)
]


def test_no_reference_points_outside_the_repo() -> None:
    found = []
    for path in _text_files():
        for n, line in enumerate(_read(path).splitlines(), 1):
            if any(p.search(line) for p in _NOWHERE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "references a reader cannot follow:\n" + "\n".join(found)
