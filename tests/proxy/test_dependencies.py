"""/v1/health's view of the proxy's dependencies: a real gRPC server stopped and started
again on the same port, watched by the proxy's health Watch over one long-lived channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from proxy.dependencies import DependencyMonitor, mesh_health
from proxy.fleet import WorkerPool
from proxy.health_client import GrpcHealthWatch
from proxy.service_health import ServiceHealthMirror
from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server


async def _serve(port: int = 0) -> RunningServer:
    def register(server: grpc.aio.Server) -> list[str]:
        return []

    return await start_server(ServerSettings(service="dep", port=port, metrics_port=-1), register)


async def _until(monitor: DependencyMonitor, name: str, state: str, limit_s: float) -> float:
    started = time.monotonic()
    while monitor.states()[name] != state:
        assert time.monotonic() - started < limit_s, monitor.states()
        await asyncio.sleep(0.05)
    return time.monotonic() - started


WORKERS = "helios.v1.WorkerService"


@dataclass
class _Agent:
    address: str
    worker_id: str
    routable: bool


@dataclass
class _Fleet:
    workers: list[_Agent]

    def agents(self) -> list[_Agent]:
        return list(self.workers)


async def test_down_when_killed_up_again_when_back_on_its_port() -> None:
    server = await _serve()
    port = server.port
    watch = GrpcHealthWatch(f"127.0.0.1:{port}")
    monitor = DependencyMonitor({"registry": watch})
    assert monitor.states() == {"registry": "down"}  # never seen up yet
    monitor.start()
    try:
        await _until(monitor, "registry", "up", 5)
        await server.stop(0)
        assert await _until(monitor, "registry", "down", 5) < 0.5  # the stream breaks
        await asyncio.sleep(3)  # long enough for grpc's reconnect backoff to have grown
        server = await _serve(port)
        # The channel reconnects within its (capped) backoff: no stale failure state.
        took = await _until(monitor, "registry", "up", 5)
        assert took < 3.0
    finally:
        await monitor.stop()
        await watch.close()
        await server.stop(0)


async def test_mesh_health_names_and_states_only() -> None:
    server = await _serve()
    watch = GrpcHealthWatch(f"127.0.0.1:{server.port}")
    dead = GrpcHealthWatch("127.0.0.1:1")
    monitor = DependencyMonitor({"registry": watch, "storaged": dead})
    fleet = _Fleet([_Agent("10.0.0.1:1", "worker-0", True), _Agent("10.0.0.2:1", "", False)])
    try:
        monitor.start()
        await _until(monitor, "registry", "up", 5)
        health = mesh_health(fleet, monitor)
        assert health.status == "degraded"
        assert [(d.name, d.kind, d.state) for d in health.dependencies] == [
            ("registry", "registry", "up"),
            ("storaged", "storaged", "down"),
            ("worker-0", "worker", "up"),
            ("worker #1", "worker", "down"),  # never answered: no id, and no address
        ]
        assert (health.healthy_workers, health.total_workers) == (1, 2)
        fleet.workers[1].routable = True
        assert mesh_health(fleet, DependencyMonitor({})).status == "ok"
        fleet.workers[0].routable = fleet.workers[1].routable = False
        assert mesh_health(fleet, monitor).status == "down"
    finally:
        await monitor.stop()
        await watch.close()
        await dead.close()
        await server.stop(0)


async def test_per_service_health_follows_the_pool_and_the_dependencies_as_they_change() -> None:
    """The front door's Health per service name, watched over gRPC: each change of the
    pool (a heartbeat, a failed one) or of a dependency's state is heard at once (the
    mirror is told of changes; it does not poll)."""
    health = health_aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = WorkerPool(["10.0.0.1:1"])
    reports: list[Callable[[bool], None]] = []

    async def registry_watch(report: Callable[[bool], None]) -> None:
        reports.append(report)  # the test says when the registry is up
        await asyncio.Event().wait()

    monitor = DependencyMonitor({"registry": registry_watch})
    monitor.start()
    mirror = ServiceHealthMirror({"registry": "helios.v1.RegistryService"}, WORKERS, pool, monitor)
    mirror.attach(health)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    workers = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=WORKERS)
    )
    registry = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="helios.v1.RegistryService")
    )
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )

    async def next_status(call: Any) -> int:
        return int((await asyncio.wait_for(call.read(), 5)).status)

    try:
        assert await next_status(workers) == not_serving  # no heartbeat answered yet
        assert await next_status(registry) == not_serving
        pool.record_heartbeat("10.0.0.1:1", worker_id="w", healthy=True)
        assert await next_status(workers) == serving
        pool.record_failure("10.0.0.1:1")
        assert await next_status(workers) == not_serving
        reports[0](True)
        assert await next_status(registry) == serving
    finally:
        workers.cancel()
        registry.cancel()
        await mirror.stop()
        await monitor.stop()
        await channel.close(None)
        await server.stop(0)
