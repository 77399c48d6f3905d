"""Disaggregated serving: Prefill on a prefill-pool worker, Decode on a decode-pool worker.

Domain only (no protobuf). Whoever drives a request -- the proxy for a cold request,
with both phases on other workers; a decode-role worker for a warm request Envoy routed
to it, with Decode on itself -- gives a :class:`DisaggregatedRun` its pools and calls as
:class:`Workers`, and the run

1. calls Prefill on a prefill worker: it computes the prompt's KV cache and the first
   token, and parks the cache under a handle;
2. hands that first step on at once (time to first token is prefill's);
3. calls Decode on a decode worker with the handle, the address of the prefill worker
   and the first token id; the decode worker pulls the cache straight from the prefill
   worker (TransferKVCache; it never goes through the driver) and streams the rest.

Failures. A Prefill failure is a failure before the first token: the run tries another
prefill worker (one the pools give, never one that failed this request), and fails with
:class:`DisaggregationFailed` when none is left. A Decode that fails before its first
step was handed on is run again on another decode worker. A KV cache can be fetched once
and the failed decode may already have taken it, so a retry never reuses the handle: it
runs Prefill again (on a healthy prefill worker) for a fresh cache of the same prompt and
resumes from the first token the client already has. The cache holds the prompt's
positions only, so the resumed generation is exactly the one the first token started,
whatever the new Prefill sampled. Retryable failures are UNAVAILABLE (the worker failed:
:meth:`Workers.failed` is told), NOT_FOUND (the cache expired or was taken, the model is
not there) and FAILED_PRECONDITION (the worker does not serve that phase, the model is
not ready there); either way that worker is not asked again for this request. Any other
error is the request's own (INVALID_ARGUMENT: a prompt too long) and ends it as it is.
After a decode step was handed on, a failure ends the request like any failure after
the first token (REST error event, gRPC UNAVAILABLE).

Cancellation. Closing the step stream cancels whichever call is running: the Prefill
call (the worker stops computing) or the Decode stream (the decode worker aborts its
engine request). A cache parked by a Prefill whose Decode never started expires on the
prefill worker after its TTL.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, Set
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from openai_compat.backend import Step
from openai_compat.params import Job
from runtime.errors import (
    DisaggregationFailed,
    FailedPreconditionError,
    HeliosError,
    NotFoundError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Errors another worker of the same phase may not have: the worker failed, the cache is
# gone, the worker does not serve the phase or the model now.
RETRYABLE = (UnavailableError, NotFoundError, FailedPreconditionError)


class Phase(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class PrefillResult:
    """What a Prefill call returned."""

    first: Step
    first_token_id: int | None  # None only when ``first`` already ends the generation
    kv_handle: str  # "" when ``first`` already ends the generation
    prefill_worker: str  # the address the decode worker fetches the cache from


@dataclass(frozen=True)
class PrefillPeer:
    """One prefill worker of a model's prefill pool, with its load for that model at its
    last heartbeat (what the control plane hands a decode worker)."""

    address: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


class Workers(Protocol):
    """What a run needs from its driver: the pools and the two calls."""

    def pick(self, phase: Phase, exclude: Set[str]) -> str | None:
        """A worker of ``phase`` other than ``exclude`` for this request's model, or
        None when there is none."""
        ...

    async def prefill(self, address: str, job: Job, deadline_s: float | None) -> PrefillResult:
        """Prefill ``job`` on ``address``."""
        ...

    def decode(
        self,
        address: str,
        job: Job,
        kv: PrefillResult,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        """Decode ``job`` on ``address`` from ``kv``; closing it aborts the decode."""
        ...

    def succeeded(self, address: str) -> None:
        """A call to ``address`` served its phase."""
        ...

    def failed(self, address: str) -> None:
        """A call to ``address`` failed because of the worker (UNAVAILABLE)."""
        ...

    def retried(self, phase: Phase) -> None:
        """The run is about to try ``phase`` again elsewhere (metrics)."""
        ...


class DisaggregatedRun:
    """One request through a prefill worker and a decode worker."""

    def __init__(
        self,
        workers: Workers,
        job: Job,
        deadline_at: float | None,
        prefill_address: str,
        decode_address: str,
        *,
        max_retries: int,
        retry_backoff_s: float,
    ) -> None:
        self.workers = workers
        self.job = job
        self.deadline_at = deadline_at
        self.prefill_address = prefill_address
        self.decode_address = decode_address
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._failed: dict[Phase, set[str]] = {Phase.PREFILL: set(), Phase.DECODE: set()}
        self._retries = 0

    def _remaining(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    async def _retry(self, phase: Phase, address: str, error: HeliosError) -> None:
        """Count a retry of ``phase`` (whose worker ``address`` failed with ``error``)
        and wait its backoff; the caller has checked that one is allowed."""
        self._retries += 1
        self.workers.retried(phase)
        logger.warning(
            "disaggregated %s failed before the first token reached the client; retrying",
            phase.value,
            extra={
                "request_id": self.job.request_id,
                "worker": address,
                "phase": phase.value,
                "attempt": self._retries,
                "error": error.message,
            },
        )
        await asyncio.sleep(self.retry_backoff_s * 2 ** (self._retries - 1))

    def _record_failure(self, phase: Phase, address: str, error: HeliosError) -> None:
        self._failed[phase].add(address)
        if isinstance(error, UnavailableError):
            self.workers.failed(address)

    async def _first_prefill(self) -> PrefillResult:
        """Prefill on the first prefill worker that serves it."""
        address = self.prefill_address
        while True:
            try:
                result = await self.workers.prefill(address, self.job, self._remaining())
            except RETRYABLE as exc:
                self._record_failure(Phase.PREFILL, address, exc)
                following = self.workers.pick(Phase.PREFILL, self._failed[Phase.PREFILL])
                if following is None or self._retries >= self.max_retries:
                    raise DisaggregationFailed(
                        f"prefill failed: {exc.message}", frozenset({address})
                    ) from exc
                await self._retry(Phase.PREFILL, address, exc)
                address = following
                continue
            self.prefill_address = address
            return result

    async def steps(self) -> AsyncGenerator[Step, None]:
        """The request's steps: Prefill's first, then Decode's."""
        prefilled = await self._first_prefill()
        prefill_address = self.prefill_address
        logger.debug(
            "prefilled",
            extra={"request_id": self.job.request_id, "worker": prefill_address},
        )
        yield prefilled.first
        self.workers.succeeded(prefill_address)
        if prefilled.first.finish_reason is not None:
            return
        if prefilled.first_token_id is None or not prefilled.kv_handle:
            raise DisaggregationFailed(
                f"prefill worker {prefill_address} parked no KV cache for an unfinished generation",
                frozenset({prefill_address}),
            )
        first_token_id = prefilled.first_token_id
        kv: PrefillResult | None = prefilled
        decode_address = self.decode_address
        while True:
            sent = False
            phase = Phase.DECODE
            try:
                if kv is None:
                    # A retry: a fresh cache of the same prompt (the old handle may be
                    # taken already); its own first token is not used.
                    phase = Phase.PREFILL
                    kv = await self.workers.prefill(prefill_address, self.job, self._remaining())
                    if not kv.kv_handle:
                        raise UnavailableError(
                            "the generation cannot resume: a second prefill of the prompt"
                            " ended it (sampled an end of sequence)"
                        )
                    self.workers.succeeded(prefill_address)
                    phase = Phase.DECODE
                decoded = self.workers.decode(
                    decode_address, self.job, kv, first_token_id, self._remaining()
                )
                async with aclosing(decoded):
                    async for step in decoded:
                        if step.text or step.finish_reason is not None:
                            sent = True
                        yield step
                self.workers.succeeded(decode_address)
                return
            except RETRYABLE as exc:
                failed = prefill_address if phase is Phase.PREFILL else decode_address
                self._record_failure(phase, failed, exc)
                if sent or self._retries >= self.max_retries:
                    raise DisaggregationFailed(
                        f"{phase.value} failed: {exc.message}", frozenset({failed})
                    ) from exc
                next_prefill = self.workers.pick(Phase.PREFILL, self._failed[Phase.PREFILL])
                next_decode = self.workers.pick(Phase.DECODE, self._failed[Phase.DECODE])
                if next_prefill is None or next_decode is None:
                    raise DisaggregationFailed(
                        f"{phase.value} failed and no other worker can take over: {exc.message}",
                        frozenset({failed}),
                    ) from exc
                await self._retry(phase, failed, exc)
                prefill_address, decode_address, kv = next_prefill, next_decode, None
