"""Server CPU per streamed token, by transport: what a REST stream's every token costs the
process that writes it.

The worker's CPU per output token is what separates Helios from bare vLLM's API server on
a small CPU box (bench/vllm_compare_bench.py's CPU table: the serving processes compete
with the engine core for the same cores). This splits it: four servers, each its own
process, stream the same server-sent event, paced as an engine's decode steps release
tokens (one per stream every ``--pace-ms``), to ``--streams`` concurrent clients in this
process; the server's CPU seconds (all its threads, psutil) are divided by the events
received.

- ``grpc floor``: a bare grpc.aio server on uvloop (as Helios' services run) streaming
  ``google.api.HttpBody`` messages from an async generator: the least a streamed gRPC
  message costs a Python server, whatever the servicer does.
- ``worker``: the worker's own ``InferenceService.StreamCompletionEvents``
  (bench/zero_worker.py, its zero-cost engine paced): the floor plus Helios' layers
  (interceptor, admission, usage, OpenAI chunks, event printing).
- ``worker REST port``: the worker's REST port (``POST /v1/completions:stream``, where
  Envoy sends a warm model's REST streams): HTTP/1.1 chunks plus Helios' layers.
- ``http/1.1``: a raw asyncio server on uvloop writing the same event as HTTP/1.1 chunked
  transfer encoding, one write per event: what a process serving SSE itself pays per
  token (vLLM's API server is uvicorn, which writes this way, plus FastAPI on top).

Rounds alternate between the servers (``--rounds``); the table gives each one's median
and range. A last line gives Helios' layers alone: the worker's InferenceService driven in
this process, no gRPC, its zero-cost engine unpaced (servicer, backend, engine stream,
event printing), CPU per event. The clock tick of a process's CPU times is 10 ms: use enough tokens.

    .venv/bin/python bench/stream_transport_bench.py [--streams 16] [--tokens 400]
        [--pace-ms 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import grpc
import psutil
import uvloop
from google.api.httpbody_pb2 import HttpBody
from google.protobuf.struct_pb2 import Value
from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
# One completions chunk as the worker prints it (same size, same shape).
EVENT = (
    b'data: {"id":"cmpl-0123456789abcdef","object":"text_completion","created":1765000000,'
    b'"model":"bench-model","choices":[{"index":0,"text":"tok ","finish_reason":""}]}\n\n'
)
START_LIMIT_S = 60.0


# ------------------------------------------------------------------ the servers


def serve_grpc_floor(ready: Path, pace_s: float) -> None:
    """The bare grpc.aio stream: one HttpBody per paced token."""

    async def stream(
        request: inference_pb2.StreamCompletionEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[HttpBody]:
        for _ in range(request.params.max_tokens):
            await asyncio.sleep(pace_s)
            yield HttpBody(data=EVENT)

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=inference_pb2.StreamCompletionEventsRequest.FromString,
            response_serializer=HttpBody.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "helios.v1.InferenceService", {"StreamCompletionEvents": handler}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await asyncio.to_thread(ready.write_text, json.dumps({"grpc_port": port}))
        await server.wait_for_termination()

    uvloop.run(main())


class _ChunkedEvents(asyncio.Protocol):
    """HTTP/1.1 keep-alive: each request (its query names the token count) is answered with
    that many paced events, chunked."""

    def __init__(self, pace_s: float) -> None:
        self._pace_s = pace_s
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but write as they do.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            tokens = int(head.split(b"tokens=", 1)[1].split(b" ", 1)[0])
            asyncio.get_running_loop().create_task(self._stream(tokens))

    async def _stream(self, tokens: int) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for _ in range(tokens):
            await asyncio.sleep(self._pace_s)
            transport.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
        transport.write(b"0\r\n\r\n")


def serve_http(ready: Path, pace_s: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ChunkedEvents(pace_s), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.to_thread(ready.write_text, json.dumps({"http_port": port}))
        await server.serve_forever()

    uvloop.run(main())


# ------------------------------------------------------------------ the clients


async def grpc_streams(port: int, streams: int, tokens: int) -> int:
    """``streams`` concurrent StreamCompletionEvents of ``tokens`` tokens; events received."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.StreamCompletionEventsRequest(
            params=inference_pb2.CompletionParams(
                model=MODEL, prompt=Value(string_value="hi"), max_tokens=tokens, stream=True
            )
        )

        async def one() -> int:
            received = 0
            async for body in stub.StreamCompletionEvents(request):
                received += body.data.count(b"data: {")
            return received

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def http_streams(port: int, streams: int, tokens: int) -> int:
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            received = 0
            url = f"http://127.0.0.1:{port}/events?tokens={tokens}"
            async with session.get(url) as response:
                async for line in response.content:
                    received += line.startswith(b"data: {")
            return received

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


_REST_PORTS: dict[int, int] = {}


async def worker_rest_streams(grpc_port: int, streams: int, tokens: int) -> int:
    """The same streams from the worker's REST port (found by its heartbeat)."""
    if grpc_port not in _REST_PORTS:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            beat = await worker_pb2_grpc.WorkerServiceStub(channel).Heartbeat(
                worker_pb2.HeartbeatRequest()
            )
        _REST_PORTS[grpc_port] = beat.rest_port
    url = f"http://127.0.0.1:{_REST_PORTS[grpc_port]}/v1/completions:stream"
    body = {"model": MODEL, "prompt": "hi", "max_tokens": tokens, "stream": True}
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            received = 0
            async with session.post(url, json=body) as response:
                async for line in response.content:
                    received += line.startswith(b"data: {")
            return received

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


class _NoCallContext:
    """What the servicer reads of a gRPC call: no deadline, no metadata."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def helios_layers_us(tokens: int, rounds: int) -> float:
    """Median CPU per event of the worker's StreamCompletionEvents called in this process."""
    from bench.zero_engine import ZeroCostEngine
    from openai_compat.servicer import InferenceServicer
    from worker.engine.base import EngineClient
    from worker.inference import EngineBackend
    from worker.metrics import UsageLedger
    from worker.models import ModelManager

    async def build(name: str, path: Path) -> EngineClient:
        engine = ZeroCostEngine(name)
        # As the vLLM engine (it merges its own backlog): no coalescing layer, so every
        # token is its own event, as in the paced servers above.
        engine.merges_backlog = True
        return engine

    with tempfile.TemporaryDirectory(prefix="helios-layers-") as model:
        manager = ModelManager(build, engine_kind="zero-cost", capacity_bytes=1 << 30)
        async for _ in manager.load(MODEL, Path(model)):
            pass
        servicer = InferenceServicer(EngineBackend(manager, UsageLedger()))
        params = inference_pb2.CompletionParams(
            model=MODEL, prompt=Value(string_value="hi"), max_tokens=tokens, stream=True
        )
        request = inference_pb2.StreamCompletionEventsRequest(params=params)
        context = cast("grpc.aio.ServicerContext", _NoCallContext())
        samples = []
        for _ in range(rounds + 1):  # the first warms up
            started, events = time.process_time(), 0
            async for _ in servicer.StreamCompletionEvents(request, context):
                events += 1
            samples.append((time.process_time() - started) / events * 1e6)
        await manager.shutdown()
    return statistics.median(samples[1:])


# ------------------------------------------------------------------ the run


class Server:
    """One server process and the client that drives it."""

    def __init__(
        self,
        name: str,
        command: list[str],
        ready: Path,
        port_key: str,
        drive: Callable[[int, int, int], Awaitable[int]],
    ) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self._port_key = port_key
        self._drive = drive
        self._process: subprocess.Popen[bytes] | None = None
        self.us_per_event: list[float] = []

    def start(self, log: Path) -> None:
        self._process = subprocess.Popen(
            self._command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("wb")
        )
        deadline = time.monotonic() + START_LIMIT_S
        while not self._ready.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start: see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(30)

    async def round(self, streams: int, tokens: int) -> None:
        assert self._process is not None
        port = int(json.loads(self._ready.read_text())[self._port_key])
        process = psutil.Process(self._process.pid)
        before = process.cpu_times()
        events = await self._drive(port, streams, tokens)
        after = process.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
        self.us_per_event.append(cpu / max(events, 1) * 1e6)


def zero_worker(ready: Path, model: Path, pace: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.zero_worker",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
        "--model",
        f"{MODEL}={model}",
        *pace,
    ]


def servers(tmp: Path, pace_ms: float) -> list[Server]:
    me = [sys.executable, str(Path(__file__).resolve())]
    pace = ["--pace-ms", f"{pace_ms:g}"]
    model = tmp / "model"
    model.mkdir()
    worker_ready = tmp / "worker.json"
    rest_ready = tmp / "worker-rest.json"
    return [
        Server(
            "grpc floor",
            [*me, "--serve", "grpc", "--ready", str(tmp / "grpc.json"), *pace],
            tmp / "grpc.json",
            "grpc_port",
            grpc_streams,
        ),
        Server(
            "worker (gRPC + Helios)",
            zero_worker(worker_ready, model, pace),
            worker_ready,
            "grpc_port",
            grpc_streams,
        ),
        Server(
            "worker REST port (HTTP/1.1 + Helios)",
            zero_worker(rest_ready, model, pace),
            rest_ready,
            "grpc_port",
            worker_rest_streams,
        ),
        Server(
            "http/1.1 chunked",
            [*me, "--serve", "http", "--ready", str(tmp / "http.json"), *pace],
            tmp / "http.json",
            "http_port",
            http_streams,
        ),
    ]


async def measure(stack: list[Server], streams: int, tokens: int, rounds: int) -> None:
    for server in stack:  # warm-up: connections, first-call paths
        await server.round(streams, min(tokens, 50))
        server.us_per_event.clear()
    for _ in range(rounds):
        for server in stack:
            await server.round(streams, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=["grpc", "http"], help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve: dict[str, Callable[[Path, float], None]] = {
            "grpc": serve_grpc_floor,
            "http": serve_http,
        }
        serve[args.serve](args.ready, args.pace_ms / 1e3)
        return
    with tempfile.TemporaryDirectory(prefix="helios-stream-transport-") as tmp_name:
        tmp = Path(tmp_name)
        stack = servers(tmp, args.pace_ms)
        try:
            for index, server in enumerate(stack):
                server.start(tmp / f"server-{index}.log")
            asyncio.run(measure(stack, args.streams, args.tokens, args.rounds))
        finally:
            for server in stack:
                server.stop()
    print(
        f"server CPU per streamed event: {args.streams} streams x {args.tokens} tokens,"
        f" one per stream every {args.pace_ms:g} ms, {args.rounds} rounds"
    )
    print("server                   | us/event median | min    | max")
    print("-------------------------|-----------------|--------|-------")
    for server in stack:
        values = server.us_per_event
        print(
            f"{server.name:<24} | {statistics.median(values):15.1f} | {min(values):6.1f}"
            f" | {max(values):6.1f}"
        )
    layers = asyncio.run(helios_layers_us(max(args.tokens, 2000), args.rounds))
    print(f"Helios' layers alone, in process, no gRPC: {layers:.1f} us/event")


if __name__ == "__main__":
    main()
