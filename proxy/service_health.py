"""Health per service name at the front door.

Envoy sends every ``grpc.health.v1.Health`` call to the proxy, so the proxy answers for
the whole mesh: a Check or Watch of ``helios.v1.RegistryService`` says whether the
registry is up as the proxy sees it (its health watch, proxy/dependencies.py),
``helios.v1.WorkerService`` whether any worker takes requests (the heartbeats). A
service the mesh was started without is not set, so its Check answers NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from proxy.dependencies import UP, DependencyMonitor, Fleet
from runtime.tasks import BackgroundTask

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ObservedFleet(Fleet, Protocol):
    """The pool, with word of its changes (proxy.fleet.WorkerPool.subscribe)."""

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]: ...


def service_statuses(
    dependency_services: Mapping[str, str],
    worker_service: str,
    pool: Fleet,
    monitor: DependencyMonitor | None,
) -> dict[str, int]:
    """Full service name -> health status: each watched dependency's service by its state;
    the worker service SERVING while any worker takes requests."""
    states = monitor.states() if monitor is not None else {}
    statuses = {
        dependency_services[name]: SERVING if state == UP else NOT_SERVING
        for name, state in states.items()
        if name in dependency_services
    }
    statuses[worker_service] = SERVING if any(a.routable for a in pool.agents()) else NOT_SERVING
    return statuses


class ServiceHealthMirror:
    """Keeps a health servicer's per-service statuses equal to :func:`service_statuses`
    (set on change only, so Watch streams hear of changes and nothing else)."""

    def __init__(
        self,
        dependency_services: Mapping[str, str],
        worker_service: str,
        pool: ObservedFleet,
        monitor: DependencyMonitor | None,
    ) -> None:
        self._dependency_services = dict(dependency_services)
        self._worker_service = worker_service
        self._pool = pool
        self._monitor = monitor
        self._health: health_aio.HealthServicer | None = None
        self._mirror = BackgroundTask(self._run, "service health mirror")

    def attach(self, health: health_aio.HealthServicer) -> None:
        """Start mirroring onto ``health`` (called from the proxy's register)."""
        self._health = health
        self._mirror.start()

    async def _run(self) -> None:
        # Compared again whenever the pool or a dependency changes (no polling).
        changed = asyncio.Event()
        unsubscribe = [self._pool.subscribe(changed.set)]
        if self._monitor is not None:
            unsubscribe.append(self._monitor.subscribe(changed.set))
        reported: dict[str, int] = {}
        try:
            while True:
                changed.clear()
                statuses = service_statuses(
                    self._dependency_services, self._worker_service, self._pool, self._monitor
                )
                for name, status in statuses.items():
                    if reported.get(name) != status and self._health is not None:
                        await self._health.set(name, status)
                        reported[name] = status
                await changed.wait()
        finally:
            for stop in unsubscribe:
                stop()

    async def stop(self) -> None:
        await self._mirror.stop()
