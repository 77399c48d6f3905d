"""Serving a validated job: pick a worker, relay its stream, keep the pool current.

Domain only: workers are reached through the :class:`WorkerConnection` protocol, which
``proxy.worker_client`` implements over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from proxy import metrics
from proxy.openai import Job
from proxy.routing import WorkerPool
from runtime.errors import HeliosError, UnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One relayed step of a generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" on the last step


@dataclass(frozen=True)
class WorkerStatus:
    """What one heartbeat says."""

    worker_id: str
    ready_models: tuple[str, ...]
    known_models: tuple[str, ...]
    healthy: bool


class WorkerConnection(Protocol):
    """How the proxy talks to one worker."""

    def generate(self, job: Job, deadline_s: float | None) -> AsyncGenerator[Step, None]: ...

    async def heartbeat(self, deadline_s: float) -> WorkerStatus: ...

    async def close(self) -> None: ...


def _record_finished(model: str, last: Step, first_token_at: float | None) -> None:
    metrics.GENERATED_TOKENS.labels(model).inc(last.completion_tokens)
    metrics.PROMPT_TOKENS.labels(model).inc(last.prompt_tokens)
    if first_token_at is not None and last.completion_tokens > 1:
        per_token = (time.monotonic() - first_token_at) / (last.completion_tokens - 1)
        metrics.TIME_PER_OUTPUT_TOKEN.labels(model).observe(per_token)


class CompletionRouter:
    """Routes jobs to workers and keeps their view fresh with heartbeats."""

    def __init__(
        self,
        pool: WorkerPool,
        connect: Callable[[str], WorkerConnection],
        *,
        heartbeat_interval: float = 1.0,
    ) -> None:
        self.pool = pool
        self._connections: Mapping[str, WorkerConnection] = {
            address: connect(address) for address in pool.addresses
        }
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Ask every worker for a heartbeat now."""
        await asyncio.gather(*(self._beat(a) for a in self._connections))

    async def _beat(self, address: str) -> None:
        try:
            status = await self._connections[address].heartbeat(
                deadline_s=max(self._heartbeat_interval, 1.0)
            )
        except HeliosError as exc:
            self.pool.record_failure(address)
            logger.warning("heartbeat failed", extra={"worker": address, "error": exc.message})
            return
        self.pool.record_heartbeat(
            address,
            worker_id=status.worker_id,
            ready_models=status.ready_models,
            known_models=status.known_models,
            healthy=status.healthy,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._heartbeat_interval)

    def start(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    async def stream(self, job: Job, deadline_s: float | None) -> AsyncIterator[Step]:
        """The job's steps from the worker chosen for it.

        Closing this generator (client gone) closes the worker's stream, which cancels
        the worker's RPC, which stops its engine.
        """
        address = self.pool.pick(job.model)
        started = time.monotonic()
        first_token_at: float | None = None
        outcome = "error"
        with self.pool.lease(address):
            steps = self._connections[address].generate(job, deadline_s)
            try:
                async with aclosing(steps):
                    async for step in steps:
                        if first_token_at is None and step.completion_tokens > 0:
                            first_token_at = time.monotonic()
                            metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(
                                first_token_at - started
                            )
                        if step.finish_reason is not None:
                            outcome = "finished"
                            _record_finished(job.model, step, first_token_at)
                        yield step
            except UnavailableError:
                # The worker itself failed (not the request): stop routing to it until a
                # heartbeat says it is back.
                self.pool.record_failure(address)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                # A client may hang up right after the last chunk (it saw `[DONE]`): that
                # request still finished.
                if outcome != "finished":
                    outcome = "cancelled"
                raise
            finally:
                metrics.REQUESTS.labels(job.model, outcome).inc()

    async def complete(self, job: Job, deadline_s: float | None) -> Step:
        """Run the job to its end; one step with the whole text."""
        parts: list[str] = []
        last: Step | None = None
        async for step in self.stream(job, deadline_s):
            parts.append(step.text)
            last = step
        if last is None or last.finish_reason is None:
            raise UnavailableError("the worker ended the generation without finishing it")
        return Step("".join(parts), last.prompt_tokens, last.completion_tokens, last.finish_reason)
