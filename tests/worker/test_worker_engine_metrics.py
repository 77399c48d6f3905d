"""The worker's engine metrics (worker/engine_metrics.py) from the real tiny model on the
reference engine: running and waiting requests (the admission queue included), KV-cache
use while a request holds its cache, gauges gone with the model, and counters that never
go down when an engine starts over. vLLM's side: tests/worker/test_worker_vllm.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, Counter

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from worker.engine.base import GenerationRequest, SamplingParams
from worker.engine_metrics import EngineMetrics, EngineMetricsRefresher, _grow
from worker.models import ModelManager
from worker.server import transformers_engine_factory

MODEL = "metrics-tiny"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same path as the engine tests use: the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


def sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"model": MODEL})


async def loaded(model_dir: Path) -> ModelManager:
    manager = ModelManager(
        transformers_engine_factory(max_concurrency=1),
        engine_kind="transformers",
        capacity_bytes=1 << 30,
    )
    async for _ in manager.load(MODEL, model_dir):
        continue
    return manager


async def until(condition: Callable[[], bool], metrics: EngineMetrics) -> None:
    """Refresh until ``condition()`` holds (within a minute)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        metrics.refresh()
        if condition():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_running_waiting_and_kv_use_follow_the_engine(tiny_model_dir: Path) -> None:
    manager = await loaded(tiny_model_dir)
    metrics = EngineMetrics(manager)
    metrics.refresh()
    assert sample("helios_worker_num_requests_running") == 0
    assert sample("helios_worker_num_requests_waiting") == 0
    assert sample("helios_worker_kv_cache_usage_perc") == 0
    assert sample("helios_worker_prefix_cache_queries_total") is not None
    first_token = asyncio.Event()
    release = asyncio.Event()

    async def generate(request_id: str) -> None:
        request = GenerationRequest(
            request_id,
            SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True),
            prompt="Once upon a time",
        )
        async with manager.serve(MODEL, request_id, authorization=None, deadline_s=None) as e:
            stream = e.generate(request)
            async for _ in stream:
                first_token.set()
                await release.wait()  # hold the request (and its KV cache) open
            await stream.aclose()

    # One slot (max_concurrency 1): the first request runs, the second waits its turn
    # in the admission queue.
    tasks = [asyncio.create_task(generate("r1"))]
    await asyncio.wait_for(first_token.wait(), 60)
    tasks.append(asyncio.create_task(generate("r2")))
    try:
        await until(
            lambda: (
                sample("helios_worker_num_requests_running") == 1
                and sample("helios_worker_num_requests_waiting") == 1
            ),
            metrics,
        )
        kv = sample("helios_worker_kv_cache_usage_perc")
        assert kv is not None and 0 < kv < 1
    finally:
        release.set()
        await asyncio.gather(*tasks)
    await until(
        lambda: (
            sample("helios_worker_num_requests_running") == 0
            and sample("helios_worker_num_requests_waiting") == 0
            and sample("helios_worker_kv_cache_usage_perc") == 0
        ),
        metrics,
    )
    await manager.unload(MODEL, drain_timeout=5)
    metrics.refresh()
    assert sample("helios_worker_num_requests_running") is None
    assert sample("helios_worker_kv_cache_usage_perc") is None
    await manager.shutdown()


async def test_the_refresher_runs_until_stopped(tiny_model_dir: Path) -> None:
    manager = await loaded(tiny_model_dir)
    refresher = EngineMetricsRefresher(manager, period=0.02).start()
    try:
        assert sample("helios_worker_num_requests_waiting") == 0
        await manager.unload(MODEL, drain_timeout=5)
        await asyncio.sleep(0.2)
        assert sample("helios_worker_num_requests_waiting") is None
    finally:
        await refresher.stop()
        await manager.shutdown()


def test_counters_take_only_growth_and_survive_an_engine_starting_over() -> None:
    counter = Counter("helios_test_engine_growth", "test", ["model"])
    name = "helios_test_engine_growth_total"
    baseline = _grow(counter, MODEL, 10, 0)
    baseline = _grow(counter, MODEL, 15, baseline)
    assert REGISTRY.get_sample_value(name, {"model": MODEL}) == 15
    # The engine was reloaded: its totals start again from 0; all of it is new.
    baseline = _grow(counter, MODEL, 4, baseline)
    assert baseline == 4
    assert REGISTRY.get_sample_value(name, {"model": MODEL}) == 19
    REGISTRY.unregister(counter)
