"""Engine metrics per model, named after vLLM's (``vllm:X`` -> ``helios_worker_X``) where
they mean the same, so dashboards, alerts and autoscalers written for vLLM carry over.

They cover every request a model's engine runs on this worker, whichever contract brought
it (InferenceService from the edge, WorkerService.Generate relayed by the proxy, Prefill
and Decode), because they are read from the engine itself (:meth:`EngineClient.stats`)
and from the worker's admission queue, not counted per call:

=========================================  =========================================
helios_worker_num_requests_running         vllm:num_requests_running
helios_worker_num_requests_waiting         vllm:num_requests_waiting, plus the
                                           worker's admission queue ahead of the
                                           engine (helios_worker_queue_depth alone)
helios_worker_kv_cache_usage_perc          vllm:kv_cache_usage_perc (0..1)
helios_worker_prefix_cache_queries_total   vllm:prefix_cache_queries (prompt tokens)
helios_worker_prefix_cache_hits_total      vllm:prefix_cache_hits (prompt tokens)
helios_worker_num_preemptions_total        vllm:num_preemptions
=========================================  =========================================

The reference engine (transformers) has no paged KV pool: its KV use is the tokens held
in its requests' caches (and parked prefills) over ``max_concurrency x max_model_len``.
It has no prefix cache and never preempts: those counters stay 0 for its models.

The figures are read on the event loop (engines and the admission queue are not thread
safe; /metrics is served from a thread) every :data:`REFRESH_SECONDS` by
:class:`EngineMetricsRefresher`, so a scrape sees them at most that old. Counters are fed
the growth of the engine's own totals, so a reloaded engine (totals from 0 again) never
makes them go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from runtime.tasks import BackgroundTask
from worker.engine.base import EngineStats
from worker.models import ModelLifecycle, ModelManager

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0

RUNNING = Gauge(
    "helios_worker_num_requests_running",
    "Requests the model's engine is running now (vllm:num_requests_running).",
    ["model"],
)
WAITING = Gauge(
    "helios_worker_num_requests_waiting",
    "Requests waiting to run: in the worker's admission queue plus the engine's own queue"
    " (vllm:num_requests_waiting).",
    ["model"],
)
KV_CACHE_USAGE = Gauge(
    "helios_worker_kv_cache_usage_perc",
    "Fraction of the model's KV cache in use, 0..1 (vllm:kv_cache_usage_perc). The"
    " reference engine: tokens in live caches over max_concurrency x max_model_len.",
    ["model"],
)
PREFIX_CACHE_QUERIES = Counter(
    "helios_worker_prefix_cache_queries",
    "Prompt tokens looked up in the prefix cache (vllm:prefix_cache_queries); 0 for"
    " engines without one.",
    ["model"],
)
PREFIX_CACHE_HITS = Counter(
    "helios_worker_prefix_cache_hits",
    "Prompt tokens found in the prefix cache (vllm:prefix_cache_hits).",
    ["model"],
)
PREEMPTIONS = Counter(
    "helios_worker_num_preemptions",
    "Requests the engine preempted to free KV-cache blocks (vllm:num_preemptions).",
    ["model"],
)

_GAUGES = (RUNNING, WAITING, KV_CACHE_USAGE)


@dataclass
class _Totals:
    """The engine totals already fed to the counters, for one engine instance."""

    engine_id: int
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions: int = 0


def _grow(counter: Counter, model: str, now: int, before: int) -> int:
    """Add what ``now`` grew by since ``before`` (a smaller ``now``: an engine that
    started over, all of it is new); the new baseline. The model's series exists from
    its first refresh on, at 0 for an engine that has no such thing."""
    grown = now - before if now >= before else now
    child = counter.labels(model)
    if grown > 0:
        child.inc(grown)
    return now


class EngineMetrics:
    """Sets the engine metrics of every model a :class:`ModelManager` holds."""

    def __init__(self, models: ModelManager) -> None:
        self._models = models
        self._totals: dict[str, _Totals] = {}
        self._exported: set[str] = set()

    def refresh(self) -> None:
        """Read every READY model's engine and queue now (call on the event loop)."""
        seen: set[str] = set()
        for status in self._models.statuses():
            if status.state is not ModelLifecycle.READY:
                continue
            engine = self._models.engine(status.model)
            seen.add(status.model)
            self._set(status.model, status.stats, id(engine))
        # A model that left (unloaded, failed) has no engine to read: its gauges go, so
        # that sums over models stay right; its counters keep their totals.
        for model in self._exported - seen:
            for gauge in _GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(model)
            self._totals.pop(model, None)
        self._exported = seen

    def _set(self, model: str, stats: EngineStats, engine_id: int) -> None:
        RUNNING.labels(model).set(stats.running_requests)
        WAITING.labels(model).set(stats.waiting_requests + self._models.admission.queued(model))
        KV_CACHE_USAGE.labels(model).set(stats.kv_cache_usage)
        totals = self._totals.get(model)
        if totals is None or totals.engine_id != engine_id:
            totals = self._totals[model] = _Totals(engine_id)
        totals.prefix_queries = _grow(
            PREFIX_CACHE_QUERIES, model, stats.prefix_cache_queries_total, totals.prefix_queries
        )
        totals.prefix_hits = _grow(
            PREFIX_CACHE_HITS, model, stats.prefix_cache_hits_total, totals.prefix_hits
        )
        totals.preemptions = _grow(PREEMPTIONS, model, stats.preemptions_total, totals.preemptions)


class EngineMetricsRefresher:
    """Runs :meth:`EngineMetrics.refresh` every ``period`` seconds until stopped."""

    def __init__(self, models: ModelManager, period: float = REFRESH_SECONDS) -> None:
        self.metrics = EngineMetrics(models)
        self._period = period
        self._refreshes = BackgroundTask(self._run, "engine-metrics")

    def start(self) -> EngineMetricsRefresher:
        self.metrics.refresh()
        self._refreshes.start()
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            try:
                self.metrics.refresh()
            except Exception:
                # A metrics bug must not stop serving; it is logged with its traceback
                # and the next period tries again.
                logger.exception("engine metrics refresh failed")

    async def stop(self) -> None:
        await self._refreshes.stop()
