"""Reading blobs back out of a :class:`registry.blobs.BlobStore`, every chunk checked
against the per-chunk hashes recorded at import before a byte of it is returned."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from prometheus_client import Counter

from registry.blobs import BlobStore
from registry.metadata import BlobRow, MetadataStore
from runtime.errors import DataLossError, InvalidArgumentError, NotFoundError
from runtime.model_ids import check_sha256

__all__ = ["MAX_READ_MESSAGE", "read_blob", "read_verified"]

BLOB_READ_BYTES = Counter("helios_registry_blob_read_bytes", "Blob bytes served (verified)")
MAX_READ_MESSAGE = 1024 * 1024


def read_verified(store: BlobStore, blob: BlobRow, offset: int, length: int) -> list[bytes]:
    """Blocking: the verified bytes [offset, offset+length) of ``blob``."""
    if length == 0:
        return []
    first = offset // blob.chunk_size
    last = (offset + length - 1) // blob.chunk_size
    start = first * blob.chunk_size
    end = min(blob.size, (last + 1) * blob.chunk_size)
    data = b"".join(store.read(blob.sha256, start, end - start))
    if len(data) != end - start:
        raise DataLossError(f"blob {blob.sha256}: stored copy is truncated")
    for index in range(first, last + 1):
        lo = (index - first) * blob.chunk_size
        piece = data[lo : lo + blob.chunk_size]
        if hashlib.sha256(piece).hexdigest() != blob.chunk_sha256[index]:
            raise DataLossError(f"blob {blob.sha256}: chunk {index} does not match its hash")
    view = data[offset - start : offset - start + length]
    return [view[i : i + MAX_READ_MESSAGE] for i in range(0, len(view), MAX_READ_MESSAGE)]


async def read_blob(
    meta: MetadataStore, store: BlobStore, sha256: str, offset: int = 0, length: int = 0
) -> AsyncIterator[tuple[int, int, bytes]]:
    """(offset, blob size, bytes) pieces of ``[offset, offset+length)`` (0: to the
    end), each chunk verified against the manifest's hashes before it is sent."""
    sha = check_sha256(sha256.lower())
    if offset < 0 or length < 0:
        raise InvalidArgumentError("offset and length: must be >= 0")
    blob = await asyncio.to_thread(meta.get_blob, sha)
    if blob is None:
        raise NotFoundError(f"blob {sha}: not in the registry")
    if offset > blob.size:
        raise InvalidArgumentError(f"offset {offset}: past the blob's end ({blob.size})")
    end = blob.size if length == 0 else min(blob.size, offset + length)
    position = offset
    if position == end:
        yield position, blob.size, b""
        return
    # One chunk-aligned window at a time (a few chunks, bounded memory).
    window = max(blob.chunk_size, (4 * MAX_READ_MESSAGE // blob.chunk_size) * blob.chunk_size)
    while position < end:
        window_end = min(end, (position // blob.chunk_size) * blob.chunk_size + window)
        pieces = await asyncio.to_thread(
            read_verified, store, blob, position, window_end - position
        )
        for piece in pieces:
            BLOB_READ_BYTES.inc(len(piece))
            yield position, blob.size, piece
            position += len(piece)
