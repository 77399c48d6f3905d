"""Where a model load's time goes, phase by phase (issue 14: the cold start is the product).

A load on a worker is: ``fetch`` (storaged makes the model local), then the engine's own
start, which an engine breaks down as far as it can see (``weights``, ``kv_cache``,
``compile``); what the engine does not attribute is ``engine_start`` (process start,
imports, tokenizer). A model woken from sleep has ``wake`` alone. Each finished load
gives one log line with every phase, one observation per phase in
``helios_worker_model_load_phase_seconds``, and a short text for LoadModel's last
progress message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import Histogram

logger = logging.getLogger(__name__)

# In the order a load goes through them.
PHASES = ("fetch", "engine_start", "weights", "kv_cache", "compile", "wake")

LOAD_PHASE_SECONDS = Histogram(
    "helios_worker_model_load_phase_seconds",
    "Seconds each phase of a model load took on this worker (fetch, engine_start, weights,"
    " kv_cache, compile, wake; an engine reports the phases it can see).",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)


class LoadTimeline:
    """The phases of one model load, as they are measured."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.phases: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (also when it raises: a failed load's
        phases are logged too)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    def add(self, name: str, seconds: float) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown load phase {name!r}; one of {', '.join(PHASES)}")
        self.phases[name] = self.phases.get(name, 0.0) + max(0.0, seconds)

    def add_engine(self, seconds: float, engine_phases: Mapping[str, float]) -> None:
        """The engine's start took ``seconds`` in all; ``engine_phases`` is its own
        breakdown, and the rest of the time is ``engine_start``."""
        for name, phase_seconds in engine_phases.items():
            self.add(name, phase_seconds)
        self.add("engine_start", seconds - sum(engine_phases.values()))

    @property
    def total_seconds(self) -> float:
        return time.monotonic() - self._started

    def describe(self) -> str:
        """``fetch 1.20s, engine_start 0.05s, weights 0.31s`` (in load order)."""
        return ", ".join(f"{n} {self.phases[n]:.2f}s" for n in PHASES if n in self.phases)

    def finish(self, outcome: str) -> None:
        """Report the load: one log line, one histogram observation per phase."""
        for name, seconds in self.phases.items():
            LOAD_PHASE_SECONDS.labels(name).observe(seconds)
        logger.info(
            "model load phases",
            extra={
                "model": self.model,
                "outcome": outcome,
                "load_seconds": round(self.total_seconds, 3),
                "phases": {n: round(s, 3) for n, s in self.phases.items()},
            },
        )
