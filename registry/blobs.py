"""Content-addressed blob storage: the interface, file hashing and the local backend.

A blob is named by the hex SHA-256 of its bytes. Every backend verifies on write (the
bytes stored hash to the name, else nothing is stored) and the registry verifies on read
(each chunk against the manifest's per-chunk hashes). Backends are synchronous; the
registry calls them from worker threads, never from the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.errors import BlobStoreError, DataLossError, NotFoundError
from runtime.model_ids import check_sha256

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlobStore",
    "FileDigest",
    "LocalBlobStore",
    "hash_file",
]

DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
_IO_SIZE = 1024 * 1024

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class FileDigest:
    """A file's size, whole-file SHA-256 and per-chunk SHA-256 (fixed chunk size)."""

    size: int
    sha256: str
    chunk_size: int
    chunk_sha256: tuple[str, ...]


def hash_stream(
    chunks: Iterator[bytes], chunk_size: int, progress: ProgressFn | None = None
) -> FileDigest:
    """Hash a byte stream (pieces of any size) into a :class:`FileDigest`."""
    whole = hashlib.sha256()
    chunk_hashes: list[str] = []
    current = hashlib.sha256()
    in_chunk = 0
    size = 0
    for piece in chunks:
        whole.update(piece)
        size += len(piece)
        view = memoryview(piece)
        while view:
            take = min(len(view), chunk_size - in_chunk)
            current.update(view[:take])
            in_chunk += take
            view = view[take:]
            if in_chunk == chunk_size:
                chunk_hashes.append(current.hexdigest())
                current = hashlib.sha256()
                in_chunk = 0
        if progress is not None:
            progress(len(piece))
    if in_chunk or not chunk_hashes:
        chunk_hashes.append(current.hexdigest())
    return FileDigest(size, whole.hexdigest(), chunk_size, tuple(chunk_hashes))


def iter_file(path: Path, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            piece = f.read(_IO_SIZE if left is None else min(_IO_SIZE, left))
            if not piece:
                return
            if left is not None:
                left -= len(piece)
            yield piece


def hash_file(
    path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, progress: ProgressFn | None = None
) -> FileDigest:
    """Hash ``path`` (blocking: call it in a thread)."""
    return hash_stream(iter_file(path), chunk_size, progress)


class BlobStore(Protocol):
    """Where blob bytes live. Every method blocks; call them from threads."""

    name: str

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored (complete: a half-written one never exists)."""
        ...

    def put_file(self, sha256: str, source: Path) -> bool:
        """Store ``source`` as blob ``sha256``, verifying its bytes hash to ``sha256``
        (DataLossError otherwise, nothing stored). False when it was there already."""
        ...

    def read(self, sha256: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` (``length`` bytes, or to the end); NotFound."""
        ...

    def delete(self, sha256: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...


class LocalBlobStore:
    """Blobs as files ``<root>/sha256/<ab>/<cd>/<sha256>``; writes go to ``<root>/tmp``
    first, are hashed while copied, fsynced and renamed into place (atomic)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # left behind by a crash mid-write
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, sha256: str, source: Path) -> bool:
        final = self.path(sha256)
        if final.is_file():
            return False
        tmp = self.tmp / f"{sha256}.{uuid.uuid4().hex}"
        try:
            digest = hashlib.sha256()
            with tmp.open("wb") as out:
                for piece in iter_file(source):
                    digest.update(piece)
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise DataLossError(
                    f"blob {sha256}: bytes written hash to {digest.hexdigest()}; not stored"
                )
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # same content either way if a concurrent writer won
            _fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise BlobStoreError(f"local blob store: writing {sha256}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, sha256: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob {sha256}: not in the blob store")
        return iter_file(path, offset, length)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
