"""What every Helios server does around each RPC, in one interceptor.

- Tracing: a SERVER span per RPC, child of the caller's span (W3C ``traceparent`` in the
  metadata, which :func:`runtime.channels.create_channel` sends).
- Metrics: started / handled (by final status) / in flight / handling time.
- Errors: servicers raise :class:`runtime.errors.HeliosError` subclasses, turned into
  their gRPC status, message and ``retry-after`` trailer here, by
  :func:`runtime.grpc_errors.abort` (the message cut to
  :data:`runtime.limits.MAX_ERROR_MESSAGE_CHARS`). Anything else is a bug: it is logged with
  its traceback and the client gets INTERNAL with a generic message, so internals (paths,
  SQL, stack frames) never leak over the wire.
- Request bytes: each request message is checked against its method's size limit
  (:func:`runtime.limits.request_limit`) before it is parsed, and a message that does not
  parse (corrupt wire format, bad UTF-8 in a string, nesting past protobuf's depth limit)
  is INVALID_ARGUMENT, logged once per cause and method a minute, not a traceback per
  request. grpc.aio would answer a request deserializer's exception with UNKNOWN and the
  exception's text, and log its traceback: so the deserializer here never raises; it
  hands the wrapper a :class:`_Rejected` marker that the wrapper turns into the status.

One interceptor rather than three stacked ones because each layer costs every RPC (and
every streamed message) a coroutine hop and a rebuilt handler; on the proxy's hot path
three layers cost more than the routing itself. The wrapped handler is built once per
method, not per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from runtime import grpc_errors
from runtime._handlers import Behavior, call_unary, iterate_result, rewrap, split_method
from runtime.errors import HeliosError, InvalidArgumentError
from runtime.limits import bounded_message, request_limit
from runtime.metrics import MethodMetrics, RpcObservation, final_code
from runtime.tracing import RpcSpan

__all__ = ["DECODE_LOG_INTERVAL_S", "INTERNAL_MESSAGE", "RuntimeInterceptor"]

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"

# Exceptions that are not servicer failures and must travel on untouched:
# AbortError is grpc's own "context.abort() was called" signal (the status is already
# set), CancelledError is the client going away or the server stopping.
_PASSTHROUGH: tuple[type[BaseException], ...] = (grpc.aio.AbortError, asyncio.CancelledError)


# A request that could not be decoded is logged at most once per (method, cause) in this
# many seconds; the next record says how many were not logged.
DECODE_LOG_INTERVAL_S = 60.0


class _Rejected:
    """What the guarded deserializer returns for a request it will not hand a servicer."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _DecodeLog:
    """Rate-limited warnings for requests that do not decode: one record per cause."""

    def __init__(self, interval_s: float = DECODE_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        # (method, cause) -> (monotonic time of the last record, requests since it)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def note(self, method: str, cause: str) -> None:
        key = (method, cause)
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return
        if len(self._seen) > 1024:  # bounded whatever the causes
            self._seen.clear()
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        log.warning(
            "undecodable request to %s: %s",
            method,
            cause,
            extra={
                "grpc_method": method,
                "grpc_code": grpc.StatusCode.INVALID_ARGUMENT.name,
                "not_logged_since_last": suppressed,
            },
        )


_decode_log = _DecodeLog()


def _decode_cause(exc: Exception) -> str:
    """What is wrong with an undecodable message, in words safe to send the client."""
    text = str(exc)
    if "UTF-8" in text:
        return "a string field is not valid UTF-8"
    if "Depth" in text or "recursion" in text.lower() or isinstance(exc, RecursionError):
        return "the message is nested too deeply"
    return "the message is not a valid protobuf encoding"


def _guarded_deserializer(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any]:
    limit = request_limit(method)

    def deserialize(raw: bytes) -> Any:
        if len(raw) > limit:
            return _Rejected(f"request too large: {len(raw)} bytes, at most {limit} for {method}")
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:  # protobuf's DecodeError, RecursionError, ...
            cause = _decode_cause(exc)
            _decode_log.note(method, cause)
            return _Rejected(f"request cannot be decoded: {cause}")

    return deserialize


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream's requests; InvalidArgumentError at the first rejected one."""
    async for request in requests:
        if type(request) is _Rejected:
            raise InvalidArgumentError(request.message)
        yield request


async def _map_error(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    """Abort the RPC for ``exc``. Always raises (whatever context.abort raises)."""
    if isinstance(exc, HeliosError):
        message = bounded_message(exc.message)
        extra = {"grpc_method": method, "grpc_code": exc.code.name}
        if exc.reason is not None:
            extra["reason"] = exc.reason
        log.debug("%s -> %s: %s", method, exc.code.name, message, extra=extra)
        await grpc_errors.abort(context, exc, message)
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


def _checked(request: Any, request_streaming: bool) -> Any:
    """The request a servicer gets: a client stream checked message by message; a single
    rejected message raised here (inside the wrapper, so it is mapped)."""
    if request_streaming:
        return _checked_requests(request)
    if type(request) is _Rejected:
        raise InvalidArgumentError(request.message)
    return request


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    service, name = split_method(method)
    metrics = MethodMetrics(service, name)
    request_streaming = bool(handler.request_streaming)

    def start(context: grpc.aio.ServicerContext) -> _Recorded:
        observation = RpcObservation(metrics)  # first: it starts the call's clock
        span = RpcSpan(method, service, name, context.invocation_metadata())
        return _Recorded(observation, span, context)

    def unary(behavior: Behavior) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with start(context):
                try:
                    return await call_unary(behavior, _checked(request, request_streaming), context)
                except _PASSTHROUGH:
                    raise
                except Exception as exc:
                    await _map_error(exc, context, method)

        return wrapper

    def stream(behavior: Behavior) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        # Must itself be an async generator: errors raised mid-stream surface while we
        # re-yield, after some responses have already been sent.
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # GeneratorExit reaches the record's exit too: grpc dropped the stream while
            # it was parked at a yield (client cancelled, server stopped).
            with start(context):
                try:
                    result = behavior(_checked(request, request_streaming), context)
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

        return wrapper

    return rewrap(
        handler,
        unary=unary,
        stream=stream,
        request_deserializer=_guarded_deserializer(handler.request_deserializer, method),
    )


class _Recorded:
    """One call's metrics and span: ``with record:`` makes the span current inside and,
    on the way out (returned, raised, cancelled or closed), ends both with the status the
    client sees. A slotted class, not a generator-based context manager: it runs around
    every RPC."""

    __slots__ = ("_context", "_observation", "_span", "_token")

    def __init__(
        self, observation: RpcObservation, span: RpcSpan, context: grpc.aio.ServicerContext
    ) -> None:
        self._observation = observation
        self._span = span
        self._context = context
        self._token: object | None = None

    def __enter__(self) -> None:
        self._token = self._span.enter()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        self._span.exit(self._token)
        code = final_code(self._context, exc)
        self._observation.finish(code)
        self._span.finish(code)
