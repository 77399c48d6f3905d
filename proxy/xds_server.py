"""Envoy's control plane: the Aggregated Discovery Service (ADS, xDS v3, state of the world).

The edge Envoy carries warm requests straight to the workers; this server tells it where
to send them. From the fleet state (:class:`proxy.fleet.WorkerPool`, observed for
changes) it builds a :class:`proxy.xds_snapshot.XdsSnapshot` and serves, on the proxy's
gRPC port (``envoy.service.discovery.v3.AggregatedDiscoveryService``):

* **CDS** -- one EDS cluster per model with a routable endpoint (HTTP/2 to the worker,
  least request / ring hash / Maglev per the model's policy, outlier detection, circuit
  breakers, no panic mode, optional mutual TLS);
* **EDS** -- each cluster's ClusterLoadAssignment: the workers with the model READY,
  their weights and health;
* **RDS** -- the route configuration ``helios`` (one virtual host ``helios``): first a
  route per model (``/helios.v1.InferenceService/`` with header ``x-helios-model`` equal
  to the model id -> the model's cluster, retries on another host before the response
  starts), then the *base routes* the edge was started with (``--edge-routes``), which
  send everything else -- cold, unknown or loading models included -- to the proxy.

Protocol: per stream and type a version (a digest of what was sent: identical content is
never re-sent), a nonce per response, ACK/NACK by nonce (stale nonces ignored, a NACK
logged once per version and not re-sent), resource-name filtering for EDS and RDS,
wildcard CDS. A fleet change reaches every stream after a short debounce
(:data:`DEBOUNCE_S`). Ordering, per stream, so that a route never names a cluster Envoy
lacks: a model's route is served only once Envoy has ACKed both the cluster (CDS) and
its endpoints (EDS); a cluster is withdrawn only once Envoy has ACKed a route
configuration without it. And so that a route never sends a request to a worker that
no longer has the model: before a worker unloads a model, :meth:`XdsServer.edge_synced`
waits until every Envoy has ACKed the fleet without it (a request routed to it meanwhile
is served: the worker unloads only after that). The per-stream protocol state lives in
:mod:`proxy.xds_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc, discovery_pb2

from proxy.fleet import WorkerPool
from proxy.xds_resources import (
    ADS_SERVICE,
    DEBOUNCE_S,
    EDGE_SYNC_TIMEOUT_S,
    RESOLVE_TTL_S,
    Resources,
    XdsSettings,
)
from proxy.xds_snapshot import (
    EndpointHealth,
    LbPolicy,
    XdsSnapshot,
    build_snapshot,
)
from proxy.xds_stream import XdsStream

logger = logging.getLogger(__name__)

# ads_pb2_grpc does not import ads.proto's own module: without it the service is not in
# the descriptor pool, and reflection lists ADS but cannot describe it.
_ADS_DESCRIPTOR = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]


# --------------------------------------------------------------------------- server


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS over the proxy's gRPC server, fed by the fleet state it observes."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: XdsSettings | None = None,
        *,
        policy_for: Callable[[str], LbPolicy] | None = None,
        debounce_s: float = DEBOUNCE_S,
        sync_grace_s: float = 0.0,
        throttled_keys: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        """``sync_grace_s`` > 0: streams get no response until every agent of the pool
        has answered a heartbeat, or for that long after :meth:`start`. A proxy restarted
        with Envoy running: Envoy keeps the routes it has until its stream gets a
        response, and those are right, while the new proxy's first view may lack an
        agent whose first heartbeat failed (slow under load); served, it would withdraw
        every model that agent holds, and their requests would reach the cold path,
        which loads a second copy elsewhere."""
        self._pool = pool
        self._settings = settings or XdsSettings()
        self._policy_for = policy_for
        # The API keys over their tokens-per-minute budget (proxy.limits.ApiKeys):
        # asked on every rebuild, which every heartbeat brings.
        self._throttled_keys = throttled_keys
        self._debounce_s = debounce_s
        self._streams: dict[XdsStream, asyncio.Event] = {}
        self._resources = Resources.build(XdsSnapshot(), self._settings)
        self._scheduled: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._resolved: dict[str, tuple[str | None, float]] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        # When the last push to streams happened (for tests and metrics).
        self.pushed_at = 0.0
        self.pushes = 0
        self._sync_grace_s = sync_grace_s
        self.synced = sync_grace_s <= 0
        self._sync_timer: asyncio.TimerHandle | None = None
        # Set whenever a stream has taken in requests (ACKs): edge_synced looks again.
        self._acks = asyncio.Event()

    @property
    def snapshot(self) -> XdsSnapshot:
        return self._resources.snapshot

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def register(self, server: grpc.aio.Server) -> str:
        """Serve ADS on ``server``; returns the service name."""
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        return ADS_SERVICE

    def start(self) -> None:
        """Observe the pool (call inside the running loop) and build the first snapshot."""
        if self._unsubscribe is None:
            self._unsubscribe = self._pool.subscribe(self.notify)
        if not self.synced and self._sync_timer is None:
            self._sync_timer = asyncio.get_running_loop().call_later(
                self._sync_grace_s, self._sync, "grace over"
            )
        self.rebuild()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def notify(self) -> None:
        """The fleet changed: rebuild after the debounce (one rebuild per burst)."""
        if self._scheduled is None:
            loop = asyncio.get_running_loop()
            self._scheduled = loop.call_later(self._debounce_s, self._debounced)

    def _debounced(self) -> None:
        self._scheduled = None
        self.rebuild()

    def rebuild(self) -> bool:
        """Build the snapshot now; push it to every stream when it changed. Returns
        whether it changed."""
        agents = self._pool.agents()
        if not self.synced and all(a.last_heartbeat > 0 for a in agents):
            self._sync("every agent heard from")
        snapshot = self._resolve(build_snapshot(agents, self._policy_for))
        if self._throttled_keys is not None:
            throttled = tuple(sorted(self._throttled_keys()))
            snapshot = dataclasses.replace(snapshot, throttled_keys=throttled)
        if snapshot == self._resources.snapshot:
            return False
        self._resources = Resources.build(snapshot, self._settings, self._resources)
        self.pushed_at = time.monotonic()
        self.pushes += 1
        for wake in self._streams.values():
            wake.set()
        return True

    async def edge_synced(self, timeout_s: float = EDGE_SYNC_TIMEOUT_S) -> bool:
        """Push the fleet's state now, then wait until every Envoy has ACKed it: what
        a caller changed (a model marked draining on a worker) is how every edge routes
        (make before break: the worker may unload it then; a request that Envoy had
        already sent there, or sends before the ACK, is still served). False when that
        took longer than ``timeout_s`` (an Envoy that NACKs or does not answer), or when
        streams are not answered yet (a restarted proxy's grace): the caller goes on,
        and a request on a lagging route gets UNAVAILABLE, which Envoy retries."""
        self.rebuild()
        if not self.synced:
            return False
        deadline = time.monotonic() + timeout_s
        while True:
            self._acks.clear()
            lagging = {
                s.peer: types for s in self._streams if (types := s.unsettled(self._resources))
            }
            if not lagging:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "xds: an envoy has not acked the fleet's state; going on",
                    extra={"lagging": lagging, "timeout_s": timeout_s},
                )
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks.wait(), remaining)

    def _sync(self, reason: str) -> None:
        """From now on streams are answered (those waiting at once)."""
        if self.synced:
            return
        self.synced = True
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        logger.info(
            "xds: serving the fleet",
            extra={"reason": reason, "agents": len(self._pool.agents())},
        )
        for wake in self._streams.values():
            wake.set()

    # ----------------------------------------------------------------- host names

    def _resolve(self, snapshot: XdsSnapshot) -> XdsSnapshot:
        """Endpoints with IP hosts (EDS takes no names): names resolved in the
        background (a rebuild follows), endpoints left out until they are."""
        routes = []
        for route in snapshot.routes:
            endpoints = []
            for endpoint in route.endpoints:
                ip = self._ip(endpoint.host)
                if ip is not None:
                    endpoints.append(dataclasses.replace(endpoint, host=ip))
            if any(e.health is EndpointHealth.HEALTHY for e in endpoints):
                routes.append(dataclasses.replace(route, endpoints=tuple(endpoints)))
        return XdsSnapshot(tuple(routes))

    def _ip(self, host: str) -> str | None:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(host))
        ip, at = self._resolved.get(host, (None, 0.0))
        if time.monotonic() - at > RESOLVE_TTL_S and host not in self._resolving:
            self._resolving[host] = asyncio.get_running_loop().create_task(self._lookup(host))
        return ip

    async def _lookup(self, host: str) -> None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            logger.warning(
                "xds: cannot resolve a worker host", extra={"host": host, "error": str(exc)}
            )
            ip = self._resolved.get(host, (None, 0.0))[0]
        else:
            # IPv4 first, as the static clusters do (V4_PREFERRED).
            infos.sort(key=lambda info: info[0] != socket.AF_INET)
            ip = str(infos[0][4][0]) if infos else None
        finally:
            self._resolving.pop(host, None)
        self._resolved[host] = (ip, time.monotonic())
        self.notify()

    # ----------------------------------------------------------------- the RPC

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = XdsStream(context.peer(), self._settings)
        wake = asyncio.Event()
        requests: deque[discovery_pb2.DiscoveryRequest] = deque()
        ended = False

        async def read() -> None:
            nonlocal ended
            try:
                async for request in request_iterator:
                    requests.append(request)
                    wake.set()
            finally:
                ended = True
                wake.set()

        reader = asyncio.create_task(read())
        self._streams[stream] = wake
        logger.info("xds: stream opened", extra={"peer": stream.peer})
        try:
            while True:
                await wake.wait()
                wake.clear()
                if requests:
                    while requests:
                        stream.on_request(requests.popleft())
                    self._acks.set()
                if ended:
                    break
                if not self.synced:
                    continue  # Envoy keeps what it has meanwhile (see __init__)
                for response in stream.responses(self._resources):
                    yield response
            await reader  # re-raises what ended the read, if anything did
        finally:
            del self._streams[stream]
            if not reader.done():
                reader.cancel()
                # Ending anyway (client gone, server stopping): what the read saw after
                # that is no news.
                await asyncio.gather(reader, return_exceptions=True)
            logger.info("xds: stream closed", extra={"peer": stream.peer, "node": stream.node})
