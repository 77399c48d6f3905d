"""Several choices of one request: each choice is a job of its own on the backend (the
engine runs them side by side and batches them where it can: vLLM schedules them in one
batch and shares the prompt's cached prefix), and the answer is put together here.

Domain only (no protobuf): the servicer turns what this module yields into messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

from openai_compat.backend import CallInfo, GenerationStep, InferenceBackend
from openai_compat.params import Job, Request

_END = object()


@dataclass(frozen=True)
class Usage:
    """Token counts of a whole request: each prompt counted once, every choice's
    completion tokens."""

    prompt_tokens: int
    completion_tokens: int


def usage_of(jobs: Sequence[Job], lasts: Sequence[GenerationStep]) -> Usage:
    """The usage of ``jobs`` whose last steps are ``lasts`` (same order)."""
    pairs = list(zip(jobs, lasts, strict=True))
    return Usage(
        prompt_tokens=sum(step.prompt_tokens for job, step in pairs if job.counts_prompt),
        completion_tokens=sum(step.completion_tokens for step in lasts),
    )


async def complete_all(
    backend: InferenceBackend, request: Request, call: CallInfo
) -> list[GenerationStep]:
    """Every choice of ``request`` run to its end, in index order. The first failure
    fails the request and cancels the other choices."""
    if len(request.jobs) == 1:
        return [await backend.complete(request.jobs[0], call)]
    tasks = [asyncio.ensure_future(backend.complete(job, call)) for job in request.jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def stream_all(
    backend: InferenceBackend, request: Request, call: CallInfo
) -> AsyncGenerator[tuple[int, GenerationStep], None]:
    """The steps of every choice of ``request`` as they come, each with its choice's
    index. A failure of one choice fails the stream; closing the stream (client gone)
    closes every choice's generation."""
    streams = [backend.stream(job, call) for job in request.jobs]
    if len(streams) == 1:  # the common case, without a task per choice
        async with aclosing(streams[0]) as only:
            async for step in only:
                yield request.jobs[0].index, step
        return
    async with aclosing(_merged(streams)) as merged:
        async for index, step in merged:
            yield request.jobs[index].index, step


async def _merged(
    streams: Sequence[AsyncGenerator[GenerationStep, None]],
) -> AsyncGenerator[tuple[int, GenerationStep], None]:
    """``streams`` interleaved as their steps come, each step with its stream's
    position; the first exception of any stream is raised here."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(position: int, stream: AsyncGenerator[GenerationStep, None]) -> None:
        try:
            async with aclosing(stream):
                async for step in stream:
                    queue.put_nowait((position, step))
            queue.put_nowait((position, _END))
        except Exception as error:  # handed to the reader, which raises it
            queue.put_nowait((position, error))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            position, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield position, cast(GenerationStep, item)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
