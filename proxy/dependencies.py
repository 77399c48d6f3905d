"""The proxy's view of the services it depends on, for /v1/health (issue 16).

Each named dependency (the registry, storaged, the estimator) is watched by a
:data:`Watch` (a gRPC health Watch stream, proxy/health_client.py) that reports "up" or
"down" the moment its state changes: a killed process is down as soon as its connection
drops, however fast it is restarted. Workers are not watched here: the proxy's heartbeats
already say whether each one takes requests (the worker pool, :class:`Fleet`).
:func:`mesh_health` puts both together: names and states only, never addresses (the
answer is public at the front door).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.observers import Observers

logger = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
# The mesh's status: every dependency up / some down but a worker takes requests / none does.
OK = "ok"
DEGRADED = "degraded"
MESH_DOWN = "down"

# Runs until cancelled, calling report(True) when the dependency serves and report(False)
# when it does not (unreachable, its stream broken, draining), each time that changes.
Report = Callable[[bool], None]
Watch = Callable[[Report], Coroutine[Any, Any, None]]


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
    """Watches each named dependency in the background and keeps its last state."""

    def __init__(self, watches: Mapping[str, Watch]) -> None:
        self._watches = dict(watches)
        # Down until it has answered: nothing is claimed up that was never seen up.
        self._states = dict.fromkeys(self._watches, DOWN)
        self._tasks: list[asyncio.Task[None]] = []
        self._observers = Observers()

    def states(self) -> dict[str, str]:
        return dict(self._states)

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` (cheap, synchronous) whenever a dependency's state
        changes; returns the function that unsubscribes it."""
        return self._observers.subscribe(observer)

    def report(self, name: str, up: bool) -> None:
        state = UP if up else DOWN
        if state == self._states[name]:
            return
        log = logger.info if up else logger.warning
        log("dependency %s", state, extra={"dependency": name, "state": state})
        self._states[name] = state
        self._observers.notify()

    def start(self) -> None:
        if self._tasks:
            return
        for name, watch in self._watches.items():
            task = asyncio.create_task(watch(self._reporter(name)), name=f"watch {name}")
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    def _reporter(self, name: str) -> Report:
        return lambda up: self.report(name, up)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s ended", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
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
