"""Models kept asleep instead of unloaded (issue 14, fast swap): an engine that can sleep
(vLLM's sleep mode on a GPU) is put to sleep by an unload with keep_asleep, frees the
worker's capacity, and the next load of the model wakes it instead of starting an
engine; engines that cannot sleep are freed as before. The CPU build of vLLM has no sleep
mode, so the engine here is a fake; VllmEngine's calls into AsyncLLM are checked on a fake
AsyncLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from helios.v1 import worker_pb2 as pb
from support.fakes import FakeEngine

from runtime.errors import FailedPreconditionError, ResourceExhaustedError
from worker.engine.base import EngineClient
from worker.engine.vllm_config import VllmConfig, base_engine_kwargs
from worker.engine.vllm_engine import AsyncLlmEngine, VllmEngine
from worker.engine.vllm_pooling import VllmEmbeddingEngine
from worker.models import ModelLifecycle, ModelManager
from worker.servicer import WorkerServicer

WEIGHT_BYTES = 400


class SleepyEngine(FakeEngine):
    supports_sleep = True

    def __init__(self, name: str, fail_wake: bool = False) -> None:
        super().__init__(name)
        self.calls: list[str] = []
        self.fail_wake = fail_wake

    async def sleep(self) -> None:
        self.calls.append("sleep")

    async def wake_up(self) -> None:
        self.calls.append("wake_up")
        if self.fail_wake:
            raise RuntimeError("cuda out of memory")

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        await super().shutdown()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * WEIGHT_BYTES)
    return tmp_path


def manager_of(
    engines: list[EngineClient], capacity: int = 1000, sleepy: bool = True, **kw: Any
) -> ModelManager:
    async def factory(name: str, path: Path) -> EngineClient:
        engine = (SleepyEngine if sleepy else FakeEngine)(name)
        engines.append(engine)
        return engine

    return ModelManager(factory, engine_kind="fake", capacity_bytes=capacity, **kw)


async def load(manager: ModelManager, name: str, path: Path) -> str:
    progress = [p async for p in manager.load(name, path)]
    assert progress[-1].state is ModelLifecycle.READY
    return progress[-1].message


async def test_an_unload_keeps_a_sleeping_engine_and_the_next_load_wakes_it(
    model_dir: Path,
) -> None:
    engines: list[EngineClient] = []
    manager = manager_of(engines)
    await load(manager, "m", model_dir)
    assert manager.used_bytes == WEIGHT_BYTES
    await manager.unload("m", drain_timeout=1, keep_asleep=True)
    (engine,) = engines
    assert isinstance(engine, SleepyEngine) and engine.calls == ["sleep"]
    assert manager.lifecycle("m") is ModelLifecycle.ASLEEP
    assert manager.used_bytes == 0  # its accelerator memory is free
    with pytest.raises(FailedPreconditionError, match="asleep"):
        async with manager.acquire("m", "r1"):
            pass
    message = await load(manager, "m", model_dir)
    assert len(engines) == 1 and engine.calls == ["sleep", "wake_up"]  # no new engine
    assert message.startswith("awake in wake ")
    (status,) = manager.statuses()
    assert status.state is ModelLifecycle.READY and set(status.load_phases) == {"wake"}
    assert manager.used_bytes == WEIGHT_BYTES
    async with manager.acquire("m", "r2") as serving:
        assert serving is engine


async def test_without_keep_asleep_or_sleep_support_the_engine_is_freed(
    model_dir: Path,
) -> None:
    engines: list[EngineClient] = []
    manager = manager_of(engines)
    await load(manager, "m", model_dir)
    await manager.unload("m", drain_timeout=1)
    assert manager.lifecycle("m") is None and engines[0].calls == ["shutdown"]  # type: ignore[attr-defined]

    plain: list[EngineClient] = []
    manager = manager_of(plain, sleepy=False)
    await load(manager, "p", model_dir)
    await manager.unload("p", drain_timeout=1, keep_asleep=True)
    assert manager.lifecycle("p") is None
    assert isinstance(plain[0], FakeEngine) and plain[0].shut_down


async def test_at_most_max_asleep_models_sleep_the_longest_asleep_is_freed(
    model_dir: Path,
) -> None:
    engines: list[EngineClient] = []
    manager = manager_of(engines, max_asleep=1)
    for name in ("a", "b"):
        await load(manager, name, model_dir)
        await manager.unload(name, drain_timeout=1, keep_asleep=True)
        await asyncio.sleep(0.01)
    assert manager.lifecycle("a") is None and manager.lifecycle("b") is ModelLifecycle.ASLEEP
    assert [e.calls for e in engines] == [["sleep", "shutdown"], ["sleep"]]  # type: ignore[attr-defined]


async def test_waking_needs_room_and_a_failed_wake_frees_the_model(model_dir: Path) -> None:
    engines: list[EngineClient] = []
    manager = manager_of(engines, capacity=WEIGHT_BYTES)
    await load(manager, "a", model_dir)
    await manager.unload("a", drain_timeout=1, keep_asleep=True)
    await load(manager, "b", model_dir)  # a's memory was free for b
    with pytest.raises(ResourceExhaustedError):
        await load(manager, "a", model_dir)
    assert manager.lifecycle("a") is ModelLifecycle.ASLEEP  # still asleep, not lost
    await manager.unload("b", drain_timeout=1)
    a = engines[0]
    assert isinstance(a, SleepyEngine)
    a.fail_wake = True
    with pytest.raises(FailedPreconditionError, match="waking model a failed"):
        await load(manager, "a", model_dir)
    assert manager.lifecycle("a") is None and a.calls[-1] == "shutdown"
    await load(manager, "a", model_dir)  # loaded afresh
    assert len(engines) == 3


async def test_the_worker_service_passes_keep_asleep_and_reports_asleep(
    model_dir: Path,
) -> None:
    engines: list[EngineClient] = []
    manager = manager_of(engines)
    await load(manager, "m", model_dir)
    servicer = WorkerServicer(manager, worker_id="w")
    await servicer.UnloadModel(pb.UnloadModelRequest(model="m", keep_asleep=True), None)  # type: ignore[arg-type]
    beat = await servicer.Heartbeat(pb.HeartbeatRequest(), None)  # type: ignore[arg-type]
    (model,) = beat.models
    assert model.state == pb.MODEL_STATE_ASLEEP


class FakeAsyncLLM:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", {"level": level}))

    async def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", {}))


@pytest.mark.parametrize("engine_type", [VllmEngine, VllmEmbeddingEngine])
async def test_vllm_sleeps_at_level_one_only_with_sleep_mode(
    engine_type: type[AsyncLlmEngine],
) -> None:
    # Both engines on vLLM's AsyncLLM (generating and pooling) sleep the same way.
    engine = engine_type.__new__(engine_type)
    engine._model_name = "m"
    engine._llm = llm = FakeAsyncLLM()
    with pytest.raises(FailedPreconditionError, match="cannot sleep"):
        await engine.sleep()
    engine.supports_sleep = True
    await engine.sleep()
    await engine.wake_up()
    assert llm.calls == [("sleep", {"level": 1}), ("wake_up", {})]
    on = base_engine_kwargs(Path("/m"), VllmConfig(sleep_mode=True))
    assert on["enable_sleep_mode"] is True
    assert "enable_sleep_mode" not in base_engine_kwargs(Path("/m"), VllmConfig())
