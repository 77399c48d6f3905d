"""Blobs as S3 objects (boto3): :class:`S3BlobStore`, with the guarantees described in
:mod:`registry.cloud` (verified on write and read, nothing half-written visible, dedup)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from registry.blobs import iter_file
from registry.cloud import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_READ_SIZE,
    PIECE,
    REMOTE_FAILURES,
    S3_MIN_PART_SIZE,
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

__all__ = ["S3BlobStore"]

logger = logging.getLogger(__name__)


class S3BlobStore(RemoteBlobStore):
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

    def _errors(self, op: str, what: str) -> contextlib.AbstractContextManager[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        def code(exc: Exception) -> str | None:
            if not isinstance(exc, ClientError):
                return None
            return str(exc.response.get("Error", {}).get("Code", "?"))

        where = f"s3://{self.bucket}/{what}"
        return remote_errors(self.name, op, where, (ClientError, BotoCoreError), code)

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

    def _upload(self, sha256: str, key: str, pieces: Iterable[bytes], digest: Any) -> int | None:
        with self._errors("read source", key):
            parts = regroup(pieces, self.part_size)
            first = next(parts, b"")
            second = next(parts, None)
        if second is None:  # one part: hashed before a byte is sent, one atomic PUT
            digest.update(first)
            check_digest(self.name, sha256, digest)
            with self._errors("put_object", key):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first)
            return len(first)
        return self._multipart(sha256, key, digest, [first, second], parts)

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
            etags = upload_parts(all_parts(), digest, self.concurrency, send)
            check_digest(self.name, sha256, digest)
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
        if empty_range(offset, length):
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
        check = VerifiedReader(self.name, sha256, whole=offset == 0 and final == size)
        position = offset
        with self._errors("get_object", key):
            while True:
                got = 0
                try:
                    for piece in body.iter_chunks(PIECE):
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
