"""Disaggregated serving driven by the proxy: Prefill on a prefill-pool worker, Decode on
a decode-pool worker, both reached through :class:`~proxy.fleet.WorkerConnection`.

Domain only. Envoy routes a model with a prefill pool to its decode workers, which run
the prefill themselves (worker/disagg.py, no proxy in the path; proxy/xds_snapshot.py);
the proxy drives the two phases only for the requests that reach it -- cold ones, and
native gRPC clients that send no model header. The run itself, with its failure and
cancellation rules, is :mod:`worker_api.disagg`'s, shared with the decode workers; here
are the proxy's pools and calls: the least outstanding worker of each phase
(:meth:`~proxy.fleet.WorkerPool.pick_role`), each call counted as outstanding and
running there, the phases' durations in metrics, and a worker whose call failed
(UNAVAILABLE) out of routing until its next heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Set
from contextlib import AbstractContextManager, aclosing

from openai_compat.backend import Step
from openai_compat.params import Job
from proxy import metrics
from proxy.fleet import WorkerConnection, WorkerPool, WorkerRole
from worker_api.disagg import DisaggregatedRun as SharedRun
from worker_api.disagg import Phase, PrefillResult

__all__ = ["DisaggregatedRun"]

# A phase that failed before the client had a decoded token runs again elsewhere at most
# this many times, after an exponential backoff from this.
DEFAULT_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.05

_ROLES = {Phase.PREFILL: WorkerRole.PREFILL, Phase.DECODE: WorkerRole.DECODE}


class _PoolWorkers:
    """:class:`worker_api.disagg.Workers` over the proxy's fleet, for one model."""

    def __init__(
        self,
        pool: WorkerPool,
        connections: Mapping[str, WorkerConnection],
        active: Callable[[str, str], AbstractContextManager[None]],
        model: str,
    ) -> None:
        self.pool = pool
        self.connections = connections
        self.active = active
        self.model = model

    def pick(self, phase: Phase, exclude: Set[str]) -> str | None:
        return self.pool.pick_role(self.model, _ROLES[phase], exclude)

    async def prefill(self, address: str, job: Job, deadline_s: float | None) -> PrefillResult:
        started = time.monotonic()
        with self.pool.lease(address), self.active(address, self.model):
            result = await self.connections[address].prefill(job, deadline_s)
        metrics.PREFILL_SECONDS.labels(self.model).observe(time.monotonic() - started)
        return result

    async def decode(
        self,
        address: str,
        job: Job,
        kv: PrefillResult,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        started = time.monotonic()
        first = True
        with self.pool.lease(address), self.active(address, self.model):
            steps = self.connections[address].decode(
                job, kv.kv_handle, kv.prefill_worker, first_token_id, deadline_s
            )
            async with aclosing(steps):
                async for step in steps:
                    if first:
                        first = False
                        metrics.KV_HANDOFF_SECONDS.labels(self.model).observe(
                            time.monotonic() - started
                        )
                    yield step
        metrics.DECODE_SECONDS.labels(self.model).observe(time.monotonic() - started)

    def succeeded(self, address: str) -> None:
        """Nothing to do: a heartbeat brings a failed worker back."""

    def failed(self, address: str) -> None:
        self.pool.record_request_failure(address)

    def retried(self, phase: Phase) -> None:
        if phase is Phase.DECODE:  # a failed prefill's retry is only logged
            metrics.DECODE_RETRIES.labels(self.model).inc()


class DisaggregatedRun(SharedRun):
    """One request through a prefill worker and a decode worker of the proxy's fleet."""

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
        max_retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        super().__init__(
            _PoolWorkers(pool, connections, active, job.model),
            job,
            deadline_at,
            prefill_address,
            decode_address,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
        )

    async def steps(self) -> AsyncGenerator[Step, None]:
        metrics.DISAGGREGATED_REQUESTS.labels(self.job.model).inc()
        steps = super().steps()
        async with aclosing(steps):
            async for step in steps:
                yield step
