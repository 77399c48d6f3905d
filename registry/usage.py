"""Usage statistics, the prefetch predictor and the eviction ranking.

**Predictor (prefetch hints).** Per model, two pieces of state, updated on every
RecordUsage:

* ``rate``: an exponentially weighted moving average of the request rate in requests per
  hour, with time constant ``tau`` (1 h). Between records it decays as
  ``rate * exp(-dt / tau)``; a record of ``n`` requests adds ``n / tau``.
* ``season[h]`` for the 24 hours of the day (UTC): requests seen in that hour of the day,
  decayed with a 7-day half-life, so the profile follows the last week or so.

The forecast for the coming hour is ``rate_now * f`` where the seasonal factor
``f = (season[h_next] + e) / (mean(season) + e)`` is clipped to [0.25, 4] (multiplicative
seasonality as in Holt-Winters; ``e`` keeps a young profile close to 1). Hints are the
models with the highest forecast.

**Eviction (size-aware LRU with aging and priority classes).** A model's retention value
is ``w[priority] * (1 + freq) / size_gib`` (GreedyDual-Size-Frequency): ``freq`` is the
request count decayed with a 1-hour half-life (this is the aging: a model that was hot
yesterday is worth nothing today), ``size_gib`` the size of its latest version (so among
equally idle models the biggest goes first: one eviction frees more), and
``w = 4 ** priority`` for the classes 0..3 (default 1). Ties (idle models of one class and
size) break by least recent use. Pinned models are never candidates. Candidates are taken
lowest value first until ``bytes_needed`` is covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "EvictionCandidate",
    "ModelUsage",
    "Prediction",
    "UsageTracker",
]

TAU_HOURS = 1.0
SEASON_HALF_LIFE_S = 7 * 24 * 3600.0
FREQ_HALF_LIFE_S = 3600.0
SEASON_EPSILON = 1.0
MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
DEFAULT_PRIORITY = 1
GIB = 1024**3


@dataclass
class ModelUsage:
    """One model's counters and predictor state."""

    requests: int = 0
    tokens: int = 0
    last_used: float = 0.0
    rate: float = 0.0  # EWMA requests/hour at ``updated``
    freq: float = 0.0  # decayed request count at ``updated`` (eviction)
    updated: float = 0.0
    season: list[float] = field(default_factory=lambda: [0.0] * 24)

    def to_state(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "freq": self.freq,
            "updated": self.updated,
            "season": self.season,
        }

    @classmethod
    def from_row(
        cls, requests: int, tokens: int, last_used: float, state: dict[str, object]
    ) -> ModelUsage:
        season = state.get("season")
        return cls(
            requests,
            tokens,
            last_used,
            float(state.get("rate", 0.0)),  # type: ignore[arg-type]
            float(state.get("freq", 0.0)),  # type: ignore[arg-type]
            float(state.get("updated", 0.0)),  # type: ignore[arg-type]
            [float(x) for x in season]
            if isinstance(season, list) and len(season) == 24
            else [0.0] * 24,
        )


@dataclass(frozen=True)
class Prediction:
    model_id: str
    requests_per_hour: float


@dataclass(frozen=True)
class EvictionCandidate:
    model_id: str
    size_bytes: int
    value: float
    priority: int


def _hour(ts: float) -> int:
    return int(ts // 3600) % 24


class UsageTracker:
    """In-memory usage state (the registry persists it after every record)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.models: dict[str, ModelUsage] = {}

    def record(
        self, model_id: str, requests: int, tokens: int, now: float | None = None
    ) -> ModelUsage:
        now = self.clock() if now is None else now
        u = self.models.setdefault(model_id, ModelUsage(updated=now))
        dt = max(0.0, now - u.updated)
        u.rate = u.rate * math.exp(-dt / (TAU_HOURS * 3600)) + requests / TAU_HOURS
        u.freq = u.freq * 0.5 ** (dt / FREQ_HALF_LIFE_S) + requests
        decay = 0.5 ** (dt / SEASON_HALF_LIFE_S)
        u.season = [s * decay for s in u.season]
        u.season[_hour(now)] += requests
        u.updated = now
        u.requests += requests
        u.tokens += tokens
        u.last_used = max(u.last_used, now)
        return u

    def forecast(self, model_id: str, now: float | None = None) -> float:
        """Predicted requests in the coming hour."""
        now = self.clock() if now is None else now
        u = self.models.get(model_id)
        if u is None:
            return 0.0
        dt = max(0.0, now - u.updated)
        rate = u.rate * math.exp(-dt / (TAU_HOURS * 3600))
        mean = sum(u.season) / 24
        factor = (u.season[_hour(now + 3600)] + SEASON_EPSILON) / (mean + SEASON_EPSILON)
        return rate * min(MAX_FACTOR, max(MIN_FACTOR, factor))

    def predictions(self, limit: int, now: float | None = None) -> list[Prediction]:
        now = self.clock() if now is None else now
        ranked = sorted(
            (Prediction(m, self.forecast(m, now)) for m in self.models),
            key=lambda p: (-p.requests_per_hour, p.model_id),
        )
        return [p for p in ranked if p.requests_per_hour > 0][: max(0, limit)]

    def eviction_order(
        self,
        models: Iterable[tuple[str, int]],
        policies: dict[str, tuple[int, bool]],
        bytes_needed: int,
        now: float | None = None,
    ) -> list[EvictionCandidate]:
        """Candidates among ``models`` (id, size), lowest retention value first, enough
        to cover ``bytes_needed`` (every unpinned one when it is 0)."""
        now = self.clock() if now is None else now
        ranked: list[tuple[float, float, EvictionCandidate]] = []
        for model_id, size in models:
            priority, pinned = policies.get(model_id, (DEFAULT_PRIORITY, False))
            if pinned:
                continue
            u = self.models.get(model_id)
            freq = 0.0
            last = 0.0
            if u is not None:
                freq = u.freq * 0.5 ** (max(0.0, now - u.updated) / FREQ_HALF_LIFE_S)
                last = u.last_used
            value = (4.0**priority) * (1.0 + freq) / max(size / GIB, 1e-6)
            ranked.append((value, last, EvictionCandidate(model_id, size, value, priority)))
        ranked.sort(key=lambda item: (item[0], item[1], item[2].model_id))
        out: list[EvictionCandidate] = []
        freed = 0
        for _, _, candidate in ranked:
            if bytes_needed > 0 and freed >= bytes_needed:
                break
            out.append(candidate)
            freed += candidate.size_bytes
        return out
