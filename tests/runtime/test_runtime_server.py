"""start_server: health, reflection, ready file, graceful drain."""

from __future__ import annotations

import asyncio
import json
import os

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runtime_echo import SERVICE, register_echo

from runtime.config import ServerSettings
from runtime.server import RunningServer, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_serving_for_service_and_server(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in (SERVICE, ""):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_not_serving_once_stop_begins(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    # A Watch stream is open across the stop, so the switch is observed over the wire
    # (a new Check would be refused once the server stops accepting calls).
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
    )
    first = await watch.read()
    assert first.status == SERVING

    stopping = asyncio.create_task(server.stop(grace=0.5))
    second = await asyncio.wait_for(watch.read(), 5)
    assert second.status == NOT_SERVING
    for name in (SERVICE, ""):
        check = await server.health.Check(health_pb2.HealthCheckRequest(service=name), None)
        assert check.status == NOT_SERVING
    await stopping


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    call = stub.ServerReflectionInfo(requests(), timeout=5)
    names = set()
    async for response in call:
        names |= {s.name for s in response.list_services_response.service}
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_reflection_extra_names_are_listed() -> None:
    running = await start_server(
        ServerSettings(service="echo", metrics_port=-1),
        register_echo,
        reflection_extra=["test.v1.Elsewhere", SERVICE],
    )
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def requests():  # type: ignore[no-untyped-def]
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = [
                s.name
                async for response in stub.ServerReflectionInfo(requests(), timeout=5)
                for s in response.list_services_response.service
            ]
        assert "test.v1.Elsewhere" in names
        assert names.count(SERVICE) == 1
    finally:
        await running.stop(0)


async def test_ready_file_written_after_serving(
    server: RunningServer, settings: ServerSettings
) -> None:
    assert settings.ready_file is not None
    data = json.loads(settings.ready_file.read_text())
    assert data["service"] == "echo"
    assert data["grpc_port"] == server.port > 0
    assert data["metrics_port"] == server.metrics_port
    assert isinstance(server.metrics_port, int) and server.metrics_port > 0
    assert data["pid"] == os.getpid()
    # No temp files left beside it.
    assert [p.name for p in settings.ready_file.parent.iterdir()] == [settings.ready_file.name]


async def test_ready_file_removed_on_stop_and_stale_one_replaced(
    settings: ServerSettings,
) -> None:
    assert settings.ready_file is not None
    settings.ready_file.parent.mkdir(parents=True)
    settings.ready_file.write_text('{"grpc_port": 1}')  # left by a crashed run
    running = await start_server(settings, register_echo)
    try:
        assert json.loads(settings.ready_file.read_text())["grpc_port"] == running.port
    finally:
        await running.stop(0)
    assert not settings.ready_file.exists()


async def test_metrics_disabled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = ServerSettings(service="echo", metrics_port=-1, ready_file=tmp_path / "r.json")
    running = await start_server(settings, register_echo)
    try:
        assert running.metrics_port is None
        assert json.loads((tmp_path / "r.json").read_text())["metrics_port"] is None
    finally:
        await running.stop(0)


async def test_bind_conflict_fails_loudly(server: RunningServer) -> None:
    taken = ServerSettings(service="echo", port=server.port, metrics_port=-1)
    with pytest.raises(OSError, match=str(server.port)):
        await start_server(taken, register_echo)


async def test_register_must_return_names() -> None:
    def bad(server: grpc.aio.Server) -> str:
        register_echo(server)
        return SERVICE

    with pytest.raises(TypeError):
        await start_server(ServerSettings(service="echo", metrics_port=-1), bad)  # type: ignore[arg-type]


async def test_graceful_drain_completes_in_flight_stream(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"6:0.2", timeout=10)
    assert await call.read() == b"0"

    stopping = asyncio.create_task(server.stop(grace=5))
    await asyncio.sleep(0.1)

    # New calls are refused while the old stream drains.
    async with grpc.aio.insecure_channel(server.address) as fresh:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fresh.unary_unary(f"/{SERVICE}/Echo")(b"hi", timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not stopping.done()

    rest = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        rest.append(msg)
    assert rest == [b"1", b"2", b"3", b"4", b"5"]
    assert await call.code() == grpc.StatusCode.OK
    await asyncio.wait_for(stopping, 5)


async def test_stop_with_zero_grace_cancels_in_flight(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"100:0.2", timeout=10)
    assert await call.read() == b"0"
    await asyncio.wait_for(server.stop(grace=0), 5)
    with pytest.raises(grpc.aio.AioRpcError):
        while await call.read() is not grpc.aio.EOF:
            pass
    assert await call.code() != grpc.StatusCode.OK


async def test_cancelled_wait_for_termination_keeps_stop_graceful(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    # run() races wait_for_termination() against a signal and cancels the loser; that
    # must not turn the later stop(grace) into an immediate one.
    waiter = asyncio.create_task(server.wait_for_termination())
    await asyncio.sleep(0.05)
    waiter.cancel()
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"3:0.2", timeout=10)
    assert await call.read() == b"0"
    await server.stop(grace=5)
    assert [m async for m in _drain(call)] == [b"1", b"2"]
    assert await call.code() == grpc.StatusCode.OK


async def _drain(call):  # type: ignore[no-untyped-def]
    while (msg := await call.read()) is not grpc.aio.EOF:
        yield msg
