"""The whole local mesh, started the way a user starts it: `helios up`, as a process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.mesh_harness import Mesh, helios_up

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    # The fast tiny model, not `helios up`'s default (SmolLM2, slower to build and run).
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    with helios_up(root, DEFAULT_MODEL_NAME, model_dir) as mesh:
        yield mesh
