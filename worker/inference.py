"""The worker's InferenceService backend: OpenAI jobs (validated by openai_compat) run on
this worker's own engines, with no hop in between. Domain only (no protobuf).

Envoy sends a request here only when the model is READY on this worker, and retries
another worker, before any response header, on UNAVAILABLE. So a model that is here but
cannot serve now (downloading, loading, draining, failed) answers UNAVAILABLE, and so does
one this worker does not have at all: the edge routes a model here only because the
control plane listed this worker for it, so "not here" means a route that lags the fleet
(a replica just unloaded or moved, an Envoy that has not heard the push yet, e.g. while
it reconnects to a restarted proxy) and another replica may well have it. NOT_FOUND
would reach the client as a 404 that no retry ever gets past. A client's mistake is
INVALID_ARGUMENT, from openai_compat's validation or from the engine (a prompt longer
than the context).

A ``both`` worker runs whole generations on its engine. A decode-role worker serves a
model whose prefill pool it knows (worker.disagg.PrefillElsewhere: Prefill on a peer,
Decode here) and answers UNAVAILABLE for one without; a prefill-role worker serves none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

from openai_compat.backend import CallInfo, GenerationStep, ModelEntry, collect
from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from openai_compat.params import Job
from openai_compat.tools import TurnTools
from runtime.errors import UnavailableError
from runtime.streams import coalesce
from worker.adapters import Target, with_adapter
from worker.embeddings import embed_on_engine
from worker.engine.base import (
    ChatMessage,
    EngineClient,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    merge_chunks,
)
from worker.generation_spans import GenerationSpans
from worker.key_usage import KeyUsageLedger
from worker.metrics import UsageLedger
from worker.models import ModelLifecycle, ModelManager
from worker.request_usage import RequestEnding, counted_request

logger = logging.getLogger(__name__)

# The role that runs whole generations on its own engine (see worker.servicer's roles);
# a decode-role worker serves them with a prefill pool's help (SplitServing), a
# prefill-role worker not at all.
_WHOLE_ROLE = "both"
_DECODE_ROLE = "decode"
# The API key's metadata (Envoy passes the client's header on): the request's fairness
# class in the admission queue (worker/admission.py hashes it, never keeps it).
AUTHORIZATION_HEADER = "authorization"


class SplitServing(Protocol):
    """Whole requests from a prefill worker elsewhere and this worker's decode
    (worker.disagg.PrefillElsewhere)."""

    def check(self, model: str) -> None:
        """Raise UnavailableError unless ``model`` can be served so now."""
        ...

    def steps(self, job: Job, deadline_s: float | None) -> AsyncGenerator[GenerationStep, None]:
        """``job``'s steps; closing the stream stops both phases."""
        ...


def generation_request(job: Job) -> GenerationRequest:
    """The engine's request for a validated OpenAI job (what WorkerService.Generate
    receives from the proxy for the same job, without the protobuf in between)."""
    sampling = job.sampling
    if job.messages is not None:
        turns = job.turn_tools or (TurnTools(),) * len(job.messages)
        messages = tuple(
            ChatMessage(role, content, turn.tool_calls, turn.tool_call_id)
            for (role, content), turn in zip(job.messages, turns, strict=True)
        )
        tools_json = job.tools.tools_json() if job.tools is not None else ""
        return GenerationRequest(job.request_id, sampling, messages=messages, tools_json=tools_json)
    if job.prompt_token_ids is not None:
        return GenerationRequest(job.request_id, sampling, prompt_token_ids=job.prompt_token_ids)
    return GenerationRequest(job.request_id, sampling, prompt=job.prompt or "")


def client_stream(
    engine: EngineClient, chunks: AsyncGenerator[GenerationChunk, None]
) -> AsyncGenerator[GenerationChunk, None]:
    """The engine's stream as a streaming client should get it: chunks that piled up while
    a message was being written go out merged, whoever merges them (the engine itself, or
    runtime.streams.coalesce)."""
    return chunks if engine.merges_backlog else coalesce(chunks, merge_chunks)


class EngineBackend:
    """Serves OpenAI jobs from the engines of a :class:`ModelManager`, counting each
    model's use in a :class:`UsageLedger` (metrics and heartbeat counters)."""

    def __init__(
        self,
        models: ModelManager,
        usage: UsageLedger,
        *,
        role: str = "both",
        split: SplitServing | None = None,
        key_usage: KeyUsageLedger | None = None,
    ) -> None:
        """``split``: how a decode-role worker serves whole requests (None: it does not);
        ``key_usage``: where each API key's tokens are counted (heartbeats report them)."""
        self._models = models
        self._usage = usage
        self.key_usage = key_usage or KeyUsageLedger()
        self._role = role
        self._split = split if role == _DECODE_ROLE else None

    def _check_serving(self, model: str) -> SplitServing | None:
        """Raise unless ``model`` can be served here now; the split serving to use, or
        None for this worker's engine alone."""
        if self._role != _WHOLE_ROLE and self._split is None:
            raise UnavailableError(
                f"this worker has role {self._role}: it serves no whole generations"
            )
        state = self._models.lifecycle(model)
        if state is None:
            # Retryable: see the module's docstring (a stale route, not an unknown model:
            # an unknown model has no route and reaches the proxy, which says NOT_FOUND).
            raise UnavailableError(f"model {model} is not served by this worker")
        if state is not ModelLifecycle.READY:
            raise UnavailableError(f"model {model} is {state.value} on this worker, not ready")
        if self._split is not None:
            self._split.check(model)
        return self._split

    async def complete(self, job: Job, call: CallInfo) -> GenerationStep:
        async with aclosing(self._generate(job, call, streaming=False)) as chunks:
            return await collect(chunks)

    def stream(self, job: Job, call: CallInfo) -> AsyncGenerator[GenerationStep, None]:
        return self._generate(job, call, streaming=True)

    async def _engine_chunks(
        self, job: Job, call: CallInfo, target: Target, *, streaming: bool, spans: GenerationSpans
    ) -> AsyncGenerator[GenerationChunk, None]:
        """``job`` generated whole on this worker's engine, after its fair turn among the
        clients queued for the model (ModelManager.serve); closing this generator
        (client gone) closes the engine's stream, which aborts the request in the engine,
        or takes it out of the queue before it ever reached the engine."""
        adapter = await self._models.adapters.ref(target.adapter)
        async with self._models.serve(
            target.model,
            job.request_id,
            authorization=call.header(AUTHORIZATION_HEADER),
            deadline_s=call.deadline_s,
        ) as engine:
            spans.admitted()
            chunks = engine.generate(with_adapter(engine, generation_request(job), adapter))
            if streaming:
                chunks = client_stream(engine, chunks)
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk

    async def _split_steps(
        self, job: Job, call: CallInfo, split: SplitServing
    ) -> AsyncGenerator[GenerationStep, None]:
        """``job`` split (Prefill on a peer, Decode here) after its fair turn in the
        model's admission queue, as a whole generation here gets: the decode runs on this
        worker's engine, so its clients share it by the same rules."""
        deadline_at = None if call.deadline_s is None else time.monotonic() + call.deadline_s
        async with self._models.turn(
            job.model,
            authorization=call.header(AUTHORIZATION_HEADER),
            deadline_s=call.deadline_s,
        ):
            remaining = None if deadline_at is None else max(0.0, deadline_at - time.monotonic())
            async with aclosing(split.steps(job, remaining)) as steps:
                async for step in steps:
                    yield step

    async def _generate(
        self, job: Job, call: CallInfo, *, streaming: bool
    ) -> AsyncGenerator[GenerationStep, None]:
        """``job``'s steps, counted in the usage ledger: from the engine here, or from a
        split run (Prefill on a peer, Decode here). Closing this generator (client gone)
        stops them."""
        # A LoRA adapter runs on its base: the base's queue, engine and usage figures (so
        # the control plane's idle clock sees the base in use).
        target = self._models.target(job.model)
        split = self._check_serving(target.model)
        if target.adapter is not None and split is not None:
            raise UnavailableError(
                f"model {job.model}: LoRA adapters run on whole-generation workers only"
            )
        usage = self._usage.of(target.model)
        arrived = time.monotonic()
        spans = GenerationSpans.for_job(job, streaming=streaming)
        first_token_at: float | None = None
        tokens = 0  # the prompt and completion tokens so far, charged to the key at the end
        ending = RequestEnding()
        try:
            # The client left: aclosing below closes the engine's stream, which stops the
            # request there, and counted_request ends it as aborted.
            with counted_request(usage, job.model, ending):
                steps = (
                    self._engine_chunks(job, call, target, streaming=streaming, spans=spans)
                    if split is None
                    else self._split_steps(job, call, split)
                )
                async with aclosing(steps) as chunks:
                    async for chunk in chunks:
                        spans.chunk(chunk)
                        tokens = chunk.prompt_tokens + chunk.completion_tokens
                        if first_token_at is None and chunk.completion_tokens:
                            first_token_at = time.monotonic()
                            usage.first_token(first_token_at - arrived)
                        if chunk.finish_reason is FinishReason.ABORT:
                            ending.reason = FinishReason.ABORT
                            raise UnavailableError(
                                f"model {job.model}: the generation was aborted on this"
                                " worker (the model is being unloaded)"
                            )
                        if chunk.finish_reason is not None:
                            ending.reason = chunk.finish_reason
                            now = time.monotonic()
                            usage.finished(
                                chunk.prompt_tokens,
                                chunk.completion_tokens,
                                None if first_token_at is None else now - first_token_at,
                                now - arrived,
                            )
                        yield chunk
        finally:
            spans.end(ending.reason)
            # Whatever the ending: an aborted generation used its tokens too.
            self.key_usage.charge(call.header(AUTHORIZATION_HEADER), tokens)

    async def embed(self, job: EmbeddingJob, call: CallInfo) -> EmbeddingResult:
        """``job`` on this worker's embedding engine (worker.embeddings)."""
        self._check_serving(job.model)
        return await embed_on_engine(
            self._models,
            self._usage.of(job.model),
            job,
            authorization=call.header(AUTHORIZATION_HEADER),
            deadline_s=call.deadline_s,
        )

    async def list_models(self) -> list[ModelEntry]:
        """The models READY on this worker (those Envoy routes here)."""
        return [
            ModelEntry(
                id=status.model,
                created=int(status.loaded_at),
                ready_replicas=1,
                memory_bytes=status.size_bytes,
                warm_status="warm",
            )
            for status in sorted(self._models.statuses(), key=lambda s: s.model)
            if status.state is ModelLifecycle.READY
        ]
