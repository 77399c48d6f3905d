"""openai_compat.events: a text-only chunk printed from its template is byte for byte what
the generic printer prints, every other chunk takes the generic printer, and a stream of
events ends in [DONE] only when its chunks ended."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
from helios.v1 import inference_pb2 as pb

from openai_compat.events import (
    CHAT_TEXT,
    COMPLETION_TEXT,
    DONE_EVENT,
    EVENT_STREAM_CONTENT_TYPE,
    ChunkPrinter,
    TextDelta,
    event,
    event_stream,
)

TEXTS = ["Hello", "", " world", 'a "quote" \\ and\nnewline', "日本語 ✓ 🙂", "\x01helios-text\x02"]


def chat_chunk(model: str = "org/model", **choice: object) -> pb.StreamChatCompletionResponse:
    return pb.StreamChatCompletionResponse(
        id="chatcmpl-1",
        object="chat.completion.chunk",
        created=1_700_000_000,
        model=model,
        choices=[pb.ChatCompletionChunkChoice(**choice)],  # type: ignore[arg-type]
    )


def completion_chunk(**choice: object) -> pb.StreamCompletionResponse:
    return pb.StreamCompletionResponse(
        id="cmpl-1",
        object="text_completion",
        created=1_700_000_000,
        model="org/model",
        choices=[pb.CompletionChoice(**choice)],  # type: ignore[arg-type]
    )


def test_the_event_is_the_transcoders_json() -> None:
    printed = event(chat_chunk(delta=pb.ChatCompletionDelta(content="hi")))
    assert printed.startswith(b"data: {") and printed.endswith(b"}\n\n")
    data = json.loads(printed[len(b"data: ") :])
    # Proto names, fields without presence printed at their defaults, unset optionals not.
    assert data["choices"] == [{"index": 0, "delta": {"content": "hi", "tool_calls": []}}]
    assert data["object"] == "chat.completion.chunk" and data["created"] == 1_700_000_000
    assert b" " not in printed.split(b"data: ", 1)[1]


@pytest.mark.parametrize("index", [0, 3])
def test_text_only_chat_chunks_print_as_the_generic_printer_does(index: int) -> None:
    printer = ChunkPrinter(CHAT_TEXT)
    for text in TEXTS:
        chunk = chat_chunk(index=index, delta=pb.ChatCompletionDelta(content=text))
        assert printer(chunk) == event(chunk)


def test_text_only_completion_chunks_print_as_the_generic_printer_does() -> None:
    printer = ChunkPrinter(COMPLETION_TEXT)
    for index in (0, 1, 0):
        for text in TEXTS:
            chunk = completion_chunk(index=index, text=text)
            assert printer(chunk) == event(chunk)


@pytest.mark.parametrize("index", [0, 2])
def test_a_text_delta_prints_as_its_chunk_and_is_built_only_until_a_template(index: int) -> None:
    printer = ChunkPrinter(CHAT_TEXT)
    built: list[str] = []

    def delta(text: str) -> TextDelta:
        def build() -> pb.StreamChatCompletionResponse:
            built.append(text)
            return chat_chunk(index=index, delta=pb.ChatCompletionDelta(content=text))

        return TextDelta(index, text, build)

    for text in ["first", *TEXTS[2:]]:
        chunk = chat_chunk(index=index, delta=pb.ChatCompletionDelta(content=text))
        assert printer(delta(text)) == event(chunk)
    # The first made the choice's template; every later one was printed without its chunk.
    assert built == ["first"]
    # Another choice has no template yet: its first delta is built.
    other = TextDelta(index + 1, "x", lambda: chat_chunk(index=index + 1))
    assert printer(other) == event(chat_chunk(index=index + 1))


def test_a_model_id_holding_the_marker_still_prints_right() -> None:
    printer = ChunkPrinter(CHAT_TEXT)
    chunk = chat_chunk(model="\x01helios-text\x02", delta=pb.ChatCompletionDelta(content="x"))
    assert printer(chunk) == event(chunk)
    assert json.loads(printer(chunk)[len(b"data: ") :])["choices"][0]["delta"]["content"] == "x"


def other_chat_chunks() -> list[pb.StreamChatCompletionResponse]:
    logprobs = pb.ChatChoiceLogprobs()
    logprobs.content.add(token="hi", logprob=-0.25)
    with_tool = chat_chunk(delta=pb.ChatCompletionDelta())
    with_tool.choices[0].delta.tool_calls.add(index=0, id="call_1", type="function")
    two = chat_chunk(delta=pb.ChatCompletionDelta(content="a"))
    two.choices.add(index=1, delta=pb.ChatCompletionDelta(content="b"))
    return [
        chat_chunk(delta=pb.ChatCompletionDelta(role="assistant", content="first")),
        chat_chunk(delta=pb.ChatCompletionDelta(content="last"), finish_reason="stop"),
        chat_chunk(delta=pb.ChatCompletionDelta(content="x"), logprobs=logprobs),
        chat_chunk(delta=pb.ChatCompletionDelta()),
        with_tool,
        two,
        pb.StreamChatCompletionResponse(
            id="chatcmpl-1", usage=pb.CompletionUsage(prompt_tokens=1, total_tokens=1)
        ),
        pb.StreamChatCompletionResponse(
            id="chatcmpl-1", error=pb.ErrorDetail(message="lost", type="server_error")
        ),
    ]


def test_every_other_chat_chunk_takes_the_generic_printer() -> None:
    printer = ChunkPrinter(CHAT_TEXT)
    printer(chat_chunk(delta=pb.ChatCompletionDelta(content="warm")))  # a template exists
    for chunk in other_chat_chunks():
        assert printer(chunk) == event(chunk)
    printed = json.loads(printer(other_chat_chunks()[1])[len(b"data: ") :])
    assert printed["choices"][0]["finish_reason"] == "stop"


def test_every_other_completion_chunk_takes_the_generic_printer() -> None:
    printer = ChunkPrinter(COMPLETION_TEXT)
    printer(completion_chunk(text="warm"))
    logprobs = pb.CompletionLogprobs(tokens=["a"], text_offset=[0])
    for chunk in (
        completion_chunk(text="end", finish_reason="length"),
        completion_chunk(text="a", logprobs=logprobs),
        completion_chunk(),
    ):
        assert printer(chunk) == event(chunk)


async def _chunks(
    items: list[pb.StreamCompletionResponse], fail: bool
) -> AsyncGenerator[pb.StreamCompletionResponse, None]:
    for item in items:
        yield item
    if fail:
        raise RuntimeError("broke off")


async def test_a_completed_stream_ends_in_done_and_names_its_type_once() -> None:
    chunks = [completion_chunk(text="a"), completion_chunk(text="b", finish_reason="stop")]
    bodies = [b async for b in event_stream(_chunks(chunks, fail=False), COMPLETION_TEXT)]
    assert [b.content_type for b in bodies] == [EVENT_STREAM_CONTENT_TYPE, "", ""]
    assert [b.data for b in bodies] == [event(chunks[0]), event(chunks[1]), DONE_EVENT]


async def test_a_stream_that_breaks_off_gets_no_done() -> None:
    bodies = []
    chunks = _chunks([completion_chunk(text="a")], fail=True)
    with pytest.raises(RuntimeError, match="broke off"):
        async for body in event_stream(chunks, COMPLETION_TEXT):
            bodies.append(body.data)
    assert bodies == [event(completion_chunk(text="a"))]


async def test_closing_the_events_closes_the_chunks_at_once() -> None:
    closed = []

    async def chunks() -> AsyncIterator[pb.StreamCompletionResponse]:
        try:
            while True:
                yield completion_chunk(text="a")
        finally:
            closed.append(True)

    events = event_stream(chunks(), COMPLETION_TEXT)
    await events.__anext__()
    await events.aclose()
    assert closed == [True]
