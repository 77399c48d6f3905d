"""Storage-tier-aware placement: agents whose node storaged already holds a model's files
in a fast tier go first among the agents the model fits.

Domain tests of best_fit and the agent registry, then the cold path over real gRPC: the
real registry, two real storageds fed by it, two real workers (fake engines) each with
its own storaged, the proxy's GrpcWorkerConnection heartbeats and its cold starts (ColdStarts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest_asyncio
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    registry_pb2_grpc,
    storage_pb2_grpc,
    worker_pb2_grpc,
)
from helios.v1 import storage_pb2 as spb
from support.fakes import FakeEngine, serve

from proxy.admin import AdminServicer
from proxy.cold_start import ColdStarts
from proxy.estimate import MemoryEstimator
from proxy.fleet import CacheLevel, ModelOnAgent, WorkerPool, WorkerStatus
from proxy.placement import NoFit, best_fit
from proxy.registry import RegistryCatalogue
from proxy.registry_client import GrpcRegistryClient
from proxy.warm_pools import WarmPools
from proxy.worker_client import GrpcWorkerConnection
from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.server import RunningServer
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.remote import RegistryClient
from storaged.servicer import StorageServicer
from storaged.tiers import Tier, TierConfig
from worker.engine.base import EngineClient
from worker.models import ModelManager
from worker.servicer import WorkerServicer
from worker.storage_client import StorageClient

# ---------------------------------------------------------------------------- domain


def pool_with(
    free: dict[str, int], stored: dict[str, dict[str, CacheLevel]], total: int = 1000
) -> WorkerPool:
    pool = WorkerPool(free)
    for address, room in free.items():
        pool.record_heartbeat(
            address,
            worker_id=address,
            healthy=True,
            memory_total=total,
            memory_free=room,
            stored=stored.get(address, {}),
        )
    return pool


def chosen(pool: WorkerPool, need: int, model: str = "org/m") -> str:
    choice = best_fit(pool.agents(), model, need)
    assert not isinstance(choice, NoFit), choice
    return choice.address


def test_a_faster_tier_wins_among_fitting_agents_over_a_tighter_fit() -> None:
    free = {"tight": 110, "ram": 900, "nvme": 500}
    # Without tiers: the tightest fit.
    assert chosen(pool_with(free, {}), 100) == "tight"
    # storaged holding the files on NVMe beats downloading them; RAM beats NVMe.
    assert chosen(pool_with(free, {"nvme": {"org/m": CacheLevel.NVME}}), 100) == "nvme"
    both = {"nvme": {"org/m": CacheLevel.NVME}, "ram": {"org/m": CacheLevel.RAM}}
    assert chosen(pool_with(free, both), 100) == "ram"
    # Same tier: the tightest fit again.
    same = {"ram": {"org/m": CacheLevel.RAM}, "nvme": {"org/m": CacheLevel.RAM}}
    assert chosen(pool_with(free, same), 100) == "nvme"
    # Another model's files count for nothing.
    assert chosen(pool_with(free, {"ram": {"org/other": CacheLevel.RAM}}), 100) == "tight"


def test_a_faster_tier_never_wins_where_the_model_does_not_fit() -> None:
    free = {"small": 50, "big": 400}
    pool = pool_with(free, {"small": {"org/m": CacheLevel.RAM}})
    assert chosen(pool, 100) == "big"
    pool.view("big").reserved = 350  # promised to a load in flight: 50 left
    no_fit = best_fit(pool.agents(), "org/m", 100)
    assert isinstance(no_fit, NoFit) and no_fit.largest_free == 50


def test_tiers_of_unroutable_agents_and_holders_do_not_matter() -> None:
    free = {"a": 500, "b": 200}
    pool = pool_with(free, {"a": {"org/m": CacheLevel.RAM}})
    pool.record_failure("a")
    pool.record_failure("a")  # two failed heartbeats: not routable
    assert chosen(pool, 100) == "b"


def test_an_agent_whose_load_failed_can_be_chosen_again() -> None:
    """A load that failed (storaged was down) leaves the model 'failed' on the agent; once
    the cause is gone the agent must be placeable again, else a cold start is a permanent
    503 'no worker is available' (seen in the fault suite after a storaged restart)."""
    pool = pool_with({"a": 500}, {})
    pool.view("a").models["org/m"] = ModelOnAgent("org/m", "failed", error="storaged down")
    assert chosen(pool, 100) == "a"
    pool.view("a").models["org/m"] = ModelOnAgent("org/m", "loading")
    assert isinstance(best_fit(pool.agents(), "org/m", 100), NoFit)


def test_cache_level_comes_from_the_heartbeat_case_insensitively() -> None:
    pool = pool_with({"a": 500}, {"a": {"Org/M": CacheLevel.NVME}})
    agent = pool.view("a")
    assert agent.cache_level("org/m") is CacheLevel.NVME
    assert agent.cache_level("ORG/M") is CacheLevel.NVME
    assert agent.cache_level("org/x") is CacheLevel.REMOTE
    pool.mark_model("a", ModelOnAgent("org/m", "ready"))
    assert agent.cache_level("org/m") is CacheLevel.GPU
    # The next heartbeat replaces what storaged holds: evicted files are forgotten.
    pool.record_heartbeat("a", worker_id="a", healthy=True, memory_total=1000, memory_free=500)
    assert agent.stored == {} and agent.cache_level("org/x") is CacheLevel.REMOTE


# ----------------------------------------------------------------- over real gRPC


@dataclass
class Agent:
    """A worker and its node's storaged."""

    address: str
    cache: ModelCache
    storage: StorageClient
    servers: list[RunningServer]


async def start_agent(root: Path, registry_address: str, capacity: int) -> Agent:
    client = RegistryClient(registry_address)
    cache = ModelCache(
        [
            TierConfig(Tier.RAM, root / "ram", 4 << 20),
            TierConfig(Tier.SSD, root / "ssd", 64 << 20),
        ],
        client,
        ChunkedDownloader([client], connections=2),
    )
    storaged = await serve(
        "StorageService",
        storage_pb2_grpc.add_StorageServiceServicer_to_server,
        StorageServicer(cache),
    )
    storage = StorageClient(storaged.address)

    async def factory(name: str, path: Path) -> EngineClient:
        return FakeEngine(name)

    manager = ModelManager(factory, engine_kind="fake", capacity_bytes=capacity)
    servicer = WorkerServicer(manager, worker_id=root.name, storage=storage)
    worker = await serve(
        "WorkerService", worker_pb2_grpc.add_WorkerServiceServicer_to_server, servicer
    )
    return Agent(worker.address, cache, storage, [worker, storaged])


@dataclass
class Mesh:
    registry: Registry
    registry_address: str
    agents: dict[str, Agent]
    root: Path


@pytest_asyncio.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    registry = Registry.open(tmp_path / "registry")
    registry_server = await serve(
        "RegistryService",
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(registry),
    )
    # "roomy" has far more free memory than the model needs; "tight" just enough.
    agents = {
        "roomy": await start_agent(tmp_path / "roomy", registry_server.address, 10 << 20),
        "tight": await start_agent(tmp_path / "tight", registry_server.address, 200_000),
    }
    try:
        yield Mesh(registry, registry_server.address, agents, tmp_path)
    finally:
        for agent in agents.values():
            for server in agent.servers:
                await server.stop(0)
            await agent.storage.close()
            await agent.cache.close()
        await registry_server.stop(0)
        registry.close()


async def import_model(mesh: Mesh, model: str, size: int = 100_000) -> None:
    directory = mesh.root / "src" / model.replace("/", "_")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(b"w" * size)
    async for _ in mesh.registry.import_directory(directory, model):
        pass


def record(pool: WorkerPool, address: str, status: WorkerStatus) -> None:
    """What Heartbeats.beat records of one heartbeat."""
    pool.record_heartbeat(
        address,
        worker_id=status.worker_id,
        ready_models=status.ready_models,
        known_models=status.known_models,
        healthy=status.healthy,
        models=list(status.models) or None,
        state=status.state,
        memory_total=status.memory_total,
        memory_free=status.memory_free,
        memory_source=status.memory_source,
        queue_depth=status.queue_depth,
        role=status.role,
        stored=status.stored,
    )


async def heartbeat_until_stored(
    connection: GrpcWorkerConnection, model: str, within_s: float = 5.0
) -> WorkerStatus:
    """The worker caches storaged's answer ~1.5 s: beat until it names ``model``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        status = await connection.heartbeat(deadline_s=2)
        if model in status.stored or loop.time() > deadline:
            return status
        await asyncio.sleep(0.1)


async def test_cold_path_picks_the_agent_whose_storaged_holds_the_model(mesh: Mesh) -> None:
    await import_model(mesh, "org/alpha")
    roomy, tight = mesh.agents["roomy"], mesh.agents["tight"]
    # Only roomy's node has the files (in RAM); tight would have to download them.
    async with grpc.aio.insecure_channel(roomy.storage.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        _ = [m async for m in stub.EnsureModel(spb.EnsureModelRequest(model_id="org/alpha"))]

    pool = WorkerPool([roomy.address, tight.address])
    connections = {a: GrpcWorkerConnection(a) for a in pool.addresses}
    registry_client = GrpcRegistryClient(mesh.registry_address)
    try:
        status = await heartbeat_until_stored(connections[roomy.address], "org/alpha")
        assert status.stored == {"org/alpha": CacheLevel.RAM}
        record(pool, roomy.address, status)
        bare = await connections[tight.address].heartbeat(deadline_s=2)
        assert bare.stored == {}
        record(pool, tight.address, bare)

        # The memory fit alone would pick tight (the least left over).
        need = 100_000 + len('{"model_type": "llama"}')
        known = pool.view(roomy.address).stored
        pool.view(roomy.address).stored = {}
        plain = best_fit(pool.placeable_agents(), "org/alpha", need)
        assert not isinstance(plain, NoFit) and plain.address == tight.address
        pool.view(roomy.address).stored = known

        control = ColdStarts(
            pool,
            connections,
            (),
            MemoryEstimator(None),
            registry=RegistryCatalogue(registry_client),
        )
        await control.registry.refresh()  # type: ignore[union-attr]
        address = await control.replica("org/alpha", deadline_s=20)
        assert address == roomy.address
        after = await connections[roomy.address].heartbeat(deadline_s=2)
        assert "org/alpha" in after.ready_models
        # tight's storaged was never asked for the files.
        assert not tight.cache.versions

        # Operators see it: admin memory stats list the stored model with its tier.
        admin = await serve(
            "AdminService",
            admin_pb2_grpc.add_AdminServiceServicer_to_server,
            AdminServicer(WarmPools(control)),
        )
        try:
            record(pool, roomy.address, after)
            pool.view(tight.address).stored = {"org/beta": CacheLevel.NVME}
            async with grpc.aio.insecure_channel(admin.address) as channel:
                stats = await admin_pb2_grpc.AdminServiceStub(channel).GetMemoryStats(
                    admin_pb2.GetMemoryStatsRequest(), timeout=5
                )
            by_address = {w.address: w for w in stats.workers}
            roomy_models = {
                m.model: (m.state, m.cache_level) for m in by_address[roomy.address].model_states
            }
            assert roomy_models == {"org/alpha": ("ready", "gpu")}  # loaded: not listed twice
            tight_models = {
                m.model: (m.state, m.cache_level) for m in by_address[tight.address].model_states
            }
            assert tight_models == {"org/beta": ("stored", "nvme")}
        finally:
            await admin.stop(0)
    finally:
        await registry_client.close()
        for connection in connections.values():
            await connection.close()
