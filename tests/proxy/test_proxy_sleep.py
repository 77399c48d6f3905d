"""Models asleep on workers (issue 14, fast swap), as the control plane sees them: a
model a worker reports ASLEEP is not served there (no route) but its worker is where a
load of it goes first (it wakes in seconds); unloads for idleness or scale-down ask the
worker to keep the model asleep, unloads for memory pressure or by an operator do not;
with a registry, only a model its usage forecasts back within the hour sleeps."""

from __future__ import annotations

import pytest

from proxy.cold_start import ColdStarts
from proxy.estimate import MemoryEstimator
from proxy.fleet import CacheLevel, ModelOnAgent, WorkerPool
from proxy.placement import NoFit, best_fit
from proxy.registry import PrefetchHint, RegistryCatalogue, RegistryModel
from runtime.errors import UnavailableError


def pool_of(models: dict[str, list[ModelOnAgent]], stored: dict[str, CacheLevel]) -> WorkerPool:
    pool = WorkerPool({address: 900 for address in models})
    for address, held in models.items():
        pool.record_heartbeat(
            address,
            worker_id=address,
            healthy=True,
            models=held,
            memory_total=1000,
            memory_free=900,
            stored={"org/m": stored[address]} if address in stored else {},
        )
    return pool


def test_an_asleep_model_is_not_served_but_its_worker_is_placed_first() -> None:
    pool = pool_of(
        {"asleep": [ModelOnAgent("org/m", "asleep")], "ram": [], "plain": []},
        {"ram": CacheLevel.RAM},
    )
    (asleep,) = [a for a in pool.agents() if a.address == "asleep"]
    assert not asleep.holds("org/m") and not asleep.is_ready("org/m")
    assert asleep.cache_level("org/m") is CacheLevel.ASLEEP
    assert "org/m" not in asleep.ready_models
    choice = best_fit(pool.agents(), "org/m", 100)
    assert not isinstance(choice, NoFit) and choice.address == "asleep"


class RecordingConnection:
    def __init__(self) -> None:
        self.unloads: list[tuple[str, bool]] = []

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        self.unloads.append((model, keep_asleep))
        return 0


@pytest.mark.parametrize(
    ("reason", "keep_asleep"),
    [("idle_ttl", True), ("scale", True), ("pressure", False), ("evict", False)],
)
async def test_unloads_ask_to_keep_the_model_asleep_by_reason(
    reason: str, keep_asleep: bool
) -> None:
    pool = pool_of({"w": [ModelOnAgent("org/m", "ready")]}, {})
    connection = RecordingConnection()
    cold = ColdStarts(pool, {"w": connection}, [], MemoryEstimator(None))  # type: ignore[dict-item]
    await cold.unload("w", "org/m", reason=reason)
    assert connection.unloads == [("org/m", keep_asleep)]


class ForecastingRegistry:
    """A RegistryClient whose usage forecast is set by the test (None: unreachable)."""

    def __init__(self, forecast: dict[str, float] | None) -> None:
        self.forecast = forecast
        self.asked = 0

    async def prefetch_hints(self, limit: int) -> list[PrefetchHint]:
        self.asked += 1
        if self.forecast is None:
            raise UnavailableError("registry down")
        ranked = sorted(self.forecast.items(), key=lambda item: -item[1])
        return [PrefetchHint(model, 100, rate) for model, rate in ranked[:limit]]


@pytest.mark.parametrize(
    ("forecast", "keep_asleep"),
    [
        ({"org/m": 3.0, "org/other": 9.0}, True),  # expected back within the hour
        ({"org/m": 0.4, "org/other": 9.0}, False),  # not expected: freed
        ({"org/other": 9.0}, False),  # no forecast at all
        (None, True),  # the registry cannot be asked: the reason decides
    ],
)
async def test_with_a_registry_only_a_model_expected_back_sleeps(
    forecast: dict[str, float] | None, keep_asleep: bool
) -> None:
    pool = pool_of({"w": [ModelOnAgent("org/m", "ready")]}, {})
    connection = RecordingConnection()
    registry = ForecastingRegistry(forecast)
    catalogue = RegistryCatalogue(registry)  # type: ignore[arg-type]
    catalogue.models["org/m"] = RegistryModel("org/m", "v1", 100)
    cold = ColdStarts(
        pool,
        {"w": connection},  # type: ignore[dict-item]
        [],
        MemoryEstimator(None),
        registry=catalogue,
    )
    await cold.unload("w", "org/m", reason="idle_ttl")
    # Memory pressure frees the model without asking for a forecast.
    pool.mark_model("w", ModelOnAgent("org/m", "ready"))
    await cold.unload("w", "org/m", reason="pressure")
    assert connection.unloads == [("org/m", keep_asleep), ("org/m", False)]
    assert registry.asked == 1
