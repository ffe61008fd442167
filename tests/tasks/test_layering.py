"""Data flows one way: ``runner`` uses ``tasks``, never the reverse (re-evaluating a saved run is runner work)."""
from __future__ import annotations

import ast
from pathlib import Path

TASKS = Path(__file__).resolve().parents[2] / "tasks"


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_tasks_module_imports_runner():
    files = sorted(TASKS.rglob("*.py"))
    assert len(files) > 10
    offenders = [str(p.relative_to(TASKS)) for p in files if "runner" in imported_packages(p)]
    assert offenders == []
