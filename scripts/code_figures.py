"""Size figures of the gxsubmit package of a source tree, to compare two trees (before and after a
clean-up): the largest modules, classes and functions, how many modules, and the import cycles.

    python scripts/code_figures.py            # this checkout
    python scripts/code_figures.py OLD_TREE   # another tree: git archive REV | tar -x -C OLD_TREE

Lines are physical lines (a module's whole file; a class or function from its ``def``/``class`` line,
decorators left out, to its last line), so docstrings and comments count. The import graph is
scripts/module_map.py's (lazy imports included); cycles are counted with and without the imports
under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import module_map  # from the script's own folder, put on the path above

TOP = 10


@dataclass(frozen=True)
class Sized:
    """A module, class or function and its length in lines."""

    name: str
    lines: int


def _definitions(tree: ast.Module, module: str) -> tuple[list[Sized], list[Sized]]:
    """(classes, functions) of a module by qualified name; methods and nested functions included."""
    classes: list[Sized] = []
    functions: list[Sized] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                size = Sized(name, (child.end_lineno or child.lineno) - child.lineno + 1)
                (classes if isinstance(child, ast.ClassDef) else functions).append(size)
                walk(child, name)
            else:
                walk(child, prefix)

    walk(tree, module)
    return classes, functions


def figures(root: Path) -> dict[str, object]:
    """Every figure of the tree at ``root`` (which holds ``gxsubmit/``)."""
    modules: list[Sized] = []
    classes: list[Sized] = []
    functions: list[Sized] = []
    for name, path in module_map.tree_modules(root).items():
        text = path.read_text(encoding="utf-8")
        short = module_map._short(name)
        modules.append(Sized(short, len(text.splitlines())))
        c, f = _definitions(ast.parse(text, str(path)), short)
        classes += c
        functions += f
    runtime = module_map.import_cycles(module_map.import_graph(root))
    known = set(module_map.tree_modules(root))
    typed = module_map.import_cycles({
        module_map._short(n): set(module_map.imports_of(n, p, known)[0])
        for n, p in module_map.tree_modules(root).items()})

    def top(items: list[Sized]) -> list[Sized]:
        return sorted(items, key=lambda s: (-s.lines, s.name))[:TOP]

    return {
        "modules": len(modules), "module_lines": sum(m.lines for m in modules),
        "largest_modules": top(modules), "largest_classes": top(classes), "longest_functions": top(functions),
        "modules_over_400_lines": sum(1 for m in modules if m.lines > 400),
        "functions_over_50_lines": sum(1 for f in functions if f.lines > 50),
        "cycles": runtime, "cycles_with_type_checking": typed,
    }


def render(root: Path, fig: dict[str, object]) -> str:
    out = [f"tree: {root}",
           f"modules: {fig['modules']} ({fig['module_lines']} lines)",
           f"modules over 400 lines: {fig['modules_over_400_lines']}",
           f"functions over 50 lines: {fig['functions_over_50_lines']}"]
    for key, title in (("largest_modules", "largest modules"), ("largest_classes", "largest classes"),
                       ("longest_functions", "longest functions")):
        out.append(f"{TOP} {title} (lines):")
        out += [f"  {s.lines:5d}  {s.name}" for s in fig[key]]  # type: ignore[attr-defined]
    for key, title in (("cycles", "import cycles (run-time imports, lazy ones included)"),
                       ("cycles_with_type_checking", "import cycles counting TYPE_CHECKING imports too")):
        cycles: list[list[str]] = fig[key]  # type: ignore[assignment]
        out.append(f"{title}: {len(cycles)}")
        out += [f"  {' <-> '.join(c)}" for c in cycles]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=module_map.ROOT,
                        help="the tree that holds gxsubmit/ (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / module_map.PACKAGE).is_dir():
        parser.error(f"{root} has no {module_map.PACKAGE}/ folder")
    print(render(root, figures(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
