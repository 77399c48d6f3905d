"""The bootstrap's static clusters: the gRPC upstreams (h2c, or mutual TLS), the metrics
endpoint (HTTP/1.1), the control plane and the OTLP collector."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.tracing import COLLECTOR_CLUSTER, EdgeTracing
from runtime.envoy_tls import TLS_SOCKET, UPSTREAM_TLS_TYPE, upstream_tls_socket

# The trust store for an https OTLP collector (Debian's and Ubuntu's path).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class Upstream:
    """A cluster Envoy proxies to: one endpoint ``host:port`` named ``name``."""

    name: str  # cluster name
    host: str
    port: int


@dataclass(frozen=True)
class UpstreamTls:
    """Mutual TLS from Envoy to its gRPC upstreams: Envoy's client cert/key and the CA."""

    cert: Path
    key: Path
    ca: Path


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _upstream_tls_socket(tls: UpstreamTls, sni: str) -> dict[str, Any]:
    return upstream_tls_socket(tls.cert, tls.key, tls.ca, sni)


def _http2_options() -> dict[str, Any]:
    return {
        _HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                }
            },
        }
    }


def cluster(upstream: Upstream, *, http2: bool, tls: UpstreamTls | None = None) -> dict[str, Any]:
    """One upstream's cluster: STATIC for an IP host, STRICT_DNS for a name; HTTP/2 (and
    mutual TLS when ``tls``) for gRPC, HTTP/1.1 otherwise."""
    spec: dict[str, Any] = {
        "name": upstream.name,
        "type": "STATIC" if _is_ip(upstream.host) else "STRICT_DNS",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": upstream.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address(upstream.host, upstream.port)}}
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
        spec["dns_lookup_family"] = "V4_PREFERRED"
    if http2 and tls is not None:  # gRPC upstreams; the metrics endpoint stays HTTP
        spec["transport_socket"] = _upstream_tls_socket(
            tls, "localhost" if _is_ip(upstream.host) else upstream.host
        )
    if http2:
        spec["typed_extension_protocol_options"] = _http2_options()
    return spec


def collector_cluster(tracing: EdgeTracing) -> dict[str, Any]:
    """The OTLP collector's cluster (HTTP/2 for gRPC); TLS with the system's trust store
    when its endpoint is https (never the mesh's own client certificate)."""
    upstream = Upstream(COLLECTOR_CLUSTER, tracing.host, tracing.port)
    spec = cluster(upstream, http2=tracing.speaks_grpc)
    if tracing.tls:
        spec["transport_socket"] = {
            "name": TLS_SOCKET,
            "typed_config": {
                "@type": UPSTREAM_TLS_TYPE,
                "sni": tracing.host,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": SYSTEM_CA_BUNDLE}}
                },
            },
        }
    return spec


def collect_clusters(
    upstreams: Sequence[tuple[Upstream, bool]], tls: UpstreamTls | None = None
) -> list[dict[str, Any]]:
    """One cluster per upstream name, from (upstream, speaks HTTP/2) pairs; a name given
    twice must mean the same upstream."""
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
        clusters.append(cluster(upstream, http2=http2, tls=tls))
    return clusters
