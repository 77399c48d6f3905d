"""Listing a local model directory for import: which files, under which relative paths,
with links out of the directory refused and tool caches (``.git``, ``.cache``) skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from registry.hub import select_files
from runtime.errors import InvalidArgumentError
from runtime.model_ids import check_file_path
from runtime.paths import bounded

__all__ = ["list_directory"]

_SKIP_DIRS = {".git", ".cache", ".huggingface"}


def list_directory(
    directory: Path, allow: Sequence[str] = (), deny: Sequence[str] = ()
) -> list[tuple[str, Path]]:
    """The files of a model directory to import: (relative path, resolved path), sorted.
    A file that is a link to anything outside the directory is refused. Blocking."""
    root = directory.resolve()
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(part in _SKIP_DIRS for part in rel_parts):
            continue
        if path.is_dir():
            continue
        rel = "/".join(rel_parts)
        check_file_path(rel)
        real = path.resolve()
        if not real.is_relative_to(root):
            raise InvalidArgumentError(f"file {rel}: a link pointing outside the directory")
        if not real.is_file():
            continue
        found[rel] = real
    kept = select_files(sorted(found), allow, deny)
    if not kept:
        raise InvalidArgumentError(f"source {bounded(str(directory))!r}: no files to import")
    return [(rel, found[rel]) for rel in kept]
