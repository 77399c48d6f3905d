"""The proxy's view of the services it depends on, for /v1/health (issue 16).

Each named dependency (the registry, storaged, the estimator) is probed every
``interval_s`` by a :data:`Probe` (a gRPC health check, proxy/health_client.py); its state
is "up" after a probe that succeeded and "down" after one that failed, timed out or
raised. Workers are not probed here: the proxy's heartbeats already say whether each one
takes requests (the worker pool, :class:`Fleet`). :func:`mesh_health` puts both together:
names and states only, never addresses (the answer is public at the front door).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
# The mesh's status: every dependency up / some down but a worker takes requests / none does.
OK = "ok"
DEGRADED = "degraded"
MESH_DOWN = "down"

DEFAULT_INTERVAL_S = 1.0

# True when the dependency answers that it serves; False (or an exception) when not.
Probe = Callable[[float], Awaitable[bool]]


class Agent(Protocol):
    """What the health answer reads of one worker in the proxy's pool."""

    @property
    def address(self) -> str: ...

    @property
    def worker_id(self) -> str: ...

    @property
    def routable(self) -> bool:
        """Takes new requests: its heartbeats answer."""
        ...


class Fleet(Protocol):
    """The proxy's worker pool, as the health answer reads it."""

    def agents(self) -> Sequence[Agent]: ...


@dataclass(frozen=True)
class Dependency:
    """One dependency's state as the proxy sees it."""

    name: str  # "registry", "storaged", "estimator", or a worker's id
    kind: str  # "registry", "storaged", "estimator" or "worker"
    state: str  # UP or DOWN


@dataclass(frozen=True)
class MeshHealth:
    status: str
    dependencies: tuple[Dependency, ...]
    healthy_workers: int
    total_workers: int


class DependencyMonitor:
    """Probes each named dependency in the background and keeps its last state."""

    def __init__(self, probes: Mapping[str, Probe], *, interval_s: float = DEFAULT_INTERVAL_S):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._probes = dict(probes)
        self._interval_s = interval_s
        # Down until a probe has answered: nothing is claimed up that was never seen up.
        self._states = dict.fromkeys(self._probes, DOWN)
        self._task: asyncio.Task[None] | None = None

    def states(self) -> dict[str, str]:
        return dict(self._states)

    async def check_all(self) -> None:
        """Probe every dependency once, all at once; a probe gets the interval to answer."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(name) for name in names))
        for name, up in zip(names, results, strict=True):
            state = UP if up else DOWN
            if state != self._states[name]:
                log = logger.info if up else logger.warning
                log("dependency %s", state, extra={"dependency": name, "state": state})
            self._states[name] = state

    async def _probe(self, name: str) -> bool:
        try:
            return await asyncio.wait_for(self._probes[name](self._interval_s), self._interval_s)
        except TimeoutError:
            return False

    def start(self) -> None:
        if self._task is None and self._probes:
            self._task = asyncio.create_task(self._run(), name="dependency monitor")

    async def _run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def mesh_health(pool: Fleet, monitor: DependencyMonitor | None) -> MeshHealth:
    """Every dependency's state and the mesh's status: "ok" when all are up, "degraded"
    when any is down while a worker takes requests, "down" when no worker does."""
    states = monitor.states() if monitor is not None else {}
    dependencies = [Dependency(name, name, state) for name, state in sorted(states.items())]
    agents = sorted(pool.agents(), key=lambda a: a.address)
    for index, agent in enumerate(agents):
        name = agent.worker_id or f"worker #{index}"
        dependencies.append(Dependency(name, "worker", UP if agent.routable else DOWN))
    healthy = sum(1 for a in agents if a.routable)
    if not healthy:
        status = MESH_DOWN
    elif all(d.state == UP for d in dependencies):
        status = OK
    else:
        status = DEGRADED
    return MeshHealth(status, tuple(dependencies), healthy, len(agents))
