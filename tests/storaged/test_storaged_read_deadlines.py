"""Range reads carry deadlines: a registry that hangs mid-range is given up on (UNAVAILABLE,
retryable), and the downloader takes the same chunk from the next source in that try."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from helios.v1 import registry_pb2 as rpb
from helios.v1 import registry_pb2_grpc
from storaged_fakes import BlobStore, FakeRegistry, sha, start_registry

from runtime.config import ServerSettings
from runtime.errors import UnavailableError
from runtime.server import RunningServer, start_server
from storaged.download import ChunkedDownloader
from storaged.manifest import FileEntry
from storaged.remote import RegistryClient

pytestmark = pytest.mark.asyncio

DATA = bytes(range(256)) * 4096  # 1 MiB


class HangingRegistry(FakeRegistry):
    """Sends the first piece of a range, then never another byte (a wedged server)."""

    async def ReadBlob(
        self, request: rpb.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.ReadBlobResponse]:
        size = (self.store.root / request.sha256).stat().st_size
        yield rpb.ReadBlobResponse(
            data=DATA[request.offset : request.offset + 10], offset=request.offset, size_bytes=size
        )
        await asyncio.Event().wait()


async def start_hanging(store: BlobStore) -> RunningServer:
    registry = HangingRegistry(store)

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
        return ["helios.v1.RegistryService"]

    return await start_server(ServerSettings(service="registry", metrics_port=-1), register)


async def test_a_hung_range_read_fails_as_unavailable_at_its_deadline(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.add_version("org/m", "v1", {"w.bin": DATA})
    hanging = await start_hanging(store)
    client = RegistryClient(hanging.address, timeout_s=0.3, min_bytes_per_s=1e12)
    try:
        started = time.monotonic()
        got = b""
        with pytest.raises(UnavailableError, match=r"not read within 0\.3s"):
            async for piece in client.read(sha(DATA), 0, len(DATA)):
                got += piece
        assert got == DATA[:10]  # what came before the server went quiet
        assert time.monotonic() - started < 5
    finally:
        await client.close()
        await hanging.stop(0)


async def test_download_moves_to_the_next_source_when_one_hangs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", chunk_size=256 * 1024)
    store.add_version("org/m", "v1", {"w.bin": DATA})
    hanging = await start_hanging(store)
    good, served = await start_registry(store)
    wedged = RegistryClient(hanging.address, timeout_s=0.3, min_bytes_per_s=1e12)
    working = RegistryClient(good.address)
    try:
        manifest_file = store.manifest_file("w.bin", sha(DATA))
        entry = FileEntry(
            path="w.bin",
            size=len(DATA),
            sha256=sha(DATA),
            chunk_size=manifest_file.chunk_size_bytes,
            chunk_sha256=tuple(manifest_file.chunk_sha256),
        )
        downloader = ChunkedDownloader([wedged, working], connections=2, attempts=2)
        dest = tmp_path / "out" / "w.bin"
        dest.parent.mkdir()
        started = time.monotonic()
        fetched = await downloader.download(entry, tmp_path / "tmp", dest, lambda n: None)
        assert dest.read_bytes() == DATA
        assert fetched == len(DATA)
        assert served.bytes_served == len(DATA)  # every chunk came from the working one
        assert downloader.retries == 0  # handed over within each try, not retried
        assert time.monotonic() - started < 20
    finally:
        await wedged.close()
        await working.close()
        await hanging.stop(0)
        await good.stop(0)
