"""Layering: wire and core are pure (no I/O, clocks or torch); ml never touches networking."""

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


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


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


def test_importing_the_protocol_layers_loads_neither_torch_nor_asyncio() -> None:
    """A fresh interpreter importing wire and core has no torch or asyncio in sys.modules."""
    code = (
        "import sys, spheroid_p2p.wire, spheroid_p2p.core.handshake, spheroid_p2p.identity;"
        "print(sorted(m for m in ('torch', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
