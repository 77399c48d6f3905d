"""The one domain exception hierarchy shared by every Helios service.

Domain code raises these; it says what went wrong in transport-neutral terms (an
:class:`ErrorCode`, a message, and optionally a machine-readable ``reason`` and a
``retry_after_s`` hint). Turning that into a wire answer is the edges' job:
:mod:`runtime.grpc_errors` (used by the interceptor in :mod:`runtime.interceptors`) for
gRPC statuses and trailers, :mod:`openai_compat.protocol` for OpenAI's error objects.
So this module imports neither grpc nor any service package, and every ``HeliosError``
subclass is defined here, the generic ones and those only one service raises: no error
class can carry a transport's status. When such an error is raised stays that service's
decision.

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


class UnauthenticatedError(HeliosError):
    """No credentials, or ones nobody knows (the proxy: no API key, or an unknown one)."""

    code = ErrorCode.UNAUTHENTICATED


class DataLossError(HeliosError):
    """Content whose hash does not match the one it is supposed to have: a blob's bytes
    against their name or a manifest's per-chunk hashes (registry), the bytes a source
    served against the manifest (storaged). Nothing built from them is kept."""

    code = ErrorCode.DATA_LOSS


# Errors of one service's domain: raised there, defined here with the rest.


class BlobStoreError(UnavailableError):
    """The registry's blob store failed (network, disk); retrying may succeed."""


class HubPermissionError(PermissionDeniedError):
    """The Hugging Face Hub refused the token (401/403, gated repo)."""


class ShedError(ResourceExhaustedError):
    """The proxy rate limited a request (``reason`` :data:`proxy.limits.RATE_LIMIT`) or
    shed it at a full queue (:data:`proxy.limits.QUEUE_FULL`); ``retry_after_s`` is the
    seconds a client should wait."""

    def __init__(self, message: str, *, reason: str, retry_after_s: float) -> None:
        super().__init__(message, reason=reason, retry_after_s=retry_after_s)


class RelayedError(HeliosError):
    """A worker's answer about the request whose code has no domain class of its own
    (OUT_OF_RANGE, CANCELLED, ABORTED, ...): relayed to the client with that code
    (:func:`proxy.worker_errors.relay_error`)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)


class EngineError(HeliosError):
    """A recoverable failure of one request in a worker's engine; the engine keeps
    serving others."""


class EngineDeadError(UnavailableError):
    """A worker's engine can no longer serve anything; the worker must report itself
    unhealthy."""


class DisaggregationFailed(UnavailableError):
    """A disaggregated attempt (:class:`worker_api.disagg.DisaggregatedRun`) failed;
    ``exclude`` names the workers that failed it (the driver was told of those that
    failed themselves), for a retry to avoid."""

    def __init__(self, message: str, exclude: frozenset[str]) -> None:
        super().__init__(message)
        self.exclude = exclude


# The classes a relayed code becomes (see error_from_code). DATA_LOSS and UNAUTHENTICATED
# have classes but no client-side meaning downstream: they relay as UNAVAILABLE.
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
