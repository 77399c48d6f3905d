"""Real protocol servers for storaged's tests.

* :class:`FakeRegistry`: a grpc.aio RegistryService (ResolveModel, GetManifest,
  ReadBlob) over blobs in a temp dir, for the faults the real registry cannot be made
  to show (a manifest whose chunk hashes lie, byte counts per call). It follows
  proto/helios/v1/registry.proto as registry/servicer.py implements it: canonical
  model ids (runtime.model_ids), ``total_bytes`` on ResolveModel and GetManifest, an alias
  or empty version (latest) accepted by GetManifest, ``size_bytes`` on the first
  ReadBlob message, ``length=0`` read to the end, a range past the end rejected.
  Its version ids are the labels the tests give (``v1``), where the real registry
  mints 40 hex digits: to storaged a version id is opaque.
  test_storaged_with_registry.py runs storaged against the real registry.
* :class:`RangeServer`: a real HTTP/1.1 server for ``GET /blobs/<sha256>`` with Range
  support that can cap each connection's rate, drop connections mid-range and
  corrupt bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from pathlib import Path

import grpc
from helios.v1 import registry_pb2 as rpb
from helios.v1 import registry_pb2_grpc

from runtime.config import ServerSettings
from runtime.errors import InvalidArgumentError
from runtime.model_ids import parse_reference
from runtime.server import RunningServer, start_server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Content-addressed files and versions (model_id, version) -> {path: sha}."""

    def __init__(self, root: Path, chunk_size: int = 64 * 1024) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self.versions: dict[tuple[str, str], dict[str, str]] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.lie_about: set[str] = set()  # shas whose manifest chunk hashes are wrong

    def add_version(self, model_id: str, version: str, files: dict[str, bytes]) -> None:
        """Add a version (``model_id`` must be canonical) and point "latest" at it."""
        entries = {}
        for path, data in files.items():
            digest = sha(data)
            (self.root / digest).write_bytes(data)
            entries[path] = digest
        self.versions[(model_id, version)] = entries
        self.aliases[(model_id, "latest")] = version

    def add_file_version(self, model_id: str, version: str, files: dict[str, Path]) -> None:
        """Big files: linked, hashed from disk."""
        entries = {}
        for path, src in files.items():
            h = hashlib.sha256()
            with open(src, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
            digest = h.hexdigest()
            dest = self.root / digest
            if not dest.exists():
                dest.hardlink_to(src)
            entries[path] = digest
        self.versions[(model_id, version)] = entries
        self.aliases[(model_id, "latest")] = version

    def manifest_file(self, path: str, digest: str) -> rpb.ManifestFile:
        blob = self.root / digest
        size = blob.stat().st_size
        chunks = []
        with open(blob, "rb") as f:
            while block := f.read(self.chunk_size):
                chunks.append(sha(block))
        if not chunks:
            chunks = [sha(b"")]
        if digest in self.lie_about:
            chunks = [sha(b"lie" + c.encode()) for c in chunks]
        return rpb.ManifestFile(
            path=path,
            size_bytes=size,
            sha256=digest,
            chunk_size_bytes=self.chunk_size,
            chunk_sha256=chunks,
        )


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.bytes_served = 0
        self.manifest_calls = 0
        # Faults: a GetManifest total_bytes, a ReadBlob size_bytes off by this much.
        self.total_bytes_error = 0
        self.size_bytes_error = 0

    async def _lookup(self, reference: str, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        try:
            ref = parse_reference(reference)
        except InvalidArgumentError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            raise AssertionError from None
        version = self.store.aliases.get((ref.model_id, ref.revision), ref.revision)
        if (ref.model_id, version) not in self.store.versions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {reference}: not found")
        return ref.model_id, version

    def _total(self, key: tuple[str, str]) -> int:
        return sum((self.store.root / d).stat().st_size for d in self.store.versions[key].values())

    async def ResolveModel(
        self, request: rpb.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ResolveModelResponse:
        key = await self._lookup(request.reference, context)
        return rpb.ResolveModelResponse(
            version=rpb.ModelVersion(model_id=key[0], version=key[1]), total_bytes=self._total(key)
        )

    async def GetManifest(
        self, request: rpb.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> rpb.GetManifestResponse:
        self.manifest_calls += 1
        v = request.version
        key = await self._lookup(f"{v.model_id}@{v.version or 'latest'}", context)
        return rpb.GetManifestResponse(
            version=rpb.ModelVersion(model_id=key[0], version=key[1]),
            files=[self.store.manifest_file(p, d) for p, d in self.store.versions[key].items()],
            total_bytes=self._total(key) + self.total_bytes_error,
            source=f"fake://{key[0]}",
        )

    async def ReadBlob(self, request: rpb.ReadBlobRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        blob = self.store.root / request.sha256
        if not re.fullmatch(r"[0-9a-f]{64}", request.sha256) or not blob.exists():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.sha256}")
        size = blob.stat().st_size
        if request.offset < 0 or request.length < 0 or request.offset > size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "range outside the blob")
        end = size if request.length == 0 else min(size, request.offset + request.length)
        if request.offset == end:
            yield rpb.ReadBlobResponse(data=b"", offset=end, size_bytes=size)
            return
        with open(blob, "rb") as f:  # noqa: ASYNC230 (a test fake; small blobs)
            f.seek(request.offset)
            pos = request.offset
            while pos < end:
                data = f.read(min(256 * 1024, end - pos))
                self.bytes_served += len(data)
                first = pos == request.offset
                shown = size + self.size_bytes_error
                yield rpb.ReadBlobResponse(data=data, offset=pos, size_bytes=shown if first else 0)
                pos += len(data)


async def start_registry(store: BlobStore) -> tuple[RunningServer, FakeRegistry]:
    registry = FakeRegistry(store)

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
        return ["helios.v1.RegistryService"]

    running = await start_server(ServerSettings(service="registry", metrics_port=-1), register)
    return running, registry


class RangeServer:
    """``GET /blobs/<sha>`` with ``Range`` over real HTTP, with faults on demand."""

    def __init__(self, root: Path, *, rate_bytes_per_s: float = 0.0) -> None:
        self.root = root
        self.rate = rate_bytes_per_s
        self.drop_next = 0  # drop this many responses half-way
        self.corrupt_next = 0  # flip a byte in this many responses
        self.bytes_sent = 0
        self.requests = 0
        self.max_parallel = 0
        self._active = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/blobs"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        m = re.fullmatch(r"/blobs/([0-9a-f]{64})", h.path)
        blob = self.root / m.group(1) if m else None
        if blob is None or not blob.exists():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        size = blob.stat().st_size
        rm = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        if not rm:
            h.send_response(416)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, end = int(rm.group(1)), min(int(rm.group(2)), size - 1)
        length = end - start + 1
        with self._lock:
            self.requests += 1
            self._active += 1
            self.max_parallel = max(self.max_parallel, self._active)
            drop = self.drop_next > 0
            self.drop_next -= drop
            corrupt = not drop and self.corrupt_next > 0
            self.corrupt_next -= corrupt
        try:
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            h.send_header("Content-Length", str(length))
            h.end_headers()
            sent = 0
            t0 = time.monotonic()
            with open(blob, "rb") as f:
                f.seek(start)
                while sent < length:
                    piece = f.read(min(64 * 1024, length - sent))
                    if corrupt and sent == 0:
                        piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
                    if drop and sent + len(piece) > length // 2:
                        h.wfile.flush()
                        h.close_connection = True
                        h.connection.shutdown(2)
                        return
                    h.wfile.write(piece)
                    sent += len(piece)
                    with self._lock:
                        self.bytes_sent += len(piece)
                    if self.rate:
                        ahead = sent / self.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self._active -= 1
