"""runtime/http_stream.py: the HTTP/1.1 server of the worker's REST port, over real
sockets (a raw client, so that what goes over the wire is what is checked)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from runtime import http_stream
from runtime.http_stream import HttpRequest, HttpStreamServer, ResponseWriter, start_http_server

Handler = Callable[[HttpRequest, ResponseWriter], Awaitable[None]]


class Recorder:
    """A handler that streams ``chunks`` (awaiting ``gate`` before each) and records
    what it was asked and how it ended."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.chunks: list[bytes] = [b"one", b"two"]
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.fail_after_start = False
        self.last = b""  # handed to end() after the chunks
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, request: HttpRequest, response: ResponseWriter) -> None:
        self.requests.append(request)
        self.arrived.set()
        if self.fail is not None and not self.fail_after_start:
            raise self.fail
        response.start(200, [("content-type", "text/event-stream")])
        try:
            for chunk in self.chunks:
                if self.gate is not None:
                    await self.gate.wait()
                response.write(chunk)
                if response.must_drain:
                    await response.drain()
                if self.fail is not None:
                    raise self.fail
            if self.last:
                response.end(self.last)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Recorder, HttpStreamServer]]:
    recorder = Recorder()
    server = await start_http_server(recorder, host="127.0.0.1", port=0, max_body=1024)
    yield recorder, server
    await server.close(grace_s=0)


async def connect(server: HttpStreamServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: worker", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers, body (chunked bodies de-chunked)."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += data[:-2]
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def test_a_streamed_answer_arrives_chunked_and_the_connection_stays_for_the_next(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    reader, writer = await connect(server)
    writer.write(post("/v1/x?api-version=2", b'{"a": 1}', "x-helios-edge: rest"))
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert body == b"onetwo"
    writer.write(post("/v1/y", b""))  # the same connection
    assert (await read_response(reader))[2] == b"onetwo"
    first, second = recorder.requests
    assert (first.method, first.path, first.query) == ("POST", "/v1/x", "api-version=2")
    assert first.body == b'{"a": 1}' and first.header("x-helios-edge") == "rest"
    assert second.path == "/v1/y"
    writer.close()


async def test_the_head_leaves_with_the_first_chunk_and_the_last_chunk_with_the_end(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    recorder.gate = asyncio.Event()
    recorder.chunks = [b"first"]
    recorder.last = b"last"
    reader, writer = await connect(server)
    writer.write(post("/x", b""))
    await asyncio.wait_for(recorder.arrived.wait(), 10)
    # Started, waiting for its first chunk: nothing on the wire yet (one write, not two).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)
    recorder.gate.set()
    status, _, body = await read_response(reader)
    assert status == 200 and body == b"firstlast"
    writer.close()


async def test_requests_sent_back_to_back_are_answered_in_order(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    reader, writer = await connect(server)
    writer.write(post("/a", b"1") + post("/b", b"2"))  # pipelined
    assert (await read_response(reader))[2] == b"onetwo"
    assert (await read_response(reader))[2] == b"onetwo"
    assert [r.path for r in recorder.requests] == ["/a", "/b"]
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (post("/x", b"y" * 2000), 413),  # declared over the limit: refused before reading
        (b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n800\r\n" + b"y" * 2048, 413),
        (b"GET /x HTTP/1.1\r\nbig: " + b"h" * (70 * 1024) + b"\r\n\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
    ids=["content-length", "chunked", "headers", "malformed"],
)
async def test_oversized_or_malformed_requests_are_refused_and_the_connection_closed(
    served: tuple[Recorder, HttpStreamServer], raw: bytes, status: int
) -> None:
    recorder, server = served
    reader, writer = await connect(server)
    writer.write(raw)
    got, headers, _ = await read_response(reader)
    assert got == status and headers["connection"] == "close"
    assert await reader.read() == b""  # closed
    assert recorder.requests == []
    writer.close()


async def test_a_client_gone_mid_answer_cancels_the_handler(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    recorder.gate = asyncio.Event()
    _, writer = await connect(server)
    writer.write(post("/x", b""))
    await asyncio.sleep(0.05)
    writer.close()  # before any chunk
    await asyncio.wait_for(recorder.cancelled.wait(), 5)
    await _until(lambda: not server.connections)


async def test_a_failing_handler_is_500_before_its_answer_and_a_cut_after(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    recorder.fail = RuntimeError("bug at /secret/path")
    reader, writer = await connect(server)
    writer.write(post("/x", b""))
    status, _, body = await read_response(reader)
    assert status == 500 and b"secret" not in body
    writer.close()
    recorder.fail_after_start = True
    reader, writer = await connect(server)
    writer.write(post("/x", b""))
    await reader.readuntil(b"\r\n\r\n")
    rest = await reader.read()  # the connection is cut: no terminating chunk
    assert rest.startswith(b"3\r\none\r\n") and not rest.endswith(b"0\r\n\r\n")
    writer.close()


async def test_an_idle_connection_is_closed(
    served: tuple[Recorder, HttpStreamServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = served
    monkeypatch.setattr(http_stream, "IDLE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(http_stream, "REQUEST_TIMEOUT_S", 0.1)
    reader, writer = await connect(server)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # no request: closed
    reader, writer = await connect(server)
    writer.write(b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nab")  # never finished
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_request_trickling_in_is_cut_at_its_deadline(
    served: tuple[Recorder, HttpStreamServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = served
    monkeypatch.setattr(http_stream, "REQUEST_TIMEOUT_S", 0.3)
    reader, writer = await connect(server)
    writer.write(b"POST /x HTTP/1.1\r\ncontent-length: 1000\r\n\r\n")
    closed_after = None
    for step in range(40):  # a byte every 50 ms: each would have reset a per-read timer
        if reader.at_eof():
            closed_after = step * 0.05
            break
        with contextlib.suppress(ConnectionError):
            writer.write(b"x")
            await writer.drain()
        await asyncio.sleep(0.05)
    assert closed_after is not None and closed_after < 1.5
    writer.close()


async def test_closing_lets_an_answer_finish_then_closes_its_connection(
    served: tuple[Recorder, HttpStreamServer],
) -> None:
    recorder, server = served
    recorder.gate = asyncio.Event()
    reader, writer = await connect(server)
    writer.write(post("/x", b""))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(server.close(grace_s=5))
    await asyncio.sleep(0.05)
    recorder.gate.set()
    status, _, body = await read_response(reader)
    assert status == 200 and body == b"onetwo"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the connection closes
    await asyncio.wait_for(closing, 5)
    with pytest.raises(OSError):
        await connect(server)  # no longer listening
    writer.close()


async def _until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within_s} s")


async def test_the_server_answers_on_a_unix_socket_too_owner_only(tmp_path: Path) -> None:
    recorder = Recorder()
    server = await start_http_server(recorder, host="127.0.0.1", port=0, max_body=1024)
    path = tmp_path / "worker.rest.sock"
    stale = socket.socket(socket.AF_UNIX)  # a socket file left by a process that died
    stale.bind(str(path))
    stale.close()
    try:
        await server.listen_unix(str(path))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(post("/x", b""))
        assert (await read_response(reader))[2] == b"onetwo"
        writer.close()
    finally:
        await server.close(grace_s=0)
    assert not path.exists()  # removed with the server


async def test_a_unix_socket_path_holding_a_file_or_too_long_is_refused(tmp_path: Path) -> None:
    server = await start_http_server(Recorder(), host="127.0.0.1", port=0, max_body=1024)
    taken = tmp_path / "not-a-socket"
    taken.write_text("data")
    try:
        with pytest.raises(FileExistsError):
            await server.listen_unix(str(taken))
        assert taken.read_text() == "data"  # never removed
        with pytest.raises(ValueError, match="at most"):
            await server.listen_unix(str(tmp_path / ("s" * 120)))
    finally:
        await server.close(grace_s=0)
