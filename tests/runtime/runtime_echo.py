"""A tiny echo service built without generated code (shared by the runtime tests).

Requests are bytes. ``Echo`` (unary) and ``Stream`` (server-streaming) read commands
from the request so one servicer can exercise every path:

* ``Echo``: ``raise:<ErrorClass>:<msg>`` raises that runtime.errors class,
  ``retry:<seconds>:<msg>`` raises ResourceExhaustedError with that retry_after_s,
  ``notfound:<msg>`` raises NotFoundError, ``invalid:<msg>`` raises
  InvalidArgumentError, ``boom`` raises RuntimeError, ``abort`` calls context.abort
  itself, ``sleep:<s>`` sleeps first, anything else is echoed.
* ``Stream``: ``<n>[:<delay>[:<error>]]`` yields ``0``..``n-1`` with ``delay`` seconds
  before each, then raises ``error`` (``notfound``, ``retry`` (3.5 s) or ``boom``) if
  given.
* ``Collect`` (client-streaming) joins its requests with ``,``; ``Chat``
  (bidirectional) echoes each request; either raises NotFoundError on ``notfound``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio

from runtime import errors
from runtime.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError

SERVICE = "test.v1.Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request.startswith(b"raise:"):
        _, name, message = request.decode().split(":", 2)
        raise getattr(errors, name)(message)
    if request.startswith(b"retry:"):
        _, seconds, message = request.decode().split(":", 2)
        raise ResourceExhaustedError(message, retry_after_s=float(seconds))
    if request.startswith(b"notfound:"):
        raise NotFoundError(request.split(b":", 1)[1].decode())
    if request.startswith(b"invalid:"):
        raise InvalidArgumentError(request.split(b":", 1)[1].decode())
    if request == b"boom":
        raise RuntimeError("secret internal detail")
    if request == b"abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "go away")
    if request.startswith(b"sleep:"):
        await asyncio.sleep(float(request.split(b":", 1)[1]))
    return request


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    parts = request.decode().split(":")
    count = int(parts[0])
    delay = float(parts[1]) if len(parts) > 1 else 0.0
    error = parts[2] if len(parts) > 2 else ""
    for i in range(count):
        if delay:
            await asyncio.sleep(delay)
        yield str(i).encode()
    if error == "notfound":
        raise NotFoundError("gone mid-stream")
    if error == "retry":
        raise ResourceExhaustedError("full mid-stream", retry_after_s=3.5)
    if error == "boom":
        raise RuntimeError("secret mid-stream detail")


async def collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    items = [r async for r in requests]
    if b"notfound" in items:
        raise NotFoundError("no such item")
    return b",".join(items)


async def chat(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for r in requests:
        if r == b"notfound":
            raise NotFoundError("chat partner left")
        yield r


def register_echo(server: grpc.aio.Server) -> Sequence[str]:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                    "Collect": grpc.stream_unary_rpc_method_handler(collect),
                    "Chat": grpc.stream_stream_rpc_method_handler(chat),
                },
            ),
        )
    )
    return [SERVICE]
