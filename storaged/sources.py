"""HTTP(S) range-GET blob source (S3, a CDN, any static file server).

Blobs are at ``<base_url>/<sha256>``. Each chunk is one ``Range: bytes=a-b`` GET; the
blocking ``http.client`` calls run in threads, and connections are kept alive and
reused (a pool, at most one request per connection at a time).
"""

from __future__ import annotations

import asyncio
import http.client
import queue
import ssl
import urllib.parse
from collections.abc import AsyncIterator

from runtime.errors import NotFoundError, UnavailableError

__all__ = ["HttpBlobSource"]

PIECE = 1 << 20


class HttpBlobSource:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.name = f"http {base_url}"
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout_s
        self._idle: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()

    def _connection(self) -> http.client.HTTPConnection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _open(
        self, sha256: str, offset: int, length: int
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection()
        try:
            conn.request(
                "GET",
                f"{self._prefix}/{sha256}",
                headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            )
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise UnavailableError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        if resp.status == 404:
            resp.read()
            self._idle.put(conn)
            raise NotFoundError(f"{self.name} has no blob {sha256}")
        if resp.status != 206:
            conn.close()
            raise UnavailableError(f"{self.name}: HTTP {resp.status} for a range request")
        want = f"bytes {offset}-{offset + length - 1}/"
        if not (resp.getheader("Content-Range") or "").startswith(want):
            conn.close()
            raise UnavailableError(
                f"{self.name}: wrong Content-Range {resp.getheader('Content-Range')}"
            )
        return conn, resp

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        if length == 0:
            return
        conn, resp = await asyncio.to_thread(self._open, sha256, offset, length)
        remaining = length
        ok = False
        try:
            while remaining:
                try:
                    piece = await asyncio.to_thread(resp.read, min(PIECE, remaining))
                except (OSError, http.client.HTTPException) as exc:
                    raise UnavailableError(f"{self.name}: {type(exc).__name__}: {exc}") from None
                if not piece:
                    raise UnavailableError(
                        f"{self.name}: connection closed after {length - remaining} of "
                        f"{length} bytes"
                    )
                remaining -= len(piece)
                yield piece
            ok = True
        finally:
            if ok and not resp.will_close:
                self._idle.put(conn)
            else:
                conn.close()
