"""What the control plane tells Envoy, as xDS resources: one cluster (CDS), endpoint
assignment (EDS) and route (RDS) per model of a :class:`proxy.xds_snapshot.XdsSnapshot`,
the route configuration around them (keys over their token budget first, the edge's base
routes last), and the settings they share. Pure builders (no I/O); the ADS protocol that
serves them is :mod:`proxy.xds_server`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from proxy.key_budget_routes import budget_routes
from proxy.xds_snapshot import (
    EndpointHealth,
    LbKind,
    ModelRoute,
    XdsSnapshot,
)
from runtime.edge_names import (
    MODEL_HEADER,
    REST_STREAM_PATHS,
    ROUTE_CONFIG_NAME,
    TRANSCODER_FILTER_NAME,
    VIRTUAL_HOST_NAME,
)
from runtime.envoy_tls import upstream_tls_socket

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
    transcoder_pb2,  # the transcoder off on the REST routes
)

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# The order in which a pass sends them (additions: clusters, then their endpoints, then
# the routes naming them).
SERVED_TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE)
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

INFERENCE_PREFIX = "/helios.v1.InferenceService/"
# The base route of the OpenAI REST API (edge/routes.py: transcoded, to the proxy).
REST_PREFIX = "/v1/"
# A model's REST cluster (its workers' REST ports) is its gRPC cluster's name + this.
REST_CLUSTER_SUFFIX = "-rest"
# What a model's REST route matches (with the model header): the streamed paths as the
# edge's Lua filter rewrote them (Envoy matches a regex against the path without query).
REST_PATH_REGEX = "|".join(re.escape(path) for path in REST_STREAM_PATHS)
REST_BUDGET_ROUTE_PREFIX = "helios-key-budget-rest-"
# The endpoint metadata namespace whose "hash_key" consistent hashing uses for a host.
HASH_KEY_METADATA = "envoy.lb"
# A REST route's per-route transcoder config: one that names no service, which the
# transcoder reads as "off for this route" (its descriptor is required, and empty). Not
# the generic FilterConfig{disabled}: Envoy applies that from the route a request matched
# on arrival, before the edge's Lua filter set the model header and rewrote the path this
# route matches on; the transcoder reads its own per-route config from the route matched
# when it runs, after them.
TRANSCODER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
# Retried on another host, only ever before response headers reach the client (Envoy's
# rule): a gRPC UNAVAILABLE answer (x-envoy-retry-grpc-on's name), a refused connection
# or HTTP/2 stream, a reset (x-envoy-retry-on's names). Envoy 1.40 accepts unknown names
# here silently: tests/proxy/test_xds_envoy.py checks connect-failure and unavailable by
# their effect.
RETRY_ON = "unavailable,connect-failure,refused-stream,reset"
# The same on a REST cluster, in HTTP's words: a refused or reset connection, and 503,
# which is what a worker answers for UNAVAILABLE (openai_compat/rest.py).
REST_RETRY_ON = "connect-failure,refused-stream,reset,retriable-status-codes"
REST_RETRIABLE_STATUS = (503,)
# Envoy closes a pooled connection to a worker's REST port after this long unused (before
# the worker would: runtime.http_stream.IDLE_TIMEOUT_S is longer).
REST_IDLE_TIMEOUT_S = 60
NUM_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5
DEFAULT_MAX_REQUESTS_PER_MODEL = 1024
# A burst of fleet changes (one heartbeat round touches every agent) makes one push.
DEBOUNCE_S = 0.01
# How long taking a model off a worker waits for every Envoy to ACK routes and endpoints
# without it (XdsServer.edge_synced) before it goes on anyway: one push and its ACKs take
# milliseconds; an Envoy that NACKs or hangs must not hold an eviction for long.
EDGE_SYNC_TIMEOUT_S = 2.0
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
    same shape as edge/clusters.py's static clusters use)."""

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
    # The edge Envoy runs on the workers' host (`helios up`): its REST endpoints are the
    # Unix sockets the workers report (no TCP between Envoy and a worker), where they
    # report one.
    local_sockets: bool = False

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
    """The edge's virtual host as edge/routes.py writes it (``write_edge_routes``): its
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
    return upstream_tls_socket(tls.cert, tls.key, tls.ca, tls.sni)


def rest_cluster_name(cluster: str) -> str:
    """The name of the cluster of a model's REST endpoints, from its gRPC cluster's."""
    return cluster + REST_CLUSTER_SUFFIX


def serves_rest(route: ModelRoute) -> bool:
    """Whether the model's streamed REST requests have an endpoint to go to: a healthy
    one with a REST port (else they stay on the transcoded gRPC route)."""
    return any(e.rest_port and e.health is EndpointHealth.HEALTHY for e in route.endpoints)


def _protocol_options(rest: bool) -> dict[str, Any]:
    """gRPC clusters speak HTTP/2 (one connection, kept alive by pings); REST ones
    HTTP/1.1 (a pooled connection per stream in flight, closed after an idle while)."""
    options: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    }
    if rest:
        options["explicit_http_config"] = {"http_protocol_options": {}}
        options["common_http_protocol_options"] = {"idle_timeout": f"{REST_IDLE_TIMEOUT_S}s"}
    else:
        options["explicit_http_config"] = {
            "http2_protocol_options": {
                "connection_keepalive": {"interval": "30s", "timeout": "10s"}
            }
        }
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}


def build_cluster(
    route: ModelRoute, settings: XdsSettings, *, rest: bool = False
) -> cluster_pb2.Cluster:
    """The model's cluster (its endpoints come by EDS over the same ADS stream); with
    ``rest``, the cluster of its workers' REST ports."""
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
        "name": rest_cluster_name(route.cluster) if rest else route.cluster,
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
                    # HTTP/1.1: a connection per request in flight.
                    "max_connections": settings.max_requests_per_model,
                }
            ]
        },
        "typed_extension_protocol_options": _protocol_options(rest),
    }
    if settings.upstream_tls is not None:
        cluster["transport_socket"] = _tls_socket(settings.upstream_tls)
    message = cluster_pb2.Cluster()
    _parse(cluster, message)
    return message


def build_assignment(
    route: ModelRoute, *, rest: bool = False, local_sockets: bool = False
) -> endpoint_pb2.ClusterLoadAssignment:
    """The model's endpoints (``route.endpoints``' hosts must be IP addresses); with
    ``rest``, those with a REST port, on it (on its Unix socket instead with
    ``local_sockets``, where the worker reports one). Built field by field: this runs
    for every load change."""
    name = rest_cluster_name(route.cluster) if rest else route.cluster
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    levels: dict[int, endpoint_pb2.LocalityLbEndpoints] = {}
    for e in route.endpoints:
        if rest and not e.rest_port:
            continue
        locality = levels.get(e.priority)
        if locality is None:
            locality = levels[e.priority] = message.endpoints.add(priority=e.priority)
        lb = locality.lb_endpoints.add()
        if rest and local_sockets and e.rest_socket:
            lb.endpoint.address.pipe.path = e.rest_socket
        else:
            lb.endpoint.address.socket_address.address = e.host
            lb.endpoint.address.socket_address.port_value = e.rest_port if rest else e.port
        lb.endpoint.hostname = e.address
        if route.policy.hash_header:
            # Hosts hash by their agent's address, not the port they are dialled on: a
            # session or prompt prefix lands on the same worker over gRPC and over REST
            # (its KV cache is there). EDS clusters cannot hash by hostname; this key is
            # what ring hash and Maglev use instead of the address when an endpoint has it.
            hash_key = lb.metadata.filter_metadata[HASH_KEY_METADATA]
            hash_key.fields["hash_key"].string_value = e.address
        lb.health_status = _HEALTH[e.health]
        lb.load_balancing_weight.value = e.weight
    return message


def _retry_policy(rest: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "retry_on": REST_RETRY_ON if rest else RETRY_ON,
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
    }
    if rest:
        policy["retriable_status_codes"] = list(REST_RETRIABLE_STATUS)
    return policy


def build_model_route(route: ModelRoute, *, rest: bool = False) -> route_components_pb2.Route:
    """InferenceService calls for this model (by header) -> its cluster; with ``rest``,
    its streamed REST requests (by path and header) -> its REST cluster, the transcoder
    off."""
    cluster = rest_cluster_name(route.cluster) if rest else route.cluster
    action: dict[str, Any] = {
        "cluster": cluster,
        # No overall limit (generations are long); the listener's stream idle timeout applies.
        "timeout": "0s",
        "retry_policy": _retry_policy(rest),
    }
    if route.policy.hash_header:
        action["hash_policy"] = [{"header": {"header_name": route.policy.hash_header}}]
    by_model = [{"name": MODEL_HEADER, "string_match": {"exact": route.model}}]
    data: dict[str, Any] = {
        "name": cluster,
        "match": {"prefix": INFERENCE_PREFIX, "headers": by_model},
        "route": action,
    }
    if rest:
        data["match"] = {"safe_regex": {"regex": REST_PATH_REGEX}, "headers": by_model}
        data["typed_per_filter_config"] = {
            TRANSCODER_FILTER_NAME: {"@type": TRANSCODER_TYPE, "proto_descriptor_bin": ""}
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
            same_policy = old is not None and old.policy == r.policy
            same_endpoints = old is not None and old.endpoints == r.endpoints
            names = [(r.cluster, False)]
            if serves_rest(r):
                names.append((rest_cluster_name(r.cluster), True))
            for name, rest in names:
                kept = previous if previous is not None and name in previous.clusters else None
                if kept is not None and same_policy:
                    clusters[name] = kept.clusters[name]
                    routes[name] = kept.routes[name]
                else:
                    clusters[name] = build_cluster(r, settings, rest=rest)
                    routes[name] = build_model_route(r, rest=rest)
                if kept is not None and same_endpoints:
                    assignments[name] = kept.assignments[name]
                else:
                    assignments[name] = build_assignment(
                        r, rest=rest, local_sockets=settings.local_sockets
                    )
        keys = snapshot.throttled_keys
        throttled = budget_routes(keys, settings.base_routes, INFERENCE_PREFIX)
        if any(name.endswith(REST_CLUSTER_SUFFIX) for name in routes):
            # A throttled key's streamed REST requests would match a model's REST route
            # before the transcoder made them InferenceService calls: the REST route of
            # the base routes takes them first (transcoded, they meet the route above).
            throttled += budget_routes(
                keys, settings.base_routes, REST_PREFIX, name_prefix=REST_BUDGET_ROUTE_PREFIX
            )
        return cls(snapshot, clusters, assignments, routes, throttled)


def resource_digests(resources: Mapping[str, Message]) -> dict[str, str]:
    """Each resource's digest by name: same content, same digest."""
    return {
        name: hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]
        for name, message in resources.items()
    }


def response_version(digests: Mapping[str, str]) -> str:
    """The version of a response: a digest of its resources' names and digests (same
    content, same version)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digests[name].encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
