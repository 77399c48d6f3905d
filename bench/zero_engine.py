"""A benchmark engine that streams tokens at no cost (no model, no compute).

BENCH ONLY: it lets bench/proxy_bench.py measure the mesh (gRPC hops, the proxy's
relay, Envoy) rather than a model. Every step yields one fixed token at once, or, paced
(``pace_s``), one token per stream every ``pace_s`` seconds, as an engine's decode steps
release them (bench/stream_transport_bench.py: the cost of each streamed message).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from worker.engine.base import (
    EngineClient,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
)

TOKEN = "tok "


class ZeroCostEngine(EngineClient):
    """Yields ``max_tokens`` copies of :data:`TOKEN`, never waiting on compute (paced:
    sleeping ``pace_s`` before each)."""

    def __init__(self, name: str, pace_s: float = 0.0) -> None:
        self._name = name
        self._pace_s = pace_s
        # Paced, every token is its own message (nothing piles up to be merged).
        self.merges_backlog = pace_s > 0
        self._running: set[str] = set()
        self._generated = 0

    @property
    def model_name(self) -> str:
        return self._name

    def count_tokens(self, request: GenerationRequest) -> int:
        return 1

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self._running.add(request.request_id)
        try:
            n = request.sampling.max_tokens
            for step in range(n):
                if self._pace_s:
                    await asyncio.sleep(self._pace_s)
                self._generated += 1
                last = step + 1 == n
                yield GenerationChunk(
                    TOKEN, [step], 1, step + 1, FinishReason.LENGTH if last else None
                )
                if not self._pace_s and step % 64 == 63:
                    await asyncio.sleep(0)  # let other streams run
        finally:
            self._running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def stats(self) -> EngineStats:
        return EngineStats(len(self._running), 0, generated_tokens_total=self._generated)

    async def shutdown(self) -> None:
        return None
