"""The layout's rules (README, "Layout"), checked on the source: no import cycles at any depth (imports inside
functions count), and imports go down the stack, never up."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "leantune"
# The stack, bottom first; a module may import its own level and the ones below.
LEVELS = [
    {"errors", "problem", "metrics", "config", "log"},
    {"data"},
    {"speed", "report"},
    {"train"},
    {"run", "seeds"},
    {"glue"},
    {"cli", "__main__", "__init__"},
]
# Up-imports allowed by name (none left since the trackers moved to Accelerate's, in train/trackers.py).
ALLOWED_UP: set[tuple[str, str]] = set()


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("leantune", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leantune"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t not in (name, "leantune")}
    return graph


def _level(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LEVELS) if part in names)


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    cycles = []
    for start in graph:  # a path from start's imports back to start is a cycle
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_imports_go_down_the_stack():
    up = sorted(
        (m, t) for m, targets in _graph().items() for t in targets if _level(t) > _level(m) and (m, t) not in ALLOWED_UP
    )
    assert not up, f"imports that go up the stack: {up}"
