"""WorkerService servicer: protobuf <-> domain, nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import grpc
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc

from runtime.errors import InvalidArgumentError, UnimplementedError
from worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from worker.models import ModelLifecycle, ModelManager

logger = logging.getLogger(__name__)

_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}

_MODEL_STATES = {
    ModelLifecycle.DOWNLOADING: pb.MODEL_STATE_DOWNLOADING,
    ModelLifecycle.LOADING: pb.MODEL_STATE_LOADING,
    ModelLifecycle.READY: pb.MODEL_STATE_READY,
    ModelLifecycle.DRAINING: pb.MODEL_STATE_DRAINING,
    ModelLifecycle.FAILED: pb.MODEL_STATE_FAILED,
}

DEFAULT_DRAIN_SECONDS = 30.0


def generation_request_from_pb(request: pb.GenerateRequest) -> GenerationRequest:
    """The domain request for a GenerateRequest; structural checks only (the engine
    checks what depends on the model, such as the prompt's length)."""
    if not request.request_id:
        raise InvalidArgumentError("request_id: must not be empty")
    s = request.sampling
    if s.max_tokens < 1:
        raise InvalidArgumentError("sampling.max_tokens: must be >= 1")
    if s.temperature < 0:
        raise InvalidArgumentError("sampling.temperature: must be >= 0")
    if not 0 < s.top_p <= 1:
        raise InvalidArgumentError("sampling.top_p: must be in (0, 1]")
    if s.top_k < 0:
        raise InvalidArgumentError("sampling.top_k: must be >= 0")
    sampling = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        ignore_eos=s.ignore_eos,
    )
    kind = request.WhichOneof("input")
    if kind == "prompt":
        return GenerationRequest(request.request_id, sampling, prompt=request.prompt)
    if kind == "chat":
        if not request.chat.messages:
            raise InvalidArgumentError("chat.messages: must not be empty")
        messages = tuple(ChatMessage(m.role, m.content) for m in request.chat.messages)
        return GenerationRequest(request.request_id, sampling, messages=messages)
    raise InvalidArgumentError("input: one of prompt or chat is required")


def chunk_to_pb(chunk: GenerationChunk) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        text=chunk.text,
        token_ids=chunk.token_ids,
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        finish_reason=_FINISH_REASONS[chunk.finish_reason],
    )


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Serves generations from the models in a :class:`ModelManager`."""

    def __init__(self, models: ModelManager, *, worker_id: str) -> None:
        self._models = models
        self._worker_id = worker_id

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        generation = generation_request_from_pb(request)
        async with self._models.acquire(request.model, generation.request_id) as engine:
            # aclosing: when the client goes away this generator is cancelled, and the
            # engine's stream must be closed right then so it stops computing.
            stream = engine.generate(generation)
            async with aclosing(stream):
                async for chunk in stream:
                    yield chunk_to_pb(chunk)

    async def Prefill(
        self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefillResponse:
        raise UnimplementedError(
            "WorkerService.Prefill is not implemented yet (prefill/decode disaggregation)"
        )

    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeResponse]:
        raise UnimplementedError(
            "WorkerService.Decode is not implemented yet (prefill/decode disaggregation)"
        )
        yield pb.DecodeResponse()  # pragma: no cover - makes this an async generator

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LoadModelResponse]:
        if not request.local_path:
            raise UnimplementedError(
                "LoadModel: loading through storaged is not implemented yet; give local_path"
            )
        async for step in self._models.load(request.model, Path(request.local_path)):
            yield pb.LoadModelResponse(
                model=step.model,
                state=_MODEL_STATES[step.state],
                progress=step.progress,
                message=step.message,
            )

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        if request.drain_timeout_seconds < 0:
            raise InvalidArgumentError("drain_timeout_seconds: must be >= 0")
        timeout = request.drain_timeout_seconds or DEFAULT_DRAIN_SECONDS
        aborted = await self._models.unload(request.model, timeout)
        return pb.UnloadModelResponse(model=request.model, aborted_requests=aborted)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        statuses = self._models.statuses()
        dead = set(await self._models.check_health())
        models = [
            pb.LoadedModel(
                model=s.model,
                state=_MODEL_STATES[s.state],
                engine=s.engine,
                running_requests=s.stats.running_requests,
                waiting_requests=s.stats.waiting_requests,
                kv_cache_usage=s.stats.kv_cache_usage,
                prefix_cache_hit_rate=s.stats.prefix_cache_hit_rate,
                generated_tokens_total=s.stats.generated_tokens_total,
                aborted_requests_total=s.stats.aborted_requests_total,
                error=s.error,
            )
            for s in statuses
        ]
        if dead:
            state = pb.WORKER_STATE_DEGRADED
        elif any(s.state is ModelLifecycle.LOADING for s in statuses):
            state = pb.WORKER_STATE_LOADING
        elif any(s.state is ModelLifecycle.READY for s in statuses):
            state = pb.WORKER_STATE_READY
        else:
            state = pb.WORKER_STATE_IDLE
        return pb.HeartbeatResponse(
            worker_id=self._worker_id,
            state=state,
            models=models,
            memory_total_bytes=self._models.capacity_bytes,
            memory_free_bytes=self._models.capacity_bytes - self._models.used_bytes,
        )
