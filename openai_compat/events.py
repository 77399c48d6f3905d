"""OpenAI's server-sent events, printed by the service that generates the chunks.

REST clients stream through the worker's HTTP port (openai_compat/rest.py: Envoy routes a
warm model's streams there, one chunk per event) or ``InferenceService.Stream*Events``
(cold requests through the proxy), whose messages are ``google.api.HttpBody`` pieces that
Envoy's transcoder passes through as they are: the edge prints no JSON per token and its
Lua filter touches no streamed byte either way. The events are
the chunks of ``Stream*Completion`` printed the way the transcoder printed them (proto
field names, fields without presence always printed, no whitespace), then
``data: [DONE]``.

Printing a message through ``json_format`` costs tens of microseconds; a token's chunk is
printed from a per-choice template instead: the same chunk printed once with a marker in
place of its text, split around the marker. A chunk takes the template only when the
fields it sets are exactly those of a text-only chunk, so both ways print the same JSON.
A service that knows a step is text only hands over a :class:`TextDelta` instead of a
chunk: once its choice has a template, the chunk is never built at all.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from google.api.httpbody_pb2 import HttpBody
from google.protobuf import json_format
from google.protobuf.message import Message

EVENT_STREAM_CONTENT_TYPE = "text/event-stream"
DONE_EVENT = b"data: [DONE]\n\n"
# Stands in for a chunk's text in a template; control characters, so no text a chunk's
# head holds (ids, a model's name) prints as it.
_MARKER = "\x01helios-text\x02"
_PRINTED_MARKER = json.dumps(_MARKER)
# json.dumps builds a new encoder on every call that passes options: build it once.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def print_json(message: Message) -> str:
    """``message`` as the transcoder prints it: compact, proto names, defaults shown."""
    as_dict = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return _COMPACT_JSON.encode(as_dict)


def event(message: Message) -> bytes:
    """One server-sent event carrying ``message``."""
    return b"data: " + print_json(message).encode() + b"\n\n"


def _only_index_and(choice: Message, name: str) -> Any:
    """The value of ``choice``'s field ``name`` when the choice sets nothing else but its
    index; None otherwise (ListFields is in field-number order: index comes first)."""
    set_fields = choice.ListFields()
    if not set_fields or len(set_fields) > 2 or set_fields[-1][0].name != name:
        return None
    if len(set_fields) == 2 and set_fields[0][0].name != "index":
        return None
    return set_fields[-1][1]


def _chat_text_holder(choice: Message) -> Message | None:
    """A chat choice's delta when the choice sets nothing but its index and
    ``delta.content``."""
    delta: Message | None = _only_index_and(choice, "delta")
    if delta is None:
        return None
    delta_fields = delta.ListFields()
    if len(delta_fields) != 1 or delta_fields[0][0].name != "content":
        return None
    return delta


def _completion_text_holder(choice: Message) -> Message | None:
    """A completions choice itself when it sets nothing but its index and ``text``."""
    return choice if _only_index_and(choice, "text") is not None else None


@dataclass(frozen=True)
class TextField:
    """Where a streamed chunk's single choice keeps its text: ``holder`` finds the message
    holding it (None when the choice sets anything else), ``name`` is its field there."""

    name: str
    holder: Callable[[Message], Message | None]


CHAT_TEXT = TextField("content", _chat_text_holder)
COMPLETION_TEXT = TextField("text", _completion_text_holder)

_HEAD_FIELDS = frozenset({"id", "object", "created", "model", "choices"})


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A streamed chunk whose single choice ``index`` sets nothing but its ``text``, as
    the service that streams it knows before building it; ``build`` builds it (the
    printer calls it only while the choice has no template yet)."""

    index: int
    text: str
    build: Callable[[], Message]


class ChunkPrinter:
    """Prints one stream's chunks as events: a text-only chunk from its choice's template
    (made on the first such chunk of each choice index), any other through
    :func:`event`."""

    def __init__(self, text: TextField) -> None:
        self._text = text
        self._templates: dict[int, tuple[bytes, bytes] | None] = {}

    def __call__(self, chunk: Message | TextDelta) -> bytes:
        if isinstance(chunk, TextDelta):
            template = self._templates.get(chunk.index)
            if template is None:
                return self(chunk.build())
            before, after = template
            return before + encode_basestring(chunk.text).encode() + after
        choices: Sequence[Any] = getattr(chunk, "choices", ())
        if len(choices) != 1:
            return event(chunk)
        holder = self._text.holder(choices[0])
        if holder is None or not all(d.name in _HEAD_FIELDS for d, _ in chunk.ListFields()):
            return event(chunk)
        index: int = choices[0].index
        if index not in self._templates:
            self._templates[index] = self._template(chunk, holder)
        template = self._templates[index]
        if template is None:
            return event(chunk)
        before, after = template
        text: str = getattr(holder, self._text.name)
        # What json.dumps(text, ensure_ascii=False) prints, without building an encoder.
        return before + encode_basestring(text).encode() + after

    def _template(self, chunk: Message, holder: Message) -> tuple[bytes, bytes] | None:
        text = getattr(holder, self._text.name)
        setattr(holder, self._text.name, _MARKER)
        try:
            parts = event(chunk).split(_PRINTED_MARKER.encode())
        finally:
            setattr(holder, self._text.name, text)
        return (parts[0], parts[1]) if len(parts) == 2 else None


async def server_sent_events(
    chunks: AsyncGenerator[Message | TextDelta, None], text: TextField
) -> AsyncGenerator[bytes, None]:
    """``chunks`` as server-sent events, one per chunk, then ``data: [DONE]`` once
    ``chunks`` ended without raising (what the worker's HTTP port writes as they come)."""
    printer = ChunkPrinter(text)
    # aclosing: a client gone stops the generation behind ``chunks`` now, not whenever
    # the garbage collector finalises it.
    async with aclosing(chunks):
        async for chunk in chunks:
            yield printer(chunk)
    yield DONE_EVENT


async def event_stream(
    chunks: AsyncGenerator[Message | TextDelta, None], text: TextField
) -> AsyncIterator[HttpBody]:
    """:func:`server_sent_events` as gRPC messages: one HttpBody per event (the first names the
    content type)."""
    content_type = EVENT_STREAM_CONTENT_TYPE
    async with aclosing(server_sent_events(chunks, text)) as printed:
        async for data in printed:
            yield HttpBody(content_type=content_type, data=data)
            content_type = ""
