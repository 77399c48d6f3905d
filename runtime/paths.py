"""Server-side paths a client may name, confined to directories the operator configured.

A service that opens a directory a request names (the registry's ImportModel source, the
worker's LoadModel local_path) does so only inside its configured roots. The check runs on
the request's text before anything is opened: the path is normalised (``..`` removed) and
resolved (symlinks followed) with :func:`os.path.realpath`, which never fails on a missing
path, and must then lie inside a root. A path outside every root is refused with the same
PERMISSION_DENIED whether it exists or not, so the answer reveals nothing about the
server's filesystem; the caller then uses only the resolved path, the one that was checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runtime.errors import InvalidArgumentError, PermissionDeniedError

__all__ = ["MAX_ECHO", "MAX_PATH_CHARS", "PathRoots", "bounded", "split_roots"]

MAX_ECHO = 200  # characters of a client's text an error message repeats at most
MAX_PATH_CHARS = 4096  # PATH_MAX: no real path is longer


def bounded(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters (with a marker), safe to put in a message."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def split_roots(text: str | None) -> list[Path]:
    """Roots from an environment value: paths separated by :data:`os.pathsep`."""
    return [Path(part) for part in (text or "").split(os.pathsep) if part]


class PathRoots:
    """The directories (and everything below them) that clients may name."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.roots = tuple(
            Path(os.path.realpath(os.path.expanduser(os.fspath(root)))) for root in roots
        )

    def __bool__(self) -> bool:
        return bool(self.roots)

    def __repr__(self) -> str:
        return f"PathRoots({[str(r) for r in self.roots]})"

    def contains(self, path: Path) -> bool:
        """Whether the (already resolved) ``path`` lies inside a root."""
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def confine(self, text: str, field: str, flag: str) -> Path:
        """The resolved path ``text`` names, when it lies inside a root.

        Blocking (``realpath`` reads symlinks): call it from a thread. Malformed text is
        INVALID_ARGUMENT (a property of the text alone); anything outside the roots, or any
        path at all when there are none, is PERMISSION_DENIED with one message whatever
        exists there. ``flag`` names the setting that adds roots, for the message.
        """
        if not text:
            raise InvalidArgumentError(f"{field}: must not be empty")
        if len(text) > MAX_PATH_CHARS:
            raise InvalidArgumentError(f"{field}: longer than {MAX_PATH_CHARS} characters")
        if "\0" in text:
            raise InvalidArgumentError(f"{field}: must not contain NUL")
        if not os.path.isabs(text):
            raise InvalidArgumentError(f"{field} {bounded(text)!r}: must be an absolute path")
        if not self.roots:
            raise PermissionDeniedError(
                f"{field}: this server opens no directories a request names (no {flag})"
            )
        # normpath first: "a/link/.." must mean "a", the directory the check sees, not
        # wherever the kernel would go from the link's target.
        real = Path(os.path.realpath(os.path.normpath(text)))
        if not self.contains(real):
            raise PermissionDeniedError(
                f"{field} {bounded(text)!r}: not under a directory this server allows ({flag})"
            )
        return real
