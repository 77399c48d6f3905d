"""Blobs as Azure block blobs (azure-storage-blob): :class:`AzureBlobStore`, with the
guarantees described in :mod:`registry.cloud` (verified on write and read, nothing
half-written visible, dedup)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.blobs import iter_file
from registry.cloud import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_READ_SIZE,
    PIECE,
    REMOTE_FAILURES,
    RemoteBlobStore,
    VerifiedReader,
    check_digest,
    empty_range,
    normalize_prefix,
    regroup,
    remote_errors,
    upload_parts,
)
from runtime.config import ConfigError
from runtime.errors import BlobStoreError, NotFoundError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

__all__ = ["AzureBlobStore"]

logger = logging.getLogger(__name__)


class AzureBlobStore(RemoteBlobStore):
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

    def _errors(self, op: str, what: str) -> contextlib.AbstractContextManager[None]:
        from azure.core.exceptions import AzureError

        def code(exc: Exception) -> str | None:
            if not isinstance(exc, AzureError):
                return None
            return getattr(exc, "error_code", None) or type(exc).__name__

        where = f"azure://{self.container.container_name}/{what}"
        return remote_errors(self.name, op, where, (AzureError,), code)

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

    def _upload(self, sha256: str, key: str, pieces: Iterable[bytes], digest: Any) -> int | None:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobBlock

        blob = self.container.get_blob_client(key)
        upload = uuid.uuid4().hex  # every block id of every upload has the same length
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
            ids = upload_parts(parts(), digest, self.concurrency, send)
            check_digest(self.name, sha256, digest)
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
                        return None
                    raise
        except BlobStoreError:
            REMOTE_FAILURES.labels(self.name, "upload").inc()
            raise
        return sum(sizes)

    def read(self, sha256: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        key = self.key(sha256)
        if empty_range(offset, length):
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
        check = VerifiedReader(self.name, sha256, whole)
        expected = int(downloader.size)
        got = 0
        with self._errors("download_blob", key):
            for chunk in downloader.chunks():  # later ranges are pinned to the first ETag
                for start in range(0, len(chunk), PIECE):
                    piece = bytes(chunk[start : start + PIECE])
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
