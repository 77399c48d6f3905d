"""Prometheus: the /metrics endpoint and the per-RPC server metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY
from runtime_echo import SERVICE

from runtime.config import ServerSettings
from runtime.metrics import start_metrics_server
from runtime.server import RunningServer, start_server


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _handled(method: str, code: str) -> float:
    return _value("helios_grpc_server_handled_total", service=SERVICE, method=method, code=code)


async def _eventually(predicate, within: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def test_endpoint_serves_handled_total_with_labels(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    await echo(b"hi", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await echo(b"notfound:x", timeout=5)

    assert server.metrics_port is not None
    text = await asyncio.to_thread(_scrape, server.metrics_port)
    assert (
        f'helios_grpc_server_handled_total{{code="OK",method="Echo",service="{SERVICE}"}}' in text
    )
    assert (
        f'helios_grpc_server_handled_total{{code="NOT_FOUND",method="Echo",service="{SERVICE}"}}'
        in text
    )
    assert "helios_grpc_server_handling_seconds_bucket" in text
    assert "helios_grpc_server_started_total" in text
    assert "helios_grpc_server_in_flight" in text


async def test_counts_unary_by_final_code(channel: grpc.aio.Channel) -> None:
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    ok, nf, internal = (
        _handled("Echo", "OK"),
        _handled("Echo", "NOT_FOUND"),
        _handled("Echo", "INTERNAL"),
    )
    started = _value("helios_grpc_server_started_total", service=SERVICE, method="Echo")
    timed = _value("helios_grpc_server_handling_seconds_count", service=SERVICE, method="Echo")
    await echo(b"a", timeout=5)
    for bad in (b"notfound:x", b"boom"):
        with pytest.raises(grpc.aio.AioRpcError):
            await echo(bad, timeout=5)
    # The server records a call after its status is on the wire, so a client may see
    # the status a moment before the counter moves: wait for it rather than race it.
    await _eventually(lambda: _handled("Echo", "OK") == ok + 1)
    await _eventually(lambda: _handled("Echo", "NOT_FOUND") == nf + 1)
    await _eventually(lambda: _handled("Echo", "INTERNAL") == internal + 1)
    assert _value("helios_grpc_server_started_total", service=SERVICE, method="Echo") == (
        started + 3
    )
    await _eventually(
        lambda: (
            _value("helios_grpc_server_handling_seconds_count", service=SERVICE, method="Echo")
            == timed + 3
        )
    )


async def test_stream_counted_when_it_ends(channel: grpc.aio.Channel) -> None:
    ok, nf = _handled("Stream", "OK"), _handled("Stream", "NOT_FOUND")
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"3:0.1", timeout=5)
    assert await call.read() == b"0"
    # Started and in flight, but not handled until the stream ends.
    assert _value("helios_grpc_server_in_flight", service=SERVICE, method="Stream") >= 1
    assert _handled("Stream", "OK") == ok
    while await call.read() is not grpc.aio.EOF:
        pass
    await _eventually(lambda: _handled("Stream", "OK") == ok + 1)

    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in channel.unary_stream(f"/{SERVICE}/Stream")(b"1:0:notfound", timeout=5):
            pass
    await _eventually(lambda: _handled("Stream", "NOT_FOUND") == nf + 1)


async def test_cancelled_stream_is_counted(channel: grpc.aio.Channel) -> None:
    cancelled = _handled("Stream", "CANCELLED")
    in_flight = _value("helios_grpc_server_in_flight", service=SERVICE, method="Stream")
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"1000:0.05", timeout=10)
    assert await call.read() == b"0"
    call.cancel()
    await _eventually(lambda: _handled("Stream", "CANCELLED") == cancelled + 1)
    await _eventually(
        lambda: (
            _value("helios_grpc_server_in_flight", service=SERVICE, method="Stream") == in_flight
        )
    )


async def test_deadline_exceeded_is_counted(channel: grpc.aio.Channel) -> None:
    before = _handled("Echo", "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Echo")(b"sleep:2", timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _eventually(lambda: _handled("Echo", "DEADLINE_EXCEEDED") == before + 1)


async def test_several_servers_in_one_process(register) -> None:  # type: ignore[no-untyped-def]
    # Metrics are module-level: a second server must not re-register them.
    servers = [await start_server(ServerSettings(service=f"echo{i}"), register) for i in range(2)]
    try:
        ports = {s.metrics_port for s in servers}
        assert len(ports) == 2
    finally:
        for s in servers:
            await s.stop(0)


def test_start_metrics_server_returns_bound_port() -> None:
    port = start_metrics_server(0)
    assert port > 0
    assert "helios_grpc_server_handled_total" in _scrape(port)
