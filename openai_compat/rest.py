"""OpenAI's streamed chat and completions over plain HTTP/1.1: the worker's REST port,
where Envoy sends a warm model's streamed REST requests (proxy/xds_resources.py routes
them there with the transcoder off).

The request is what Envoy's edge made of the client's: the Lua filter rewrote a streamed
request's path to ``/v1/chat/completions:stream`` or ``/v1/completions:stream`` and set
``x-helios-edge: rest``. The body is the OpenAI JSON, read into the same
``ChatCompletionParams`` / ``CompletionParams`` the transcoder would have made, and
answered by the same :class:`~openai_compat.servicer.InferenceServicer` code as
``Stream*CompletionEvents``: the events are byte for byte those. A failure before the
first event is an HTTP status with the body the transcoder prints for a gRPC status
(``{"code": <gRPC code>, "message": ...}``), which the edge's Lua filter turns into
OpenAI's error shape as it does for every REST error; a failure after it is the stream's
last event. Metrics and spans are those of the equivalent gRPC method, so a dashboard or
trace reads the same whichever port served the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb

from openai_compat.backend import CallInfo
from openai_compat.events import DONE_EVENT, EVENT_STREAM_CONTENT_TYPE
from openai_compat.servicer import InferenceServicer
from runtime.edge_names import REST_STREAM_PATHS
from runtime.errors import ErrorCode, HeliosError, InvalidArgumentError, NotFoundError
from runtime.grpc_errors import grpc_status, retry_after_metadata
from runtime.http_stream import HttpRequest, ResponseWriter
from runtime.interceptors import INTERNAL_MESSAGE
from runtime.limits import bounded_message
from runtime.metrics import MethodMetrics, RpcObservation
from runtime.tracing import RpcSpan

__all__ = ["HTTP_STATUS", "OpenAIRestHandler", "parse_params", "send_error"]

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name

# The HTTP status of each error code: Envoy's gRPC -> HTTP mapping (what a client of the
# transcoded routes gets for the same error).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.CANCELLED: 499,
    ErrorCode.UNKNOWN: 500,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.ABORTED: 409,
    ErrorCode.OUT_OF_RANGE: 400,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DATA_LOSS: 500,
    ErrorCode.UNAUTHENTICATED: 401,
}
_EVENT_HEADERS = (("content-type", EVENT_STREAM_CONTENT_TYPE), ("cache-control", "no-cache"))


@dataclass(frozen=True)
class _StreamRoute:
    """One streamed path: the params message its body is, the servicer's events for
    them, and the gRPC method it answers as (metrics, spans)."""

    params: type[Message]
    events: Callable[[InferenceServicer, Any, CallInfo], AsyncGenerator[bytes, None]]
    method: str  # /helios.v1.InferenceService/<name>
    name: str
    metrics: MethodMetrics


CHAT_PATH, COMPLETIONS_PATH = REST_STREAM_PATHS
# What each path's body is, how the servicer answers it, and as which gRPC method.
_PATHS: dict[str, tuple[type[Message], Callable[..., AsyncGenerator[bytes, None]], str]] = {
    CHAT_PATH: (
        pb.ChatCompletionParams,
        InferenceServicer.chat_events,
        "StreamChatCompletionEvents",
    ),
    COMPLETIONS_PATH: (
        pb.CompletionParams,
        InferenceServicer.completion_events,
        "StreamCompletionEvents",
    ),
}


def send_error(response: ResponseWriter, error: HeliosError) -> None:
    """``error`` as the transcoder prints a gRPC status: its HTTP status, a JSON body with
    the gRPC code and message, and Retry-After when the error knows the wait."""
    body = json.dumps(
        {"code": grpc_status(error.code).value[0], "message": bounded_message(error.message)}
    ).encode()
    headers = [("content-type", "application/json"), *retry_after_metadata(error)]
    response.send(HTTP_STATUS[error.code], headers, body)


def parse_params(params: type[Message], body: bytes) -> Message:
    """The request body as ``params`` (InvalidArgumentError when it is not one), read as
    the transcoder reads it."""
    message = params()
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgumentError("request: the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"request: the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError("request: the body is not a JSON object")
    try:
        # Fields the contract does not name are ignored, as the transcoder ignores them
        # (clients send vendor fields); the servicer refuses named ones it does not serve.
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgumentError(_field_error(str(exc))) from None
    return message


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
# Where json_format says the error is: " at <Message>.<field>.<field>".
_AT_PATH = re.compile(r"\s+at ([\w.\[\]]+?)\.*$")


def _field_error(text: str) -> str:
    """json_format's error as Helios words a validation error: the field first (its path,
    or ``request`` for the body as a whole), then what is wrong, without Python's words
    for types."""
    at = _AT_PATH.search(text)
    if at is not None:
        where = ".".join(at.group(1).split(".")[1:])  # less the message's type name
        text = text[: at.start()]
    else:
        where = ".".join(_FAILED_FIELD.findall(text))
    detail = _FAILED_FIELD.sub("", text).strip().rstrip(".")
    if "<class '" in detail or not detail:
        detail = "a value of the wrong type"
    return f"{where or 'request'}: {detail}"


class OpenAIRestHandler:
    """The handler of the worker's REST port (:mod:`runtime.http_stream`)."""

    def __init__(self, servicer: InferenceServicer) -> None:
        self.servicer = servicer
        self._routes = {
            path: _StreamRoute(
                params, events, f"/{SERVICE}/{name}", name, MethodMetrics(SERVICE, name)
            )
            for path, (params, events, name) in _PATHS.items()
        }

    async def __call__(self, request: HttpRequest, response: ResponseWriter) -> None:
        route = self._routes.get(request.path)
        if route is None:
            send_error(response, NotFoundError("no such path on this server"))
            return
        if request.method != "POST":
            body = json.dumps({"message": f"{request.method[:16]} is not allowed here; POST"})
            response.send(405, [("allow", "POST")], body.encode())
            return
        observation = RpcObservation(route.metrics)
        span = RpcSpan(route.method, SERVICE, route.name, request.headers)
        token = span.enter()
        code = grpc.StatusCode.OK.name
        try:
            code = await self._stream(route, request, response)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            span.exit(token)
            observation.finish(code)
            span.finish(code)

    async def _stream(
        self, route: _StreamRoute, request: HttpRequest, response: ResponseWriter
    ) -> str:
        """Answer one streamed request; the final status code's name."""
        try:
            params = parse_params(route.params, request.body)
            # No deadline: the edge drops a REST client's grpc-timeout (its idle timeout
            # applies); the headers are the call's metadata (API key, trace, edge mark).
            call = CallInfo(deadline_s=None, metadata=request.headers)
            events = route.events(self.servicer, params, call)
            async with aclosing(events):
                try:
                    first = await anext(events)
                except StopAsyncIteration:  # pragma: no cover - [DONE] always comes
                    first = b""
                response.start(200, _EVENT_HEADERS)
                response.write(first)  # with the status line and headers: one write
                last = b""
                async for data in events:
                    if data == DONE_EVENT:  # the last event: written with the body's end
                        last = data
                        continue
                    response.write(data)
                    if response.must_drain:
                        await response.drain()
                response.end(last)
        except HeliosError as error:
            if response.started:  # the servicer prints later failures as events
                raise
            logger.debug(
                "%s -> %s: %s",
                route.method,
                error.code.name,
                error.message,
                extra={"grpc_method": route.method, "grpc_code": error.code.name},
            )
            send_error(response, error)
            return error.code.name
        except (ConnectionResetError, BrokenPipeError):
            return grpc.StatusCode.CANCELLED.name  # the client went away
        except Exception:
            if response.started:  # the server cuts the connection: the client sees a reset
                raise
            logger.exception("unhandled error in %s", route.method)
            send_error(response, HeliosError(INTERNAL_MESSAGE, code=ErrorCode.INTERNAL))
            return grpc.StatusCode.INTERNAL.name
        return grpc.StatusCode.OK.name
