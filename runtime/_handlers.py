"""Plumbing shared by the server interceptors: rebuild a method handler around wrappers.

grpc.aio picks how to drive a handler from its *type*: a coroutine function for unary
responses, an async generator function (or a coroutine that uses ``context.write``) for
streamed ones. The wrappers here are always ``async def`` / async generators, and they
accept every behavior style underneath (coroutine, async generator, ``context.write``
coroutine, plain function or generator), so interceptors stacked on top, OpenTelemetry's
included, always see the shape they expect.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

# A servicer method as grpc stores it: (request_or_iterator, context) -> response(s).
Behavior = Callable[..., Any]


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.rpartition("/")
    return (service or "unknown", method or full_method)


async def call_unary(behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Invoke a unary-response behavior whether it is async or plain."""
    result = behavior(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


async def iterate_result(result: Any) -> AsyncIterator[Any]:
    """Re-yield what a streaming behavior returned, whatever style it is written in."""
    if hasattr(result, "__aiter__"):
        # aclosing: if *our* generator is closed early (client cancelled), close the
        # inner one now so the servicer's finally-blocks run promptly, not at GC time.
        if hasattr(result, "aclose"):
            async with contextlib.aclosing(result) as agen:
                async for item in agen:
                    yield item
        else:
            async for item in result:
                yield item
    elif inspect.isawaitable(result):
        # context.write()-style handler (e.g. grpc's aio Health.Watch): it writes to the
        # call itself; we only wait for it. Mixing write with a generator is fine in aio.
        await result
    elif result is not None:
        for item in result:  # plain generator
            yield item


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Behavior], Any],
    stream: Callable[[Behavior], Any],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behavior is wrapped by ``unary`` or ``stream`` (and
    whose request deserializer is ``request_deserializer`` when given)."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if request_deserializer is not None:
        des = request_deserializer
    # Exactly one behavior is set, the one matching the two streaming flags.
    if handler.request_streaming and handler.response_streaming:
        behavior: Behavior | None = handler.stream_stream
        make: Callable[..., grpc.RpcMethodHandler] = grpc.stream_stream_rpc_method_handler
        wrap = stream
    elif handler.request_streaming:
        behavior, make, wrap = handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary
    elif handler.response_streaming:
        behavior, make, wrap = handler.unary_stream, grpc.unary_stream_rpc_method_handler, stream
    else:
        behavior, make, wrap = handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary
    if behavior is None:  # a malformed handler; let grpc report it as it would have
        return handler
    return make(wrap(behavior), des, ser)
