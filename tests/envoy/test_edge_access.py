"""Who may call what through the front door (issue 16: roles at the edge), on a real Envoy.

Inference keys open the OpenAI API, the estimator and the registry's catalogue reads; admin
keys (separate) open AdminService, /v1/admin/* and /v1/metrics; internal services
(WorkerService, StorageService, registry writes and blob reads, xDS) are not routed at all,
whatever key is sent. Every upstream here is one fake that records what reaches it, so a
call refused at the edge is seen never to arrive.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from envoy_fakes import BackgroundLoop, Edge, start_fake_server, start_metrics_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

from cli.envoy import EnvoyProcess
from edge import EdgeAccess, Upstream, render_envoy_config

INFERENCE_KEY = "inference-secret"
ADMIN_KEY = "admin-secret"
LIMITED_KEY = "limited-secret"  # 2 requests a minute


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, descriptor: Path) -> Iterator[Edge]:
    loop = BackgroundLoop()
    metrics = start_metrics_server()
    server = None
    envoy = None
    try:
        server, port, fake = loop.run(start_fake_server())
        upstream = Upstream("fake", "127.0.0.1", port)
        config = render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=descriptor,
            grpc_upstreams={
                service: upstream
                for service in (
                    "helios.v1.InferenceService",
                    "helios.v1.AdminService",
                    "helios.v1.RegistryService",
                    "helios.v1.WorkerService",
                    "helios.v1.StorageService",
                )
            },
            default_grpc_upstream=upstream,
            metrics_upstream=Upstream("metrics", "127.0.0.1", metrics.server_address[1]),
            access=EdgeAccess(
                inference_keys=(INFERENCE_KEY, LIMITED_KEY),
                admin_keys=(ADMIN_KEY,),
                requests_per_minute=((LIMITED_KEY, 2),),
            ),
        )
        workdir = tmp_path_factory.mktemp("envoy-access")
        envoy = loop.run(EnvoyProcess.start(config, workdir, ready_timeout=30.0))
        yield Edge(envoy=envoy, fake=fake, fake_port=port, loop=loop, descriptor=descriptor)
    finally:
        if envoy is not None:
            loop.run(envoy.stop())
        if server is not None:
            loop.run(server.stop(None))
        metrics.shutdown()
        metrics.server_close()
        loop.close()


def rest(
    edge: Edge, method: str, path: str, key: str | None, body: object | None = None
) -> tuple[int, dict[str, object]]:
    status, _, answer = rest_with_headers(edge, method, path, key, body)
    return status, answer


def rest_with_headers(
    edge: Edge, method: str, path: str, key: str | None, body: object | None = None
) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        edge.base_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read(), error.code, dict(error.headers)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, {"raw": raw.decode(errors="replace")}


def grpc_code(edge: Edge, call: str, key: str | None) -> tuple[grpc.StatusCode, str]:
    """Calls one RPC through Envoy; returns its status code and details."""

    async def run() -> tuple[grpc.StatusCode, str]:
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            calls = {
                "inference": lambda: inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                    inference_pb2.ListModelsRequest(), metadata=metadata, timeout=10
                ),
                "admin": lambda: admin_pb2_grpc.AdminServiceStub(channel).GetMemoryStats(
                    admin_pb2.GetMemoryStatsRequest(), metadata=metadata, timeout=10
                ),
                "admin-health": lambda: admin_pb2_grpc.AdminServiceStub(channel).GetHealth(
                    admin_pb2.GetHealthRequest(), metadata=metadata, timeout=10
                ),
                "worker-load": lambda: (
                    worker_pb2_grpc.WorkerServiceStub(channel)
                    .LoadModel(
                        worker_pb2.LoadModelRequest(model="m", local_path="/etc"),
                        metadata=metadata,
                        timeout=10,
                    )
                    .read()
                ),
                "storage-stat": lambda: storage_pb2_grpc.StorageServiceStub(channel).Stat(
                    storage_pb2.StatRequest(), metadata=metadata, timeout=10
                ),
                "registry-import": lambda: (
                    registry_pb2_grpc.RegistryServiceStub(channel)
                    .ImportModel(
                        registry_pb2.ImportModelRequest(source="/etc/ssh", model_id="x/y"),
                        metadata=metadata,
                        timeout=10,
                    )
                    .read()
                ),
                "registry-read-blob": lambda: (
                    registry_pb2_grpc.RegistryServiceStub(channel)
                    .ReadBlob(registry_pb2.ReadBlobRequest(), metadata=metadata, timeout=10)
                    .read()
                ),
                "registry-list": lambda: registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                    registry_pb2.RegistryServiceListModelsRequest(), metadata=metadata, timeout=10
                ),
                "health": lambda: health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                ),
            }
            try:
                await calls[call]()
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details() or ""
            return grpc.StatusCode.OK, ""

    return edge.run(run())


def test_openai_api_needs_an_inference_or_admin_key(edge: Edge) -> None:
    status, body = rest(edge, "GET", "/v1/models", None)
    assert status == 401
    assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert body["error"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
    assert "Bearer" in body["error"]["message"]  # type: ignore[index]
    assert rest(edge, "GET", "/v1/models", "wrong")[0] == 401
    assert rest(edge, "GET", "/v1/models", INFERENCE_KEY)[0] == 200
    assert rest(edge, "GET", "/v1/models", ADMIN_KEY)[0] == 200
    assert grpc_code(edge, "inference", None)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(edge, "inference", INFERENCE_KEY)[0] == grpc.StatusCode.OK


def test_admin_api_needs_the_admin_key(edge: Edge) -> None:
    """The reported hole: DELETE /v1/admin/evict/... answered 200 with no key."""
    calls_before = len(edge.fake.calls)
    for key, expected in ((None, 401), ("wrong", 401), (INFERENCE_KEY, 403)):
        status, body = rest(edge, "DELETE", "/v1/admin/evict/org/model", key)
        assert status == expected, body
        assert body["error"]["type"] in {"authentication_error", "permission_error"}  # type: ignore[index]
        assert body["error"]["code"] in {"UNAUTHENTICATED", "PERMISSION_DENIED"}  # type: ignore[index]
        assert rest(edge, "GET", "/v1/admin/memory-stats", key)[0] == expected
        assert rest(edge, "GET", "/v1/metrics", key)[0] == expected
    assert grpc_code(edge, "admin", INFERENCE_KEY)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert len(edge.fake.calls) == calls_before  # nothing reached the upstream
    # With the admin key the call is routed: the fake serves no AdminService, so the
    # upstream (not Envoy) answers UNIMPLEMENTED.
    code, details = grpc_code(edge, "admin", ADMIN_KEY)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "no such path" not in details
    assert rest(edge, "GET", "/v1/metrics", ADMIN_KEY)[0] == 200


@pytest.mark.parametrize("call", ["worker-load", "storage-stat", "registry-read-blob"])
@pytest.mark.parametrize("key", [None, INFERENCE_KEY, ADMIN_KEY])
def test_internal_services_are_not_on_the_front_door(
    edge: Edge, call: str, key: str | None
) -> None:
    """The reported hole: ImportModel of /etc/ssh then ReadBlob, LoadModel of any path."""
    code, details = grpc_code(edge, call, key)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "no such path" in details  # Envoy's answer, not an upstream's


def test_registry_import_is_for_the_admin_key_only(edge: Edge) -> None:
    """`helios pull` through a running mesh imports with the admin key; nobody else may
    (the registry itself reads only under its configured roots)."""
    calls_before = len(edge.fake.calls)
    assert grpc_code(edge, "registry-import", None)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(edge, "registry-import", "wrong")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(edge, "registry-import", INFERENCE_KEY)[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert len(edge.fake.calls) == calls_before  # nothing reached the upstream
    code, details = grpc_code(edge, "registry-import", ADMIN_KEY)
    # Routed: the fake serves no RegistryService, so the upstream says UNIMPLEMENTED.
    assert code == grpc.StatusCode.UNIMPLEMENTED and "no such path" not in details


def test_registry_catalogue_reads_are_public_with_a_key(edge: Edge) -> None:
    assert grpc_code(edge, "registry-list", None)[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = grpc_code(edge, "registry-list", INFERENCE_KEY)
    # Routed (the fake serves no RegistryService, so the upstream says UNIMPLEMENTED).
    assert code == grpc.StatusCode.UNIMPLEMENTED and "no such path" not in details


def test_health_needs_no_key(edge: Edge) -> None:
    assert grpc_code(edge, "health", None)[0] == grpc.StatusCode.OK
    # The mesh's health (AdminService.GetHealth, GET /v1/health) is for probes: no key.
    code, details = grpc_code(edge, "admin-health", None)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "no such path" not in details  # routed
    assert rest(edge, "GET", "/v1/health", None)[0] == 501  # routed: the fake has no admin


def test_a_client_cannot_claim_an_identity(edge: Edge) -> None:
    """x-helios-client is reserved for the edge's word on who called; a client's is dropped."""

    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            await inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(),
                metadata=(
                    ("authorization", f"Bearer {INFERENCE_KEY}"),
                    ("x-helios-client", "admin-0"),
                ),
                timeout=10,
            )
        _, metadata = edge.fake.calls[-1]
        return [v for k, v in metadata if k == "x-helios-client"]

    assert edge.run(run()) == []


def test_per_key_request_rate_limit(edge: Edge) -> None:
    """Envoy's local rate limit, per key: the third request in a minute of a 2/min key is
    429 with Retry-After and an OpenAI rate_limit_error; other keys are not held back."""
    answers = [rest_with_headers(edge, "GET", "/v1/models", LIMITED_KEY) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    _, headers, body = answers[2]
    assert int(headers["retry-after"]) >= 1
    assert body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED", (headers, body)  # type: ignore[index]
    assert all(rest(edge, "GET", "/v1/models", INFERENCE_KEY)[0] == 200 for _ in range(5))


def test_shedding_is_503_with_retry_after(
    tmp_path_factory: pytest.TempPathFactory, descriptor: Path
) -> None:
    """A model's cluster at its request limit sheds at Envoy (circuit breaker): an
    OpenAI-shaped 503 with Retry-After, not a queue without bound."""
    loop = BackgroundLoop()
    server, port, _ = loop.run(start_fake_server())
    config = json.loads(
        render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=descriptor,
            grpc_upstreams={"helios.v1.InferenceService": Upstream("fake", "127.0.0.1", port)},
            default_grpc_upstream=Upstream("fake", "127.0.0.1", port),
            metrics_upstream=None,
        )
    )
    # One request at a time and no pending queue: the second concurrent one is shed.
    (cluster,) = config["static_resources"]["clusters"]
    cluster["circuit_breakers"]["thresholds"][0].update(max_requests=1, max_pending_requests=1)
    envoy = loop.run(EnvoyProcess.start(json.dumps(config), tmp_path_factory.mktemp("shed")))
    try:
        edge = Edge(envoy=envoy, fake=None, fake_port=port, loop=loop, descriptor=descriptor)  # type: ignore[arg-type]
        body = {
            "model": "slow-stream",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }

        async def slow_then_second() -> tuple[int, dict[str, str], dict[str, object]]:
            first = asyncio.create_task(
                asyncio.to_thread(
                    rest_with_headers, edge, "POST", "/v1/chat/completions", None, body
                )
            )
            await asyncio.sleep(0.5)  # the first stream holds the only request slot
            second = await asyncio.to_thread(
                rest_with_headers, edge, "POST", "/v1/chat/completions", None, body
            )
            await first
            return second

        status, headers, answer = loop.run(slow_then_second())
        assert status == 503, answer
        assert headers["retry-after"] == "1"
        assert answer["error"]["type"] == "service_unavailable"  # type: ignore[index]
        assert "capacity" in answer["error"]["message"]  # type: ignore[index]
    finally:
        loop.run(envoy.stop())
        loop.run(server.stop(None))
        loop.close()
