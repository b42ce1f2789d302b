"""The sidecar's layout, kept: one package per domain on a `core` that imports none of them, no
import cycle between modules, routers that do not import each other, the process management of
`make run` out of the application's reach, and modules small enough to read.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`. A package's
`__init__` importing its own modules is not a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
MAX_LINES = 400
MAX_TOP_LEVEL_FILES = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(SIDECAR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in SIDECAR.rglob("*.py")
        if "migrations" not in path.relative_to(SIDECAR).parts[:2] or path.name == "env.py"
    }


def imported(path: Path, known: set[str], package: str = "") -> Iterator[str]:
    """The sidecar modules `path` (in `package`, for relative imports) imports, wherever the
    import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield from _known(candidate if candidate in known else base, known)


def _known(name: str, known: set[str]) -> Iterator[str]:
    while name and name not in known:
        name = name.rpartition(".")[0]
    if name.startswith("sidecar"):
        yield name


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set(imported(path, known, package)) - {name}
        if path.name == "__init__.py":  # a package re-exporting its own modules
            edges = {edge for edge in edges if not edge.startswith(name + ".")}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_imports_in_functions_and_type_checking_blocks(
    tmp_path: Path,
) -> None:
    a = tmp_path / "a.py"
    a.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sidecar.core import audit\n"
        "def f():\n    import sidecar.core.models\n"
    )
    assert set(imported(a, {"sidecar.core.audit", "sidecar.core.models"})) == {
        "sidecar.core.audit",
        "sidecar.core.models",
    }
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]


def test_core_imports_no_domain() -> None:
    graph = import_graph()
    outside = {
        module: sorted(edge for edge in edges if not edge.startswith("sidecar.core"))
        for module, edges in graph.items()
        if module.startswith("sidecar.core")
    }
    assert {module: edges for module, edges in outside.items() if edges} == {}


def test_the_application_never_imports_the_launcher() -> None:
    graph = import_graph()
    importers = {
        module
        for module, edges in graph.items()
        if not module.startswith("sidecar.launcher")
        and any(edge.startswith("sidecar.launcher") for edge in edges)
    }
    assert importers == set()


def test_routers_never_import_routers() -> None:
    graph = import_graph()
    routers = {module for module in graph if module.rpartition(".")[2].endswith("router")}
    assert {module: graph[module] & routers for module in routers if graph[module] & routers} == {}


def test_only_the_dependency_providers_read_app_state() -> None:
    readers = {
        module_name(path)
        for path in SIDECAR.rglob("*.py")
        if "app.state" in path.read_text().replace("`app.state`", "")
        and module_name(path) not in ("sidecar.core.dependencies", "sidecar.main")
    }
    assert readers == set()


@pytest.mark.parametrize("path", sorted(SIDECAR.rglob("*.py")), ids=lambda p: str(p.name))
def test_no_module_is_over_400_lines(path: Path) -> None:
    if "versions" in path.parts:
        pytest.skip("a migration is a record, not a module to read")
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_top_level_holds_only_the_wiring() -> None:
    top = sorted(path.name for path in SIDECAR.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_FILES, top
