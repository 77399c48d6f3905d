"""Added latency of the proxy hop and of Envoy + proxy; token relay cost per token.

The worker is bench/zero_worker.py: its engine streams tokens AT NO COST (no model, no
compute), so what is measured is the mesh itself. Three targets, same run, same client:

- direct: WorkerService.Generate on the worker
- proxy:  InferenceService.StreamCompletion on the proxy (one more gRPC hop + relay)
- envoy:  the same through Envoy's front door (gRPC) to the proxy
- rest:   POST /v1/completions (stream, SSE) through Envoy: transcoding, the Lua filter,
          JSON and SSE on top (the client is aiohttp, keep-alive HTTP/1.1: httpx spent
          ~3-4 ms of CPU per request here, and at 64 streams the bench's own client then
          was most of the "added" latency; aiohttp spends ~0.3 ms, a gRPC client ~0.4)

Latency of max_tokens=1 streams at 1 and 64 concurrent streams, two ways: the time to
the first token (the first streamed message: what a user waits for) and the whole
request (until the stream's final status). "added" is the target's percentile less the
direct one. Relay cost per token: one 2000-token stream's duration less the direct
one's, over 2000.

    .venv/bin/python bench/proxy_bench.py [--requests 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

from cli.envoy import EnvoyProcess, Upstream, build_descriptor_set, render_envoy_config
from cli.processes import ServiceProcess

MODEL = "zero"
RELAY_TOKENS = 2000

# A call streams max_tokens tokens and returns the perf_counter() of its first message.
Call = Callable[[int], Awaitable[float]]


def direct_call(channel: grpc.aio.Channel) -> Call:
    stub = worker_pb2_grpc.WorkerServiceStub(channel)

    async def call(max_tokens: int) -> float:
        request = worker_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex,
            model=MODEL,
            prompt="hi",
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, top_p=1.0),
        )
        return await first_message_at(stub.Generate(request, timeout=60))

    return call


def proxy_call(channel: grpc.aio.Channel) -> Call:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def call(max_tokens: int) -> float:
        params = inference_pb2.CompletionParams(model=MODEL, max_tokens=max_tokens)
        params.prompt.string_value = "hi"
        request = inference_pb2.StreamCompletionRequest(params=params)
        return await first_message_at(stub.StreamCompletion(request, timeout=60))

    return call


def rest_call(session: aiohttp.ClientSession) -> Call:
    async def call(max_tokens: int) -> float:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": True}
        first = 0.0
        async with session.post("/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.content:  # one SSE line at a time
                if line.startswith(b"data: {"):
                    first = first or time.perf_counter()
        return first

    return call


async def first_message_at(stream: AsyncIterator[object]) -> float:
    first = 0.0
    async for _ in stream:
        first = first or time.perf_counter()
    return first


async def latencies(call: Call, concurrency: int, requests: int) -> tuple[list[float], list[float]]:
    """(times to first token, whole-request times) of ``requests`` one-token streams."""
    first_token: list[float] = []
    whole: list[float] = []
    queue = iter(range(requests))

    async def lane() -> None:
        for _ in queue:
            started = time.perf_counter()
            first_at = await call(1)
            whole.append(time.perf_counter() - started)
            first_token.append(first_at - started)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return first_token, whole


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def relay_seconds(call: Call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call(RELAY_TOKENS)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="helios-proxy-bench-") as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        worker = ServiceProcess(
            "zero-worker", "bench.zero_worker", ["--model", f"{MODEL}={root / 'model'}"], root
        )
        await worker.start()
        await worker.wait_ready(60)
        proxy = ServiceProcess(
            "proxy", "proxy.server", ["--worker", worker.address, "--idle-ttl", "0"], root
        )
        await proxy.start()
        await proxy.wait_ready(60)
        upstream = Upstream("proxy", proxy.ready["host"], proxy.ready["grpc_port"])
        config = render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=build_descriptor_set(root / "helios.pb"),
            grpc_upstreams={"helios.v1.InferenceService": upstream},
            default_grpc_upstream=upstream,
            metrics_upstream=None,
        )
        envoy = await EnvoyProcess.start(config, root / "envoy")
        try:
            channels = {
                "direct": grpc.aio.insecure_channel(worker.address),
                "proxy": grpc.aio.insecure_channel(proxy.address),
                "envoy": grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}"),
            }
            rest = aiohttp.ClientSession(
                base_url=envoy.base_url,
                # As many connections as streams in flight (no pool limit), kept alive.
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=60),
            )
            calls = {
                "direct": direct_call(channels["direct"]),
                "proxy": proxy_call(channels["proxy"]),
                "envoy": proxy_call(channels["envoy"]),
                "rest": rest_call(rest),
            }
            for call in calls.values():  # warm up connections and code paths
                await latencies(call, 8, 64)
            print("zero-cost engine (bench/zero_engine.py): the mesh is what is measured\n")
            print(
                f"{'target':<8} {'streams':>7} {'latency':<13} {'p50 ms':>8} {'p99 ms':>8}"
                f" {'added p50 ms':>13} {'added p99 ms':>13}"
            )
            for concurrency in (1, 64):
                n = requests if concurrency == 1 else max(requests, concurrency * 10)
                # Targets take turns, round after round, and each one's samples are
                # pooled: this machine's speed drifts over seconds, and a target measured
                # alone in a slow stretch would carry the drift as "added" latency.
                measured: dict[str, tuple[list[float], list[float]]] = {
                    name: ([], []) for name in calls
                }
                for _ in range(rounds):
                    for name, c in calls.items():
                        first, whole = await latencies(c, concurrency, max(1, n // rounds))
                        measured[name][0].extend(first)
                        measured[name][1].extend(whole)
                for kind, index in (("first token", 0), ("whole request", 1)):
                    base = measured["direct"][index]
                    base50, base99 = pct(base, 0.5), pct(base, 0.99)
                    for name, both in measured.items():
                        values = both[index]
                        p50, p99 = pct(values, 0.5), pct(values, 0.99)
                        added = (
                            ("-", "-")
                            if name == "direct"
                            else (f"{(p50 - base50) * 1e3:.3f}", f"{(p99 - base99) * 1e3:.3f}")
                        )
                        print(
                            f"{name:<8} {concurrency:>7} {kind:<13} {p50 * 1e3:>8.3f}"
                            f" {p99 * 1e3:>8.3f} {added[0]:>13} {added[1]:>13}"
                        )
            relay = {name: await relay_seconds(c) for name, c in calls.items()}
            print(f"\nrelay of one {RELAY_TOKENS}-token stream (median of 5):")
            for name, seconds in relay.items():
                extra = (seconds - relay["direct"]) / RELAY_TOKENS * 1e6
                label = "" if name == "direct" else f"  added {extra:.1f} us/token"
                print(
                    f"  {name:<7} {seconds * 1e3:8.1f} ms"
                    f"  {seconds / RELAY_TOKENS * 1e6:6.1f} us/token{label}"
                )
            for channel in channels.values():
                await channel.close(None)
            await rest.close()
        finally:
            await envoy.stop()
            await proxy.stop(5)
            await worker.stop(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per point")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns the targets take (interleaved)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rounds))


if __name__ == "__main__":
    main()
