"""OpenTelemetry tracing: one TracerProvider per process, grpc interceptors for both ends.

A provider is always installed, exporter or not: spans are then real (recording) and
trace context is propagated through every hop, so turning on export later (an OTLP
endpoint) needs no code change. The OTLP exporter package is optional; without it we
warn and keep going rather than refuse to start.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence

import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation import grpc as otel_grpc
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

__all__ = ["aio_client_interceptors", "aio_server_interceptor", "configure_tracing"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_provider: TracerProvider | None = None


def _otlp_exporter(endpoint: str) -> SpanExporter | None:
    try:
        module = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    except ImportError:
        log.warning(
            "OTLP endpoint %s given but opentelemetry-exporter-otlp is not installed; "
            "spans will not be exported",
            endpoint,
            extra={"otlp_endpoint": endpoint},
        )
        return None
    # Plain-text to the collector unless it is explicitly https (matches create_channel).
    insecure = not endpoint.startswith("https://")
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
    return exporter


def configure_tracing(service: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the process-wide TracerProvider (``service.name = helios-<service>``).

    OpenTelemetry allows setting the global provider once per process, so later calls
    return the first provider unchanged (and say so at debug level).
    """
    global _provider
    with _lock:
        if _provider is not None:
            log.debug("tracing already configured; ignoring configure_tracing(%r)", service)
            return _provider
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"helios-{service}"}))
        if otlp_endpoint:
            exporter = _otlp_exporter(otlp_endpoint)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
                log.info(
                    "exporting traces to %s", otlp_endpoint, extra={"otlp_endpoint": otlp_endpoint}
                )
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


def aio_server_interceptor() -> grpc.aio.ServerInterceptor:
    """OpenTelemetry's grpc.aio server interceptor (one span per incoming RPC).

    It uses the global provider lazily, so it may be created before configure_tracing.
    """
    interceptor: grpc.aio.ServerInterceptor = otel_grpc.aio_server_interceptor()
    return interceptor


def aio_client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's grpc.aio client interceptors (all four RPC shapes)."""
    interceptors: list[grpc.aio.ClientInterceptor] = otel_grpc.aio_client_interceptors()
    return interceptors
