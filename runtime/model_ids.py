"""Canonical model ids, references and file paths.

Rules (every public entry point of the registry goes through these functions):

* A **model id** is ``org/name``: exactly two segments. Surrounding ``hf://`` and
  ``models/`` prefixes are dropped (``models/Org/Name`` is how the Hub API spells a model
  repo). The id is **lower-cased**: the Hub treats repo ids case-insensitively, so
  ``Qwen/Qwen2-0.5B`` and ``qwen/qwen2-0.5b`` are one model. Each segment is 1..96
  characters of ``[a-z0-9._-]``, starts and ends with a letter or digit, and contains
  neither ``--`` nor ``..`` (the Hub's own repo-name rules). Anything else (``../``,
  absolute paths, NUL, spaces, a third segment) is rejected with INVALID_ARGUMENT.
* A **reference** is ``org/name`` (meaning ``@latest``), or ``org/name@rev`` where
  ``rev`` is an alias (``latest``, ``prod``, any ``[a-z0-9][a-z0-9._-]{0,63}``) or a
  version id. **Version ids** are 40 lower-case hex digits: the Hub's commit sha for a
  Hub import, the first 40 hex digits of the manifest's sha256 for a directory import
  (so importing the same bytes twice gives the same version). A 7..40 hex-digit
  ``rev`` that is a unique prefix of a version id resolves to it, as in git; a Hub branch
  name such as ``main`` is only meaningful at import time (``hf://org/name@main`` is
  resolved to its commit), in the registry it is just an alias name.
* A **file path** inside a version is a relative POSIX path: no leading ``/``, no
  backslash, no drive letter, no empty, ``.`` or ``..`` segment, no NUL or other control
  character, at most 1024 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_ID_BYTES, quote

__all__ = [
    "ModelRef",
    "canonical_model_id",
    "check_alias",
    "check_file_path",
    "check_sha256",
    "is_sha256",
    "is_version_id",
    "is_version_prefix",
    "parse_reference",
]

# Each is used with fullmatch: match with ``^...$`` would take "<id>\n" too (``$`` also
# matches before a final newline), and such an id would reach paths, URLs and the database.
_SEGMENT = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,94}[a-z0-9])?")
_ALIAS = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9a-f]{40}")
_VERSION_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HUB_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 1024


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: the canonical id and the revision (alias or version id)."""

    model_id: str
    revision: str = "latest"


def _strip_prefixes(text: str) -> str:
    for prefix in ("hf://", "models/"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def canonical_model_id(text: str) -> str:
    """The canonical ``org/name`` for ``text``; INVALID_ARGUMENT when it is not one."""
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError("model id: must not be empty")
    if len(text) > MAX_ID_BYTES:
        raise InvalidArgumentError(f"model id: at most {MAX_ID_BYTES} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise InvalidArgumentError("model id: must not contain NUL or control characters")
    if text.strip() != text:
        raise InvalidArgumentError(f"model id {quote(text)}: must not have surrounding spaces")
    lowered = _strip_prefixes(text).lower()
    parts = lowered.split("/")
    if len(parts) != 2:
        raise InvalidArgumentError(f"model id {quote(text)}: expected exactly 'org/name'")
    for part in parts:
        if not _SEGMENT.fullmatch(part) or "--" in part or ".." in part:
            raise InvalidArgumentError(
                f"model id {quote(text)}: each of org and name must be 1..96 characters of "
                "[a-z0-9._-], start and end with a letter or digit, without '--' or '..'"
            )
    return lowered


def check_alias(alias: str) -> str:
    """A valid alias name (lower-cased), or INVALID_ARGUMENT."""
    lowered = alias.lower()
    if not _ALIAS.fullmatch(lowered) or ".." in lowered:
        raise InvalidArgumentError(f"alias {quote(alias)}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
    return lowered


def is_version_id(text: str) -> bool:
    return bool(_VERSION.fullmatch(text))


def is_version_prefix(text: str) -> bool:
    """7..40 lower-case hex digits: how a version id is abbreviated (as in git)."""
    return bool(_VERSION_PREFIX.fullmatch(text))


def is_sha256(text: str) -> bool:
    """Whether ``text`` is a SHA-256 digest as Helios writes them: 64 lower-case hex digits."""
    return bool(_SHA256.fullmatch(text))


def check_version_id(text: str) -> str:
    if not is_version_id(text):
        raise InvalidArgumentError(f"version {quote(text)}: expected 40 lower-case hex digits")
    return text


def check_sha256(text: str) -> str:
    if not is_sha256(text):
        raise InvalidArgumentError(f"sha256 {quote(text)}: expected 64 lower-case hex digits")
    return text


def parse_reference(text: str) -> ModelRef:
    """``org/name[@rev]`` -> :class:`ModelRef` (``rev`` defaults to ``latest``)."""
    if len(text) > 2 * MAX_ID_BYTES:
        raise InvalidArgumentError(f"reference: at most {2 * MAX_ID_BYTES} characters")
    model, sep, rev = text.partition("@")
    model_id = canonical_model_id(model)
    if not sep:
        return ModelRef(model_id)
    if not rev:
        raise InvalidArgumentError(f"reference {quote(text)}: empty revision after '@'")
    rev = rev.lower()
    if not (is_version_prefix(rev) or _ALIAS.fullmatch(rev)):
        raise InvalidArgumentError(f"reference {quote(text)}: revision must be an alias or version")
    return ModelRef(model_id, rev)


def check_hub_revision(revision: str) -> str:
    """A Hub revision (branch, tag, commit, ``refs/pr/1``) safe to put in a URL."""
    if not _HUB_REVISION.fullmatch(revision) or ".." in revision or revision.startswith("/"):
        raise InvalidArgumentError(f"revision {quote(revision)}: not a valid Hub revision")
    return revision


def check_file_path(path: str) -> str:
    """``path`` if it is a safe relative POSIX path inside a model, else INVALID_ARGUMENT."""
    if not path:
        raise InvalidArgumentError("file path: must not be empty")
    if len(path) > MAX_PATH:
        raise InvalidArgumentError(f"file path: longer than {MAX_PATH} characters")
    if _CONTROL.search(path):
        raise InvalidArgumentError(
            f"file path {quote(path)}: must not contain NUL/control characters"
        )
    if "\\" in path:
        raise InvalidArgumentError(f"file path {quote(path)}: must use '/' separators")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidArgumentError(f"file path {quote(path)}: must be relative")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgumentError(f"file path {quote(path)}: empty, '.' or '..' segment")
    return path
