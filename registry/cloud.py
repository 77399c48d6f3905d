"""What the remote blob stores behind :class:`registry.blobs.BlobStore` share: the object
naming, the settings, the metrics, hashed parallel part uploads and verified reads. The
stores themselves are :class:`registry.s3_store.S3BlobStore` (boto3) and
:class:`registry.azure_store.AzureBlobStore` (azure-storage-blob).

Both keep a blob at ``<prefix>blobs/sha256/<aa>/<sha256>`` and give the local store's
guarantees:

* **Verified on write.** The bytes are hashed while they are uploaded; the upload is made
  visible (S3: CompleteMultipartUpload, or a single PUT of bytes hashed before sending;
  Azure: Put Block List) only once the hash equals the blob's name. On a mismatch or any
  failure (source read error, network, emulator) the upload is abandoned: the S3 multipart
  upload is aborted, the Azure blocks stay uncommitted (never listed, never readable, and
  discarded by the service after a week or by the next commit to that name). Nothing
  half-written is ever visible under a blob's key.
* **Verified on read.** Reads are ranged GETs streamed in pieces; the registry checks each
  chunk against the manifest's per-chunk hashes (``registry.verified_reads.read_verified``),
  and a read of a whole blob is also checked against its name here. Later ranges are
  pinned to the first response's ETag, so an object replaced mid-read fails instead of
  mixing two versions.
* **Dedup.** A blob that exists is not uploaded again (``put_file`` returns False).

Backends block; the registry calls them from worker threads. Credentials come from each
SDK's standard sources (S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/profiles/IMDS;
Azure: a connection string, by default ``$AZURE_STORAGE_CONNECTION_STRING``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from prometheus_client import Counter

from runtime.config import ConfigError
from runtime.errors import BlobStoreError, DataLossError
from runtime.model_ids import check_sha256

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "DEFAULT_READ_SIZE",
    "PIECE",
    "REMOTE_BYTES",
    "REMOTE_FAILURES",
    "S3_MIN_PART_SIZE",
    "RemoteBlobStore",
    "VerifiedReader",
    "blob_key",
    "check_digest",
    "empty_range",
    "normalize_prefix",
    "record_upload",
    "regroup",
    "upload_parts",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB  # S3's floor for every multipart part but the last
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_READ_SIZE = 8 * MiB  # bytes per ranged GET
DEFAULT_CONCURRENCY = 4  # parts/blocks in flight per upload (memory: concurrency x part)
PIECE = MiB  # bytes per piece yielded to readers

REMOTE_BYTES = Counter(
    "helios_registry_remote_blob_bytes",
    "Bytes moved to/from a remote blob store",
    ["backend", "direction"],
)
REMOTE_FAILURES = Counter(
    "helios_registry_remote_blob_failures",
    "Remote blob store operations that failed (uploads abandoned, reads cut short)",
    ["backend", "op"],
)

T = TypeVar("T")


def normalize_prefix(prefix: str) -> str:
    """``""`` or ``"a/b/"``: no leading slash, one trailing slash, no ``.``/``..`` parts."""
    parts = [p for p in prefix.strip().split("/") if p]
    if any(p in (".", "..") or "\x00" in p for p in parts):
        raise ConfigError("prefix", f"{prefix!r}: '.', '..' and NUL are not allowed")
    return "".join(f"{p}/" for p in parts)


def blob_key(prefix: str, sha256: str) -> str:
    """The object name of blob ``sha256`` under a normalized ``prefix``."""
    check_sha256(sha256)
    return f"{prefix}blobs/sha256/{sha256[:2]}/{sha256}"


@contextlib.contextmanager
def remote_errors(
    backend: str,
    op: str,
    where: str,
    failures: tuple[type[Exception], ...],
    code: Callable[[Exception], str | None],
) -> Iterator[None]:
    """An SDK's ``failures`` (and OSError) inside as one :class:`BlobStoreError` naming
    ``where`` (the store's URL of the object), ``op`` and the service's error ``code``
    where it has one, counted in REMOTE_FAILURES."""
    caught: tuple[type[Exception], ...] = (*failures, OSError)
    try:
        yield
    except caught as exc:
        REMOTE_FAILURES.labels(backend, op).inc()
        named = code(exc)
        said = f" ({named})" if named is not None else ""
        raise BlobStoreError(f"{where}: {op} failed{said}: {exc}") from exc


def regroup(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` (any sizes) as parts of exactly ``size`` bytes, the last one shorter."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def empty_range(offset: int, length: int | None) -> bool:
    """Whether a read of ``length`` bytes at ``offset`` asks for nothing (``length`` 0);
    ValueError for a negative offset or length."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("offset and length must be >= 0")
    return length == 0


def record_upload(backend: str, sha256: str, size: int, started: float) -> None:
    """Count and log an upload of ``size`` bytes that became visible; ``started`` is its
    ``time.monotonic()`` at the start."""
    REMOTE_BYTES.labels(backend, "write").inc(size)
    logger.info(
        "blob uploaded",
        extra={
            "backend": backend,
            "sha256": sha256,
            "bytes": size,
            "seconds": round(time.monotonic() - started, 3),
        },
    )


def check_digest(backend: str, sha256: str, digest: Any) -> None:
    actual = digest.hexdigest()
    if actual != sha256:
        REMOTE_FAILURES.labels(backend, "verify").inc()
        raise DataLossError(f"blob {sha256}: bytes uploaded hash to {actual}; not stored")


def upload_parts(
    parts: Iterable[bytes],
    digest: Any,
    concurrency: int,
    send: Callable[[int, bytes], T],
) -> list[T]:
    """Hash ``parts`` in order and ``send(number, part)`` each (1-based), at most
    ``concurrency`` in flight; the results in part order. The first failure (reading or
    sending) stops reading and is raised once the parts in flight have settled."""
    futures: list[Future[T]] = []
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="blob-upload") as pool:
        for number, part in enumerate(parts, start=1):
            digest.update(part)
            futures.append(pool.submit(send, number, part))
            pending = [f for f in futures if not f.done()]
            if len(pending) >= concurrency:
                wait(pending, return_when=FIRST_COMPLETED)
            for done in futures:
                error = done.exception() if done.done() else None
                if error is not None:
                    raise error
    return [f.result() for f in futures]


class VerifiedReader:
    """Counts and (for a read of the whole blob) hashes what a reader yields."""

    def __init__(self, backend: str, sha256: str, whole: bool) -> None:
        self.backend = backend
        self.sha256 = sha256
        self.digest = hashlib.sha256() if whole else None

    def feed(self, piece: bytes) -> bytes:
        if self.digest is not None:
            self.digest.update(piece)
        REMOTE_BYTES.labels(self.backend, "read").inc(len(piece))
        return piece

    def finish(self) -> None:
        if self.digest is not None and self.digest.hexdigest() != self.sha256:
            REMOTE_FAILURES.labels(self.backend, "read").inc()
            raise DataLossError(
                f"blob {self.sha256}: stored copy hashes to {self.digest.hexdigest()}"
            )


class RemoteBlobStore:
    """The steps every remote store takes to write a blob: name it, skip it when it is
    there (dedup), upload it hashed, then count and log it. A store adds ``exists``,
    ``_upload``, the reads, and ``put_file`` (kept in the store's module, whose
    ``iter_file`` the tests replace to fail a source mid-upload)."""

    name: str
    prefix: str

    def key(self, sha256: str) -> str:
        return blob_key(self.prefix, sha256)

    def exists(self, sha256: str) -> bool:
        raise NotImplementedError

    def _upload(self, sha256: str, key: str, pieces: Iterable[bytes], digest: Any) -> int | None:
        """Upload ``pieces`` under ``key`` while hashing them into ``digest``, made
        visible only when the digest is ``sha256``: the bytes written, or None when a
        concurrent writer stored the same blob first."""
        raise NotImplementedError

    def put_stream(self, sha256: str, pieces: Iterable[bytes]) -> bool:
        """Store the bytes of ``pieces`` as blob ``sha256`` (see the store's ``put_file``)."""
        key = self.key(sha256)
        if self.exists(sha256):
            return False
        started = time.monotonic()
        size = self._upload(sha256, key, pieces, hashlib.sha256())
        if size is None:
            return False
        record_upload(self.name, sha256, size, started)
        return True
