"""The sidecar's layout, kept: one package per domain on a `core` that imports none of them, no
import cycle between modules, routers (any module creating an APIRouter) that do not import each
other, the application's state read by its dependency providers alone, the process management of
`make run` out of the application's reach, and modules small enough to read.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`. A package's
`__init__` importing its own modules is not a cycle. An import the graph cannot see (importlib,
`__import__`, exec) is refused outright. Each check is read from the syntax tree, not the text,
and each has a test of its own showing it catches what it is for.
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


# --- what the import graph cannot see ------------------------------------------------------------

# Modules whose business is importing code by a name computed at run time. importlib.resources
# reads data files and imports nothing.
DYNAMIC_IMPORTERS = ("importlib", "runpy", "pkgutil", "zipimport", "imp")
HARMLESS = {"importlib.resources"}
IMPORTERS = {"__import__", "import_module"}


def _dynamic_module(name: str) -> bool:
    return name not in HARMLESS and name.split(".")[0] in DYNAMIC_IMPORTERS


def dynamic_imports(source: str) -> list[int]:
    """The lines of `source` that import, or may import, a module the import graph cannot see:
    importlib and its kin, `__import__`, `import_module`, exec and eval, by name or as strings
    (getattr(builtins, "__import__"))."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad = any(_dynamic_module(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            bad = not node.level and (
                any(_dynamic_module(f"{module}.{alias.name}") for alias in node.names)
                if module == "importlib"
                else _dynamic_module(module)
            )
        elif isinstance(node, ast.Name):
            bad = node.id in IMPORTERS or node.id in {"exec", "eval"}
        elif isinstance(node, ast.Attribute):
            bad = node.attr in IMPORTERS
        elif isinstance(node, ast.Constant):
            bad = node.value in IMPORTERS
        else:
            continue
        if bad:
            found.append(node.lineno)
    return sorted(set(found))


def test_no_dynamic_import() -> None:
    found = {
        str(path.relative_to(SIDECAR)): lines
        for path in SIDECAR.rglob("*.py")  # the migrations too
        if (lines := dynamic_imports(path.read_text()))
    }
    assert found == {}


def test_the_dynamic_import_check_sees_them_all() -> None:
    planted = [
        "import importlib",
        "import importlib.util",
        "from importlib import import_module",
        "from importlib import util",
        "import runpy",
        "from pkgutil import resolve_name",
        "x = __import__('sidecar.main')",
        "x = builtins.__import__('sidecar.main')",
        "x = getattr(builtins, '__import__')('sidecar.main')",
        "x = something.import_module('sidecar.main')",
        "exec('import sidecar.main')",
    ]
    for line in planted:
        assert dynamic_imports(line) == [1], line
    clean = (
        "from importlib import resources\nimport importlib.resources\n"
        "from sidecar.core import audit\nsession.exec(statement)\npattern = re.compile('x')\n"
    )
    assert dynamic_imports(clean) == []


# --- the routers -------------------------------------------------------------------------------


def creates_a_router(source: str) -> bool:
    """Whether `source` instantiates an APIRouter (or a subclass of its own), under whatever
    name it imported it."""
    tree = ast.parse(source)
    names = {"APIRouter"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name == "APIRouter" and a.asname}

    def is_router(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in names
        return isinstance(node, ast.Attribute) and node.attr == "APIRouter"

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(is_router(base) for base in node.bases):
            names.add(node.name)
    return any(isinstance(n, ast.Call) and is_router(n.func) for n in ast.walk(tree))


def router_modules() -> set[str]:
    return {
        name
        for name, path in modules().items()
        if name.rpartition(".")[2].endswith("router") or creates_a_router(path.read_text())
    }


def test_routers_never_import_routers() -> None:
    graph = import_graph()
    routers = router_modules()
    assert {module: graph[module] & routers for module in routers if graph[module] & routers} == {}


def test_a_router_is_any_module_that_creates_one() -> None:
    for source in (
        "from fastapi import APIRouter\nrouter = APIRouter(prefix='/x')\n",
        "import fastapi\nrouter = fastapi.APIRouter()\n",
        "from fastapi import APIRouter as Routes\nroutes = Routes()\n",
        "from fastapi import APIRouter\nclass Mine(APIRouter): ...\nrouter = Mine()\n",
    ):
        assert creates_a_router(source), source
    assert not creates_a_router("from fastapi import APIRouter\ndef f(r: APIRouter): ...\n")
    assert "sidecar.operations.health" in router_modules()  # not named *router
    assert "sidecar.studies.router" in router_modules()


# --- the application's state ---------------------------------------------------------------------

STATE_READERS = {"sidecar.core.dependencies", "sidecar.main"}
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "delattr", "hasattr"}


def _is_the_app(node: ast.expr) -> bool:
    """`app`, `….app`, `…["app"]`, `….get("app")` (and `…_app` for the first two)."""
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return name == "app" or name.endswith("_app")
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "app"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "app"
    )


def app_state_uses(source: str) -> list[int]:
    """The lines of `source` that reach the application's state: `.state` of the app, however
    the app is reached, and getattr and its kin with "state" (or with a computed name on the
    app)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "state" and _is_the_app(node.value):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            function = node.func
            name = function.id if isinstance(function, ast.Name) else ""
            name = function.attr if isinstance(function, ast.Attribute) else name
            if name not in ATTRIBUTE_FUNCTIONS:
                continue
            target, attribute = node.args[:2]
            if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                if attribute.value == "state":
                    found.append(node.lineno)
            elif _is_the_app(target):  # a name computed at run time: it may be "state"
                found.append(node.lineno)
    return sorted(set(found))


def test_only_the_dependency_providers_read_app_state() -> None:
    readers = {
        module_name(path): lines
        for path in SIDECAR.rglob("*.py")
        if module_name(path) not in STATE_READERS and (lines := app_state_uses(path.read_text()))
    }
    assert readers == {}


def test_the_app_state_check_sees_it_however_reached() -> None:
    planted = [
        "x = request.app.state.services",
        "x = app.state",
        "x = self.main_app.state",
        'x = request.scope["app"].state',
        'x = scope.get("app").state',
        'x = getattr(request.app, "state")',
        'setattr(anything, "state", None)',
        'x = builtins.getattr(thing, "state")',
        "x = getattr(request.app, name)",
    ]
    for line in planted:
        assert app_state_uses(line) == [1], line
    clean = (
        "x = process.state\nx = request.state\nx = getattr(report, name)\n"
        '"""app.state, in words"""\nx = getattr(request.app, "router")\n'
    )
    assert app_state_uses(clean) == []


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SIDECAR.rglob("*.py")), ids=lambda p: str(p.name))
def test_no_module_is_over_400_lines(path: Path) -> None:
    if "versions" in path.parts:
        pytest.skip("a migration is a record, not a module to read")
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_top_level_holds_only_the_wiring() -> None:
    top = sorted(path.name for path in SIDECAR.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_FILES, top
