"""Progress of an import: the :class:`ImportProgress` reports, the :class:`ProgressReporter`
an import's worker thread sends them through, and :func:`stream_progress`, which runs that
thread and yields its reports on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

__all__ = ["ImportProgress", "ProgressReporter", "stream_progress"]


@dataclass(frozen=True)
class ImportProgress:
    """One progress report; ``version`` is set on the last one, once it is visible."""

    file: str = ""
    file_bytes_done: int = 0
    file_bytes_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    reused_bytes: int = 0
    version: tuple[str, str] | None = None


class ProgressReporter:
    """Thread -> event loop progress channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ImportProgress]):
        self.loop = loop
        self.queue = queue
        self.state = ImportProgress()
        self.last = 0.0

    def update(self, force: bool = False, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        now = time.monotonic()
        if force or now - self.last >= 0.05:
            self.last = now
            self.loop.call_soon_threadsafe(self.queue.put_nowait, self.state)


async def stream_progress(
    work: Callable[[ProgressReporter], tuple[str, str]],
) -> AsyncIterator[ImportProgress]:
    """Run ``work`` in a thread and yield the progress it reports; the report carrying the
    version comes last, after ``work`` has returned (its error, if any, is raised)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ImportProgress] = asyncio.Queue()
    reporter = ProgressReporter(loop, queue)
    task = asyncio.ensure_future(asyncio.to_thread(work, reporter))
    last: ImportProgress | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                last = getter.result()
                if last.version is None:
                    yield last
                continue
            getter.cancel()
            while not queue.empty():
                last = queue.get_nowait()
                if last.version is None:
                    yield last
            task.result()  # raises the import's error
            if last is not None and last.version is not None:
                yield last
            return
    finally:
        if not task.done():
            # The caller went away; the thread finishes (or fails) on its own.
            task.add_done_callback(lambda t: t.exception())
