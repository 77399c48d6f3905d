"""The background tasks that services run beside their servers: running and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: there is none) and wait until it has ended, so nothing it
    does runs after its owner stopped; its cancellation is not an error of the caller's."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BackgroundTask:
    """One named task an owner runs beside its work (a watch, a periodic pass): started
    once however often :meth:`start` is called, and :meth:`stop` cancels it and waits
    until it has ended; started again after a stop, it runs anew."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task in the running loop, unless it is running already."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
