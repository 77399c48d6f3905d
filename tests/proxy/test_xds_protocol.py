"""The ADS protocol (state of the world) over a real grpc.aio stream, playing Envoy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from xds_envoy import ready, start_xds

from proxy.cold_start import ColdStarts
from proxy.estimate import MemoryEstimator
from proxy.fleet import ModelOnAgent, WorkerPool
from proxy.server import build_parser
from proxy.settings import ProxySettings, api_keys, xds_settings
from proxy.xds_resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    XdsSettings,
    load_base_routes,
)
from proxy.xds_server import XdsServer
from proxy.xds_snapshot import cluster_name
from runtime.config import ConfigError
from runtime.server import RunningServer
from runtime.settings import from_namespace

M1, M2 = cluster_name("m1"), cluster_name("m2")
QUIET_S = 0.15  # how long "no response" is waited for


class FakeEnvoy:
    """One ADS stream; responses are collected as they come."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            self.channel
        ).StreamAggregatedResources()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    async def send(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        ack: discovery_pb2.DiscoveryResponse | None = None,
        nonce: str | None = None,
        error: str = "",
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        request.node.id = "fake-envoy"
        if ack is not None:
            request.response_nonce = ack.nonce
            request.version_info = ack.version_info
        if nonce is not None:
            request.response_nonce = nonce
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def next(self, type_url: str | None = None) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.responses.get(), 2.0)
        if type_url is not None:
            assert response.type_url == type_url, response.type_url
        return response

    async def quiet(self) -> None:
        await asyncio.sleep(QUIET_S)
        assert self.responses.empty(), self.responses.get_nowait()

    async def close(self) -> None:
        await self.call.done_writing()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()


def clusters(response: discovery_pb2.DiscoveryResponse) -> dict[str, cluster_pb2.Cluster]:
    out = {}
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        assert packed.Unpack(cluster)
        out[cluster.name] = cluster
    return out


def assignments(
    response: discovery_pb2.DiscoveryResponse,
) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    out = {}
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        assert packed.Unpack(assignment)
        out[assignment.cluster_name] = assignment
    return out


def routed(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The clusters the route configuration's model routes name."""
    (packed,) = response.resources
    config = route_pb2.RouteConfiguration()
    assert packed.Unpack(config)
    assert config.name == ROUTE_CONFIG_NAME
    (host,) = config.virtual_hosts
    return [r.route.cluster for r in host.routes]


@pytest.fixture
async def xds() -> AsyncIterator[tuple[WorkerPool, XdsServer, RunningServer]]:
    pool = WorkerPool()
    ready(pool, "127.0.0.1:1001", "m1")
    server, running = await start_xds(pool, XdsSettings())
    try:
        yield pool, server, running
    finally:
        await server.stop()
        await running.stop(None)


async def subscribe_all(envoy: FakeEnvoy) -> discovery_pb2.DiscoveryResponse:
    """CDS, then EDS for what came, ACKing both; returns the first RDS response."""
    await envoy.send(CLUSTER_TYPE)
    cds = await envoy.next(CLUSTER_TYPE)
    await envoy.send(ENDPOINT_TYPE, tuple(clusters(cds)))
    await envoy.send(CLUSTER_TYPE, ack=cds)
    eds = await envoy.next(ENDPOINT_TYPE)
    await envoy.send(ENDPOINT_TYPE, tuple(clusters(cds)), ack=eds)
    await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,))
    return await envoy.next(ROUTE_TYPE)


async def test_subscribe_ack_and_filter(xds: tuple[WorkerPool, XdsServer, RunningServer]) -> None:
    pool, server, running = xds
    ready(pool, "127.0.0.1:1002", "m2")
    await asyncio.sleep(0.05)
    envoy = FakeEnvoy(running.port)
    try:
        await envoy.send(CLUSTER_TYPE)  # wildcard
        cds = await envoy.next(CLUSTER_TYPE)
        assert set(clusters(cds)) == {M1, M2}
        assert cds.version_info and cds.nonce
        # EDS by name: only what is asked for.
        await envoy.send(ENDPOINT_TYPE, (M1, "helios-model-unknown-00000000"))
        eds = await envoy.next(ENDPOINT_TYPE)
        (only,) = assignments(eds).values()
        assert only.cluster_name == M1
        assert only.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 1001
        # ACKs are answered by nothing.
        await envoy.send(CLUSTER_TYPE, ack=cds)
        await envoy.send(ENDPOINT_TYPE, (M1, "helios-model-unknown-00000000"), ack=eds)
        await envoy.quiet()
        # RDS: only M1's route, the cluster whose endpoints were ACKed.
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,))
        rds = await envoy.next(ROUTE_TYPE)
        assert routed(rds) == [M1]
        # Asking for M2's endpoints too, and ACKing them, brings its route.
        await envoy.send(ENDPOINT_TYPE, (M1, M2), ack=eds)
        eds2 = await envoy.next(ENDPOINT_TYPE)
        assert set(assignments(eds2)) == {M1, M2}
        assert eds2.nonce != eds.nonce and eds2.version_info != eds.version_info
        await envoy.send(ENDPOINT_TYPE, (M1, M2), ack=eds2)
        rds2 = await envoy.next(ROUTE_TYPE)
        assert routed(rds2) == [M1, M2]
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds2)
        await envoy.quiet()
        # Another route configuration name gets an empty answer.
        await envoy.send(ROUTE_TYPE, ("other",), ack=rds2)
        other = await envoy.next(ROUTE_TYPE)
        assert len(other.resources) == 0
        assert server.stream_count == 1
    finally:
        await envoy.close()
    await _until(lambda: server.stream_count == 0)


async def test_nack_is_logged_once_and_not_resent(
    xds: tuple[WorkerPool, XdsServer, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, running = xds
    envoy = FakeEnvoy(running.port)
    try:
        rds = await subscribe_all(envoy)
        with caplog.at_level(logging.ERROR, logger="proxy.xds_server"):
            await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), nonce=rds.nonce, error="bad route")
            await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), nonce=rds.nonce, error="bad route")
            await envoy.quiet()
        nacks = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert len(nacks) == 1
        assert getattr(nacks[0], "error", "") == "bad route"
        assert getattr(nacks[0], "version", "") == rds.version_info
    finally:
        await envoy.close()


async def test_stale_nonces_are_ignored(xds: tuple[WorkerPool, XdsServer, RunningServer]) -> None:
    _, _, running = xds
    envoy = FakeEnvoy(running.port)
    try:
        await subscribe_all(envoy)
        await envoy.send(CLUSTER_TYPE, nonce="no-such-nonce", error="stale")
        await envoy.quiet()
    finally:
        await envoy.close()


async def test_fleet_changes_are_pushed_in_order(
    xds: tuple[WorkerPool, XdsServer, RunningServer],
) -> None:
    pool, _, running = xds
    envoy = FakeEnvoy(running.port)
    try:
        rds = await subscribe_all(envoy)
        assert routed(rds) == [M1]
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds)
        # Addition: the cluster first, its route only after its endpoints are ACKed.
        start = time.monotonic()
        ready(pool, "127.0.0.1:1002", "m2")
        cds = await envoy.next(CLUSTER_TYPE)
        pushed = time.monotonic() - start
        assert pushed < 0.05, pushed
        assert set(clusters(cds)) == {M1, M2}
        await envoy.quiet()  # no route yet
        await envoy.send(CLUSTER_TYPE, ack=cds)
        await envoy.send(ENDPOINT_TYPE, (M1, M2))
        eds = await envoy.next(ENDPOINT_TYPE)
        await envoy.send(ENDPOINT_TYPE, (M1, M2), ack=eds)
        rds = await envoy.next(ROUTE_TYPE)
        assert routed(rds) == [M1, M2]
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds)
        await envoy.quiet()
        # Removal: the route goes first; the cluster stays until that is ACKed.
        pool.remove("127.0.0.1:1002")
        rds = await envoy.next(ROUTE_TYPE)
        assert routed(rds) == [M1]
        await envoy.quiet()  # M2's cluster and endpoints stay: a route may still name it
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds)
        cds = await envoy.next(CLUSTER_TYPE)
        assert set(clusters(cds)) == {M1}
        await envoy.send(CLUSTER_TYPE, ack=cds)
        await envoy.send(ENDPOINT_TYPE, (M1,))
        assert set(assignments(await envoy.next(ENDPOINT_TYPE))) == {M1}
    finally:
        await envoy.close()


async def test_every_stream_gets_the_push(xds: tuple[WorkerPool, XdsServer, RunningServer]) -> None:
    pool, server, running = xds
    envoys = [FakeEnvoy(running.port) for _ in range(3)]
    try:
        for envoy in envoys:
            await envoy.send(CLUSTER_TYPE)
            await envoy.send(CLUSTER_TYPE, ack=await envoy.next(CLUSTER_TYPE))
        assert server.stream_count == 3
        ready(pool, "127.0.0.1:1003", "m2")
        for envoy in envoys:
            assert set(clusters(await envoy.next(CLUSTER_TYPE))) == {M1, M2}
    finally:
        for envoy in envoys:
            await envoy.close()
    await _until(lambda: server.stream_count == 0)


class RecordingConnection:
    """A worker connection that records the unloads it is asked for."""

    def __init__(self) -> None:
        self.unloads: list[str] = []

    async def unload_model(self, model: str, drain_s: float, keep_asleep: bool = False) -> int:
        self.unloads.append(model)
        return 0


@pytest.fixture
async def synced_envoy(
    xds: tuple[WorkerPool, XdsServer, RunningServer],
) -> AsyncIterator[FakeEnvoy]:
    """A FakeEnvoy that has subscribed to and ACKed everything the fixture's fleet makes."""
    envoy = FakeEnvoy(xds[2].port)
    try:
        rds = await subscribe_all(envoy)
        await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds)
        await envoy.quiet()
        yield envoy
    finally:
        await envoy.close()


async def test_an_unload_waits_until_envoy_no_longer_routes_there(
    xds: tuple[WorkerPool, XdsServer, RunningServer], synced_envoy: FakeEnvoy
) -> None:
    """Make before break: the worker is asked to unload only once Envoy has ACKed
    the route's withdrawal and then its cluster's, so no request reaches a worker
    that lets the model go (with no other replica, that was a 503 where the cold path
    should have answered)."""
    pool, server, _ = xds
    envoy = synced_envoy
    connection = RecordingConnection()
    cold = ColdStarts(pool, {"127.0.0.1:1001": connection}, [], MemoryEstimator(None))  # type: ignore[dict-item]
    cold.edge_synced = server.edge_synced
    unload = asyncio.create_task(cold.unload("127.0.0.1:1001", "m1", reason="evict"))
    rds = await envoy.next(ROUTE_TYPE)
    assert routed(rds) == []
    await envoy.quiet()
    assert connection.unloads == []  # Envoy may still route m1 there
    await envoy.send(ROUTE_TYPE, (ROUTE_CONFIG_NAME,), ack=rds)
    cds = await envoy.next(CLUSTER_TYPE)
    assert clusters(cds) == {}
    assert connection.unloads == []
    # (The withdrawn cluster's endpoints need no ACK: Envoy sends none for a cluster it
    # no longer has, and they route nothing.)
    await envoy.send(CLUSTER_TYPE, ack=cds)
    await asyncio.wait_for(unload, 1.0)
    assert connection.unloads == ["m1"]
    assert not pool.holders("m1")


async def test_edge_sync_waits_for_the_endpoints_of_a_routed_cluster(
    xds: tuple[WorkerPool, XdsServer, RunningServer], synced_envoy: FakeEnvoy
) -> None:
    """Two replicas: one leaving changes only the model's endpoints (its route stays),
    and that is what Envoy must have ACKed."""
    pool, server, _ = xds
    envoy = synced_envoy
    ready(pool, "127.0.0.1:1002", "m1")
    eds = await envoy.next(ENDPOINT_TYPE)
    await envoy.send(ENDPOINT_TYPE, (M1,), ack=eds)
    await envoy.quiet()
    pool.mark_model("127.0.0.1:1001", ModelOnAgent("m1", "draining"))
    synced = asyncio.create_task(server.edge_synced())
    eds = await envoy.next(ENDPOINT_TYPE)
    (assignment,) = assignments(eds).values()
    hosts = [e.endpoint.hostname for e in assignment.endpoints[0].lb_endpoints]
    assert hosts == ["127.0.0.1:1002"]
    await envoy.quiet()
    assert not synced.done()
    await envoy.send(ENDPOINT_TYPE, (M1,), ack=eds)
    assert await asyncio.wait_for(synced, 1.0)


async def test_edge_sync_gives_up_on_an_envoy_that_does_not_ack(
    xds: tuple[WorkerPool, XdsServer, RunningServer],
) -> None:
    _, server, running = xds
    assert await server.edge_synced(timeout_s=0.2)  # no Envoy connected: nothing to wait for
    envoy = FakeEnvoy(running.port)
    try:
        await subscribe_all(envoy)  # its route configuration never ACKed
        started = time.monotonic()
        assert not await server.edge_synced(timeout_s=0.2)
        assert 0.2 <= time.monotonic() - started < 1.0
        assert server.stream_count == 1
    finally:
        await envoy.close()


async def _until(check: object, within: float = 2.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_flags_and_base_routes(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            [
                {
                    "match": {"path": "/v1/metrics"},
                    "route": {"cluster": "metrics", "prefix_rewrite": "/metrics"},
                    "typed_per_filter_config": {
                        "envoy.filters.http.grpc_json_transcoder": {
                            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                            "disabled": True,
                        }
                    },
                },
                {"match": {"prefix": "/"}, "route": {"cluster": "proxy", "timeout": "0s"}},
            ]
        )
    )
    settings = xds_settings(
        proxy_settings(["--edge-routes", str(routes), "--xds-max-requests-per-model", "9"])
    )
    assert settings.max_requests_per_model == 9 and settings.upstream_tls is None
    assert [r.route.cluster for r in settings.base_routes] == ["metrics", "proxy"]
    defaults = xds_settings(proxy_settings([]))
    assert defaults == XdsSettings()
    tls = xds_settings(
        proxy_settings([f"--xds-upstream-tls-{part}={part}" for part in ("cert", "key", "ca")])
    ).upstream_tls
    assert tls is not None and (tls.cert.name, tls.key.name, tls.ca.name) == ("cert", "key", "ca")
    for bad, field in (
        (["--xds-upstream-tls-cert", "c"], "xds_upstream_tls_key"),
        (["--xds-upstream-tls-cert", "c", "--xds-upstream-tls-key", "k"], "xds_upstream_tls_ca"),
        (["--xds-max-requests-per-model", "0"], "xds_max_requests_per_model"),
        (["--edge-routes", str(tmp_path / "missing.json")], "edge_routes"),
    ):
        with pytest.raises(ConfigError) as raised:
            xds_settings(proxy_settings(bad))
        assert raised.value.field == field
    routes.write_text(json.dumps([{"match": {"prefix": "/"}, "rout": {}}]))
    with pytest.raises(ValueError, match="route 0"):
        load_base_routes(routes)


def proxy_settings(argv: list[str]) -> ProxySettings:
    """The proxy's settings from flags, with one static worker unless argv says otherwise."""
    default = (
        [] if any(a.startswith(("--worker", "--discovery")) for a in argv) else ["--worker=w:1"]
    )
    return from_namespace(ProxySettings, build_parser().parse_args([*default, *argv]))


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--idle-ttl", "-1"], "idle_ttl"),
        (["--drain-timeout", "-1"], "drain_timeout"),
        (["--load-timeout", "0"], "load_timeout"),
        (["--usage-interval", "0"], "usage_interval"),
        (["--heartbeat-timeout", "nan"], "heartbeat_timeout"),
        (["--heartbeat-interval", "0"], "heartbeat_interval"),
        (["--reconcile-interval", "-1"], "reconcile_interval"),
        (["--k8s-resync", "0"], "k8s_resync"),
        (["--prefetch", "-1"], "prefetch"),
        (["--prefetch", "2"], "prefetch"),  # needs --registry
        (["--target-concurrency", "-1"], "target_concurrency"),
        (["--max-queued-per-model", "-1"], "max_queued_per_model"),
        (["--model", "no-path"], "model"),
        (["--api-key", "k:many"], "api_key"),
        (["--discovery", "kubernetes", "--k8s-pool", "m"], "k8s_pool"),
        (["--discovery", "kubernetes", "--worker", "w:1"], "worker"),
        (["--discovery", "static"], "worker"),
    ],
)
def test_a_bad_setting_is_reported_under_its_own_flag(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        proxy_settings(argv)
    assert raised.value.field == field
    proxy_settings([])  # the defaults are good


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        # A drain problem is reported as drain_timeout (it once said idle_ttl).
        ("HELIOS_PROXY_DRAIN_TIMEOUT", "-1", "drain_timeout"),
        ("HELIOS_IDLE_TTL", "-5", "idle_ttl"),
        # argparse checks choices on the command line only; the settings check the rest.
        ("HELIOS_PROXY_DISCOVERY", "consul", "discovery"),
        ("HELIOS_ROUTING_POLICY", "random", "routing_policy"),
    ],
)
def test_a_bad_variable_is_reported_under_its_flag(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        proxy_settings([])
    assert raised.value.field == field


def test_api_keys_from_flags_and_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops\nb:10\n\nc::500\n")
    settings = proxy_settings(["--api-key", "a:1:2", "--api-keys-file", str(keys)])
    assert [(k.key, k.requests_per_minute, k.tokens_per_minute) for k in api_keys(settings)] == [
        ("a", 1, 2),
        ("b", 10, 0),
        ("c", 0, 500),
    ]
    with pytest.raises(ConfigError) as raised:
        api_keys(proxy_settings(["--api-keys-file", str(tmp_path / "missing")]))
    assert raised.value.field == "api_keys_file"
