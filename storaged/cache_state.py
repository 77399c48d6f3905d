"""What the model cache keeps on disk besides the blobs themselves: each tier's
directories (scanned at start, crash leftovers removed), ``state.json`` (pins and the
cached versions, rewritten atomically), and durable whole-file copies between tiers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from storaged.cache_records import BlobInfo, CachedVersion, TierState
from storaged.download import fsync_dir
from storaged.manifest import FileEntry
from storaged.tiers import Tier

__all__ = ["copy_file", "load_state", "save_state", "scan_tier"]

logger = logging.getLogger(__name__)


def copy_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` durably: through a temp file, fsynced, renamed into place."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def scan_tier(t: TierState, now: float) -> None:
    """Create the tier's directories and record the blobs it holds; a crash's leftovers
    (temp files among the blobs, half-linked version directories) are removed."""
    for sub in ("blobs", "versions", "tmp"):
        (t.config.path / sub).mkdir(parents=True, exist_ok=True)
    for p in (t.config.path / "blobs").iterdir():
        if p.is_file() and len(p.name) == 64:
            st = p.stat()
            t.blobs[p.name] = BlobInfo(p.name, st.st_size, st.st_atime or now)
        else:  # a stray temp file from a crash
            p.unlink(missing_ok=True)
    for p in (t.config.path / "versions").glob("*/.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def load_state(path: Path) -> tuple[set[str], list[CachedVersion]]:
    """The pins and cached versions recorded in ``path`` (none when it is absent or
    unreadable). The versions are as recorded: the caller checks them against the disk."""
    if not path.exists():
        return set(), []
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("state file unreadable, starting empty", extra={"path": str(path)})
        doc = {}
    versions = []
    for v in doc.get("versions", []):
        files = tuple(
            FileEntry(f["path"], f["size"], f["sha256"], f["chunk_size"], tuple(f["chunk_sha256"]))
            for f in v["files"]
        )
        tier = Tier(v["tier"]) if v.get("tier") else None
        versions.append(
            CachedVersion(
                v["model_id"], v["version"], files, tier, v["last_access"], v.get("freq", 0)
            )
        )
    return set(doc.get("pins", [])), versions


def save_state(path: Path, pins: set[str], versions: Iterable[CachedVersion]) -> None:
    """Write the pins and cached versions to ``path`` atomically (temp file, fsync, rename)."""
    doc = {
        "pins": sorted(pins),
        "versions": [
            {
                "model_id": v.model_id,
                "version": v.version,
                "tier": int(v.tier) if v.tier else None,
                "last_access": v.last_access,
                "freq": v.freq,
                "files": [asdict(f) for f in v.files],
            }
            for v in versions
        ],
    }
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
