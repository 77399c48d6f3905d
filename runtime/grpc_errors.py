"""Domain errors and gRPC, the one place they meet.

:mod:`runtime.errors` is transport neutral; this module is its gRPC mapping, both ways:

- out (servers): :func:`abort` turns a :class:`~runtime.errors.HeliosError` into the
  RPC's status, its message, and a ``retry-after`` trailer when the error knows the wait
  (Envoy turns that trailer into HTTP's Retry-After). Only the runtime interceptor calls
  it, so every service answers the same way and no servicer sets trailers itself.
- in (clients): :func:`error_code` and :func:`error_from_status` turn a status a
  downstream service answered with into an :class:`~runtime.errors.ErrorCode` or a
  domain error, so a client keeps no code table of its own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from types import MappingProxyType

import grpc
import grpc.aio

from runtime.errors import ErrorCode, HeliosError, UnavailableError, error_from_code

__all__ = [
    "RETRY_AFTER_METADATA",
    "STATUS_BY_CODE",
    "abort",
    "error_code",
    "error_from_rpc",
    "error_from_status",
    "grpc_status",
    "relayed_error",
    "retry_after_metadata",
]

# The trailer a refused call carries (whole seconds); Envoy copies it to Retry-After.
RETRY_AFTER_METADATA = "retry-after"

# Spelled out rather than looked up by name: a code added to ErrorCode without a status
# must fail the test that walks this table, not at the first RPC that raises it.
STATUS_BY_CODE: Mapping[ErrorCode, grpc.StatusCode] = MappingProxyType(
    {
        ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
        ErrorCode.UNKNOWN: grpc.StatusCode.UNKNOWN,
        ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
        ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
        ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
        ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
        ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
        ErrorCode.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
        ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
        ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
        ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        ErrorCode.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
        ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    }
)
_CODE_BY_STATUS: Mapping[grpc.StatusCode, ErrorCode] = MappingProxyType(
    {status: code for code, status in STATUS_BY_CODE.items()}
)


def grpc_status(code: ErrorCode) -> grpc.StatusCode:
    """The gRPC status an error with ``code`` is answered with."""
    return STATUS_BY_CODE[code]


def error_code(status: grpc.StatusCode) -> ErrorCode:
    """The domain code of a status a downstream service answered with (OK, which no
    failed call carries, is UNKNOWN)."""
    return _CODE_BY_STATUS.get(status, ErrorCode.UNKNOWN)


def error_from_status(status: grpc.StatusCode, message: str) -> HeliosError:
    """The domain error for a downstream status (see
    :func:`runtime.errors.error_from_code`: codes with no client-side meaning become
    UNAVAILABLE)."""
    return error_from_code(error_code(status), message)


def error_from_rpc(error: grpc.aio.AioRpcError) -> HeliosError:
    """The domain error for a failed call, its details as the message (the status's
    name when the service sent none)."""
    status = error.code()
    return error_from_status(status, error.details() or status.name)


def relayed_error(
    error: grpc.aio.AioRpcError, call: str, kept: Collection[ErrorCode]
) -> HeliosError:
    """The domain error for a failed ``call`` (what was asked of whom) to a dependency
    whose ``kept`` codes are about the request and keep their meaning; any other code is
    the dependency failing (UNAVAILABLE). The message names the call, status and details."""
    status = error.code()
    message = f"{call} failed: {status.name}: {error.details()}"
    code = error_code(status)
    return error_from_code(code, message) if code in kept else UnavailableError(message)


def retry_after_metadata(error: HeliosError) -> tuple[tuple[str, str], ...]:
    """The trailers for ``error``: ``retry-after`` in whole seconds (rounded up, at
    least 1: HTTP's Retry-After has no fractions, and 0 would invite a retry storm) when
    it knows the wait, else none."""
    if error.retry_after_s is None:
        return ()
    return ((RETRY_AFTER_METADATA, str(max(1, math.ceil(error.retry_after_s)))),)


async def abort(context: grpc.aio.ServicerContext, error: HeliosError, message: str) -> None:
    """End the RPC with ``error``'s status, ``message`` (the error's, maybe cut to size)
    and its trailers. Raises whatever ``context.abort`` raises."""
    trailers = retry_after_metadata(error)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(grpc_status(error.code), message)
