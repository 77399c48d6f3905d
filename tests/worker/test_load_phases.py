"""A model load timed by phase (issue 14): the fetch, the engine's own phases and the rest
of its start; one log line, the histogram, LoadModel's last message, the model's status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.fakes import FakeEngine

from cli.status import LOAD_PHASE_ORDER, describe_load
from runtime.errors import FailedPreconditionError
from worker.engine.base import EngineClient
from worker.load_phases import PHASES, LoadTimeline
from worker.models import ModelLifecycle, ModelManager
from worker.storage_client import DownloadProgress


def _count(phase: str) -> float:
    value = REGISTRY.get_sample_value(
        "helios_worker_model_load_phase_seconds_count", {"phase": phase}
    )
    return value or 0.0


def test_timeline_adds_the_engines_phases_and_calls_the_rest_engine_start() -> None:
    timeline = LoadTimeline("m")
    timeline.add("fetch", 1.5)
    timeline.add_engine(2.0, {"weights": 0.75, "compile": 0.5})
    assert timeline.phases == {
        "fetch": 1.5,
        "weights": 0.75,
        "compile": 0.5,
        "engine_start": 0.75,
    }
    # In load order, whatever order they were measured in.
    assert timeline.describe() == "fetch 1.50s, engine_start 0.75s, weights 0.75s, compile 0.50s"
    with pytest.raises(ValueError, match="unknown load phase"):
        timeline.add("lunch", 1.0)


async def test_a_load_from_the_store_reports_every_phase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow_engine(name: str, path: Path) -> EngineClient:
        await asyncio.sleep(0.05)
        engine = FakeEngine(name)
        engine.load_phases = {"weights": 0.02}
        return engine

    async def ensure(name: str, version: str) -> AsyncIterator[DownloadProgress]:
        await asyncio.sleep(0.05)
        yield DownloadProgress(5, 10)
        yield DownloadProgress(10, 10, local_dir=str(tmp_path))

    manager = ModelManager(slow_engine, engine_kind="fake", capacity_bytes=1 << 30)
    before = {p: _count(p) for p in ("fetch", "engine_start", "weights")}
    with caplog.at_level(logging.INFO, logger="worker.load_phases"):
        progress = [p async for p in manager.load_from_store("org/m", "v1", ensure)]
    last = progress[-1]
    assert last.state is ModelLifecycle.READY
    assert "fetch 0." in last.message and "engine_start 0." in last.message
    assert "weights 0.02s" in last.message
    (status,) = manager.statuses()
    assert set(status.load_phases) == {"fetch", "engine_start", "weights"}
    assert status.load_phases["fetch"] >= 0.05
    assert status.load_phases["engine_start"] >= 0.03  # 0.05 s in all, 0.02 s weights
    assert {p: _count(p) - before[p] for p in before} == {
        "fetch": 1,
        "engine_start": 1,
        "weights": 1,
    }
    (record,) = [r for r in caplog.records if r.getMessage() == "model load phases"]
    assert record.__dict__["outcome"] == "ready"
    assert set(record.__dict__["phases"]) == {"fetch", "engine_start", "weights"}


async def test_a_failed_load_is_logged_with_its_phases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(name: str, path: Path) -> EngineClient:
        raise FailedPreconditionError("corrupt weights")

    manager = ModelManager(broken, engine_kind="fake", capacity_bytes=1 << 30)
    with (
        caplog.at_level(logging.INFO, logger="worker.load_phases"),
        pytest.raises(FailedPreconditionError),
    ):
        async for _ in manager.load("org/m", tmp_path):
            pass
    (record,) = [r for r in caplog.records if r.getMessage() == "model load phases"]
    assert record.__dict__["outcome"] == "failed"
    assert "engine_start" in record.__dict__["phases"]


def test_helios_status_orders_the_phases_as_the_worker_does() -> None:
    assert LOAD_PHASE_ORDER == PHASES
    assert describe_load({"weights": 0.5, "fetch": 1.25}) == "fetch 1.25s, weights 0.50s"
    assert describe_load({}) == "-"
