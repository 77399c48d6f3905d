"""The proxy's serving path: the requests that reach it rather than a worker.

Domain only: workers are reached through :class:`proxy.fleet.WorkerConnection`.

Envoy sends a request for a model straight to a worker that has it READY (its per-model
route, :mod:`proxy.xds_server`). What reaches the proxy is what Envoy has no route for:
a model that is cold, loading or unknown (and a native gRPC request sent without the
``x-helios-model`` header). Such a request is admitted (API key known, tokens per
minute, at most ``--max-queued-per-model`` of one model waiting here: more are 429),
then

1. a READY replica the proxy knows of already (the route is on its way to Envoy, or
   the client sent no model header) serves it: the least outstanding one;
2. otherwise the model is cold-started (:class:`proxy.cold_start.ColdStarts`: estimate,
   place, one LoadModel however many requests wait) and the request waits for it within
   its deadline;
3. the request is then relayed to that worker, once: it is not retried on another
   replica (Envoy retries warm requests; a cold request whose worker fails gets
   UNAVAILABLE, and the worker is out of routing until its next heartbeat answers).
   The next request for the model goes to Envoy's route.

Disaggregated serving: when the model is READY in a prefill pool and a decode pool,
Prefill runs on one worker and Decode on another (:mod:`proxy.disagg`, which also says
how its decode failures are retried); otherwise one worker serves the whole generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from openai_compat.backend import Step, collect, merge_steps
from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.params import Job
from proxy import metrics
from proxy.adapters import find_adapter
from proxy.cold_start import ColdStarts
from proxy.disagg import DisaggregatedRun
from proxy.fleet import WorkerConnection
from proxy.limits import Admission, ApiKeys
from proxy.registry import UsageReporter
from runtime.errors import DisaggregationFailed, HeliosError, ShedError, UnavailableError
from runtime.streams import coalesce

logger = logging.getLogger(__name__)


def _record_finished(model: metrics.ModelMetrics, last: Step, first_token_at: float | None) -> None:
    model.generated_tokens.inc(last.completion_tokens)
    model.prompt_tokens.inc(last.prompt_tokens)
    if first_token_at is not None and last.completion_tokens > 1:
        per_token = (time.monotonic() - first_token_at) / (last.completion_tokens - 1)
        model.time_per_output_token.observe(per_token)


@dataclass(frozen=True)
class RequestContext:
    """What the edge knows of a request besides the job."""

    deadline_s: float | None = None
    authorization: str | None = None


class ColdPath:
    """Serves the requests that reach the proxy (see the module's docstring)."""

    def __init__(
        self,
        cold: ColdStarts,
        connections: Mapping[str, WorkerConnection],
        *,
        api_keys: ApiKeys | None = None,
        admission: Admission | None = None,
        usage: UsageReporter | None = None,
    ) -> None:
        self.cold = cold
        self.pool = cold.pool
        self._connections = connections
        self.api_keys = api_keys or ApiKeys()
        self.admission = admission or Admission(0)
        self.usage = usage  # finished requests go to the registry, batched in the background

    def _admit(self, job: Job | EmbeddingJob, authorization: str | None) -> str:
        """The request's API key, once it may start (else ShedError / UNAUTHENTICATED)."""
        try:
            key = self.api_keys.admit(authorization)
            self.admission.enter(job.model)
        except ShedError as exc:
            metrics.SHED.labels(exc.reason).inc()
            raise
        except HeliosError:
            metrics.SHED.labels("unauthenticated").inc()
            raise
        return key

    async def stream(
        self, job: Job, request: RequestContext | None = None
    ) -> AsyncGenerator[Step, None]:
        """The job's steps from the worker chosen for it (loading the model first when
        it is READY nowhere).

        Closing this generator (client gone) closes the worker's stream, which cancels
        the worker's RPC, which stops its engine.
        """
        request = request or RequestContext()
        key = self._admit(job, request.authorization)
        arrived = time.monotonic()
        deadline_at = None if request.deadline_s is None else arrived + request.deadline_s
        outcome = "error"
        model_metrics: metrics.ModelMetrics | None = None  # once the model is routable
        try:
            # A LoRA adapter runs on its base: the base is placed (loaded when READY
            # nowhere) and the request relayed as <base>:<adapter> (proxy.adapters).
            adapter = await find_adapter(job.model, self.cold.registry, self.cold.knows)
            placed = job.model if adapter is None else adapter.base
            relayed = job if adapter is None else dataclasses.replace(job, model=adapter.pair)
            pair = None if adapter is not None else self.pool.pick_disaggregated(placed)
            run: DisaggregatedRun | None = None
            if pair is not None:
                address = pair[1]  # the decode worker, which streams the rest
                run = DisaggregatedRun(
                    self.pool,
                    self._connections,
                    self.cold.activity.running,
                    job,
                    deadline_at,
                    *pair,
                )
            else:
                address = await self.cold.replica(placed, request.deadline_s)
            model_metrics = metrics.for_model(job.model)
            model_metrics.queue_time.observe(time.monotonic() - arrived)
            first_token_at: float | None = None
            try:
                async with self._steps(relayed, address, run, deadline_at, placed) as steps:
                    async for step in steps:
                        if first_token_at is None and step.completion_tokens > 0:
                            first_token_at = time.monotonic()
                            model_metrics.time_to_first_token.observe(first_token_at - arrived)
                        if step.finish_reason is not None:
                            outcome = "finished"
                            _record_finished(model_metrics, step, first_token_at)
                            tokens = step.prompt_tokens + step.completion_tokens
                            self.api_keys.charge(key, tokens)
                            if self.usage is not None and self.cold.registry_model(job.model):
                                self.usage.record(job.model, tokens)
                        yield step
            except UnavailableError as exc:
                # The worker itself failed (not the request): no new requests for it
                # until a heartbeat says it is back (a disaggregated run marked its own).
                if not isinstance(exc, DisaggregationFailed):
                    self.pool.record_request_failure(address)
                logger.warning(
                    "worker failed a request",
                    extra={"request_id": job.request_id, "worker": address, "error": exc.message},
                )
                raise
        except (asyncio.CancelledError, GeneratorExit):
            # A client may hang up right after the last chunk (it saw `[DONE]`): that
            # request still finished.
            if outcome != "finished":
                outcome = "cancelled"
            raise
        finally:
            self._ended(job.model, model_metrics, outcome)

    def _ended(self, model: str, model_metrics: metrics.ModelMetrics | None, outcome: str) -> None:
        """A request admitted by :meth:`_admit` ended with ``outcome``."""
        self.admission.leave(model)
        if model_metrics is not None:
            model_metrics.requests(outcome).inc()
        else:  # never routed (unknown model, no capacity, deadline): see UNKNOWN_MODEL
            known = self.cold.knows(model)
            metrics.REQUESTS.labels(model if known else metrics.UNKNOWN_MODEL, outcome).inc()

    @contextlib.asynccontextmanager
    async def _steps(
        self,
        job: Job,
        address: str,
        run: DisaggregatedRun | None,
        deadline_at: float | None,
        placed: str,
    ) -> AsyncIterator[AsyncGenerator[Step, None]]:
        """The request's steps, closed (its calls cancelled) when it ends: a
        disaggregated run, or Generate on ``address`` counted as running there (as a
        request of ``placed``, the model loaded there: an adapter's base)."""
        if run is not None:
            async with aclosing(coalesce(run.steps(), merge_steps)) as steps:
                yield steps
            return
        remaining = None if deadline_at is None else deadline_at - time.monotonic()
        with self.pool.lease(address), self.cold.activity.running(address, placed):
            worker_steps = self._connections[address].generate(job, remaining)
            async with aclosing(coalesce(worker_steps, merge_steps)) as steps:
                yield steps

    async def embed(
        self, job: EmbeddingJob, request: RequestContext | None = None
    ) -> EmbeddingResult:
        """The embeddings of ``job`` from a worker that has the model (loading it first
        when it is READY nowhere), relayed once like a generation."""
        request = request or RequestContext()
        key = self._admit(job, request.authorization)
        arrived = time.monotonic()
        outcome = "error"
        model_metrics: metrics.ModelMetrics | None = None
        try:
            address = await self.cold.replica(job.model, request.deadline_s)
            model_metrics = metrics.for_model(job.model)
            model_metrics.queue_time.observe(time.monotonic() - arrived)
            remaining = (
                None
                if request.deadline_s is None
                else request.deadline_s - (time.monotonic() - arrived)
            )
            with self.pool.lease(address), self.cold.activity.running(address, job.model):
                try:
                    result = await self._connections[address].embed(job, remaining)
                except UnavailableError as exc:
                    self.pool.record_request_failure(address)
                    logger.warning(
                        "worker failed a request",
                        extra={
                            "request_id": job.request_id,
                            "worker": address,
                            "error": exc.message,
                        },
                    )
                    raise
            outcome = "finished"
            model_metrics.prompt_tokens.inc(result.prompt_tokens)
            self.api_keys.charge(key, result.prompt_tokens)
            if self.usage is not None and self.cold.registry_model(job.model):
                self.usage.record(job.model, result.prompt_tokens)
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._ended(job.model, model_metrics, outcome)

    async def complete(self, job: Job, request: RequestContext | None = None) -> Step:
        """Run the job to its end; one step with the whole text."""
        async with aclosing(self.stream(job, request)) as steps:
            return await collect(steps)
