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
configuration without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from proxy.fleet import WorkerPool
from proxy.key_budget_routes import budget_routes
from proxy.xds_snapshot import (
    EndpointHealth,
    LbKind,
    LbPolicy,
    ModelRoute,
    XdsSnapshot,
    build_snapshot,
)

logger = logging.getLogger(__name__)

# The types' modules are imported for their descriptors: ParseDict resolves "@type" in
# the default pool.
_ANY_TYPES = (
    http_protocol_options_pb2,
    tls_pb2,
    previous_hosts_pb2,
    route_components_pb2,
    api_key_auth_pb2,  # the edge's per-route API-key roles (its virtual host)
    buffer_pb2,  # the edge's per-route request size limits
)

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# The order in which a pass sends them (additions: clusters, then their endpoints, then
# the routes naming them).
SERVED_TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE)
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

ROUTE_CONFIG_NAME = "helios"
VIRTUAL_HOST_NAME = "helios"
# The header carrying the model id (set by the edge's Lua filter from a REST body; a
# native gRPC client sends it as metadata).
MODEL_HEADER = "x-helios-model"
INFERENCE_PREFIX = "/helios.v1.InferenceService/"
# Retried on another host, only ever before response headers reach the client (Envoy's
# rule): a gRPC UNAVAILABLE answer (x-envoy-retry-grpc-on's name), a refused connection
# or HTTP/2 stream, a reset (x-envoy-retry-on's names). Envoy 1.40 accepts unknown names
# here silently: tests/proxy/test_xds_envoy.py checks connect-failure and unavailable by
# their effect.
RETRY_ON = "unavailable,connect-failure,refused-stream,reset"
NUM_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5
DEFAULT_MAX_REQUESTS_PER_MODEL = 1024
# A burst of fleet changes (one heartbeat round touches every agent) makes one push.
DEBOUNCE_S = 0.01
# How long a resolved worker host name is used before it is resolved again.
RESOLVE_TTL_S = 30.0
# A (re)started control plane answers Envoy only once every agent it knows has answered
# a heartbeat, or this long after it started, whichever comes first (see XdsServer).
DEFAULT_SYNC_GRACE_S = 5.0

_HEALTH = {
    EndpointHealth.HEALTHY: health_check_pb2.HEALTHY,
    EndpointHealth.DRAINING: health_check_pb2.DRAINING,
}
_LB = {
    LbKind.LEAST_REQUEST: "LEAST_REQUEST",
    LbKind.RING_HASH: "RING_HASH",
    LbKind.MAGLEV: "MAGLEV",
}


@dataclass(frozen=True)
class UpstreamTls:
    """Mutual TLS from Envoy to the workers: Envoy's client cert/key and the CA (the
    same shape as cli/envoy.py's static clusters use)."""

    cert: Path
    key: Path
    ca: Path
    sni: str = "localhost"


@dataclass(frozen=True)
class XdsSettings:
    """What every model cluster and the route configuration share."""

    max_requests_per_model: int = DEFAULT_MAX_REQUESTS_PER_MODEL
    upstream_tls: UpstreamTls | None = None
    base_routes: tuple[route_components_pb2.Route, ...] = ()
    # What the edge sets on its whole virtual host (the OpenAI API's API-key role, the
    # per-key rate limits): every model route inherits it. Its routes are base_routes.
    base_host: route_components_pb2.VirtualHost | None = None

    def __post_init__(self) -> None:
        if self.max_requests_per_model < 1:
            raise ValueError("max_requests_per_model must be >= 1")


def load_base_routes(path: Path) -> tuple[route_components_pb2.Route, ...]:
    """The base routes: a JSON list of envoy.config.route.v3.Route in proto3 JSON form.
    ValueError (with the file and index) when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of routes")
    routes = []
    for index, item in enumerate(data):
        route = route_components_pb2.Route()
        try:
            json_format.ParseDict(item, route)
        except json_format.ParseError as exc:
            raise ValueError(f"{path}: route {index}: {exc}") from None
        routes.append(route)
    return tuple(routes)


def load_edge_virtual_host(
    path: Path,
) -> tuple[tuple[route_components_pb2.Route, ...], route_components_pb2.VirtualHost | None]:
    """The edge's virtual host as cli/envoy.py writes it (``write_edge_routes``): its
    routes (the base routes) and the host itself (per-filter config, rate limits). A JSON
    list is read as routes alone (see :func:`load_base_routes`). ValueError when it is
    neither."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(data, list):
        return load_base_routes(path), None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a virtual host (JSON object) or a list of routes")
    host = route_components_pb2.VirtualHost()
    try:
        json_format.ParseDict(data, host)
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return tuple(host.routes), host


# --------------------------------------------------------------------------- resources


def _parse(data: dict[str, Any], message: Message) -> Message:
    return json_format.ParseDict(data, message)


def _tls_socket(tls: UpstreamTls) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.sni,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(Path(tls.cert).resolve())},
                        "private_key": {"filename": str(Path(tls.key).resolve())},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(Path(tls.ca).resolve())}},
            },
        },
    }


def build_cluster(route: ModelRoute, settings: XdsSettings) -> cluster_pb2.Cluster:
    """The model's cluster (its endpoints come by EDS over the same ADS stream)."""
    policy = route.policy
    common: dict[str, Any] = {
        # No panic mode: with every endpoint ejected or draining, fail fast (503) rather
        # than send to all of them anyway.
        "healthy_panic_threshold": {"value": 0},
        # Health and weight changes apply at once, not merged over a second.
        "update_merge_window": "0s",
    }
    if policy.hash_balance_factor:
        common["consistent_hashing_lb_config"] = {"hash_balance_factor": policy.hash_balance_factor}
    cluster: dict[str, Any] = {
        "name": route.cluster,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
        "lb_policy": _LB[policy.kind],
        "common_lb_config": common,
        # Envoy ejects a worker only for failures of the connection itself (refused,
        # reset, timed out). A gRPC status a worker answers is not judged here: a client's
        # own short deadline comes back as 504 and must never count against a worker
        # (issue 16); a worker whose engine is dead fails its heartbeat's health check and
        # the control plane takes it out of EDS, while retries route around it meanwhile.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 3,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_requests": settings.max_requests_per_model,
                    "max_pending_requests": settings.max_requests_per_model,
                    # Retries in flight at once: as many as requests. Envoy's default
                    # (3) let a worker that died with 100 requests queued before their
                    # first token fail 97 of them; retries are bounded per request
                    # (NUM_RETRIES, before response headers only) instead.
                    "max_retries": settings.max_requests_per_model,
                }
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
    }
    if settings.upstream_tls is not None:
        cluster["transport_socket"] = _tls_socket(settings.upstream_tls)
    message = cluster_pb2.Cluster()
    _parse(cluster, message)
    return message


def build_assignment(route: ModelRoute) -> endpoint_pb2.ClusterLoadAssignment:
    """The model's endpoints (``route.endpoints``' hosts must be IP addresses). Built
    field by field: this runs for every load change."""
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=route.cluster)
    levels: dict[int, endpoint_pb2.LocalityLbEndpoints] = {}
    for e in route.endpoints:
        locality = levels.get(e.priority)
        if locality is None:
            locality = levels[e.priority] = message.endpoints.add(priority=e.priority)
        lb = locality.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = e.host
        lb.endpoint.address.socket_address.port_value = e.port
        lb.endpoint.hostname = e.address
        lb.health_status = _HEALTH[e.health]
        lb.load_balancing_weight.value = e.weight
    return message


def build_model_route(route: ModelRoute) -> route_components_pb2.Route:
    """InferenceService calls for this model (by header) -> its cluster."""
    action: dict[str, Any] = {
        "cluster": route.cluster,
        # No overall limit (generations are long); the listener's stream idle timeout applies.
        "timeout": "0s",
        "retry_policy": {
            "retry_on": RETRY_ON,
            "num_retries": NUM_RETRIES,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        },
    }
    if route.policy.hash_header:
        action["hash_policy"] = [{"header": {"header_name": route.policy.hash_header}}]
    data = {
        "name": route.cluster,
        "match": {
            "prefix": INFERENCE_PREFIX,
            "headers": [{"name": MODEL_HEADER, "string_match": {"exact": route.model}}],
        },
        "route": action,
    }
    message = route_components_pb2.Route()
    _parse(data, message)
    return message


def build_route_configuration(
    model_routes: Iterable[route_components_pb2.Route],
    base_routes: Sequence[route_components_pb2.Route],
    base_host: route_components_pb2.VirtualHost | None = None,
    first_routes: Sequence[route_components_pb2.Route] = (),
) -> route_pb2.RouteConfiguration:
    """``first_routes`` (keys over budget) before the model routes, the base routes
    after them."""
    config = route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME)
    host = config.virtual_hosts.add()
    if base_host is not None:  # its settings; its routes come after the model routes
        host.CopyFrom(base_host)
        del host.routes[:]
    host.name = VIRTUAL_HOST_NAME
    host.ClearField("domains")
    host.domains.append("*")
    host.routes.extend(first_routes)
    host.routes.extend(model_routes)
    host.routes.extend(base_routes)
    return config


@dataclass(frozen=True)
class Resources:
    """One snapshot's resources, by name: clusters and assignments by cluster name,
    model routes by the cluster they name."""

    snapshot: XdsSnapshot
    clusters: Mapping[str, Message]
    assignments: Mapping[str, Message]
    routes: Mapping[str, route_components_pb2.Route]
    # Routes of the keys over their tokens-per-minute budget, in front of all others.
    budget_routes: tuple[route_components_pb2.Route, ...] = ()

    @classmethod
    def build(
        cls, snapshot: XdsSnapshot, settings: XdsSettings, previous: Resources | None = None
    ) -> Resources:
        """``snapshot``'s resources, reusing ``previous``' messages for what did not
        change (a cluster and its route depend on the model and policy only; the
        endpoints on the endpoints only)."""
        before = previous.snapshot.by_cluster() if previous is not None else {}
        clusters: dict[str, Message] = {}
        assignments: dict[str, Message] = {}
        routes: dict[str, route_components_pb2.Route] = {}
        for r in snapshot.routes:
            old = before.get(r.cluster)
            if previous is not None and old is not None and old.policy == r.policy:
                clusters[r.cluster] = previous.clusters[r.cluster]
                routes[r.cluster] = previous.routes[r.cluster]
            else:
                clusters[r.cluster] = build_cluster(r, settings)
                routes[r.cluster] = build_model_route(r)
            if previous is not None and old is not None and old.endpoints == r.endpoints:
                assignments[r.cluster] = previous.assignments[r.cluster]
            else:
                assignments[r.cluster] = build_assignment(r)
        throttled = budget_routes(snapshot.throttled_keys, settings.base_routes, INFERENCE_PREFIX)
        return cls(snapshot, clusters, assignments, routes, throttled)


def _digest(resources: Mapping[str, Message]) -> str:
    """The version of a response: a digest of its resources (same content, same version)."""
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(resources[name].SerializeToString(deterministic=True))
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- streams


@dataclass
class _TypeState:
    """One resource type on one stream."""

    subscribed: bool = False
    names: frozenset[str] | None = None  # None: wildcard
    must_respond: bool = False
    version: str = ""  # of the last response sent
    nonce: str = ""  # of the last response sent
    sent: frozenset[str] = frozenset()  # resource names in it
    refs: frozenset[str] = frozenset()  # clusters it names (RDS)
    acked_version: str = ""
    acked: frozenset[str] = frozenset()
    acked_refs: frozenset[str] = frozenset()
    nacked_versions: set[str] = field(default_factory=set)


class XdsStream:
    """The protocol state of one Envoy's ADS stream (no I/O)."""

    def __init__(self, peer: str, settings: XdsSettings) -> None:
        self.peer = peer
        self.node = ""
        self._settings = settings
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0
        # The last cluster and endpoints sent by name (kept while a route still names it).
        self._clusters_sent: dict[str, Message] = {}
        self._assignments_sent: dict[str, Message] = {}
        self._unknown_types: set[str] = set()

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Record an ACK, NACK or (re)subscription."""
        if request.node.id:
            self.node = request.node.id
        type_url = request.type_url
        if type_url not in SERVED_TYPES:
            if type_url not in self._unknown_types:
                self._unknown_types.add(type_url)
                logger.warning("xds: type not served", extra={"type": type_url, "peer": self.peer})
            return
        state = self._types.setdefault(type_url, _TypeState())
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                return  # stale: a newer response is on its way, and its ACK says it all
            if request.HasField("error_detail"):
                if state.version not in state.nacked_versions:
                    state.nacked_versions.add(state.version)
                    logger.error(
                        "xds: envoy rejected a response",
                        extra={
                            "type": type_url,
                            "version": state.version,
                            "peer": self.peer,
                            "node": self.node,
                            "error": request.error_detail.message,
                        },
                    )
            else:
                state.acked_version = state.version
                state.acked = state.sent
                state.acked_refs = state.refs
        names = _names(type_url, request.resource_names)
        if not state.subscribed or names != state.names:
            state.must_respond = True
        state.subscribed = True
        state.names = names

    def responses(self, resources: Resources) -> list[discovery_pb2.DiscoveryResponse]:
        """What to send now, clusters first, then endpoints, then routes."""
        out = []
        for type_url in SERVED_TYPES:
            state = self._types.get(type_url)
            if state is None or not state.subscribed:
                continue
            chosen, refs = self._resources(type_url, state, resources)
            version = _digest(chosen)
            if version == state.version and not state.must_respond:
                continue
            self._nonce += 1
            state.nonce = str(self._nonce)
            state.version = version
            state.sent = frozenset(chosen)
            state.refs = refs
            state.must_respond = False
            if type_url == CLUSTER_TYPE:
                changed = any(
                    name in self._clusters_sent and self._clusters_sent[name] != cluster
                    for name, cluster in chosen.items()
                )
                endpoints = self._types.get(ENDPOINT_TYPE)
                if changed and endpoints is not None and endpoints.subscribed:
                    # A changed cluster warms again: its endpoints follow at once.
                    endpoints.must_respond = True
                self._clusters_sent = dict(chosen)
            elif type_url == ENDPOINT_TYPE:
                self._assignments_sent = dict(chosen)
            response = discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=state.nonce
            )
            for name in sorted(chosen):
                packed = any_pb2.Any()
                packed.Pack(chosen[name])
                response.resources.append(packed)
            out.append(response)
        return out

    def _acked(self, type_url: str) -> frozenset[str]:
        state = self._types.get(type_url)
        return state.acked if state is not None else frozenset()

    def _routed(self) -> frozenset[str]:
        """Clusters a route sent (ACKed or not yet) may still name."""
        routes = self._types.get(ROUTE_TYPE)
        if routes is None:
            return frozenset()
        return routes.refs | routes.acked_refs

    def _resources(
        self, type_url: str, state: _TypeState, resources: Resources
    ) -> tuple[dict[str, Message], frozenset[str]]:
        if type_url == CLUSTER_TYPE:
            chosen = dict(resources.clusters)
            for name in self._routed() - chosen.keys():
                if name in self._clusters_sent:  # withdrawn only once no route names it
                    chosen[name] = self._clusters_sent[name]
            return _filtered(chosen, state.names), frozenset()
        if type_url == ENDPOINT_TYPE:
            assignments = dict(resources.assignments)
            for name in self._routed() - assignments.keys():
                # A cluster kept for a route on its way out keeps its endpoints.
                if name in self._assignments_sent:
                    assignments[name] = self._assignments_sent[name]
            return _filtered(assignments, state.names), frozenset()
        # Routes: only to clusters Envoy ACKed, with endpoints it ACKed.
        ready = [
            name
            for name in resources.routes
            if name in self._acked(CLUSTER_TYPE) and name in self._acked(ENDPOINT_TYPE)
        ]
        order = {r.cluster: i for i, r in enumerate(resources.snapshot.routes)}
        ready.sort(key=order.__getitem__)
        config = build_route_configuration(
            (resources.routes[name] for name in ready),
            self._settings.base_routes,
            self._settings.base_host,
            resources.budget_routes,
        )
        return _filtered({ROUTE_CONFIG_NAME: config}, state.names), frozenset(ready)


def _names(type_url: str, names: Sequence[str]) -> frozenset[str] | None:
    """The requested names; None for a wildcard (CDS with no names, or ``*``)."""
    if type_url == CLUSTER_TYPE and (not names or "*" in names):
        return None
    return frozenset(names)


def _filtered(resources: dict[str, Message], names: frozenset[str] | None) -> dict[str, Message]:
    if names is None:
        return resources
    return {name: r for name, r in resources.items() if name in names}


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
                while requests:
                    stream.on_request(requests.popleft())
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
