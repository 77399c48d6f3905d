"""OpenTelemetry tracing: one TracerProvider per process, client interceptors, server spans.

A provider is always installed, exporter or not, so turning on export later (an OTLP
endpoint) needs no code change. Spans are made only once the provider has somewhere to
send them: spans nobody reads cost about an eighth of a proxy hop's CPU. Until then a
process passes on the trace context it was given (a caller's ``traceparent``), so a
trace crosses hops that do not export.
The OTLP exporter package is optional; without it we warn and keep going rather than
refuse to start.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable
from contextvars import Token
from typing import Any, cast

import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["RpcSpan", "TracedChannel", "configure_tracing"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_provider: _Provider | None = None  # the process-wide provider, once configured


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


class _RecordWhenExported(Sampler):
    """Records every span once a span processor is registered, none before: a span
    nobody will export is still created (ids, context propagation) but not recorded."""

    def __init__(self) -> None:
        self.exporting = False

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
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return SamplingResult(Decision.DROP, None, trace_state)

    def get_description(self) -> str:
        return "RecordWhenExported"


class _Provider(TracerProvider):
    """A TracerProvider that starts recording when its first span processor arrives."""

    def __init__(self, service: str) -> None:
        self._sampler_switch = _RecordWhenExported()
        super().__init__(
            sampler=self._sampler_switch,
            resource=Resource.create({SERVICE_NAME: f"helios-{service}"}),
        )

    @property
    def recording(self) -> bool:
        return self._sampler_switch.exporting

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._sampler_switch.exporting = True


def _recording() -> bool:
    """Whether this process records spans. When it does not, RPCs make no spans at all
    (not even non-recording ones) and only pass on a trace context they were given."""
    provider = _provider
    return provider is not None and provider.recording


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
        provider = _Provider(service)
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
