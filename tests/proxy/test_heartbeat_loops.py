"""The proxy's heartbeat loops against a real worker server over gRPC: a worker whose
connection drops is asked again at once, so that its end takes it out of routing without
waiting for the next heartbeat (issue 13: a dead worker leaves EDS within 1 s, while a
steady fleet is asked only once a second)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from support.fakes import start_fake_worker

from proxy.fleet import WorkerPool
from proxy.heartbeats import Heartbeats
from proxy.worker_client import GrpcWorkerConnection
from runtime.server import RunningServer

pytestmark = pytest.mark.asyncio

MODEL = "org/alpha"
# Far longer than the test may take: whatever happens sooner, no interval brought it.
LONG_INTERVAL_S = 120.0


async def wait_until(check: Callable[[], bool], limit_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit_s, "not within the limit"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def routed(pool: WorkerPool, address: str) -> bool:
    agent = pool.view(address)
    return agent.routable and agent.is_ready(MODEL)


@asynccontextmanager
async def heartbeated(root: Path) -> AsyncIterator[tuple[RunningServer, WorkerPool]]:
    """A real worker server, asked by the proxy's heartbeat loops every LONG_INTERVAL_S,
    once its model is routed; the loops stop at the end (the worker too, if still up)."""
    worker = await start_fake_worker(root, MODEL)
    pool = WorkerPool([worker.address])
    beats = Heartbeats(pool, GrpcWorkerConnection, interval_s=LONG_INTERVAL_S)
    beats.start()
    try:
        await wait_until(lambda: routed(pool, worker.address), 10)
        yield worker, pool
    finally:
        await beats.stop()
        await worker.stop(0)


async def test_a_worker_whose_server_ends_leaves_routing_without_waiting_for_a_heartbeat(
    tmp_path: Path,
) -> None:
    async with heartbeated(tmp_path) as (worker, pool):
        await worker.stop(0)  # its connections close, as a killed process's do
        took = await wait_until(lambda: not pool.view(worker.address).routable, 10)
    assert took < LONG_INTERVAL_S / 10


async def test_a_worker_whose_connection_never_drops_is_asked_once_per_interval(
    tmp_path: Path,
) -> None:
    async with heartbeated(tmp_path) as (worker, pool):
        first = pool.view(worker.address).last_heartbeat
        await asyncio.sleep(0.5)
        # No second heartbeat: a watch that fired while the connection stayed up would
        # have asked again.
        assert pool.view(worker.address).last_heartbeat == first
