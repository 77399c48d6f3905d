"""An OTLP/gRPC trace receiver in the test process: a real grpc.aio server of
opentelemetry.proto's TraceService (what a collector serves on 4317), on port 0, that
keeps every span it is sent. It runs on an event loop of its own in a daemon thread,
so synchronous tests can wait for spans while `helios up` runs in another process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the collector got it, with its resource's ``service.name``."""

    service: str
    span: Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_span_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    def attributes(self) -> dict[str, Any]:
        return {a.key: _value(a.value) for a in self.span.attributes}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: list[ReceivedSpan], lock: threading.Lock) -> None:
        self._received = received
        self._lock = lock

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                spans += [ReceivedSpan(service, span) for span in scope_spans.spans]
        with self._lock:
            self._received.extend(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """``start()`` binds 127.0.0.1:0; ``endpoint`` is then ``127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()
        self._received: list[ReceivedSpan] = []
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> int:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self._received, self._lock), self._server
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def stop(self) -> None:
        """Stop serving (the collector is then down: connections are refused)."""
        if self._server is not None:
            server, self._server = self._server, None
            asyncio.run_coroutine_threadsafe(server.stop(0), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._received)

    def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        """The spans received once ``found`` says they are all there (AssertionError,
        listing what came, after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                # The requests' spans, not the background calls' (heartbeats...).
                got = [(s.service, s.name, s.trace_id) for s in spans if "Service/" not in s.name]
                raise AssertionError(f"spans not received within {timeout:g}s; got {got[-40:]}")
            time.sleep(0.1)
