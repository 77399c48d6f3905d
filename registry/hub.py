"""The Hugging Face Hub, through huggingface_hub (endpoint and token configurable).

Blocking (HTTP); the registry calls it from threads. Hub failures become domain errors:
missing repo/revision/file -> NOT_FOUND, 401/403/gated -> PERMISSION_DENIED, 5xx,
connection errors and truncated bodies -> UNAVAILABLE.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import HeliosError, HubPermissionError, NotFoundError, UnavailableError
from runtime.model_ids import check_file_path, check_hub_revision

__all__ = ["HubClient", "HubFile", "HubSnapshot", "select_files"]


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files carry their sha256


@dataclass(frozen=True)
class HubSnapshot:
    repo_id: str
    revision: str
    commit: str
    files: tuple[HubFile, ...]


def select_files(
    paths: Sequence[str], allow: Sequence[str] = (), deny: Sequence[str] = ()
) -> list[str]:
    """Paths kept by the glob patterns: matching any ``allow`` (all when empty) and no
    ``deny``."""
    kept = []
    for path in paths:
        if allow and not any(fnmatch.fnmatch(path, p) for p in allow):
            continue
        if any(fnmatch.fnmatch(path, p) for p in deny):
            continue
        kept.append(path)
    return kept


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    try:
        yield
    except HeliosError:
        raise
    except Exception as exc:
        raise _domain_error(what, exc) from exc


def _domain_error(what: str, exc: BaseException) -> HeliosError:
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.GatedRepoError):
        return HubPermissionError(f"{what}: gated repository: {_short(exc)}")
    if isinstance(
        exc,
        hf_errors.RepositoryNotFoundError
        | hf_errors.RevisionNotFoundError
        | hf_errors.RemoteEntryNotFoundError,
    ):
        return NotFoundError(f"{what}: {_short(exc)}")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return HubPermissionError(f"{what}: the Hub refused the request ({status})")
        if status == 404:
            return NotFoundError(f"{what}: {_short(exc)}")
        return UnavailableError(f"{what}: the Hub answered {status}: {_short(exc)}")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) and exc.__cause__ is not None:
        # hf_hub_download wraps the HEAD request's failure; the cause says what happened.
        return _domain_error(what, exc.__cause__)
    # Connection errors, truncated bodies, resets (httpx2 transport errors), OSError.
    return UnavailableError(
        f"{what}: the Hub is unreachable or the transfer failed: "
        f"{type(exc).__name__}: {_short(exc)}"
    )


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


class HubClient:
    """The Hub at ``endpoint`` (default: $HF_ENDPOINT, else huggingface.co)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        from huggingface_hub import HfApi

        self.endpoint = (
            endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        ).rstrip("/")
        self.token = token if token is not None else os.environ.get("HF_TOKEN")
        # token=False: never fall back to a token stored on this machine.
        self.api = HfApi(endpoint=self.endpoint, token=self.token or False)

    def snapshot(self, repo_id: str, revision: str = "main") -> HubSnapshot:
        """Resolve ``revision`` to a commit and list its files."""
        check_hub_revision(revision)
        with _hub_errors(f"hf://{repo_id}@{revision}"):
            info = self.api.model_info(repo_id, revision=revision, files_metadata=True)
        if not info.sha:
            raise UnavailableError(f"hf://{repo_id}@{revision}: the Hub gave no commit sha")
        files = []
        for sibling in info.siblings or []:
            check_file_path(sibling.rfilename)
            lfs = getattr(sibling, "lfs", None)
            files.append(
                HubFile(sibling.rfilename, sibling.size, lfs.sha256 if lfs is not None else None)
            )
        return HubSnapshot(repo_id, revision, info.sha.lower(), tuple(files))

    def download(self, repo_id: str, commit: str, filename: str, local_dir: Path) -> Path:
        """Download one file of ``commit`` into ``local_dir`` (resumes a partial one)."""
        check_file_path(filename)
        with _hub_errors(f"hf://{repo_id}@{commit}/{filename}"):
            path = self.api.hf_hub_download(repo_id, filename, revision=commit, local_dir=local_dir)
        return Path(path)

    def fetch_text(self, repo_id: str, revision: str, filename: str, local_dir: Path) -> str:
        """A small file (config.json, tokenizer files) as text."""
        snapshot = self.snapshot(repo_id, revision)
        return self.download(repo_id, snapshot.commit, filename, local_dir).read_text()
