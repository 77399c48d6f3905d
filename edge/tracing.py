"""The front door's span: Envoy's OpenTelemetry tracer, exporting to the same collector
as the Helios services, so that one trace runs from Envoy to the engine.

Envoy starts (or continues, from a client's ``traceparent``) the trace of each request,
sends its span to the collector over OTLP (gRPC, or HTTP for ``http/protobuf``) and passes
W3C ``traceparent`` on to the worker or proxy, whose server span
(runtime/tracing.py ``RpcSpan``) is then the child of Envoy's. The collector is a static
cluster of the bootstrap (it is not the control plane's to change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from runtime.edge_names import MODEL_HEADER
from runtime.otel_config import GRPC, HTTP_PROTOBUF, TraceExport

__all__ = ["COLLECTOR_CLUSTER", "ENVOY_SERVICE_NAME", "EdgeTracing", "edge_tracing"]

COLLECTOR_CLUSTER = "otlp_collector"
ENVOY_SERVICE_NAME = "helios-envoy"
# The model a request is for (MODEL_HEADER: the Lua filter sets it from a REST body),
# tagged on Envoy's span under the GenAI semantic conventions' name.
_MODEL_TAG = ("gen_ai.request.model", MODEL_HEADER)
# How long Envoy waits for the collector per export (it drops spans rather than queue).
_EXPORT_TIMEOUT = "1s"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class EdgeTracing:
    """Where Envoy sends its spans: the collector ``host:port`` over ``protocol``
    (``grpc`` or ``http/protobuf``, then to ``uri``), with TLS when ``tls``; and the
    share of new traces it samples, in percent."""

    host: str
    port: int
    protocol: str = GRPC
    uri: str = ""
    tls: bool = False
    sample_percent: float = 100.0

    def __post_init__(self) -> None:
        if self.protocol not in (GRPC, HTTP_PROTOBUF):
            raise ValueError(f"unsupported OTLP protocol {self.protocol!r}")
        if not self.host or not 0 < self.port <= 65535:
            raise ValueError(f"not a collector address: {self.host!r}:{self.port}")
        if not 0.0 <= self.sample_percent <= 100.0:
            raise ValueError(f"sample_percent must be in [0, 100], got {self.sample_percent}")

    @property
    def speaks_grpc(self) -> bool:
        return self.protocol == GRPC

    def http_tracing(self) -> dict[str, Any]:
        """The HTTP connection manager's ``tracing``: the OpenTelemetry tracer."""
        provider: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": ENVOY_SERVICE_NAME,
        }
        if self.speaks_grpc:
            provider["grpc_service"] = {
                "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER},
                "timeout": _EXPORT_TIMEOUT,
            }
        else:
            provider["http_service"] = {
                "http_uri": {
                    "uri": self.uri,
                    "cluster": COLLECTOR_CLUSTER,
                    "timeout": _EXPORT_TIMEOUT,
                }
            }
        tag, header = _MODEL_TAG
        return {
            "random_sampling": {"value": self.sample_percent},
            "custom_tags": [{"tag": tag, "request_header": {"name": header}}],
            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": provider},
        }


def edge_tracing(export: TraceExport) -> EdgeTracing | None:
    """Envoy's tracing for the services' export (runtime/otel_config.py): the same
    collector and protocol; None when nothing is exported."""
    if not export.endpoint:
        return None
    endpoint = export.endpoint if "://" in export.endpoint else f"http://{export.endpoint}"
    parts = urlsplit(endpoint)
    if parts.hostname is None:
        raise ValueError(f"not a collector endpoint: {export.endpoint!r}")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 4317)
    return EdgeTracing(
        host=parts.hostname,
        port=port,
        protocol=export.protocol,
        uri=endpoint if export.protocol == HTTP_PROTOBUF else "",
        tls=parts.scheme == "https",
        sample_percent=round(export.sample_ratio * 100.0, 6),
    )
