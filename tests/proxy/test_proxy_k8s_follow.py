"""The real proxy follows a simulated cluster: ``--discovery kubernetes`` against the fake
API server (tests/proxy/fake_kube_api.py, the real wire format, reached through a
kubeconfig), with real worker processes whose addresses the test publishes as
EndpointSlices. Workers appear and serve; an endpoint removed stops the routing to it;
an idle pool is scaled to zero through its Deployment's scale subresource, and a new
request scales it back to one and is served once the endpoint is back."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from helios.v1 import inference_pb2, inference_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_kube_api import FakeKubeApi

from cli.processes import ServiceProcess
from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from proxy.server import build_parser, build_service
from proxy.settings import ProxySettings
from runtime.config import ServerSettings
from runtime.server import start_server
from runtime.settings import from_namespace

NS = "helios"
MODEL = DEFAULT_MODEL_NAME
DEPLOYMENT = "helios-worker-tiny"  # deploy/overlays/dev: worker-template + nameSuffix -tiny
LABELS = {
    "app.kubernetes.io/component": "worker",
    "helios.ai/model": MODEL,
    "helios.ai/role": "both",
    "kubernetes.io/service-name": DEPLOYMENT,
}
IDLE_TTL_S = 5.0


@dataclass
class Worker:
    process: ServiceProcess
    slice_name: str

    @property
    def port(self) -> int:
        return int(self.process.ready["grpc_port"])

    def generates(self) -> float:
        """Generate RPCs this worker has started (its own Prometheus counter)."""
        url = f"http://127.0.0.1:{self.process.ready['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("helios_grpc_server_started_total{") and 'method="Generate"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest_asyncio.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    model_dir = await asyncio.to_thread(build_tiny_model, tmp_path / "tiny")
    processes = [
        ServiceProcess(
            name=f"worker{i}",
            module="worker.server",
            args=["--worker-id", f"w{i}", "--model", f"{MODEL}={model_dir}"],
            state_dir=tmp_path,
        )
        for i in range(2)
    ]
    await asyncio.gather(*(p.start() for p in processes))
    try:
        await asyncio.gather(*(p.wait_ready(120) for p in processes))
        yield [Worker(p, f"{DEPLOYMENT}-{i}") for i, p in enumerate(processes)]
    finally:
        await asyncio.gather(*(p.stop(5) for p in processes))


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[FakeKubeApi, Path]]:
    api = FakeKubeApi()
    url = await api.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context: {{cluster: fake, user: proxy}}
current-context: fake
users:
- name: proxy
  user: {{token: test-token}}
"""
    )
    api.deployments[(NS, DEPLOYMENT)] = 2
    yield api, kubeconfig
    # Ends every open watch at once (410 Gone: each started before this version is now
    # too old): FakeKubeApi.stop alone waits for the watches' server-side timeout.
    await api.bookmark()
    await api.compact()
    await api.stop()


async def publish(api: FakeKubeApi, worker: Worker) -> None:
    await api.put_slice(NS, worker.slice_name, LABELS, ["127.0.0.1"], port=worker.port)


def chat() -> inference_pb2.CreateChatCompletionRequest:
    return inference_pb2.CreateChatCompletionRequest(
        params=inference_pb2.ChatCompletionParams(
            model=MODEL,
            messages=[
                inference_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="hi"))
            ],
            max_tokens=3,
            temperature=0,
        )
    )


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {limit_s}s: {what}")
        await asyncio.sleep(0.1)


async def test_proxy_follows_cluster_and_scales_pool_to_zero_and_back(
    workers: list[Worker], kube: tuple[FakeKubeApi, Path]
) -> None:
    api, kubeconfig = kube
    w0, w1 = workers
    for worker in workers:
        await publish(api, worker)

    settings = from_namespace(
        ProxySettings,
        build_parser().parse_args(
            [
                "--discovery=kubernetes",
                f"--kubeconfig={kubeconfig}",
                f"--k8s-namespace={NS}",
                "--k8s-worker-selector=app.kubernetes.io/component=worker",
                "--heartbeat-interval=0.2",
                f"--idle-ttl={IDLE_TTL_S}",
                "--load-timeout=30",
            ]
        ),
    )
    register, cleanup = await build_service(settings)
    server = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
    channel = grpc.aio.insecure_channel(server.address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def ready_replicas() -> int:
        listed = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)
        return sum(m.ready_replicas for m in listed.data if m.id == MODEL)

    async def complete() -> str:
        response = await stub.CreateChatCompletion(chat(), timeout=30)
        assert response.choices[0].finish_reason in ("stop", "length")
        return str(response.choices[0].finish_reason)

    try:
        # Workers appear: both endpoints become ready replicas and serve.
        await eventually(lambda: _eq(ready_replicas(), 2), 15, "both workers READY")
        before = [w0.generates(), w1.generates()]
        # At once, so least-outstanding routing spreads them over both replicas.
        await asyncio.gather(*(complete() for _ in range(6)))
        after = [w0.generates(), w1.generates()]
        assert sum(after) - sum(before) == 6
        assert after[0] > before[0] and after[1] > before[1]  # both took requests

        # A worker's endpoint is removed: the proxy stops routing to it.
        await api.delete_slice(NS, w0.slice_name)
        await eventually(lambda: _eq(ready_replicas(), 1), 10, "w0 dropped")
        before = [w0.generates(), w1.generates()]
        await asyncio.gather(*(complete() for _ in range(4)))
        after = [w0.generates(), w1.generates()]
        assert after[0] == before[0]
        assert after[1] - before[1] == 4
        assert api.patches == []  # nothing scaled while the pool was busy

        # Idle past the TTL: the pool's Deployment is scaled to zero...
        async def scaled_to_zero() -> bool:
            return api.deployments[(NS, DEPLOYMENT)] == 0

        await eventually(scaled_to_zero, IDLE_TTL_S + 10, "scale to zero")
        assert [(ctype, name, body) for ctype, name, body in api.patches] == [
            ("application/merge-patch+json", DEPLOYMENT, {"spec": {"replicas": 0}})
        ]
        # ... and Kubernetes takes its pods away.
        await api.delete_slice(NS, w1.slice_name)
        await eventually(lambda: _eq(ready_replicas(), 0), 10, "pool gone")

        # A new request scales it back to one and waits for its endpoint to be READY.
        request = asyncio.ensure_future(complete())

        async def scaled_up() -> bool:
            return api.deployments[(NS, DEPLOYMENT)] == 1

        await eventually(scaled_up, 10, "scale back to one")
        assert api.patches[-1][2] == {"spec": {"replicas": 1}}
        assert not request.done()  # it waits for the new replica
        generated = w1.generates()
        await publish(api, w1)  # the new pod (same worker process) is ready
        assert await asyncio.wait_for(request, 30) in ("stop", "length")
        assert w1.generates() == generated + 1
        assert len(api.patches) == 2  # one scale-up, shared; nothing else
    finally:
        await channel.close(None)
        await server.stop(0)
        await cleanup()


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_configured_pool_without_deployment_is_a_clear_error(
    kube: tuple[FakeKubeApi, Path],
) -> None:
    """A pool named by --k8s-pool (at zero, so never seen) whose Deployment does not
    exist: FAILED_PRECONDITION naming it, not a hang; an unknown model stays NOT_FOUND."""
    api, kubeconfig = kube
    settings = from_namespace(
        ProxySettings,
        build_parser().parse_args(
            [
                "--discovery=kubernetes",
                f"--kubeconfig={kubeconfig}",
                f"--k8s-namespace={NS}",
                "--k8s-pool=ghost=helios-worker-ghost",
                "--heartbeat-interval=0.2",
            ]
        ),
    )
    register, cleanup = await build_service(settings)
    server = await start_server(ServerSettings(service="proxy", metrics_port=-1), register)
    channel = grpc.aio.insecure_channel(server.address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    try:
        request = chat()
        request.params.model = "ghost"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.CreateChatCompletion(request, timeout=10)
        assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "helios-worker-ghost" in str(missing.value.details())
        request.params.model = "nope"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.CreateChatCompletion(request, timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert api.patches == []
    finally:
        await channel.close(None)
        await server.stop(0)
        await cleanup()
