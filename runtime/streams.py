"""Token streams that keep up with their producer: items that pile up while the consumer
is busy (writing the previous message to a slow peer) go out merged, as one message.

A token stream pays a fixed cost per message at every hop (protobuf, gRPC framing, the
interceptor stack, Envoy's transcoding into one SSE event). When the producer is faster
than a hop, sending one message per token makes that hop the bottleneck and the backlog
grows; merging what is already waiting keeps each hop's cost per *token* falling as load
rises. Nothing is held back to wait for company: an item that arrives while the consumer
is idle goes out alone, at once, so time to first token is untouched. vLLM's OpenAI server
does the same through its DELTA output collector (and ``--stream-interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# How many items the reader may run ahead of a stalled consumer before it stops reading
# (and so lets the producer feel back-pressure, as a plain `async for` would).
DEFAULT_MAX_PENDING = 4096


async def coalesce(
    source: AsyncIterator[T],
    merge: Callable[[Sequence[T]], T],
    *,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> AsyncGenerator[T, None]:
    """Yield ``source``'s items in order; those that arrived while the consumer was busy
    come out as one ``merge``-d item.

    Errors from ``source`` are raised after the items that preceded them. Closing or
    cancelling this generator cancels the reader and closes ``source`` (so a gRPC call
    under it is cancelled and the work behind it stops).
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    # The first item is read here, not by the reader task: nothing can have piled up
    # before it, and handing it over from another task would cost the first token an
    # extra turn of the event loop.
    try:
        first = await anext(source)
    except StopAsyncIteration:
        return
    except BaseException:
        await _close(source)
        raise
    try:
        yield first
    except BaseException:
        await _close(source)
        raise
    loop = asyncio.get_running_loop()
    pending: list[T] = []
    finished = False
    failure: BaseException | None = None
    # Bare futures rather than asyncio.Events: this runs for every streamed request.
    consumer_wakeup: asyncio.Future[None] | None = None  # set while the consumer waits
    reader_wakeup: asyncio.Future[None] | None = None  # set while the reader is held back

    def wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read() -> None:
        nonlocal finished, failure, reader_wakeup
        try:
            async for item in source:
                pending.append(item)
                wake(consumer_wakeup)
                if len(pending) >= max_pending:
                    reader_wakeup = loop.create_future()
                    await reader_wakeup
        except (Exception, asyncio.CancelledError) as exc:
            # Handed to the consumer and raised there, after the items before it. A
            # CancelledError here is the source's own (its call was cancelled), not ours:
            # we only cancel this task once the consumer has stopped listening.
            failure = exc
        finally:
            finished = True
            wake(consumer_wakeup)

    reader = loop.create_task(read())
    try:
        while True:
            if pending:
                batch, pending = pending, []
                wake(reader_wakeup)
                yield batch[0] if len(batch) == 1 else merge(batch)
            elif finished:
                if failure is not None:
                    raise failure
                return
            else:
                consumer_wakeup = loop.create_future()
                await consumer_wakeup
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await _close(source)


async def _close(source: AsyncIterator[object]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
