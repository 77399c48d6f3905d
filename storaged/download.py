"""Parallel chunked downloads: N connections, per-chunk hashes, retries, resume.

A file is downloaded into ``<tmp>/<sha>.part`` (space reserved up front with
``posix_fallocate``, so a full disk fails at once, not half-way). Each chunk is written
where it belongs while its hash is computed; once it matches the manifest the data is
fdatasync'ed and the chunk's index appended (and fsync'ed) to ``<sha>.journal``. After a
crash the journal says which chunks are good (they are re-hashed to be sure) and only
the rest are fetched. The finished file is fsync'ed and renamed into place: a partial or
corrupt file is never visible under its content hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime.errors import (
    DataLossError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from storaged.manifest import BlobSource, FileEntry

__all__ = ["ChunkedDownloader", "fsync_dir"]

logger = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _hash_range(fd: int, offset: int, length: int) -> str:
    h = hashlib.sha256()
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(4 << 20, end - offset), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.hexdigest()


def _space_error(path: Path, exc: OSError) -> ResourceExhaustedError:
    return ResourceExhaustedError(f"no space left for {path.name} in {path.parent}: {exc}")


class ChunkedDownloader:
    """Downloads files chunk by chunk from the first source that has them.

    ``connections`` bounds the chunks in flight over every file this downloader
    fetches, so many small files and one big file both use the same N connections.
    """

    def __init__(
        self,
        sources: Sequence[BlobSource],
        *,
        connections: int = 8,
        attempts: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        if not sources:
            raise ValueError("at least one blob source is needed")
        self.sources = list(sources)
        self.connections = connections
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._slots = asyncio.Semaphore(connections)
        self.bytes_downloaded = 0
        self.retries = 0

    async def download(
        self, entry: FileEntry, tmp_dir: Path, dest: Path, on_bytes: Callable[[int], None]
    ) -> int:
        """Fetch ``entry`` to ``dest``; returns the bytes fetched (resumed ones excluded).
        ``on_bytes`` is told of every verified chunk (and of resumed ones at the start)."""
        await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
        part = tmp_dir / f"{entry.sha256}.part"
        journal = tmp_dir / f"{entry.sha256}.journal"
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                if os.fstat(fd).st_size != entry.size:
                    os.ftruncate(fd, entry.size)
                if entry.size:
                    await asyncio.to_thread(os.posix_fallocate, fd, 0, entry.size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _space_error(part, exc) from None
                raise
            chunks = entry.chunks()
            done = await asyncio.to_thread(self._resume, fd, journal, chunks)
            resumed = sum(chunks[i][1] for i in done)
            if resumed:
                logger.info(
                    "resuming download",
                    extra={"sha256": entry.sha256, "resumed_bytes": resumed, "file": entry.path},
                )
                on_bytes(resumed)
            journal_lock = asyncio.Lock()
            jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                tasks = [
                    asyncio.create_task(
                        self._chunk(entry, fd, i, chunks[i], jfd, journal_lock, on_bytes)
                    )
                    for i in range(len(chunks))
                    if i not in done
                ]
                try:
                    fetched = sum(await asyncio.gather(*tasks))
                except BaseException:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
            finally:
                os.close(jfd)
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        await asyncio.to_thread(fsync_dir, dest.parent)
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()
        return fetched

    @staticmethod
    def _resume(fd: int, journal: Path, chunks: list[tuple[int, int, str]]) -> set[int]:
        try:
            lines = journal.read_text(encoding="ascii", errors="replace").split()
        except FileNotFoundError:
            return set()
        done = set()
        for line in lines:
            if line.isdigit() and int(line) < len(chunks):
                i = int(line)
                offset, length, expected = chunks[i]
                if _hash_range(fd, offset, length) == expected:
                    done.add(i)
        return done

    async def _chunk(
        self,
        entry: FileEntry,
        fd: int,
        index: int,
        chunk: tuple[int, int, str],
        jfd: int,
        journal_lock: asyncio.Lock,
        on_bytes: Callable[[int], None],
    ) -> int:
        offset, length, expected = chunk
        delay = self.backoff_s
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            try:
                async with self._slots:
                    await self._fetch_into(entry, fd, offset, length, expected)
            except (NotFoundError, ResourceExhaustedError):
                raise
            except (DataLossError, UnavailableError, OSError, EOFError) as exc:
                last = exc
                logger.warning(
                    "chunk failed, retrying",
                    extra={
                        "sha256": entry.sha256,
                        "chunk": index,
                        "attempt": attempt + 1,
                        "error": str(exc),
                    },
                )
                continue
            await asyncio.to_thread(os.fdatasync, fd)
            async with journal_lock:
                await asyncio.to_thread(self._journal, jfd, index)
            self.bytes_downloaded += length
            on_bytes(length)
            return length
        assert last is not None
        if isinstance(last, DataLossError):
            raise DataLossError(f"{entry.path}: {last.message} (after {self.attempts} attempts)")
        raise UnavailableError(
            f"{entry.path}: chunk {index} failed after {self.attempts} attempts: {last}"
        )

    @staticmethod
    def _journal(jfd: int, index: int) -> None:
        os.write(jfd, f"{index}\n".encode())
        os.fsync(jfd)

    async def _fetch_into(
        self, entry: FileEntry, fd: int, offset: int, length: int, expected: str
    ) -> None:
        """One try at one chunk: from the first source that has the blob and answers
        (a source that is down, hung or cut off mid-range hands over to the next one;
        a range rewritten by the next source overwrites the same bytes)."""
        missing: list[str] = []
        unavailable: list[str] = []
        for source in self.sources:
            h = hashlib.sha256()
            pos = offset
            try:
                async for piece in source.read(entry.sha256, offset, length):
                    if pos + len(piece) > offset + length:
                        raise DataLossError(f"{source.name} sent more bytes than asked")
                    h.update(piece)
                    try:
                        await asyncio.to_thread(_pwrite_all, fd, piece, pos)
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise _space_error(Path(entry.path), exc) from None
                        raise
                    pos += len(piece)
            except NotFoundError as exc:
                missing.append(f"{source.name}: {exc.message}")
                continue
            except UnavailableError as exc:
                unavailable.append(exc.message)
                continue
            if pos != offset + length:
                unavailable.append(
                    f"{source.name} ended the range at {pos - offset} of {length} bytes"
                )
                continue
            if h.hexdigest() != expected:
                raise DataLossError(
                    f"bytes [{offset}, {offset + length}) from {source.name} hash to "
                    f"{h.hexdigest()[:12]}…, the manifest says {expected[:12]}…"
                )
            return
        if unavailable:  # retryable: the chunk's next try starts over
            raise UnavailableError("; ".join(unavailable))
        raise NotFoundError(f"no source has blob {entry.sha256}: {'; '.join(missing)}")


class RateMeter:
    """Bytes per second over a run."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.bytes / elapsed if elapsed > 0 else 0.0
