"""The one domain exception hierarchy shared by every Helios service.

Domain code raises these; it says what went wrong in transport-neutral terms (an
:class:`ErrorCode`, a message, and optionally a machine-readable ``reason`` and a
``retry_after_s`` hint). Turning that into a wire answer is the edges' job:
:mod:`runtime.grpc_errors` (used by the interceptor in :mod:`runtime.interceptors`) for
gRPC statuses and trailers, :mod:`openai_compat.protocol` for OpenAI's error objects.
So this module never imports grpc, and neither does any domain module defining a
subclass.

Anything that is not a ``HeliosError`` becomes INTERNAL with a generic message (and is
logged with its traceback), so a user's mistake must always be raised as one of the
client-side errors below, never left to bubble up.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """What kind of failure an error is, independent of any transport.

    The names are gRPC's canonical codes (less OK), so every one has a gRPC status and
    an HTTP meaning; the value is the name (what logs and OpenAI error objects show).
    """

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class HeliosError(Exception):
    """Base of every error a Helios service raises on purpose.

    ``code`` is the class's own unless one is given (an error relayed from another
    service keeps that service's code). ``reason``: a short machine-readable cause for
    metrics and callers that branch on it (e.g. the proxy's shed reasons), never parsed
    out of ``message``. ``retry_after_s``: seconds a client should wait before trying
    again, when known (the gRPC edge sends it as a ``retry-after`` trailer, which Envoy
    turns into HTTP's Retry-After).
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        reason: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s


class InvalidArgumentError(HeliosError):
    """The request itself is wrong (a field is missing, out of range, malformed)."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(HeliosError):
    """A named thing (model, version, file) does not exist."""

    code = ErrorCode.NOT_FOUND


class AlreadyExistsError(HeliosError):
    """The thing being created exists already."""

    code = ErrorCode.ALREADY_EXISTS


class PermissionDeniedError(HeliosError):
    """The caller may not do this (e.g. name a server path outside the configured roots)."""

    code = ErrorCode.PERMISSION_DENIED


class FailedPreconditionError(HeliosError):
    """The system is not in a state where the request can run (e.g. model not loaded)."""

    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhaustedError(HeliosError):
    """Capacity is used up: memory, queue slots, rate limits. Give ``retry_after_s``
    when the wait is known."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class UnavailableError(HeliosError):
    """A dependency is down or not ready; retrying later may succeed."""

    code = ErrorCode.UNAVAILABLE


class DeadlineExceededError(HeliosError):
    """The work did not finish before its deadline."""

    code = ErrorCode.DEADLINE_EXCEEDED


class UnimplementedError(HeliosError):
    """The RPC exists in the contract but this service does not implement it yet."""

    code = ErrorCode.UNIMPLEMENTED


# The classes a relayed code becomes (see error_from_code).
_RELAYED_CLASSES: dict[ErrorCode, type[HeliosError]] = {
    cls.code: cls
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


def error_from_code(code: ErrorCode, message: str) -> HeliosError:
    """The domain error for a code a downstream service answered with.

    A caller relaying a downstream failure keeps its meaning: a worker's INVALID_ARGUMENT
    stays the user's mistake. Codes with no client-side meaning here (INTERNAL, UNKNOWN,
    DATA_LOSS, ...) become UNAVAILABLE: the dependency failed, not the request.
    """
    error_class = _RELAYED_CLASSES.get(code, UnavailableError)
    return error_class(message)
