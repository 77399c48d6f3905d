"""runtime.streams.coalesce: order, merging under backlog, errors, close, back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import pytest

from runtime.streams import coalesce

pytestmark = pytest.mark.asyncio


def join(parts: Sequence[str]) -> str:
    return "".join(parts)


async def from_queue(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (item := await queue.get()) is not None:
        yield item


async def test_items_one_by_one_when_the_consumer_keeps_up() -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    got: list[str] = []
    async with aclosing(coalesce(from_queue(queue), join)) as stream:
        for item in "abc":
            await queue.put(item)
            got.append(await anext(stream))
        await queue.put(None)
        assert [x async for x in stream] == []
    assert got == ["a", "b", "c"]


async def test_backlog_is_merged_in_order() -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    async with aclosing(coalesce(from_queue(queue), join)) as stream:
        await queue.put("a")
        assert await anext(stream) == "a"
        for item in "bcdef":  # all arrive while the consumer is away
            queue.put_nowait(item)
        await asyncio.sleep(0.01)
        assert await anext(stream) == "bcdef"
        await queue.put("g")
        await queue.put(None)
        assert [x async for x in stream] == ["g"]


async def test_source_error_comes_after_the_items_before_it() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise ValueError("worker went away")

    got: list[str] = []
    with pytest.raises(ValueError, match="worker went away"):
        async for item in coalesce(failing(), join):
            got.append(item)
    assert "".join(got) == "ab"


async def test_source_cancelled_by_its_own_call_surfaces_as_cancelled() -> None:
    async def cancelled_call() -> AsyncIterator[str]:
        yield "a"
        raise asyncio.CancelledError()

    got: list[str] = []
    with pytest.raises(asyncio.CancelledError):
        async for item in coalesce(cancelled_call(), join):
            got.append(item)
    assert got == ["a"]


async def test_closing_early_stops_the_reader_and_closes_the_source() -> None:
    events: list[str] = []
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def source() -> AsyncIterator[str]:
        try:
            while True:
                yield await queue.get() or ""
        except asyncio.CancelledError:
            events.append("cancelled")  # e.g. a gRPC call being aborted
            raise
        finally:
            events.append("closed")

    # Closed after the first item (read directly, no reader task yet): the source is
    # closed at once.
    stream = coalesce(source(), join)
    await queue.put("a")
    assert await anext(stream) == "a"
    await stream.aclose()
    assert events == ["closed"]

    # Closed later, while the reader task waits on the source: the wait is cancelled
    # and the source closed.
    events.clear()
    stream = coalesce(source(), join)
    await queue.put("a")
    assert await anext(stream) == "a"
    await queue.put("b")
    assert await anext(stream) == "b"
    await stream.aclose()
    assert events == ["cancelled", "closed"]


async def test_consumer_cancelled_while_waiting_closes_the_source() -> None:
    closed = asyncio.Event()

    async def silent() -> AsyncIterator[str]:
        try:
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.set()

    async def consume() -> None:
        async with aclosing(coalesce(silent(), join)) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


async def test_reader_stops_reading_at_max_pending() -> None:
    produced = 0

    async def fast() -> AsyncIterator[str]:
        nonlocal produced
        for _ in range(100):
            produced += 1
            yield "x"
            await asyncio.sleep(0)

    async with aclosing(coalesce(fast(), join, max_pending=8)) as stream:
        first = await anext(stream)
        await asyncio.sleep(0.05)  # the consumer stalls: the reader must stop at 8 pending
        assert produced <= len(first) + 8
        rest = "".join([x async for x in stream])
    assert len(first) + len(rest) == 100


async def test_max_pending_must_be_positive() -> None:
    async def empty() -> AsyncIterator[str]:
        return
        yield ""

    with pytest.raises(ValueError, match="max_pending"):
        await anext(coalesce(empty(), join, max_pending=0))
