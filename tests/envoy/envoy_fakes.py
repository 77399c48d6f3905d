"""Test doubles for the Envoy edge tests: a fake InferenceService and a tiny metrics server.

The fake speaks the real protocol (a grpc.aio server with the generated servicer and server
reflection for every helios.v1 service); its behaviour is driven by the request:

* model ``missing``: NOT_FOUND;
* ``max_tokens`` (or ``max_completion_tokens``) set and < 1: INVALID_ARGUMENT;
* model ``slow-stream`` (chat stream): the first chunk, then a pause of ``SLOW_PAUSE_S``;
* model ``fails-midstream`` (streams): two chunks, then, when the request came through the
  REST edge (metadata ``x-helios-edge: rest``), a final chunk with ``error`` set, else an
  UNAVAILABLE status;
* otherwise: a reply that echoes the last message (or the prompt), in several chunks when
  streamed, with ``finish_reason`` "stop" and usage counts.

Every call records its invocation metadata in ``FakeInference.calls`` (method, metadata).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.api.httpbody_pb2 import HttpBody
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from helios.v1 import (
    admin_pb2,
    estimator_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    storage_pb2,
    worker_pb2,
)

from cli.envoy import EnvoyProcess
from openai_compat.events import CHAT_TEXT, COMPLETION_TEXT, event_stream

MODEL_ID = "fake-model"
# The admin key the module's edge accepts (tests/envoy/conftest.py).
ADMIN_KEY = "test-admin-key"
CREATED = 1_700_000_000
STREAM_PIECES = ("Hello", ", ", "world", "!")
SLOW_PAUSE_S = 1.5
METRICS_BODY = (
    b"# HELP helios_fake_total A fake counter.\n"
    b"# TYPE helios_fake_total counter\n"
    b"helios_fake_total 42.0\n"
)

HELIOS_SERVICES = tuple(
    service.full_name
    for module in (
        admin_pb2,
        estimator_pb2,
        inference_pb2,
        registry_pb2,
        storage_pb2,
        worker_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
)

T = TypeVar("T")


def _text(value: Any) -> str:
    """A google.protobuf.Value (string or list of strings/content parts) as text."""
    data = json_format.MessageToDict(value) if value.ByteSize() else ""
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        parts = []
        for item in data:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
        return "".join(parts)
    return ""


def _is_rest(context: grpc.aio.ServicerContext) -> bool:
    return any(
        key == "x-helios-edge" and value == "rest"
        for key, value in context.invocation_metadata() or ()
    )


def _usage(prompt: str, completion: str) -> inference_pb2.CompletionUsage:
    p, c = len(prompt.split()), len(completion.split())
    return inference_pb2.CompletionUsage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, str | bytes], ...]]] = []

    def _record(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls.append((method, tuple(context.invocation_metadata() or ())))

    async def _check(self, params: Any, context: grpc.aio.ServicerContext) -> None:
        if params.model == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, f'model "{params.model}" not found')
        for field in ("max_tokens", "max_completion_tokens"):
            present = field in params.DESCRIPTOR.fields_by_name and params.HasField(field)
            if present and getattr(params, field) < 1:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be >= 1")

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        self._record("ListModels", context)
        return inference_pb2.ListModelsResponse(
            object="list",
            data=[
                inference_pb2.Model(
                    id=MODEL_ID,
                    object="model",
                    created=CREATED,
                    owned_by="helios",
                    ready_replicas=1,
                )
            ],
        )

    async def CreateChatCompletion(
        self, request: inference_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CreateChatCompletionResponse:
        self._record("CreateChatCompletion", context)
        params = request.params
        await self._check(params, context)
        prompt = _text(params.messages[-1].content) if params.messages else ""
        content = f"echo: {prompt}"
        return inference_pb2.CreateChatCompletionResponse(
            id="chatcmpl-fake",
            object="chat.completion",
            created=CREATED,
            model=params.model,
            choices=[
                inference_pb2.ChatCompletionChoice(
                    index=0,
                    message=inference_pb2.AssistantMessage(role="assistant", content=content),
                    finish_reason="stop",
                )
            ],
            usage=_usage(prompt, content),
        )

    async def StreamChatCompletion(
        self, request: inference_pb2.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.StreamChatCompletionResponse]:
        self._record("StreamChatCompletion", context)
        async for chunk in self._chat_chunks(request.params, context, rest=_is_rest(context)):
            yield chunk

    async def StreamChatCompletionEvents(
        self,
        request: inference_pb2.StreamChatCompletionEventsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[HttpBody]:
        """The chunks printed by the servers' own printer (openai_compat.events)."""
        self._record("StreamChatCompletionEvents", context)
        chunks = self._chat_chunks(request.params, context, rest=True)
        async for body in event_stream(chunks, CHAT_TEXT):
            yield body

    async def _chat_chunks(
        self,
        params: inference_pb2.ChatCompletionParams,
        context: grpc.aio.ServicerContext,
        rest: bool,
    ) -> AsyncGenerator[inference_pb2.StreamChatCompletionResponse, None]:
        await self._check(params, context)

        def chunk(**kwargs: Any) -> inference_pb2.StreamChatCompletionResponse:
            return inference_pb2.StreamChatCompletionResponse(
                id="chatcmpl-fake-stream",
                object="chat.completion.chunk",
                created=CREATED,
                model=params.model,
                **kwargs,
            )

        pieces = STREAM_PIECES[:2] if params.model == "fails-midstream" else STREAM_PIECES
        for i, piece in enumerate(pieces):
            delta = inference_pb2.ChatCompletionDelta(content=piece)
            if i == 0:
                delta.role = "assistant"
            yield chunk(choices=[inference_pb2.ChatCompletionChunkChoice(index=0, delta=delta)])
            await asyncio.sleep(SLOW_PAUSE_S if params.model == "slow-stream" and i == 0 else 0.01)
        if params.model == "fails-midstream":
            if rest:
                yield chunk(
                    error=inference_pb2.ErrorDetail(
                        message="worker lost mid-stream", type="server_error", code="UNAVAILABLE"
                    )
                )
                return
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker lost mid-stream")
        yield chunk(
            choices=[
                inference_pb2.ChatCompletionChunkChoice(
                    index=0, delta=inference_pb2.ChatCompletionDelta(), finish_reason="stop"
                )
            ]
        )
        if params.stream_options.include_usage:
            yield chunk(usage=_usage("prompt", "".join(pieces)))

    async def CreateCompletion(
        self, request: inference_pb2.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CreateCompletionResponse:
        self._record("CreateCompletion", context)
        params = request.params
        await self._check(params, context)
        prompt = _text(params.prompt)
        text = f" echo: {prompt}"
        return inference_pb2.CreateCompletionResponse(
            id="cmpl-fake",
            object="text_completion",
            created=CREATED,
            model=params.model,
            choices=[inference_pb2.CompletionChoice(index=0, text=text, finish_reason="length")],
            usage=_usage(prompt, text),
        )

    async def StreamCompletion(
        self, request: inference_pb2.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.StreamCompletionResponse]:
        self._record("StreamCompletion", context)
        chunks = self._completion_chunks(request.params, context, rest=_is_rest(context))
        async for chunk in chunks:
            yield chunk

    async def StreamCompletionEvents(
        self,
        request: inference_pb2.StreamCompletionEventsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[HttpBody]:
        self._record("StreamCompletionEvents", context)
        chunks = self._completion_chunks(request.params, context, rest=True)
        async for body in event_stream(chunks, COMPLETION_TEXT):
            yield body

    async def _completion_chunks(
        self,
        params: inference_pb2.CompletionParams,
        context: grpc.aio.ServicerContext,
        rest: bool,
    ) -> AsyncGenerator[inference_pb2.StreamCompletionResponse, None]:
        await self._check(params, context)

        def chunk(**kwargs: Any) -> inference_pb2.StreamCompletionResponse:
            return inference_pb2.StreamCompletionResponse(
                id="cmpl-fake-stream",
                object="text_completion",
                created=CREATED,
                model=params.model,
                **kwargs,
            )

        pieces = STREAM_PIECES[:2] if params.model == "fails-midstream" else STREAM_PIECES
        for piece in pieces:
            yield chunk(choices=[inference_pb2.CompletionChoice(index=0, text=piece)])
            await asyncio.sleep(0.01)
        if params.model == "fails-midstream":
            if rest:
                yield chunk(
                    error=inference_pb2.ErrorDetail(
                        message="worker lost mid-stream", type="server_error", code="UNAVAILABLE"
                    )
                )
                return
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker lost mid-stream")
        yield chunk(
            choices=[inference_pb2.CompletionChoice(index=0, text="", finish_reason="stop")]
        )


async def start_fake_server() -> tuple[grpc.aio.Server, int, FakeInference]:
    """Start the fake on 127.0.0.1:0 (with reflection and health); returns
    (server, port, servicer)."""
    server = grpc.aio.server()
    servicer = FakeInference()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*HELIOS_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, servicer


class BackgroundLoop:
    """An asyncio loop in a daemon thread, so sync tests can block while servers run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(METRICS_BODY)))
        self.end_headers()
        self.wfile.write(METRICS_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_metrics_server() -> ThreadingHTTPServer:
    """A Prometheus-like /metrics endpoint on 127.0.0.1:0, served from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Edge:
    """A running edge: Envoy in front of the fake, with the loop that runs them."""

    envoy: EnvoyProcess
    fake: FakeInference
    fake_port: int
    loop: BackgroundLoop
    descriptor: Path

    @property
    def port(self) -> int:
        return self.envoy.listen_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.loop.run(coro, timeout)
