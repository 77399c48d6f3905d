"""Staging a Hugging Face Hub snapshot for import: the files the allow/deny patterns keep,
their declared sizes and hashes (so bytes the registry already holds are not downloaded
again), and a per-commit staging directory the files are downloaded into on demand."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.hub import HubClient, select_files
from registry.version_writer import ImportEntry
from runtime.errors import InvalidArgumentError

__all__ = ["HubStaging", "stage_hub_snapshot"]


@dataclass(frozen=True)
class HubStaging:
    """What a Hub import hands to :meth:`registry.version_writer.VersionWriter.write`."""

    source: str  # hf://<repo>@<commit>
    commit: str
    directory: Path  # remove once the import is done
    entries: list[ImportEntry]
    fetch: Callable[[str], Path]


def stage_hub_snapshot(
    hub: HubClient,
    repo_name: str,
    revision: str,
    repo_id: str,
    allow: Sequence[str],
    deny: Sequence[str],
    staging_root: Path,
) -> HubStaging:
    """Resolve ``repo_name@revision`` to a commit and list its files to import. Blocking."""
    snapshot = hub.snapshot(repo_name, revision)
    paths = select_files([f.path for f in snapshot.files], allow, deny)
    if not paths:
        raise InvalidArgumentError(f"hf://{repo_name}@{revision}: no files to import")
    by_path = {f.path: f for f in snapshot.files}
    staging = staging_root / "hub" / repo_id.replace("/", "--") / snapshot.commit
    staging.mkdir(parents=True, exist_ok=True)
    entries: list[ImportEntry] = []
    for rel in paths:
        entries.append((rel, staging / rel, by_path[rel].size or 0, by_path[rel].sha256))

    def fetch(rel: str) -> Path:
        return hub.download(repo_name, snapshot.commit, rel, staging)

    return HubStaging(
        f"hf://{repo_name}@{snapshot.commit}", snapshot.commit, staging, entries, fetch
    )
