"""The one domain exception hierarchy shared by every Helios service.

Domain code raises these; the error interceptor in :mod:`runtime.interceptors` maps
them to gRPC status codes at the edge. Anything that is not a ``HeliosError`` becomes
INTERNAL with a generic message (and is logged with its traceback), so a user's mistake
must always be raised as one of the client-side errors below, never left to bubble up.
"""

from __future__ import annotations

import math

import grpc


class HeliosError(Exception):
    """Base of every error a Helios service raises on purpose."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(HeliosError):
    """The request itself is wrong (a field is missing, out of range, malformed)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(HeliosError):
    """A named thing (model, version, file) does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(HeliosError):
    """The thing being created exists already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(HeliosError):
    """The caller may not do this (e.g. name a server path outside the configured roots)."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class FailedPreconditionError(HeliosError):
    """The system is not in a state where the request can run (e.g. model not loaded)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(HeliosError):
    """Capacity is used up: memory, queue slots, rate limits. ``retry_after``: whole
    seconds a client should wait before trying again, when known (servicers send it as a
    ``retry-after`` trailer, which Envoy turns into HTTP's Retry-After)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))


class UnavailableError(HeliosError):
    """A dependency is down or not ready; retrying later may succeed."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(HeliosError):
    """The work did not finish before its deadline."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(HeliosError):
    """The RPC exists in the contract but this service does not implement it yet."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


_ERRORS_BY_CODE: dict[grpc.StatusCode, type[HeliosError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnimplementedError,
    )
}


def error_from_status(code: grpc.StatusCode, message: str) -> HeliosError:
    """The domain error for a status a downstream service answered with.

    A caller relaying a downstream failure keeps its meaning: a worker's INVALID_ARGUMENT
    stays the user's mistake. Codes with no client-side meaning (INTERNAL, UNKNOWN, ...)
    become UNAVAILABLE: the dependency failed, not the request.
    """
    error_class = _ERRORS_BY_CODE.get(code, UnavailableError)
    return error_class(message)
