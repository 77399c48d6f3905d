"""vLLM's scheduler statistics as the worker reports them: a stat logger vLLM calls each
step folds them into the figures of a heartbeat and the engine metrics."""

from __future__ import annotations

from typing import Any

__all__ = ["VllmStats", "stat_logger_factory"]


class VllmStats:
    """Folds vLLM's per-step scheduler and iteration stats into the figures a heartbeat
    reports and the worker's engine metrics (worker/engine_metrics.py) export."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0
        # Since the last prefix-cache reset (for the heartbeat's hit rate) ...
        self.prefix_queries = 0
        self.prefix_hits = 0
        # ... and since the engine started (counters: vllm:prefix_cache_queries/hits,
        # vllm:num_preemptions).
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0
        self.preemptions_total = 0

    def record_iteration(self, iteration_stats: Any) -> None:
        if iteration_stats is not None:
            self.preemptions_total += int(iteration_stats.num_preempted_reqs)

    def record(self, scheduler_stats: Any) -> None:
        if scheduler_stats is None:
            return
        self.running = int(scheduler_stats.num_running_reqs)
        self.waiting = int(scheduler_stats.num_waiting_reqs) + int(
            getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
        )
        self.kv_usage = float(scheduler_stats.kv_cache_usage)
        prefix = scheduler_stats.prefix_cache_stats
        if prefix is not None:
            if prefix.reset:
                self.prefix_queries = self.prefix_hits = 0
            self.prefix_queries += int(prefix.queries)
            self.prefix_hits += int(prefix.hits)
            self.prefix_queries_total += int(prefix.queries)
            self.prefix_hits_total += int(prefix.hits)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def stat_logger_factory(stats: VllmStats) -> Any:
    """A vLLM StatLoggerBase subclass that feeds ``stats`` (built lazily: vLLM import)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _HeliosStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._stats = stats

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            self._stats.record(scheduler_stats)
            self._stats.record_iteration(iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _HeliosStatLogger
