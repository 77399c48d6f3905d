"""gRPC adapters: the registry (manifests and ReadBlob) and peers (ReadChunk).

The only storaged module besides the servicer that touches protobuf: it turns the
registry's messages into :mod:`storaged.manifest` types and gRPC errors into domain ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from helios.v1 import registry_pb2, registry_pb2_grpc, storage_pb2, storage_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import DataLossError, FailedPreconditionError, UnavailableError
from runtime.grpc_errors import error_from_status
from storaged.manifest import FileEntry, Manifest

__all__ = ["PeerSource", "RegistryClient", "read_deadline_s"]

# A range read may take ``timeout_s`` to start plus its bytes at this slowest acceptable
# rate; a source slower than that (or hung) is given up on for this try, and the
# downloader retries the chunk (possibly from another source).
MIN_READ_BYTES_PER_S = 1_000_000


def read_deadline_s(length: int, timeout_s: float, min_bytes_per_s: float) -> float:
    """The gRPC deadline of one range read of ``length`` bytes."""
    return timeout_s + length / min_bytes_per_s


def _read_failed(name: str, exc: grpc.aio.AioRpcError, deadline_s: float) -> Exception:
    """A failed range read as a domain error; a missed deadline is a slow or hung
    source (retryable: UNAVAILABLE), not the caller's deadline."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(f"{name}: the range was not read within {deadline_s:.1f}s")
    if exc.code() == grpc.StatusCode.DATA_LOSS:  # its stored copy failed its hashes
        return DataLossError(f"{name}: {exc.details()}")
    return error_from_status(exc.code(), f"{name}: {exc.details()}")


class _Source:
    """A source storaged reads from over gRPC: its name in errors, its channel, the
    timeout of a call and the slowest rate a range read may go at."""

    def __init__(self, name: str, target: str, timeout_s: float, min_bytes_per_s: float) -> None:
        self.name = name
        self._channel = create_channel(target)
        self._timeout = timeout_s
        self._min_rate = min_bytes_per_s

    def _read_deadline_s(self, length: int) -> float:
        return read_deadline_s(length, self._timeout, self._min_rate)

    async def close(self) -> None:
        await self._channel.close(None)


class RegistryClient(_Source):
    """ManifestSource and BlobSource over helios.v1.RegistryService."""

    def __init__(
        self, target: str, *, timeout_s: float = 30.0, min_bytes_per_s: float = MIN_READ_BYTES_PER_S
    ) -> None:
        super().__init__(f"registry {target}", target, timeout_s, min_bytes_per_s)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def resolve(self, model_id: str, version: str) -> tuple[str, str]:
        """The registry's canonical model id and version id for ``model_id@version``
        (``version``: empty for latest, an alias, a version id or a unique prefix)."""
        reference = f"{model_id}@{version}" if version else model_id
        try:
            resp = await self._stub.ResolveModel(
                registry_pb2.ResolveModelRequest(reference=reference), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(exc.code(), f"{self.name}: {exc.details()}") from None
        if not resp.version.model_id or not resp.version.version:
            raise FailedPreconditionError(f"{self.name} resolved {reference} to no version")
        return resp.version.model_id, resp.version.version

    async def manifest(self, model_id: str, version: str) -> Manifest:
        try:
            resp = await self._stub.GetManifest(
                registry_pb2.GetManifestRequest(
                    version=registry_pb2.ModelVersion(model_id=model_id, version=version)
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(exc.code(), f"{self.name}: {exc.details()}") from None
        files = tuple(
            FileEntry(
                path=f.path,
                size=f.size_bytes,
                sha256=f.sha256,
                chunk_size=f.chunk_size_bytes,
                chunk_sha256=tuple(f.chunk_sha256),
            )
            for f in resp.files
        )
        manifest = Manifest(
            resp.version.model_id or model_id, resp.version.version or version, files
        )
        if resp.total_bytes != manifest.total_bytes:
            raise FailedPreconditionError(
                f"{self.name}: manifest of {model_id}@{version} says {resp.total_bytes} bytes "
                f"in all, its files add up to {manifest.total_bytes}"
            )
        return manifest

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        # length=0 means "to the end" to ReadBlob: an empty range is never asked for.
        if length == 0:
            return
        deadline = self._read_deadline_s(length)
        call = self._stub.ReadBlob(
            registry_pb2.ReadBlobRequest(sha256=sha256, offset=offset, length=length),
            timeout=deadline,
        )
        position = offset
        first = True
        try:
            async for msg in call:
                if first and msg.size_bytes and offset + length > msg.size_bytes:
                    raise DataLossError(
                        f"{self.name}: blob {sha256[:12]}… is {msg.size_bytes} bytes, "
                        f"too short for [{offset}, {offset + length})"
                    )
                first = False
                if msg.offset != position:
                    raise UnavailableError(
                        f"{self.name}: ReadBlob sent offset {msg.offset}, expected {position}"
                    )
                position += len(msg.data)
                yield msg.data
        except grpc.aio.AioRpcError as exc:
            raise _read_failed(self.name, exc, deadline) from None
        finally:
            call.cancel()


class PeerSource(_Source):
    """Another storaged that may hold the blob (ReadChunk)."""

    def __init__(
        self, target: str, *, timeout_s: float = 10.0, min_bytes_per_s: float = MIN_READ_BYTES_PER_S
    ) -> None:
        super().__init__(f"peer {target}", target, timeout_s, min_bytes_per_s)
        self._stub = storage_pb2_grpc.StorageServiceStub(self._channel)

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        if length == 0:
            return
        deadline = self._read_deadline_s(length)
        call = self._stub.ReadChunk(
            storage_pb2.ReadChunkRequest(sha256=sha256, offset=offset, length=length),
            timeout=deadline,
        )
        try:
            async for msg in call:
                yield msg.data
        except grpc.aio.AioRpcError as exc:
            raise _read_failed(self.name, exc, deadline) from None
        finally:
            call.cancel()
