"""Remote blob stores behind :class:`registry.blobs.BlobStore`: S3 (boto3) and Azure Blob
(azure-storage-blob).

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
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter

from registry.blobs import BlobStoreError, IntegrityError, iter_file
from runtime.config import ConfigError
from runtime.errors import NotFoundError
from runtime.model_ids import check_sha256

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

__all__ = [
    "S3_MIN_PART_SIZE",
    "AzureBlobStore",
    "S3BlobStore",
    "blob_key",
    "normalize_prefix",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB  # S3's floor for every multipart part but the last
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_READ_SIZE = 8 * MiB  # bytes per ranged GET
DEFAULT_CONCURRENCY = 4  # parts/blocks in flight per upload (memory: concurrency x part)
_PIECE = MiB  # bytes per piece yielded to readers

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


def _check_digest(backend: str, sha256: str, digest: Any) -> None:
    actual = digest.hexdigest()
    if actual != sha256:
        REMOTE_FAILURES.labels(backend, "verify").inc()
        raise IntegrityError(f"blob {sha256}: bytes uploaded hash to {actual}; not stored")


def _upload_parts(
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


class _VerifiedReader:
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
            raise IntegrityError(
                f"blob {self.sha256}: stored copy hashes to {self.digest.hexdigest()}"
            )


# S3 ------------------------------------------------------------------------------------


class S3BlobStore:
    """Blobs as S3 objects. Small blobs (one part) are hashed in memory and sent with one
    PUT; larger ones go up as a multipart upload that is completed only after the hash
    checks out and aborted otherwise (S3 never shows an incomplete multipart upload)."""

    name = "s3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        read_size: int = DEFAULT_READ_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if not bucket:
            raise ConfigError("s3_bucket", "must be set for the s3 backend")
        if part_size < S3_MIN_PART_SIZE:
            raise ConfigError("s3_part_size", f"must be >= {S3_MIN_PART_SIZE} (S3's minimum)")
        if read_size < 1 or concurrency < 1:
            raise ConfigError("s3", "read_size and concurrency must be >= 1")
        self.client = client
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.part_size = part_size
        self.read_size = read_size
        self.concurrency = concurrency

    @classmethod
    def connect(
        cls,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        max_attempts: int = 5,
        **kwargs: Any,
    ) -> S3BlobStore:
        """A store over a new boto3 client (credentials from the standard AWS chain;
        ``endpoint_url`` None also honours ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL``)."""
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            max_pool_connections=max(10, 2 * kwargs.get("concurrency", DEFAULT_CONCURRENCY)),
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        return cls(client, bucket, prefix, **kwargs)

    def key(self, sha256: str) -> str:
        return blob_key(self.prefix, sha256)

    @contextlib.contextmanager
    def _errors(self, op: str, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            REMOTE_FAILURES.labels(self.name, op).inc()
            code = exc.response.get("Error", {}).get("Code", "?")
            raise BlobStoreError(f"s3://{self.bucket}/{what}: {op} failed ({code}): {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            REMOTE_FAILURES.labels(self.name, op).inc()
            raise BlobStoreError(f"s3://{self.bucket}/{what}: {op} failed: {exc}") from exc

    def check(self, create: bool = False) -> None:
        """Fail fast when the bucket is missing or unreachable (or create it), and abort
        multipart uploads that a crashed writer left behind a day ago or more."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404 or not create:
                with self._errors("head_bucket", ""):
                    raise
            with self._errors("create_bucket", ""):
                self.client.create_bucket(Bucket=self.bucket)
        except Exception:
            with self._errors("head_bucket", ""):
                raise
        self.abort_stale_uploads(timedelta(days=1))

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        key = self.key(sha256)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            with self._errors("head_object", key):
                raise

    def put_file(self, sha256: str, source: Path) -> bool:
        return self.put_stream(sha256, iter_file(source))

    def put_stream(self, sha256: str, pieces: Iterable[bytes]) -> bool:
        """Store the bytes of ``pieces`` as blob ``sha256`` (see :meth:`put_file`)."""
        key = self.key(sha256)
        if self.exists(sha256):
            return False
        digest = hashlib.sha256()
        started = time.monotonic()
        with self._errors("read source", key):
            parts = regroup(pieces, self.part_size)
            first = next(parts, b"")
            second = next(parts, None)
        if second is None:  # one part: hashed before a byte is sent, one atomic PUT
            digest.update(first)
            _check_digest(self.name, sha256, digest)
            with self._errors("put_object", key):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first)
            size = len(first)
        else:
            size = self._multipart(sha256, key, digest, [first, second], parts)
        REMOTE_BYTES.labels(self.name, "write").inc(size)
        logger.info(
            "blob uploaded",
            extra={
                "backend": self.name,
                "sha256": sha256,
                "bytes": size,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    def _multipart(
        self, sha256: str, key: str, digest: Any, head: list[bytes], rest: Iterator[bytes]
    ) -> int:
        with self._errors("create_multipart_upload", key):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        sizes: list[int] = []

        def send(number: int, part: bytes) -> dict[str, Any]:
            with self._errors("upload_part", key):
                reply = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                )
            sizes.append(len(part))
            return {"PartNumber": number, "ETag": reply["ETag"]}

        def all_parts() -> Iterator[bytes]:
            yield from head
            with self._errors("read source", key):
                yield from rest

        completed = False
        try:
            etags = _upload_parts(all_parts(), digest, self.concurrency, send)
            _check_digest(self.name, sha256, digest)
            with self._errors("complete_multipart_upload", key):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": etags},
                )
            completed = True
            return sum(sizes)
        finally:
            if not completed:
                REMOTE_FAILURES.labels(self.name, "upload").inc()
                self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            logger.warning("multipart upload aborted", extra={"key": key, "upload_id": upload_id})
        except Exception as exc:  # the original error matters more; check() retries later
            logger.error(
                "aborting a multipart upload failed",
                extra={"key": key, "upload_id": upload_id, "error": str(exc)},
            )

    def abort_stale_uploads(self, older_than: timedelta) -> int:
        """Abort this store's multipart uploads started more than ``older_than`` ago
        (left by a writer that crashed); the number aborted."""
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        with self._errors("list_multipart_uploads", f"{self.prefix}blobs/"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        self._abort(upload["Key"], upload["UploadId"])
                        aborted += 1
        return aborted

    def read(self, sha256: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        key = self.key(sha256)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be >= 0")
        if length == 0:
            return iter(())
        stop = None if length is None else offset + length
        first = self._get(key, offset, stop, None)  # eager: NotFoundError now, not later
        if first is None:
            return iter(())
        return self._stream(sha256, key, offset, stop, first)

    def _get(
        self, key: str, start: int, stop: int | None, etag: str | None
    ) -> tuple[Any, int, int, str] | None:
        """One ranged GET of [start, min(stop, start + read_size)): (body, end, size,
        etag), or None when ``start`` is at/after the end."""
        from botocore.exceptions import ClientError

        end = start + self.read_size if stop is None else min(stop, start + self.read_size)
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Range": f"bytes={start}-{end - 1}",
        }
        if etag is not None:
            args["IfMatch"] = etag
        try:
            reply = self.client.get_object(**args)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise NotFoundError(
                    f"blob {key.rsplit('/', 1)[-1]}: not in the blob store"
                ) from exc
            if status == 416:
                return None
            with self._errors("get_object", key):
                raise
        except Exception:
            with self._errors("get_object", key):
                raise
        size = int(str(reply["ContentRange"]).rsplit("/", 1)[1])
        return reply["Body"], min(end, size), size, reply["ETag"]

    def _stream(
        self,
        sha256: str,
        key: str,
        offset: int,
        stop: int | None,
        first: tuple[Any, int, int, str],
    ) -> Iterator[bytes]:
        body, end, size, etag = first
        final = size if stop is None else min(stop, size)
        check = _VerifiedReader(self.name, sha256, whole=offset == 0 and final == size)
        position = offset
        with self._errors("get_object", key):
            while True:
                got = 0
                try:
                    for piece in body.iter_chunks(_PIECE):
                        got += len(piece)
                        yield check.feed(piece)
                finally:
                    body.close()
                if got != end - position:
                    raise BlobStoreError(
                        f"s3://{self.bucket}/{key}: range {position}-{end} returned {got} bytes"
                    )
                position = end
                if position >= final:
                    break
                nxt = self._get(key, position, final, etag)
                if nxt is None:
                    raise BlobStoreError(f"s3://{self.bucket}/{key}: shrank while being read")
                body, end, _, _ = nxt
        check.finish()

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)
        with self._errors("delete_object", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)


# Azure ---------------------------------------------------------------------------------


class AzureBlobStore:
    """Blobs as Azure block blobs: blocks are staged (each with a transfer MD5) while the
    bytes are hashed, and the block list is committed only when the hash matches. A blob
    exists only once committed, so a failed or rejected upload leaves nothing visible."""

    name = "azure"

    def __init__(
        self,
        container: ContainerClient,
        prefix: str = "",
        *,
        block_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if block_size < 1 or concurrency < 1:
            raise ConfigError("azure", "block_size and concurrency must be >= 1")
        self.container = container
        self.prefix = normalize_prefix(prefix)
        self.block_size = block_size
        self.concurrency = concurrency

    @classmethod
    def connect(
        cls,
        connection_string: str,
        container: str,
        prefix: str = "",
        *,
        read_size: int = DEFAULT_READ_SIZE,
        retry_total: int = 5,
        **kwargs: Any,
    ) -> AzureBlobStore:
        """A store over a container client made from a storage connection string."""
        from azure.storage.blob import ContainerClient

        if not connection_string:
            raise ConfigError("azure_connection_string", "must be set for the azure backend")
        if not container:
            raise ConfigError("azure_container", "must be set for the azure backend")
        client = ContainerClient.from_connection_string(
            connection_string,
            container,
            max_single_get_size=read_size,
            max_chunk_get_size=read_size,
            retry_total=retry_total,
        )
        return cls(client, prefix, **kwargs)

    def key(self, sha256: str) -> str:
        return blob_key(self.prefix, sha256)

    @contextlib.contextmanager
    def _errors(self, op: str, what: str) -> Iterator[None]:
        from azure.core.exceptions import AzureError

        try:
            yield
        except AzureError as exc:
            REMOTE_FAILURES.labels(self.name, op).inc()
            code = getattr(exc, "error_code", None) or type(exc).__name__
            where = f"{self.container.container_name}/{what}"
            raise BlobStoreError(f"azure://{where}: {op} failed ({code}): {exc}") from exc
        except OSError as exc:
            REMOTE_FAILURES.labels(self.name, op).inc()
            where = f"{self.container.container_name}/{what}"
            raise BlobStoreError(f"azure://{where}: {op} failed: {exc}") from exc

    def check(self, create: bool = False) -> None:
        """Fail fast when the container is missing or unreachable (or create it)."""
        from azure.core.exceptions import ResourceExistsError

        with self._errors("get_container_properties", ""):
            if self.container.exists():
                return
            if not create:
                raise BlobStoreError(
                    f"azure container {self.container.container_name!r} does not exist"
                )
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()

    def exists(self, sha256: str) -> bool:
        key = self.key(sha256)
        with self._errors("get_blob_properties", key):
            return bool(self.container.get_blob_client(key).exists())

    def put_file(self, sha256: str, source: Path) -> bool:
        return self.put_stream(sha256, iter_file(source))

    def put_stream(self, sha256: str, pieces: Iterable[bytes]) -> bool:
        """Store the bytes of ``pieces`` as blob ``sha256`` (see :meth:`put_file`)."""
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobBlock

        key = self.key(sha256)
        if self.exists(sha256):
            return False
        blob = self.container.get_blob_client(key)
        upload = uuid.uuid4().hex  # every block id of every upload has the same length
        digest = hashlib.sha256()
        started = time.monotonic()
        sizes: list[int] = []

        def send(number: int, part: bytes) -> str:
            block_id = f"{upload}-{number:06d}"
            with self._errors("stage_block", key):
                blob.stage_block(block_id, part, length=len(part), validate_content=True)
            sizes.append(len(part))
            return block_id

        def parts() -> Iterator[bytes]:
            with self._errors("read source", key):
                yield from regroup(pieces, self.block_size)

        try:
            ids = _upload_parts(parts(), digest, self.concurrency, send)
            _check_digest(self.name, sha256, digest)
        except BaseException:
            # Staged blocks stay uncommitted: invisible, and dropped by the service.
            REMOTE_FAILURES.labels(self.name, "upload").inc()
            logger.warning(
                "blob upload abandoned; its blocks stay uncommitted",
                extra={"backend": self.name, "sha256": sha256, "upload": upload},
            )
            raise
        try:
            with self._errors("commit_block_list", key):
                try:
                    blob.commit_block_list([BlobBlock(block_id=i) for i in ids])
                except HttpResponseError as exc:
                    # A concurrent writer of the same bytes committed first, which
                    # discarded our uncommitted blocks: the blob is there all the same.
                    if getattr(exc, "error_code", None) == "InvalidBlockList" and blob.exists():
                        return False
                    raise
        except BlobStoreError:
            REMOTE_FAILURES.labels(self.name, "upload").inc()
            raise
        REMOTE_BYTES.labels(self.name, "write").inc(sum(sizes))
        logger.info(
            "blob uploaded",
            extra={
                "backend": self.name,
                "sha256": sha256,
                "bytes": sum(sizes),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    def read(self, sha256: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        key = self.key(sha256)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be >= 0")
        if length == 0:
            return iter(())
        blob = self.container.get_blob_client(key)
        try:  # eager: the first ranged GET happens here (NotFoundError now, not later)
            downloader = blob.download_blob(offset=offset, length=length, max_concurrency=1)
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"blob {sha256}: not in the blob store") from exc
        except HttpResponseError as exc:
            if exc.status_code == 416:  # offset at/after the end
                return iter(())
            with self._errors("download_blob", key):
                raise
        except Exception:
            with self._errors("download_blob", key):
                raise
        # properties.size is the range's size; the blob's is after the "/" of the range
        size = int(str(downloader.properties.content_range).rsplit("/", 1)[1])
        whole = offset == 0 and (length is None or length >= size)
        return self._stream(sha256, key, downloader, whole)

    def _stream(self, sha256: str, key: str, downloader: Any, whole: bool) -> Iterator[bytes]:
        check = _VerifiedReader(self.name, sha256, whole)
        expected = int(downloader.size)
        got = 0
        with self._errors("download_blob", key):
            for chunk in downloader.chunks():  # later ranges are pinned to the first ETag
                for start in range(0, len(chunk), _PIECE):
                    piece = bytes(chunk[start : start + _PIECE])
                    got += len(piece)
                    yield check.feed(piece)
        if got != expected:
            raise BlobStoreError(f"azure blob {key}: read {got} of {expected} bytes")
        check.finish()

    def delete(self, sha256: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        key = self.key(sha256)
        with self._errors("delete_blob", key), contextlib.suppress(ResourceNotFoundError):
            self.container.get_blob_client(key).delete_blob()
