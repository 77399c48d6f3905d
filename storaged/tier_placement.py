"""Which tier a cached version goes to, and making room there.

A version goes to the fastest tier that admits it. Admission is frequency-aware: when a
fast tier must evict to make room, the newcomer's (decayed) request frequency must be at
least that of what it would displace, otherwise it goes to a slower tier. Eviction picks
the highest ``age x size-weight / frequency`` (LRU with aging, weighted by size), never a
protected file (a pinned model's, or one in use), and demotes the file to the next slower
tier (if it fits there) before deleting it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections.abc import Callable

from runtime.errors import ResourceExhaustedError
from storaged.cache_metrics import DEMOTIONS, EVICTIONS
from storaged.cache_records import BlobInfo, CachedVersion, TierState, decayed
from storaged.cache_state import copy_file
from storaged.tiers import Tier

__all__ = ["TierPlacement"]

logger = logging.getLogger(__name__)


class TierPlacement:
    """Placement over ``tiers`` (fastest first). ``versions`` is the cache's live map of
    versions (eviction unlinks their directories); ``protected`` gives the blobs that must
    not be evicted right now."""

    def __init__(
        self,
        tiers: list[TierState],
        versions: dict[tuple[str, str], CachedVersion],
        protected: Callable[[], set[str]],
    ) -> None:
        self.tiers = tiers
        self.versions = versions
        self._protected = protected

    def _victim_score(self, b: BlobInfo, now: float) -> float:
        age = max(1.0, now - b.last_access)
        weight = 1.0 + math.log2(1.0 + b.size / (1 << 20))
        return age * weight / (1.0 + decayed(b.freq, b.last_access, now))

    def plan_room(
        self, t: TierState, need: int, keep: set[str], now: float
    ) -> list[BlobInfo] | None:
        """The blobs to evict from ``t`` so that ``need`` bytes fit; None if impossible."""
        if need > t.config.capacity_bytes:
            return None
        shortfall = need - t.free
        if shortfall <= 0:
            return []
        protected = self._protected() | keep
        candidates = sorted(
            (b for b in t.blobs.values() if b.sha256 not in protected),
            key=lambda b: self._victim_score(b, now),
            reverse=True,
        )
        victims, freed = [], 0
        for b in candidates:
            if freed >= shortfall:
                break
            victims.append(b)
            freed += b.size
        return victims if freed >= shortfall else None

    def _slower(self, tier: Tier) -> TierState | None:
        later = [t for t in self.tiers if t.config.tier > tier]
        return later[0] if later else None

    async def evict(self, t: TierState, b: BlobInfo, *, demote: bool = True) -> int:
        """Remove ``b`` from ``t`` (demoting it first when a slower tier can take it).
        Returns the bytes freed in ``t``."""
        tier = t.config.tier
        # Version directories in this tier that link the blob are no longer complete here.
        # (Any directory there: a stale one's hard links would keep the bytes alive.)
        for v in self.versions.values():
            if any(f.sha256 == b.sha256 for f in v.files):
                shutil.rmtree(t.version_dir(v.model_id, v.version), ignore_errors=True)
                if v.tier == tier:
                    v.tier = None
        src = t.blob_path(b.sha256)
        lower = self._slower(tier) if demote else None
        if lower is not None and b.sha256 not in lower.blobs:
            victims = self.plan_room(lower, b.size, {b.sha256}, time.time())
            if victims is not None:
                for victim in victims:
                    await self.evict(lower, victim)
                await asyncio.to_thread(copy_file, src, lower.blob_path(b.sha256))
                lower.blobs[b.sha256] = BlobInfo(b.sha256, b.size, b.last_access, b.freq)
                t.demotions += 1
                DEMOTIONS.labels(tier.name.lower()).inc()
        src.unlink(missing_ok=True)
        del t.blobs[b.sha256]
        t.evictions += 1
        EVICTIONS.labels(tier.name.lower()).inc()
        logger.info(
            "evicted",
            extra={"tier": tier.name.lower(), "sha256": b.sha256, "size": b.size},
        )
        return b.size

    async def place(
        self, v: CachedVersion, now: float, *, pinned: bool, faster_than: Tier | None = None
    ) -> tuple[TierState, int] | None:
        """Pick the tier for ``v``, make room, reserve: (tier, reserved bytes). A pinned
        version skips frequency-aware admission. With ``faster_than``, only faster tiers
        are tried and None means "stay where it is"."""
        keep = {f.sha256 for f in v.files}
        score = decayed(v.freq, v.last_access, now)
        candidates = [t for t in self.tiers if faster_than is None or t.config.tier < faster_than]
        for t in candidates:
            unique = {f.sha256: f for f in v.files}.values()
            need = sum(f.size for f in unique if f.sha256 not in t.blobs)
            victims = self.plan_room(t, need, keep, now)
            if victims is None:
                continue
            last = t is self.tiers[-1]
            if victims and not last and not pinned:
                theirs = max(decayed(b.freq, b.last_access, now) for b in victims)
                if score <= theirs:
                    continue  # frequency-aware admission: not hotter than what it would displace
            for b in victims:
                await self.evict(t, b)
            t.reserved += need
            return t, need
        if faster_than is not None:
            return None
        raise ResourceExhaustedError(
            f"{v.model_id}@{v.version} ({v.size} bytes) fits in no tier: "
            + ", ".join(f"{t.config.tier.name.lower()} free {t.free}" for t in self.tiers)
        )
