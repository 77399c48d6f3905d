"""The registry as the proxy's source of truth for models (domain only).

* :class:`RegistryCatalogue` lists what the registry holds (paged ``ListModels``,
  remembered for when the registry is unreachable) and resolves a requested model id, so
  a request for any registry model can cold-start it (the worker fetches the files
  through storaged: no local path).
* :meth:`RegistryCatalogue.expected_back` reads the registry's usage forecast: whether a
  model that goes idle is expected back within the hour (worth keeping asleep).
* :class:`UsageReporter` batches finished requests (requests and tokens per model) and
  sends them with ``RecordUsage`` from a background task: never on a request's critical
  path; failures are logged and counted, and the batch is kept (bounded) for the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy import metrics
from runtime.errors import ErrorCode, HeliosError
from runtime.tasks import BackgroundTask

logger = logging.getLogger(__name__)

DEFAULT_USAGE_INTERVAL_S = 1.0
DEFAULT_MAX_PENDING_MODELS = 10_000
# A model whose forecast is at least one request in the coming hour is expected back
# (the registry's rate is an hour-long moving average: one request adds one per hour).
EXPECTED_BACK_REQUESTS_PER_HOUR = 1.0
# How many of the registry's best forecasts are read; a model below them is not expected.
FORECAST_HINTS = 64


@dataclass(frozen=True)
class PrefetchHint:
    """One model the registry's usage forecasts demand for."""

    model_id: str
    size_bytes: int
    requests_per_hour: float  # the forecast for the coming hour


@dataclass(frozen=True)
class RegistryModel:
    """One model the registry holds: its latest version, that version's size and, for
    an adapter, its base."""

    model_id: str
    version: str
    total_bytes: int
    # For a LoRA adapter, the registry id of the model it adapts ("" for a model).
    base: str = ""


class RegistryClient(Protocol):
    """The RegistryService calls the proxy makes (raising the domain errors)."""

    async def list_models(self) -> list[RegistryModel]: ...

    async def resolve(self, reference: str) -> RegistryModel: ...

    async def record_usage(self, model_id: str, requests: int, tokens: int) -> None: ...

    async def prefetch_hints(self, limit: int) -> list[PrefetchHint]:
        """The models with the highest forecast, best first."""
        ...

    async def eviction_candidates(self, bytes_needed: int, loaded: Sequence[str]) -> list[str]:
        """Of ``loaded``, the models that may go, first to evict first."""
        ...

    async def close(self) -> None: ...


class RegistryCatalogue:
    """What the registry holds, as last seen."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.models: dict[str, RegistryModel] = {}
        self.listed_at = 0.0

    async def refresh(self) -> dict[str, RegistryModel]:
        """List the registry now; on failure keep (and return) the last listing."""
        try:
            listing = await self.client.list_models()
        except HeliosError as exc:
            metrics.REGISTRY_CALLS.labels("list", "failed").inc()
            logger.warning("registry listing failed", extra={"error": exc.message})
            return self.models
        metrics.REGISTRY_CALLS.labels("list", "ok").inc()
        self.models = {m.model_id: m for m in listing}
        self.listed_at = time.monotonic()
        return self.models

    async def lookup(self, model: str) -> RegistryModel | None:
        """The registry model a request names exactly (its canonical id), else None.
        Raises UnavailableError when the registry cannot be asked."""
        known = self.models.get(model)
        if known is not None:
            return known
        try:
            found = await self.client.resolve(model)
        except HeliosError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT):
                return None
            metrics.REGISTRY_CALLS.labels("resolve", "failed").inc()
            raise
        metrics.REGISTRY_CALLS.labels("resolve", "ok").inc()
        if found.model_id != model:
            # Workers serve a model under the name it was loaded as: only canonical ids
            # (what /v1/models lists) are served from the registry.
            return None
        self.models[model] = found
        return found

    async def expected_back(self, model: str) -> bool:
        """Whether the registry's usage forecasts ``model`` back within the hour. True
        for a model the registry does not hold or when it cannot be asked: then the
        caller's own reason decides alone."""
        if model not in self.models:
            return True
        try:
            hints = await self.client.prefetch_hints(FORECAST_HINTS)
        except HeliosError as exc:
            metrics.REGISTRY_CALLS.labels("prefetch", "failed").inc()
            logger.warning("registry forecast failed", extra={"error": exc.message})
            return True
        metrics.REGISTRY_CALLS.labels("prefetch", "ok").inc()
        rate = next((h.requests_per_hour for h in hints if h.model_id == model), 0.0)
        return rate >= EXPECTED_BACK_REQUESTS_PER_HOUR


class UsageReporter:
    """Per-model request/token counts, sent to the registry in batches."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        interval_s: float = DEFAULT_USAGE_INTERVAL_S,
        max_pending_models: int = DEFAULT_MAX_PENDING_MODELS,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.max_pending_models = max_pending_models
        self.pending: dict[str, tuple[int, int]] = {}
        self.sent_requests = 0
        self._reports = BackgroundTask(self._loop, "usage reporter")
        self._wake = asyncio.Event()

    def record(self, model: str, tokens: int, requests: int = 1) -> None:
        """Count a finished request (no I/O: the background task sends it)."""
        current = self.pending.get(model)
        if current is None and len(self.pending) >= self.max_pending_models:
            metrics.USAGE_DROPPED.inc()
            return
        r, t = current or (0, 0)
        self.pending[model] = (r + requests, t + tokens)

    async def flush(self) -> None:
        """Send everything pending; what fails stays pending for the next flush."""
        batch, self.pending = self.pending, {}
        for model, (requests, tokens) in batch.items():
            try:
                await self.client.record_usage(model, requests, tokens)
            except HeliosError as exc:
                metrics.REGISTRY_CALLS.labels("usage", "failed").inc()
                logger.warning(
                    "usage report failed",
                    extra={"model": model, "requests": requests, "error": exc.message},
                )
                if exc.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND):
                    continue  # the registry will never take it
                self.record(model, tokens, requests)
                continue
            metrics.REGISTRY_CALLS.labels("usage", "ok").inc()
            self.sent_requests += requests

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            if self.pending:
                await self.flush()

    def start(self) -> None:
        self._reports.start()

    async def stop(self) -> None:
        await self._reports.stop()
        if self.pending:
            with contextlib.suppress(HeliosError, TimeoutError):
                await asyncio.wait_for(self.flush(), timeout=2.0)
