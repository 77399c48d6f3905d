"""The proxy with the REAL registry (in-process RegistryService on a real gRPC port):
registry models cold-start without a local path, usage is reported in batches, the
registry's eviction candidates order evictions (pinned models stay), prefetch hints
preload into free memory. Workers are recording WorkerConnections (domain level)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import inference_pb2 as inference_pb
from helios.v1 import inference_pb2_grpc, registry_pb2_grpc
from support.fakes import fake_worker, serve

from openai_compat.protocol import chat_request_from_pb
from proxy.cold_path import RequestContext
from proxy.cold_start import ColdStarts
from proxy.control import ControlPlane
from proxy.estimate import MemoryEstimator
from proxy.fleet import ModelOnAgent, WorkerPool
from proxy.registry import RegistryCatalogue, UsageReporter
from proxy.registry_client import GrpcRegistryClient
from proxy.warm_pools import WarmPools
from proxy.worker_client import GrpcWorkerConnection
from registry.core import Registry
from registry.servicer import RegistryServicer
from runtime.errors import NotFoundError


@dataclass
class RecordingWorker:
    """A WorkerConnection that records LoadModel/UnloadModel and reports READY."""

    loads: list[tuple[str, str]] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)

    async def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        self.loads.append((model, local_path))
        for state in ("downloading", "loading", "ready"):
            yield state

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        self.unloads.append(model)
        return 0


@dataclass
class Env:
    registry: Registry
    client: GrpcRegistryClient
    address: str
    root: Path


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    registry = Registry.open(tmp_path / "registry")
    running = await serve(
        "RegistryService",
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(registry),
    )
    client = GrpcRegistryClient(running.address)
    yield Env(registry, client, running.address, tmp_path)
    await client.close()
    await running.stop(0)
    registry.close()


async def add_model(env: Env, model: str, size: int) -> None:
    directory = env.root / "src" / model.replace("/", "_")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(model.encode() * (size // len(model)))
    async for _ in env.registry.import_directory(directory, model):
        pass


def plane(
    env: Env, free: dict[str, int], total: int = 100_000, prefetch: int = 0
) -> tuple[WarmPools, dict[str, RecordingWorker]]:
    pool = WorkerPool(list(free))
    for address, room in free.items():
        pool.record_heartbeat(
            address, worker_id=address, healthy=True, memory_total=total, memory_free=room
        )
    workers = {address: RecordingWorker() for address in free}
    cold = ColdStarts(
        pool,
        workers,  # type: ignore[arg-type]
        (),
        MemoryEstimator(None),
        registry=RegistryCatalogue(env.client),
    )
    return WarmPools(cold, prefetch=prefetch), workers


async def test_registry_model_cold_starts_without_a_local_path(env: Env) -> None:
    await add_model(env, "org/alpha", 20_000)
    control, workers = plane(env, {"a": 90_000, "b": 30_000})
    listing = await control.cold.registry.refresh()  # type: ignore[union-attr]
    assert set(listing) == {"org/alpha"}
    address = await control.cold.replica("org/alpha", deadline_s=10)
    assert address == "b"  # best fit: the tighter agent
    assert workers["b"].loads == [("org/alpha", "")]  # the worker fetches via storaged
    assert workers["a"].loads == []
    need, status = control.cold.model_profile("org/alpha")
    assert status == "warm"
    assert need is not None and need.source == "manifest"
    assert need.bytes == listing["org/alpha"].total_bytes
    for unknown in ("org/nothing", "ORG/Alpha", "../etc"):
        with pytest.raises(NotFoundError):
            await control.cold.replica(unknown, deadline_s=5)


async def test_usage_reporter_batches_and_survives_a_dead_registry(env: Env) -> None:
    await add_model(env, "org/alpha", 1_000)
    reporter = UsageReporter(env.client)
    for tokens in (5, 7, 9):
        reporter.record("org/alpha", tokens)  # no I/O here
    assert reporter.pending == {"org/alpha": (3, 21)}
    await reporter.flush()
    assert reporter.pending == {} and reporter.sent_requests == 3
    hints = await env.client.prefetch_hints(5)
    assert [h.model_id for h in hints] == ["org/alpha"]
    # Three requests just now: a forecast of more than one an hour.
    assert hints[0].size_bytes >= 1_000 and hints[0].requests_per_hour > 1

    dead = GrpcRegistryClient("127.0.0.1:1", deadline_s=0.5)
    try:
        failing = UsageReporter(dead)
        failing.record("org/alpha", 4)
        await failing.flush()  # logged and counted, never raised
        assert failing.pending == {"org/alpha": (1, 4)}  # kept for the next try
    finally:
        await dead.close()


async def test_evictions_follow_the_registry_and_spare_pinned_models(env: Env) -> None:
    for model in ("org/hot", "org/cold", "org/pinned", "org/new"):
        await add_model(env, model, 1_000)
    await env.registry.record_usage("org/hot", 50, 500)
    await env.registry.set_policy("org/pinned", 1, True)
    control, workers = plane(env, {"a": 10}, total=100)
    await control.cold.registry.refresh()  # type: ignore[union-attr]
    pool = control.pool
    # Least recently used first would evict org/hot (last used longest ago).
    for model, last in (("org/hot", 1.0), ("org/pinned", 2.0), ("org/cold", 3.0)):
        pool.mark_model("a", ModelOnAgent(model, "ready", memory_bytes=30))
        control.cold.activity._last_used[("a", model)] = last
    control.cold.catalogue["org/new"] = await control.cold.spec("org/new")
    control.cold._needs.clear()
    # Needs 35: one eviction; the registry ranks the unused model first.
    assert await control.cold._evict_for("org/new", 35, set())
    assert workers["a"].unloads == ["org/cold"]
    pool.view("a").memory_free = 40
    # Needs 65 now with 40 free: org/hot goes, org/pinned never does.
    assert await control.cold._evict_for("org/new", 65, set())
    assert workers["a"].unloads == ["org/cold", "org/hot"]
    pool.view("a").memory_free = 70
    assert not await control.cold._evict_for("org/new", 95, set())
    assert "org/pinned" in pool.view("a").models


async def test_prefetch_preloads_a_hint_into_free_memory_only(env: Env) -> None:
    await add_model(env, "org/alpha", 2_000)
    await env.registry.record_usage("org/alpha", 10, 100)
    full, full_workers = plane(env, {"a": 100}, prefetch=3)
    await full.reconcile()
    assert full_workers["a"].loads == []  # no room: nothing evicted for a guess
    control, workers = plane(env, {"a": 90_000}, prefetch=3)
    await control.reconcile()
    assert workers["a"].loads == [("org/alpha", "")]
    await control.reconcile()  # already loaded: nothing more
    assert len(workers["a"].loads) == 1
    assert control.cold.model_profile("org/alpha")[1] == "warm"


async def test_usage_of_requests_workers_served_directly_is_reported_once(env: Env) -> None:
    """Requests Envoy routes straight to a worker reach the registry from the worker's
    heartbeat counters; requests the proxy relays from the proxy: each exactly once."""
    await add_model(env, "org/alpha", 1_000)
    async with fake_worker(env.root / "worker", "org/alpha") as address:
        usage = UsageReporter(env.client)  # not started: what it would send stays pending
        plane = ControlPlane.create(
            WorkerPool([address]),
            GrpcWorkerConnection,
            (),
            MemoryEstimator(None),
            registry=RegistryCatalogue(env.client),
            usage=usage,
        )
        try:
            await plane.cold.registry.refresh()  # type: ignore[union-attr]
            await plane.refresh()  # the workers' counters so far: a baseline
            params = inference_pb.ChatCompletionParams(model="org/alpha", max_tokens=4)
            params.messages.add(role="user").content.string_value = "hello"
            async with grpc.aio.insecure_channel(address) as channel:
                worker = inference_pb2_grpc.InferenceServiceStub(channel)
                for _ in range(2):
                    await worker.CreateChatCompletion(
                        inference_pb.CreateChatCompletionRequest(params=params)
                    )
            relayed = await plane.serving.complete(
                chat_request_from_pb(params).jobs[0], RequestContext(deadline_s=10)
            )
            tokens = relayed.prompt_tokens + relayed.completion_tokens
            assert usage.pending == {"org/alpha": (1, tokens)}  # the relayed one
            await plane.refresh()
            assert usage.pending == {"org/alpha": (3, 3 * tokens)}  # + the two direct
            await plane.refresh()
            assert usage.pending == {"org/alpha": (3, 3 * tokens)}  # nothing new
        finally:
            await plane.stop()
