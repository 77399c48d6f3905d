"""Client uploads (UploadModel): a model's files streamed by the client, not read from a
server path. Domain only (no protobuf).

The client first declares every file (relative path, size, SHA-256), then streams the
bytes one file at a time, in offset order, in pieces of at most :data:`MAX_UPLOAD_CHUNK`.
:class:`UploadStaging` checks the declaration before a byte is written (safe relative
paths, no duplicates, sizes within the registry's limit) and every piece as it arrives
(declared file, expected offset, no byte past the declared size); each file's hash is
checked when its last byte is in. Bytes go to a private staging directory under names the
registry chooses (never the client's paths); the registry then stores them as blobs the
way an import does (temp file, fsync, rename), so nothing half-written is ever visible.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.errors import InvalidArgumentError, ResourceExhaustedError
from runtime.model_ids import canonical_model_id, check_file_path, check_sha256
from runtime.paths import bounded

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_CHUNK",
    "MAX_UPLOAD_FILES",
    "UploadChunk",
    "UploadFile",
    "UploadHeader",
    "UploadResult",
    "UploadStaging",
]

MAX_UPLOAD_CHUNK = 1024 * 1024  # bytes of file data per message, at most
MAX_UPLOAD_FILES = 10_000
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class UploadFile:
    """One declared file: where it goes in the model, its size and SHA-256 (hex)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadHeader:
    """What an upload declares before any byte: the model and every file."""

    model_id: str
    files: tuple[UploadFile, ...]
    set_latest: bool = True
    base: str = ""  # a LoRA adapter's base model (registry/adapters.py)


@dataclass(frozen=True)
class UploadChunk:
    """A piece of one file's bytes, at ``offset`` in that file."""

    path: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class UploadResult:
    """The version an upload made visible."""

    model_id: str
    version: str
    total_bytes: int
    reused_bytes: int


def check_header(header: UploadHeader, max_bytes: int) -> tuple[str, int]:
    """(canonical model id, total bytes) of a valid declaration; INVALID_ARGUMENT or
    RESOURCE_EXHAUSTED (over ``max_bytes``) otherwise."""
    model = canonical_model_id(header.model_id)
    if not header.files:
        raise InvalidArgumentError("files: an upload declares at least one file")
    if len(header.files) > MAX_UPLOAD_FILES:
        raise InvalidArgumentError(f"files: at most {MAX_UPLOAD_FILES} per upload")
    seen: set[str] = set()
    total = 0
    for entry in header.files:
        check_file_path(entry.path)
        if entry.path in seen:
            raise InvalidArgumentError(f"file {entry.path!r}: declared twice")
        seen.add(entry.path)
        if entry.size < 0:
            raise InvalidArgumentError(f"file {entry.path!r}: size_bytes must be >= 0")
        check_sha256(entry.sha256)
        total += entry.size
    if total > max_bytes:
        raise ResourceExhaustedError(
            f"upload of {total} bytes: over this registry's limit of {max_bytes} bytes"
            " (--max-upload-bytes)"
        )
    return model, total


class UploadStaging:
    """Receives the pieces of a declared upload into ``directory`` (blocking I/O: call
    :meth:`write` and :meth:`finish` from a thread)."""

    def __init__(self, directory: Path, files: Sequence[UploadFile]) -> None:
        self.directory = directory
        self.files = {entry.path: (index, entry) for index, entry in enumerate(files)}
        self.received: dict[str, int] = {}
        self.complete: set[str] = set()
        self._current: tuple[str, BinaryIO, hashlib._Hash] | None = None
        directory.mkdir(parents=True, exist_ok=False)

    def staged(self, path: str) -> Path:
        """Where file ``path`` is staged: a name of the registry's choosing."""
        return self.directory / f"{self.files[path][0]}.part"

    def write(self, chunk: UploadChunk) -> None:
        declared = self.files.get(chunk.path)
        if declared is None:
            raise InvalidArgumentError(f"chunk for {bounded(chunk.path)!r}: not a declared file")
        entry = declared[1]
        if len(chunk.data) > MAX_UPLOAD_CHUNK:
            raise InvalidArgumentError(
                f"chunk for {entry.path!r}: {len(chunk.data)} bytes, at most {MAX_UPLOAD_CHUNK}"
            )
        if entry.path in self.complete:
            raise InvalidArgumentError(f"chunk for {entry.path!r}: the file is complete already")
        if self._current is not None and self._current[0] != entry.path:
            self._incomplete(self._current[0], f"when {entry.path!r} began")
        if self._current is None:
            self._current = (entry.path, self.staged(entry.path).open("wb"), hashlib.sha256())
        _, out, digest = self._current
        done = self.received.get(entry.path, 0)
        if chunk.offset != done:
            raise InvalidArgumentError(
                f"chunk for {entry.path!r}: offset {chunk.offset}, expected {done} (in order)"
            )
        if done + len(chunk.data) > entry.size:
            raise InvalidArgumentError(
                f"file {entry.path!r}: more bytes than its declared size_bytes ({entry.size})"
            )
        out.write(chunk.data)
        digest.update(chunk.data)
        self.received[entry.path] = done + len(chunk.data)
        if self.received[entry.path] == entry.size:
            self._close_current()

    def _incomplete(self, path: str, when: str) -> None:
        entry = self.files[path][1]
        raise InvalidArgumentError(
            f"file {path!r}: {self.received.get(path, 0)} of {entry.size} bytes received {when}"
        )

    def _close_current(self) -> None:
        assert self._current is not None
        path, out, digest = self._current
        out.close()
        self._current = None
        self._verify(path, digest.hexdigest())

    def _verify(self, path: str, sha256: str) -> None:
        entry = self.files[path][1]
        if sha256 != entry.sha256:
            raise InvalidArgumentError(
                f"file {path!r}: bytes hash to {sha256}, the upload declared {entry.sha256}"
            )
        self.complete.add(path)

    def finish(self) -> list[tuple[str, Path, int, str]]:
        """Every file complete and verified: (path, staged file, size, sha256) each."""
        if self._current is not None:
            self._incomplete(self._current[0], "when the upload ended")
        for path, (_, entry) in self.files.items():
            if path in self.complete:
                continue
            if entry.size == 0:  # nothing to send for an empty file
                self.staged(path).write_bytes(b"")
                self._verify(path, hashlib.sha256(b"").hexdigest())
            else:
                self._incomplete(path, "when the upload ended")
        return [
            (path, self.staged(path), entry.size, entry.sha256)
            for path, (_, entry) in self.files.items()
        ]

    def discard(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None
        shutil.rmtree(self.directory, ignore_errors=True)
