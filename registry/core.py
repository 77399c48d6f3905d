"""The registry's domain: versions, aliases, imports, blobs, usage. No protobuf here.

Blocking work (hashing, blob I/O, SQLite writes, Hub HTTP) runs in threads; the event
loop only moves progress messages and answers lookups from in-memory caches.

Atomicity: a version becomes visible in one SQLite transaction after all of its blobs are
stored and verified, so a half-imported version is never listed. Blobs stored by an
import that failed stay in the blob store (unreferenced), which makes a re-import resume:
it finds them and stores nothing twice. Storing and committing is
:mod:`registry.version_writer`; verified reads are :mod:`registry.verified_reads`; import
progress is :mod:`registry.import_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry import verified_reads
from registry.blobs import (
    DEFAULT_CHUNK_SIZE,
    BlobStore,
    FileDigest,
    hash_stream,
)
from registry.hub import HubClient
from registry.hub_import import stage_hub_snapshot
from registry.import_progress import ImportProgress, ProgressReporter, stream_progress
from registry.local_files import list_directory
from registry.metadata import MetadataStore, VersionRow
from registry.upload import (
    DEFAULT_MAX_UPLOAD_BYTES,
    UploadChunk,
    UploadHeader,
    UploadResult,
    UploadStaging,
    check_header,
)
from registry.usage import EvictionCandidate, Prediction, UsageTracker
from registry.version_writer import FaultHook, VersionWriter
from runtime.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from runtime.model_ids import (
    canonical_model_id,
    check_alias,
    check_version_id,
    is_version_prefix,
    parse_reference,
)
from runtime.paths import PathRoots, bounded

__all__ = ["Manifest", "ManifestEntry", "Registry"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
UPLOAD_SOURCE = "upload"  # a version's source when a client streamed its files


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str
    chunk_size: int
    chunk_sha256: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    model_id: str
    version: str
    source: str
    total_bytes: int
    files: tuple[ManifestEntry, ...]


class Registry:
    """Models, versions, aliases, blobs and usage over a metadata store and a blob store."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        *,
        staging_dir: Path,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        hub: HubClient | None = None,
        clock: Callable[[], float] = time.time,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if max_upload_bytes < 0:
            raise ValueError("max_upload_bytes must be >= 0")
        self.max_upload_bytes = max_upload_bytes
        self._upload_reserved = 0  # bytes declared by the uploads running now (event loop)
        self.meta = meta
        self.blobs = blobs
        self.staging_dir = staging_dir
        self.chunk_size = chunk_size
        self.hub = hub
        self.usage = UsageTracker(clock)
        self.fault_hook: FaultHook | None = None  # tests: raise to simulate a crash
        self._writer = VersionWriter(meta, blobs, chunk_size, on_committed=self._reload)
        self._versions: dict[str, dict[str, VersionRow]] = {}
        self._aliases: dict[tuple[str, str], str] = {}
        self._configs: dict[tuple[str, str], str] = {}
        self._policies: dict[str, tuple[int, bool]] = {}
        self._reload()
        for model_id, (requests, tokens, last, state) in meta.usage().items():
            from registry.usage import ModelUsage

            self.usage.models[model_id] = ModelUsage.from_row(requests, tokens, last, state)

    @classmethod
    def open(
        cls,
        data_dir: Path,
        blobs: BlobStore | None = None,
        **kwargs: object,
    ) -> Registry:
        """The registry kept under ``data_dir`` (``registry.db``, ``blobs/``, ``staging/``)."""
        from registry.blobs import LocalBlobStore

        data_dir.mkdir(parents=True, exist_ok=True)
        meta = MetadataStore(data_dir / "registry.db")
        store = blobs if blobs is not None else LocalBlobStore(data_dir / "blobs")
        return cls(meta, store, staging_dir=data_dir / "staging", **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.meta.close()

    def _reload(self) -> None:
        versions: dict[str, dict[str, VersionRow]] = {}
        configs: dict[tuple[str, str], str] = {}
        for row in self.meta.versions():
            versions.setdefault(row.model_id, {})[row.version] = row
            if row.config_json is not None:
                configs[(row.model_id, row.version)] = row.config_json
        self._versions = versions
        self._configs = configs
        self._aliases = self.meta.aliases()
        self._policies = self.meta.policies()

    # lookups -----------------------------------------------------------------------

    def _lookup(self, model_id: str, revision: str) -> VersionRow | None:
        versions = self._versions.get(model_id, {})
        if revision in versions:
            return versions[revision]
        aliased = self._aliases.get((model_id, revision))
        if aliased is not None and aliased in versions:
            return versions[aliased]
        if is_version_prefix(revision):
            matches = [v for v in versions if v.startswith(revision)]
            if len(matches) > 1:
                raise InvalidArgumentError(
                    f"{model_id}@{revision}: ambiguous version prefix ({len(matches)} versions)"
                )
            if matches:
                return versions[matches[0]]
        return None

    async def resolve(self, reference: str) -> VersionRow:
        """``org/name[@alias|@version]`` -> the version (NOT_FOUND when unknown)."""
        ref = parse_reference(reference)
        return await self._resolve(ref.model_id, ref.revision)

    async def _resolve(self, model_id: str, revision: str) -> VersionRow:
        found = self._lookup(model_id, revision)
        if found is None:
            # Another process sharing the data dir may have imported it since.
            await asyncio.to_thread(self._reload)
            found = self._lookup(model_id, revision)
        if found is None:
            raise NotFoundError(f"model {model_id}@{revision}: not in the registry")
        return found

    async def resolve_version(self, model_id: str, revision: str) -> VersionRow:
        """A (model id, alias-or-version; empty means latest) pair -> the version."""
        model = canonical_model_id(model_id)
        rev = revision.lower() if revision else "latest"
        return await self.resolve(f"{model}@{rev}")

    async def manifest(self, model_id: str, revision: str) -> Manifest:
        row = await self.resolve_version(model_id, revision)
        files = await asyncio.to_thread(self.meta.files, row.model_id, row.version)
        return Manifest(
            row.model_id,
            row.version,
            row.source,
            row.total_bytes,
            tuple(
                ManifestEntry(
                    f.path, f.blob.size, f.blob.sha256, f.blob.chunk_size, f.blob.chunk_sha256
                )
                for f in files
            ),
        )

    def config_cached(self, model_id: str, version: str) -> str | None:
        """config.json of a known version from memory (no I/O)."""
        return self._configs.get((model_id, version))

    async def config(self, model_id: str, revision: str) -> str:
        row = await self.resolve_version(model_id, revision)
        text = self._configs.get((row.model_id, row.version))
        if text is None:
            raise NotFoundError(f"model {row.model_id}@{row.version}: has no config.json")
        return text

    def list_models(self, page_size: int, page_token: str) -> tuple[list[VersionRow], str]:
        """The latest version of each model, by model id; paged."""
        if page_size < 0:
            raise InvalidArgumentError("page_size: must be >= 0")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        rows = []
        for model_id in sorted(self._versions):
            if page_token and model_id <= page_token:
                continue
            latest = self._lookup(model_id, "latest")
            if latest is not None:
                rows.append(latest)
        page = rows[:size]
        return page, (page[-1].model_id if len(rows) > size else "")

    # imports -----------------------------------------------------------------------

    async def import_source(
        self,
        source: str,
        model_id: str = "",
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        set_latest: bool = True,
        *,
        roots: PathRoots | None = None,
        base: str = "",
    ) -> AsyncIterator[ImportProgress]:
        """Import ``hf://org/name[@revision]`` or a local directory path.

        ``roots``: where a directory may be (a network caller's import is confined to the
        registry's ``--import-root`` directories, checked before the path is touched);
        None only for a local caller (``helios pull`` without ``--registry``). ``base``:
        a LoRA adapter's base model (registry/adapters.py: else its adapter_config's).
        """
        if not source:
            raise InvalidArgumentError("source: must not be empty")
        if "\0" in source:
            raise InvalidArgumentError("source: must not contain NUL")
        if source.startswith("hf://"):
            repo, _, revision = source[len("hf://") :].partition("@")
            gen = self.import_hub(repo, revision or "main", model_id, allow, deny, set_latest, base)
        else:
            directory = Path(source)
            if roots is not None:
                directory = await asyncio.to_thread(
                    roots.confine, source, "source", "--import-root"
                )
            if not model_id:
                raise InvalidArgumentError("model_id: required when importing a directory")
            gen = self.import_directory(directory, model_id, allow, deny, set_latest, base)
        async for progress in gen:
            yield progress

    async def import_directory(
        self,
        directory: Path,
        model_id: str,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        set_latest: bool = True,
        base: str = "",
    ) -> AsyncIterator[ImportProgress]:
        model = canonical_model_id(model_id)
        if not await asyncio.to_thread(directory.is_dir):
            raise InvalidArgumentError(f"source {bounded(str(directory))!r}: not a directory")
        directory = await asyncio.to_thread(directory.resolve)

        def work(report: ProgressReporter) -> tuple[str, str]:
            files = list_directory(directory, allow, deny)
            return self._writer.write(
                model,
                str(directory),
                [(rel, path, path.stat().st_size, None) for rel, path in files],
                None,
                set_latest,
                report,
                fault_hook=self.fault_hook,
                base=base,
            )

        async for progress in stream_progress(work):
            yield progress

    async def import_hub(
        self,
        repo: str,
        revision: str = "main",
        model_id: str = "",
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        set_latest: bool = True,
        base: str = "",
    ) -> AsyncIterator[ImportProgress]:
        hub = self.hub
        if hub is None:
            raise FailedPreconditionError("this registry has no Hub configured")
        repo_id = canonical_model_id(repo)
        # The Hub's repo id keeps its case; canonicalisation only validates it.
        repo_name = repo[len("models/") :] if repo.startswith("models/") else repo
        model = canonical_model_id(model_id) if model_id else repo_id

        def work(report: ProgressReporter) -> tuple[str, str]:
            staged = stage_hub_snapshot(
                hub, repo_name, revision, repo_id, allow, deny, self.staging_dir
            )
            result = self._writer.write(
                model,
                staged.source,
                staged.entries,
                staged.fetch,
                set_latest,
                report,
                version=staged.commit,
                fault_hook=self.fault_hook,
                base=base,
            )
            shutil.rmtree(staged.directory, ignore_errors=True)
            return result

        async for progress in stream_progress(work):
            yield progress

    async def upload(
        self, header: UploadHeader, chunks: AsyncIterator[UploadChunk]
    ) -> UploadResult:
        """Import the files a client streams (UploadModel): the declaration is checked
        before any byte is stored, every byte against it, and the version is committed
        like an import's (content-addressed blobs, one transaction) once all are in.

        The uploads running at once together stay within ``max_upload_bytes``."""
        model, total = check_header(header, self.max_upload_bytes)
        if self._upload_reserved + total > self.max_upload_bytes:
            raise ResourceExhaustedError(
                f"upload of {total} bytes: other uploads hold {self._upload_reserved} of this"
                f" registry's {self.max_upload_bytes} bytes; retry later"
            )
        self._upload_reserved += total
        staging: UploadStaging | None = None
        handed_over = False
        try:
            staging = await asyncio.to_thread(
                UploadStaging, self.staging_dir / "upload" / uuid.uuid4().hex, header.files
            )
            async for chunk in chunks:
                await asyncio.to_thread(staging.write, chunk)
            entries = await asyncio.to_thread(staging.finish)
            received = staging

            def work(report: ProgressReporter) -> tuple[str, str]:
                try:
                    return self._writer.write(
                        model,
                        UPLOAD_SOURCE,
                        entries,
                        None,
                        header.set_latest,
                        report,
                        fault_hook=self.fault_hook,
                        base=header.base,
                    )
                except BaseException:
                    # Unlike a directory import, a failed upload cannot be resumed: free
                    # what it stored (its bytes are nowhere else), so failures fill no disk.
                    with contextlib.suppress(Exception):
                        self._writer.collect({sha for _, _, _, sha in entries})
                    raise
                finally:
                    received.discard()

            handed_over = True  # from here the import's thread removes the staging files
            last: ImportProgress | None = None
            async for progress in stream_progress(work):
                last = progress
        finally:
            self._upload_reserved -= total
            if staging is not None and not handed_over:
                await asyncio.to_thread(staging.discard)
        assert last is not None and last.version is not None
        return UploadResult(last.version[0], last.version[1], total, last.reused_bytes)

    # aliases, deletion, GC ---------------------------------------------------------

    async def set_alias(self, alias: str, model_id: str, version: str) -> str:
        """Point ``alias`` at an existing version; returns the previous target ("")."""
        name = check_alias(alias)
        if is_version_prefix(name) and len(name) == 40:
            raise InvalidArgumentError(f"alias {alias!r}: looks like a version id")
        model = canonical_model_id(model_id)
        target = await self.resolve_version(model, check_version_id(version.lower()))
        previous = await asyncio.to_thread(self.meta.set_alias, model, name, target.version)
        if previous is None:
            raise NotFoundError(f"model {model}@{version}: not in the registry")
        self._aliases[(model, name)] = target.version
        return previous

    async def delete_version(self, model_id: str, version: str) -> int:
        """Delete a version; frees (and returns the size of) blobs nothing else uses."""
        model = canonical_model_id(model_id)
        check_version_id(version.lower())

        def work() -> int:
            shas = self.meta.delete_version(model, version.lower())
            if shas is None:
                raise NotFoundError(f"model {model}@{version}: not in the registry")
            return self._writer.collect(set(shas))

        freed = await asyncio.to_thread(work)
        await asyncio.to_thread(self._reload)
        return freed

    async def collect_garbage(self) -> int:
        """Free every unreferenced blob (e.g. those of abandoned imports)."""
        return await asyncio.to_thread(self._writer.collect, None)

    # blobs -------------------------------------------------------------------------

    async def read_blob(
        self, sha256: str, offset: int = 0, length: int = 0
    ) -> AsyncIterator[tuple[int, int, bytes]]:
        """(offset, blob size, bytes) pieces of ``[offset, offset+length)`` (0: to the
        end), each chunk verified against the manifest's hashes before it is sent."""
        async for piece in verified_reads.read_blob(self.meta, self.blobs, sha256, offset, length):
            yield piece

    # usage -------------------------------------------------------------------------

    async def record_usage(self, model_id: str, requests: int, tokens: int) -> None:
        model = canonical_model_id(model_id)
        if requests < 0 or tokens < 0:
            raise InvalidArgumentError("requests and tokens: must be >= 0")
        u = self.usage.record(model, requests, tokens)
        await asyncio.to_thread(
            self.meta.save_usage, model, u.requests, u.tokens, u.last_used, u.to_state()
        )

    def prefetch_hints(self, limit: int) -> list[tuple[Prediction, VersionRow]]:
        if limit < 0:
            raise InvalidArgumentError("limit: must be >= 0")
        out = []
        for prediction in self.usage.predictions(len(self.usage.models)):
            latest = self._lookup(prediction.model_id, "latest")
            if latest is not None:  # only models the registry can serve
                out.append((prediction, latest))
        return out[: limit or 10]

    async def set_policy(self, model_id: str, priority: int, pinned: bool) -> None:
        model = canonical_model_id(model_id)
        if not 0 <= priority <= 3:
            raise InvalidArgumentError("priority: must be in 0..3")
        await asyncio.to_thread(self.meta.set_policy, model, priority, pinned)
        self._policies[model] = (priority, pinned)

    def eviction_candidates(
        self, bytes_needed: int, loaded: Sequence[str] = ()
    ) -> list[EvictionCandidate]:
        if bytes_needed < 0:
            raise InvalidArgumentError("bytes_needed: must be >= 0")
        wanted = [canonical_model_id(m) for m in loaded] or sorted(self._versions)
        sized = []
        for model_id in wanted:
            latest = self._lookup(model_id, "latest")
            sized.append((model_id, latest.total_bytes if latest else 0))
        return self.usage.eviction_order(sized, self._policies, bytes_needed)


def digest_bytes(data: bytes, chunk_size: int) -> FileDigest:
    """The digest of in-memory bytes (tests, small files)."""
    return hash_stream(iter([data]), chunk_size)
