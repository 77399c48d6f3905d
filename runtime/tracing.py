"""OpenTelemetry tracing: one TracerProvider per process, client interceptors, server spans.

A provider is always installed, exporter or not: spans are then real (recording) and
trace context is propagated through every hop, so turning on export later (an OTLP
endpoint) needs no code change. The OTLP exporter package is optional; without it we
warn and keep going rather than refuse to start.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.instrumentation import grpc as otel_grpc
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["RpcSpan", "aio_client_interceptors", "configure_tracing"]

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


# grpc.aio's Metadata iterates as (key, value) pairs.
Metadata = Iterable[tuple[str, Any]]


class _MetadataGetter(Getter[Metadata]):
    """Reads W3C trace headers (``traceparent``, ``tracestate``) from gRPC metadata."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()
# A proxy until configure_tracing installs the provider; then it delegates to it.
_tracer = trace.get_tracer("helios.runtime")


class RpcSpan:
    """The SERVER span of one incoming RPC, child of the caller's span when its metadata
    carries one (attributes follow OpenTelemetry's RPC conventions)."""

    __slots__ = ("_span",)

    def __init__(self, full_method: str, service: str, method: str, metadata: Metadata | None):
        parent = propagate.extract(metadata or (), getter=_GETTER)
        self._span = _tracer.start_span(
            full_method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make the span current (outgoing calls made meanwhile become its children)."""
        with trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def finish(self, code: str) -> None:
        """End the span with the RPC's final status code name (``OK``, ``NOT_FOUND``...)."""
        self._span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            self._span.set_status(Status(StatusCode.ERROR, code))
        self._span.end()


def aio_client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's grpc.aio client interceptors (all four RPC shapes)."""
    interceptors: list[grpc.aio.ClientInterceptor] = otel_grpc.aio_client_interceptors()
    return interceptors
