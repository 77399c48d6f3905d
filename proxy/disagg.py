"""Disaggregated serving: Prefill on a prefill-pool worker, Decode on a decode-pool worker.

Domain only (workers are :class:`~proxy.fleet.WorkerConnection` objects). Envoy does not
route disaggregated models yet: their requests reach the proxy (:mod:`proxy.cold_path`).

When a model is READY in both a prefill pool and a decode pool (worker roles come from
heartbeats, see :class:`~proxy.fleet.WorkerRole`), the proxy

1. calls Prefill on the least outstanding prefill worker: it computes the prompt's KV
   cache and the first token, and parks the cache under a handle;
2. relays that first step to the client at once (time to first token is prefill's);
3. calls Decode on the least outstanding decode worker with the handle, the address of
   the prefill worker and the first token id; the decode worker pulls the cache straight
   from the prefill worker (TransferKVCache; it never goes through the proxy) and
   streams the rest, which the proxy relays.

Otherwise one ``both`` worker serves the whole generation (Generate), as before.

Failures. A Prefill failure is a failure before the first token: the request fails with
UNAVAILABLE and the prefill worker is out of routing until its next heartbeat. A Decode
that fails before its first step reached the client is run again on another decode
worker. A KV cache can be fetched once and the failed decode worker may already
have taken it, so a retry never reuses the handle: it runs Prefill again (on a healthy
prefill worker) for a fresh cache of the same prompt and resumes from the first token
the client already has. The cache holds the prompt's positions only, so the resumed
generation is exactly the one the first token started, whatever the new Prefill sampled.
Decode failures count as failures of the decode worker (UNAVAILABLE: it is marked
unhealthy) or not (NOT_FOUND: the cache expired or was taken; FAILED_PRECONDITION: the
worker does not decode); either way it is not asked again for this request. After a
decode step reached the client, a failure ends the request like any failure after the
first token (REST error event, gRPC UNAVAILABLE).

Cancellation. Closing the step stream cancels whichever call is running: the Prefill
call (the worker stops computing) or the Decode stream (the decode worker aborts its
engine request). A cache parked by a Prefill whose Decode never started expires on the
prefill worker after its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractContextManager, aclosing

from openai_compat.backend import Step
from openai_compat.params import Job
from proxy import metrics
from proxy.fleet import PrefillResult, WorkerConnection, WorkerPool, WorkerRole
from runtime.errors import (
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Decode errors (before the decode's first step reached the client) that another decode
# worker may not have: the worker failed, the cache is gone, the worker does not decode.
_DECODE_RETRYABLE = (UnavailableError, NotFoundError, FailedPreconditionError)
# A decode that failed before its first step reached the client runs again (with a fresh
# prefill) at most this many times, after an exponential backoff from this.
DEFAULT_DECODE_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.05


class DisaggregationFailed(UnavailableError):
    """A disaggregated attempt failed; ``exclude`` names the workers that failed it
    (already marked in the pool), for the caller's retry to avoid."""

    def __init__(self, message: str, exclude: frozenset[str]) -> None:
        super().__init__(message)
        self.exclude = exclude


class DisaggregatedRun:
    """One request through a prefill worker and a decode worker."""

    def __init__(
        self,
        pool: WorkerPool,
        connections: Mapping[str, WorkerConnection],
        active: Callable[[str, str], AbstractContextManager[None]],
        job: Job,
        deadline_at: float | None,
        prefill_address: str,
        decode_address: str,
        *,
        max_retries: int = DEFAULT_DECODE_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        self.pool = pool
        self.connections = connections
        self.active = active
        self.job = job
        self.deadline_at = deadline_at
        self.prefill_address = prefill_address
        self.decode_address = decode_address
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    def _remaining(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    async def _prefill(self, address: str) -> PrefillResult:
        model = self.job.model
        started = time.monotonic()
        with self.pool.lease(address), self.active(address, model):
            result = await self.connections[address].prefill(self.job, self._remaining())
        metrics.PREFILL_SECONDS.labels(model).observe(time.monotonic() - started)
        return result

    async def _decode(
        self, address: str, kv: PrefillResult, first_token_id: int
    ) -> AsyncGenerator[Step, None]:
        model = self.job.model
        started = time.monotonic()
        first = True
        with self.pool.lease(address), self.active(address, model):
            steps = self.connections[address].decode(
                self.job, kv.kv_handle, kv.prefill_worker, first_token_id, self._remaining()
            )
            async with aclosing(steps):
                async for step in steps:
                    if first:
                        first = False
                        metrics.KV_HANDOFF_SECONDS.labels(model).observe(time.monotonic() - started)
                    yield step
        metrics.DECODE_SECONDS.labels(model).observe(time.monotonic() - started)

    async def steps(self) -> AsyncGenerator[Step, None]:
        """The request's steps: Prefill's first, then Decode's."""
        job = self.job
        metrics.DISAGGREGATED_REQUESTS.labels(job.model).inc()
        prefill_address = self.prefill_address
        try:
            prefilled = await self._prefill(prefill_address)
        except UnavailableError as exc:
            self.pool.record_request_failure(prefill_address)
            raise DisaggregationFailed(exc.message, frozenset({prefill_address})) from exc
        logger.debug(
            "prefilled",
            extra={"request_id": job.request_id, "worker": prefill_address},
        )
        yield prefilled.first
        if prefilled.first.finish_reason is not None:
            return
        kv: PrefillResult | None = prefilled
        if prefilled.first_token_id is None or not prefilled.kv_handle:
            raise DisaggregationFailed(
                f"prefill worker {prefill_address} parked no KV cache for an unfinished generation",
                frozenset({prefill_address}),
            )
        first_token_id = prefilled.first_token_id
        decode_address = self.decode_address
        failed_prefill: set[str] = set()
        failed_decode: set[str] = set()
        retries = 0
        while True:
            sent = False
            phase = "decode"
            try:
                if kv is None:
                    # A retry: a fresh cache of the same prompt (the old handle may be
                    # taken already); its own first token is not used.
                    phase = "prefill"
                    kv = await self._prefill(prefill_address)
                    if not kv.kv_handle:
                        raise UnavailableError(
                            "the generation cannot resume: a second prefill of the prompt"
                            " ended it (sampled an end of sequence)"
                        )
                    phase = "decode"
                steps = self._decode(decode_address, kv, first_token_id)
                async with aclosing(steps):
                    async for step in steps:
                        if step.text or step.finish_reason is not None:
                            sent = True
                        yield step
                return
            except _DECODE_RETRYABLE as exc:
                failed = prefill_address if phase == "prefill" else decode_address
                (failed_prefill if phase == "prefill" else failed_decode).add(failed)
                if isinstance(exc, UnavailableError):
                    self.pool.record_request_failure(failed)
                if sent or retries >= self.max_retries:
                    raise DisaggregationFailed(
                        f"{phase} failed: {exc.message}", frozenset({failed})
                    ) from exc
                next_prefill = self.pool.pick_role(job.model, WorkerRole.PREFILL, failed_prefill)
                next_decode = self.pool.pick_role(job.model, WorkerRole.DECODE, failed_decode)
                if next_prefill is None or next_decode is None:
                    raise DisaggregationFailed(
                        f"{phase} failed and no other worker can take over: {exc.message}",
                        frozenset({failed}),
                    ) from exc
                retries += 1
                metrics.DECODE_RETRIES.labels(job.model).inc()
                logger.warning(
                    "disaggregated decode failed before its first token; prefilling again",
                    extra={
                        "request_id": job.request_id,
                        "worker": failed,
                        "phase": phase,
                        "attempt": retries,
                        "error": exc.message,
                    },
                )
                await asyncio.sleep(self.retry_backoff_s * 2 ** (retries - 1))
                prefill_address, decode_address, kv = next_prefill, next_decode, None
