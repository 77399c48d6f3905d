"""StorageService over real gRPC: the servicer in-process, the fake registry, a peer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import storage_pb2 as pb
from helios.v1 import storage_pb2_grpc
from storaged_fakes import BlobStore, FakeRegistry, sha, start_registry

from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server
from storaged.cache import ModelCache
from storaged.download import ChunkedDownloader
from storaged.manifest import BlobSource
from storaged.remote import PeerSource, RegistryClient
from storaged.servicer import StorageServicer
from storaged.tiers import Tier, TierConfig


async def start_storaged(
    root: Path, registry: RegistryClient, peers: list[BlobSource]
) -> tuple[RunningServer, storage_pb2_grpc.StorageServiceStub, grpc.aio.Channel, ModelCache]:
    cache = ModelCache(
        [TierConfig(Tier.RAM, root / "ram", 4 << 20), TierConfig(Tier.SSD, root / "ssd", 64 << 20)],
        registry,
        ChunkedDownloader([*peers, registry], connections=4),
    )
    servicer = StorageServicer(cache)

    def register(server: grpc.aio.Server) -> list[str]:
        storage_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server)
        return ["helios.v1.StorageService"]

    running = await start_server(ServerSettings(service="storaged", metrics_port=-1), register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, storage_pb2_grpc.StorageServiceStub(channel), channel, cache


@pytest_asyncio.fixture
async def env(
    tmp_path: Path,
) -> AsyncIterator[tuple[BlobStore, FakeRegistry, RegistryClient]]:
    store = BlobStore(tmp_path / "remote", chunk_size=64 * 1024)
    running, fake = await start_registry(store)
    client = RegistryClient(f"127.0.0.1:{running.port}")
    yield store, fake, client
    await client.close()
    await running.stop(0)


async def test_ensure_stat_pin_evict_stats(
    tmp_path: Path, env: tuple[BlobStore, FakeRegistry, RegistryClient]
) -> None:
    store, _, client = env
    weights = os.urandom(300_000)
    store.add_version("org/m", "v1", {"config.json": b"{}", "model.safetensors": weights})
    running, stub, channel, _ = await start_storaged(tmp_path / "node", client, [])
    try:
        msgs = [m async for m in stub.EnsureModel(pb.EnsureModelRequest(model_id="org/m"))]
        last = msgs[-1]
        assert last.local_dir and last.tier == pb.CACHE_TIER_RAM
        assert last.files_done == last.files_total == 2
        assert last.bytes_done == last.bytes_total == len(weights) + 2
        assert (Path(last.local_dir) / "model.safetensors").read_bytes() == weights

        stat = await stub.Stat(pb.StatRequest(model_id="org/m"))
        assert stat.version == "v1" and stat.local_dir == last.local_dir
        assert {f.path for f in stat.files} == {"config.json", "model.safetensors"}
        assert all(f.tier == pb.CACHE_TIER_RAM for f in stat.files)

        await stub.Pin(pb.PinRequest(model_id="org/m"))
        assert (await stub.Stat(pb.StatRequest(model_id="org/m"))).pinned
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Evict(pb.EvictRequest(model_id="org/m"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.Unpin(pb.UnpinRequest(model_id="org/m"))

        stats = await stub.GetStats(pb.GetStatsRequest())
        assert [t.tier for t in stats.tiers] == [pb.CACHE_TIER_RAM, pb.CACHE_TIER_SSD]
        assert stats.tiers[0].used_bytes == len(weights) + 2
        assert stats.tiers[0].capacity_bytes == 4 << 20
        assert stats.models[0].model_id == "org/m"
        assert stats.downloaded_bytes == len(weights) + 2

        freed = await stub.Evict(pb.EvictRequest(model_id="org/m"))
        assert freed.freed_bytes == len(weights) + 2
        assert not Path(last.local_dir).exists()  # noqa: ASYNC240
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Stat(pb.StatRequest(model_id="org/m"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await running.stop(0)


async def test_bad_requests_get_clear_codes(
    tmp_path: Path, env: tuple[BlobStore, FakeRegistry, RegistryClient]
) -> None:
    store, _, client = env
    store.add_version("org/m", "v1", {"f": b"x"})
    running, stub, channel, _ = await start_storaged(tmp_path / "node", client, [])
    try:
        cases = [
            (stub.Stat(pb.StatRequest()), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.Unpin(pb.UnpinRequest(model_id="org/m")), grpc.StatusCode.NOT_FOUND),
            (stub.Evict(pb.EvictRequest(model_id="org/none")), grpc.StatusCode.NOT_FOUND),
            (stub.Prefetch(pb.PrefetchRequest(model_id="org/none")), grpc.StatusCode.NOT_FOUND),
        ]
        for call, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code
        streams = [
            (stub.EnsureModel(pb.EnsureModelRequest()), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.EnsureModel(pb.EnsureModelRequest(model_id="org/x")), grpc.StatusCode.NOT_FOUND),
            (stub.ReadChunk(pb.ReadChunkRequest(sha256="zz")), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.ReadChunk(pb.ReadChunkRequest(sha256="0" * 64)), grpc.StatusCode.NOT_FOUND),
        ]
        for stream, code in streams:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    pass
            assert err.value.code() == code
    finally:
        await channel.close()
        await running.stop(0)


async def test_prefetch_then_peer_serves_the_second_node(
    tmp_path: Path, env: tuple[BlobStore, FakeRegistry, RegistryClient]
) -> None:
    store, fake, client = env
    weights = os.urandom(200_000)
    store.add_version("org/m", "v1", {"w.bin": weights})
    first, stub1, ch1, cache1 = await start_storaged(tmp_path / "a", client, [])
    peer = PeerSource(f"127.0.0.1:{first.port}")
    second, stub2, ch2, _ = await start_storaged(tmp_path / "b", client, [peer])
    try:
        assert (await stub1.Prefetch(pb.PrefetchRequest(model_id="org/m"))).started
        for task in list(cache1._background):
            await task
        assert not (await stub1.Prefetch(pb.PrefetchRequest(model_id="org/m"))).started
        served = fake.bytes_served
        assert served == len(weights)
        chunk = [
            m
            async for m in stub1.ReadChunk(
                pb.ReadChunkRequest(sha256=sha(weights), offset=10, length=100)
            )
        ]
        assert b"".join(m.data for m in chunk) == weights[10:110]
        msgs = [m async for m in stub2.EnsureModel(pb.EnsureModelRequest(model_id="org/m"))]
        assert (Path(msgs[-1].local_dir) / "w.bin").read_bytes() == weights
        assert fake.bytes_served == served  # the second node's bytes came from the peer
    finally:
        await peer.close()
        for ch in (ch1, ch2):
            await ch.close()
        await second.stop(0)
        await first.stop(0)


async def test_helios_cache_table(
    tmp_path: Path,
    env: tuple[BlobStore, FakeRegistry, RegistryClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse
    import asyncio

    from cli.cache import add_cache_command

    store, _, client = env
    store.add_version("org/table", "v1", {"w.bin": os.urandom(5000)})
    running, stub, channel, _ = await start_storaged(tmp_path / "node", client, [])
    try:
        async for _ in stub.EnsureModel(pb.EnsureModelRequest(model_id="org/table")):
            pass
        parser = argparse.ArgumentParser()
        add_cache_command(parser.add_subparsers())
        args = parser.parse_args(["cache", "--storaged", f"127.0.0.1:{running.port}"])
        rc = await asyncio.to_thread(args.handler, args)
        out = capsys.readouterr().out
        assert rc == 0
        assert "TIER" in out and "ram" in out and "org/table" in out and "4.9 KiB" in out
    finally:
        await channel.close()
        await running.stop(0)
