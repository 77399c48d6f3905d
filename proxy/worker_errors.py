"""Whose fault a failed worker call is: the worker's, or the request's.

Only the worker's own failures count against its health (it is out of routing until its
next heartbeat answers, :meth:`proxy.fleet.WorkerPool.record_request_failure`):
UNAVAILABLE (connection refused or lost, engine dead),
INTERNAL and UNKNOWN (the engine or the process failed), DATA_LOSS, and a
DEADLINE_EXCEEDED that the worker raised itself before the caller's deadline. They come
back as :class:`~runtime.errors.UnavailableError`, which is what the proxy counts.

Everything else is the request's own outcome, which the worker answered correctly:
INVALID_ARGUMENT (a bad sampling value, an over-long prompt), NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED, PERMISSION_DENIED,
UNAUTHENTICATED, ABORTED, CANCELLED, UNIMPLEMENTED, and a DEADLINE_EXCEEDED of the
caller's own deadline. It reaches the client with its status unchanged and is never
counted: one client's bad
requests must not take a worker out of rotation for everyone else (issue 16).
"""

from __future__ import annotations

import time

from runtime.errors import (
    ErrorCode,
    HeliosError,
    RelayedError,
    UnavailableError,
    error_from_code,
)

__all__ = ["WORKER_FAILURE_CODES", "relay_error"]

# Codes that mean the worker (its engine, its process or the way to it) failed.
WORKER_FAILURE_CODES = frozenset(
    {
        ErrorCode.UNAVAILABLE,
        ErrorCode.INTERNAL,
        ErrorCode.UNKNOWN,
        ErrorCode.DATA_LOSS,
    }
)

# A DEADLINE_EXCEEDED arriving this close to (or after) the caller's deadline is that
# deadline expiring (the client's budget), not the worker timing out on its own.
_DEADLINE_SLACK_S = 0.05


def relay_error(
    address: str,
    code: ErrorCode,
    details: str | None,
    *,
    deadline_at: float | None = None,
    now: float | None = None,
) -> HeliosError:
    """The domain error for a worker's failed call (``code``: its status as a domain
    code, :func:`runtime.grpc_errors.error_code`): UnavailableError when the worker
    failed (counted against it), else the request's own error with its code.

    ``deadline_at`` (time.monotonic()) is when the caller's own deadline for the call
    expires, None when it set none: a DEADLINE_EXCEEDED well before it is the worker's.
    """
    message = details or code.name
    if code is ErrorCode.DEADLINE_EXCEEDED:
        now = time.monotonic() if now is None else now
        if deadline_at is None or now < deadline_at - _DEADLINE_SLACK_S:
            return UnavailableError(f"worker {address} timed out: {message}")
        return error_from_code(code, message)
    if code in WORKER_FAILURE_CODES:
        return UnavailableError(f"worker {address} failed: {message}")
    error = error_from_code(code, message)
    if isinstance(error, UnavailableError):
        # error_from_code calls codes it has no class for a dependency failure; from a
        # worker that answered, they are the request's outcome: keep the code.
        return RelayedError(code, message)
    return error
