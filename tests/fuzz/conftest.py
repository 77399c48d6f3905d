"""The mesh the fuzz suite attacks: `helios up` with the tiny model, started as a process
the way a user starts it (as tests/e2e does), plus what the assertions need: each
service's process (RSS), its log (ERROR records), and counters of the inputs sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzz_mesh import FuzzMesh
from support.mesh_harness import helios_up

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzMesh]:
    root = tmp_path_factory.mktemp("fuzzmesh")
    home = root / "home"
    model_dir = build_tiny_model(home / "models" / DEFAULT_MODEL_NAME)
    with helios_up(root, DEFAULT_MODEL_NAME, model_dir) as up:
        yield FuzzMesh(up.info, up.process, up.output, root / "state", home)
