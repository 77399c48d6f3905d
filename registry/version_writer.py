"""Writing versions into the registry's stores, and freeing blobs nothing references.

:meth:`VersionWriter.write` stores every file of a version as a content-addressed blob
(reusing the bytes the store already holds), then commits the version in one SQLite
transaction, so a half-imported version is never listed. While it runs, ``import_refs``
rows keep the blobs it already stored safe from :meth:`VersionWriter.collect`; one lock
orders the two so that garbage collection never frees a blob an import just referenced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import Counter

from registry.adapters import ADAPTER_CONFIG, adapter_base
from registry.blobs import BlobStore, hash_file
from registry.import_progress import ProgressReporter
from registry.metadata import BlobRow, MetadataStore
from registry.verified_reads import read_verified
from runtime.errors import DataLossError, InvalidArgumentError

__all__ = ["FaultHook", "ImportEntry", "VersionWriter", "version_for_manifest"]

logger = logging.getLogger(__name__)

IMPORT_BYTES = Counter(
    "helios_registry_import_bytes",
    "Bytes imported, by whether they were stored or reused",
    ["kind"],
)
IMPORTS = Counter("helios_registry_imports", "Imports finished, by result", ["result"])

FaultHook = Callable[[str], None]
# (relative path, where its bytes are or will be, declared size, sha256 the source declares)
ImportEntry = tuple[str, Path, int, str | None]


def version_for_manifest(files: Sequence[tuple[str, str]]) -> str:
    """A directory import's version id: its manifest's content hash (40 hex digits)."""
    canonical = json.dumps(sorted(files), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:40]


class VersionWriter:
    """Blob storage and version commits over ``meta`` and ``store``. Blocking: callers run
    it in worker threads. ``on_committed`` runs after each commit, before the last
    progress report (so a caller that sees the version can look it up)."""

    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        chunk_size: int,
        on_committed: Callable[[], None],
    ) -> None:
        self.meta = meta
        self.store = store
        self.chunk_size = chunk_size
        self._on_committed = on_committed
        self._gc_lock = threading.Lock()

    def write(
        self,
        model_id: str,
        source: str,
        entries: Sequence[ImportEntry],
        fetch: Callable[[str], Path] | None,
        set_latest: bool,
        report: ProgressReporter,
        version: str | None = None,
        fault_hook: FaultHook | None = None,
        base: str = "",
    ) -> tuple[str, str]:
        """Store every file's blob, then commit the version (one transaction). ``base``:
        the base the import names, when it is a LoRA adapter (registry/adapters.py)."""
        import_id = uuid.uuid4().hex
        total = sum(size for _, _, size, _ in entries)
        report.update(force=True, bytes_total=total, files_total=len(entries))
        done = 0
        reused = 0
        files: list[tuple[str, str]] = []
        config_json: str | None = None
        adapter_json: str | None = None
        log_extra = {"model": model_id, "source": source, "import_id": import_id}
        logger.info("import started", extra={**log_extra, "files": len(entries), "bytes": total})
        try:
            for index, entry in enumerate(entries):
                rel = entry[0]
                if fault_hook is not None:
                    fault_hook(rel)
                report.update(force=True, file=rel, file_bytes_done=0, file_bytes_total=entry[2])
                blob, new, size = self._store_entry(import_id, entry, fetch, report, done)
                if rel == "config.json":
                    config_json = self._read_config(blob)
                elif rel == ADAPTER_CONFIG:
                    adapter_json = self._read_config(blob, ADAPTER_CONFIG)
                done += size
                if not new:
                    reused += size
                IMPORT_BYTES.labels("reused" if not new else "stored").inc(size)
                files.append((rel, blob.sha256))
                report.update(
                    force=True,
                    file=rel,
                    file_bytes_done=size,
                    file_bytes_total=size,
                    bytes_done=done,
                    files_done=index + 1,
                    reused_bytes=reused,
                )
            version_id = version or version_for_manifest(files)
            base = adapter_base(adapter_json, base, self.meta.model_bases())
            self.meta.commit_version(
                model_id, version_id, source, files, config_json, set_latest, import_id, base
            )
        except BaseException:
            IMPORTS.labels("failed").inc()
            with contextlib.suppress(Exception):
                self.meta.drop_import_refs(import_id)
            raise
        IMPORTS.labels("ok").inc()
        self._on_committed()
        logger.info(
            "import finished",
            extra={**log_extra, "version": version_id, "bytes": done, "reused_bytes": reused},
        )
        report.update(force=True, bytes_done=done, version=(model_id, version_id))
        return model_id, version_id

    def _store_entry(
        self,
        import_id: str,
        entry: ImportEntry,
        fetch: Callable[[str], Path] | None,
        report: ProgressReporter,
        done_before: int,
    ) -> tuple[BlobRow, bool, int]:
        """One file's blob, referenced by the import: (blob, newly stored, size)."""
        rel, path, size, expected_sha = entry
        known = self.meta.get_blob(expected_sha) if expected_sha else None
        if known is not None and known.size == size and self.store.exists(known.sha256):
            # The Hub told us the hash, and we hold those bytes: skip the download.
            with self._gc_lock:
                self.meta.add_import_ref(import_id, known)
            return known, False, size
        if fetch is not None:
            path = fetch(rel)
        hashed = 0

        def progress(n: int) -> None:
            nonlocal hashed
            hashed += n
            report.update(file_bytes_done=hashed, bytes_done=done_before + hashed)

        digest = hash_file(path, self.chunk_size, progress)
        if expected_sha is not None and digest.sha256 != expected_sha:
            raise DataLossError(
                f"{rel}: bytes hash to {digest.sha256}, the source says {expected_sha}"
            )
        blob = BlobRow(digest.sha256, digest.size, digest.chunk_size, digest.chunk_sha256)
        with self._gc_lock:
            new = self.store.put_file(digest.sha256, path)
            existing = self.meta.get_blob(digest.sha256)
            if existing is not None:
                blob = existing
            self.meta.add_import_ref(import_id, blob)
        return blob, new, digest.size

    def _read_config(self, blob: BlobRow, name: str = "config.json") -> str:
        data = b"".join(read_verified(self.store, blob, 0, blob.size))
        try:
            text = data.decode()
            if not isinstance(json.loads(text), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise InvalidArgumentError(f"{name}: not a JSON object ({exc})") from exc
        return text

    def collect(self, shas: set[str] | None = None) -> int:
        """Free unreferenced blobs (among ``shas``, or all). Blocking."""
        freed = 0
        with self._gc_lock:
            candidates = self.meta.unreferenced_blobs()
            for blob in candidates:
                if shas is not None and blob.sha256 not in shas:
                    continue
                if self.meta.forget_blob_if_unreferenced(blob.sha256):
                    self.store.delete(blob.sha256)
                    freed += blob.size
        return freed
