"""A local server speaking the Hugging Face Hub's HTTP API, for the calls huggingface_hub
makes (model info at a revision, tree listing, HEAD/GET resolve with ETag,
X-Repo-Commit, X-Linked-Etag/Size and Range), so the real client library runs unmodified.

Faults are switched per file: ``status`` (answer that HTTP status) or ``truncate`` (send
a Content-Length and close the connection half-way through the body).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024  # files from this size on are "LFS" files (their sha256 is published)


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit
    token: str | None = None  # when set, requests need "Authorization: Bearer <token>"

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        digest = hashlib.sha1(
            json.dumps(
                sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())
            ).encode()
        )
        sha = digest.hexdigest()
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass
class Fault:
    status: int | None = None
    truncate: bool = False


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.faults: dict[str, Fault] = {}  # file path -> fault
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def repo(self, repo_id: str) -> FakeRepo:
        return self.repos.setdefault(repo_id, FakeRepo())

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self, filename: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == "GET" and p.endswith("/" + filename))


@contextmanager
def running_hub() -> Iterator[FakeHub]:
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()


def _sibling(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": _git_oid(data)}
    if len(data) >= LFS_THRESHOLD:
        entry["lfs"] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "pointerSize": 134,
        }
    return entry


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _error(self, status: int, code: str | None = None, message: str = "error") -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                return None
            if repo.token is not None:
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {repo.token}":
                    self._error(401, None, "Invalid credentials in Authorization header")
                    return None
            return repo

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            with hub.lock:
                hub.requests.append((self.command, path))
            if m := _TREE.match(url.path):
                repo = self._repo(unquote(m.group(1)))
                if repo is None:
                    return
                commit = repo.resolve(unquote(m.group(2)))
                if commit is None:
                    return self._error(404, "RevisionNotFound", "Invalid rev id")
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": p,
                            "size": len(d),
                            "oid": _git_oid(d),
                            **(
                                {
                                    "lfs": {
                                        "oid": hashlib.sha256(d).hexdigest(),
                                        "size": len(d),
                                        "pointerSize": 134,
                                    }
                                }
                                if len(d) >= LFS_THRESHOLD
                                else {}
                            ),
                        }
                        for p, d in sorted(repo.commits[commit].items())
                    ]
                )
            if m := _INFO.match(url.path):
                repo_id = unquote(m.group(1))
                repo = self._repo(repo_id)
                if repo is None:
                    return
                revision = unquote(m.group(2) or "main")
                commit = repo.resolve(revision)
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                files = repo.commits[commit]
                _ = parse_qs(url.query)
                return self._json(
                    {
                        "_id": commit[:24],
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit,
                        "private": repo.token is not None,
                        "siblings": [_sibling(p, d) for p, d in sorted(files.items())],
                    }
                )
            if m := _RESOLVE.match(url.path):
                repo = self._repo(unquote(m.group(1)))
                if repo is None:
                    return
                commit = repo.resolve(unquote(m.group(2)))
                if commit is None:
                    return self._error(404, "RevisionNotFound", "Invalid rev id")
                filename = unquote(m.group(3))
                data = repo.commits[commit].get(filename)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist")
                fault = hub.faults.get(filename)
                if fault is not None and fault.status is not None:
                    return self._error(fault.status, None, "injected fault")
                return self._file(commit, data, body, fault)
            self._error(404, None, "no such route")

        def _file(self, commit: str, data: bytes, body: bool, fault: Fault | None) -> None:
            lfs = len(data) >= LFS_THRESHOLD
            etag = hashlib.sha256(data).hexdigest() if lfs else _git_oid(data)
            start, end = 0, len(data)
            status = 200
            header = self.headers.get("Range")
            if header and (r := _RANGE.match(header.strip())):
                lo, hi = r.group(1), r.group(2)
                if lo:
                    start = int(lo)
                    end = min(len(data), int(hi) + 1) if hi else len(data)
                elif hi:
                    start = max(0, len(data) - int(hi))
                if start >= len(data) and len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{etag}"')
            if lfs:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            payload = data[start:end]
            if fault is not None and fault.truncate:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler
