"""What every Helios server does around each RPC, in one interceptor.

- Tracing: a SERVER span per RPC, child of the caller's span (W3C ``traceparent`` in the
  metadata, which :func:`runtime.channels.create_channel` sends).
- Metrics: started / handled (by final status) / in flight / handling time.
- Errors: servicers raise :class:`runtime.errors.HeliosError` subclasses, turned into
  ``context.abort(status_code, message)`` here. Anything else is a bug: it is logged with
  its traceback and the client gets INTERNAL with a generic message, so internals (paths,
  SQL, stack frames) never leak over the wire.

One interceptor rather than three stacked ones because each layer costs every RPC (and
every streamed message) a coroutine hop and a rebuilt handler; on the proxy's hot path
three layers cost more than the routing itself. The wrapped handler is built once per
method, not per call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from runtime._handlers import Behavior, call_unary, iterate_result, rewrap, split_method
from runtime.errors import HeliosError
from runtime.metrics import MethodMetrics, RpcObservation, final_code
from runtime.tracing import RpcSpan

__all__ = ["INTERNAL_MESSAGE", "RuntimeInterceptor"]

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


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Span, metrics and error mapping for every RPC (see the module docstring)."""

    def __init__(self) -> None:
        # method -> (the handler grpc gave us, our wrapped copy of it)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    service, name = split_method(method)
    metrics = MethodMetrics(service, name)

    def start(context: grpc.aio.ServicerContext) -> tuple[RpcObservation, RpcSpan]:
        return RpcObservation(metrics), RpcSpan(
            method, service, name, context.invocation_metadata()
        )

    def unary(behavior: Behavior) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            observation, span = start(context)
            token = span.enter()
            try:
                try:
                    response = await call_unary(behavior, request, context)
                except _PASSTHROUGH:
                    raise
                except Exception as exc:
                    await _map_error(exc, context, method)
            except BaseException as exc:
                span.exit(token)
                _finish(observation, span, final_code(context, exc))
                raise
            span.exit(token)
            _finish(observation, span, final_code(context, None))
            return response

        return wrapper

    def stream(behavior: Behavior) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        # Must itself be an async generator: errors raised mid-stream surface while we
        # re-yield, after some responses have already been sent.
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            observation, span = start(context)
            token = span.enter()
            try:
                try:
                    result = behavior(request, context)
                    if isinstance(result, AsyncGenerator):
                        # The usual servicer style, re-yielded here directly: one
                        # generator layer less for every message.
                        done = False
                        try:
                            async for item in result:
                                yield item
                            done = True
                        finally:
                            if not done:
                                # Closed early (client cancelled): close the servicer's
                                # generator now so its finally-blocks run, not at GC.
                                await result.aclose()
                    else:
                        async for item in iterate_result(result):
                            yield item
                except _PASSTHROUGH:
                    raise
                except Exception as exc:
                    await _map_error(exc, context, method)
            except BaseException as exc:
                # GeneratorExit lands here too: grpc dropped the stream while it was
                # parked at a yield (client cancelled, server stopped).
                span.exit(token)
                _finish(observation, span, final_code(context, exc))
                raise
            span.exit(token)
            _finish(observation, span, final_code(context, None))

        return wrapper

    return rewrap(handler, unary=unary, stream=stream)


def _finish(observation: RpcObservation, span: RpcSpan, code: str) -> None:
    observation.finish(code)
    span.finish(code)
