"""Services talk only through gRPC contracts: no service package imports another (shared
code lives in runtime/, openai_compat/, worker_api/, zerocopy/). cli/ composes them and
may import any. edge/ (Envoy's configuration, for cli/ and tools/) builds on shared code
only: it imports no service and no cli, and no service or shared package imports it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("proxy", "estimator", "registry", "storaged", "worker")
SHARED = ("runtime", "openai_compat", "worker_api", "zerocopy")


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_service_imports_another_and_shared_code_imports_no_service() -> None:
    crossings = []
    for package in (*SERVICES, *SHARED):
        forbidden = set(SERVICES) - {package}
        for path in sorted((REPO / package).rglob("*.py")):
            for name in sorted(_imported_packages(path) & forbidden):
                crossings.append(f"{path.relative_to(REPO)} imports {name}")
    assert crossings == []


def test_the_edge_imports_no_service_and_nothing_below_it_imports_the_edge() -> None:
    crossings = []
    for path in sorted((REPO / "edge").rglob("*.py")):
        for name in sorted(_imported_packages(path) & {*SERVICES, "cli"}):
            crossings.append(f"{path.relative_to(REPO)} imports {name}")
    for package in (*SERVICES, *SHARED):
        for path in sorted((REPO / package).rglob("*.py")):
            if "edge" in _imported_packages(path):
                crossings.append(f"{path.relative_to(REPO)} imports edge")
    assert crossings == []
