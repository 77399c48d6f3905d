"""The model cache's bookkeeping records: a blob held by a tier (:class:`BlobInfo`), a
tier's contents and counters (:class:`TierState`), a cached version
(:class:`CachedVersion`), and request frequency with aging (:func:`decayed`)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from storaged.manifest import FileEntry
from storaged.tiers import Tier, TierConfig

__all__ = ["HALF_LIFE_S", "BlobInfo", "CachedVersion", "TierState", "decayed"]

HALF_LIFE_S = 3600.0  # request frequency halves every hour without use (aging)


@dataclass
class BlobInfo:
    sha256: str
    size: int
    last_access: float
    freq: float = 0.0


@dataclass
class TierState:
    config: TierConfig
    blobs: dict[str, BlobInfo] = field(default_factory=dict)
    reserved: int = 0
    hits: int = 0
    evictions: int = 0
    demotions: int = 0

    @property
    def used(self) -> int:
        return sum(b.size for b in self.blobs.values())

    @property
    def free(self) -> int:
        return self.config.capacity_bytes - self.used - self.reserved

    def blob_path(self, sha: str) -> Path:
        return self.config.path / "blobs" / sha

    def version_dir(self, model_id: str, version: str) -> Path:
        """The directory of hard links that makes ``model_id@version`` in this tier."""
        return self.config.path / "versions" / urllib.parse.quote(model_id, safe="") / version


@dataclass
class CachedVersion:
    model_id: str
    version: str
    files: tuple[FileEntry, ...]
    tier: Tier | None  # where its directory of links is; None: not complete anywhere
    last_access: float
    freq: float = 0.0

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def decayed(freq: float, since: float, now: float) -> float:
    return freq * 0.5 ** (max(0.0, now - since) / HALF_LIFE_S)
