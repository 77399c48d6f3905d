"""Services talk only through gRPC contracts: no service package imports another (shared
code lives in runtime/, openai_compat/, worker_api/, zerocopy/). cli/ composes them and
may import any. edge/ (Envoy's configuration, for cli/ and tools/) builds on shared code
only: it imports no service and no cli, and no service or shared package imports it.
models/ (the models made locally: for `helios up`, the tests and the benchmarks) likewise,
and cli/ is commands: making a model (torch, transformers, ...) is models/'s. The tests
share builders and fakes through tests/support only."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("proxy", "estimator", "registry", "storaged", "worker")
SHARED = ("runtime", "openai_compat", "worker_api", "zerocopy")
# What making a model takes; models/ imports these (lazily: see test_slim_imports.py).
MODEL_MAKING = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported_modules(path)}


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


def test_models_build_on_shared_code_and_the_cli_makes_no_model() -> None:
    crossings = []
    for path in sorted((REPO / "models").rglob("*.py")):
        for name in sorted(_imported_packages(path) & {*SERVICES, "cli", "edge"}):
            crossings.append(f"{path.relative_to(REPO)} imports {name}")
    # Services get their models from the registry, never by making one.
    for package in (*SERVICES, *SHARED, "edge"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "models" in _imported_packages(path):
                crossings.append(f"{path.relative_to(REPO)} imports models")
    for path in sorted((REPO / "cli").rglob("*.py")):
        for name in sorted(_imported_packages(path) & set(MODEL_MAKING)):
            crossings.append(f"{path.relative_to(REPO)} imports {name}")
    assert crossings == []


def test_tests_share_helpers_through_support_only() -> None:
    """tests/ holds test directories and support/, no module of its own; a helper another
    directory imports is support's (`from support.fakes import ...`), never reached into
    by its directory's name (`from e2e.mesh_harness import ...`)."""
    tests = REPO / "tests"
    assert sorted(p.name for p in tests.glob("*.py")) == []
    reaching = []
    for path in sorted(tests.rglob("*.py")):
        for module in sorted(_imported_modules(path)):
            directory, _, name = module.partition(".")
            if directory != "support" and (tests / directory / f"{name}.py").is_file():
                reaching.append(f"{path.relative_to(REPO)} imports {module}")
    assert reaching == []
