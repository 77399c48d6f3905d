"""The choices of OpenAI's answers as protobuf (helios.v1 inference.proto): a whole or
streamed choice's text, finish reason and log probabilities in OpenAI's shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf import struct_pb2
from helios.v1 import inference_pb2 as pb

from openai_compat.logprobs import TokenLogprob, chat_entries, completion_logprobs

# JSON has no infinity: a token the model rules out gets vLLM's floor instead.
_LOGPROB_FLOOR = -9999.0


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _LOGPROB_FLOOR


def chat_logprobs_to_pb(logprobs: Sequence[TokenLogprob] | None) -> pb.ChatChoiceLogprobs | None:
    """A chat choice's ``logprobs`` object ({content: [...]}); None when not asked for."""
    if logprobs is None:
        return None
    return pb.ChatChoiceLogprobs(
        content=[
            pb.ChatTokenLogprob(
                token=entry.token,
                logprob=_finite(entry.logprob),
                bytes=entry.bytes,
                top_logprobs=[
                    pb.TopLogprob(token=text, logprob=_finite(value), bytes=raw)
                    for text, value, raw in entry.top_logprobs
                ],
            )
            for entry in chat_entries(logprobs)
        ]
    )


def _number_or_null(value: float | None) -> struct_pb2.Value:
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    return struct_pb2.Value(number_value=_finite(value))


def completion_logprobs_to_pb(
    logprobs: Sequence[TokenLogprob] | None, text_offset: int
) -> pb.CompletionLogprobs | None:
    """A completion choice's ``logprobs`` object (None when not asked for); its first
    token starts ``text_offset`` characters into the choice's text."""
    if logprobs is None:
        return None
    shaped = completion_logprobs(logprobs, text_offset)
    out = pb.CompletionLogprobs(tokens=shaped.tokens, text_offset=shaped.text_offset)
    out.token_logprobs.extend(_number_or_null(v) for v in shaped.token_logprobs)
    for top in shaped.top_logprobs:
        value = struct_pb2.Value()
        if top is None:
            value.null_value = struct_pb2.NULL_VALUE
        else:
            value.struct_value.update({text: _finite(v) for text, v in top.items()})
        out.top_logprobs.append(value)
    return out


# The choices below pass None for what a choice does not have (no finish reason yet, no
# log probabilities asked for): protobuf leaves such a field unset, as OpenAI's null.


def chat_choice(
    index: int, text: str, finish_reason: str | None, logprobs: Sequence[TokenLogprob] | None
) -> pb.ChatCompletionChoice:
    """One choice of a whole chat completion (``logprobs`` None: not asked for)."""
    return pb.ChatCompletionChoice(
        index=index,
        message=pb.AssistantMessage(role="assistant", content=text),
        finish_reason=finish_reason,
        logprobs=chat_logprobs_to_pb(logprobs),
    )


def chat_chunk_choice(
    index: int,
    text: str,
    finish_reason: str | None,
    logprobs: Sequence[TokenLogprob] | None,
    *,
    first: bool,
) -> pb.ChatCompletionChunkChoice:
    """One choice's part of a chat stream chunk; the role comes on its first."""
    return pb.ChatCompletionChunkChoice(
        index=index,
        delta=pb.ChatCompletionDelta(content=text, role="assistant" if first else None),
        finish_reason=finish_reason,
        logprobs=chat_logprobs_to_pb(logprobs),
    )


def completion_choice(
    index: int,
    text: str,
    finish_reason: str | None,
    logprobs: Sequence[TokenLogprob] | None,
    text_offset: int = 0,
) -> pb.CompletionChoice:
    """One choice of a completion, whole or a stream chunk's part."""
    return pb.CompletionChoice(
        index=index,
        text=text,
        finish_reason=finish_reason,
        logprobs=completion_logprobs_to_pb(logprobs, text_offset),
    )
