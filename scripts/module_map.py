"""The module map of docs/design.md, generated from the code so that it cannot drift.

Every module under ``gxsubmit/`` is one row: its one job (written by hand, kept from the page) and
what it imports (read from the code with ``ast``: gxsubmit modules, and packages from outside the
standard library). tests/unit/test_module_map.py fails when the page and the tree disagree.

    python scripts/module_map.py           # print the table as it should be (jobs kept from the page)
    python scripts/module_map.py --write   # rewrite the table in docs/design.md in place
    python scripts/module_map.py --check   # exit 1 and say what differs

A module new to the tree gets the job ``TODO``, which the check refuses: write its one job by hand.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gxsubmit"
DESIGN = ROOT / "docs" / "design.md"
START = "<!-- module-map:start (scripts/module_map.py --write keeps it current) -->"
END = "<!-- module-map:end -->"
HEADER = ("| module | its one job | imports from gxsubmit | imports from outside |",
          "|---|---|---|---|")
TODO = "TODO"


@dataclass(frozen=True)
class Row:
    """One module of the map: the name without the package prefix, its job and its imports."""

    module: str
    job: str
    internal: tuple[str, ...]
    external: tuple[str, ...]

    def line(self) -> str:
        inner = ", ".join(f"`{m}`" for m in self.internal) or "—"
        outer = ", ".join(f"`{m}`" for m in self.external) or "—"
        return f"| `{self.module}` | {self.job} | {inner} | {outer} |"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``gxsubmit/fabric/client.py`` -> ``gxsubmit.fabric.client``; a package is its ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tree_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every importable module of the package, by dotted name."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against ``current``)."""
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (never run: no edge at run time)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, known: set[str], *,
               runtime_only: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(gxsubmit modules, outside packages) that ``path`` imports anywhere, lazy imports included.

    ``runtime_only`` leaves out the imports under ``if TYPE_CHECKING:`` (the import graph's cycles).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_only(tree) if runtime_only else set()
    internal: set[str] = set()
    external: set[str] = set()

    def add(target: str) -> None:
        top = target.split(".")[0]
        if top == PACKAGE:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                internal.add(target)
        elif top and top not in sys.stdlib_module_names and top != "__future__":
            external.add(top)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, name, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
    short = sorted(_short(m) for m in internal)
    return tuple(short), tuple(sorted(external))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Which gxsubmit modules each module imports when it runs (short names; function-level imports
    included, ``TYPE_CHECKING`` ones not; importing ``a.b`` counts as an edge to ``a.b`` only, not to
    the package ``a`` that Python loads first)."""
    modules = tree_modules(root)
    known = set(modules)
    return {_short(name): set(imports_of(name, path, known, runtime_only=True)[0])
            for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each a cycle or several), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _short(module: str) -> str:
    return module[len(PACKAGE) + 1:] if module != PACKAGE else PACKAGE


def page_jobs(text: str) -> dict[str, str]:
    """The hand-written job of every module the page's table lists (module -> job)."""
    jobs: dict[str, str] = {}
    for line in _table_lines(text):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            jobs[cells[0].strip("`")] = cells[1]
    return jobs


def page_rows(text: str) -> list[str]:
    """The table's data lines as the page has them."""
    return [line for line in _table_lines(text) if line.startswith("| `")]


def _table_lines(text: str) -> list[str]:
    if START not in text or END not in text:
        raise SystemExit(f"docs/design.md has no module map between {START!r} and {END!r}")
    return text.split(START, 1)[1].split(END, 1)[0].strip().splitlines()


def generate(root: Path = ROOT, text: str | None = None) -> list[Row]:
    """The map as the tree says it is, with each module's job taken from the page (or TODO)."""
    jobs = page_jobs(text if text is not None else (root / "docs" / "design.md").read_text("utf-8"))
    modules = tree_modules(root)
    known = set(modules)
    rows = []
    for name, path in modules.items():
        internal, external = imports_of(name, path, known)
        short = _short(name)
        rows.append(Row(short, jobs.get(short, TODO), internal, external))
    return rows


def render(rows: list[Row]) -> str:
    return "\n".join([START, "", *HEADER, *(r.line() for r in rows), "", END])


def differences(root: Path = ROOT) -> list[str]:
    """What the page's map gets wrong about the tree, one line each (empty: they agree)."""
    text = (root / "docs" / "design.md").read_text("utf-8")
    rows = generate(root, text)
    wanted = {r.module: r.line() for r in rows}
    have = {line.split("|")[1].strip().strip("`"): line.strip() for line in page_rows(text)}
    out = [f"missing from the map: {m} (add: {wanted[m]})" for m in wanted if m not in have]
    out += [f"in the map but not in the tree: {m}" for m in have if m not in wanted]
    out += [f"out of date: {m}\n  page: {have[m]}\n  code: {wanted[m]}"
            for m in wanted if m in have and have[m] != wanted[m]]
    out += [f"no job written for {r.module}" for r in rows if r.job in (TODO, "")]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in docs/design.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when the page and the tree differ")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        print("\n".join(problems) or "module map matches the tree")
        return 1 if problems else 0
    text = DESIGN.read_text("utf-8")
    table = render(generate(ROOT, text))
    if args.write:
        head, rest = text.split(START, 1)
        DESIGN.write_text(head + table + rest.split(END, 1)[1], "utf-8")
        print(f"wrote {DESIGN.relative_to(ROOT)}; check jobs marked {TODO}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
