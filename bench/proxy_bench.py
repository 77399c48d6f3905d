"""Added latency of the data plane (Envoy in front of the worker); relay cost per token;
the proxy's CPU while warm traffic flows.

The worker is bench/zero_worker.py: its engine streams tokens AT NO COST (no model, no
compute), so what is measured is the mesh itself. Targets, same run, same client:

- direct: InferenceService.StreamCompletion on the worker itself
- envoy:  the same through Envoy's front door, gRPC with the x-helios-model header: the
          route the proxy pushed over xDS sends it straight to the worker
- rest:   POST /v1/completions (stream, SSE) through Envoy: transcoding, the Lua filter
          (it sets the model header from the body), JSON and SSE on top (the client is
          aiohttp, keep-alive HTTP/1.1: httpx spent ~3-4 ms of CPU per request here)
- relay:  for comparison, the proxy's own InferenceService (the cold path's relay, which
          every request took before Envoy became the data plane)

The proxy's CPU seconds are read (psutil) over the warm rounds and over an idle stretch
of the same length: warm requests should cost it nothing beyond heartbeats and pushes.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from helios.v1 import inference_pb2, inference_pb2_grpc

from cli.envoy import EnvoyProcess
from cli.processes import ServiceProcess
from edge import (
    EdgeAccess,
    Upstream,
    build_descriptor_set,
    edge_virtual_host,
    render_envoy_config,
    write_edge_routes,
)
from runtime.edge_names import MODEL_HEADER

MODEL = "zero"
RELAY_TOKENS = 2000

# A call streams max_tokens tokens and returns the perf_counter() of its first message.
Call = Callable[[int], Awaitable[float]]


def inference_call(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> Call:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def call(max_tokens: int) -> float:
        params = inference_pb2.CompletionParams(model=MODEL, max_tokens=max_tokens)
        params.prompt.string_value = "hi"
        request = inference_pb2.StreamCompletionRequest(params=params)
        return await first_message_at(stub.StreamCompletion(request, timeout=60, metadata=metadata))

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


async def wait_for_route(envoy: EnvoyProcess) -> None:
    """Until Envoy has the model's route from the proxy (its cluster has a member)."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        async with aiohttp.ClientSession() as session:
            url = f"http://{envoy.admin_host}:{envoy.admin_port}/clusters"
            async with session.get(url) as response:
                if "helios-model-zero-" in await response.text():
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("Envoy never got the model's route from the proxy")


async def proxy_cpu(process: psutil.Process, calls: dict[str, Call], requests: int) -> None:
    """The proxy's CPU seconds over warm requests through Envoy, and over an idle stretch
    as long (its heartbeats and pushes alone)."""

    def cpu() -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    started, cpu_before = time.perf_counter(), cpu()
    for call in calls.values():
        await latencies(call, 8, requests)
    busy, cpu_busy = time.perf_counter() - started, cpu() - cpu_before
    cpu_before = cpu()
    await asyncio.sleep(busy)
    cpu_idle = cpu() - cpu_before
    total = requests * len(calls)
    print(
        f"\nproxy CPU: {cpu_busy * 1e3:.0f} ms over {total} warm requests through Envoy"
        f" ({busy:.1f} s); {cpu_idle * 1e3:.0f} ms idle over the same time (heartbeats,"
        f" pushes): {(cpu_busy - cpu_idle) / total * 1e6:+.1f} us per warm request"
    )


async def run(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="helios-proxy-bench-") as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        worker = ServiceProcess(
            "zero-worker", "bench.zero_worker", ["--model", f"{MODEL}={root / 'model'}"], root
        )
        await worker.start()
        await worker.wait_ready(60)
        upstreams = {"helios.v1.InferenceService": Upstream("proxy", "127.0.0.1", 0)}
        virtual_host, _ = edge_virtual_host(
            grpc_upstreams=upstreams,
            default_grpc_upstream=upstreams["helios.v1.InferenceService"],
            metrics_upstream=None,
            access=EdgeAccess(),
        )
        edge_routes = write_edge_routes(root / "edge-routes.json", virtual_host)
        proxy = ServiceProcess(
            "proxy",
            "proxy.server",
            ["--worker", worker.address, "--idle-ttl", "0", "--edge-routes", str(edge_routes)],
            root,
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
            xds_upstream=upstream,
        )
        envoy = await EnvoyProcess.start(config, root / "envoy")
        proxy_process = psutil.Process(proxy.ready["pid"])
        try:
            channels = {
                "direct": grpc.aio.insecure_channel(worker.address),
                "envoy": grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}"),
                "relay": grpc.aio.insecure_channel(proxy.address),
            }
            rest = aiohttp.ClientSession(
                base_url=envoy.base_url,
                # As many connections as streams in flight (no pool limit), kept alive.
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=60),
            )
            calls = {
                "direct": inference_call(channels["direct"]),
                "envoy": inference_call(channels["envoy"], ((MODEL_HEADER, MODEL),)),
                "rest": rest_call(rest),
                "relay": inference_call(channels["relay"]),
            }
            await wait_for_route(envoy)
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
            await proxy_cpu(proxy_process, {k: calls[k] for k in ("envoy", "rest")}, requests)
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
