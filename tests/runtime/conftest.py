"""Fixtures: settings for, and a running instance of, the echo service in runtime_echo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from runtime_echo import register_echo

from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server


@pytest.fixture
def register() -> Callable[[grpc.aio.Server], Sequence[str]]:
    return register_echo


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        service="echo",
        port=0,
        metrics_port=0,
        drain_seconds=2.0,
        ready_file=tmp_path / "run" / "echo.ready.json",
    )


@pytest_asyncio.fixture
async def server(settings: ServerSettings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, register_echo)
    try:
        yield running
    finally:
        await running.stop(0)


@pytest_asyncio.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch
