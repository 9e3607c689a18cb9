"""The dependency rule of the design card, checked on the import statements themselves."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)


def _imports(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(REPO)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((str(path.relative_to(REPO)), node.module))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _violations(folder: str, allowed: set[str], allowed_prefixes: tuple[str, ...]) -> list[str]:
    bad = []
    for where, module in _imports(REPO / folder):
        if _top(module) in allowed or module.startswith(allowed_prefixes):
            continue
        bad.append(f"{where} imports {module}")
    return bad


def test_domain_imports_only_stdlib_and_attrs() -> None:
    assert _violations("src/domain", STDLIB | {"attrs"}, ("guestagent.domain",)) == []


def test_ports_import_only_domain() -> None:
    allowed = ("guestagent.domain", "guestagent.ports")
    assert _violations("src/ports", STDLIB | {"attrs"}, allowed) == []


def test_services_never_import_adapters_or_entrypoints() -> None:
    allowed = ("guestagent.domain", "guestagent.ports", "guestagent.services")
    assert _violations("src/services", STDLIB | {"attrs"}, allowed) == []


def test_adapters_never_import_entrypoints() -> None:
    bad = [
        f"{w} imports {m}"
        for w, m in _imports(REPO / "src/adapters")
        if m.startswith("guestagent.entrypoints")
    ]
    assert bad == []


def test_simulator_never_imports_the_agent() -> None:
    bad = [f"{w} imports {m}" for w, m in _imports(REPO / "simulator") if _top(m) == "guestagent"]
    assert bad == []


@pytest.mark.parametrize("module", ["domain", "ports"])
def test_pure_layers_do_no_io_calls(module: str) -> None:
    """open(), subprocess and sockets have no business in the pure layers."""
    offenders = []
    for path in (REPO / "src" / module).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                offenders.append(str(path))
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(_top(n) in {"subprocess", "socket", "requests", "shutil"} for n in names):
                    offenders.append(str(path))
    assert offenders == []
