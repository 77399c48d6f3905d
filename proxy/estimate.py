"""How much memory a model needs on a worker: the estimator, or the weights' bytes.

Domain only. The estimator service (``--estimator``) is asked first, with the model
directory (catalogue models) or the registry id (registry models: the estimator resolves
it through the registry); when there is none, or it answers UNIMPLEMENTED / UNAVAILABLE /
anything else, the fallback is the bytes of the model directory's weight files, or the
registry manifest's total_bytes. The source of each figure is logged and counted in
``helios_proxy_memory_estimates_total``.
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
    source: str  # "estimator" | "weights" | "manifest"


class EstimatorClient(Protocol):
    """The estimator service: total bytes for one replica of ``model_id`` (a registry
    id, or a model directory under the estimator's model roots)."""

    async def estimate(self, model_id: str) -> int: ...


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files in an HF-layout directory (blocking: run in a thread)."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(
        f.stat().st_size for f in path.glob("*.bin")
    )


class MemoryEstimator:
    """Estimates, remembered per model directory."""

    def __init__(self, client: EstimatorClient | None = None) -> None:
        self._client = client
        self._cache: dict[str, MemoryNeed] = {}

    async def need(self, model: str, path: Path | None, manifest_bytes: int = 0) -> MemoryNeed:
        """``path`` is the model directory; None for a registry model, whose fallback
        is ``manifest_bytes`` (its version's total size)."""
        key = str(path) if path is not None else f"registry:{model}"
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        need: MemoryNeed | None = None
        if self._client is not None:
            try:
                target = str(path) if path is not None else model
                need = MemoryNeed(await self._client.estimate(target), "estimator")
            except HeliosError as exc:
                logger.warning(
                    "estimator could not answer; using the weights' bytes",
                    extra={"model": model, "error": exc.message, "code": exc.code.name},
                )
        if need is None and path is None:
            need = MemoryNeed(manifest_bytes, "manifest")
        elif need is None:
            assert path is not None
            size = await asyncio.to_thread(weights_bytes, path)
            need = MemoryNeed(size, "weights")
        metrics.MEMORY_ESTIMATES.labels(need.source).inc()
        logger.info(
            "memory need", extra={"model": model, "bytes": need.bytes, "source": need.source}
        )
        self._cache[key] = need
        return need
