"""The code base stays clean under the project's ruff settings (pyproject.toml) and has no import circles."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_no_import_circles_between_project_modules():
    """Module-level imports of `src.*` form no cycle (imports inside functions load lazily and are allowed)."""
    paths = [*(ROOT / "src").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    names = {path: ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for path in paths}
    modules = set(names.values())
    graph: dict[str, set[str]] = {}
    for path, name in names.items():
        graph[name] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                sub = {f"{node.module}.{a.name}" for a in node.names} & modules  # `from src.sweep import study`
                graph[name] |= sub or {node.module}
    assert graph["src.sweep.engine"] >= {"src.sweep.study", "src.sweep.runner"}  # the graph sees real edges

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, stack + [node])

    for module in graph:
        visit(module, [])
