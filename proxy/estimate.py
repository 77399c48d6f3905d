"""How much memory a model needs on a worker: the estimator, or the weights' bytes.

Domain only. The estimator service (``--estimator``) is asked first; when there is none,
or it answers UNIMPLEMENTED / UNAVAILABLE / anything else, the fallback is the bytes of
the model directory's weight files (what a worker charges against its capacity). The
source of each figure is logged and counted in ``helios_proxy_memory_estimates_total``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy import metrics
from runtime.errors import HeliosError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes one replica needs, and where the figure comes from."""

    bytes: int
    source: str  # "estimator" | "weights"


class EstimatorClient(Protocol):
    """The estimator service: total bytes for one replica of the model at ``path``."""

    async def estimate(self, path: Path) -> int: ...


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files in an HF-layout directory (blocking: run in a thread)."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(
        f.stat().st_size for f in path.glob("*.bin")
    )


class MemoryEstimator:
    """Estimates, remembered per model directory."""

    def __init__(self, client: EstimatorClient | None = None) -> None:
        self._client = client
        self._cache: dict[Path, MemoryNeed] = {}

    async def need(self, model: str, path: Path) -> MemoryNeed:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        need: MemoryNeed | None = None
        if self._client is not None:
            try:
                need = MemoryNeed(await self._client.estimate(path), "estimator")
            except HeliosError as exc:
                logger.warning(
                    "estimator could not answer; using the weights' bytes",
                    extra={"model": model, "error": exc.message, "code": exc.status_code.name},
                )
        if need is None:
            size = await asyncio.to_thread(weights_bytes, path)
            need = MemoryNeed(size, "weights")
        metrics.MEMORY_ESTIMATES.labels(need.source).inc()
        logger.info(
            "memory need", extra={"model": model, "bytes": need.bytes, "source": need.source}
        )
        self._cache[path] = need
        return need
