"""The registry as the source of truth for models, through Envoy, with real processes.

registry, estimator (--registry), storaged (--registry, tmp tiers), two workers
(--storaged, a small declared capacity), the proxy (--registry, --estimator, API keys)
and Envoy run as processes on 127.0.0.1 with HELIOS_HOME in a tmp dir. Two tiny models
(different seeds) are imported into the registry and nowhere else: nothing tells the
proxy or the workers where their files are, so serving them proves the path
registry -> proxy cold start -> worker LoadModel(model=id) -> storaged -> registry blobs.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import pytest_asyncio
from helios.v1 import (
    estimator_pb2,
    registry_pb2,
    registry_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
)

from cli.envoy import EnvoyProcess
from cli.processes import ServiceProcess
from edge import EdgeAccess, Upstream, build_descriptor_set, render_envoy_config
from models.tinymodel import build_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL_A = "helios/tiny-a"
MODEL_B = "helios/tiny-b"
KEY = "k-main"
LIMITED_KEY = "k-limited"  # one request per minute
ADMIN_KEY = "k-admin"
# The estimator's figure for a tiny model is ~0.74 GB (CUDA context overhead included):
# each worker can hold one of them, never two.
CAPACITY = 900 * 1024 * 1024


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def _http(method: str, url: str, body: object, key: str | None) -> Response:
    headers = {"content-type": "application/json"} if body is not None else {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return Response(
                r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
            )
    except urllib.error.HTTPError as error:
        headers_out = {k.lower(): v for k, v in error.headers.items()}
        return Response(error.code, headers_out, error.read().decode())


@dataclass
class Mesh:
    services: dict[str, ServiceProcess]
    envoy: EnvoyProcess
    registry: registry_pb2_grpc.RegistryServiceStub
    storaged: storage_pb2_grpc.StorageServiceStub
    sizes: dict[str, int]

    @property
    def base_url(self) -> str:
        return f"{self.envoy.base_url}/v1"

    async def rest(
        self, method: str, path: str, body: object = None, key: str | None = KEY
    ) -> Response:
        """One REST call through Envoy (urllib, in a thread)."""
        return await asyncio.to_thread(_http, method, self.envoy.base_url + path, body, key)

    def openai(self, key: str = KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=60)

    async def proxy_metric(self, name: str, **labels: str) -> float:
        port = self.services["proxy"].ready["metrics_port"]
        metrics = await asyncio.to_thread(
            _http, "GET", f"http://127.0.0.1:{port}/metrics", None, None
        )
        text = metrics.text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _service(root: Path, name: str, module: str, *args: str) -> ServiceProcess:
    return ServiceProcess(name=name, module=module, args=list(args), state_dir=root)


async def _start(services: list[ServiceProcess], env: dict[str, str]) -> None:
    await asyncio.gather(*(s.start(env) for s in services))
    await asyncio.gather(*(s.wait_ready(120) for s in services))


async def _import(stub: registry_pb2_grpc.RegistryServiceStub, source: Path, model: str) -> int:
    total = 0
    async for progress in stub.ImportModel(
        registry_pb2.ImportModelRequest(source=str(source), model_id=model), timeout=60
    ):
        total = progress.bytes_total
    return total


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    root = tmp_path_factory.mktemp("catalogue")
    env = {"HELIOS_HOME": str(root / "home")}
    # One after the other: transformers' lazy imports are not thread-safe.
    src_a = await asyncio.to_thread(build_tiny_model, root / "src" / "a", seed=1)
    src_b = await asyncio.to_thread(build_tiny_model, root / "src" / "b", seed=2)
    started: list[ServiceProcess] = []
    envoy: EnvoyProcess | None = None
    try:
        # ImportModel reads server directories only under --import-root.
        registry = _service(
            root,
            "registry",
            "registry.server",
            "--data-dir",
            str(root / "reg"),
            "--import-root",
            str(root / "src"),
        )
        await _start([registry], env)
        started.append(registry)
        estimator = _service(root, "estimator", "estimator.server", "--registry", registry.address)
        storaged = _service(
            root,
            "storaged",
            "storaged.server",
            "--registry",
            registry.address,
            "--tier",
            f"ram={root / 'ram'}:64MiB",
            "--tier",
            f"ssd={root / 'ssd'}:256MiB",
        )
        await _start([estimator, storaged], env)
        started += [estimator, storaged]
        workers = [
            _service(
                root,
                f"worker{i}",
                "worker.server",
                "--worker-id",
                f"w{i}",
                "--storaged",
                storaged.address,
                "--memory-capacity-bytes",
                str(CAPACITY),
            )
            for i in range(2)
        ]
        await _start(workers, env)
        started += workers
        proxy = _service(
            root,
            "proxy",
            "proxy.server",
            *(arg for w in workers for arg in ("--worker", w.address)),
            "--registry",
            registry.address,
            "--estimator",
            estimator.address,
            "--api-key",
            f"{KEY}:10000",
            "--api-key",
            f"{LIMITED_KEY}:1",
            "--heartbeat-interval",
            "0.5",
            "--usage-interval",
            "0.2",
        )
        await _start([proxy], env)
        started.append(proxy)

        def upstream(s: ServiceProcess) -> Upstream:
            return Upstream(s.name, s.ready["host"], s.ready["grpc_port"])

        config = render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            descriptor_path=build_descriptor_set(root / "helios.pb"),
            grpc_upstreams={
                "helios.v1.InferenceService": upstream(proxy),
                "helios.v1.AdminService": upstream(proxy),
                "helios.v1.EstimatorService": upstream(estimator),
                "helios.v1.RegistryService": upstream(registry),
                "helios.v1.StorageService": upstream(storaged),
            },
            default_grpc_upstream=upstream(proxy),
            metrics_upstream=None,
            # Keys are the proxy's here (its per-key limits); Envoy guards the admin API.
            access=EdgeAccess(admin_keys=(ADMIN_KEY,)),
        )
        envoy = await EnvoyProcess.start(config, root / "envoy")
        channel = grpc.aio.insecure_channel(registry.address)
        reg_stub = registry_pb2_grpc.RegistryServiceStub(channel)
        sizes = {
            MODEL_A: await _import(reg_stub, src_a, MODEL_A),
            MODEL_B: await _import(reg_stub, src_b, MODEL_B),
        }
        storaged_channel = grpc.aio.insecure_channel(storaged.address)
        yield Mesh(
            {s.name: s for s in started},
            envoy,
            reg_stub,
            storage_pb2_grpc.StorageServiceStub(storaged_channel),
            sizes,
        )
        await channel.close(None)
        await storaged_channel.close(None)
    finally:
        if envoy is not None:
            await envoy.stop(2)
        await asyncio.gather(*(s.stop(5) for s in reversed(started)))


async def _models(mesh: Mesh) -> dict[str, dict[str, object]]:
    response = await mesh.rest("GET", "/v1/models")
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["data"]}


async def test_models_lists_what_the_registry_holds_cold(mesh: Mesh) -> None:
    models = await _models(mesh)
    assert {MODEL_A, MODEL_B} <= set(models)
    for model in (MODEL_A, MODEL_B):
        assert models[model]["warm_status"] == "cold"
        assert not models[model].get("ready_replicas")
    # The openai client sees the same ids.
    listed = [m.id async for m in mesh.openai().models.list()]
    assert {MODEL_A, MODEL_B} <= set(listed)


async def test_request_cold_starts_a_registry_model_through_storaged(mesh: Mesh) -> None:
    client = mesh.openai()
    # Concurrent cold requests: one load between them.
    answers = await asyncio.gather(
        *(
            client.completions.create(model=MODEL_A, prompt="The sun", max_tokens=3, temperature=0)
            for _ in range(3)
        )
    )
    assert all(a.usage is not None and a.usage.completion_tokens >= 1 for a in answers)
    assert await mesh.proxy_metric("helios_proxy_model_loads_total", model=MODEL_A) == 1
    assert await mesh.proxy_metric("helios_proxy_memory_estimates_total", source="estimator") >= 1
    # The files came through storaged (the proxy knows no local path for the model).
    stat = await mesh.storaged.Stat(storage_pb2.StatRequest(model_id=MODEL_A), timeout=10)
    assert stat.local_dir and stat.size_bytes == mesh.sizes[MODEL_A]
    models = await _models(mesh)
    assert models[MODEL_A]["warm_status"] == "warm"
    assert models[MODEL_A]["memory_source"] == "estimator"
    assert models[MODEL_B]["warm_status"] == "cold"


async def test_usage_reaches_the_registry(mesh: Mesh) -> None:
    client = mesh.openai()
    await client.completions.create(model=MODEL_A, prompt="Hello", max_tokens=2, temperature=0)
    deadline = time.monotonic() + 10
    while True:  # reported in the background, every 0.2 s
        hints = await mesh.registry.GetPrefetchHints(
            registry_pb2.GetPrefetchHintsRequest(limit=10), timeout=5
        )
        scores = {h.model_id: h.score for h in hints.hints}
        if scores.get(MODEL_A, 0) > 0:
            break
        assert time.monotonic() < deadline, f"no usage recorded for {MODEL_A}: {scores}"
        await asyncio.sleep(0.2)
    assert scores.get(MODEL_A, 0) > scores.get(MODEL_B, 0)
    # The used model is worth more: the unused one is evicted first.
    order = await mesh.registry.GetEvictionCandidates(
        registry_pb2.GetEvictionCandidatesRequest(loaded_model_ids=[MODEL_A, MODEL_B]),
        timeout=5,
    )
    assert list(order.model_ids)[:1] == [MODEL_B]
    assert await mesh.proxy_metric("helios_proxy_registry_calls_total", kind="usage") >= 1


async def test_estimator_answers_for_a_registry_id_through_envoy(mesh: Mesh) -> None:
    response = await mesh.rest("GET", f"/v1/estimate/model/{MODEL_B}")
    assert response.status_code == 200, response.text
    estimate = response.json()["estimate"]
    assert int(estimate["parameter_count"]) > 0
    assert int(estimate["total_bytes"]) > int(estimate["weights_bytes"]) > 0
    missing = await mesh.rest("GET", "/v1/estimate/model/nobody/nothing")
    assert missing.status_code == 404
    assert "nobody/nothing" in missing.json()["error"]["message"]
    # Same numbers over gRPC through Envoy's one port.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.envoy.listen_port}") as channel:
        from helios.v1 import estimator_pb2_grpc

        stub = estimator_pb2_grpc.EstimatorServiceStub(channel)
        grpc_answer = await stub.GetModelEstimate(
            estimator_pb2.GetModelEstimateRequest(model_id=MODEL_B), timeout=10
        )
    assert grpc_answer.estimate.parameter_count == int(estimate["parameter_count"])


async def test_bearer_key_reaches_the_proxy_check(mesh: Mesh) -> None:
    body = {"model": MODEL_A, "prompt": "Hi", "max_tokens": 1}
    for key in ("wrong-key", None):
        response = await mesh.rest("POST", "/v1/completions", body, key)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "UNAUTHENTICATED"
        assert error["message"]
    with pytest.raises(openai.AuthenticationError):
        await mesh.openai("wrong-key").completions.create(model=MODEL_A, prompt="Hi", max_tokens=1)


async def test_rate_limited_request_is_429_with_retry_after(mesh: Mesh) -> None:
    body = {"model": MODEL_A, "prompt": "Hi", "max_tokens": 1}
    first = await mesh.rest("POST", "/v1/completions", body, LIMITED_KEY)
    assert first.status_code == 200, first.text
    limited = await mesh.rest("POST", "/v1/completions", body, LIMITED_KEY)
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


async def test_admin_rest_paths(mesh: Mesh) -> None:
    refused = await mesh.rest("GET", "/v1/admin/memory-stats")  # not an admin key
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "UNAUTHENTICATED"
    health = await mesh.rest("GET", "/v1/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert health.json()["total_workers"] == 2

    preload = await mesh.rest(
        "POST", "/v1/admin/preload", {"model_id": MODEL_B, "replicas": 1}, key=ADMIN_KEY
    )
    assert preload.status_code == 200, preload.text
    assert len(preload.json()["workers"]) == 1
    stats = await mesh.rest("GET", "/v1/admin/memory-stats", key=ADMIN_KEY)
    assert stats.status_code == 200, stats.text
    held = {m for w in stats.json()["workers"] for m in w.get("models", [])}
    assert {MODEL_A, MODEL_B} <= held

    scale = await mesh.rest(
        "POST", "/v1/admin/scale", {"model_id": MODEL_B, "replicas": 0}, key=ADMIN_KEY
    )
    assert scale.status_code == 200, scale.text
    assert not scale.json().get("workers")
    evict = await mesh.rest("DELETE", f"/v1/admin/evict/{MODEL_A}", key=ADMIN_KEY)
    assert evict.status_code == 200, evict.text
    assert len(evict.json()["workers"]) == 1
    unknown = await mesh.rest("DELETE", "/v1/admin/evict/nobody/nothing", key=ADMIN_KEY)
    assert unknown.status_code == 404, unknown.text
    models = await _models(mesh)
    assert models[MODEL_A]["warm_status"] == "cold"
    assert models[MODEL_B]["warm_status"] == "cold"
    # A JSON number (the int64 it was printed as a string).
    assert isinstance(models[MODEL_B]["memory_bytes"], int)
