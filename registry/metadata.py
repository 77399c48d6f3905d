"""The registry's metadata in SQLite (WAL mode), with numbered schema migrations.

Every method blocks (SQLite); the registry calls them from worker threads. One connection
per store, serialised by a lock; WAL lets several processes share the file, and every
write that must be atomic runs in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIGRATIONS", "BlobRow", "FileRow", "MetadataStore", "VersionRow"]

# Append-only: a migration, once released, never changes; add a new one instead.
MIGRATIONS: tuple[str, ...] = (
    # 1: models, versions, files, blobs, aliases.
    """
    CREATE TABLE models (
        model_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        chunk_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE versions (
        model_id TEXT NOT NULL REFERENCES models(model_id),
        version TEXT NOT NULL,
        source TEXT NOT NULL,
        total_bytes INTEGER NOT NULL,
        config_json TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (model_id, version)
    );
    CREATE TABLE version_files (
        model_id TEXT NOT NULL,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES blobs(sha256),
        PRIMARY KEY (model_id, version, path),
        FOREIGN KEY (model_id, version) REFERENCES versions(model_id, version)
    );
    CREATE INDEX version_files_sha ON version_files(sha256);
    CREATE TABLE aliases (
        model_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        version TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (model_id, alias)
    );
    """,
    # 2: imports in progress hold references to the blobs they stored, so that garbage
    # collection never frees a blob an unfinished import is about to use.
    """
    CREATE TABLE import_refs (
        import_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (import_id, sha256)
    );
    """,
    # 3: usage statistics and eviction policy.
    """
    CREATE TABLE usage (
        model_id TEXT PRIMARY KEY,
        requests INTEGER NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        last_used REAL NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE policies (
        model_id TEXT PRIMARY KEY,
        priority INTEGER NOT NULL DEFAULT 1,
        pinned INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 4: a LoRA adapter's version names its base model (registry/adapters.py).
    """
    ALTER TABLE versions ADD COLUMN base TEXT NOT NULL DEFAULT '';
    """,
)


@dataclass(frozen=True)
class BlobRow:
    sha256: str
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]


@dataclass(frozen=True)
class FileRow:
    path: str
    blob: BlobRow


@dataclass(frozen=True)
class VersionRow:
    model_id: str
    version: str
    source: str
    total_bytes: int
    config_json: str | None
    created_at: float
    base: str = ""  # a LoRA adapter's base model ("" for a model)


class MetadataStore:
    """SQLite metadata. ``path`` is created (with its schema) when missing."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

    def migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
            current = int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    # blobs -------------------------------------------------------------------------

    def get_blob(self, sha256: str) -> BlobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return _blob(row) if row else None

    def add_import_ref(self, import_id: str, blob: BlobRow) -> None:
        """Record the blob (idempotent) and that ``import_id`` holds it, atomically."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?)",
                (blob.sha256, blob.size, blob.chunk_size, json.dumps(blob.chunk_sha256), now),
            )
            db.execute(
                "INSERT OR IGNORE INTO import_refs VALUES (?, ?, ?)", (import_id, blob.sha256, now)
            )

    def drop_import_refs(self, import_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM import_refs WHERE import_id = ?", (import_id,))

    def unreferenced_blobs(self) -> list[BlobRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM version_files)"
                " AND sha256 NOT IN (SELECT sha256 FROM import_refs)"
            ).fetchall()
        return [_blob(r) for r in rows]

    def forget_blob_if_unreferenced(self, sha256: str) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM blobs WHERE sha256 = ?"
                " AND sha256 NOT IN (SELECT sha256 FROM version_files)"
                " AND sha256 NOT IN (SELECT sha256 FROM import_refs)",
                (sha256,),
            )
            return cur.rowcount > 0

    def blob_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])

    # versions ----------------------------------------------------------------------

    def commit_version(
        self,
        model_id: str,
        version: str,
        source: str,
        files: Sequence[tuple[str, str]],
        config_json: str | None,
        set_latest: bool,
        import_id: str,
        base: str = "",
    ) -> bool:
        """Make a version visible, atomically; False when it existed already (the
        existing one is kept: versions are immutable). ``base``: an adapter's."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO models VALUES (?, ?)", (model_id, now))
            exists = db.execute(
                "SELECT 1 FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
            ).fetchone()
            if not exists:
                total = 0
                for _, sha in files:
                    total += int(
                        db.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha,)).fetchone()[0]
                    )
                db.execute(
                    "INSERT INTO versions (model_id, version, source, total_bytes, config_json,"
                    " created_at, base) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (model_id, version, source, total, config_json, now, base),
                )
                db.executemany(
                    "INSERT INTO version_files VALUES (?, ?, ?, ?)",
                    [(model_id, version, path, sha) for path, sha in files],
                )
            if set_latest:
                db.execute(
                    "INSERT OR REPLACE INTO aliases VALUES (?, 'latest', ?, ?)",
                    (model_id, version, now),
                )
            db.execute("DELETE FROM import_refs WHERE import_id = ?", (import_id,))
            return not exists

    def model_bases(self) -> dict[str, str]:
        """Every model id -> its newest version's base ("" for a model)."""
        with self._lock:
            rows = self._db.execute("SELECT model_id, base FROM versions ORDER BY created_at")
            return {r["model_id"]: r["base"] for r in rows.fetchall()}

    def versions(self, model_id: str | None = None) -> list[VersionRow]:
        with self._lock:
            if model_id is None:
                rows = self._db.execute("SELECT * FROM versions ORDER BY model_id, created_at")
            else:
                rows = self._db.execute(
                    "SELECT * FROM versions WHERE model_id = ? ORDER BY created_at", (model_id,)
                )
            return [_version(r) for r in rows.fetchall()]

    def files(self, model_id: str, version: str) -> list[FileRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT f.path, b.* FROM version_files f JOIN blobs b ON b.sha256 = f.sha256"
                " WHERE f.model_id = ? AND f.version = ? ORDER BY f.path",
                (model_id, version),
            ).fetchall()
        return [FileRow(r["path"], _blob(r)) for r in rows]

    def aliases(self) -> dict[tuple[str, str], str]:
        with self._lock:
            rows = self._db.execute("SELECT model_id, alias, version FROM aliases").fetchall()
        return {(r["model_id"], r["alias"]): r["version"] for r in rows}

    def set_alias(self, model_id: str, alias: str, version: str) -> str | None:
        with self.transaction() as db:
            if not db.execute(
                "SELECT 1 FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
            ).fetchone():
                return None
            row = db.execute(
                "SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?, ?)",
                (model_id, alias, version, time.time()),
            )
            return str(row["version"]) if row else ""

    def delete_version(self, model_id: str, version: str) -> list[str] | None:
        """Delete the version and aliases pointing at it; returns the blobs it used, or
        None when it does not exist. ``latest`` moves to the newest remaining version."""
        with self.transaction() as db:
            if not db.execute(
                "SELECT 1 FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
            ).fetchone():
                return None
            shas = [
                str(r[0])
                for r in db.execute(
                    "SELECT sha256 FROM version_files WHERE model_id = ? AND version = ?",
                    (model_id, version),
                )
            ]
            db.execute(
                "DELETE FROM version_files WHERE model_id = ? AND version = ?", (model_id, version)
            )
            db.execute(
                "DELETE FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
            )
            db.execute(
                "DELETE FROM aliases WHERE model_id = ? AND version = ?", (model_id, version)
            )
            newest = db.execute(
                "SELECT version FROM versions WHERE model_id = ? ORDER BY created_at DESC LIMIT 1",
                (model_id,),
            ).fetchone()
            has_latest = db.execute(
                "SELECT 1 FROM aliases WHERE model_id = ? AND alias = 'latest'", (model_id,)
            ).fetchone()
            if newest and not has_latest:
                db.execute(
                    "INSERT INTO aliases VALUES (?, 'latest', ?, ?)",
                    (model_id, newest[0], time.time()),
                )
            return shas

    # usage and policy --------------------------------------------------------------

    def usage(self) -> dict[str, tuple[int, int, float, dict[str, object]]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM usage").fetchall()
        return {
            r["model_id"]: (r["requests"], r["tokens"], r["last_used"], json.loads(r["state"]))
            for r in rows
        }

    def save_usage(
        self, model_id: str, requests: int, tokens: int, last_used: float, state: dict[str, object]
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?)",
                (model_id, requests, tokens, last_used, json.dumps(state)),
            )

    def policies(self) -> dict[str, tuple[int, bool]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM policies").fetchall()
        return {r["model_id"]: (int(r["priority"]), bool(r["pinned"])) for r in rows}

    def set_policy(self, model_id: str, priority: int, pinned: bool) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO policies VALUES (?, ?, ?)", (model_id, priority, pinned)
            )


def _blob(row: sqlite3.Row) -> BlobRow:
    return BlobRow(
        row["sha256"], row["size"], row["chunk_size"], tuple(json.loads(row["chunk_sha256"]))
    )


def _version(row: sqlite3.Row) -> VersionRow:
    return VersionRow(
        row["model_id"],
        row["version"],
        row["source"],
        row["total_bytes"],
        row["config_json"],
        row["created_at"],
        row["base"],
    )
