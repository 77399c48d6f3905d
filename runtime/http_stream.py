"""A small HTTP/1.1 server for streamed answers: what a worker serves Envoy's warm REST
streams on (one chunk per server-sent event), beside its gRPC port.

Why not gRPC for those: each message of a grpc.aio stream is a round trip through
grpc's poller thread and its HTTP/2 framing (bench/stream_transport_bench.py measures
~40-130 us of server CPU per message against ~20-35 us for a chunk written here); a
token stream is one message per token. Envoy speaks HTTP/1.1 to this port (one request
at a time per connection, which it pools), so what this server does is small: parse a
request with httptools (llhttp, the parser uvicorn and Node.js use), hand it to the
handler, write its answer (a body, or chunks with back-pressure), keep the connection for
the next request.

Bounds (the port is reachable by whatever reaches the worker): request line and headers
at most :data:`MAX_HEADER_BYTES`, a body at most the handler's ``max_body_bytes`` (413
before it is read), a request must arrive whole within :data:`REQUEST_TIMEOUT_S` of its
first byte and an idle connection is closed after :data:`IDLE_TIMEOUT_S`. A client gone
mid-answer cancels the handler (its generation stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from runtime.limits import MAX_SOCKET_PATH_BYTES

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_HEADER_BYTES",
    "REQUEST_TIMEOUT_S",
    "HttpRequest",
    "HttpStreamServer",
    "ResponseWriter",
    "start_http_server",
]

log = logging.getLogger(__name__)

# Request line and headers together (Envoy's own default limit is 60 KiB; the edge admits
# 8 KiB of client headers and adds its own).
MAX_HEADER_BYTES = 64 * 1024
# A request's bytes arrive within this long of its first one (a slow sender is closed).
REQUEST_TIMEOUT_S = 30.0
# A kept-alive connection with no request for this long is closed. Longer than the idle
# timeout of the Envoy clusters that pool connections here (proxy/xds_resources.py), so
# that Envoy, not this server, closes idle connections: a request Envoy sends on a
# connection this side is closing would be reset (and retried, but at a cost).
IDLE_TIMEOUT_S = 120.0
# Connections the kernel completes before the server accepts them: Envoy opens one per
# stream in flight, a burst of them at once (asyncio's default, 100, drops the SYNs of a
# larger burst, and each dropped one waits a second to be sent again).
LISTEN_BACKLOG = 2048


@dataclass(frozen=True)
class HttpRequest:
    """One request: its method, its path without the query, its query (after ``?``),
    its headers (names lower-cased, in order) and its whole body."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower case), None when absent."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ResponseWriter:
    """Writes one response: :meth:`start` (status and headers), then :meth:`write` for
    each chunk of a chunked body (await :meth:`drain` when :attr:`must_drain`), then
    :meth:`end`; or :meth:`send` for a whole body at once.

    The status line and headers go out with the first chunk (or the end), and
    :meth:`end` may carry the last chunk: one write, one wake-up of the peer, where a
    streamed answer would otherwise spend two at each end."""

    __slots__ = ("_chunked", "_connection", "_ended", "_head_bytes", "started")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._chunked = False
        self._ended = False
        self._head_bytes = b""
        self.started = False

    def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Status line and headers of a chunked body (sent with what follows)."""
        self._head_bytes = self._head(status, headers, chunked=True)

    def write(self, data: bytes) -> None:
        """One chunk of the body (nothing for empty ``data``: an empty chunk ends it)."""
        if data and not self._ended:
            self._connection.write(self._take_head() + b"%x\r\n%b\r\n" % (len(data), data))

    @property
    def must_drain(self) -> bool:
        """Whether the peer is slower than what was written: await :meth:`drain`."""
        return self._connection.paused

    async def drain(self) -> None:
        await self._connection.drained()

    def end(self, last: bytes = b"") -> None:
        """The end of a chunked body, after ``last`` (its last chunk, if any)."""
        if self.started and self._chunked and not self._ended:
            chunk = b"%x\r\n%b\r\n" % (len(last), last) if last else b""
            self._connection.write(self._take_head() + chunk + b"0\r\n\r\n")
        self._ended = True

    def send(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """A whole response (content-length)."""
        head = self._head(status, [*headers, ("content-length", str(len(body)))], chunked=False)
        self._connection.write(head + body)
        self._ended = True

    def _take_head(self) -> bytes:
        head, self._head_bytes = self._head_bytes, b""
        return head

    def _head(self, status: int, headers: Sequence[tuple[str, str]], *, chunked: bool) -> bytes:
        if self.started:
            raise RuntimeError("the response has started already")
        self.started = True
        self._chunked = chunked
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if chunked:
            lines.append("transfer-encoding: chunked")
        if not self._connection.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Handler = Callable[[HttpRequest, ResponseWriter], Awaitable[None]]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _TooLarge(Exception):
    """A request over a bound: answered with ``status``, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed in order, answered one at a time."""

    def __init__(self, server: HttpStreamServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._pending: deque[tuple[HttpRequest, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self.paused = False
        self.keep_alive = True
        self.closed = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are ones.
        self._transport = cast("asyncio.Transport", transport)
        self._server.connections.add(self)
        self._arm(IDLE_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except httptools.HttpParserError as exc:
            # A callback's exception comes back as the context of the parser's own.
            refusal = exc.__context__
            if isinstance(refusal, _TooLarge):
                self._refuse(refusal.status, str(refusal))
            else:
                self._refuse(400, "malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.forget(self)
        self._disarm()
        self._drained.set()
        if self._task is not None:
            # The client went away mid-answer: the handler stops (its generation too).
            self._task.cancel()

    def pause_writing(self) -> None:
        self.paused = True
        self._drained.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self._drained.set()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self._task is None:
            # A request began: it has this long to arrive whole, however it trickles in.
            self._arm(REQUEST_TIMEOUT_S)
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        declared = next((v for k, v in self._headers if k == "content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self._server.max_body:
            raise _TooLarge(413, f"request body over {self._server.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body:
            raise _TooLarge(413, f"request body over {self._server.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        request = HttpRequest(
            method=self._parser.get_method().decode("latin-1"),
            path=(url.path or b"/").decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=tuple(self._headers),
            body=b"".join(self._body),
        )
        self._pending.append((request, self._parser.should_keep_alive()))
        if self._task is None:
            self._next()

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")

    # ------------------------------------------------------------ answering

    def _next(self) -> None:
        """Answer the next request parsed, if any (one at a time, in order)."""
        if not self._pending or self.closed:
            return
        request, keep_alive = self._pending.popleft()
        self.keep_alive = keep_alive and not self._server.closing
        self._disarm()  # the handler may take as long as it streams
        self._task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: HttpRequest) -> None:
        writer = ResponseWriter(self)
        try:
            await self._server.handler(request, writer)
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            log.exception(
                "http handler failed", extra={"http_method": request.method, "path": request.path}
            )
            if writer.started:  # the answer cannot be finished: the peer sees a reset
                self._close()
                return
            writer.send(500, [("content-type", "text/plain")], b"internal error")
        finally:
            self._task = None
        writer.end()
        if not self.keep_alive:
            self._close()
            return
        if self._pending:
            self._next()
        else:
            self._arm(IDLE_TIMEOUT_S)

    def write(self, data: bytes) -> None:
        if not self.closed and self._transport is not None:
            self._transport.write(data)

    async def drained(self) -> None:
        await self._drained.wait()
        if self.closed:
            raise ConnectionResetError("the client closed the connection")

    def _refuse(self, status: int, message: str) -> None:
        log.info("http request refused", extra={"status": status, "reason": message})
        if self._task is None:  # mid-answer, a status line cannot be sent any more
            body = message.encode()
            head = (
                f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: text/plain\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.write(head.encode("latin-1") + body)
        self._close()

    def _close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    def close_when_idle(self) -> None:
        """The server is closing: close now when no answer is being written, else once
        it is."""
        self.keep_alive = False
        if self._task is None:
            self._close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._task is None:
            self._close()


class HttpStreamServer:
    """A listening HTTP/1.1 server (see the module docstring); :func:`start_http_server`
    starts one."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self.closing = False
        self._all_closed = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self.port = 0
        self.socket_path = ""  # the Unix socket it also listens on ("": none)

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._all_closed.set()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening; connections close once their answer is written (at most
        ``grace_s``, then they are cut)."""
        self.closing = True
        for listening in self._servers:
            listening.close()
        if self.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        for connection in list(self.connections):
            connection.close_when_idle()
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace_s)
        for connection in list(self.connections):
            connection._close()
        for listening in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listening.wait_closed(), 1.0)

    async def listen_unix(self, path: str, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on the Unix socket ``path`` too (a peer on this host, e.g. the local
        edge Envoy, then skips TCP: a third less CPU per streamed event on both ends).
        A socket left at ``path`` by a process that died is replaced; any other file
        there is an error (FileExistsError). Owner-only (0600)."""
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(f"a Unix socket path is at most {MAX_SOCKET_PATH_BYTES} bytes")
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(f"not a socket: {path}")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Owner-only before it listens: no other user's process ever connects.
            os.chmod(path, 0o600)
            listening = await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self), sock=sock, ssl=ssl_context, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            sock.close()
            raise
        self._servers.append(listening)
        self.socket_path = path


async def start_http_server(
    handler: Handler,
    *,
    host: str,
    port: int,
    max_body: int,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpStreamServer:
    """Listen on ``host:port`` (0: any free port; ``server.port`` says which)."""
    server = HttpStreamServer(handler, max_body)
    listening = await asyncio.get_running_loop().create_server(
        lambda: _Connection(server),
        host=host,
        port=port,
        ssl=ssl_context,
        reuse_address=True,
        backlog=LISTEN_BACKLOG,
    )
    server._servers.append(listening)
    server.port = listening.sockets[0].getsockname()[1]
    return server
