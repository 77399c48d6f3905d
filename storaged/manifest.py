"""What storaged knows of a version: its files, sizes and hashes (domain types)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from runtime.model_ids import is_sha256

__all__ = [
    "BlobSource",
    "FileEntry",
    "Manifest",
    "ManifestSource",
    "safe_version",
]

# A version id becomes a directory name: the registry's are 40 hex digits; anything it
# may answer must at least be one safe path segment.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_version(version: str) -> bool:
    """Whether ``version`` can name a directory (no separators, no ``..``)."""
    return bool(_VERSION.fullmatch(version)) and ".." not in version


@dataclass(frozen=True)
class FileEntry:
    """One file of a version, as the registry's manifest describes it."""

    path: str
    size: int
    sha256: str
    chunk_size: int = 0  # 0: the file is one chunk, checked against sha256
    chunk_sha256: tuple[str, ...] = ()

    def chunks(self) -> list[tuple[int, int, str]]:
        """(offset, length, expected sha256) for each chunk."""
        if self.chunk_size <= 0 or not self.chunk_sha256:
            return [(0, self.size, self.sha256)]
        return [
            (i * self.chunk_size, min(self.chunk_size, self.size - i * self.chunk_size), h)
            for i, h in enumerate(self.chunk_sha256)
        ]

    def problems(self) -> list[str]:
        """What is inconsistent in this entry (an empty list when it is usable)."""
        out = []
        parts = self.path.split("/")
        if not self.path or self.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            out.append(f"unsafe path {self.path!r}")
        if self.size < 0:
            out.append(f"{self.path}: negative size")
        if not is_sha256(self.sha256):
            out.append(f"{self.path}: sha256 is not 64 lowercase hex digits")
        if self.chunk_size > 0 and self.chunk_sha256:
            expected = max(1, -(-self.size // self.chunk_size))
            if len(self.chunk_sha256) != expected:
                out.append(
                    f"{self.path}: {len(self.chunk_sha256)} chunk hashes, expected {expected}"
                )
            if not all(is_sha256(h) for h in self.chunk_sha256):
                out.append(f"{self.path}: a chunk hash is not 64 lowercase hex digits")
        return out


@dataclass(frozen=True)
class Manifest:
    model_id: str
    version: str
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ManifestSource(Protocol):
    """Where versions are resolved and described (the registry)."""

    async def resolve(self, model_id: str, version: str) -> tuple[str, str]:
        """(model_id, concrete version) for a reference; version may be empty or an alias."""
        ...

    async def manifest(self, model_id: str, version: str) -> Manifest: ...


class BlobSource(Protocol):
    """Where a file's bytes come from: a peer, the registry, an HTTP(S) store."""

    name: str

    def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """The bytes [offset, offset+length) of the blob. Raises NotFoundError when the
        source lacks it, UnavailableError when it cannot be reached."""
        ...
