"""Heartbeat's stored_models: what the worker's node storaged holds, and in which tier.

The domain helper (:class:`worker.storage_client.StoredModels`: cached, bounded, never
failing) with scripted fetch functions and a fake clock; then the worker over real gRPC
with a real in-process storaged, itself fed by the real registry (every service on a
real port).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest_asyncio
from helios.v1 import registry_pb2_grpc, storage_pb2, storage_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as pb
from support.fakes import FakeEngine, serve_worker

from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.errors import UnavailableError
from runtime.server import RunningServer, start_server
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.remote import RegistryClient
from storaged.servicer import StorageServicer
from storaged.tiers import Tier, TierConfig
from worker.engine.base import EngineClient
from worker.models import ModelManager
from worker.servicer import WorkerServicer
from worker.storage_client import StorageClient, StoredModels, fastest_tiers

# -------------------------------------------------------------------- the domain helper


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedStats:
    """A fetch function: answers ``answer`` (or raises / stalls) and counts calls."""

    def __init__(self) -> None:
        self.answer: list[tuple[str, str]] = []
        self.calls = 0
        self.fail = False
        self.stall_s = 0.0

    async def __call__(self, timeout_s: float) -> Iterable[tuple[str, str]]:
        self.calls += 1
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.fail:
            raise UnavailableError("storaged 127.0.0.1:1 GetStats failed: UNAVAILABLE")
        return list(self.answer)


def test_fastest_tier_of_each_model_wins() -> None:
    entries = [("a", "ssd"), ("a", "ram"), ("b", "remote"), ("b", "nvme"), ("c", "bogus")]
    assert fastest_tiers(entries) == {"a": "ram", "b": "nvme"}


async def test_stats_are_asked_once_per_ttl_and_shared_by_concurrent_heartbeats() -> None:
    stats, clock = ScriptedStats(), Clock()
    stats.answer = [("org/m", "ram")]
    stored = StoredModels(stats, ttl_s=1.5, clock=clock)
    answers = await asyncio.gather(*(stored.current() for _ in range(5)))
    assert all(a == {"org/m": "ram"} for a in answers)
    assert stats.calls == 1
    stats.answer = [("org/m", "ssd"), ("org/n", "nvme")]
    clock.now += 1.0
    assert await stored.current() == {"org/m": "ram"}  # still cached
    clock.now += 0.6
    assert await stored.current() == {"org/m": "ssd", "org/n": "nvme"}
    assert stats.calls == 2


async def test_a_down_or_slow_storaged_reports_the_last_known_then_nothing() -> None:
    stats, clock = ScriptedStats(), Clock()
    stats.answer = [("org/m", "ram")]
    stored = StoredModels(stats, ttl_s=1.0, timeout_s=0.2, stale_after_s=10.0, clock=clock)
    assert await stored.current() == {"org/m": "ram"}

    stats.fail = True
    clock.now += 2.0
    assert await stored.current() == {"org/m": "ram"}  # last known
    assert stats.calls == 2
    assert await stored.current() == {"org/m": "ram"}
    assert stats.calls == 2  # a failure is not retried before the ttl either

    stats.fail, stats.stall_s = False, 5.0
    clock.now += 2.0
    started = time.monotonic()
    assert await stored.current() == {"org/m": "ram"}
    assert time.monotonic() - started < 2.0  # bounded by timeout_s, not the stall

    stats.fail, stats.stall_s = True, 0.0
    clock.now += 9.0  # the last answer is now 13 s old
    assert await stored.current() == {}


async def test_nothing_is_known_before_the_first_answer() -> None:
    stats = ScriptedStats()
    stats.fail = True
    assert await StoredModels(stats, clock=Clock()).current() == {}


# ------------------------------------------------------------- the worker over real gRPC


@dataclass
class Node:
    """A registry, a storaged fed by it, and a worker using that storaged."""

    registry: Registry
    storaged: storage_pb2_grpc.StorageServiceStub
    storaged_server: RunningServer
    worker: worker_pb2_grpc.WorkerServiceStub
    root: Path


def _manager() -> ModelManager:
    async def factory(name: str, path: Path) -> EngineClient:
        return FakeEngine(name)

    return ModelManager(factory, engine_kind="fake", capacity_bytes=1 << 20)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    registry = Registry.open(tmp_path / "registry")
    registry_servicer = RegistryServicer(registry)

    def register_registry(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry_servicer, server)
        return ["helios.v1.RegistryService"]

    registry_server = await start_server(
        ServerSettings(service="registry", metrics_port=-1), register_registry
    )
    registry_client = RegistryClient(registry_server.address)
    cache = ModelCache(
        [
            TierConfig(Tier.RAM, tmp_path / "node" / "ram", 4 << 20),
            TierConfig(Tier.SSD, tmp_path / "node" / "ssd", 64 << 20),
        ],
        registry_client,
        ChunkedDownloader([registry_client], connections=2),
    )
    storage_servicer = StorageServicer(cache)

    def register_storaged(server: grpc.aio.Server) -> list[str]:
        storage_pb2_grpc.add_StorageServiceServicer_to_server(storage_servicer, server)
        return ["helios.v1.StorageService"]

    storaged_server = await start_server(
        ServerSettings(service="storaged", metrics_port=-1), register_storaged
    )
    storage = StorageClient(storaged_server.address)
    worker = WorkerServicer(_manager(), worker_id="w-stored", storage=storage)
    worker_server = await serve_worker(worker)
    st_channel = grpc.aio.insecure_channel(storaged_server.address)
    w_channel = grpc.aio.insecure_channel(worker_server.address)
    try:
        yield Node(
            registry,
            storage_pb2_grpc.StorageServiceStub(st_channel),
            storaged_server,
            worker_pb2_grpc.WorkerServiceStub(w_channel),
            tmp_path,
        )
    finally:
        await w_channel.close(None)
        await st_channel.close(None)
        await worker_server.stop(0)
        await storage.close()
        await storaged_server.stop(0)
        await cache.close()
        await registry_client.close()
        await registry_server.stop(0)
        registry.close()


async def import_model(node: Node, model: str, size: int = 50_000) -> None:
    directory = node.root / "src" / model.replace("/", "_")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(b"w" * size)
    async for _ in node.registry.import_directory(directory, model):
        pass


async def stored_models(
    stub: worker_pb2_grpc.WorkerServiceStub, until: set[str], within_s: float = 5.0
) -> dict[str, int]:
    """Heartbeats until stored_models names ``until`` (the worker caches ~1.5 s)."""
    deadline = time.monotonic() + within_s
    while True:
        beat = await stub.Heartbeat(pb.HeartbeatRequest(), timeout=2)
        stored = {s.model: s.tier for s in beat.stored_models}
        if set(stored) == until or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.1)


async def test_heartbeat_lists_what_storaged_holds_with_its_tier(node: Node) -> None:
    await import_model(node, "org/alpha")
    await import_model(node, "org/beta")
    first = await node.worker.Heartbeat(pb.HeartbeatRequest(), timeout=2)
    assert list(first.stored_models) == []

    _ = [
        m
        async for m in node.storaged.EnsureModel(
            storage_pb2.EnsureModelRequest(model_id="org/alpha")
        )
    ]
    assert await stored_models(node.worker, {"org/alpha"}) == {
        "org/alpha": storage_pb2.CACHE_TIER_RAM
    }

    # A load through storaged (LoadModel without local_path) makes a second one local.
    _ = [m async for m in node.worker.LoadModel(pb.LoadModelRequest(model="org/beta"))]
    stored = await stored_models(node.worker, {"org/alpha", "org/beta"})
    assert stored == {
        "org/alpha": storage_pb2.CACHE_TIER_RAM,
        "org/beta": storage_pb2.CACHE_TIER_RAM,
    }


async def test_heartbeat_survives_storaged_going_away(node: Node) -> None:
    await import_model(node, "org/alpha")
    _ = [
        m
        async for m in node.storaged.EnsureModel(
            storage_pb2.EnsureModelRequest(model_id="org/alpha")
        )
    ]
    assert set(await stored_models(node.worker, {"org/alpha"})) == {"org/alpha"}
    await node.storaged_server.stop(0)
    await asyncio.sleep(1.6)  # past the cache: the next heartbeats ask the dead storaged
    for _ in range(3):
        started = time.monotonic()
        beat = await node.worker.Heartbeat(pb.HeartbeatRequest(), timeout=3)
        assert time.monotonic() - started < 1.5
        assert [s.model for s in beat.stored_models] == ["org/alpha"]  # last known
        assert beat.worker_id == "w-stored"


async def test_a_worker_without_storaged_reports_no_stored_models(tmp_path: Path) -> None:
    running = await serve_worker(WorkerServicer(_manager(), worker_id="w-bare"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            beat = await worker_pb2_grpc.WorkerServiceStub(channel).Heartbeat(
                pb.HeartbeatRequest(), timeout=2
            )
        assert beat.worker_id == "w-bare" and list(beat.stored_models) == []
    finally:
        await running.stop(0)
