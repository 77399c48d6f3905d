"""Scale-up under load (WarmPools.reconcile): demand over ``target_concurrency`` per
READY replica loads one more replica where memory is free, up to ``max_replicas``, never
by evicting. Workers are recording WorkerConnections (domain level)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.cold_start import ColdStarts, ModelSpec
from proxy.estimate import MemoryEstimator
from proxy.fleet import ModelOnAgent, WorkerPool
from proxy.warm_pools import WarmPools

pytestmark = pytest.mark.asyncio

WEIGHTS = 10_000  # bytes of model.safetensors: the memory need without an estimator


@dataclass
class RecordingWorker:
    loads: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        self.loads.append(model)
        yield "loading"
        await self.release.wait()  # the test decides when the load completes
        yield "ready"

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        return 0


def make_plane(
    tmp_path: Path, free: dict[str, int], *, target: int, max_replicas: int
) -> tuple[WarmPools, WorkerPool, dict[str, RecordingWorker]]:
    model_dir = tmp_path / "m"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.safetensors").write_bytes(b"\0" * WEIGHTS)
    pool = WorkerPool(list(free))
    for address, room in free.items():
        pool.record_heartbeat(
            address, worker_id=address, healthy=True, memory_total=100_000, memory_free=room
        )
    workers = {address: RecordingWorker() for address in free}
    cold = ColdStarts(
        pool,
        workers,  # type: ignore[arg-type]
        [ModelSpec("m", model_dir, min_replicas=0, max_replicas=max_replicas)],
        MemoryEstimator(None),
    )
    control = WarmPools(cold, target_concurrency=target)
    return control, pool, workers


def serving(pool: WorkerPool, address: str, running: int, waiting: int) -> None:
    """A heartbeat from ``address`` saying it serves ``m`` with this load."""
    view = pool.view(address)
    pool.record_heartbeat(
        address,
        worker_id=address,
        healthy=True,
        memory_total=view.memory_total,
        memory_free=view.memory_free,
        models=[ModelOnAgent("m", "ready", running=running, waiting=waiting)],
    )


async def finish_scale_up(control: WarmPools, workers: dict[str, RecordingWorker]) -> str:
    task = control.cold._loads["m"]
    for worker in workers.values():
        worker.release.set()
    return await asyncio.wait_for(task, 10)


async def test_reported_load_over_target_adds_one_replica_up_to_max(tmp_path: Path) -> None:
    control, pool, workers = make_plane(
        tmp_path, {"a": 80_000, "b": 50_000, "c": 20_000}, target=8, max_replicas=2
    )
    serving(pool, "a", running=8, waiting=0)
    await control.reconcile()
    assert not control.cold.loading("m")  # at the target, not over it
    serving(pool, "a", running=8, waiting=7)  # queueing: over target
    await control.reconcile()
    assert control.cold.loading("m")
    await control.reconcile()  # one scale-up in flight at a time
    await asyncio.sleep(0.05)  # the background load reaches LoadModel
    loads = [address for address, w in workers.items() if w.loads]
    assert loads == ["c"]  # best fit among the agents with room
    assert await finish_scale_up(control, workers) == "c"
    assert {a.address for a in pool.holders("m")} == {"a", "c"}
    serving(pool, "a", running=8, waiting=20)  # more load, but max_replicas=2
    await control.reconcile()
    assert not control.cold.loading("m")
    assert sum(len(w.loads) for w in workers.values()) == 1


async def test_requests_relayed_by_this_proxy_count_as_demand(tmp_path: Path) -> None:
    control, pool, workers = make_plane(
        tmp_path, {"a": 80_000, "b": 50_000}, target=2, max_replicas=3
    )
    serving(pool, "a", running=0, waiting=0)  # heartbeats lag behind the requests
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(control.activity.running("a", "m"))
        await control.reconcile()
        assert control.cold.loading("m")
    assert await finish_scale_up(control, workers) == "b"


async def test_no_scale_up_without_free_memory_or_when_turned_off(tmp_path: Path) -> None:
    full, pool, workers = make_plane(
        tmp_path, {"a": 80_000, "b": WEIGHTS - 1}, target=1, max_replicas=4
    )
    serving(pool, "a", running=5, waiting=5)
    await full.reconcile()  # b cannot hold it: nothing is evicted, nothing is loaded
    assert not full.cold.loading("m") and not workers["b"].loads

    off, pool, workers = make_plane(tmp_path, {"a": 80_000, "b": 80_000}, target=0, max_replicas=4)
    serving(pool, "a", running=50, waiting=50)
    await off.reconcile()
    assert not off.cold.loading("m") and not workers["b"].loads


async def test_cold_models_are_left_to_the_request_path(tmp_path: Path) -> None:
    control, _, workers = make_plane(tmp_path, {"a": 80_000}, target=1, max_replicas=2)
    await control.reconcile()  # no replica anywhere: nothing to measure load against
    assert not control.cold.loading("m") and not workers["a"].loads
