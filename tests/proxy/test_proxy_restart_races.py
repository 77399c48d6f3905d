"""The soak's proxy-restart episode, cause by cause: a heartbeat that predates an unload
re-listing the model (Envoy then routes to a worker without it), a restarted control
plane serving Envoy a partial fleet, and a cold request refused while the warm pools
load the same model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

import pytest
from prometheus_client import REGISTRY
from test_xds_protocol import FakeEnvoy, clusters
from xds_envoy import ready

from openai_compat.backend import Step
from openai_compat.params import Job
from proxy.cold_start import ColdStarts, ModelSpec
from proxy.estimate import MemoryEstimator
from proxy.fleet import AgentState, ModelOnAgent, WorkerPool, WorkerStatus
from proxy.heartbeats import Heartbeats
from proxy.xds_resources import CLUSTER_TYPE, XdsSettings
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import build_snapshot, cluster_name
from runtime.config import ServerSettings
from runtime.errors import UnavailableError
from runtime.server import RunningServer, start_server
from worker_api.disagg import PrefillPeer, PrefillResult

MODEL = "helios/helios-tiny-chat"
A, B = "127.0.0.1:1001", "127.0.0.1:1002"
GIB = 1 << 30


class FakeWorker:
    """A WorkerConnection whose heartbeat and LoadModel wait until the test lets them."""

    def __init__(self, models: Sequence[str] = ()) -> None:
        self.models = set(models)
        self.heartbeat_sent = asyncio.Event()
        self.answer_heartbeat = asyncio.Event()
        self.answer_heartbeat.set()
        self.load_started = asyncio.Event()
        self.finish_load = asyncio.Event()

    def status(self) -> WorkerStatus:
        models = tuple(ModelOnAgent(m, "ready") for m in sorted(self.models))
        return WorkerStatus(
            worker_id="w",
            ready_models=tuple(m.model for m in models),
            known_models=tuple(m.model for m in models),
            healthy=True,
            models=models,
            state=AgentState.READY if models else AgentState.IDLE,
            memory_total=8 * GIB,
            memory_free=8 * GIB,
        )

    async def heartbeat(
        self, deadline_s: float, prefill_pools: Mapping[str, Sequence[PrefillPeer]] | None = None
    ) -> WorkerStatus:
        status = self.status()  # what is true when the worker answers...
        self.heartbeat_sent.set()
        await self.answer_heartbeat.wait()  # ...reaches the proxy only now
        return status

    async def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        self.load_started.set()
        yield "loading"
        await self.finish_load.wait()
        self.models.add(model)
        yield "ready"

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        self.models.discard(model)
        return 0

    def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]:
        raise NotImplementedError

    async def prefill(self, job: Job, deadline_s: float | None) -> PrefillResult:
        raise NotImplementedError

    def decode(
        self,
        job: Job,
        kv_handle: str,
        prefill_worker: str,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        raise NotImplementedError

    async def disconnected(self) -> None:
        await asyncio.Event().wait()  # its connection never drops

    async def close(self) -> None:
        pass


def _routed_to(pool: WorkerPool) -> list[str]:
    route = build_snapshot(pool.agents()).by_model().get(MODEL)
    return [] if route is None else [e.address for e in route.endpoints]


async def test_a_heartbeat_answered_across_an_unload_does_not_relist_the_model() -> None:
    """The heartbeat was answered while the model was still READY; the proxy unloaded it
    before the answer arrived. Recorded as it was, the answer listed the model READY
    again, Envoy was told so, and requests reached a worker without it (404s)."""
    worker = FakeWorker([MODEL])
    pool = WorkerPool([A])
    beats = Heartbeats(pool, lambda address: worker)
    await beats.beat(A)
    assert _routed_to(pool) == [A]
    cold = ColdStarts(pool, beats.connections, [], MemoryEstimator(), drain_s=0)

    worker.answer_heartbeat.clear()
    in_flight = asyncio.create_task(beats.beat(A))
    await worker.heartbeat_sent.wait()
    # The unload, start to end, while the heartbeat's answer is on its way.
    await cold.unload(A, MODEL, reason="scale")
    worker.answer_heartbeat.set()
    await in_flight
    assert MODEL not in pool.view(A).models
    assert _routed_to(pool) == []
    # The next heartbeat is the worker's word again.
    worker.models.add(MODEL)
    await beats.beat(A)
    assert _routed_to(pool) == [A]


async def test_a_stale_heartbeat_keeps_the_health_it_reports() -> None:
    worker = FakeWorker([MODEL])
    pool = WorkerPool([A])
    beats = Heartbeats(pool, lambda address: worker)
    worker.answer_heartbeat.clear()
    in_flight = asyncio.create_task(beats.beat(A))
    await worker.heartbeat_sent.wait()
    pool.mark_model(A, ModelOnAgent("other", "loading"))
    worker.answer_heartbeat.set()
    await in_flight
    agent = pool.view(A)
    assert agent.healthy and agent.last_heartbeat > 0
    assert set(agent.models) == {"other"}  # the proxy's own view until the next heartbeat


async def _start_xds(pool: WorkerPool, grace_s: float) -> tuple[XdsServer, RunningServer]:
    xds = XdsServer(pool, XdsSettings(), sync_grace_s=grace_s)
    running = await start_server(
        ServerSettings(service="proxy", metrics_port=-1), lambda server: [xds.register(server)]
    )
    xds.start()
    return xds, running


async def test_a_restarted_control_plane_answers_envoy_once_every_agent_answered() -> None:
    """Right after a restart, an agent whose first heartbeat failed is unknown: serving
    that view withdrew its models' routes from an Envoy whose routes were right."""
    pool = WorkerPool()
    ready(pool, A, MODEL)
    pool.add(B)  # its first heartbeat has not answered yet
    xds, running = await _start_xds(pool, 30.0)
    envoy = FakeEnvoy(running.port)
    try:
        await envoy.send(CLUSTER_TYPE)
        await envoy.quiet()  # Envoy keeps what it has meanwhile
        assert not xds.synced
        ready(pool, B, MODEL)
        cds = await envoy.next(CLUSTER_TYPE)
        assert list(clusters(cds)) == [cluster_name(MODEL)]
        assert xds.synced
    finally:
        await envoy.close()
        await xds.stop()
        await running.stop(None)


async def test_the_sync_grace_bounds_the_wait_for_an_agent_that_never_answers() -> None:
    pool = WorkerPool()
    ready(pool, A, MODEL)
    pool.add(B)  # down for good
    xds, running = await _start_xds(pool, 0.3)
    envoy = FakeEnvoy(running.port)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await envoy.send(CLUSTER_TYPE)
        cds = await envoy.next(CLUSTER_TYPE)
        assert loop.time() - started >= 0.2
        assert list(clusters(cds)) == [cluster_name(MODEL)]
    finally:
        await envoy.close()
        await xds.stop()
        await running.stop(None)


def queued() -> float:
    """helios_proxy_queued_requests of MODEL: requests waiting for a READY replica."""
    return REGISTRY.get_sample_value("helios_proxy_queued_requests", {"model": MODEL}) or 0.0


def _cold(pool: WorkerPool, workers: Mapping[str, FakeWorker]) -> ColdStarts:
    spec = ModelSpec(MODEL, None, min_replicas=1, total_bytes=GIB)
    return ColdStarts(pool, dict(workers), [spec], MemoryEstimator(), load_timeout_s=5)


async def _fleet(*addresses: str) -> tuple[WorkerPool, dict[str, FakeWorker]]:
    pool = WorkerPool(addresses)
    workers = {address: FakeWorker() for address in addresses}
    beats = Heartbeats(pool, workers.__getitem__)
    await beats.refresh()
    return pool, workers


async def test_a_cold_request_joins_the_warm_pools_load_instead_of_no_worker() -> None:
    """The warm pools (min replicas, or an admin scale) load the model on the one agent
    that can take it; a cold request meanwhile found every agent busy with the model and
    was refused "no worker is available to load model" (503)."""
    pool, workers = await _fleet(A, B)
    pool.record_failure(B)  # out of routing
    cold = _cold(pool, workers)
    preload = asyncio.create_task(cold.load(MODEL, set()))  # what WarmPools.reconcile does
    await workers[A].load_started.wait()
    before = queued()
    request = asyncio.create_task(cold.replica(MODEL, deadline_s=5))
    await asyncio.sleep(0.05)
    assert not request.done()  # waiting for the load, not refused
    assert queued() == before + 1  # what deploy/'s worker HPAs scale on
    workers[A].finish_load.set()
    assert await request == A
    assert await preload == A
    assert queued() == before


async def test_a_cold_request_does_not_load_a_second_copy_while_one_loads() -> None:
    pool, workers = await _fleet(A, B)
    cold = _cold(pool, workers)
    preload = asyncio.create_task(cold.load(MODEL, set()))
    started = asyncio.create_task(workers[A].load_started.wait())
    other = asyncio.create_task(workers[B].load_started.wait())
    await asyncio.wait([started, other], return_when=asyncio.FIRST_COMPLETED)
    first = A if started.done() else B
    request = asyncio.create_task(cold.replica(MODEL, deadline_s=5))
    await asyncio.sleep(0.05)
    workers[first].finish_load.set()
    assert await request == first
    assert await preload == first
    assert [a.address for a in pool.holders(MODEL)] == [first]
    other.cancel()
    started.cancel()


async def test_a_failed_load_in_flight_lets_the_cold_request_load_itself() -> None:
    pool, workers = await _fleet(A)
    cold = _cold(pool, workers)

    async def failing(model: str, local_path: str, deadline_s: float | None) -> AsyncIterator[str]:
        workers[A].load_started.set()
        yield "loading"
        await workers[A].finish_load.wait()
        raise UnavailableError("engine died")

    workers[A].load_model = failing  # type: ignore[method-assign]
    preload = asyncio.create_task(cold.load(MODEL, set()))
    await workers[A].load_started.wait()
    request = asyncio.create_task(cold.replica(MODEL, deadline_s=5))
    await asyncio.sleep(0.05)
    workers[A].finish_load.set()
    with pytest.raises(UnavailableError):
        await preload
    with pytest.raises(UnavailableError):
        await request  # tried on its own: the only agent failed it again
