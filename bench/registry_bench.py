"""Registry figures: dedup of a second version, Resolve/GetConfig latency over gRPC, and
import throughput from a local Hub-API server vs plain huggingface_hub.snapshot_download.

    python bench/registry_bench.py [--files 8] [--file-mib 4] [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from helios.v1 import registry_pb2 as pb
from helios.v1 import registry_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "registry"))

from fake_hub import running_hub

from registry.core import Registry
from registry.hub import HubClient
from registry.servicer import RegistryServicer
from runtime.config import ServerSettings
from runtime.server import start_server

MIB = 1024 * 1024


def make_dir(path: Path, files: int, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    for i in range(files):
        (path / f"model-{i:05d}.safetensors").write_bytes(os.urandom(size))


async def dedup(root: Path, files: int, size: int) -> list[tuple[str, str]]:
    registry = Registry.open(root / "dedup")
    src = root / "src"
    make_dir(src, files, size)
    async for _ in registry.import_source(str(src), "bench/dedup"):
        pass
    before = registry.meta.blob_bytes()
    (src / "model-00000.safetensors").write_bytes(os.urandom(size))
    last = None
    async for p in registry.import_source(str(src), "bench/dedup"):
        last = p
    assert last is not None
    added = registry.meta.blob_bytes() - before
    registry.close()
    return [
        ("dedup: version 2 size", f"{last.bytes_total / MIB:.1f} MiB ({files + 1} files)"),
        ("dedup: bytes stored for version 2", f"{added / MIB:.1f} MiB (1 of {files} changed)"),
        ("dedup: bytes reused", f"{last.reused_bytes / MIB:.1f} MiB"),
    ]


async def latency(root: Path, calls: int) -> list[tuple[str, str]]:
    registry = Registry.open(root / "lat")
    src = root / "lat-src"
    make_dir(src, 1, 1024)
    async for p in registry.import_source(str(src), "bench/lat"):
        last = p
    servicer = RegistryServicer(registry)

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    rows = []
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        version = pb.ModelVersion(model_id=last.version[0], version=last.version[1])  # type: ignore[index]
        for name, call in (
            (
                "ResolveModel",
                lambda: stub.ResolveModel(pb.ResolveModelRequest(reference="bench/lat")),
            ),
            ("GetConfig", lambda: stub.GetConfig(pb.GetConfigRequest(version=version))),
        ):
            for _ in range(50):
                await call()
            samples = []
            for _ in range(calls):
                t = time.perf_counter()
                await call()
                samples.append((time.perf_counter() - t) * 1e3)
            samples.sort()
            rows.append(
                (
                    f"{name} over gRPC (n={calls})",
                    f"p50 {statistics.median(samples):.3f} ms, "
                    f"p99 {samples[int(0.99 * len(samples))]:.3f} ms",
                )
            )
        t = time.perf_counter()
        for _ in range(10000):
            registry.config_cached(version.model_id, version.version)
        rows.append(
            (
                "config cache lookup (in process)",
                f"{(time.perf_counter() - t) / 10000 * 1e6:.2f} us",
            )
        )
    await running.stop(0)
    registry.close()
    return rows


async def throughput(root: Path, files: int, size: int) -> list[tuple[str, str]]:
    from huggingface_hub import snapshot_download

    with running_hub() as hub:
        repo = hub.repo("bench/hub")
        repo.commit(
            {"config.json": b'{"model_type": "llama"}'}
            | {f"model-{i:05d}.safetensors": os.urandom(size) for i in range(files)}
        )
        total = files * size
        t = time.perf_counter()
        await asyncio.to_thread(
            snapshot_download,
            "bench/hub",
            endpoint=hub.endpoint,
            cache_dir=root / "hfcache",
            token=False,
        )
        plain = time.perf_counter() - t
        registry = Registry.open(root / "hub", hub=HubClient(hub.endpoint))
        t = time.perf_counter()
        async for _ in registry.import_source("hf://bench/hub@main"):
            pass
        ours = time.perf_counter() - t
        t = time.perf_counter()
        async for _ in registry.import_source("hf://bench/hub@main"):
            pass
        again = time.perf_counter() - t
        registry.close()
    return [
        ("snapshot_download (plain)", f"{total / MIB / plain:.0f} MiB/s ({plain:.2f} s)"),
        (
            "registry import from hub (download+hash+store)",
            f"{total / MIB / ours:.0f} MiB/s ({ours:.2f} s)",
        ),
        ("registry re-import of same commit", f"{again * 1e3:.0f} ms"),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=4)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    size = args.file_mib * MIB
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = await dedup(root, args.files, size)
        rows += await latency(root, args.calls)
        rows += await throughput(root, args.files, size)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    asyncio.run(main())
