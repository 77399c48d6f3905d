"""The multi-tier, content-addressed model cache (domain logic; no protobuf).

Per tier directory::

    blobs/<sha256>                         every file, once, by content hash
    versions/<model_id quoted>/<version>/  a version: hard links to blobs/ (so two
                                           versions sharing a file hold it once)
    tmp/                                   partial downloads and their journals

:class:`ModelCache` makes versions local (``ensure``: resolve, place, fill from faster
tiers, peers or the remote, link), and serves pin, evict, stat and blob reads. Which tier
a version goes to and what is evicted for it is :mod:`storaged.tier_placement`; the
records it keeps are :mod:`storaged.cache_records`, persisted by :mod:`storaged.cache_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from runtime.model_ids import canonical_model_id, is_version_prefix
from storaged.cache_metrics import CAPACITY, DOWNLOADED, HITS, MISSES, RATE, USED
from storaged.cache_records import BlobInfo, CachedVersion, TierState, decayed
from storaged.cache_state import copy_file, load_state, save_state, scan_tier
from storaged.download import ChunkedDownloader, RateMeter, fsync_dir
from storaged.manifest import (
    FileEntry,
    Manifest,
    ManifestSource,
    safe_version,
)
from storaged.tier_placement import TierPlacement
from storaged.tiers import Tier, TierConfig

__all__ = ["ModelCache", "Progress"]

logger = logging.getLogger(__name__)

PIECE = 1 << 20


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    tier: Tier
    bytes_per_second: float
    local_dir: str = ""  # set on the last one


class ModelCache:
    def __init__(
        self,
        tiers: Sequence[TierConfig],
        manifests: ManifestSource,
        downloader: ChunkedDownloader,
        *,
        state_dir: Path | None = None,
    ) -> None:
        if not tiers:
            raise ValueError("at least one tier is needed")
        ordered = sorted(tiers, key=lambda t: t.tier)
        if len({t.tier for t in ordered}) != len(ordered):
            raise ValueError("each tier may be configured once")
        self.tiers = [TierState(t) for t in ordered]
        self._by_tier = {t.config.tier: t for t in self.tiers}
        self.manifests = manifests
        self.downloader = downloader
        self.state_dir = state_dir or ordered[-1].path / "state"
        self.versions: dict[tuple[str, str], CachedVersion] = {}
        self.pins: set[str] = set()
        self.misses = 0
        self.last_rate = 0.0
        self._placement = asyncio.Lock()
        self._file_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._version_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._busy: dict[str, int] = defaultdict(int)  # sha -> ensures using it now
        self._background: set[asyncio.Task[None]] = set()
        self._placer = TierPlacement(self.tiers, self.versions, self._protected)
        self._open()

    # ------------------------------------------------------------------ state
    def _open(self) -> None:
        now = time.time()
        for t in self.tiers:
            scan_tier(t, now)
            CAPACITY.labels(t.config.tier.name.lower()).set(t.config.capacity_bytes)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pins, versions = load_state(self.state_dir / "state.json")
        self.pins = pins
        for cv in versions:
            # Trust the disk, not the record: the directory and every blob must exist.
            if cv.tier is not None and not self._complete_in(cv, cv.tier):
                cv.tier = None
            self.versions[(cv.model_id, cv.version)] = cv
        self._update_gauges()

    def _save(self) -> None:
        save_state(self.state_dir / "state.json", self.pins, self.versions.values())

    def _update_gauges(self) -> None:
        for t in self.tiers:
            USED.labels(t.config.tier.name.lower()).set(t.used)

    def version_dir(self, tier: Tier, model_id: str, version: str) -> Path:
        return self._by_tier[tier].version_dir(model_id, version)

    def _complete_in(self, v: CachedVersion, tier: Tier) -> bool:
        t = self._by_tier.get(tier)
        return (
            t is not None
            and self.version_dir(tier, v.model_id, v.version).is_dir()
            and all(f.sha256 in t.blobs for f in v.files)
        )

    def _protected(self) -> set[str]:
        """Blobs eviction must not touch: in use by an ensure, or a pinned model's."""
        shas = set(self._busy)
        for v in self.versions.values():
            if v.model_id in self.pins:
                shas.update(f.sha256 for f in v.files)
        return shas

    # ---------------------------------------------------------------- ensure
    async def ensure(self, model_id: str, version: str = "") -> AsyncIterator[Progress]:
        """Make every file of the version local; yields progress, the last with local_dir."""
        if not model_id:
            raise InvalidArgumentError("model_id: must not be empty")
        model_id, version = await self._resolve(model_id, version)
        manifest = await self.manifests.manifest(model_id, version)
        if (manifest.model_id, manifest.version) != (model_id, version):
            raise FailedPreconditionError(
                f"asked for the manifest of {model_id}@{version}, the registry answered "
                f"{manifest.model_id}@{manifest.version}"
            )
        problems = [p for f in manifest.files for p in f.problems()]
        if problems:
            raise FailedPreconditionError(f"manifest of {model_id}@{version}: {problems[:3]}")
        async with self._version_locks[(model_id, version)]:
            async for p in self._ensure_locked(manifest):
                yield p

    async def _ensure_locked(self, manifest: Manifest) -> AsyncIterator[Progress]:
        now = time.time()
        key = (manifest.model_id, manifest.version)
        v = self.versions.get(key)
        if v is None:
            v = CachedVersion(manifest.model_id, manifest.version, manifest.files, None, now)
            self.versions[key] = v
        v.freq = decayed(v.freq, v.last_access, now) + 1
        v.last_access = now
        total = manifest.total_bytes
        for f in v.files:
            self._busy[f.sha256] += 1
        try:
            placed = None
            if v.tier is not None and self._complete_in(v, v.tier):
                # Already local: promote to a faster tier if it is now hot enough.
                async with self._placement:
                    placed = await self._placer.place(
                        v, now, pinned=v.model_id in self.pins, faster_than=v.tier
                    )
                if placed is None:
                    t = self._by_tier[v.tier]
                    for f in v.files:
                        t.hits += 1
                        HITS.labels(v.tier.name.lower()).inc()
                        self._touch(t, f.sha256, now)
                    self._save()
                    local_dir = str(self.version_dir(v.tier, v.model_id, v.version))
                    yield Progress(total, total, len(v.files), len(v.files), v.tier, 0.0, local_dir)
                    return
            if placed is None:
                async with self._placement:
                    placed = await self._placer.place(v, now, pinned=v.model_id in self.pins)
            assert placed is not None
            t, reserved = placed
            try:
                async for p in self._fill(v, t):
                    yield p
            finally:
                t.reserved -= reserved
            local = await asyncio.to_thread(self._link_version, v, t)
            v.tier = t.config.tier
            self._save()
            self._update_gauges()
            yield Progress(
                total, total, len(v.files), len(v.files), t.config.tier, self.last_rate, str(local)
            )
        finally:
            for f in v.files:
                self._busy[f.sha256] -= 1
                if not self._busy[f.sha256]:
                    del self._busy[f.sha256]

    def _touch(self, t: TierState, sha: str, now: float) -> None:
        b = t.blobs.get(sha)
        if b is not None:
            b.freq = decayed(b.freq, b.last_access, now) + 1
            b.last_access = now

    async def _fill(self, v: CachedVersion, t: TierState) -> AsyncIterator[Progress]:
        total = v.size
        events: asyncio.Queue[int] = asyncio.Queue()
        meter = RateMeter()
        unique = list({f.sha256: f for f in v.files}.values())

        async def one(f: FileEntry) -> None:
            async with self._file_locks[f.sha256]:
                now = time.time()
                if f.sha256 in t.blobs:
                    t.hits += 1
                    HITS.labels(t.config.tier.name.lower()).inc()
                else:
                    local = next((o for o in self.tiers if f.sha256 in o.blobs), None)
                    if local is not None:  # promote from a slower (or faster) tier
                        local.hits += 1
                        HITS.labels(local.config.tier.name.lower()).inc()
                        await asyncio.to_thread(
                            copy_file, local.blob_path(f.sha256), t.blob_path(f.sha256)
                        )
                    else:
                        self.misses += 1
                        MISSES.inc()

                        def on_bytes(n: int) -> None:
                            meter.add(n)
                            events.put_nowait(0)

                        fetched = await self.downloader.download(
                            f, t.config.path / "tmp", t.blob_path(f.sha256), on_bytes
                        )
                        DOWNLOADED.inc(fetched)
                    t.blobs[f.sha256] = BlobInfo(f.sha256, f.size, now)
                self._touch(t, f.sha256, now)
            events.put_nowait(1)

        tasks = [asyncio.create_task(one(f)) for f in unique]
        done_files = 0
        last = 0.0
        try:
            pending = set(tasks)
            while pending:
                getter = asyncio.ensure_future(events.get())
                finished, _ = await asyncio.wait(
                    {getter, *pending}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in finished:
                    getter.cancel()
                for task in finished & pending:
                    pending.discard(task)
                    task.result()  # raise the first failure
                while not events.empty():
                    done_files += events.get_nowait()
                if getter in finished:
                    done_files += getter.result()
                now = time.monotonic()
                if now - last >= 0.1 or not pending:
                    last = now
                    present = sum(f.size for f in unique if f.sha256 in t.blobs)
                    done_bytes = min(total, max(present, meter.bytes))
                    yield Progress(
                        done_bytes,
                        total,
                        min(done_files, len(v.files)),
                        len(v.files),
                        t.config.tier,
                        meter.rate,
                    )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if meter.bytes:
            self.last_rate = meter.rate
            RATE.set(meter.rate)

    def _link_version(self, v: CachedVersion, t: TierState) -> Path:
        final = self.version_dir(t.config.tier, v.model_id, v.version)
        if final.is_dir() and all((final / f.path).exists() for f in v.files):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        for f in v.files:
            dest = tmp / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(t.blob_path(f.sha256), dest)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return final

    async def _resolve(self, model_id: str, version: str) -> tuple[str, str]:
        """(canonical model id, version id) from the registry; ``version`` may be empty
        (latest), an alias or an abbreviated id."""
        model_id, version = await self.manifests.resolve(model_id, version)
        if not safe_version(version):
            raise FailedPreconditionError(
                f"the registry resolved {model_id} to version {version!r}, not a usable id"
            )
        return model_id, version

    async def resolve_local(self, model_id: str, version: str = "") -> tuple[str, str]:
        """The canonical model id and the cached version ``version`` names, asking the
        registry only for what the cache cannot answer (an alias such as ``latest``).
        An empty ``version`` stays empty (the most recently used cached version)."""
        model = canonical_model_id(model_id)
        if not version:
            return model, ""
        mine = {v.version for v in self.versions.values() if v.model_id == model}
        if version in mine:
            return model, version
        if is_version_prefix(version):
            matches = [v for v in mine if v.startswith(version)]
            if len(matches) == 1:
                return model, matches[0]
        return await self._resolve(model, version)

    # ---------------------------------------------------------------- the rest
    def is_cached(self, model_id: str, version: str) -> bool:
        v = self.versions.get((model_id, version))
        return v is not None and v.tier is not None and self._complete_in(v, v.tier)

    async def prefetch(self, model_id: str, version: str = "") -> bool:
        """Start warming the version in the background; False if it is already local."""
        if not model_id:
            raise InvalidArgumentError("model_id: must not be empty")
        model_id, version = await self._resolve(model_id, version)
        if self.is_cached(model_id, version):
            return False

        async def run() -> None:
            try:
                async for _ in self.ensure(model_id, version):
                    pass
            except Exception:
                logger.warning("prefetch failed", exc_info=True, extra={"model": model_id})

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def evict(self, model_id: str) -> int:
        """Drop every version of the model from every tier; returns the bytes freed.
        Files other cached versions still use stay."""
        model_id = canonical_model_id(model_id)
        if model_id in self.pins:
            raise FailedPreconditionError(f"{model_id} is pinned; unpin it first")
        mine = [v for v in self.versions.values() if v.model_id == model_id]
        if not mine:
            raise NotFoundError(f"{model_id} is not cached")
        async with self._placement:
            for v in mine:
                if any(f.sha256 in self._busy for f in v.files):
                    raise FailedPreconditionError(f"{model_id} is being downloaded")
            freed = 0
            for v in mine:
                for t in self.tiers:
                    shutil.rmtree(
                        self.version_dir(t.config.tier, v.model_id, v.version), ignore_errors=True
                    )
                del self.versions[(v.model_id, v.version)]
            still_used = {f.sha256 for v in self.versions.values() for f in v.files}
            for v in mine:
                for f in v.files:
                    if f.sha256 in still_used:
                        continue
                    for t in self.tiers:
                        b = t.blobs.get(f.sha256)
                        if b is not None:
                            freed += await self._placer.evict(t, b, demote=False)
            self._save()
            self._update_gauges()
        return freed

    def pin(self, model_id: str) -> None:
        """Never evict the model (any of its versions). Ids are canonicalised as the
        registry does (``Org/Name`` and ``org/name`` are one model)."""
        model_id = canonical_model_id(model_id)
        self.pins.add(model_id)
        self._save()

    def unpin(self, model_id: str) -> None:
        model_id = canonical_model_id(model_id)
        if model_id not in self.pins:
            raise NotFoundError(f"{model_id} is not pinned")
        self.pins.discard(model_id)
        self._save()

    def stat(self, model_id: str, version: str = "") -> tuple[CachedVersion, dict[str, Tier]]:
        """The cached version (the most recently used when version is empty) and the
        fastest tier holding each of its files."""
        model_id = canonical_model_id(model_id)
        mine = [
            v
            for v in self.versions.values()
            if v.model_id == model_id and (not version or v.version == version)
        ]
        if not mine:
            raise NotFoundError(f"{model_id}{'@' + version if version else ''} is not cached")
        v = max(mine, key=lambda x: x.last_access)
        where = {}
        for f in v.files:
            t = next((t for t in self.tiers if f.sha256 in t.blobs), None)
            if t is not None:
                where[f.sha256] = t.config.tier
        return v, where

    def find_blob(self, sha: str) -> Path:
        for t in self.tiers:
            if sha in t.blobs:
                return t.blob_path(sha)
        raise NotFoundError(f"blob {sha} is not cached here")

    async def read_blob(
        self, sha: str, offset: int, length: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        path = self.find_blob(sha)
        size = path.stat().st_size
        if offset < 0 or length < 0 or offset > size:
            raise InvalidArgumentError(f"range [{offset}, +{length}) outside the {size}-byte file")
        end = size if length == 0 else min(size, offset + length)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            pos = offset
            while pos < end:
                data = await asyncio.to_thread(os.pread, fd, min(PIECE, end - pos), pos)
                if not data:
                    break
                yield pos, data
                pos += len(data)
        finally:
            os.close(fd)

    @property
    def hit_rate(self) -> float:
        hits = sum(t.hits for t in self.tiers)
        return hits / (hits + self.misses) if hits + self.misses else 0.0

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._background, return_exceptions=True)
