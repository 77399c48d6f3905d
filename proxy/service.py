"""Serving a validated job: pick a worker, relay its stream, keep the agents current.

Domain only: workers are reached through the :class:`WorkerConnection` protocol, which
``proxy.worker_client`` implements over gRPC.

Resilience: a worker that fails before any token reached the client is retried on
another replica (or a fresh load elsewhere), with exponential backoff, up to
``max_retries`` times; after the first token a failure ends the request (an error event
for REST, UNAVAILABLE for gRPC) and the agent is marked unhealthy so the next request
goes elsewhere. The remaining deadline travels to the worker with every call.

Disaggregated serving: when the model is READY in a prefill pool and a decode pool,
Prefill runs on one worker and Decode on another (:mod:`proxy.disagg`, which also says
how its failures are retried); otherwise one worker serves the whole generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from openai_compat.backend import Step, collect, merge_steps
from openai_compat.params import Job
from proxy import metrics
from proxy.control import ControlPlane
from proxy.disagg import DisaggregatedRun, DisaggregationFailed, PrefillResult
from proxy.discovery import DiscoverySource
from proxy.limits import Admission, ApiKeys, ShedError
from proxy.policies import RouteHint
from proxy.registry import UsageReporter
from proxy.routing import AgentState, CacheLevel, CircuitState, ModelOnAgent, WorkerPool, WorkerRole
from proxy.served import ServedLedger, ServedTotals
from runtime.errors import HeliosError, UnavailableError
from runtime.streams import coalesce

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.05


@dataclass(frozen=True)
class WorkerStatus:
    """What one heartbeat says."""

    worker_id: str
    ready_models: tuple[str, ...]
    known_models: tuple[str, ...]
    healthy: bool
    models: tuple[ModelOnAgent, ...] = ()
    state: AgentState | None = None
    memory_total: int = 0
    memory_free: int = 0
    memory_source: str = ""
    queue_depth: int = 0
    role: WorkerRole = WorkerRole.BOTH
    # What the worker's node storaged holds: model id -> fastest tier.
    stored: dict[str, CacheLevel] = field(default_factory=dict)
    # What the worker served itself (its InferenceService), per model, cumulative.
    served: dict[str, ServedTotals] = field(default_factory=dict)


class WorkerConnection(Protocol):
    """How the proxy talks to one worker."""

    def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]: ...

    async def prefill(self, job: Job, deadline_s: float | None) -> PrefillResult:
        """The prompt's first step and where its KV cache is parked."""
        ...

    def decode(
        self,
        job: Job,
        kv_handle: str,
        prefill_worker: str,
        first_token_id: int,
        deadline_s: float | None,
    ) -> AsyncGenerator[Step, None]:
        """The steps after the first, continuing from a parked KV cache."""
        ...

    async def heartbeat(self, deadline_s: float) -> WorkerStatus: ...

    def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        """The model's states ("loading", "ready", ...) as the worker reports them."""
        ...

    async def unload_model(self, model: str, drain_s: float) -> int: ...

    async def close(self) -> None: ...


def _record_finished(model: metrics.ModelMetrics, last: Step, first_token_at: float | None) -> None:
    model.generated_tokens.inc(last.completion_tokens)
    model.prompt_tokens.inc(last.prompt_tokens)
    if first_token_at is not None and last.completion_tokens > 1:
        per_token = (time.monotonic() - first_token_at) / (last.completion_tokens - 1)
        model.time_per_output_token.observe(per_token)


@dataclass
class RequestContext:
    """What the edge knows of a request besides the job."""

    deadline_s: float | None = None
    hint: RouteHint = field(default_factory=RouteHint)
    authorization: str | None = None


class CompletionRouter:
    """Routes jobs to workers and keeps their view fresh with heartbeats."""

    def __init__(
        self,
        pool: WorkerPool,
        connect: Callable[[str], WorkerConnection],
        *,
        heartbeat_interval: float = 1.0,
        discovery: DiscoverySource | None = None,
        control: ControlPlane | None = None,
        api_keys: ApiKeys | None = None,
        admission: Admission | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        usage: UsageReporter | None = None,
    ) -> None:
        self.pool = pool
        self._connect = connect
        self.connections: dict[str, WorkerConnection] = {
            address: connect(address) for address in pool.addresses
        }
        self._discovery = discovery
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_task: asyncio.Task[None] | None = None
        if control is None:
            from proxy.estimate import MemoryEstimator

            control = ControlPlane(pool, self.connections, (), MemoryEstimator())
        self.control = control
        self.api_keys = api_keys or ApiKeys()
        self.admission = admission or Admission(0)
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.usage = usage  # finished requests go to the registry, batched in the background
        self._served = ServedLedger()

    async def discover(self) -> None:
        """Add the agents discovery lists now; drop those it no longer lists."""
        if self._discovery is None:
            return
        try:
            addresses = await self._discovery.addresses()
        except HeliosError as exc:
            logger.warning("discovery failed", extra={"error": exc.message})
            return
        for address in addresses:
            if address not in self.connections:
                self.pool.add(address)
                self.connections[address] = self._connect(address)
                logger.info("agent discovered", extra={"worker": address})
        for address in set(self.connections) - set(addresses):
            self.pool.remove(address)
            connection = self.connections.pop(address)
            self._served.forget(address)
            await connection.close()
            logger.info("agent gone", extra={"worker": address})

    async def refresh(self) -> None:
        """Ask every worker for a heartbeat now."""
        await self.discover()
        await asyncio.gather(*(self.beat(a) for a in list(self.connections)))
        self._export_metrics()

    async def beat(self, address: str) -> None:
        connection = self.connections.get(address)
        if connection is None:
            return
        try:
            status = await connection.heartbeat(deadline_s=max(self._heartbeat_interval, 1.0))
        except HeliosError as exc:
            self.pool.record_failure(address)
            logger.warning("heartbeat failed", extra={"worker": address, "error": exc.message})
            return
        if address not in self.connections:
            return
        self._note_served(address, status)
        # Loads the proxy started and a heartbeat does not report yet stay as they are.
        models = list(status.models)
        if models or not status.ready_models:
            reported = {m.model for m in models}
            agent = self.pool.view(address)
            models += [
                m for m in agent.models.values() if m.model not in reported and m.state == "loading"
            ]
        self.pool.record_heartbeat(
            address,
            worker_id=status.worker_id,
            ready_models=status.ready_models,
            known_models=status.known_models,
            healthy=status.healthy,
            models=models or None,
            state=status.state,
            memory_total=status.memory_total,
            memory_free=status.memory_free,
            memory_source=status.memory_source,
            queue_depth=status.queue_depth,
            role=status.role,
            stored=status.stored,
        )

    def _note_served(self, address: str, status: WorkerStatus) -> None:
        """Account for what the worker served without the proxy since its last heartbeat
        (see proxy.served): the model's idle clock and the registry's usage reports."""
        running = {m.model for m in status.models if m.running}
        for model, totals in status.served.items():
            delta = self._served.update(address, model, totals)
            if model in running or (delta is not None and delta.active):
                self.control.note_activity(address, model)
            if (
                delta is not None
                and delta.requests
                and self.usage is not None
                and self.control.registry_model(model)
            ):
                self.usage.record(model, delta.tokens, delta.requests)

    def _export_metrics(self) -> None:
        metrics.STORED_MODELS.clear()  # models leave storage too: no stale series
        for agent in self.pool.agents():
            for model, level in agent.stored.items():
                metrics.STORED_MODELS.labels(agent.address, model, level.value).set(1)
            source = agent.memory_source or "configured"
            metrics.WORKER_MEMORY.labels(agent.address, "total", source).set(agent.memory_total)
            metrics.WORKER_MEMORY.labels(agent.address, "free", source).set(agent.memory_free)
            metrics.WORKER_UP.labels(agent.address).set(int(agent.routable))
            metrics.CIRCUIT_OPEN.labels(agent.address).set(
                int(agent.breaker.state() is not CircuitState.CLOSED)
            )
        for model, (ready, _) in self.pool.models().items():
            metrics.READY_REPLICAS.labels(model).set(ready)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.refresh()
            try:
                await self.control.reconcile()
            except HeliosError as exc:
                logger.warning("reconcile failed", extra={"error": exc.message})
            await asyncio.sleep(self._heartbeat_interval)

    def start(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        if self.usage is not None:
            self.usage.start()

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        if self.usage is not None:
            await self.usage.stop()
        registry = self.control.registry
        if registry is not None:
            await registry.client.close()
        await asyncio.gather(*(c.close() for c in self.connections.values()))

    async def stream(
        self, job: Job, deadline_s: float | None, request: RequestContext | None = None
    ) -> AsyncGenerator[Step, None]:
        """The job's steps from the worker chosen for it.

        Closing this generator (client gone) closes the worker's stream, which cancels
        the worker's RPC, which stops its engine.
        """
        request = request or RequestContext(deadline_s=deadline_s)
        try:
            key = self.api_keys.admit(request.authorization)
            self.admission.enter(job.model)
        except ShedError as exc:
            metrics.SHED.labels("rate_limit" if "rate limit" in exc.message else "queue_full").inc()
            raise
        except HeliosError:
            metrics.SHED.labels("unauthenticated").inc()
            raise
        arrived = time.monotonic()
        deadline_at = None if deadline_s is None else arrived + deadline_s
        tried: set[str] = set()
        attempt = 0
        outcome = "error"
        model_metrics: metrics.ModelMetrics | None = None  # once the model is routable
        try:
            while True:
                remaining = None if deadline_at is None else deadline_at - time.monotonic()
                pair = self.pool.pick_disaggregated(job.model, tried)
                run: DisaggregatedRun | None = None
                if pair is not None:
                    address = pair[1]  # the decode worker, which streams the rest
                    run = DisaggregatedRun(
                        self.pool,
                        self.connections,
                        self.control.active,
                        job,
                        deadline_at,
                        pair[0],
                        pair[1],
                        max_retries=self.max_retries,
                        retry_backoff_s=self.retry_backoff_s,
                    )
                else:
                    address = await self.control.replica(job.model, remaining, request.hint, tried)
                if model_metrics is None:
                    model_metrics = metrics.for_model(job.model)
                    model_metrics.queue_time.observe(time.monotonic() - arrived)
                sent = False
                first_token_at: float | None = None
                try:
                    async with self._steps(job, address, run, deadline_at) as steps:
                        async for step in steps:
                            if first_token_at is None and step.completion_tokens > 0:
                                first_token_at = time.monotonic()
                                model_metrics.time_to_first_token.observe(first_token_at - arrived)
                            if step.finish_reason is not None:
                                outcome = "finished"
                                _record_finished(model_metrics, step, first_token_at)
                                tokens = step.prompt_tokens + step.completion_tokens
                                self.api_keys.charge(key, tokens)
                                if self.usage is not None and self.control.registry_model(
                                    job.model
                                ):
                                    self.usage.record(job.model, tokens)
                            if step.text or step.finish_reason is not None:
                                sent = True
                            yield step
                    return
                except UnavailableError as exc:
                    if isinstance(exc, DisaggregationFailed):
                        failed = set(exc.exclude)  # the run marked them in the pool
                    else:
                        # The worker itself failed (not the request): stop routing to
                        # it until a heartbeat says it is back.
                        self.pool.record_request_failure(address)
                        failed = {address}
                    if sent or attempt >= self.max_retries:
                        raise
                    attempt += 1
                    tried |= failed
                    model_metrics.retries.inc()
                    logger.warning(
                        "worker failed before the first token; retrying elsewhere",
                        extra={
                            "request_id": job.request_id,
                            "worker": ",".join(sorted(failed)),
                            "attempt": attempt,
                            "error": exc.message,
                        },
                    )
                    await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        except (asyncio.CancelledError, GeneratorExit):
            # A client may hang up right after the last chunk (it saw `[DONE]`): that
            # request still finished.
            if outcome != "finished":
                outcome = "cancelled"
            raise
        finally:
            self.admission.leave(job.model)
            if model_metrics is not None:
                model_metrics.requests(outcome).inc()
            else:  # never routed (unknown model, no capacity, deadline): see UNKNOWN_MODEL
                known = self.control.knows(job.model)
                metrics.REQUESTS.labels(
                    job.model if known else metrics.UNKNOWN_MODEL, outcome
                ).inc()

    @contextlib.asynccontextmanager
    async def _steps(
        self, job: Job, address: str, run: DisaggregatedRun | None, deadline_at: float | None
    ) -> AsyncIterator[AsyncGenerator[Step, None]]:
        """One attempt's steps, closed (its calls cancelled) when the attempt ends: a
        disaggregated run, or Generate on ``address`` under its lease."""
        if run is not None:
            async with aclosing(coalesce(run.steps(), merge_steps)) as steps:
                yield steps
            return
        remaining = None if deadline_at is None else deadline_at - time.monotonic()
        with self.pool.lease(address), self.control.active(address, job.model):
            worker_steps = self.connections[address].generate(job, remaining)
            try:
                async with aclosing(coalesce(worker_steps, merge_steps)) as steps:
                    yield steps
            except UnavailableError:
                raise  # the worker failed: stream() counts it and retries elsewhere
            except BaseException:
                # The request's own error (INVALID_ARGUMENT, ...) or its client gone:
                # nothing against the worker, and a half-open probe is released.
                self.pool.record_request_neutral(address)
                raise
        self.pool.record_request_success(address)

    async def complete(
        self, job: Job, deadline_s: float | None, request: RequestContext | None = None
    ) -> Step:
        """Run the job to its end; one step with the whole text."""
        async with aclosing(self.stream(job, deadline_s, request)) as steps:
            return await collect(steps)
