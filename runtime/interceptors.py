"""Map exceptions raised by servicers to gRPC statuses, in one place.

Servicers raise :class:`runtime.errors.HeliosError` subclasses; this interceptor turns
them into ``context.abort(status_code, message)``. Anything else is a bug: it is logged
with its traceback and the client gets INTERNAL with a generic message, so internals
(paths, SQL, stack frames) never leak over the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from runtime._handlers import Behavior, call_unary, iterate_stream, rewrap
from runtime.errors import HeliosError

__all__ = ["INTERNAL_MESSAGE", "ErrorInterceptor"]

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"

# Exceptions that are not servicer failures and must travel on untouched:
# AbortError is grpc's own "context.abort() was called" signal (the status is already
# set), CancelledError is the client going away or the server stopping.
_PASSTHROUGH: tuple[type[BaseException], ...] = (grpc.aio.AbortError, asyncio.CancelledError)


async def _map_error(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    """Abort the RPC for ``exc``. Always raises (whatever context.abort raises)."""
    if isinstance(exc, HeliosError):
        log.debug(
            "%s -> %s: %s",
            method,
            exc.status_code.name,
            exc.message,
            extra={"grpc_method": method, "grpc_code": exc.status_code.name},
        )
        await context.abort(exc.status_code, exc.message)
    else:
        log.error(
            "unhandled %s in %s",
            type(exc).__name__,
            method,
            exc_info=exc,
            extra={"grpc_method": method, "grpc_code": grpc.StatusCode.INTERNAL.name},
        )
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    # context.abort() raises; reaching here means a context that does not (a fake).
    raise exc


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """HeliosError -> its status code; any other exception -> logged + INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        method: str = handler_call_details.method

        def unary(behavior: Behavior) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await call_unary(behavior, request, context)
                except _PASSTHROUGH:
                    raise
                except Exception as exc:
                    await _map_error(exc, context, method)

            return wrapper

        def stream(
            behavior: Behavior,
        ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
            # Must itself be an async generator: errors raised mid-stream surface while
            # we re-yield, after some responses have already been sent.
            async def wrapper(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for item in iterate_stream(behavior, request, context):
                        yield item
                except _PASSTHROUGH:
                    raise
                except Exception as exc:
                    await _map_error(exc, context, method)

            return wrapper

        return rewrap(handler, unary=unary, stream=stream)
