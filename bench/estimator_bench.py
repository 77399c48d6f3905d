"""Estimator speed: RPC p50 of a cached estimate, estimates/s through BatchEstimate.

The server runs in its own process pinned to one CPU core (the client to another when
there is one), over real gRPC on localhost. Prints a table.

    python bench/estimator_bench.py [--rounds 2000] [--batch 1000]

Targets (issue #4): cached EstimateMemory p50 <= 1 ms; BatchEstimate >= 5,000 estimates/s
on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "estimator" / "configs"
MODELS = ("llama-3-8b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt2", "gemma-2-9b")


def _pin(cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def _serve(conn: Connection) -> None:
    _pin(0)

    async def main() -> None:
        import grpc
        from helios.v1 import estimator_pb2_grpc

        from estimator.servicer import EstimatorServicer
        from runtime.config import ServerSettings
        from runtime.server import start_server

        servicer = EstimatorServicer()

        def register(server: grpc.aio.Server) -> list[str]:
            estimator_pb2_grpc.add_EstimatorServiceServicer_to_server(servicer, server)
            return ["helios.v1.EstimatorService"]

        running = await start_server(
            ServerSettings(service="estimator", metrics_port=-1, log_level="WARNING"), register
        )
        conn.send(running.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
        await running.stop(0)

    asyncio.run(main())


def _config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


async def _bench(port: int, rounds: int, batch: int) -> list[tuple[str, str]]:
    import grpc
    from google.protobuf.struct_pb2 import Struct
    from helios.v1 import estimator_pb2 as pb
    from helios.v1 import estimator_pb2_grpc

    structs = {}
    for name in MODELS:
        s = Struct()
        s.update(_config(name))
        structs[name] = s
    rows: list[tuple[str, str]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = estimator_pb2_grpc.EstimatorServiceStub(channel)
        cached = pb.EstimateMemoryRequest(
            config=structs["llama-3-8b"], dtype="bf16", batch_size=1, max_seq_len=4096
        )
        first = await stub.EstimateMemory(cached)
        assert not first.cache_hit
        for _ in range(200):  # warm-up
            await stub.EstimateMemory(cached)
        latencies = []
        for _ in range(rounds):
            t = time.perf_counter()
            r = await stub.EstimateMemory(cached)
            latencies.append(time.perf_counter() - t)
            assert r.cache_hit
        latencies.sort()
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        floor = []
        for _ in range(rounds):
            t = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            floor.append(time.perf_counter() - t)
        rows.append(("grpc floor: Health.Check p50", f"{statistics.median(floor) * 1e3:.3f} ms"))
        rows.append(("EstimateMemory cached p50", f"{statistics.median(latencies) * 1e3:.3f} ms"))
        rows.append(
            ("EstimateMemory cached p99", f"{latencies[int(0.99 * len(latencies))] * 1e3:.3f} ms")
        )

        async def batch_rate(seq_base: int, label: str) -> None:
            requests = [
                pb.EstimateMemoryRequest(
                    config=structs[MODELS[i % len(MODELS)]],
                    dtype=("bf16", "fp8", "int4")[i % 3],
                    batch_size=1 + i % 8,
                    max_seq_len=seq_base + i,  # distinct: every item is a cache miss
                )
                for i in range(batch)
            ]
            req = pb.BatchEstimateRequest(requests=requests)
            t = time.perf_counter()
            resp = await stub.BatchEstimate(req)
            miss = time.perf_counter() - t
            assert len(resp.estimates) == batch
            assert not any(e.cache_hit for e in resp.estimates)
            t = time.perf_counter()
            resp = await stub.BatchEstimate(req)
            hit = time.perf_counter() - t
            assert all(e.cache_hit for e in resp.estimates)
            rows.append(
                (f"BatchEstimate x{batch} uncached ({label})", f"{batch / miss:,.0f} estimates/s")
            )
            rows.append(
                (f"BatchEstimate x{batch} cached ({label})", f"{batch / hit:,.0f} estimates/s")
            )

        await batch_rate(1024, "6 architectures")
    return rows


def _domain_rate(n: int) -> tuple[str, str]:
    from estimator.estimate_params import EstimateParams
    from estimator.models import inline_config
    from estimator.service import MemoryEstimator

    estimator = MemoryEstimator()
    sources = [inline_config(_config(m)) for m in MODELS]
    t = time.perf_counter()
    for i in range(n):
        estimator.estimate(sources[i % len(sources)], EstimateParams(max_seq_len=512 + i))
    rate = n / (time.perf_counter() - t)
    return ("domain estimate (no gRPC, uncached)", f"{rate:,.0f} estimates/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    try:
        port = parent.recv()
        _pin(1)
        rows = asyncio.run(_bench(port, args.rounds, args.batch))
        rows.append(_domain_rate(5000))
    finally:
        parent.send("stop")
        server.join(10)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 22}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(server pinned to one core; {os.cpu_count()} CPUs on this machine)")


if __name__ == "__main__":
    main()
