"""The code base stays clean under the project's ruff settings (pyproject.toml) and has no import circles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def _module_level(nodes: list[ast.stmt]) -> list[ast.stmt]:
    """Every statement run when the module is imported, or read by a type checker: the body, and what is
    nested in `if` (TYPE_CHECKING included), `try` and `with` blocks and class bodies; not function bodies,
    which import lazily."""
    out: list[ast.stmt] = []
    for node in nodes:
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            out += _module_level(getattr(node, field, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            out += _module_level(handler.body)
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports at module level (TYPE_CHECKING imports count)."""
    paths = [p for package in packages for p in (root / package).rglob("*.py")]
    names = {path: ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for path in paths}
    modules = set(names.values())
    graph: dict[str, set[str]] = {}
    for path, name in names.items():
        graph[name] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, package)
                if module in modules:
                    sub = {f"{module}.{a.name}" for a in node.names} & modules  # `from . import study`
                    graph[name] |= sub or {module}
    return graph


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an import names: `from ..errors import X` in src.sweep.* is src.errors."""
    if not node.level:
        return node.module or ""
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            circle = visit(nxt, stack + [node])
            if circle:
                return circle
        done.add(node)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle:
            return circle
    return None


def test_no_import_circles_between_project_modules():
    """Module-level imports of `src.*`, TYPE_CHECKING ones included, form no cycle (imports inside functions
    load lazily and are allowed)."""
    graph = import_graph(ROOT, ("src", "hydra_plugins"))
    assert graph["src.sweep.engine"] >= {"src.sweep.study", "src.sweep.prepare"}  # the graph sees real edges
    assert "src.sweep.runner" in graph["src.sweep.context"]  # ... and TYPE_CHECKING ones
    circle = find_circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}"


def test_a_circle_through_a_type_checking_import_is_caught(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\n")   # relative, as the project's modules import
    (package / "b.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.a import A\n\n"
                                  "class B:\n    def f(self) -> None:\n        from pkg.a import late  # lazy: no edge\n")
    assert find_circle(import_graph(tmp_path, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("class B:\n    def f(self) -> None:\n        from pkg.a import late\n")
    assert find_circle(import_graph(tmp_path, ("pkg",))) is None
