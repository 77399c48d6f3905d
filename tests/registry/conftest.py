"""Fixtures shared by the registry tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import FakeHub, running_hub
from registry_testlib import write_model


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "src")


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with running_hub() as hub:
        yield hub
