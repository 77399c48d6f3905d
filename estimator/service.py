"""The estimator's domain facade: caches in front of the formulas.

:class:`MemoryEstimator` is what the gRPC servicer (and the CLI) call. It caches parsed
architectures by config content, and whole estimates with a TTL keyed on the config's
content hash plus every parameter; :meth:`MemoryEstimator.estimate` says whether the
answer was a cache hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from estimator.architecture import Architecture
from estimator.cache import TtlCache
from estimator.config_json import parse_architecture
from estimator.estimate_params import EstimateParams
from estimator.memory import Estimate, estimate_memory
from estimator.models import ConfigSource
from estimator.planning import Recommendations, Suggestion, compatibility, optimize, recommend

__all__ = ["DEFAULT_TTL_SECONDS", "MemoryEstimator"]

DEFAULT_TTL_SECONDS = 300.0


class MemoryEstimator:
    """Estimates with caching; every method raises InvalidArgumentError on bad input."""

    def __init__(
        self,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_entries: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.estimates: TtlCache[tuple[str, tuple[object, ...]], Estimate] = TtlCache(
            ttl_seconds, max_entries, clock
        )
        self.architectures: TtlCache[str, Architecture] = TtlCache(ttl_seconds, max_entries, clock)

    def architecture(self, source: ConfigSource) -> Architecture:
        arch = self.architectures.get(source.key)
        if arch is None:
            arch = parse_architecture(source.load())
            self.architectures.put(source.key, arch)
        return arch

    def estimate(self, source: ConfigSource, params: EstimateParams) -> tuple[Estimate, bool]:
        """The estimate and whether it came from the cache."""
        key = (source.key, params.key())
        cached = self.estimates.get(key)
        if cached is not None:
            return cached, True
        result = estimate_memory(self.architecture(source), params)
        self.estimates.put(key, result)
        return result, False

    def recommend(self, models: Sequence[tuple[ConfigSource, EstimateParams]]) -> Recommendations:
        return recommend([(self.architecture(s), p) for s, p in models])

    def compatibility(self, source: ConfigSource, params: EstimateParams) -> Recommendations:
        return compatibility(self.architecture(source), params)

    def optimize(
        self, source: ConfigSource, params: EstimateParams, target_bytes: int
    ) -> list[Suggestion]:
        return optimize(self.architecture(source), params, target_bytes)
