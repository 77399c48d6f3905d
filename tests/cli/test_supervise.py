"""`helios up`'s supervision: a real service process killed with SIGKILL is started again,
on the same port, with backoff, and reported."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.processes import Backoff, Restart, ServiceProcess, popen_exit, supervise


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_minute() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay(ran_for_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.next_delay(ran_for_s=60.0) == 0.5
    assert backoff.next_delay(ran_for_s=0.1) == 1.0


async def test_killed_service_restarts_on_its_port(tmp_path: Path) -> None:
    service = ServiceProcess("estimator", "estimator.server", [], tmp_path)
    await service.start()
    ready = await service.wait_ready(60)
    port, pid = ready["grpc_port"], ready["pid"]
    restarts: list[Restart] = []
    restarted = asyncio.Event()

    async def on_restart(restart: Restart) -> None:
        restarts.append(restart)
        restarted.set()

    watcher = asyncio.create_task(
        supervise(service, ready_limit_s=60, on_restart=on_restart, backoff=Backoff(0.05))
    )
    try:
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(restarted.wait(), 60)
        assert restarts == [Restart("estimator", -signal.SIGKILL, 1, 0.05)]
        assert restarts[0].describe() == "restarted estimator (exit -9), attempt 1"
        assert service.ready["grpc_port"] == port and service.ready["pid"] != pid
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        assert await service.stop(10) == 0  # SIGTERM: it drains and exits cleanly


@pytest.fixture
def ending_child() -> Iterator[subprocess.Popen[bytes]]:
    """A child that exits with status 3 after 0.3 s."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
    )
    yield child
    child.kill()
    child.wait()


async def test_popen_exit_awaits_the_end_of_a_popen_child_and_reaps_it(
    ending_child: subprocess.Popen[bytes],
) -> None:
    waiter = asyncio.ensure_future(popen_exit(ending_child))
    await asyncio.sleep(0.1)
    assert not waiter.done()  # it runs: nothing to report yet
    assert await asyncio.wait_for(waiter, 30) == 3
    assert ending_child.returncode == 3  # reaped, no zombie left
    assert await popen_exit(ending_child) == 3  # asked again once it has ended: at once
