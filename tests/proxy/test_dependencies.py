"""/v1/health's view of the proxy's dependencies: a real gRPC server stopped and started
again on the same port, watched by the proxy's health Watch over one long-lived channel."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from proxy.dependencies import DependencyMonitor, mesh_health
from proxy.health_client import GrpcHealthWatch
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
