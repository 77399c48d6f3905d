"""The reference engine's concurrency slots: at most ``size`` requests compute at once,
the others wait for a slot (or for their abort).

A step runs in a thread and cannot be interrupted: a request whose consumer left in the
middle of one keeps its slot until that step returns, so that no more than ``size``
steps ever compute at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any

__all__ = ["Slots"]


class Slots:
    """Counts the requests running (holding a slot) and waiting (queued for one)."""

    def __init__(self, size: int) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self.running = 0
        self.waiting = 0

    async def acquire(self, aborted: asyncio.Event) -> bool:
        """Wait for a slot; False if ``aborted`` was set first (no slot taken)."""
        self.waiting += 1
        try:
            got = await self._acquire(aborted)
        finally:
            self.waiting -= 1
        if got:
            self.running += 1
        return got

    def release_after(self, inflight: concurrent.futures.Future[Any] | None) -> None:
        """Free a slot now, or once the step still computing (``inflight``) returns."""
        if inflight is None or inflight.done():
            self._release()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Finalised outside the loop (generator garbage-collected after the loop
            # stopped): nothing can wait on the slot any more, so free it now.
            self._release()
            return

        def _on_done(_: concurrent.futures.Future[Any]) -> None:
            # RuntimeError: the loop is closed, nobody is left to wait for the slot.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release)

        inflight.add_done_callback(_on_done)

    async def _acquire(self, aborted: asyncio.Event) -> bool:
        if aborted.is_set():
            return False
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # free slot: returns without suspending
            return True
        acquire = asyncio.ensure_future(self._semaphore.acquire())
        abort = asyncio.ensure_future(aborted.wait())
        got = False
        try:
            await asyncio.wait({acquire, abort}, return_when=asyncio.FIRST_COMPLETED)
            got = acquire.done() and not acquire.cancelled() and acquire.exception() is None
            return got
        finally:
            abort.cancel()
            if not acquire.done():
                # A cancelled acquire() never keeps the slot (asyncio hands it on).
                acquire.cancel()
            elif not got and not acquire.cancelled() and acquire.exception() is None:
                # We were cancelled ourselves just as the slot came: give it back.
                self._semaphore.release()

    def _release(self) -> None:
        self.running -= 1
        self._semaphore.release()
