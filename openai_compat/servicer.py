"""helios.v1.InferenceService over any :class:`InferenceBackend`: OpenAI's chat and
completions, streamed and not, and the model list.

One implementation for every service that answers the contract (the worker for warm
requests, the proxy for cold ones), so a client sees the same answers, chunks, usage and
errors whichever served it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc

from openai_compat.backend import CallInfo, GenerationStep, InferenceBackend
from openai_compat.params import Job
from openai_compat.protocol import (
    call_info,
    chat_job_from_pb,
    completion_job_from_pb,
    error_detail,
    is_rest,
    model_to_pb,
    send_retry_after,
    usage_to_pb,
)
from runtime.errors import HeliosError

logger = logging.getLogger(__name__)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """OpenAI-compatible completions from ``backend``."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend

    async def _complete(self, job: Job, context: grpc.aio.ServicerContext) -> GenerationStep:
        try:
            return await self.backend.complete(job, call_info(context))
        except HeliosError as error:
            send_retry_after(context, error)
            raise

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        job = chat_job_from_pb(request.params)
        result = await self._complete(job, context)
        return pb.CreateChatCompletionResponse(
            id=job.request_id,
            object="chat.completion",
            created=job.created,
            model=job.model,
            choices=[
                pb.ChatCompletionChoice(
                    index=0,
                    message=pb.AssistantMessage(role="assistant", content=result.text),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=usage_to_pb(result),
        )

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        job = chat_job_from_pb(request.params)

        def chunk(**fields: Any) -> pb.StreamChatCompletionResponse:
            return pb.StreamChatCompletionResponse(
                id=job.request_id,
                object="chat.completion.chunk",
                created=job.created,
                model=job.model,
                **fields,
            )

        first = True
        async for step in self._relay(job, context):
            if isinstance(step, pb.ErrorDetail):
                yield chunk(error=step)
                return
            delta = pb.ChatCompletionDelta(content=step.text)
            if first:
                delta.role = "assistant"
            choice = pb.ChatCompletionChunkChoice(index=0, delta=delta)
            if step.finish_reason is not None:
                choice.finish_reason = step.finish_reason
            yield chunk(choices=[choice])
            first = False
            if step.finish_reason is not None and job.include_usage:
                yield chunk(usage=usage_to_pb(step))

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        job = completion_job_from_pb(request.params)
        result = await self._complete(job, context)
        return pb.CreateCompletionResponse(
            id=job.request_id,
            object="text_completion",
            created=job.created,
            model=job.model,
            choices=[
                pb.CompletionChoice(index=0, text=result.text, finish_reason=result.finish_reason)
            ],
            usage=usage_to_pb(result),
        )

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        job = completion_job_from_pb(request.params)

        def chunk(**fields: Any) -> pb.StreamCompletionResponse:
            return pb.StreamCompletionResponse(
                id=job.request_id,
                object="text_completion",
                created=job.created,
                model=job.model,
                **fields,
            )

        async for step in self._relay(job, context):
            if isinstance(step, pb.ErrorDetail):
                yield chunk(error=step)
                return
            choice = pb.CompletionChoice(index=0, text=step.text)
            if step.finish_reason is not None:
                choice.finish_reason = step.finish_reason
            yield chunk(choices=[choice])
            if step.finish_reason is not None and job.include_usage:
                yield chunk(usage=usage_to_pb(step))

    async def _relay(
        self, job: Job, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[GenerationStep | pb.ErrorDetail]:
        """The backend's steps (empty intermediate steps dropped), then, for REST clients
        whose stream already started, a failure as an error detail instead of a status."""
        sent = False
        call: CallInfo = call_info(context)
        try:
            # aclosing: a client gone closes the backend's stream now (its generation
            # stops), not whenever the garbage collector finalises it.
            async with aclosing(self.backend.stream(job, call)) as steps:
                async for step in steps:
                    if not step.text and step.finish_reason is None:
                        continue
                    yield step
                    sent = True
        except HeliosError as error:
            send_retry_after(context, error)
            if not (sent and is_rest(call)):
                raise
            logger.warning(
                "stream failed after it started",
                extra={"request_id": job.request_id, "error": error.message},
            )
            yield error_detail(error)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = await self.backend.list_models()
        return pb.ListModelsResponse(object="list", data=[model_to_pb(m) for m in models])
