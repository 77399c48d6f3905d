"""OpenAI's protobuf mirror (helios.v1 inference.proto) <-> the domain values of
:mod:`openai_compat.params` and :mod:`openai_compat.backend`."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from helios.v1 import inference_pb2 as pb

from openai_compat.backend import CallInfo, GenerationStep, ModelEntry
from openai_compat.choices import Usage
from openai_compat.fields import check_fields, check_message_fields
from openai_compat.json_values import message_json
from openai_compat.params import CommonParams, Request, chat_request, completion_request
from openai_compat.tool_protocol import with_chat_tools
from runtime.errors import ErrorCode, HeliosError, InvalidArgumentError

# Envoy's Lua filter sets this on every transcoded REST request. Over HTTP/1.1 a gRPC
# status sent after the first chunk is lost, so REST streams report late failures as a
# final chunk carrying `error` instead.
EDGE_HEADER = "x-helios-edge"

# OpenAI's error ``type`` per domain code (anything else is a server_error); the
# ``code`` is the ErrorCode's name, which is also the gRPC status's name.
_ERROR_TYPES = {
    ErrorCode.INVALID_ARGUMENT: "invalid_request_error",
    ErrorCode.NOT_FOUND: "invalid_request_error",
    ErrorCode.RESOURCE_EXHAUSTED: "rate_limit_error",
    ErrorCode.UNAVAILABLE: "service_unavailable",
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
    return message_json(name, value)


def _present_fields(message: Message) -> dict[str, Any]:
    """The fields the client set, by name; a google.protobuf.Value as its JSON value, and
    left out when null (a client that sends ``"audio": null`` asked for nothing)."""
    present: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.full_name == (
            "google.protobuf.Value"
        ):
            if value.WhichOneof("kind") == "null_value":
                continue
            value = message_json(descriptor.name, value)
        present[descriptor.name] = value
    return present


def _chat_logprobs(params: pb.ChatCompletionParams) -> int | None:
    """The alternatives per token a chat request asks for (None: no logprobs)."""
    top = _optional(params, "top_logprobs")
    if params.logprobs:
        return top or 0
    if top:
        raise InvalidArgumentError("top_logprobs: needs logprobs to be true")
    return None


def _common(params: pb.ChatCompletionParams | pb.CompletionParams) -> CommonParams:
    max_tokens = _optional(params, "max_tokens")
    if isinstance(params, pb.ChatCompletionParams):
        if params.HasField("max_completion_tokens"):
            max_tokens = params.max_completion_tokens
        logprobs = _chat_logprobs(params)
    else:
        logprobs = _optional(params, "logprobs")
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
        repetition_penalty=_optional(params, "repetition_penalty"),
        logit_bias=dict(params.logit_bias),
        min_tokens=_optional(params, "min_tokens"),
        logprobs=logprobs,
    )


def chat_request_from_pb(params: pb.ChatCompletionParams) -> Request:
    """The validated request of a chat completion (InvalidArgumentError names the
    offending field, a field Helios refuses included)."""
    check_fields("chat", _present_fields(params))
    for index, message in enumerate(params.messages):
        check_message_fields(index, (d.name for d, _ in message.ListFields()))
    messages = [(m.role, _json_value(m, "content")) for m in params.messages]
    return with_chat_tools(chat_request(_common(params), messages), params)


def completion_request_from_pb(params: pb.CompletionParams) -> Request:
    """The validated request of a (legacy) completion."""
    check_fields("completions", _present_fields(params))
    return completion_request(
        _common(params),
        _json_value(params, "prompt"),
        echo=params.echo,
        best_of=_optional(params, "best_of"),
    )


def usage_to_pb(step: GenerationStep | Usage) -> pb.CompletionUsage:
    return pb.CompletionUsage(
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
        total_tokens=step.prompt_tokens + step.completion_tokens,
    )


def error_detail(error: HeliosError) -> pb.ErrorDetail:
    """OpenAI's error object for a domain error (what a REST stream's last chunk carries)."""
    return pb.ErrorDetail(
        message=error.message,
        type=_ERROR_TYPES.get(error.code, "server_error"),
        code=error.code.name,
    )


def model_to_pb(model: ModelEntry) -> pb.Model:
    return pb.Model(
        id=model.id,
        object="model",
        created=model.created,
        owned_by="helios",
        ready_replicas=model.ready_replicas,
        memory_bytes=model.memory_bytes,
        memory_source=model.memory_source,
        warm_status=model.warm_status,
        min_replicas=model.min_replicas,
        max_replicas=model.max_replicas,
        parent=model.parent,
    )


def call_info(context: grpc.aio.ServicerContext) -> CallInfo:
    return CallInfo(
        deadline_s=context.time_remaining(), metadata=tuple(context.invocation_metadata() or ())
    )


def is_rest(call: CallInfo) -> bool:
    """Whether the request came through Envoy's REST transcoding (the edge marks it)."""
    return call.header(EDGE_HEADER) == "rest"
