"""What holds the house together: layers, no import circles, small modules, one composition
root, and every package's job in the first line of its ``__init__``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "spheroid_p2p"
PURE_FORBIDDEN = {"asyncio", "socket", "threading", "time", "torch", "numpy", "selectors"}
ML_FORBIDDEN_PREFIXES = (
    "spheroid_p2p.wire",
    "spheroid_p2p.core",
    "spheroid_p2p.net",
    "spheroid_p2p.node",
    "asyncio",
    "socket",
)
#: A module longer than this wants splitting by job (the issue says ~450).
MAX_MODULE_LINES = 450


def _imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module ``path`` imports (and ``module.name`` for each ``from module import
    name``); ``runtime_only`` leaves out ``if TYPE_CHECKING:`` blocks."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                runtime_only
                and isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
            ):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                names.add(child.module)
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at run time (lazy imports included)."""
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for imported in _imports(path, runtime_only=True):
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


@pytest.mark.parametrize("package", ["wire", "core"])
def test_pure_layers_import_no_io_clock_or_torch(package: str) -> None:
    """wire/ and core/ take time and randomness as arguments and never do I/O."""
    for path in (SRC / package).rglob("*.py"):
        bad = {name for name in _imports(path) if name.split(".")[0] in PURE_FORBIDDEN}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_ml_never_imports_networking() -> None:
    """The ml package stands alone: torch and the standard library only."""
    for path in (SRC / "ml").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith(ML_FORBIDDEN_PREFIXES)}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_wire_does_not_import_upper_layers() -> None:
    """wire depends on nothing above it (core, net, node, ml)."""
    for path in (SRC / "wire").rglob("*.py"):
        bad = {
            n
            for n in _imports(path)
            if n.startswith(
                ("spheroid_p2p.core", "spheroid_p2p.net", "spheroid_p2p.node", "spheroid_p2p.ml")
            )
        }
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_no_import_circles() -> None:
    """No module reaches itself through the modules it imports (lazy imports count)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_no_module_is_over_the_size_limit() -> None:
    """Modules stay small enough to read whole (split by job when they grow)."""
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"


def test_only_the_command_line_imports_the_composition_root() -> None:
    """``node.app`` composes the services; no service reaches back into it."""
    users = {n for n, deps in _graph().items() if "spheroid_p2p.node.app" in deps}
    assert users <= {"spheroid_p2p.node.cli"}, users


def test_every_package_says_its_job_in_the_first_line_of_its_init() -> None:
    for init in SRC.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(SRC)} has no docstring"
        first = doc.splitlines()[0]
        assert first.endswith(".") and len(first) <= 100, f"{init.relative_to(SRC)}: {first!r}"


def test_importing_the_protocol_layers_loads_neither_torch_nor_asyncio() -> None:
    """A fresh interpreter importing wire and core has no torch or asyncio in sys.modules."""
    code = (
        "import sys, spheroid_p2p.wire.codec, spheroid_p2p.core.handshake,"
        " spheroid_p2p.core.plan, spheroid_p2p.identity;"
        "print(sorted(m for m in ('torch', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_client_and_a_gossip_only_node_load_no_torch() -> None:
    """The client plans routes and carries bytes; a node that computes nothing loads no
    torch: both start fast."""
    code = (
        "import sys, spheroid_p2p.client.traversal, spheroid_p2p.client.status,"
        " spheroid_p2p.node.app;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
