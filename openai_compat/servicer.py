"""helios.v1.InferenceService over any :class:`InferenceBackend`: OpenAI's chat and
completions, streamed and not, and the model list.

One implementation for every service that answers the contract (the worker for warm
requests, the proxy for cold ones), so a client sees the same answers, chunks, usage and
errors whichever served it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any, TypeVar, cast

import grpc
from google.api.httpbody_pb2 import HttpBody
from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc

from openai_compat.answers import chat_choice, chat_chunk_choice, completion_choice
from openai_compat.backend import CallInfo, GenerationStep, InferenceBackend
from openai_compat.choices import Usage, complete_all, stream_all, usage_of
from openai_compat.embedding_protocol import EmbeddingsServicer
from openai_compat.events import (
    CHAT_TEXT,
    COMPLETION_TEXT,
    TextDelta,
    event_stream,
    server_sent_events,
)
from openai_compat.logprobs import TokenLogprob, text_length
from openai_compat.params import Job, Request
from openai_compat.protocol import (
    call_info,
    chat_request_from_pb,
    completion_request_from_pb,
    error_detail,
    is_rest,
    model_to_pb,
    usage_to_pb,
)
from openai_compat.tool_protocol import ChatToolDeltas, chat_choice_with_tools
from runtime.errors import HeliosError, NotFoundError
from runtime.limits import MAX_ID_BYTES

logger = logging.getLogger(__name__)

_Answer = TypeVar("_Answer", pb.CreateChatCompletionResponse, pb.CreateCompletionResponse)
_Chunk = TypeVar("_Chunk", pb.StreamChatCompletionResponse, pb.StreamCompletionResponse)


def _head(asked: Request, kind: str) -> dict[str, Any]:
    """The fields that every answer and every stream chunk of ``asked`` repeats."""
    return {
        "id": asked.request_id,
        "object": kind,
        "created": asked.created,
        "model": asked.model,
    }


def _chunk(
    response: Callable[..., _Chunk],
    head: dict[str, Any],
    choice: Callable[[int, GenerationStep], Message],
    item: tuple[int, GenerationStep],
) -> _Chunk:
    """A stream chunk of one step: the answer's ``head`` and the step's ``choice``."""
    return response(**head, choices=[choice(*item)])


def _ending(item: Usage | pb.ErrorDetail) -> dict[str, Any]:
    """A stream chunk's fields for what :meth:`InferenceServicer._relay` yields besides
    steps: the usage, or the failure (its last item)."""
    if isinstance(item, pb.ErrorDetail):
        return {"error": item}
    return {"usage": usage_to_pb(item)}


class InferenceServicer(EmbeddingsServicer, inference_pb2_grpc.InferenceServiceServicer):
    """OpenAI-compatible completions from ``backend``."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend

    async def _answer(
        self,
        asked: Request,
        context: grpc.aio.ServicerContext,
        kind: str,
        choice: Callable[[Job, GenerationStep, Sequence[TokenLogprob] | None], Message],
        response: Callable[..., _Answer],
    ) -> _Answer:
        """A whole answer, chat's or completions': every job's ``choice`` (its logprobs
        only if asked for) and the usage."""
        results = await complete_all(self.backend, asked, call_info(context))
        return response(
            **_head(asked, kind),
            choices=[
                choice(job, result, result.logprobs if asked.logprobs else None)
                for job, result in zip(asked.jobs, results, strict=True)
            ],
            usage=usage_to_pb(usage_of(asked.jobs, results)),
        )

    async def _chunks(
        self,
        asked: Request,
        call: CallInfo,
        kind: str,
        choice: Callable[[int, GenerationStep], Message],
        response: Callable[..., _Chunk],
        text_only: Callable[[int, GenerationStep], bool] | None = None,
    ) -> AsyncGenerator[_Chunk | TextDelta, None]:
        """A streamed answer, chat's or completions': one chunk per step with the step's
        ``choice``, then the usage or the failure (see :meth:`_relay`). With ``text_only``
        the chunks become server-sent events (a failure after the first is an event), and
        a step for which it holds goes as a :class:`TextDelta` that builds its chunk only
        if the printer needs it."""
        head = _head(asked, kind)
        async for item in self._relay(asked, call, events=text_only is not None):
            if not isinstance(item, tuple):
                yield response(**head, **_ending(item))
            elif text_only is not None and text_only(*item):
                index, step = item
                yield TextDelta(index, step.text, partial(_chunk, response, head, choice, item))
            else:
                yield _chunk(response, head, choice, item)

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        def choice(
            job: Job, result: GenerationStep, logprobs: Sequence[TokenLogprob] | None
        ) -> pb.ChatCompletionChoice:
            whole = chat_choice(job.index, result.text, result.finish_reason, logprobs)
            return chat_choice_with_tools(job, whole)

        asked = chat_request_from_pb(request.params)
        return await self._answer(
            asked, context, "chat.completion", choice, pb.CreateChatCompletionResponse
        )

    def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        # Without events every item is a chunk (no TextDelta).
        chunks = self._chat_chunks(request.params, call_info(context), events=False)
        return cast("AsyncIterator[pb.StreamChatCompletionResponse]", chunks)

    def StreamChatCompletionEvents(
        self, request: pb.StreamChatCompletionEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[HttpBody]:
        chunks = self._chat_chunks(request.params, call_info(context), events=True)
        return event_stream(chunks, CHAT_TEXT)

    def chat_events(
        self, params: pb.ChatCompletionParams, call: CallInfo
    ) -> AsyncGenerator[bytes, None]:
        """A streamed chat completion as server-sent events (the worker's HTTP port):
        what StreamChatCompletionEvents sends, as bytes."""
        return server_sent_events(self._chat_chunks(params, call, events=True), CHAT_TEXT)

    def _chat_chunks(
        self, params: pb.ChatCompletionParams, call: CallInfo, events: bool
    ) -> AsyncGenerator[pb.StreamChatCompletionResponse | TextDelta, None]:
        asked = chat_request_from_pb(params)
        started: set[int] = set()
        tool_deltas = ChatToolDeltas(asked)

        def choice(index: int, step: GenerationStep) -> pb.ChatCompletionChunkChoice:
            first = index not in started
            started.add(index)
            logprobs = step.logprobs if asked.logprobs else None
            chunk = chat_chunk_choice(index, step.text, step.finish_reason, logprobs, first=first)
            return tool_deltas.rewrite(chunk)

        def text_only(index: int, step: GenerationStep) -> bool:
            """Whether ``choice`` would set nothing but the index and delta.content: not
            the choice's first chunk (the role), not its last, no logprobs, no tools."""
            return (
                bool(step.text)
                and step.finish_reason is None
                and not asked.logprobs
                and index in started
                and not tool_deltas.parses(index)
            )

        return self._chunks(
            asked,
            call,
            "chat.completion.chunk",
            choice,
            pb.StreamChatCompletionResponse,
            text_only if events else None,
        )

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        def choice(
            job: Job, result: GenerationStep, logprobs: Sequence[TokenLogprob] | None
        ) -> pb.CompletionChoice:
            return completion_choice(job.index, result.text, result.finish_reason, logprobs)

        asked = completion_request_from_pb(request.params)
        return await self._answer(
            asked, context, "text_completion", choice, pb.CreateCompletionResponse
        )

    def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        # Without events every item is a chunk (no TextDelta).
        chunks = self._completion_chunks(request.params, call_info(context), events=False)
        return cast("AsyncIterator[pb.StreamCompletionResponse]", chunks)

    def StreamCompletionEvents(
        self, request: pb.StreamCompletionEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[HttpBody]:
        chunks = self._completion_chunks(request.params, call_info(context), events=True)
        return event_stream(chunks, COMPLETION_TEXT)

    def completion_events(
        self, params: pb.CompletionParams, call: CallInfo
    ) -> AsyncGenerator[bytes, None]:
        """A streamed completion as server-sent events (see :meth:`chat_events`)."""
        return server_sent_events(
            self._completion_chunks(params, call, events=True), COMPLETION_TEXT
        )

    def _completion_chunks(
        self, params: pb.CompletionParams, call: CallInfo, events: bool
    ) -> AsyncGenerator[pb.StreamCompletionResponse | TextDelta, None]:
        asked = completion_request_from_pb(params)
        # Each choice's text so far, in characters: where its next token's text_offset is.
        offsets: dict[int, int] = {}

        def choice(index: int, step: GenerationStep) -> pb.CompletionChoice:
            offset = offsets.get(index, 0)
            offsets[index] = offset + text_length(step.logprobs)
            logprobs = step.logprobs if asked.logprobs else None
            return completion_choice(index, step.text, step.finish_reason, logprobs, offset)

        def text_only(index: int, step: GenerationStep) -> bool:
            """Whether ``choice`` would set nothing but the index and text (the offsets
            it keeps serve logprobs only, which such a request did not ask for)."""
            return bool(step.text) and step.finish_reason is None and not asked.logprobs

        return self._chunks(
            asked,
            call,
            "text_completion",
            choice,
            pb.StreamCompletionResponse,
            text_only if events else None,
        )

    async def _relay(
        self, asked: Request, call: CallInfo, events: bool
    ) -> AsyncIterator[tuple[int, GenerationStep] | Usage | pb.ErrorDetail]:
        """Every choice's steps with its index (empty intermediate steps dropped), the
        usage once every choice finished if the client asked for it; then, for REST
        clients (server-sent events, or the edge's mark) whose stream already started, a
        failure as an error detail instead of a status."""
        sent = False
        lasts: dict[int, GenerationStep] = {}
        try:
            # aclosing: a client gone closes the backend's streams now (their generations
            # stop), not whenever the garbage collector finalises them.
            async with aclosing(stream_all(self.backend, asked, call)) as steps:
                async for index, step in steps:
                    if not step.text and not step.logprobs and step.finish_reason is None:
                        continue
                    yield index, step
                    sent = True
                    if step.finish_reason is not None:
                        lasts[index] = step
            if asked.include_usage:
                yield usage_of(asked.jobs, [lasts[job.index] for job in asked.jobs])
        except HeliosError as error:
            # Raised, the runtime interceptor answers it (status, retry-after trailer).
            if not (sent and (events or is_rest(call))):
                raise
            logger.warning(
                "stream failed after it started",
                extra={"request_id": asked.request_id, "error": error.message},
            )
            yield error_detail(error)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = await self.backend.list_models()
        return pb.ListModelsResponse(object="list", data=[model_to_pb(m) for m in models])

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.Model:
        for model in await self.backend.list_models():
            if model.id == request.id:
                return model_to_pb(model)
        raise NotFoundError(f"model: {request.id[:MAX_ID_BYTES]!r} does not exist")
