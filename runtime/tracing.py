"""OpenTelemetry tracing: one TracerProvider per process, client interceptors, server spans.

A provider is always installed, exporter or not, so turning on export later (an OTLP
endpoint) needs no code change. Spans are made only once the provider has somewhere to
send them: spans nobody reads cost about an eighth of a proxy hop's CPU. Until then a
process passes on the trace context it was given (a caller's ``traceparent``), so a
trace crosses hops that do not export.
The OTLP exporter package is optional; without it we warn and keep going rather than
refuse to start. Where spans go, over which protocol and how many are sampled follow the
standard ``OTEL_*`` variables (runtime/otel_config.py), ``--otlp-endpoint`` first.

Export never holds up a request: a finished span is appended to the batch processor's
bounded queue (a deque: no lock wait, no I/O) and a thread of its own sends the batches.
With the collector down that thread retries and, once the queue is full, spans are
dropped; the SDK would log a warning for every dropped span, here once a minute.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import Any, cast

import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from runtime.logging import RateLimitedFilter
from runtime.otel_config import (
    GRPC,
    HTTP_PROTOBUF,
    TraceExport,
    sampler_from_env,
    trace_export_from_env,
)

__all__ = ["RpcSpan", "TracedChannel", "annotate", "configure_tracing", "phase"]

log = logging.getLogger(__name__)

# A resource attribute on every Helios process's spans: which service (proxy, worker...)
# made them, whatever service.name the environment chose.
HELIOS_SERVICE = "helios.service"

_lock = threading.Lock()
_provider: _Provider | None = None  # the process-wide provider, once configured


_EXPORTER_MODULES = {
    GRPC: "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    HTTP_PROTOBUF: "opentelemetry.exporter.otlp.proto.http.trace_exporter",
}


def _otlp_exporter(export: TraceExport | str) -> SpanExporter | None:
    """The OTLP exporter for ``export`` (a bare string: an OTLP/gRPC endpoint); None,
    with a warning, when its package is not installed."""
    if isinstance(export, str):
        export = TraceExport(export)
    endpoint = export.endpoint
    try:
        module = importlib.import_module(_EXPORTER_MODULES[export.protocol])
    except ImportError as exc:
        # Not installed, or broken: xds-protos' stale copy of opentelemetry/proto over
        # opentelemetry-proto's (Makefile: `make setup` reinstalls the latter).
        log.warning(
            "OTLP endpoint %s given but the OTLP exporter is not installed or cannot be "
            "imported (%s); spans will not be exported",
            endpoint,
            exc,
            extra={"otlp_endpoint": endpoint},
        )
        return None
    if export.protocol == HTTP_PROTOBUF:
        http_exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint)
        return http_exporter
    # Plain-text to the collector unless it is explicitly https (matches create_channel).
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint, insecure=export.insecure)
    return exporter


class _DroppedSpanFilter(RateLimitedFilter):
    """The batch processor warns once per span it drops (queue full: the collector is down
    or slow); on the token path that is a log line per span. One line a minute instead,
    saying how many were not logged."""

    PREFIX = "Queue full"

    def rewrite(self, record: logging.LogRecord) -> None:
        record.msg = "span export queue full (collector down or slow): dropping spans"
        record.args = None


# At shutdown, how long the spans still queued get to reach the collector. The SDK waits
# up to 30 s, retrying a collector that is down, and would hold up a stopping service.
SHUTDOWN_EXPORT_S = 3.0


class _BatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor with :data:`SHUTDOWN_EXPORT_S` to flush at shutdown."""

    def shutdown(self) -> None:
        # The SDK's shutdown() takes no timeout; its inner BatchProcessor's does.
        inner = getattr(self, "_batch_processor", None)
        if inner is None:
            super().shutdown()
            return
        inner.shutdown(timeout_millis=int(SHUTDOWN_EXPORT_S * 1000))


def _quiet_dropped_spans() -> None:
    sdk_log = logging.getLogger("opentelemetry.sdk._shared_internal")
    if not any(isinstance(f, _DroppedSpanFilter) for f in sdk_log.filters):
        sdk_log.addFilter(_DroppedSpanFilter())


class _RecordWhenExported(Sampler):
    """Records every span once a span processor is registered, none before: a span
    nobody will export is still created (ids, context propagation) but not recorded."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.exporting = False
        # What decides once exporting (OTEL_TRACES_SAMPLER; default: the parent's decision,
        # else sample).
        self._sampler = sampler if sampler is not None else ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if self.exporting:
            return self._sampler.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        return SamplingResult(Decision.DROP, None, trace_state)

    def get_description(self) -> str:
        return f"RecordWhenExported{{{self._sampler.get_description()}}}"


class _Provider(TracerProvider):
    """A TracerProvider that starts recording when its first span processor arrives."""

    def __init__(self, service: str, sampler: Sampler | None = None) -> None:
        self._sampler_switch = _RecordWhenExported(sampler)
        super().__init__(sampler=self._sampler_switch, resource=_resource(service))

    @property
    def recording(self) -> bool:
        return self._sampler_switch.exporting

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._sampler_switch.exporting = True


def _resource(service: str) -> Resource:
    """``service.name`` is ``helios-<service>`` unless OTEL_SERVICE_NAME or
    OTEL_RESOURCE_ATTRIBUTES name it; ``helios.service`` always says which service it is.
    OTEL_RESOURCE_ATTRIBUTES' other attributes are merged by Resource.create."""
    attributes: dict[str, str] = {HELIOS_SERVICE: service}
    if SERVICE_NAME not in OTELResourceDetector().detect().attributes:
        attributes[SERVICE_NAME] = f"helios-{service}"
    return Resource.create(attributes)


def _recording() -> bool:
    """Whether this process records spans. When it does not, RPCs make no spans at all
    (not even non-recording ones) and only pass on a trace context they were given."""
    provider = _provider
    return provider is not None and provider.recording


def configure_tracing(
    service: str, otlp_endpoint: str | None = None, *, environ: Mapping[str, str] | None = None
) -> TracerProvider:
    """Install the process-wide TracerProvider (``service.name = helios-<service>``),
    exporting to ``otlp_endpoint`` or where the OTEL_* variables in ``environ`` (default
    ``os.environ``) say (see runtime/otel_config.py).

    OpenTelemetry allows setting the global provider once per process, so later calls
    return the first provider unchanged (and say so at debug level).
    """
    global _provider
    with _lock:
        if _provider is not None:
            log.debug("tracing already configured; ignoring configure_tracing(%r)", service)
            return _provider
        export = trace_export_from_env(otlp_endpoint, environ)
        provider = _Provider(service, sampler_from_env(environ))
        if export.endpoint:
            exporter = _otlp_exporter(export)
            if exporter is not None:
                _quiet_dropped_spans()
                provider.add_span_processor(_BatchSpanProcessor(exporter))
                log.info(
                    "exporting traces to %s (%s)",
                    export.endpoint,
                    export.protocol,
                    extra={"otlp_endpoint": export.endpoint, "otlp_protocol": export.protocol},
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
    carries one (attributes follow OpenTelemetry's RPC conventions).

    In a process that records nothing, no span is made: the caller's trace context, if
    any, is only kept current so that outgoing calls carry it on."""

    __slots__ = ("_parent", "_span")

    def __init__(self, full_method: str, service: str, method: str, metadata: Metadata | None):
        self._span: trace.Span | None = None
        self._parent: Context | None = None
        if _recording():
            parent = propagate.extract(metadata or (), getter=_GETTER)
            self._span = _tracer.start_span(
                full_method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )
        elif metadata and any(key == "traceparent" for key, _ in metadata):
            self._parent = propagate.extract(metadata, getter=_GETTER)

    def enter(self) -> object | None:
        """Make the span current (outgoing calls made meanwhile become its children);
        hand the result to :meth:`exit`. A plain call, not a context manager: it runs
        around every RPC."""
        if self._span is not None:
            return otel_context.attach(trace.set_span_in_context(self._span))
        if self._parent is not None:
            return otel_context.attach(self._parent)
        return None

    @staticmethod
    def exit(token: object | None) -> None:
        """Undo :meth:`enter`."""
        if token is not None:
            otel_context.detach(cast("Token[Context]", token))

    def finish(self, code: str) -> None:
        """End the span with the RPC's final status code name (``OK``, ``NOT_FOUND``...)."""
        if self._span is None:
            return
        self._span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            self._span.set_status(Status(StatusCode.ERROR, code))
        self._span.end()


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Put ``attributes`` on the current span (an RPC's server span) when it records;
    nothing otherwise (no span, or nothing exported)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


@contextmanager
def phase(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[None]:
    """A child span of the current one around a step of its work (a cold start's wait,
    a download...), made only when the current span records."""
    if not trace.get_current_span().is_recording():
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


class _TracedMultiCallable:
    """A channel's multi-callable that wraps each call in a CLIENT span and sends the
    span's context (W3C ``traceparent``) in the call's metadata. A process that records
    nothing sends on the current context (one it was given), if there is one."""

    __slots__ = ("_attributes", "_inner", "_method")

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._method = method
        self._attributes = _rpc(method)

    def __call__(self, *args: Any, metadata: Metadata | None = None, **kwargs: Any) -> Any:
        carrier: dict[str, str] = {}
        if not _recording():
            if trace.get_current_span().get_span_context().is_valid:
                propagate.inject(carrier)
                metadata = (*(metadata or ()), *carrier.items())
            return self._inner(*args, metadata=metadata, **kwargs)
        span = _tracer.start_span(self._method, kind=SpanKind.CLIENT, attributes=self._attributes)
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        call = self._inner(*args, metadata=(*(metadata or ()), *carrier.items()), **kwargs)
        call.add_done_callback(lambda done: _end_client_span(span, done))
        return call


def _rpc(full_method: str) -> dict[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _end_client_span(span: trace.Span, call: Any) -> None:
    if call.cancelled():
        span.set_status(Status(StatusCode.ERROR, "CANCELLED"))
    span.end()


class TracedChannel(grpc.aio.Channel):
    """A grpc.aio channel whose calls are traced (a CLIENT span each, its context sent to
    the server, where :class:`RpcSpan` continues the trace).

    Not a client interceptor: grpc.aio runs every intercepted call through an extra task
    and wrapper call object, which cost more per call than the rest of a proxy hop's
    own work; this adds a span and a metadata entry and nothing else.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def __aenter__(self) -> TracedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.unary_unary(method, *args, **kwargs), method)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.unary_stream(method, *args, **kwargs), method)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.stream_unary(method, *args, **kwargs), method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.stream_stream(method, *args, **kwargs), method)
