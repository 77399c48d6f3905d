"""Envoy's bootstrap for the Helios edge: one listener (HTTP connection manager, the
filters of edge/filters.py, the virtual host of edge/routes.py or RDS from the control
plane), the static clusters (edge/clusters.py), admin, and ADS when there is a control
plane."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.access import EdgeAccess
from edge.clusters import (
    Upstream,
    UpstreamTls,
    collect_clusters,
    collector_cluster,
    socket_address,
)
from edge.filters import http_filters
from edge.names import LISTENER_NAME, TRANSCODED_SERVICES
from edge.routes import edge_virtual_host
from edge.tracing import EdgeTracing
from runtime.edge_names import ROUTE_CONFIG_NAME
from runtime.limits import EDGE_MAX_HEADER_KB, INFERENCE_BODY_BYTES

# How long a stream may stay silent (no bytes either way) before Envoy resets it. There is
# no overall route timeout: a generation may legitimately run for many minutes.
STREAM_IDLE_TIMEOUT_S = 300
# The most a request body (a prompt) may hold: the Lua filter buffers POST bodies of chat
# and completions within the connection's buffer limit. Every route's own body limit comes
# from the buffer filter (413 above it; see edge/routes.py body_limit): chat and
# completions INFERENCE_BODY_BYTES, the estimator ESTIMATOR_BODY_BYTES (never more than
# chat), the admin API CONTROL_BODY_BYTES (runtime/limits.py holds the numbers; the
# servers' gRPC limits are twice these, so nothing the edge admits is refused upstream as
# 429).
MAX_REQUEST_BYTES = INFERENCE_BODY_BYTES
# Envoy warns at start-up when nothing caps the downstream connections.
MAX_DOWNSTREAM_CONNECTIONS = 50_000
_ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}

_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% '
    '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% grpc=%GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% in=%BYTES_RECEIVED% "
    "out=%BYTES_SENT% %DURATION%ms -> %UPSTREAM_CLUSTER% trace=%TRACE_ID%\n"
)
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


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _local_reply_config() -> dict[str, Any]:
    """The 431 comes from the codec, before any filter (Lua) runs: OpenAI's shape here."""
    return {
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
    }


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": _ACCESS_LOG_FORMAT}},
            },
        }
    ]


def _route_source(virtual_host: dict[str, Any], *, dynamic: bool) -> dict[str, Any]:
    """RDS from the control plane when ``dynamic``, else the static route configuration."""
    if dynamic:
        return {"rds": {"route_config_name": ROUTE_CONFIG_NAME, "config_source": _ADS_SOURCE}}
    return {"route_config": {"name": ROUTE_CONFIG_NAME, "virtual_hosts": [virtual_host]}}


def http_connection_manager(
    virtual_host: dict[str, Any],
    filters: list[dict[str, Any]],
    *,
    dynamic_routes: bool,
    tracing: EdgeTracing | None,
) -> dict[str, Any]:
    """The listener's HTTP connection manager (codec AUTO: HTTP/1.1 and h2c on one port)."""
    return {
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
        "local_reply_config": _local_reply_config(),
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "access_log": _access_log(),
        **_route_source(virtual_host, dynamic=dynamic_routes),
        "http_filters": filters,
        **({"tracing": tracing.http_tracing()} if tracing is not None else {}),
    }


def _listener(host: str, port: int, hcm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": LISTENER_NAME,
        "address": socket_address(host, port),
        "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _overload_manager() -> dict[str, Any]:
    return {
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
    }


def _watchdogs() -> dict[str, Any]:
    """Envoy's watchdog counts a thread stuck past ``miss_timeout`` (a stat; nothing is
    killed). Each thread touches it at a fraction of the shortest timeout: with Envoy's
    defaults (200 ms / 1 s) an idle edge woke its threads ~50 times a second, 3 ms of CPU
    a second on a small box; 1 s / 5 s wakes them ~10 times and still names a stuck
    thread within a second."""
    watchdog = {"miss_timeout": "1s", "megamiss_timeout": "5s"}
    return {"main_thread_watchdog": watchdog, "worker_watchdog": watchdog}


def _dynamic_resources(xds_upstream: Upstream) -> dict[str, Any]:
    """Routes and per-model clusters from the control plane's ADS."""
    return {
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
                            "retry_back_off": {"base_interval": "0.25s", "max_interval": "1s"}
                        },
                    }
                }
            ],
            "set_node_on_first_message_only": True,
        },
        "cds_config": _ADS_SOURCE,
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
    upstream_tls: UpstreamTls | None = None,
    access: EdgeAccess | None = None,
    xds_upstream: Upstream | None = None,
    tracing: EdgeTracing | None = None,
) -> str:
    """Render Envoy's bootstrap (JSON, which is also YAML) for the Helios edge.

    ``grpc_upstreams`` maps full gRPC service names (``helios.v1.InferenceService``, ...)
    to their upstream; what is routed, and with which key, is :func:`edge_virtual_host`'s.
    ``default_grpc_upstream`` answers health checks and reflection.
    Port 0 (listener or admin) asks for an ephemeral port.
    ``upstream_tls``: mutual TLS to every gRPC upstream with this client certificate
    (``helios up --tls``); the listener itself stays plain HTTP. ``access``: the keys
    (default: no inference key, so inference is open, and no admin key, so admin is closed).
    ``xds_upstream``: the control plane (the proxy's ADS). Then the routes come from it
    (RDS ``helios``: one route per warm model, then the virtual host rendered here, which
    the control plane is given as its base, see ``write_edge_routes``) and so do the
    per-model clusters (CDS/EDS); without it the routes are static and every request goes
    to the upstream of its service. ``tracing``: Envoy's span of each request goes to this
    OTLP collector (edge/tracing.py) and its trace context on to the upstream; the
    access log names each request's trace id either way (``-`` when untraced).
    """
    access = access or EdgeAccess()
    virtual_host, cluster_specs = edge_virtual_host(
        grpc_upstreams=grpc_upstreams,
        default_grpc_upstream=default_grpc_upstream,
        metrics_upstream=metrics_upstream,
        access=access,
    )
    filters = http_filters(
        access=access,
        descriptor_path=descriptor_path,
        transcoded_services=transcoded_services,
    )
    hcm = http_connection_manager(
        virtual_host, filters, dynamic_routes=xds_upstream is not None, tracing=tracing
    )
    if xds_upstream is not None:
        cluster_specs.append((xds_upstream, True))
    clusters = collect_clusters(cluster_specs, upstream_tls)
    if tracing is not None:
        clusters.append(collector_cluster(tracing))
    bootstrap: dict[str, Any] = {
        "node": {"id": "helios-edge", "cluster": "helios"},
        "admin": {"address": socket_address(admin_host, admin_port)},
        "overload_manager": _overload_manager(),
        "watchdogs": _watchdogs(),
        "static_resources": {
            "listeners": [_listener(listen_host, listen_port, hcm)],
            "clusters": clusters,
        },
    }
    if xds_upstream is not None:
        bootstrap["dynamic_resources"] = _dynamic_resources(xds_upstream)
    return json.dumps(bootstrap, indent=2) + "\n"
