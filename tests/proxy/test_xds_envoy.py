"""The xDS control plane driving a REAL Envoy: requests carrying ``x-helios-model`` go to
the workers that have the model READY, everything else to the base route (the proxy),
and fleet changes reach Envoy quickly."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from xds_envoy import (
    FakeWorker,
    Mesh,
    ready,
    refused_port,
    start_envoy,
    start_named,
    start_xds,
    until,
    write_base_routes,
)

from proxy.fleet import AgentState, ModelOnAgent, WorkerPool
from proxy.xds_resources import XdsSettings, load_base_routes
from proxy.xds_snapshot import (
    LEAST_REQUEST,
    PREFIX_HASH_HEADER,
    LbKind,
    LbPolicy,
    cluster_name,
    lb_policy_for,
)


@dataclass
class World:
    mesh: Mesh
    a: FakeWorker
    b: FakeWorker
    proxy: FakeWorker


@pytest.fixture(autouse=True)
def no_nacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Envoy accepts everything the control plane sends (a NACK is logged as an error)."""
    with caplog.at_level(logging.INFO, logger="proxy.xds_server"):
        yield
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert not rejected, [getattr(r, "error", "") for r in rejected]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    a, b, proxy = [await start_named(n) for n in ("a", "b", "proxy")]
    pool = WorkerPool()
    settings = XdsSettings(base_routes=load_base_routes(write_base_routes(tmp_path / "r.json")))
    xds, server = await start_xds(pool, settings)
    envoy = await start_envoy(tmp_path / "envoy", server.port, proxy.server.port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}")
    try:
        yield World(Mesh(envoy, xds, pool, channel), a, b, proxy)
    finally:
        await channel.close()
        await envoy.stop()
        await xds.stop()
        for s in (server, a.server, b.server, proxy.server):
            await s.stop(None)


async def _routed(mesh: Mesh, model: str, worker: str) -> None:
    async def check() -> bool:
        return await mesh.who(model) == worker

    await until(check)


async def test_requests_go_to_the_worker_with_the_model(world: World) -> None:
    mesh = world.mesh
    ready(mesh.pool, world.a.address, "org/m1")
    ready(mesh.pool, world.b.address, "org/m2", loading=("org/m3",))
    await _routed(mesh, "org/m1", "a")
    await _routed(mesh, "org/m2", "b")
    assert {await mesh.who("org/m1") for _ in range(10)} == {"a"}
    assert {await mesh.who("org/m2") for _ in range(10)} == {"b"}
    # Loading (no ready endpoint) and unknown models fall through to the base route.
    assert await mesh.who("org/m3") == "proxy"
    assert await mesh.who("nobody/knows") == "proxy"
    # What Envoy holds: one EDS cluster per model with endpoints, the route naming it.
    dump = json.loads(await mesh.admin("/config_dump"))
    text = json.dumps(dump)
    for model in ("org/m1", "org/m2"):
        assert cluster_name(model) in text
    assert cluster_name("org/m3") not in text


async def test_a_worker_removed_from_the_fleet_leaves_eds(world: World) -> None:
    mesh = world.mesh
    ready(mesh.pool, world.a.address, "m")
    ready(mesh.pool, world.b.address, "m")

    async def both() -> bool:
        return {await mesh.who("m") for _ in range(8)} == {"a", "b"}

    await until(both)
    mesh.pool.remove(world.b.address)

    async def only_a() -> bool:
        clusters = await mesh.admin("/clusters")
        return f"127.0.0.1:{world.b.server.port}" not in clusters

    await until(only_a)
    assert {await mesh.who("m") for _ in range(20)} == {"a"}
    # The last worker going away removes the model's route: the proxy serves it (cold).
    mesh.pool.remove(world.a.address)
    await _routed(mesh, "m", "proxy")


async def test_a_draining_or_degraded_worker_gets_no_new_requests(world: World) -> None:
    mesh = world.mesh
    ready(mesh.pool, world.a.address, "m")
    ready(mesh.pool, world.b.address, "m")
    await until(lambda: _serves_both(mesh))
    mesh.pool.record_heartbeat(
        world.b.address,
        worker_id="b",
        healthy=True,
        models=[ModelOnAgent("m", "ready")],
        state=AgentState.DRAINING,
    )

    async def only_a() -> bool:
        return {await mesh.who("m") for _ in range(20)} == {"a"}

    await until(only_a)
    mesh.pool.record_request_failure(world.a.address)  # a unreachable: degraded
    await _routed(mesh, "m", "proxy")


async def _serves_both(mesh: Mesh) -> bool:
    return {await mesh.who("m") for _ in range(8)} == {"a", "b"}


async def test_a_newly_ready_model_is_routed_within_200ms(world: World) -> None:
    mesh = world.mesh
    ready(mesh.pool, world.a.address, "warm")
    await _routed(mesh, "warm", "a")  # Envoy connected and serving
    figures = []
    for round_ in range(5):
        model = f"new-{round_}"
        assert await mesh.who(model) == "proxy"
        start = time.monotonic()
        ready(mesh.pool, world.b.address, *(f"new-{i}" for i in range(round_ + 1)))

        async def routed(model: str = model) -> bool:
            return await mesh.who(model) == "b"

        await until(routed, within=2.0, every=0.001)
        figures.append(time.monotonic() - start)
    figures.sort()
    print(f"heartbeat -> routed by Envoy: {', '.join(f'{f * 1000:.1f}' for f in figures)} ms")
    assert figures[len(figures) // 2] <= 0.2, figures


async def test_a_refused_connection_is_retried_on_another_host(world: World) -> None:
    mesh = world.mesh
    dead = f"127.0.0.1:{refused_port()}"
    ready(mesh.pool, world.a.address, "m")
    ready(mesh.pool, dead, "m")

    async def two_endpoints() -> bool:
        return f"{cluster_name('m')}::{dead}::" in await mesh.admin("/clusters")

    await until(two_endpoints)
    await _routed(mesh, "m", "a")
    # Every request is answered by a, though about half first picked the dead port.
    assert {await mesh.who("m") for _ in range(20)} == {"a"}
    retries = await mesh.counter(f"cluster.{cluster_name('m')}.upstream_rq_retry")
    failures = await mesh.counter(f"cluster.{cluster_name('m')}.upstream_cx_connect_fail")
    assert retries >= 1 and failures >= 1, (retries, failures)


async def test_prefix_aware_models_hash_on_the_prefix_header(tmp_path: Path) -> None:
    a, b, proxy = [await start_named(n) for n in ("a", "b", "proxy")]
    pool = WorkerPool()
    policy = lb_policy_for("prefix-aware", session_header="x-session-id")
    assert policy.kind is LbKind.RING_HASH
    settings = XdsSettings(base_routes=load_base_routes(write_base_routes(tmp_path / "r.json")))
    xds, server = await start_xds(pool, settings, policy_for=lambda model: policy)
    envoy = await start_envoy(tmp_path / "envoy", server.port, proxy.server.port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}")
    try:
        mesh = Mesh(envoy, xds, pool, channel)
        ready(pool, a.address, "m")
        ready(pool, b.address, "m")
        await until(lambda: _serves_both_hashed(mesh))
        for prefix in ("p1", "p2", "p3", "p4"):
            headers = {PREFIX_HASH_HEADER: prefix}
            assert len({await mesh.who("m", **headers) for _ in range(10)}) == 1
    finally:
        await channel.close()
        await envoy.stop()
        await xds.stop()
        for s in (server, a.server, b.server, proxy.server):
            await s.stop(None)


async def _serves_both_hashed(mesh: Mesh) -> bool:
    seen = {await mesh.who("m", **{PREFIX_HASH_HEADER: f"k{i}"}) for i in range(32)}
    return seen == {"a", "b"}


async def test_an_unavailable_answer_is_retried_on_another_host(world: World) -> None:
    mesh = world.mesh
    ready(mesh.pool, world.a.address, "m")
    ready(mesh.pool, world.b.address, "m")
    await until(lambda: _serves_both(mesh))
    world.b.servicer.unavailable = True
    before = world.b.servicer.calls
    assert {await mesh.who("m") for _ in range(10)} == {"a"}
    assert world.b.servicer.calls > before  # b was tried, and the request went on to a


async def test_a_policy_change_re_warms_the_cluster_without_dropping_the_route(
    tmp_path: Path,
) -> None:
    a, b, proxy = [await start_named(n) for n in ("a", "b", "proxy")]
    pool = WorkerPool()
    policies: dict[str, LbPolicy] = {}
    settings = XdsSettings(base_routes=load_base_routes(write_base_routes(tmp_path / "r.json")))
    xds, server = await start_xds(pool, settings, lambda m: policies.get(m, LEAST_REQUEST))
    envoy = await start_envoy(tmp_path / "envoy", server.port, proxy.server.port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{envoy.listen_port}")
    try:
        mesh = Mesh(envoy, xds, pool, channel)
        ready(pool, a.address, "m")
        await _routed(mesh, "m", "a")
        policies["m"] = lb_policy_for("session-affinity", session_header="x-session-id")
        xds.rebuild()

        async def maglev() -> bool:
            dump = await mesh.admin("/config_dump?resource=dynamic_active_clusters")
            return '"lb_policy": "MAGLEV"' in dump

        await until(maglev)
        # Requests kept flowing to a through the change; the warmed cluster has a.
        assert {await mesh.who("m", **{"x-session-id": f"s{i}"}) for i in range(10)} == {"a"}
    finally:
        await channel.close()
        await envoy.stop()
        await xds.stop()
        for s in (server, a.server, b.server, proxy.server):
            await s.stop(None)
