"""One request served from a model on this worker, as its usage figures see it: how it
ended, and how a failure of the engine reaches the client. Generations
(worker.inference) and embeddings (worker.embeddings) are counted the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from runtime.errors import ErrorCode, HeliosError, UnavailableError
from worker.engine.base import FinishReason
from worker.metrics import ModelUsage

__all__ = ["RequestEnding", "counted_request"]

# How a request ended when it neither finished nor was abandoned by its client.
_ERROR = "error"


class RequestEnding:
    """How a request ended: its finish reason once it has one, ``error`` until then."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: FinishReason | str = _ERROR


def _raise_engine_failure(error: HeliosError, model: str) -> NoReturn:
    """Raise ``error`` from serving ``model`` here, an engine's failure (INTERNAL) as
    UNAVAILABLE: the engine failed, not the request, so it is retryable elsewhere, as
    when the proxy relayed it."""
    if error.code is ErrorCode.INTERNAL:
        raise UnavailableError(f"model {model}: {error.message}") from error
    raise error


@contextmanager
def counted_request(usage: ModelUsage, model: str, ending: RequestEnding) -> Iterator[None]:
    """Serve one request of ``model`` in the body, counted in ``usage``: it arrives on
    entry and ends on exit, however it leaves, with the reason the body set in
    ``ending`` (the caller's, for what it does after the request ended). A client that
    left (the task cancelled, the stream closed) before the body set one ended it with
    ABORT; a HeliosError is raised as :func:`_raise_engine_failure` says."""
    usage.arrived()
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        # A client that hangs up right after the last chunk still got a finished request.
        if ending.reason == _ERROR:
            ending.reason = FinishReason.ABORT
        raise
    except HeliosError as error:
        _raise_engine_failure(error, model)
    finally:
        usage.ended(ending.reason)
