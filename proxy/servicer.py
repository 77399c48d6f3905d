"""InferenceService servicer: OpenAI's protobuf mirror <-> the proxy's domain."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc

from openai_compat.params import CommonParams, Job, chat_job, completion_job
from proxy.estimate import MemoryNeed
from proxy.limits import ShedError
from proxy.policies import RouteHint
from proxy.service import CompletionRouter, RequestContext, Step
from runtime.errors import HeliosError

logger = logging.getLogger(__name__)

# Envoy's Lua filter sets this on every transcoded REST request. Over HTTP/1.1 a gRPC
# status sent after the first chunk is lost, so REST streams report late failures as a
# final chunk carrying `error` instead.
EDGE_HEADER = "x-helios-edge"
DEFAULT_SESSION_HEADER = "x-session-id"
# How many prompt characters prefix-aware routing sees.
_PREFIX_CHARS = 256

_ERROR_TYPES = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_request_error",
    grpc.StatusCode.NOT_FOUND: "invalid_request_error",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limit_error",
    grpc.StatusCode.UNAVAILABLE: "service_unavailable",
}


def _optional(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _json_value(message: Message, name: str) -> Any:
    """A google.protobuf.Value field as the JSON value the client sent (None if absent)."""
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    if value.WhichOneof("kind") == "string_value":  # the common case, without the walk
        return value.string_value
    return json_format.MessageToDict(value)


def _common(params: pb.ChatCompletionParams | pb.CompletionParams) -> CommonParams:
    max_tokens = _optional(params, "max_tokens")
    if isinstance(params, pb.ChatCompletionParams) and params.HasField("max_completion_tokens"):
        max_tokens = params.max_completion_tokens
    return CommonParams(
        model=params.model,
        max_tokens=max_tokens,
        temperature=_optional(params, "temperature"),
        top_p=_optional(params, "top_p"),
        top_k=_optional(params, "top_k"),
        seed=_optional(params, "seed"),
        stop=_json_value(params, "stop"),
        n=_optional(params, "n"),
        presence_penalty=_optional(params, "presence_penalty"),
        frequency_penalty=_optional(params, "frequency_penalty"),
        include_usage=params.HasField("stream_options") and params.stream_options.include_usage,
        ignore_eos=params.ignore_eos,
    )


def _chat_job(params: pb.ChatCompletionParams) -> Job:
    messages = [(m.role, _json_value(m, "content")) for m in params.messages]
    return chat_job(_common(params), messages)


def _completion_job(params: pb.CompletionParams) -> Job:
    return completion_job(_common(params), _json_value(params, "prompt"), echo=params.echo)


def _usage(step: Step) -> pb.CompletionUsage:
    return pb.CompletionUsage(
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
        total_tokens=step.prompt_tokens + step.completion_tokens,
    )


def _error_detail(error: HeliosError) -> pb.ErrorDetail:
    return pb.ErrorDetail(
        message=error.message,
        type=_ERROR_TYPES.get(error.status_code, "server_error"),
        code=error.status_code.name,
    )


def _is_rest(context: grpc.aio.ServicerContext) -> bool:
    return any(
        key == EDGE_HEADER and value == "rest"
        for key, value in (context.invocation_metadata() or ())
    )


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _prefix(job: Job) -> str:
    if job.messages is not None:
        text = "".join(f"{role}:{content}\n" for role, content in job.messages)
    else:
        text = job.prompt or ""
    return text[:_PREFIX_CHARS]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """OpenAI-compatible completions, routed to workers."""

    def __init__(
        self, router: CompletionRouter, *, session_header: str = DEFAULT_SESSION_HEADER
    ) -> None:
        self._router = router
        self._session_header = session_header

    def _request(self, job: Job, context: grpc.aio.ServicerContext) -> RequestContext:
        return RequestContext(
            deadline_s=context.time_remaining(),
            hint=RouteHint(
                prefix=_prefix(job), session=_metadata(context, self._session_header) or ""
            ),
            authorization=_metadata(context, "authorization"),
        )

    async def _complete(self, job: Job, context: grpc.aio.ServicerContext) -> Step:
        request = self._request(job, context)
        try:
            return await self._router.complete(job, request.deadline_s, request)
        except ShedError as error:
            context.set_trailing_metadata((("retry-after", str(error.retry_after)),))
            raise

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        job = _chat_job(request.params)
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
            usage=_usage(result),
        )

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        job = _chat_job(request.params)

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
                yield chunk(usage=_usage(step))

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        job = _completion_job(request.params)
        result = await self._complete(job, context)
        return pb.CreateCompletionResponse(
            id=job.request_id,
            object="text_completion",
            created=job.created,
            model=job.model,
            choices=[
                pb.CompletionChoice(index=0, text=result.text, finish_reason=result.finish_reason)
            ],
            usage=_usage(result),
        )

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        job = _completion_job(request.params)

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
                yield chunk(usage=_usage(step))

    async def _relay(
        self, job: Job, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Step | pb.ErrorDetail]:
        """The router's steps (empty intermediate steps dropped), then, for REST clients
        whose stream already started, a failure as an error detail instead of a status."""
        sent = False
        request = self._request(job, context)
        try:
            async for step in self._router.stream(job, request.deadline_s, request):
                if not step.text and step.finish_reason is None:
                    continue
                yield step
                sent = True
        except HeliosError as error:
            if isinstance(error, ShedError):
                context.set_trailing_metadata((("retry-after", str(error.retry_after)),))
            if not (sent and _is_rest(context)):
                raise
            logger.warning(
                "stream failed after it started",
                extra={"request_id": job.request_id, "error": error.message},
            )
            yield _error_detail(error)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        control = self._router.control
        models = self._router.pool.models()
        held = await control.registry.refresh() if control.registry is not None else {}
        now = time.time()
        names = sorted({*models, *control.catalogue, *held})
        data = []
        for name in names:
            ready, first_seen = models.get(name, (0, now))
            need, warm = control.model_profile(name)
            spec = control.catalogue.get(name)
            if need is None and name in held:  # not estimated yet: the registry's size
                need = MemoryNeed(held[name].total_bytes, "manifest")
            data.append(
                pb.Model(
                    id=name,
                    object="model",
                    created=int(min(first_seen, now)),
                    owned_by="helios",
                    ready_replicas=ready,
                    memory_bytes=need.bytes if need else 0,
                    memory_source=need.source if need else "",
                    warm_status=warm,
                    min_replicas=spec.min_replicas if spec else 0,
                    max_replicas=spec.max_replicas if spec else 0,
                )
            )
        return pb.ListModelsResponse(object="list", data=data)
