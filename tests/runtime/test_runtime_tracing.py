"""Tracing setup and create_channel: one trace across client and server."""

from __future__ import annotations

import logging

import grpc
import grpc.aio
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from runtime_echo import SERVICE

from runtime import tracing
from runtime.channels import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, create_channel
from runtime.server import RunningServer


@pytest.fixture
def spans() -> InMemorySpanExporter:
    # The global provider can be set once per process: the first configure wins, so
    # only check it is ours and has the Helios naming.
    provider = tracing.configure_tracing("echo", None)
    assert tracing.configure_tracing("other", None) is provider
    assert trace.get_tracer_provider() is provider
    assert isinstance(provider, TracerProvider)
    assert str(provider.resource.attributes["service.name"]).startswith("helios-")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_trace_propagates_through_create_channel(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    async with create_channel(server.address) as channel:
        assert await channel.unary_unary(f"/{SERVICE}/Echo")(b"hi", timeout=5) == b"hi"
        streamed = [m async for m in channel.unary_stream(f"/{SERVICE}/Stream")(b"2", timeout=5)]
        assert streamed == [b"0", b"1"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary(f"/{SERVICE}/Echo")(b"notfound:x", timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    finished = spans.get_finished_spans()
    for method in ("Echo", "Stream"):
        name = f"/{SERVICE}/{method}"
        named = [s for s in finished if s.name.endswith(f"{SERVICE}/{method}")]
        clients = [s for s in named if s.kind == SpanKind.CLIENT]
        servers = [s for s in named if s.kind == SpanKind.SERVER]
        assert clients and servers, (name, [(s.name, s.kind) for s in finished])
        client, srv = clients[0], servers[0]
        assert srv.context.trace_id == client.context.trace_id
        assert srv.parent is not None and srv.parent.span_id == client.context.span_id
        assert srv.attributes is not None
        assert srv.attributes["rpc.service"] == SERVICE
        assert srv.attributes["rpc.method"] == method
    # The server span carries the status the client saw.
    echoes = [s for s in finished if s.kind == SpanKind.SERVER and s.name.endswith("/Echo")]
    codes = sorted(str((s.attributes or {})["rpc.grpc.status_code"]) for s in echoes)
    assert codes == ["NOT_FOUND", "OK"]
    failed = next(s for s in echoes if (s.attributes or {})["rpc.grpc.status_code"] != "OK")
    assert failed.status.status_code == StatusCode.ERROR


def test_channel_options() -> None:
    opts = dict(CHANNEL_OPTIONS)
    assert opts["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert opts["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES
    assert opts["grpc.keepalive_time_ms"] > 0


def test_missing_otlp_exporter_warns(caplog: pytest.LogCaptureFixture) -> None:
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("opentelemetry-exporter-otlp is installed here")
    caplog.set_level(logging.WARNING, logger="runtime.tracing")
    assert tracing._otlp_exporter("localhost:4317") is None
    assert "not installed" in caplog.text


def test_spans_are_recorded_only_once_something_exports_them() -> None:
    provider = tracing._Provider("sampling")
    tracer = provider.get_tracer("test")
    before = tracer.start_span("before", kind=SpanKind.SERVER)
    # Not recorded, yet a real context that downstream hops continue.
    assert not before.is_recording()
    assert before.get_span_context().is_valid
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(before))
    assert f"{before.get_span_context().trace_id:032x}" in carrier["traceparent"]

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Now recorded: a caller's sampled trace is continued...
    sampled = propagate.extract({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    after = tracer.start_span("after", context=sampled)
    assert after.is_recording()
    assert after.get_span_context().trace_id == int("ab" * 16, 16)
    after.end()
    # ... and an unsampled one is not (parent-based sampling, OpenTelemetry's default).
    assert not tracer.start_span(
        "unsampled", context=trace.set_span_in_context(before)
    ).is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["after"]


class _RecordingInner:
    """Stands in for a grpc multi-callable: keeps the metadata each call was given."""

    def __init__(self) -> None:
        self.metadata: list[object] = []

    def __call__(self, request: bytes, *, metadata: object = None) -> str:
        self.metadata.append(metadata)
        return "call"


def test_a_process_that_records_nothing_passes_on_the_context_it_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_provider", tracing._Provider("quiet"))
    inner = _RecordingInner()
    call = tracing._TracedMultiCallable(inner, f"/{SERVICE}/Echo")
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    span = tracing.RpcSpan(f"/{SERVICE}/Echo", SERVICE, "Echo", (("traceparent", given),))
    token = span.enter()
    assert call(b"x") == "call"
    span.exit(token)
    span.finish("OK")
    # The caller's trace and span ids go on unchanged: no span of our own in between.
    assert inner.metadata[-1] == (("traceparent", given),)

    # No trace given: nothing is sent, and the caller's own metadata is left alone.
    span = tracing.RpcSpan(f"/{SERVICE}/Echo", SERVICE, "Echo", (("x-other", "1"),))
    token = span.enter()
    call(b"x", metadata=(("x-mine", "2"),))
    span.exit(token)
    assert inner.metadata[-1] == (("x-mine", "2"),)
    assert trace.get_current_span().get_span_context().is_valid is False


def test_annotate_and_phase_only_on_a_recording_span(spans: InMemorySpanExporter) -> None:
    spans.clear()
    tracing.annotate({"ignored": 1})  # no current span: nothing, no error
    with tracing.phase("orphan"):
        pass
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("rpc") as rpc:
        tracing.annotate({"gen_ai.request.model": "org/m"})
        with tracing.phase("cold_start", {"helios.model": "org/m"}):
            pass
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"rpc", "cold_start"}
    assert dict(finished["rpc"].attributes or {}) == {"gen_ai.request.model": "org/m"}
    child = finished["cold_start"]
    assert child.parent is not None and child.parent.span_id == rpc.get_span_context().span_id
