"""Keeping the fleet state current: discovery, a connection per agent, heartbeats.

Each agent is asked for a heartbeat every ``interval_s`` (default 1 s) by a loop of its
own, with a short deadline (``timeout_s``, default 0.5 s), so that one slow agent never
delays what the others report, and at once when its connection drops (grpc's core
watches the channel: no polling). The first failed heartbeat takes the agent out of
routing (:meth:`proxy.fleet.WorkerPool.record_failure`; Envoy's endpoints follow within
a push), the next good one brings it back. A worker killed outright closes its
connection, refuses the heartbeat that follows at once, and leaves Envoy's endpoints
within milliseconds, whatever the interval; a hung one (its connection still open)
within an interval plus the deadline. The interval is what a steady fleet costs: each
heartbeat is an RPC on both ends and a snapshot rebuild (about 4 ms of CPU per worker
on a small box), so a second between them keeps that well under 1% of a core.

Discovery (static or Kubernetes, :mod:`proxy.discovery`) is asked on the same interval:
agents it lists join (a connection and a heartbeat loop each), agents it no longer lists
leave.

A heartbeat also carries what the worker served itself (the requests Envoy sent it
directly, see :mod:`proxy.served`): those restart the model's idle clock on that agent
and go to the registry's usage reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from proxy import metrics
from proxy.activity import Activity
from proxy.adapters import Adapter, adapter_table
from proxy.discovery import DiscoverySource
from proxy.fleet import ModelOnAgent, WorkerConnection, WorkerPool, WorkerStatus, WorkerView
from proxy.limits import ApiKeys
from proxy.registry import RegistryCatalogue, UsageReporter
from proxy.served import KeyTokensLedger, ServedLedger
from runtime.errors import HeliosError

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 0.5
# The shortest time between two heartbeats of one agent (a connection that keeps
# dropping asks for one each time).
MIN_BEAT_GAP_S = 0.05


class Heartbeats:
    """The agents' connections and the loops that keep :class:`WorkerPool` current."""

    def __init__(
        self,
        pool: WorkerPool,
        connect: Callable[[str], WorkerConnection],
        *,
        discovery: DiscoverySource | None = None,
        activity: Activity | None = None,
        interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        usage: UsageReporter | None = None,
        registry: RegistryCatalogue | None = None,
        api_keys: ApiKeys | None = None,
    ) -> None:
        """``api_keys``: charged with the tokens each worker served per key (the
        tokens-per-minute limits of the requests Envoy sends straight to workers)."""
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("heartbeat interval and timeout must be > 0")
        self.pool = pool
        self._connect = connect
        self.connections: dict[str, WorkerConnection] = {a: connect(a) for a in pool.addresses}
        self._discovery = discovery
        self.activity = activity or Activity()
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._usage = usage
        self._registry = registry
        self._served = ServedLedger()
        self._api_keys = api_keys
        self._key_tokens = KeyTokensLedger()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._discovery_task: asyncio.Task[None] | None = None

    # -- one pass -----------------------------------------------------------------

    async def discover(self) -> None:
        """Add the agents discovery lists now; drop those it no longer lists."""
        if self._discovery is None:
            return
        try:
            addresses = await self._discovery.addresses()
        except HeliosError as exc:
            logger.warning("discovery failed", extra={"error": exc.message})
            return
        for address in addresses:
            if address not in self.connections:
                self.pool.add(address)
                self.connections[address] = self._connect(address)
                logger.info("agent discovered", extra={"worker": address})
        for address in set(self.connections) - set(addresses):
            self.pool.remove(address)
            connection = self.connections.pop(address)
            self._served.forget(address)
            self._key_tokens.forget(address)
            loop = self._loops.pop(address, None)
            if loop is not None:
                loop.cancel()
            await connection.close()
            logger.info("agent gone", extra={"worker": address})

    async def refresh(self) -> None:
        """Discover, then ask every agent for a heartbeat now."""
        await self.discover()
        await asyncio.gather(*(self.beat(a) for a in list(self.connections)))
        self.export_metrics()

    async def beat(self, address: str) -> None:
        """One heartbeat of ``address``, recorded in the pool."""
        connection = self.connections.get(address)
        if connection is None:
            return
        changes = self.pool.view(address).local_changes
        pools = self.pool.prefill_pools(address)
        table = self._adapter_table(address)
        try:
            if table is None:  # no adapter in the registry: no table to hand over
                status = await connection.heartbeat(deadline_s=self.timeout_s, prefill_pools=pools)
            else:
                status = await connection.heartbeat(
                    deadline_s=self.timeout_s, prefill_pools=pools, adapters=table
                )
        except HeliosError as exc:
            if address in self.connections:
                was_routable = self.pool.view(address).routable
                self.pool.record_failure(address)
                if was_routable:
                    logger.warning(
                        "heartbeat failed; agent out of routing",
                        extra={"worker": address, "error": exc.message},
                    )
            return
        if address not in self.connections:
            return
        self._note_served(address, status)
        agent = self.pool.view(address)
        # The proxy loaded or unloaded a model here while this heartbeat was on its way:
        # its models (and free memory) are from before. Recorded as they were, they would
        # list a model just unloaded as READY again, and Envoy would send it requests the
        # worker no longer serves. The proxy's own view stands until the next heartbeat
        # (an unload asks for one at once).
        stale = agent.local_changes != changes
        models = list(agent.models.values()) if stale else _reported_models(status, agent)
        self.pool.record_heartbeat(
            address,
            worker_id=status.worker_id,
            ready_models=status.ready_models,
            known_models=status.known_models,
            healthy=status.healthy,
            models=models,
            state=status.state,
            memory_total=status.memory_total,
            memory_free=agent.memory_free if stale else status.memory_free,
            memory_source=status.memory_source,
            queue_depth=status.queue_depth,
            role=status.role,
            stored=status.stored,
            adapters=table or (),
            rest_port=status.rest_port,
            rest_socket=status.rest_socket,
        )

    def _adapter_table(self, address: str) -> tuple[Adapter, ...] | None:
        """The adapters of the models ``address`` holds (proxy.adapters), for its
        heartbeat; None when the registry holds no adapter."""
        if self._registry is None:
            return None
        return adapter_table(self._registry.models, self.pool.view(address).models)

    def _note_served(self, address: str, status: WorkerStatus) -> None:
        """Account for what the worker served without the proxy since its last heartbeat
        (see proxy.served): the model's idle clock and the registry's usage reports."""
        running = {m.model for m in status.models if m.running}
        for model, totals in status.served.items():
            delta = self._served.update(address, model, totals)
            if model in running or (delta is not None and delta.active):
                self.activity.note(address, model)
            if (
                delta is not None
                and delta.requests
                and self._usage is not None
                and self._registry is not None
                and model in self._registry.models
            ):
                self._usage.record(model, delta.tokens, delta.requests)
        if self._api_keys is not None:
            for fingerprint, tokens in self._key_tokens.update(address, status.key_tokens).items():
                self._api_keys.charge_reported(fingerprint, tokens)

    def export_metrics(self) -> None:
        metrics.STORED_MODELS.clear()  # models leave storage too: no stale series
        for agent in self.pool.agents():
            for model, level in agent.stored.items():
                metrics.STORED_MODELS.labels(agent.address, model, level.value).set(1)
            source = agent.memory_source or "configured"
            metrics.WORKER_MEMORY.labels(agent.address, "total", source).set(agent.memory_total)
            metrics.WORKER_MEMORY.labels(agent.address, "free", source).set(agent.memory_free)
            metrics.WORKER_UP.labels(agent.address).set(int(agent.routable))
        for model, (ready, _) in self.pool.models().items():
            metrics.READY_REPLICAS.labels(model).set(ready)

    # -- the loops ----------------------------------------------------------------

    async def _agent_loop(self, address: str) -> None:
        connection = self.connections.get(address)
        if connection is None:
            return
        lost: asyncio.Future[None] | None = asyncio.ensure_future(connection.disconnected())
        try:
            while address in self.connections:
                beat_at = time.monotonic()
                await self.beat(address)
                if lost is None:
                    await asyncio.sleep(self.interval_s)
                    continue
                await asyncio.wait({lost}, timeout=self.interval_s)
                if not lost.done():
                    continue
                error = None if lost.cancelled() else lost.exception()
                if lost.cancelled() or error is not None:
                    logger.warning(
                        "cannot watch a worker's connection; heartbeats alone tell",
                        extra={"worker": address, "error": repr(error)},
                    )
                    lost = None
                    continue
                # The connection dropped: ask at once (a dead worker refuses, a draining
                # one says so), never more often than MIN_BEAT_GAP_S for a flapping one.
                await asyncio.sleep(max(0.0, beat_at + MIN_BEAT_GAP_S - time.monotonic()))
                lost = asyncio.ensure_future(connection.disconnected())
        finally:
            if lost is not None:
                lost.cancel()

    async def _discovery_loop(self) -> None:
        while True:
            await self.discover()
            for address in self.connections:
                loop = self._loops.get(address)
                if loop is None or loop.done():
                    self._loops[address] = asyncio.create_task(
                        self._agent_loop(address), name=f"heartbeat {address}"
                    )
            self.export_metrics()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Start the loops (inside the running loop)."""
        if self._discovery_task is None:
            self._discovery_task = asyncio.create_task(self._discovery_loop(), name="discovery")

    async def stop(self) -> None:
        """Stop the loops and close every connection."""
        tasks = [t for t in (self._discovery_task, *self._loops.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._discovery_task = None
        self._loops.clear()
        await asyncio.gather(*(c.close() for c in self.connections.values()))


def _reported_models(status: WorkerStatus, agent: WorkerView) -> list[ModelOnAgent] | None:
    """The models a fresh heartbeat reports (None: only its name lists), keeping loads
    the proxy started that it does not report yet."""
    models = list(status.models)
    if models or not status.ready_models:
        reported = {m.model for m in models}
        models += [
            m for m in agent.models.values() if m.model not in reported and m.state == "loading"
        ]
    return models or None
